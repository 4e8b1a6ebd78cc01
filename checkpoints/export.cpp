#include "checkpoints/export.h"

#include <fcntl.h>
#include <stdio.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <map>
#include <filesystem>
#include <fstream>
#include <set>

#include "checkpoints/hf_config.h"
#include "checkpoints/remote_code.h"
#include "checkpoints/safetensors.h"
#include "common/atomic_file.h"
#include "common/error.h"

namespace fs = std::filesystem;

namespace dms {

nlohmann::json hf_config_json(const Model& m, const nlohmann::json& base, at::ScalarType dtype) {
  const ModelConfig& c = m.config;
  nlohmann::json j = base.is_object() ? base : nlohmann::json::object();
  j["architectures"] = {c.architecture};
  j["model_type"] = c.family;
  j["vocab_size"] = c.vocab_size;
  j["hidden_size"] = c.hidden_size;
  j["intermediate_size"] = c.intermediate_size;
  j["num_hidden_layers"] = c.n_layers;
  j["num_attention_heads"] = c.n_heads;
  j["num_key_value_heads"] = c.n_kv_heads;
  j["head_dim"] = c.head_dim;
  j["max_position_embeddings"] = c.max_position;
  j["rms_norm_eps"] = c.rms_eps;
  j["rope_theta"] = c.rope_theta;
  j["tie_word_embeddings"] = c.tied_embeddings;
  j["hidden_act"] = "silu";
  if (c.bos_id >= 0 && !j.contains("bos_token_id")) j["bos_token_id"] = c.bos_id;
  if (c.eos_id >= 0 && !j.contains("eos_token_id")) j["eos_token_id"] = c.eos_id;
  if (c.family == "llama") {
    j["attention_bias"] = c.qkv_bias;
    j["mlp_bias"] = c.mlp_bias;
  }
  if (c.family == "mistral")
    j["sliding_window"] =
        c.sliding_window > 0 ? nlohmann::json(c.sliding_window) : nlohmann::json();
  if (!c.rope_scaling.type.empty())
    j["rope_scaling"] = {
        {"rope_type", c.rope_scaling.type},
        {"factor", c.rope_scaling.factor},
        {"low_freq_factor", c.rope_scaling.low_freq_factor},
        {"high_freq_factor", c.rope_scaling.high_freq_factor},
        {"original_max_position_embeddings", c.rope_scaling.original_max_position}};
  const at::ScalarType t = dtype == at::ScalarType::Undefined ? m.embed.scalar_type() : dtype;
  j["torch_dtype"] = std::string(t == at::kBFloat16 ? "bfloat16"
                                 : t == at::kHalf   ? "float16"
                                                    : "float32");
  if (m.dms.enabled) {
    j.update(dms_config_json(m.dms));
    // With trust_remote_code=True transformers builds our DMS class; without it, model_type
    // (the base family's) gives the plain base model.
    j["architectures"] = {"DmsForCausalLM"};
    j["auto_map"] = {{"AutoConfig", "configuration_dms.DmsConfig"},
                     {"AutoModelForCausalLM", "modeling_dms.DmsForCausalLM"}};
  }
  return j;
}

bool is_dms_export(const std::string& dir) {
  static const std::set<std::string> names = {"config.json",
                                              "model.safetensors",
                                              "dms_report.json",
                                              "tokenizer.model",
                                              "tokenizer.json",
                                              "tokenizer_config.json",
                                              "special_tokens_map.json",
                                              "generation_config.json",
                                              "vocab.json",
                                              "merges.txt",
                                              "chat_template.jinja",
                                              "configuration_dms.py",
                                              "modeling_dms.py"};
  std::error_code ec;
  if (!fs::is_directory(dir, ec) || fs::is_symlink(dir, ec)) return false;
  bool report = false, config = false;
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    const std::string n = e.path().filename().string();
    const bool spm = n.size() > 6 && n.compare(n.size() - 6, 6, ".model") == 0;  // tok512.model
    const bool model_file = n.rfind("model-", 0) == 0 || n == "model.safetensors.index.json" || spm;
    if (!e.is_regular_file(ec) || e.is_symlink(ec) || (!names.count(n) && !model_file))
      return false;
    report = report || n == "dms_report.json";
    if (n == "config.json") {
      std::ifstream in(e.path());
      std::string text((std::istreambuf_iterator<char>(in)), {});
      config = text.find("\"dms_window_size\"") != std::string::npos;
    }
  }
  return !ec && report && config;
}

namespace {

// Puts the complete `stage` at `out`: a rename when `out` is absent or an empty directory,
// else an atomic exchange (the old export ends up at `stage` and is deleted after).
void put_in_place(const fs::path& stage, const fs::path& out) {
  std::error_code ec;
  if (!fs::exists(out, ec) || (fs::is_directory(out, ec) && fs::is_empty(out, ec))) {
    fs::rename(stage, out);
    return;
  }
  if (::renameat2(AT_FDCWD, stage.c_str(), AT_FDCWD, out.c_str(), RENAME_EXCHANGE) != 0)
    throw std::runtime_error(out.string() +
                             ": could not replace the export: " + std::strerror(errno));
  fs::remove_all(stage, ec);  // the old export
}

}  // namespace

void check_export_target(const std::string& dir, bool overwrite) {
  if (!fs::exists(dir) || (fs::is_directory(dir) && fs::is_empty(dir))) return;
  require(overwrite, dir, "already exists (choose another --out or pass --force)");
  require(is_dms_export(dir), dir,
          "is not an export written by dms export: --force replaces only those "
          "(nothing was deleted)");
}

namespace {

// The weights in the export's dtype (floating tensors cast; at::Tensor::to rounds to nearest
// even), into one model.safetensors or, past max_shard_bytes, shards with an index.
void write_weights(const Model& m, const fs::path& stage, const ExportExtras& x) {
  std::vector<std::vector<std::pair<std::string, at::Tensor>>> shards(1);
  uint64_t shard_bytes = 0, total = 0;
  for (auto& [name, t] : weight_list(m)) {
    at::Tensor w = t.is_floating_point() ? t.to(x.dtype).contiguous() : t.contiguous();
    const uint64_t bytes = uint64_t(w.numel()) * w.element_size();
    if (shard_bytes > 0 && shard_bytes + bytes > x.max_shard_bytes) {
      shards.emplace_back();
      shard_bytes = 0;
    }
    shards.back().emplace_back(name, w);
    shard_bytes += bytes;
    total += bytes;
  }
  const std::map<std::string, std::string> meta = {{"format", "pt"}, {"producer", "dms-retrofit"}};
  if (shards.size() == 1) {
    write_safetensors((stage / "model.safetensors").string(), shards[0], meta);
    return;
  }
  nlohmann::json index = {{"metadata", {{"total_size", total}}}, {"weight_map", nlohmann::json::object()}};
  char name[64];
  for (size_t i = 0; i < shards.size(); ++i) {
    std::snprintf(name, sizeof name, "model-%05zu-of-%05zu.safetensors", i + 1, shards.size());
    write_safetensors((stage / name).string(), shards[i], meta);
    for (const auto& [n, w] : shards[i]) index["weight_map"][n] = name;
  }
  write_file_atomic((stage / "model.safetensors.index.json").string(), index.dump(2) + "\n");
}

}  // namespace

void write_hf_model(const Model& m, const std::string& dir, const ExportExtras& extras,
                    bool overwrite) {
  const fs::path out(dir);
  check_export_target(dir, overwrite);
  const fs::path parent = out.has_parent_path() ? out.parent_path() : fs::path(".");
  fs::create_directories(parent);
  const fs::path stage =
      parent / (out.filename().string() + ".partial-" + std::to_string(::getpid()));
  fs::remove_all(stage);
  fs::create_directories(stage);
  try {
    write_weights(m, stage, extras);
    write_file_atomic((stage / "config.json").string(),
                      hf_config_json(m, extras.base_config, extras.dtype).dump(2) + "\n");
    if (!extras.report.is_null())
      write_file_atomic((stage / "dms_report.json").string(), extras.report.dump(2) + "\n");
    if (m.dms.enabled) {
      write_file_atomic((stage / "configuration_dms.py").string(), remote_configuration_py());
      write_file_atomic((stage / "modeling_dms.py").string(), remote_modeling_py());
    }
    for (const auto& [from, name] : extras.copy_files)
      fs::copy_file(from, stage / name, fs::copy_options::overwrite_existing);
    for (const auto& [name, text] : extras.text_files)
      write_file_atomic((stage / name).string(), text);
    put_in_place(stage, out);
  } catch (...) {
    std::error_code ec;
    fs::remove_all(stage, ec);
    throw;
  }
}

}  // namespace dms
