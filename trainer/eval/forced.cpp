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

namespace {

// One KD pass of `model` against `ref` (given as logits or fused) over tokens [B, T].
ForcedSums compare(const LogitSource& model, const LogitSource& ref, const at::Tensor& tokens,
                   int64_t kd_chunk) {
  at::NoGradGuard ng;
  const int64_t B = tokens.size(0), T = tokens.size(1);
  const at::Tensor targets = next_token_targets(tokens);  // [B * T]
  const at::Tensor w = at::ones({B * T}, tokens.options().dtype(at::kFloat));
  KdRows rows;  // both directions come out of the one pass
  kd_loss_sum(model, ref, w, KdDirection::student_teacher, kd_chunk, targets, &rows);
  ForcedSums s;
  s.kl_model_ref = rows.kl_st.sum().item<double>();
  s.kl_ref_model = rows.kl_ts.sum().item<double>();
  auto [nll, count] = target_nll(rows, targets);
  s.nll = nll;
  s.predictions = count;
  s.positions = B * T;
  s.rows = B;
  return s;
}

}  // namespace

ForcedSums compare_logits(const at::Tensor& logits, const at::Tensor& ref, const at::Tensor& tokens,
                          int64_t kd_chunk) {
  const int64_t V = logits.size(-1);
  return compare(LogitSource::of_logits(logits.reshape({-1, V})),
                 LogitSource::of_logits(ref.reshape({-1, V})), tokens, kd_chunk);
}

ForcedSums forced_pass(const Model& model, const Model& reference, const at::Tensor& tokens,
                       const ForcedOptions& o) {
  at::NoGradGuard ng;
  const int64_t N = tokens.numel();
  ForwardOptions fo;
  fo.mode = AttentionMode::teacher;
  fo.attention = o.attention;
  fo.blocks = o.blocks;
  fo.final_hidden = true;  // the heads are applied chunk by chunk: no [B, T, V] logits
  const at::Tensor ref = forward_full(reference, tokens, {}, fo).hidden.reshape({N, -1});
  fo.mode = o.mode;
  const ForwardResult r = forward_full(model, tokens, {}, fo);
  ForcedSums s = compare(LogitSource::of_hidden(r.hidden.reshape({N, -1}), model.lm_head),
                         LogitSource::of_hidden(ref, reference.lm_head), tokens.to(ref.device()),
                         o.kd_chunk);
  if (r.decisions.defined())
    s.compression =
        compression_from_decisions(r.decisions, {}, model.dms.window, model.config.sliding_window);
  return s;
}

}  // namespace dms
