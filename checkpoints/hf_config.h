// Hugging Face config.json -> ModelConfig for the supported architectures.
#pragma once
#include <nlohmann/json.hpp>
#include <string>

#include "model/config.h"
#include "model/dms.h"

namespace dms {

// InputError "<source>: ..." for an unknown architecture, a missing required field,
// an unsupported feature (activation, rope scaling type, per-layer sliding windows).
ModelConfig parse_hf_config(const nlohmann::json& j, const std::string& source);
ModelConfig read_hf_config(const std::string& config_json_path);

// DMS settings of an exported model (the official dms_* fields); enabled == false
// when the config has none.
DmsConfig parse_dms_config(const nlohmann::json& j, const std::string& source);
// The dms_* fields for an export (inverse of parse_dms_config).
nlohmann::json dms_config_json(const DmsConfig& d);

}  // namespace dms
