// Which model a run was trained from: its path, size and a sha256 over its files, recorded
// in every checkpoint so that export and evaluation use exactly that base — and say so
// (exit 2) when it moved or changed, instead of silently using something else.
#pragma once
#include <nlohmann/json.hpp>
#include <string>

namespace dms {

struct ModelIdentity {
  std::string path;    // absolute path when recorded
  uint64_t size = 0;   // bytes of the files hashed
  std::string sha256;  // file: of its bytes; HF directory: of "name sha256" per file, sorted

  nlohmann::json to_json() const;
  // InputError naming `where` when a field is missing or of the wrong type.
  static ModelIdentity from_json(const nlohmann::json& j, const std::string& where);
};

// A llama2.c .bin (the file) or an HF directory (config.json and the weight files).
ModelIdentity identify_model(const std::string& path);

// The recorded base, at `override_path` when given, else where it was recorded. InputError
// naming the path and `option` when it is missing, and when its contents differ.
std::string locate_base(const ModelIdentity& recorded, const std::string& override_path,
                        const std::string& option);

}  // namespace dms
