// Fuzzes the llama2.c legacy checkpoint reader (checkpoints/llama2c.h): the input is a
// whole .bin file (7 int32 header, fp32 weights). read_llama2c_config() checks the header
// against the file size; load_llama2c() then reads every weight.
// Expected rejection: dms::InputError (truncated, implausible header, size mismatch).
// Checked on acceptance: both calls agree on the config and the loaded weights have its shapes.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include "checkpoints/llama2c.h"
#include "fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  at::set_num_threads(1);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string path = fuzz::write_file("model.bin", data, size);
  dms::ModelConfig c;
  if (!fuzz::accepts([&] { c = dms::read_llama2c_config(path); })) return 0;
  fuzz::accepts([&] {
    const dms::Model m = dms::load_llama2c(path);
    FUZZ_CHECK(m.config.vocab_size == c.vocab_size && m.config.n_layers == c.n_layers &&
                   m.config.hidden_size == c.hidden_size,
               "load_llama2c and read_llama2c_config disagree");
    FUZZ_CHECK(m.embed.size(0) == c.vocab_size && m.embed.size(1) == c.hidden_size, "embed");
    FUZZ_CHECK(int64_t(m.layers.size()) == c.n_layers, "layers");
    FUZZ_CHECK(m.lm_head.size(0) == c.vocab_size, "lm_head");
  });
  return 0;
}
