// AtomicFile: write to "<path>.tmp.<pid>", fsync, rename over <path> on commit().
// Destroyed without commit() (an exception, a failed write), the temporary is
// removed and <path> keeps whatever it held before.
#pragma once
#include <cstdint>
#include <cstdio>
#include <string>

namespace dms {

class AtomicFile {
 public:
  explicit AtomicFile(const std::string& path);
  ~AtomicFile();
  AtomicFile(const AtomicFile&) = delete;
  AtomicFile& operator=(const AtomicFile&) = delete;

  void write(const void* data, uint64_t bytes);  // throws std::runtime_error on failure
  void write(const std::string& s) { write(s.data(), s.size()); }
  void commit();
  const std::string& temp_path() const { return tmp_; }

 private:
  std::string path_, tmp_;
  std::FILE* f_ = nullptr;
};

// Writes a whole text file atomically.
void write_file_atomic(const std::string& path, const std::string& contents);

// fsync of a written file, or of a directory (so that entries created or renamed in it
// survive a crash); std::runtime_error naming the path when it fails.
void sync_path(const std::string& path);

}  // namespace dms
