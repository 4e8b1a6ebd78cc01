#include "model/generate.h"

#include <ATen/core/grad_mode.h>
#include <algorithm>
#include <numeric>
#include <vector>

namespace dms {

double Sampler::uniform() {
  return double(rng_() >> 11) * (1.0 / 9007199254740992.0);
}

int64_t Sampler::sample_row(const float* logits, int64_t V) {
  if (opts_.temperature <= 0.0) return int64_t(std::max_element(logits, logits + V) - logits);
  // Softmax at temperature T, in double for stable sums.
  const double inv_t = 1.0 / opts_.temperature;
  const float mx = *std::max_element(logits, logits + V);
  std::vector<double> p(static_cast<size_t>(V));
  double sum = 0;
  for (int64_t i = 0; i < V; ++i) sum += p[size_t(i)] = std::exp((double(logits[i]) - mx) * inv_t);
  std::vector<int64_t> order(static_cast<size_t>(V));
  std::iota(order.begin(), order.end(), 0);
  int64_t keep = V;
  if (opts_.top_p < 1.0) {
    // Smallest prefix of tokens by descending probability whose mass reaches top_p.
    std::stable_sort(order.begin(), order.end(),
                     [&](int64_t a, int64_t b) { return p[size_t(a)] > p[size_t(b)]; });
    double mass = 0;
    for (keep = 0; keep < V;) {
      mass += p[size_t(order[size_t(keep)])] / sum;
      ++keep;
      if (mass >= opts_.top_p) break;
    }
  }
  double kept = 0;
  for (int64_t i = 0; i < keep; ++i) kept += p[size_t(order[size_t(i)])];
  double r = uniform() * kept;
  for (int64_t i = 0; i < keep; ++i) {
    r -= p[size_t(order[size_t(i)])];
    if (r < 0) return order[size_t(i)];
  }
  return order[size_t(keep - 1)];
}

at::Tensor Sampler::next(const at::Tensor& logits) {
  at::Tensor l = logits.to(at::kFloat).contiguous().cpu();
  const int64_t B = l.size(0), V = l.size(1);
  at::Tensor out = at::empty({B}, at::kLong);
  for (int64_t b = 0; b < B; ++b) out[b] = sample_row(l.data_ptr<float>() + b * V, V);
  return out;
}

at::Tensor generate(const Model& m, const at::Tensor& prompts, int64_t steps,
                    const SamplingOptions& opts,
                    const std::function<bool(int64_t, const at::Tensor&)>& on_token, KVCache* cache,
                    std::vector<at::Tensor>* step_logits) {
  at::NoGradGuard no_grad;
  Sampler sampler(opts);
  KVCache own;
  if (!cache) {
    CacheOptions co;
    co.policy = m.dms.enabled ? CachePolicy::dms : CachePolicy::full;
    own = make_cache(m, prompts.size(0), co);
    cache = &own;
  }
  std::vector<at::Tensor> produced;
  at::Tensor logits = prefill(m, prompts, *cache);  // [B, 1, V]: one blockwise pass
  for (int64_t step = 0; step < steps; ++step) {
    at::Tensor last = logits.select(1, logits.size(1) - 1);  // [B, V]
    if (step_logits) step_logits->push_back(last);
    at::Tensor next = sampler.next(last);  // [B]
    produced.push_back(next);
    if (on_token && !on_token(step, next)) break;
    if (step + 1 < steps) logits = forward_cached(m, next.unsqueeze(1), *cache);  // [B, 1, V]
  }
  if (produced.empty()) return at::empty({prompts.size(0), 0}, at::kLong);
  return at::stack(produced, 1);  // [B, N]
}

}  // namespace dms
