// dms eval: DMS vs the original model and training-free eviction on held-out data.
#include <ATen/Parallel.h>

#include <filesystem>
#include <iostream>

#include "common/atomic_file.h"
#include "checkpoints/load_model.h"
#include "data/token_file.h"
#include "common/error.h"
#include "trainer/cli/cli.h"
#include "trainer/eval/evaluate.h"

namespace fs = std::filesystem;

namespace dms {

namespace {

struct EvalArgs {
  std::string model, original, data, policy = "dms", json;
  int64_t budget = 0;
  bool match_budget = false, compare = false;
  EvalOptions opts;
  int threads = 0;
};

void run_eval(const EvalArgs& a) {
  if (a.threads > 0) at::set_num_threads(a.threads);
  Model m = load_model(a.model);
  // The original: --original, else the same weights with eviction off (exact for adapter
  // retrofits, whose base weights are frozen).
  Model orig = a.original.empty() ? m : load_model(a.original);
  if (a.original.empty()) orig.dms.enabled = false;
  TokenData data = open_tokens(a.data);
  validate_tokens(data, m.config.vocab_size, m.config.max_position);
  const int64_t T = data.seq_len;

  std::vector<EvalRow> rows;
  auto run = [&](const Model& model, const std::string& name, CachePolicy p, int64_t budget) {
    std::cerr << "eval: " << name << " (" << policy_name(p)
              << (budget > 0 ? ", budget " + std::to_string(budget) : "") << ")...\n";
    EvalRow r = evaluate(model, orig, data, p, budget, a.opts);
    r.model = name;
    rows.push_back(r);
    return r;
  };
  if (a.compare) {
    require(m.dms.enabled, a.model, "--compare needs a DMS model (an export of 'dms retrofit')");
    run(orig, "original", CachePolicy::full, 0);
    EvalRow d = run(m, "dms", CachePolicy::dms, 0);
    const int64_t budget = a.budget > 0 ? a.budget : budget_for_cr(d.effective_kv_cr, T);
    for (CachePolicy p : {CachePolicy::window, CachePolicy::h2o, CachePolicy::tova})
      run(orig, policy_name(p), p, budget);
  } else {
    const CachePolicy p = parse_policy(a.policy, "--policy");
    int64_t budget = a.budget;
    if (a.match_budget && p != CachePolicy::dms && p != CachePolicy::full) {
      require(m.dms.enabled, a.model, "--match-budget needs a DMS model to match");
      EvalRow d = evaluate(m, orig, data, CachePolicy::dms, 0,
                           EvalOptions{a.opts.rows, a.opts.batch, 0, 0, 0});
      budget = budget_for_cr(d.effective_kv_cr, T);
    }
    run(p == CachePolicy::dms ? m : orig, policy_name(p), p, budget);
  }
  std::cout << format_table(rows);
  if (!a.json.empty()) {
    nlohmann::json j = {
        {"model", a.model},
        {"data", a.data},
        {"seq_len", T},
        {"rows_evaluated", std::min(a.opts.rows > 0 ? a.opts.rows : data.n_rows, data.n_rows)},
        {"rows", nlohmann::json::array()}};
    for (const auto& r : rows) j["rows"].push_back(r.to_json());
    if (fs::path(a.json).has_parent_path()) fs::create_directories(fs::path(a.json).parent_path());
    write_file_atomic(a.json, j.dump(2) + "\n");
    std::cerr << "wrote " << a.json << "\n";
  }
}

}  // namespace

void add_eval_command(CLI::App& app) {
  auto a = std::make_shared<EvalArgs>();
  CLI::App* cmd = app.add_subcommand(
      "eval",
      "Teacher-forced evaluation on held-out tokens with real eviction: perplexity, KL to the "
      "original model, decision and effective KV compression, greedy agreement. --compare "
      "prints original, DMS and window/H2O/TOVA at the DMS model's effective KV CR.");
  cmd->add_option("--model", a->model, "Model (a DMS export for dms/--compare)")->required();
  cmd->add_option("--original", a->original,
                  "The unchanged model (default: --model with eviction off)");
  cmd->add_option("--data", a->data, "Held-out tokens (.h5)")->required();
  cmd->add_option("--policy", a->policy, "dms | window | h2o | tova | none")->capture_default_str();
  cmd->add_option("--budget", a->budget, "Tokens per KV head for window/h2o/tova");
  cmd->add_flag("--match-budget", a->match_budget, "Budget giving the DMS model's effective KV CR");
  cmd->add_flag("--compare", a->compare, "Original, DMS and all baselines in one table");
  cmd->add_option("--json", a->json, "Also write the table as JSON");
  cmd->add_option("--rows", a->opts.rows, "Held-out rows to evaluate (0: all)")
      ->capture_default_str();
  cmd->add_option("--batch", a->opts.batch, "Rows per forward")->capture_default_str();
  cmd->add_option("--gen-rows", a->opts.gen_rows, "Prompts for the greedy-agreement check")
      ->capture_default_str();
  cmd->add_option("--gen-tokens", a->opts.gen_tokens, "Greedy tokens per prompt")
      ->capture_default_str();
  cmd->add_option("--prompt-len", a->opts.prompt_len, "Prompt tokens taken from each row")
      ->capture_default_str();
  cmd->add_option("--threads", a->threads, "CPU threads (0: LibTorch default)");
  cmd->callback([a] { run_eval(*a); });
}

}  // namespace dms
