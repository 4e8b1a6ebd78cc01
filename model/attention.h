// Self-attention over a whole sequence with the DMS visibility rules, two ways:
// - dense_attention: materialises the [B, K, T, T] bias and the probabilities (the
//   reference; what tests and keep_attention runs use);
// - blockwise_attention: flash-style tiles with an online softmax, a custom autograd
//   function that saves only Q, K, V, the eviction terms, the output and the per-query
//   log-sum-exp, and recomputes each tile's probabilities in backward. Memory is
//   O(T) beyond the tiles; key tiles the causal or sliding-window mask removes are
//   skipped. Plain ATen ops, so it runs on any device; fp32/fp64 inputs compute in their
//   own type, half types use fp32 softmax state and accumulators.
// Shapes: B batch, H query heads, K key/value heads (G = H/K), T positions, d head dim.
#pragma once
#include <ATen/ATen.h>

#include <string>

namespace dms {

// Which keys a query sees (model/visibility.h): key j is visible to query i iff j <= i,
// i - j < sliding_window (when > 0) and key j is real or j == i. Where i - j > window,
// key_term[b, h, j] is added to the score: DMS eviction, logsigmoid(-a[j+1]) in train mode
// (soft) and 0 / -inf in eval mode (hard). window >= 0.
struct AttentionMask {
  at::Tensor key_term;         // [B, K, T] or undefined (no eviction term)
  int64_t window = 0;          // eviction applies only where i - j > window
  at::Tensor key_valid;        // [B, T] bool or undefined (every key real)
  int64_t sliding_window = 0;  // 0: none
  // Extra visibility on top of the rules [B, K, T, T] bool (false: hidden), or undefined.
  // Reference runs only: dense_attention applies it, blockwise_attention rejects it.
  at::Tensor key_mask;
};

struct AttentionBlocks {
  int64_t q = 128;  // query rows per tile
  int64_t k = 512;  // keys per tile
};

enum class AttentionImpl { blockwise, dense };
AttentionImpl parse_attention_impl(const std::string& s, const std::string& where);

// q [B, H, T, d], k/v [B, K, T, d] -> [B, H, T, d]. Differentiable in q, k, v and key_term.
at::Tensor blockwise_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                               const AttentionMask& mask, const AttentionBlocks& blocks = {});

// The same function through the [B, K, T, T] bias -> [B, H, T, d]; with probs, also the
// attention weights [B, K, G, T, T].
at::Tensor dense_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                           const AttentionMask& mask, at::Tensor* probs = nullptr);

}  // namespace dms
