// Hugging Face config.json -> ModelConfig for the supported architectures.
#pragma once
#include <nlohmann/json.hpp>
#include <string>

#include "model/config.h"

namespace dms {

// InputError "<source>: ..." for an unknown architecture, a missing required field,
// an unsupported feature (activation, rope scaling type, per-layer sliding windows).
ModelConfig parse_hf_config(const nlohmann::json& j, const std::string& source);
ModelConfig read_hf_config(const std::string& config_json_path);

}  // namespace dms
