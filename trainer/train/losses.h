// Distillation losses (DESIGN.md §2 "Losses").
#pragma once
#include <ATen/ATen.h>

#include <string>

namespace dms {

enum class KdDirection { student_teacher, teacher_student };

// Sum over positions n of weight[n] * KL, computed in fp32 (fp64 for fp64 inputs) over
// chunks of `chunk` positions (0: about 2^18 logits per chunk, so that each chunk's
// work stays in cache).
// student_teacher: KL(p_s || p_t) = sum_v p_s (log p_s - log p_t) (the official direction);
// teacher_student: KL(p_t || p_s). The gradient reaches `student` only and is recomputed
// chunk by chunk in backward, so extra memory is O(chunk * V), not O(N * V).
// student, teacher [N, V] (any float type), weight [N] -> scalar fp32;
// student_lse, when given, receives the student's row log-sum-exp [N] (for the NLL).
at::Tensor kd_loss_sum(const at::Tensor& student, const at::Tensor& teacher,
                       const at::Tensor& weight, KdDirection dir, int64_t chunk = 0,
                       at::Tensor* student_lse = nullptr);

// Per-sample fraction of closed (evicted) decisions: mean over layers, heads and positions
// that carry a decision about a real token (positions 1..T-1 that are valid).
// decisions [L, B, K, T] (straight-through), valid [B, T] or undefined -> [B]
at::Tensor fraction_closed(const at::Tensor& decisions, const at::Tensor& valid);

// sum_b max(0, target - frac[b]). frac [B] -> scalar
at::Tensor dms_loss_sum(const at::Tensor& frac_closed, double target);

// Student cross-entropy on the next token, for monitoring, from the row log-sum-exp
// kd_loss_sum reported (no second pass over the vocabulary).
// logits [B, T, V], lse [B*T], tokens [B, T] -> (sum of -log p, count) over positions 0..T-2
std::pair<double, int64_t> next_token_nll(const at::Tensor& logits, const at::Tensor& lse,
                                          const at::Tensor& tokens);

}  // namespace dms
