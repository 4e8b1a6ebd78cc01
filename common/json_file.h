// Reading JSON files that come from outside (configs, shard indexes), size-capped.
#pragma once
#include <nlohmann/json.hpp>
#include <string>

namespace dms {

constexpr uint64_t kMaxJsonFile = 64ull << 20;

// Parses `path`; InputError "<path>: ..." when missing, too large or not JSON.
nlohmann::json read_json_file(const std::string& path, uint64_t max_bytes = kMaxJsonFile);

}  // namespace dms
