// Writing a model as a Hugging Face directory (config.json + model.safetensors),
// DMS models with the official dms_* config fields and tensor names.
#pragma once
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "model/transformer.h"

namespace dms {

// config.json contents for `m`: `base` (the source's original config, if any) with our
// architecture fields set and, for a DMS model, the dms_* fields added.
// torch_dtype names the weights' dtype: `dtype` (the export's), else the model's own.
nlohmann::json hf_config_json(const Model& m,
                              const nlohmann::json& base = nlohmann::json::object(),
                              at::ScalarType dtype = at::ScalarType::Undefined);

struct ExportExtras {
  nlohmann::json base_config = nlohmann::json::object();
  // (source path, name in the export): tokenizer files under the names Hugging Face reads.
  std::vector<std::pair<std::string, std::string>> copy_files;
  // (name, contents): files made for the export (tokenizer_config.json, generation_config.json).
  std::vector<std::pair<std::string, std::string>> text_files;
  nlohmann::json report;  // written as dms_report.json when not null
  // The weights' dtype in the export (floating tensors are cast, rounding to nearest even).
  at::ScalarType dtype = at::kFloat;
  // Over this many bytes the weights are sharded (model-0000i-of-0000n.safetensors plus
  // model.safetensors.index.json), as transformers' save_pretrained does at 5 GB.
  uint64_t max_shard_bytes = 5'000'000'000ull;
};

// Writes into a staging directory next to `dir` and puts it in place with one atomic
// rename (an existing export is exchanged with it, then deleted), so at every instant
// `dir` is either absent, the old export, or the complete new one. An existing non-empty
// `dir` is replaced only with overwrite, and only when it is one of our exports
// (is_dms_export): never a run directory, its parent, or anything else (InputError).
// A directory `dms export` wrote: only regular files of the names an export holds, among
// them config.json with dms_* fields and dms_report.json.
bool is_dms_export(const std::string& dir);

// InputError unless `dir` may receive an export: absent, an empty directory, or (with
// overwrite) one of our exports. Nothing is changed.
void check_export_target(const std::string& dir, bool overwrite);

void write_hf_model(const Model& m, const std::string& dir, const ExportExtras& extras = {},
                    bool overwrite = false);

}  // namespace dms
