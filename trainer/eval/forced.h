// The one teacher-forced evaluation: a model's logits over held-out rows against a
// reference's (the teacher / the original model) — KL in both directions, the model's
// next-token NLL and, for a DMS model under hard eviction, compression sums. Validation
// during training, the export's dms_report.json and `dms eval` all add up these sums
// (+=) and derive their figures at the end, so the same rows give the same numbers.
// Shapes: B rows, T positions, V vocabulary.
#pragma once
#include "model/transformer.h"
#include "trainer/train/losses.h"

namespace dms {

struct ForcedSums {
  double kl_model_ref = 0;  // sum over positions of KL(p_model || p_ref)
  double kl_ref_model = 0;  // sum over positions of KL(p_ref || p_model)
  double nll = 0;           // sum of -log p_model(next token)
  int64_t predictions = 0;  // ... over this many (positions 0..T-2 of each row)
  int64_t positions = 0, rows = 0;
  CompressionStats compression;  // DMS model in eval mode only (else empty)

  ForcedSums& operator+=(const ForcedSums& o);
  double kl_model_ref_mean() const {
    return kl_model_ref / double(std::max<int64_t>(1, positions));
  }
  double kl_ref_model_mean() const {
    return kl_ref_model / double(std::max<int64_t>(1, positions));
  }
  // The KL that trains the student under `dir`: student = model, teacher = reference.
  double kd_mean(KdDirection dir) const {
    return dir == KdDirection::student_teacher ? kl_model_ref_mean() : kl_ref_model_mean();
  }
  double nll_mean() const { return nll / double(std::max<int64_t>(1, predictions)); }
};

struct ForcedOptions {
  AttentionMode mode = AttentionMode::eval;  // how `model` runs (eval: hard eviction)
  int64_t kd_chunk = 0;                      // positions per KL chunk (0: auto)
  AttentionImpl attention = AttentionImpl::blockwise;
  AttentionBlocks blocks;
};

// Logits already computed (e.g. by the evicting cache): logits, ref [B, T, V], tokens [B, T].
ForcedSums compare_logits(const at::Tensor& logits, const at::Tensor& ref, const at::Tensor& tokens,
                          int64_t kd_chunk = 0);

// `model` under o.mode and `reference` with eviction off, over tokens [B, T].
ForcedSums forced_pass(const Model& model, const Model& reference, const at::Tensor& tokens,
                       const ForcedOptions& o);

}  // namespace dms
