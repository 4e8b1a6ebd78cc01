// dms eval: DMS vs the original model and training-free eviction on held-out data.
#include <ATen/Parallel.h>

#include <filesystem>
#include <iostream>

#include "checkpoints/load_model.h"
#include "common/atomic_file.h"
#include "common/error.h"
#include "common/host.h"
#include "data/token_file.h"
#include "trainer/cli/cli.h"
#include "trainer/cli/commands.h"
#include "trainer/eval/curve.h"
#include "trainer/eval/evaluate.h"
#include "trainer/eval/original.h"

namespace fs = std::filesystem;

namespace dms {

namespace {

void write_json(const std::string& path, const nlohmann::json& j) {
  if (fs::path(path).has_parent_path()) fs::create_directories(fs::path(path).parent_path());
  write_file_atomic(path, j.dump(2) + "\n");
  std::cerr << "wrote " << path << "\n";
}

TokenTrust trust_of(const EvalConfig& a) {
  return a.trust_token_files ? TokenTrust::trust : TokenTrust::verify;
}

void run_curve(const EvalConfig& a) {
  require(!a.compare && a.dump_logits.empty() && a.budget == 0 && !a.match_budget, "--curve",
          "evaluates DMS and every baseline itself: not with --compare, --budget, "
          "--match-budget or --dump-logits");
  require(fs::is_directory(a.model), a.model, "--curve needs a retrofit run directory");
  if (a.threads > 0) use_threads(a.threads);
  TokenData data = open_tokens(a.data, 0, "uint16", trust_of(a));
  Curve c = evaluate_curve(a.model, a.original, "--original", data, a.opts);
  c.data = a.data;
  std::cout << format_curve(c);
  if (!a.json.empty()) write_json(a.json, c.to_json());
}

void run_eval(const EvalConfig& a) {
  if (a.curve) return run_curve(a);
  // Before any work: a dump of the baselines' logits is not offered.
  require(a.dump_logits.empty() ||
              (!a.compare && (a.policy == CachePolicy::dms || a.policy == CachePolicy::full)),
          "--dump-logits", "needs --policy dms or none, without --compare");
  if (a.threads > 0) use_threads(a.threads);
  Model m = load_model(a.model);
  const OriginalChoice oc = choose_original(a.model, a.original, "--original");
  Model orig = oc.path.empty() ? m : load_model(oc.path);
  if (oc.path.empty()) orig.dms.enabled = false;
  TokenData data = open_tokens(a.data, 0, "uint16", trust_of(a));
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
    const CachePolicy p = a.policy;
    int64_t budget = a.budget;
    if (a.match_budget && p != CachePolicy::dms && p != CachePolicy::full) {
      require(m.dms.enabled, a.model, "--match-budget needs a DMS model to match");
      EvalRow d = evaluate(m, orig, data, CachePolicy::dms, 0,
                           EvalOptions{a.opts.rows, a.opts.batch, 0, 0, 0});
      budget = budget_for_cr(d.effective_kv_cr, T);
    }
    run(p == CachePolicy::dms ? m : orig, policy_name(p), p, budget);
  }
  std::cout << "original: " << oc.description << "\n" << format_table(rows);
  if (!a.dump_logits.empty()) {
    dump_logits(a.policy == CachePolicy::dms ? m : orig, data, a.opts.rows, a.policy,
                a.dump_logits);
    std::cerr << "wrote " << a.dump_logits << "\n";
  }
  if (!a.json.empty()) {
    nlohmann::json j = {
        {"model", a.model},
        {"original", oc.description},
        {"data", a.data},
        {"seq_len", T},
        {"rows_evaluated", std::min(a.opts.rows > 0 ? a.opts.rows : data.n_rows, data.n_rows)},
        {"rows", nlohmann::json::array()}};
    for (const auto& r : rows) j["rows"].push_back(r.to_json());
    write_json(a.json, j);
  }
}

}  // namespace

void add_eval_command(CLI::App& app) {
  auto st = std::make_shared<Parsed<EvalConfig>>();
  CLI::App* cmd = app.add_subcommand(
      "eval",
      "Teacher-forced evaluation on held-out tokens with real eviction: perplexity, KL to and "
      "from the original model, decision and effective KV compression, greedy agreement. "
      "--compare prints original, DMS and window/H2O/TOVA at the DMS model's effective KV CR.");
  add_fields(cmd, eval_fields(), st->cfg, st->errors);
  cmd->callback([st] {
    st->check(eval_fields());
    run_eval(st->cfg);
  });
}

}  // namespace dms
