#include "trainer/eval/forced.h"

#include <ATen/core/grad_mode.h>

namespace dms {

ForcedSums& ForcedSums::operator+=(const ForcedSums& o) {
  kl_model_ref += o.kl_model_ref;
  kl_ref_model += o.kl_ref_model;
  nll += o.nll;
  predictions += o.predictions;
  positions += o.positions;
  rows += o.rows;
  compression += o.compression;
  return *this;
}

ForcedSums compare_logits(const at::Tensor& logits, const at::Tensor& ref, const at::Tensor& tokens,
                          int64_t kd_chunk) {
  at::NoGradGuard ng;
  const int64_t B = tokens.size(0), T = tokens.size(1), V = logits.size(-1);
  const at::Tensor l = logits.reshape({-1, V}), r = ref.reshape({-1, V});
  const at::Tensor w = at::ones({B * T}, logits.options().dtype(at::kFloat));
  ForcedSums s;
  at::Tensor lse;  // [B * T] the model's log-sum-exp, for the NLL
  s.kl_model_ref =
      kd_loss_sum(l, r, w, KdDirection::student_teacher, kd_chunk, &lse).item<double>();
  s.kl_ref_model = kd_loss_sum(l, r, w, KdDirection::teacher_student, kd_chunk).item<double>();
  auto [nll, count] = next_token_nll(logits, lse, tokens);
  s.nll = nll;
  s.predictions = count;
  s.positions = B * T;
  s.rows = B;
  return s;
}

ForcedSums forced_pass(const Model& model, const Model& reference, const at::Tensor& tokens,
                       const ForcedOptions& o) {
  at::NoGradGuard ng;
  ForwardOptions fo;
  fo.mode = AttentionMode::teacher;
  fo.attention = o.attention;
  fo.blocks = o.blocks;
  const at::Tensor ref = forward_full(reference, tokens, {}, fo).logits;
  fo.mode = o.mode;
  const ForwardResult r = forward_full(model, tokens, {}, fo);
  ForcedSums s = compare_logits(r.logits, ref, tokens, o.kd_chunk);
  if (r.decisions.defined())
    s.compression =
        compression_from_decisions(r.decisions, {}, model.dms.window, model.config.sliding_window);
  return s;
}

}  // namespace dms
