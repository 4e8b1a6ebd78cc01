// Distillation KL (DESIGN.md §2 "Losses"), chunked so that no [N, V] tensor of
// probabilities — and, in the fused form, no [N, V] tensor of logits at all — exists in
// forward or backward. Shapes: N positions (rows), V vocabulary, D hidden.
#pragma once
#include <ATen/ATen.h>

#include <utility>

namespace dms {

enum class KdDirection { student_teacher, teacher_student };

// Where one side's logits come from: given logits [N, V], or (fused LM head) the final
// normed hidden state [N, D] and the head [V, D], multiplied chunk by chunk. The fused
// form multiplies in the hidden state's dtype (bf16 models give bf16 logits, as their
// own head does) and computes everything after in fp32.
struct LogitSource {
  at::Tensor logits;        // [N, V], or undefined
  at::Tensor hidden, head;  // [N, D], [V, D] (fused form), or undefined

  static LogitSource of_logits(at::Tensor logits);
  static LogitSource of_hidden(at::Tensor hidden, at::Tensor head);
  int64_t rows() const;
  int64_t vocab() const;
};

// Per-row figures of one KD pass, fp32 (fp64 for fp64 inputs) [N]: both KL directions,
// whichever trains, and the student's log-sum-exp and logit of the target token (for
// the next-token NLL without a second pass over the vocabulary).
struct KdRows {
  at::Tensor kl_st, kl_ts;       // KL(p_s || p_t), KL(p_t || p_s)
  at::Tensor lse, target_logit;  // student; target_logit only when targets were given
};

// Sum over rows n of weight[n] * KL in `dir`, with p_s from `student` and p_t from
// `teacher` (never differentiated):
//   student_teacher: KL(p_s || p_t) = sum_v p_s (log p_s - log p_t) (the official direction);
//   teacher_student: KL(p_t || p_s).
// Computed over chunks of `chunk` rows (0: about 2^18 logits per chunk for given logits,
// 2^22 for the fused form, whose chunks are matrix products), in fp32 (fp64 for fp64).
// Backward recomputes each chunk; the gradient reaches the student's logits, or its hidden
// state and head (when they require grad), with O(chunk x V) extra memory.
// weight [N]; targets [N] int64 (the next token, < 0: none) or undefined -> scalar.
at::Tensor kd_loss_sum(const LogitSource& student, const LogitSource& teacher,
                       const at::Tensor& weight, KdDirection dir, int64_t chunk = 0,
                       const at::Tensor& targets = {}, KdRows* rows = nullptr);

// Rows per chunk of kd_loss_sum: `chunk` (> 0), else about 2^18 logits for given logits
// and 2^22 for the fused form. V: vocabulary. (The memory planner sizes its buffers by it.)
int64_t rows_per_chunk(int64_t chunk, int64_t V, bool fused);

// Student next-token targets of tokens [B, T]: row (b, i) -> tokens[b, i + 1], and -1 at
// i = T - 1. -> [B * T] int64
at::Tensor next_token_targets(const at::Tensor& tokens);

// Sum of -log p_s(target) over rows with a target, and their count.
// rows: a KdRows filled with targets -> (sum, count)
std::pair<double, int64_t> target_nll(const KdRows& rows, const at::Tensor& targets);

}  // namespace dms
