#include "trainer/train/step.h"

#include <ATen/core/grad_mode.h>

namespace dms {

at::Tensor kd_weights(const at::Tensor& tokens, int64_t skip_id) {
  return tokens.ne(skip_id).reshape({-1}).to(at::kFloat);
}

StepMetrics accumulate_gradients(const StepInputs& in, const at::Tensor& tokens, int64_t step,
                                 int64_t first_index, int64_t global_batch, double target) {
  const Model& student = *in.student;
  const int64_t b = tokens.size(0), T = tokens.size(1);
  const int64_t L = student.config.n_layers, K = student.config.n_kv_heads;
  const double positions_global = in.kd_positions > 0 ? in.kd_positions : double(global_batch * T);
  StepMetrics st;
  for (int64_t m0 = 0; m0 < b; m0 += in.micro_batch) {
    const int64_t mb = std::min(in.micro_batch, b - m0);
    at::Tensor x = tokens.narrow(0, m0, mb);  // [mb, T]
    ForwardOptions fo;
    fo.attention = in.attention;
    fo.blocks = in.blocks;
    fo.final_hidden = true;
    at::Tensor teacher_hidden;  // [mb * T, D of the teacher]
    {
      at::NoGradGuard ng;
      fo.mode = AttentionMode::teacher;
      teacher_hidden = forward_full(*in.teacher, x, {}, fo).hidden.reshape({mb * T, -1});
    }
    fo.mode = AttentionMode::train;
    fo.noise = dms_batch_noise(in.seed, step, first_index + m0, mb, L, K, T);  // [L, mb, K, T]
    fo.checkpoint_layers = in.checkpoint_layers;
    ForwardResult r = forward_full(student, x, {}, fo);
    const at::Tensor targets = next_token_targets(x);   // [mb * T]
    const at::Tensor w = kd_weights(x, in.kd_skip_id);  // [mb * T]
    KdRows rows;
    at::Tensor kd =
        kd_loss_sum(LogitSource::of_hidden(r.hidden.reshape({mb * T, -1}), student.lm_head),
                    LogitSource::of_hidden(teacher_hidden, in.teacher->lm_head), w, in.kd_dir,
                    in.kd_chunk, targets, &rows);
    // The loss averages over every position as the official code does; the reported
    // figure over the decisions about real tokens (decision CR keeps its definition).
    at::Tensor dms =
        dms_loss_sum(fraction_closed(r.decisions, {}, FractionOver::positions), target);
    at::Tensor frac = fraction_closed(r.decisions.detach(), {}, FractionOver::decisions);  // [mb]
    at::Tensor loss = kd / positions_global + in.dms_weight * dms / double(global_batch);
    loss.backward();
    if (in.after_backward) in.after_backward();

    st.kd += kd.item<double>();
    st.kd_positions += w.sum().item<double>();
    st.dms += dms.item<double>();
    auto [nll, cnt] = target_nll(rows, targets);
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
