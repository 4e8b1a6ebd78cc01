// Fuzzes Hugging Face config.json parsing (checkpoints/hf_config.h): the input is a
// config.json, read the way a model directory's is (read_json_file, then parse_hf_config
// and parse_dms_config, as for an exported DMS model).
// Expected rejection: dms::InputError (not JSON, unknown architecture, missing or
// implausible fields, unsupported features, bad dms_* values).
// Checked on acceptance: the DMS settings survive their own export
// (parse_dms_config(dms_config_json(d)) is accepted and equal).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include "checkpoints/hf_config.h"
#include "common/json_file.h"
#include "fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  at::set_num_threads(1);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string path = fuzz::write_file("config.json", data, size);
  nlohmann::json j;
  if (!fuzz::accepts([&] { j = dms::read_json_file(path); })) return 0;
  fuzz::accepts([&] {
    const dms::ModelConfig c = dms::parse_hf_config(j, path);
    FUZZ_CHECK(c.vocab_size > 0 && c.n_layers > 0 && c.n_heads > 0, "accepted config is plausible");
  });
  fuzz::accepts([&] {
    const dms::DmsConfig d = dms::parse_dms_config(j, path);
    if (!d.enabled) return;
    const dms::DmsConfig back = dms::parse_dms_config(dms::dms_config_json(d), "round trip");
    FUZZ_CHECK(back.enabled && back.window == d.window && back.per_layer == d.per_layer &&
                   back.predictor == d.predictor,
               "dms_config_json round trip");
  });
  return 0;
}
