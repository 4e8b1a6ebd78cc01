// The DMS loss (DESIGN.md §2 "Losses"); the distillation KL is in kd_loss.h.
#pragma once
#include <ATen/ATen.h>

#include <string>

#include "trainer/train/kd_loss.h"

namespace dms {

// What a fraction of closed decisions is averaged over. The numerator is the same: the
// closed decisions about real tokens (positions 1..T-1 that are valid; position 0 decides
// about no token).
enum class FractionOver {
  decisions,  // the decisions about real tokens: the reported decision CR = 1 / (1 - frac)
  positions,  // every valid position, position 0 included: the official DMS loss's mean
};

// Per-sample fraction of closed (evicted) decisions over layers, heads and `over`.
// decisions [L, B, K, T] (straight-through), valid [B, T] or undefined -> [B]
at::Tensor fraction_closed(const at::Tensor& decisions, const at::Tensor& valid, FractionOver over);

// sum_b max(0, target - frac[b]), in fp32 whatever the decisions' type. frac [B] -> scalar
at::Tensor dms_loss_sum(const at::Tensor& frac_closed, double target);

}  // namespace dms
