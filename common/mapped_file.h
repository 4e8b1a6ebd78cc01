// Read-only memory map of a whole file (for large, untrusted weight files).
#pragma once
#include <cstdint>
#include <memory>
#include <string>

namespace dms {

struct MappedFile {
  const uint8_t* data = nullptr;
  uint64_t size = 0;
  MappedFile() = default;
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;
  ~MappedFile();
};

// InputError naming the path unless it is a regular file (after symlinks). Checked with
// stat(), which opens nothing: opening a FIFO or a device to look at it can block forever.
// Returns its size in bytes.
uint64_t require_regular_file(const std::string& path);

// InputError naming the path when it is missing, not a regular file, or unmappable.
std::shared_ptr<MappedFile> map_file(const std::string& path);

}  // namespace dms
