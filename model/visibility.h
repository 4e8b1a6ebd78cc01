// Which keys a query sees: the two visibility rules of the model, each written once.
// - DMS delayed eviction (DESIGN.md §2): key j is visible to query i iff j <= i and
//   (i - j <= window or kept[j]), where kept[j] = (e[j+1] == 0): a marked token stays
//   usable for `window` more steps, then leaves for good.
// - The model's own sliding window (Mistral): key j is visible iff i - j < sliding
//   (when sliding > 0; 0: no sliding window).
// Both hold together. Everything here is a function of age = i - j (and kept), written
// once as a template over the value type, so the scalar form (int64_t age, bool kept)
// used by the KV cache's bookkeeping and the tensor form (int64 age tensors, bool kept
// tensors, broadcasting) used by the attention masks are the same expression.
// Shapes: tensor arguments broadcast against each other; results take the broadcast shape.
// For visible_count: i [T] int64, kept_prefix [..., T+1] -> [..., T] (of kept_prefix's dtype).
#pragma once
#include <ATen/ATen.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <vector>

namespace dms {

// The few operations the rules need, for both value types (bool/int64_t and at::Tensor).
namespace vis_ops {
inline bool all(bool a, bool b) {
  return a && b;
}
inline at::Tensor all(const at::Tensor& a, const at::Tensor& b) {
  return a.logical_and(b);
}
inline bool any(bool a, bool b) {
  return a || b;
}
inline at::Tensor any(const at::Tensor& a, const at::Tensor& b) {
  return a.logical_or(b);
}
inline bool none(bool a) {
  return !a;
}
inline at::Tensor none(const at::Tensor& a) {
  return a.logical_not();
}
inline int64_t at_least(int64_t x, int64_t lo) {
  return std::max(x, lo);
}
inline at::Tensor at_least(const at::Tensor& x, int64_t lo) {
  return x.clamp_min(lo);
}
inline at::Tensor at_least(const at::Tensor& x, const at::Tensor& lo) {
  return at::maximum(x, lo);
}
// prefix[idx]: a vector read or an index_select along the last dim.
inline int64_t take(const std::vector<int64_t>& prefix, int64_t idx) {
  return prefix[size_t(idx)];
}
inline at::Tensor take(const at::Tensor& prefix, const at::Tensor& idx) {
  return prefix.index_select(-1, idx);
}
}  // namespace vis_ops

struct Visibility {
  // A window no age exceeds: no eviction term anywhere (teacher runs, the full cache).
  static constexpr int64_t kNoEviction = std::numeric_limits<int64_t>::max();

  int64_t window = kNoEviction;  // DMS w (>= 0): the eviction term applies where age > window
  int64_t sliding = 0;           // the model's sliding window; 0: none

  bool has_sliding() const { return sliding > 0; }
  // The sliding window as an exclusive bound on age (no bound: the largest int64).
  int64_t sliding_limit() const { return sliding > 0 ? sliding : kNoEviction; }

  // Key at this age is not in the future (j <= i).
  template <class Age>
  auto causal(const Age& age) const {
    return age >= 0;
  }
  // Inside the model's sliding window (i - j < sliding when sliding > 0).
  template <class Age>
  auto in_sliding(const Age& age) const {
    return age < sliding_limit();
  }
  // The model's own rule: causal and inside the sliding window.
  template <class Age>
  auto in_view(const Age& age) const {
    return vis_ops::all(causal(age), in_sliding(age));
  }
  // Beyond the DMS window: the eviction term (soft log(1 - alpha), or hard 0 / -inf) applies.
  template <class Age>
  auto far(const Age& age) const {
    return age > window;
  }
  // The whole rule: in view, and either within the DMS window or kept.
  template <class Age, class Kept>
  auto visible(const Age& age, const Kept& kept) const {
    return vis_ops::all(in_view(age), vis_ops::any(vis_ops::none(far(age)), kept));
  }

  // First key index inside the sliding window of query i (0 without one).
  template <class Index>
  auto first_key(const Index& i) const {
    return vis_ops::at_least(i - sliding_limit() + 1, 0);
  }
  // First key index of query i that is not far (and in the sliding window).
  template <class Index>
  auto first_near_key(const Index& i) const {
    return vis_ops::at_least(i - window, first_key(i));
  }
  // Keys query i sees: the near keys [first_near_key, i] plus the kept ones among the far
  // keys [first_key, first_near_key). kept_prefix[j] = kept keys among 0 .. j-1 (so it has
  // T + 1 entries); a std::vector<int64_t> with an int64_t i, or a tensor [..., T+1] with
  // i [T] int64 (-> [..., T]).
  template <class Index, class Prefix>
  auto visible_count(const Prefix& kept_prefix, const Index& i) const {
    const auto lo = first_key(i);
    const auto near = first_near_key(i);
    return (i + 1 - near) + (vis_ops::take(kept_prefix, near) - vis_ops::take(kept_prefix, lo));
  }
};

}  // namespace dms
