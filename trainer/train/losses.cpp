#include "trainer/train/losses.h"

namespace dms {

at::Tensor fraction_closed(const at::Tensor& decisions, const at::Tensor& valid) {
  const int64_t L = decisions.size(0), B = decisions.size(1), K = decisions.size(2);
  const int64_t T = decisions.size(3);
  at::Tensor mask = at::zeros(
      {B, T}, decisions.options().dtype(at::promote_types(decisions.scalar_type(), at::kFloat)));
  if (T > 1) {
    if (valid.defined())
      mask.narrow(1, 1, T - 1).copy_(valid.narrow(1, 1, T - 1).to(mask.device()));
    else
      mask.narrow(1, 1, T - 1).fill_(1.0);
  }
  at::Tensor m = mask.view({1, B, 1, T});
  at::Tensor count = mask.sum(1) * double(L * K);                     // [B]
  // fp32 sums: bf16 decisions are exact {0, 1} values, their sums are not.
  return (decisions.to(at::promote_types(decisions.scalar_type(), at::kFloat)) * m)
             .sum({0, 2, 3}) /
         at::clamp_min(count, 1.0);  // [B]
}

at::Tensor dms_loss_sum(const at::Tensor& frac_closed, double target) {
  return at::relu(target - frac_closed).sum();
}

}  // namespace dms
