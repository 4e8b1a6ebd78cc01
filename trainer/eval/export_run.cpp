#include "trainer/eval/export_run.h"

#include <ATen/core/grad_mode.h>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <iostream>

#include "checkpoints/checkpoint_dir.h"
#include "checkpoints/export.h"
#include "checkpoints/hf_config.h"
#include "checkpoints/load_model.h"
#include "checkpoints/model_identity.h"
#include "common/error.h"
#include "common/json_file.h"
#include "common/mapped_file.h"
#include "data/prepare.h"
#include "data/token_file.h"
#include "data/tokenizer.h"
#include "trainer/config/retrofit_config.h"
#include "trainer/eval/forced.h"

namespace fs = std::filesystem;

namespace dms {

namespace {

// The requested checkpoint, or the newest one that reads back intact.
std::pair<std::string, TrainState> choose_checkpoint(const ExportRequest& req) {
  if (req.step > 0) {
    const std::string ck = checkpoint_dir(req.run_dir, req.step);
    require(fs::exists(ck), ck, "no checkpoint for step " + std::to_string(req.step));
    return {ck, read_train_state(ck)};
  }
  const auto all = list_checkpoints(req.run_dir);
  require(!all.empty(), req.run_dir, "has no checkpoints (not a retrofit run, or not started)");
  for (auto it = all.rbegin(); it != all.rend(); ++it) {
    try {
      return {*it, read_train_state(*it)};
    } catch (const InputError& e) {
      std::cerr << "warning: skipping unusable checkpoint: " << e.what() << "\n";
    }
  }
  throw InputError(req.run_dir + ": no checkpoint reads back intact");
}

// The base model with the trained tensors of the checkpoint on top.
Model build_model(const std::string& ck, const TrainState& s, const RetrofitConfig& cfg,
                  const std::string& base) {
  DmsConfig d = s.dms_json.empty() ? cfg.dms_config()  // written before it was recorded
                                   : parse_dms_config(nlohmann::json::parse(s.dms_json), ck);
  Model m = load_model(base);
  attach_dms(m, d);
  at::NoGradGuard ng;
  std::map<std::string, at::Tensor*> by_name;
  for (auto& [n, t] : named_weights(m)) by_name[n] = t;
  for (const auto& [n, t] : s.trained) {
    require(by_name.count(n) > 0, ck, "tensor '" + n + "' is not part of the model");
    require(by_name[n]->sizes() == t.sizes(), ck, "tensor '" + n + "' has another shape");
    by_name[n]->copy_(t);
  }
  m.dms.target_cr = cfg.dms.target_cr;  // the run's target, whatever the checkpoint recorded
  return m;
}

// Where the checkpoint's base model is: its recorded identity, checked by sha256.
std::string find_base(const std::string& ck, const TrainState& s, const RetrofitConfig& cfg,
                      const std::string& override_path, const std::string& option) {
  if (!s.base_json.empty())
    return locate_base(ModelIdentity::from_json(nlohmann::json::parse(s.base_json), ck),
                       override_path, option);
  // Written before the base was recorded: trust the path.
  const std::string base = override_path.empty() ? cfg.run.model : override_path;
  require(fs::exists(base), base, "the base model is not there (moved?): give it with " + option);
  return base;
}

std::vector<std::vector<double>> matrix(const at::Tensor& t) {
  std::vector<std::vector<double>> out;
  at::Tensor d = t.to(at::kDouble).contiguous();
  for (int64_t l = 0; l < d.size(0); ++l)
    out.emplace_back(d.data_ptr<double>() + l * d.size(1),
                     d.data_ptr<double>() + (l + 1) * d.size(1));
  return out;
}

// Run facts, the last metrics, and compression measured on held-out rows.
nlohmann::json build_report(const ExportRequest& req, const std::string& ck, const TrainState& s,
                            const RetrofitConfig& cfg, const std::string& base, const Model& m) {
  nlohmann::json report = {{"run", fs::absolute(req.run_dir).string()},
                           {"checkpoint", fs::path(ck).filename().string()},
                           {"steps", s.step},
                           {"source_model", base},
                           {"data", cfg.run.data},
                           {"config", cfg.to_json()}};
  if (!s.base_json.empty()) report["base_model"] = nlohmann::json::parse(s.base_json);
  const std::string metrics_path = (fs::path(req.run_dir) / "metrics.jsonl").string();
  if (fs::exists(metrics_path)) require_regular_file(metrics_path);
  std::ifstream metrics(metrics_path);
  std::string line, last_train, last_val;
  while (std::getline(metrics, line)) {
    if (line.find("\"kd_loss\"") != std::string::npos) last_train = line;
    if (line.find("\"val_kd_loss\"") != std::string::npos) last_val = line;
  }
  if (!last_train.empty()) report["last_train"] = nlohmann::json::parse(last_train);
  if (!last_val.empty()) report["last_validation"] = nlohmann::json::parse(last_val);
  const std::string val =
      cfg.run.val_data.empty() ? validation_path(cfg.run.data) : cfg.run.val_data;
  if (!fs::exists(val)) return report;
  TokenData v = open_tokens(val, cfg.run.seq_len, "uint16",
                            cfg.run.trust_token_files ? TokenTrust::trust : TokenTrust::verify);
  std::vector<int64_t> idx;
  for (int64_t i = 0; i < std::min<int64_t>(v.n_rows, 16); ++i) idx.push_back(i);
  // The model under hard eviction against itself with eviction off.
  const ForcedSums f = forced_pass(m, m, v.rows(idx), ForcedOptions{});
  const CompressionStats& cs = f.compression;
  report["measured"] = {{"rows", idx.size()},
                        {"seq_len", v.seq_len},
                        {"ppl", std::exp(f.nll_mean())},
                        {"kl_original_model", f.kl_ref_model_mean()},
                        {"kl_model_original", f.kl_model_ref_mean()},
                        {"decision_cr", cs.decision_cr()},
                        {"effective_kv_cr", cs.effective_kv_cr()},
                        {"end_of_sequence_kv_cr", cs.end_kv_cr()},
                        {"eviction_rate_per_layer_head", matrix(cs.eviction_rate_lh())},
                        {"effective_cr_per_layer_head", matrix(cs.effective_cr_lh())}};
  return report;
}

// tokenizer_config.json for a tokenizer that came without one: its class and BOS/EOS/UNK,
// so that transformers' AutoTokenizer loads it and frames text as the model was trained.
std::string tokenizer_config_for(const Tokenizer& t, const Model& m, bool sentencepiece) {
  nlohmann::json j = {
      {"tokenizer_class", sentencepiece ? "LlamaTokenizer" : "PreTrainedTokenizerFast"},
      {"model_max_length", m.config.max_position > 0 ? m.config.max_position : 2048},
      {"clean_up_tokenization_spaces", false}};
  auto name = [&](int64_t id) { return id >= 0 ? nlohmann::json(t.piece(id)) : nlohmann::json(); };
  j["bos_token"] = name(t.bos_id());
  j["eos_token"] = name(t.eos_id());
  j["unk_token"] = name(t.unk_id());
  if (sentencepiece) {
    j["add_bos_token"] = t.bos_id() >= 0;  // llama2.c and Llama 2: BOS, no EOS
    j["add_eos_token"] = false;
    j["legacy"] = true;
  }
  return j.dump(2) + "\n";
}

// The base's tokenizer and generation files under the names Hugging Face reads; a
// tokenizer_config.json and generation_config.json made from the tokenizer and the model's
// BOS/EOS when the base has none (a llama2.c .bin has only tok<N>.model beside it).
ExportExtras base_files(const std::string& base, const Model& m) {
  ExportExtras x;
  const fs::path dir = fs::is_directory(base) ? fs::path(base) : fs::path(base).parent_path();
  if (fs::is_directory(base)) {
    x.base_config = read_json_file((dir / "config.json").string());
    for (const char* f :
         {"tokenizer.model", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
          "generation_config.json", "vocab.json", "merges.txt", "chat_template.jinja"})
      if (fs::exists(dir / f)) x.copy_files.emplace_back((dir / f).string(), f);
  }
  const std::string tok_path = find_tokenizer(base, m.config.vocab_size);
  auto copied = [&](const std::string& name) {
    for (const auto& [from, n] : x.copy_files)
      if (n == name) return true;
    return false;
  };
  if (!tok_path.empty()) {
    const fs::path p(tok_path);
    const bool sentencepiece = p.extension() == ".model";
    const std::string name = sentencepiece ? "tokenizer.model" : p.filename().string();
    if (!copied(name)) x.copy_files.emplace_back(tok_path, name);
    if (name == "vocab.json" && !copied("merges.txt"))
      x.copy_files.emplace_back((p.parent_path() / "merges.txt").string(), "merges.txt");
    if (!copied("tokenizer_config.json"))
      x.text_files.emplace_back("tokenizer_config.json",
                                tokenizer_config_for(load_tokenizer(tok_path), m, sentencepiece));
  }
  if (!copied("generation_config.json")) {
    nlohmann::json g = {{"_from_model_config", true}};
    if (m.config.bos_id >= 0) g["bos_token_id"] = m.config.bos_id;
    if (m.config.eos_id >= 0) g["eos_token_id"] = m.config.eos_id;
    x.text_files.emplace_back("generation_config.json", g.dump(2) + "\n");
  }
  return x;
}

// The export's dtype: the source's own unless --dtype says otherwise.
at::ScalarType export_dtype(const ExportRequest& req, const Model& m) {
  switch (req.dtype) {
    case ExportDtype::f32:
      return at::kFloat;
    case ExportDtype::bf16:
      return at::kBFloat16;
    case ExportDtype::f16:
      return at::kHalf;
    case ExportDtype::source:
      break;
  }
  return m.config.dtype == "bfloat16"  ? at::kBFloat16
         : m.config.dtype == "float16" ? at::kHalf
                                       : at::kFloat;
}

}  // namespace

CheckpointModel load_checkpoint_model(const std::string& checkpoint, const std::string& base,
                                      const std::string& base_option) {
  CheckpointModel c;
  c.checkpoint = checkpoint;
  c.state = read_train_state(checkpoint);
  const RetrofitConfig cfg =
      RetrofitConfig::from_json(nlohmann::json::parse(c.state.config_json), checkpoint);
  c.base = find_base(checkpoint, c.state, cfg, base, base_option);
  c.model = build_model(checkpoint, c.state, cfg, c.base);
  return c;
}

std::string export_run(const ExportRequest& req) {
  // The target first: nothing is read, let alone replaced, when it is not ours.
  check_export_target(req.out, req.force);
  auto [ck, s] = choose_checkpoint(req);
  const RetrofitConfig cfg = RetrofitConfig::from_json(nlohmann::json::parse(s.config_json), ck);
  const std::string base = find_base(ck, s, cfg, req.base, "--base");
  Model m = build_model(ck, s, cfg, base);
  ExportExtras x = base_files(base, m);
  x.dtype = export_dtype(req, m);
  x.report = build_report(req, ck, s, cfg, base, m);
  write_hf_model(m, req.out, x, req.force);
  return ck;
}

}  // namespace dms
