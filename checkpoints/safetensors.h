// safetensors: reader (memory-mapped, every header field bounds-checked,
// since model files are untrusted) and atomic writer.
// Format: u64 little-endian header length N, N bytes of JSON
// {name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__": {str: str}},
// then the data area; offsets are relative to the data area.
#pragma once
#include <ATen/ATen.h>

#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace dms {

struct MappedFile;  // read-only mmap of a whole file

struct SafetensorsEntry {
  std::string name;
  std::string dtype;  // "F32", "BF16", "F16", ...
  std::vector<int64_t> shape;
  uint64_t begin = 0, end = 0;  // byte range inside the data area
};

struct SafetensorsFile {
  std::string path;
  std::shared_ptr<MappedFile> map;
  std::vector<SafetensorsEntry> entries;  // in header order
  std::map<std::string, std::string> metadata;
  uint64_t data_offset = 0;  // 8 + header length

  const SafetensorsEntry* find(const std::string& name) const;
  // A copy of tensor `name` in its stored dtype (contiguous, CPU);
  // InputError naming the file and tensor when absent.
  at::Tensor tensor(const std::string& name) const;
};

constexpr uint64_t kMaxSafetensorsHeader = 100ull << 20;  // 100 MiB of JSON is already absurd

// Opens and validates a file; InputError "<path>: <problem>" on any defect.
SafetensorsFile open_safetensors(const std::string& path);

// Writes tensors (any of F32/BF16/F16/I64/I32/U8/BOOL dtypes) to `path` atomically:
// a temporary file in the same folder, fsync, then rename.
void write_safetensors(const std::string& path,
                       const std::vector<std::pair<std::string, at::Tensor>>& tensors,
                       const std::map<std::string, std::string>& metadata = {});

// "F32" -> at::kFloat etc.; throws InputError for names we do not read.
at::ScalarType safetensors_dtype(const std::string& name, const std::string& where);
std::string safetensors_dtype_name(at::ScalarType t);

}  // namespace dms
