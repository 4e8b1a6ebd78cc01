#include "trainer/train/step.h"

#include <ATen/core/grad_mode.h>

namespace dms {

StepMetrics accumulate_gradients(const StepInputs& in, const at::Tensor& tokens, int64_t step,
                                 int64_t first_index, int64_t global_batch, double target) {
  const Model& student = *in.student;
  const int64_t b = tokens.size(0), T = tokens.size(1), V = student.config.vocab_size;
  const int64_t L = student.config.n_layers, K = student.config.n_kv_heads;
  const double positions_global = double(global_batch * T);
  StepMetrics st;
  for (int64_t m0 = 0; m0 < b; m0 += in.micro_batch) {
    const int64_t mb = std::min(in.micro_batch, b - m0);
    at::Tensor x = tokens.narrow(0, m0, mb);  // [mb, T]
    at::Tensor teacher_logits;
    {
      at::NoGradGuard ng;
      ForwardOptions to;
      to.mode = AttentionMode::teacher;
      to.attention = in.attention;
      to.blocks = in.blocks;
      teacher_logits = forward_full(*in.teacher, x, {}, to).logits;  // [mb, T, V]
    }
    ForwardOptions so;
    so.mode = AttentionMode::train;
    so.attention = in.attention;
    so.blocks = in.blocks;
    so.noise = dms_batch_noise(in.seed, step, first_index + m0, mb, L, K, T);  // [L, mb, K, T]
    ForwardResult r = forward_full(student, x, {}, so);
    at::Tensor lse;  // [mb * T] student log-sum-exp, for the NLL below
    at::Tensor kd = kd_loss_sum(r.logits.reshape({-1, V}), teacher_logits.reshape({-1, V}),
                                at::ones({mb * T}, r.logits.options().dtype(at::kFloat)), in.kd_dir,
                                in.kd_chunk, &lse);
    at::Tensor frac = fraction_closed(r.decisions, {});  // [mb]
    at::Tensor dms = dms_loss_sum(frac, target);
    at::Tensor loss = kd / positions_global + in.dms_weight * dms / double(global_batch);
    loss.backward();

    st.kd += kd.item<double>();
    st.dms += dms.item<double>();
    auto [nll, cnt] = next_token_nll(r.logits.detach(), lse, x);
    st.lm_nll += nll;
    st.lm_count += double(cnt);
    st.evicted += frac.detach().sum().item<double>();
    CompressionStats cs = compression_from_decisions(r.decisions.detach(), {}, student.dms.window,
                                                     student.config.sliding_window);
    st.visible_keys += cs.visible_sum;
    st.full_keys += cs.full_sum;
    st.seen_end += cs.seen_sum;
    st.held_end += cs.held_end_sum;
  }
  st.tokens = double(b * T);
  return st;
}

}  // namespace dms
