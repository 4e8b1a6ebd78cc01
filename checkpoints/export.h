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
nlohmann::json hf_config_json(const Model& m,
                              const nlohmann::json& base = nlohmann::json::object());

struct ExportExtras {
  nlohmann::json base_config = nlohmann::json::object();
  std::vector<std::string> copy_files;  // e.g. tokenizer files, copied into the directory
  nlohmann::json report;                // written as dms_report.json when not null
};

// Writes into a staging directory next to `dir` and renames it into place, so `dir`
// is either absent, the old export, or the complete new one. An existing non-empty
// `dir` is replaced only with overwrite (InputError otherwise).
void write_hf_model(const Model& m, const std::string& dir, const ExportExtras& extras = {},
                    bool overwrite = false);

}  // namespace dms
