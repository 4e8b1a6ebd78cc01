// The quality-vs-KV-memory curve of one retrofit: the checkpoints it kept on its way up the
// CR schedule (retrofit --keep-at-cr) and its last, each evaluated as a DMS model under
// hard eviction, and the training-free baselines (window, H2O, TOVA) on the base model at
// the budget matching each point's effective KV CR — the analogue of the paper's Pareto
// figure. `dms report` draws it.
#pragma once
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "trainer/eval/evaluate.h"

namespace dms {

struct CurvePoint {
  std::string checkpoint;  // directory name ("step-000150")
  int64_t step = 0;
  double kept_for_cr = 0;  // 0: the run's last checkpoint, not kept for a CR
  EvalRow dms;
  std::vector<EvalRow> baselines;  // window, h2o, tova at dms.effective_kv_cr
};

struct Curve {
  std::string run, base, data;
  int64_t seq_len = 0, rows = 0;
  EvalRow original;                // the base model, eviction off
  std::vector<CurvePoint> points;  // by step
  nlohmann::json to_json() const;
};

// The run's checkpoints kept for a CR plus its newest intact one, by step, each with the CR
// it was kept for (0: the last); InputError when there are none. Damaged ones are skipped
// with a warning naming them.
std::vector<std::pair<std::string, double>> curve_checkpoints(const std::string& run_dir);

// `base` overrides the recorded base model's path (checked by sha256), named `base_option`.
Curve evaluate_curve(const std::string& run_dir, const std::string& base,
                     const std::string& base_option, const TokenData& data, const EvalOptions& o);

// One line per point and policy: step, kept-for CR, policy, budget, effective CR, ppl, KL.
std::string format_curve(const Curve& c);

}  // namespace dms
