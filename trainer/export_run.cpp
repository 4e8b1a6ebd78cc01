#include "trainer/export_run.h"

#include <filesystem>
#include <fstream>
#include <iostream>

#include "checkpoints/export.h"
#include "checkpoints/json_file.h"
#include "checkpoints/load_model.h"
#include "checkpoints/train_state.h"
#include "data/prepare.h"
#include "data/token_file.h"
#include "model/error.h"
#include "trainer/retrofit.h"

namespace fs = std::filesystem;

namespace dms {

std::string export_run(const std::string& run_dir, int64_t step, const std::string& out,
                       bool overwrite) {
  const std::string cfg_path = (fs::path(run_dir) / "config.json").string();
  require(fs::exists(cfg_path), run_dir, "not a retrofit run (no config.json)");
  RetrofitConfig cfg = RetrofitConfig::from_json(read_json_file(cfg_path));
  std::string ckpt;
  if (step > 0) {
    ckpt = checkpoint_path(run_dir, step);
    require(fs::exists(ckpt), ckpt, "no checkpoint for step " + std::to_string(step));
  } else {
    auto all = list_checkpoints(run_dir);
    require(!all.empty(), run_dir, "has no checkpoints yet");
    ckpt = all.back();
  }
  TrainState s = read_train_state(ckpt);
  Model m = load_model(cfg.model);
  attach_dms(m, cfg.dms());
  {
    at::NoGradGuard ng;
    std::map<std::string, at::Tensor*> by_name;
    for (auto& [n, t] : named_weights(m)) by_name[n] = t;
    for (const auto& [n, t] : s.trained) {
      require(by_name.count(n) > 0, ckpt, "tensor '" + n + "' is not part of the model");
      by_name[n]->copy_(t);
    }
  }

  ExportExtras x;
  if (fs::is_directory(cfg.model)) {
    x.base_config = read_json_file((fs::path(cfg.model) / "config.json").string());
    for (const char* f : {"tokenizer.model", "tokenizer.json", "tokenizer_config.json",
                          "special_tokens_map.json", "generation_config.json"})
      if (fs::exists(fs::path(cfg.model) / f))
        x.copy_files.push_back((fs::path(cfg.model) / f).string());
  } else {
    const std::string tok = find_tokenizer(cfg.model, m.config.vocab_size);
    if (!tok.empty()) x.copy_files.push_back(tok);
  }

  // Report: run facts, the last metrics, and compression measured on held-out rows.
  nlohmann::json report = {{"run", fs::absolute(run_dir).string()},
                           {"checkpoint", fs::path(ckpt).filename().string()},
                           {"steps", s.step},
                           {"source_model", cfg.model},
                           {"data", cfg.data},
                           {"config", cfg.to_json()}};
  std::ifstream metrics((fs::path(run_dir) / "metrics.jsonl").string());
  std::string line, last_train, last_val;
  while (std::getline(metrics, line)) {
    if (line.find("\"kd_loss\"") != std::string::npos) last_train = line;
    if (line.find("\"val_kd_loss\"") != std::string::npos) last_val = line;
  }
  if (!last_train.empty()) report["last_train"] = nlohmann::json::parse(last_train);
  if (!last_val.empty()) report["last_validation"] = nlohmann::json::parse(last_val);
  const std::string val = cfg.val_data.empty() ? validation_path(cfg.data) : cfg.val_data;
  if (fs::exists(val)) {
    TokenData v = open_tokens(val, cfg.seq_len);
    std::vector<int64_t> idx;
    for (int64_t i = 0; i < std::min<int64_t>(v.n_rows, 16); ++i) idx.push_back(i);
    at::NoGradGuard ng;
    ForwardResult r = forward_full(m, v.rows(idx), {}, ForwardOptions{});
    CompressionStats cs =
        compression_from_decisions(r.decisions, {}, m.dms.window, m.config.sliding_window);
    auto to_vec = [](const at::Tensor& t) {
      std::vector<std::vector<double>> out;
      at::Tensor d = t.to(at::kDouble).contiguous();
      for (int64_t l = 0; l < d.size(0); ++l) {
        std::vector<double> row;
        for (int64_t h = 0; h < d.size(1); ++h) row.push_back(d[l][h].item<double>());
        out.push_back(row);
      }
      return out;
    };
    report["measured"] = {{"rows", idx.size()},
                          {"seq_len", v.seq_len},
                          {"decision_cr", cs.decision_cr()},
                          {"effective_kv_cr", cs.effective_kv_cr()},
                          {"eviction_rate_per_layer_head", to_vec(cs.eviction_rate_lh())},
                          {"effective_cr_per_layer_head", to_vec(cs.effective_cr_lh())}};
  }
  x.report = report;
  write_hf_model(m, out, x, overwrite);
  return ckpt;
}

}  // namespace dms
