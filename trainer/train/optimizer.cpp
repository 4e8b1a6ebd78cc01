#include "trainer/train/optimizer.h"

#include <ATen/core/grad_mode.h>
#include <cmath>

namespace dms {

AdamW::AdamW(std::vector<at::Tensor> p, const AdamWOptions& o) : opts(o), params(std::move(p)) {
  for (const auto& t : params) {
    m.push_back(at::zeros_like(t).detach());
    v.push_back(at::zeros_like(t).detach());
  }
}

void AdamW::step(double lr) {
  at::NoGradGuard no_grad;
  ++steps;
  const double bc1 = 1.0 - std::pow(opts.beta1, double(steps));
  const double bc2 = 1.0 - std::pow(opts.beta2, double(steps));
  for (size_t i = 0; i < params.size(); ++i) {
    at::Tensor& p = params[i];
    if (!p.grad().defined()) continue;
    const at::Tensor& g = p.grad();
    if (opts.weight_decay != 0) p.mul_(1.0 - lr * opts.weight_decay);
    m[i].mul_(opts.beta1).add_(g, 1.0 - opts.beta1);
    v[i].mul_(opts.beta2).addcmul_(g, g, 1.0 - opts.beta2);
    at::Tensor denom = (v[i].sqrt() / std::sqrt(bc2)).add_(opts.eps);
    p.addcdiv_(m[i], denom, -lr / bc1);
  }
}

void AdamW::zero_grad() {
  for (auto& p : params)
    if (p.grad().defined()) p.mutable_grad() = at::Tensor();
}

double clip_grad_norm(const std::vector<at::Tensor>& params, double max_norm) {
  at::NoGradGuard no_grad;
  double total = 0;
  for (const auto& p : params)
    if (p.grad().defined()) total += p.grad().to(at::kDouble).pow(2).sum().item<double>();
  total = std::sqrt(total);
  if (max_norm > 0 && total > max_norm) {
    const double scale = max_norm / (total + 1e-6);
    for (const auto& p : params)
      if (p.grad().defined()) p.grad().mul_(scale);
  }
  return total;
}

}  // namespace dms
