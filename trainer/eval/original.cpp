#include "trainer/eval/original.h"

#include <filesystem>
#include <iostream>
#include <nlohmann/json.hpp>

#include "checkpoints/model_identity.h"
#include "common/error.h"
#include "common/json_file.h"

namespace fs = std::filesystem;

namespace dms {

namespace {

// What an export's dms_report.json records about its base: the identity, and whether the
// run trained the base weights too.
struct BaseRecord {
  bool present = false, full_weights = false;
  ModelIdentity id;
};

BaseRecord read_base_record(const std::string& model_path) {
  BaseRecord b;
  const fs::path report = fs::path(model_path) / "dms_report.json";
  if (!fs::is_directory(model_path) || !fs::exists(report)) return b;
  const nlohmann::json r = read_json_file(report.string());
  if (!r.is_object() || !r.contains("base_model")) return b;
  b.id = ModelIdentity::from_json(r["base_model"], report.string());
  b.present = true;
  const nlohmann::json mode = r.value("config", nlohmann::json::object()).value("train_mode", "");
  b.full_weights = mode.is_string() && mode.get<std::string>() == "all";
  return b;
}

}  // namespace

OriginalChoice choose_original(const std::string& model_path, const std::string& original_opt,
                               const std::string& option) {
  const BaseRecord b = read_base_record(model_path);
  if (!original_opt.empty()) {
    OriginalChoice c{original_opt, original_opt + " (" + option + ")"};
    if (b.present && identify_model(original_opt).sha256 != b.id.sha256) {
      c.description += ", not the recorded base " + b.id.path;
      std::cerr << "note: " << option << " " << original_opt
                << " is not the base this export was trained from (" << b.id.path
                << ", by sha256); comparing against it as asked\n";
    }
    return c;
  }
  if (!b.present) return {"", model_path + " with eviction off"};
  try {
    const std::string path = locate_base(b.id, "", option);
    return {path, path + " (the base recorded in the export)"};
  } catch (const InputError& e) {  // moved or changed: locate_base's message names it
    if (b.full_weights)
      throw InputError(std::string(e.what()) +
                       " (a full-weight export: with eviction off it is the fine-tuned model, "
                       "not the original)");
    std::cerr << "note: " << e.what()
              << "; this adapters-only export carries the base weights unchanged, so the "
                 "original is the export with eviction off\n";
    return {"", model_path + " with eviction off (its base weights; the recorded base is gone)"};
  }
}

}  // namespace dms
