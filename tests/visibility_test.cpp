// The visibility rules (model/visibility.h) against a brute-force statement of them over
// every (query, key) pair: the scalar form (the cache's bookkeeping) and the tensor form
// (the attention masks, the compression figures) must both be the rule.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "model/visibility.h"

namespace dms {
namespace {

// DESIGN.md §2 and the sliding window, written out directly.
bool rule(int64_t i, int64_t j, bool kept, int64_t window, int64_t sliding) {
  if (j > i) return false;                            // causal
  if (sliding > 0 && i - j >= sliding) return false;  // outside the sliding window
  return i - j <= window || kept;                     // delayed eviction
}

TEST(Visibility, ScalarAndTensorFormsAreTheRule) {
  const int64_t T = 13;
  auto gen = at::make_generator<at::CPUGeneratorImpl>(5);
  const at::Tensor kept_t = at::rand({T}, gen).lt(0.4);  // [T] bool: the kept keys
  std::vector<bool> kept(static_cast<size_t>(T));
  for (int64_t j = 0; j < T; ++j) kept[size_t(j)] = kept_t[j].item<bool>();
  std::vector<int64_t> prefix(size_t(T + 1), 0);  // kept keys among 0 .. j-1
  for (int64_t j = 0; j < T; ++j) prefix[size_t(j + 1)] = prefix[size_t(j)] + kept[size_t(j)];
  const at::Tensor prefix_t = at::tensor(prefix, at::kLong);  // [T + 1]
  const at::Tensor idx = at::arange(T, at::kLong);
  const at::Tensor age = idx.unsqueeze(1) - idx.unsqueeze(0);  // [T, T]: i - j

  for (int64_t window : {int64_t(0), int64_t(1), int64_t(4), T - 1, T + 7, Visibility::kNoEviction})
    for (int64_t sliding : {int64_t(0), int64_t(1), int64_t(5), T, T + 3}) {
      SCOPED_TRACE("window " + std::to_string(window) + " sliding " + std::to_string(sliding));
      const Visibility vis{window, sliding};
      const at::Tensor visible_t = vis.visible(age, kept_t.unsqueeze(0));  // [T, T]
      const at::Tensor in_view_t = vis.in_view(age), far_t = vis.far(age);
      const at::Tensor count_t = vis.visible_count(prefix_t, idx);  // [T]
      const at::Tensor first_t = vis.first_key(idx);                // [T]
      EXPECT_EQ(vis.has_sliding(), sliding > 0);
      for (int64_t i = 0; i < T; ++i) {
        int64_t count = 0, first = -1;
        for (int64_t j = 0; j < T; ++j) {
          const bool k = kept[size_t(j)];
          const bool want = rule(i, j, k, window, sliding);
          const bool want_view = rule(i, j, true, Visibility::kNoEviction, sliding);
          const bool want_far = i - j > window;
          ASSERT_EQ(vis.visible(i - j, k), want) << i << " " << j;
          ASSERT_EQ(visible_t[i][j].item<bool>(), want) << i << " " << j;
          ASSERT_EQ(vis.in_view(i - j), want_view) << i << " " << j;
          ASSERT_EQ(in_view_t[i][j].item<bool>(), want_view) << i << " " << j;
          ASSERT_EQ(vis.far(i - j), want_far) << i << " " << j;
          ASSERT_EQ(far_t[i][j].item<bool>(), want_far) << i << " " << j;
          ASSERT_EQ(vis.causal(i - j), j <= i);
          ASSERT_EQ(vis.in_sliding(i - j), sliding == 0 || i - j < sliding);
          count += want;
          if (want_view && first < 0) first = j;
        }
        EXPECT_EQ(vis.visible_count(prefix, i), count) << "query " << i;
        EXPECT_EQ(count_t[i].item<int64_t>(), count) << "query " << i;
        EXPECT_EQ(vis.first_key(i), first) << "query " << i;
        EXPECT_EQ(first_t[i].item<int64_t>(), first) << "query " << i;
        // first_near_key: the first visible key that is not far.
        int64_t near = i + 1;
        for (int64_t j = i; j >= 0 && rule(i, j, false, window, sliding); --j) near = j;
        EXPECT_EQ(vis.first_near_key(i), near) << "query " << i;
      }
    }
}

TEST(Visibility, TensorFormBroadcastsOverBatchedPrefixes) {
  // compression_from_decisions' use: prefixes [..., T+1] of several heads at once.
  const int64_t T = 9;
  auto gen = at::make_generator<at::CPUGeneratorImpl>(8);
  const at::Tensor kept = at::rand({3, 2, T}, gen).lt(0.5).to(at::kDouble);
  const at::Tensor prefix = at::cat({at::zeros({3, 2, 1}, at::kDouble), kept.cumsum(2)}, 2);
  const Visibility vis{2, 6};
  const at::Tensor counts = vis.visible_count(prefix, at::arange(T, at::kLong));  // [3, 2, T]
  ASSERT_EQ(counts.sizes(), (std::vector<int64_t>{3, 2, T}));
  for (int64_t a = 0; a < 3; ++a)
    for (int64_t b = 0; b < 2; ++b)
      for (int64_t i = 0; i < T; ++i) {
        int64_t want = 0;
        for (int64_t j = 0; j <= i; ++j) want += rule(i, j, kept[a][b][j].item<double>() > 0, 2, 6);
        EXPECT_EQ(counts[a][b][i].item<double>(), double(want));
      }
}

}  // namespace
}  // namespace dms
