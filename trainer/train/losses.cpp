#include "trainer/train/losses.h"

namespace dms {

at::Tensor fraction_closed(const at::Tensor& decisions, const at::Tensor& valid,
                           FractionOver over) {
  const int64_t L = decisions.size(0), B = decisions.size(1), K = decisions.size(2);
  const int64_t T = decisions.size(3);
  const auto ft = decisions.options().dtype(at::promote_types(decisions.scalar_type(), at::kFloat));
  at::Tensor real = valid.defined() ? valid.to(ft).to(decisions.device()) : at::ones({B, T}, ft);
  at::Tensor mask = real.clone();  // decisions about real tokens: not position 0
  mask.narrow(1, 0, 1).zero_();
  at::Tensor m = mask.view({1, B, 1, T});
  at::Tensor count = (over == FractionOver::positions ? real : mask).sum(1) * double(L * K);  // [B]
  // fp32 sums: bf16 decisions are exact {0, 1} values, their sums are not.
  return (decisions.to(ft.dtype()) * m).sum({0, 2, 3}) / at::clamp_min(count, 1.0);  // [B]
}

at::Tensor dms_loss_sum(const at::Tensor& frac_closed, double target) {
  return at::relu(target - frac_closed).sum();
}

}  // namespace dms
