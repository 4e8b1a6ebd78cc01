#include "checkpoints/model_identity.h"

#include <algorithm>
#include <filesystem>
#include <vector>

#include "common/error.h"
#include "common/sha256.h"

namespace fs = std::filesystem;

namespace dms {

namespace {

// The files that make a model: weights and its config (not READMEs or tokenizers).
bool model_file(const std::string& name) {
  auto ends = [&](const std::string& s) {
    return name.size() >= s.size() && name.compare(name.size() - s.size(), s.size(), s) == 0;
  };
  return name == "config.json" || ends(".safetensors") || name == "model.safetensors.index.json";
}

}  // namespace

nlohmann::json ModelIdentity::to_json() const {
  return {{"path", path}, {"size", size}, {"sha256", sha256}};
}

ModelIdentity ModelIdentity::from_json(const nlohmann::json& j, const std::string& where) {
  ModelIdentity m;
  require(j.is_object() && j.contains("path") && j["path"].is_string() && j.contains("size") &&
              j["size"].is_number_unsigned() && j.contains("sha256") && j["sha256"].is_string(),
          where, "base model record needs path, size and sha256");
  m.path = j["path"].get<std::string>();
  m.size = j["size"].get<uint64_t>();
  m.sha256 = j["sha256"].get<std::string>();
  return m;
}

ModelIdentity identify_model(const std::string& path) {
  ModelIdentity id;
  id.path = fs::absolute(path).lexically_normal().string();
  if (!fs::is_directory(path)) {
    require(fs::is_regular_file(path), path, "not a model file or directory");
    id.size = fs::file_size(path);
    id.sha256 = sha256_file(path);
    return id;
  }
  std::vector<std::string> names;
  for (const auto& e : fs::directory_iterator(path))
    if (e.is_regular_file() && model_file(e.path().filename().string()))
      names.push_back(e.path().filename().string());
  std::sort(names.begin(), names.end());
  require(!names.empty(), path, "no model files (config.json, *.safetensors)");
  std::string listing;
  for (const auto& n : names) {
    const std::string f = (fs::path(path) / n).string();
    id.size += fs::file_size(f);
    listing += n + " " + sha256_file(f) + "\n";
  }
  id.sha256 = sha256_hex(listing.data(), listing.size());
  return id;
}

std::string locate_base(const ModelIdentity& recorded, const std::string& override_path,
                        const std::string& option) {
  const std::string path = override_path.empty() ? recorded.path : override_path;
  require(fs::exists(path), path,
          "the base model is not there (moved?): give its new location with " + option);
  const ModelIdentity now = identify_model(path);
  require(now.size == recorded.size && now.sha256 == recorded.sha256, path,
          "is not the base model this run was trained from (sha256 " + now.sha256.substr(0, 12) +
              "..., recorded " + recorded.sha256.substr(0, 12) + "... for " + recorded.path +
              "): give the original with " + option);
  return path;
}

}  // namespace dms
