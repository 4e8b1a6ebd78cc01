// One optimizer step's figures. Each rank fills in the sums over its slice of the global
// batch; all_reduce() makes them the global batch's sums on every rank (one collective of
// one small tensor), and the ratios are derived from the sums afterwards — so every rank
// reports, and decides on, the same numbers.
#pragma once
#include <ATen/ATen.h>

namespace dms {

class Dist;

struct StepMetrics {
  // Sums over this rank's rows (after all_reduce: over the global batch).
  double kd = 0;              // KD loss summed over the KD positions ...
  double kd_positions = 0;    // ... of which there are this many (end tokens are left out)
  double dms = 0;             // DMS loss over samples
  double lm_nll = 0;          // student next-token NLL ...
  double lm_count = 0;        // ... over this many predictions
  double tokens = 0;          // tokens processed
  double evicted = 0;         // per-sample fraction of closed decisions, summed over samples
  double visible_keys = 0;    // keys visible to each query under hard decisions, summed
  double full_keys = 0;       // the same for a cache that keeps everything
  double seen_end = 0;        // end of each row: tokens seen, summed over layers and heads
  double held_end = 0;        // ... and tokens the DMS cache holds after the last one
  double stop_requested = 0;  // > 0 when any rank caught SIGINT/SIGTERM

  void all_reduce(Dist& dist, const at::Device& device);

  // Means over the global batch of `rows` rows of `T` tokens.
  double kd_mean() const { return kd_positions > 0 ? kd / kd_positions : 0.0; }
  double dms_mean(int64_t rows) const { return dms / double(rows); }
  double lm_mean() const { return lm_count > 0 ? lm_nll / lm_count : 0.0; }
  double eviction_rate(int64_t rows) const { return evicted / double(rows); }
  double decision_cr(int64_t rows) const;
  double effective_kv_cr() const { return visible_keys > 0 ? full_keys / visible_keys : 1.0; }
  double end_kv_cr() const { return held_end > 0 ? seen_end / held_end : 1.0; }
};

}  // namespace dms
