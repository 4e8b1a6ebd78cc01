// Low-level file access shared by the importers: mmap and capped JSON reads.
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "common/error.h"
#include "common/json_file.h"
#include "common/mapped_file.h"

namespace dms {

MappedFile::~MappedFile() {
  if (data && size) munmap(const_cast<uint8_t*>(data), size);
}

uint64_t require_regular_file(const std::string& path) {
  struct stat st {};
  require(::stat(path.c_str(), &st) == 0, path,
          std::string("cannot open: ") + std::strerror(errno));
  require(S_ISREG(st.st_mode), path,
          S_ISDIR(st.st_mode) ? "is a directory, not a file"
                              : "not a regular file (FIFO, device or socket)");
  return uint64_t(st.st_size);
}

std::shared_ptr<MappedFile> map_file(const std::string& path) {
  require_regular_file(path);
  // O_NONBLOCK: should the path become a FIFO after the check, open() must not wait for a writer.
  int fd = ::open(path.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC);
  require(fd >= 0, path, std::string("cannot open: ") + std::strerror(errno));
  struct stat st {};
  if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    throw InputError(path + ": not a regular file");
  }
  auto m = std::make_shared<MappedFile>();
  m->size = uint64_t(st.st_size);
  if (m->size > 0) {
    void* p = mmap(nullptr, m->size, PROT_READ, MAP_PRIVATE, fd, 0);
    if (p == MAP_FAILED) {
      ::close(fd);
      throw InputError(path + ": mmap failed: " + std::strerror(errno));
    }
    m->data = static_cast<const uint8_t*>(p);
  }
  ::close(fd);
  return m;
}

nlohmann::json read_json_file(const std::string& path, uint64_t max_bytes) {
  auto m = map_file(path);
  require(m->size <= max_bytes, path,
          "JSON file of " + std::to_string(m->size) + " bytes is over the limit");
  try {
    return nlohmann::json::parse(m->data, m->data + m->size);
  } catch (const nlohmann::json::exception& e) {
    throw InputError(path + ": not valid JSON (" + std::string(e.what()) + ")");
  }
}

}  // namespace dms
