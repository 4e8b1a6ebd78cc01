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
// Every dms_* field of the official configuration for an export (inverse of
// parse_dms_config), with values it accepts: dms_paged_attention_block_size below the window
// (paged_block_size), eviction on, its defaults for the fields we do not use.
nlohmann::json dms_config_json(const DmsConfig& d);
int64_t paged_block_size(int64_t window);

}  // namespace dms
