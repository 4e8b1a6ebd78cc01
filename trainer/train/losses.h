// The DMS loss (DESIGN.md §2 "Losses"); the distillation KL is in kd_loss.h.
#pragma once
#include <ATen/ATen.h>

#include <string>

#include "trainer/train/kd_loss.h"

namespace dms {

// Per-sample fraction of closed (evicted) decisions: mean over layers, heads and positions
// that carry a decision about a real token (positions 1..T-1 that are valid).
// decisions [L, B, K, T] (straight-through), valid [B, T] or undefined -> [B]
at::Tensor fraction_closed(const at::Tensor& decisions, const at::Tensor& valid);

// sum_b max(0, target - frac[b]), in fp32 whatever the decisions' type. frac [B] -> scalar
at::Tensor dms_loss_sum(const at::Tensor& frac_closed, double target);

}  // namespace dms
