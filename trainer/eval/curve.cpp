#include "trainer/eval/curve.h"

#include <filesystem>
#include <iomanip>
#include <iostream>
#include <map>
#include <sstream>

#include "checkpoints/checkpoint_dir.h"
#include "checkpoints/load_model.h"
#include "common/error.h"
#include "trainer/eval/export_run.h"

namespace fs = std::filesystem;

namespace dms {

std::vector<std::pair<std::string, double>> curve_checkpoints(const std::string& run_dir) {
  std::vector<std::pair<std::string, double>> points;
  std::string last;                                  // the newest intact checkpoint
  for (const auto& c : list_checkpoints(run_dir)) {  // by step
    try {
      const double kept = read_manifest(c).kept_for_cr;
      last = c;
      if (kept > 0) points.emplace_back(c, kept);
    } catch (const InputError& e) {
      std::cerr << "warning: skipping unusable checkpoint: " << e.what() << "\n";
    }
  }
  require(!last.empty(), run_dir, "has no intact checkpoint (not a retrofit run?)");
  if (points.empty() || points.back().first != last) points.emplace_back(last, 0.0);
  return points;
}

Curve evaluate_curve(const std::string& run_dir, const std::string& base,
                     const std::string& base_option, const TokenData& data, const EvalOptions& o) {
  Curve c;
  c.run = run_dir;
  c.seq_len = data.seq_len;
  c.rows = std::min(o.rows > 0 ? o.rows : data.n_rows, data.n_rows);
  const auto cks = curve_checkpoints(run_dir);
  // The base once, from the first point (every checkpoint of a run records the same base).
  CheckpointModel first = load_checkpoint_model(cks.front().first, base, base_option);
  c.base = first.base;
  Model orig = load_model(first.base);
  validate_tokens(data, orig.config.vocab_size, orig.config.max_position);
  std::cerr << "eval: original (" << c.base << ")...\n";
  c.original = evaluate(orig, orig, data, CachePolicy::full, 0, o);
  c.original.model = "original";
  std::map<std::pair<int, int64_t>, EvalRow> baseline_at;  // (policy, budget) -> row
  for (const auto& [ck, kept_for_cr] : cks) {
    CheckpointModel cm =
        ck == cks.front().first ? std::move(first) : load_checkpoint_model(ck, base, base_option);
    CurvePoint p;
    p.checkpoint = fs::path(ck).filename().string();
    p.step = cm.state.step;
    p.kept_for_cr = kept_for_cr;
    std::cerr << "eval: " << p.checkpoint << " dms...\n";
    p.dms = evaluate(cm.model, orig, data, CachePolicy::dms, 0, o);
    p.dms.model = "dms";
    const int64_t budget = budget_for_cr(p.dms.effective_kv_cr, data.seq_len);
    for (CachePolicy pol : {CachePolicy::window, CachePolicy::h2o, CachePolicy::tova}) {
      const auto key = std::make_pair(int(pol), budget);
      if (!baseline_at.count(key)) {
        std::cerr << "eval: " << policy_name(pol) << " budget " << budget << "...\n";
        EvalRow r = evaluate(orig, orig, data, pol, budget, o);
        r.model = policy_name(pol);
        baseline_at[key] = r;
      }
      p.baselines.push_back(baseline_at[key]);
    }
    c.points.push_back(std::move(p));
  }
  return c;
}

nlohmann::json Curve::to_json() const {
  nlohmann::json pts = nlohmann::json::array();
  for (const auto& p : points) {
    nlohmann::json rows = nlohmann::json::array({p.dms.to_json()});
    for (const auto& b : p.baselines) rows.push_back(b.to_json());
    pts.push_back({{"checkpoint", p.checkpoint},
                   {"step", p.step},
                   {"kept_for_cr",
                    p.kept_for_cr > 0 ? nlohmann::json(p.kept_for_cr) : nlohmann::json(nullptr)},
                   {"rows", rows}});
  }
  return {{"run", run},         {"base_model", base},     {"data", data},
          {"seq_len", seq_len}, {"rows_evaluated", rows}, {"original", original.to_json()},
          {"points", pts}};
}

std::string format_curve(const Curve& c) {
  std::ostringstream o;
  o << std::fixed;
  o << "original (" << c.base << "): ppl " << std::setprecision(3) << c.original.ppl << "\n";
  o << std::left << std::setw(13) << "checkpoint" << std::right << std::setw(9) << "kept for"
    << std::left << "  " << std::setw(8) << "policy" << std::right << std::setw(8) << "budget"
    << std::setw(14) << "effective CR" << std::setw(10) << "ppl" << std::setw(14) << "KL(orig||m)"
    << "\n";
  for (const auto& p : c.points) {
    std::vector<const EvalRow*> rows = {&p.dms};
    for (const auto& b : p.baselines) rows.push_back(&b);
    for (const EvalRow* r : rows) {
      std::ostringstream kept;
      if (p.kept_for_cr > 0) kept << std::setprecision(3) << std::defaultfloat << p.kept_for_cr;
      o << std::left << std::setw(13) << (r == &p.dms ? p.checkpoint : "") << std::right
        << std::setw(9) << (r == &p.dms ? (p.kept_for_cr > 0 ? kept.str() : "last") : "")
        << std::left << "  " << std::setw(8) << r->policy << std::right << std::setw(8)
        << (r->budget > 0 ? std::to_string(r->budget) : "-") << std::setw(14)
        << std::setprecision(2) << r->effective_kv_cr << std::setw(10) << std::setprecision(3)
        << r->ppl << std::setw(14) << std::setprecision(4) << r->kl_original_model << "\n";
    }
  }
  return o.str();
}

}  // namespace dms
