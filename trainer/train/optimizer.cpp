#include "trainer/train/optimizer.h"

#include <ATen/core/grad_mode.h>

#include <algorithm>
#include <cmath>
#include <stdexcept>

namespace dms {

namespace {

// Norm blocks: at most about 4096 of them whatever N, and never under 64 values, so that
// shard boundaries fall on whole vector registers.
int64_t norm_block(int64_t numel) {
  int64_t b = 64;
  while (b * 4096 < numel) b *= 2;
  return b;
}

// A CPU fp32 copy of the first n values.
at::Tensor cpu_copy(const at::Tensor& t, int64_t n) {
  return t.narrow(0, 0, n).to(at::kCPU, at::kFloat, /*non_blocking=*/false, /*copy=*/true);
}

}  // namespace

void adamw_update(at::Tensor& p, const at::Tensor& g, at::Tensor& m, at::Tensor& v,
                  const AdamWOptions& o, double lr, int64_t step) {
  at::NoGradGuard no_grad;
  const double bc1 = 1.0 - std::pow(o.beta1, double(step));
  const double bc2 = 1.0 - std::pow(o.beta2, double(step));
  if (o.weight_decay != 0) p.mul_(1.0 - lr * o.weight_decay);
  m.mul_(o.beta1).add_(g, 1.0 - o.beta1);
  v.mul_(o.beta2).addcmul_(g, g, 1.0 - o.beta2);
  at::Tensor denom = (v.sqrt() / std::sqrt(bc2)).add_(o.eps);
  p.addcdiv_(m, denom, -lr / bc1);
}

AdamW::AdamW(std::vector<at::Tensor> p, const AdamWOptions& o) : opts(o), params(std::move(p)) {
  for (const auto& t : params) {
    m.push_back(at::zeros_like(t).detach());
    v.push_back(at::zeros_like(t).detach());
  }
}

void AdamW::step(double lr) {
  ++steps;
  for (size_t i = 0; i < params.size(); ++i)
    if (params[i].grad().defined())
      adamw_update(params[i], params[i].grad(), m[i], v[i], opts, lr, steps);
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

template <typename Fn>
void Optimizer::for_each_overlap(int64_t lo, int64_t hi, Fn&& fn) const {
  for (size_t i = 0; i < params_.size(); ++i) {
    const int64_t a = std::max(lo, offsets_[i]), b = std::min(hi, offsets_[i] + params_[i].numel());
    if (a < b) fn(i, a, b - a);
  }
}

Optimizer::Optimizer(const NamedTensors& trained, const AdamWOptions& o, ShardPlan plan)
    : opts_(o), plan_(plan) {
  for (const auto& [name, t] : trained) {
    offsets_.push_back(numel_);
    numel_ += t.numel();
    params_.push_back(t);
  }
  block_ = norm_block(numel_);
  count_ = plan.sharded ? plan.world : 1;
  index_ = plan.sharded ? plan.rank : 0;
  const int64_t per_block_row = block_ * count_;
  shard_ = std::max<int64_t>(1, (numel_ + per_block_row - 1) / per_block_row) * block_;
  begin_ = std::min(numel_, index_ * shard_);
  end_ = std::min(numel_, (index_ + 1) * shard_);
  const auto f32 = at::TensorOptions(at::kFloat)
                       .device(params_.empty() ? at::Device(at::kCPU) : params_[0].device());
  grad_ = at::zeros({count_ * shard_}, f32);
  master_ = at::zeros({shard_}, f32);
  m_ = at::zeros({shard_}, f32);
  v_ = at::zeros({shard_}, f32);
  at::NoGradGuard ng;
  for_each_overlap(begin_, end_, [&](size_t i, int64_t flat, int64_t n) {
    master_.narrow(0, flat - begin_, n)
        .copy_(params_[i].detach().reshape({-1}).narrow(0, flat - offsets_[i], n));
  });
}

void Optimizer::absorb_gradients() {
  at::NoGradGuard ng;
  for (size_t i = 0; i < params_.size(); ++i) {
    at::Tensor& p = params_[i];
    if (!p.grad().defined()) continue;
    grad_.narrow(0, offsets_[i], p.numel()).add_(p.grad().reshape({-1}));  // exact bf16 -> fp32
    p.mutable_grad() = at::Tensor();
  }
}

double Optimizer::reduce_gradients(Dist& dist, double clip) {
  absorb_gradients();  // whatever no hook took (a caller without after_backward)
  if (plan_.sharded) {
    reduced_ = dist.reduce_scatter_sum(grad_);
  } else {
    dist.all_reduce_sum({grad_});
    reduced_ = grad_;
  }
  // Squares in fp64 per block (a chunk of blocks at a time bounds the fp64 copy), the
  // blocks of other shards zero until the all-reduce, then one sum in block order.
  const int64_t nb = shard_ / block_, chunk = std::max<int64_t>(1, (int64_t(1) << 22) / block_);
  std::vector<double> blocks(size_t(count_ * nb), 0.0);
  for (int64_t b0 = 0; b0 < nb; b0 += chunk) {
    const int64_t k = std::min(chunk, nb - b0);
    at::Tensor sq = reduced_.narrow(0, b0 * block_, k * block_)
                        .to(at::kDouble)
                        .view({k, block_})
                        .pow(2)
                        .sum(1)
                        .cpu()
                        .contiguous();
    std::copy(sq.data_ptr<double>(), sq.data_ptr<double>() + k, blocks.begin() + index_ * nb + b0);
  }
  if (count_ > 1)
    dist.all_reduce_sum(
        {at::from_blob(blocks.data(), {int64_t(blocks.size())}, at::TensorOptions(at::kDouble))});
  double total = 0;
  for (double b : blocks) total += b;
  const double norm = std::sqrt(total);
  if (clip > 0 && norm > clip) reduced_.mul_(clip / (norm + 1e-6));
  return norm;
}

void Optimizer::step(Dist& dist, double lr) {
  ++steps_;
  adamw_update(master_, reduced_, m_, v_, opts_, lr, steps_);
  publish(dist);
  skip();
}

// Every trained tensor from the master values: this shard's, or all of them gathered.
void Optimizer::publish(Dist& dist) {
  at::Tensor flat = master_;  // unsharded: the one shard is the whole flat space
  if (plan_.sharded) {
    dist.all_gather(master_, grad_);  // the gradients are spent: reuse their buffer
    flat = grad_;
  }
  at::NoGradGuard ng;
  for (size_t i = 0; i < params_.size(); ++i)
    params_[i].copy_(flat.narrow(0, offsets_[i], params_[i].numel()).view(params_[i].sizes()));
}

void Optimizer::skip() {
  grad_.zero_();
  reduced_ = at::Tensor();
}

std::optional<OptimizerShard> Optimizer::saved_shard() const {
  const bool writes = (plan_.sharded || plan_.rank == 0) && end_ > begin_;
  if (!writes) return std::nullopt;
  const int64_t n = end_ - begin_;
  return OptimizerShard{
      begin_, end_, numel_, cpu_copy(m_, n), cpu_copy(v_, n), cpu_copy(master_, n)};
}

void Optimizer::load(const OptimizerShard& s, int64_t steps) {
  if (s.begin != begin_ || s.end != end_ || s.numel != numel_)
    throw std::logic_error("Optimizer::load: the state is not of this rank's range");
  const int64_t n = end_ - begin_;
  for (auto [mine, theirs] : {std::pair{&master_, &s.master}, {&m_, &s.m}, {&v_, &s.v}}) {
    mine->zero_();
    mine->narrow(0, 0, n).copy_(*theirs);
  }
  steps_ = steps;
  skip();
}

}  // namespace dms
