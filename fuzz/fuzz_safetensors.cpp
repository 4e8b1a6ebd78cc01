// Fuzzes the safetensors reader (checkpoints/safetensors.h): the input is a whole
// .safetensors file (u64 header length, JSON header, data area). open_safetensors() maps and
// validates it, then every tensor the header lists is copied out with tensor().
// Expected rejection: dms::InputError (bad length, bad JSON, bad entry, overlap, ...).
// Checked on acceptance: each tensor has the header's shape and exactly its byte span, and
// find() agrees with the entry list.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include "checkpoints/safetensors.h"
#include "fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  at::set_num_threads(1);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string path = fuzz::write_file("model.safetensors", data, size);
  fuzz::accepts([&] {
    const dms::SafetensorsFile f = dms::open_safetensors(path);
    FUZZ_CHECK(f.data_offset >= 8 && f.data_offset <= size, "data offset inside the file");
    for (const auto& e : f.entries) {
      FUZZ_CHECK(f.find(e.name) == &e || (f.find(e.name) && f.find(e.name)->name == e.name),
                 e.name);
      FUZZ_CHECK(e.begin <= e.end && f.data_offset + e.end <= size, e.name);
      const at::Tensor t = f.tensor(e.name);
      FUZZ_CHECK(t.sizes().vec() == e.shape, e.name);
      FUZZ_CHECK(uint64_t(t.numel()) * t.element_size() == e.end - e.begin, e.name);
      FUZZ_CHECK(t.is_contiguous(), e.name);
    }
    FUZZ_CHECK(f.find("") == nullptr || !f.entries.empty(), "find on an empty file");
  });
  return 0;
}
