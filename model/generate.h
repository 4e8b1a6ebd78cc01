// Token generation: greedy or temperature/top-p sampling with the KV cache.
#pragma once
#include <ATen/ATen.h>

#include <cstdint>
#include <functional>
#include <random>

#include "model/kv_cache.h"
#include "model/transformer.h"

namespace dms {

struct SamplingOptions {
  double temperature = 0.0;  // 0 = greedy (argmax, first index on ties)
  double top_p = 1.0;        // nucleus sampling mass when temperature > 0
  uint64_t seed = 0;
};

// Picks next tokens from logits. Deterministic for a given seed.
class Sampler {
 public:
  explicit Sampler(const SamplingOptions& o) : opts_(o), rng_(o.seed) {}
  // logits [B, V] -> next ids [B] int64
  at::Tensor next(const at::Tensor& logits);

 private:
  int64_t sample_row(const float* logits, int64_t V);
  double uniform();  // [0, 1), from the raw 64-bit engine (portable across std libraries)
  SamplingOptions opts_;
  std::mt19937_64 rng_;
};

// Continues equal-length prompts with the evicting KV cache.
// prompts [B, T] int64 -> new tokens [B, N], N <= steps. on_token(step, ids [B]) is called
// after each step; returning false stops early (e.g. at an end-of-sequence id).
// `cache`: one made by make_cache (policy, budget) and left filled for inspection; when
// null, a private cache with policy dms (DMS model) or full (plain model) is used.
// `step_logits`, when given, receives the logits [B, V] that chose each new token.
at::Tensor generate(const Model& m, const at::Tensor& prompts, int64_t steps,
                    const SamplingOptions& opts,
                    const std::function<bool(int64_t, const at::Tensor&)>& on_token = {},
                    KVCache* cache = nullptr, std::vector<at::Tensor>* step_logits = nullptr);

}  // namespace dms
