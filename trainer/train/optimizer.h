// The optimizer side of a step (DESIGN.md §2 "Mixed precision", §5): gradients folded into
// one fp32 buffer, summed across ranks, clipped by their global norm, and AdamW (PyTorch's
// rule, bit for bit) applied to fp32 master weights that are then written into the trained
// tensors (rounded where those are bf16). Hand-written over ATen so that its state is
// plain tensors we checkpoint in HDF5 with any LibTorch version.
//
// With --shard-optimizer (ZeRO-1) each rank keeps AdamW's moments and the master weights of
// its own contiguous range only: gradients are reduce-scattered, the global norm comes from
// all-reduced per-block squared sums, AdamW runs on the range and the updated ranges are
// all-gathered into every rank's tensors. Without it every rank holds everything (one
// shard) and gradients are all-reduced. One code path serves both.
//
// Shapes: N = values of every trained tensor, flattened in their order (the flat space);
// B = values per norm block, a power of two >= 64 chosen from N alone; P = shards (the
// world size when sharded, else 1); S = values per shard, a multiple of B with P*S >= N
// (the padding holds zeros); shard r covers [r*S, (r+1)*S), its real values
// [begin, end) = that range clipped to N.
#pragma once
#include <ATen/ATen.h>

#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "checkpoints/train_state.h"
#include "trainer/dist/distributed.h"

namespace dms {

struct AdamWOptions {
  double beta1 = 0.9, beta2 = 0.95, eps = 1e-8, weight_decay = 0.0;
};

// One AdamW update of p (PyTorch's torch.optim.AdamW): decoupled weight decay, moments
// m and v, bias correction for update number `step` (1-based). All tensors alike in shape.
void adamw_update(at::Tensor& p, const at::Tensor& g, at::Tensor& m, at::Tensor& v,
                  const AdamWOptions& o, double lr, int64_t step);

// AdamW on tensors that hold their own .grad (benchmarks, the rule's unit test).
struct AdamW {
  AdamWOptions opts;
  std::vector<at::Tensor> params;  // trained tensors (requires_grad)
  std::vector<at::Tensor> m, v;    // first/second moments, same shapes
  int64_t steps = 0;               // updates applied (bias correction)

  AdamW(std::vector<at::Tensor> p, const AdamWOptions& o);
  void step(double lr);
  void zero_grad();
};

// Scales .grad so the global L2 norm is at most max_norm (no-op when <= 0); returns the
// norm before clipping.
double clip_grad_norm(const std::vector<at::Tensor>& params, double max_norm);

struct ShardPlan {
  int rank = 0, world = 1;
  bool sharded = false;  // --shard-optimizer
};

class Optimizer {
 public:
  // trained: the tensors that train (requires_grad, any floating dtype, one device), in
  // the order of the checkpoints.
  Optimizer(const NamedTensors& trained, const AdamWOptions& o, ShardPlan plan);

  // The after_backward hook: adds each trained tensor's .grad (any dtype) into the fp32
  // gradient buffer [P*S] and drops it, so micro-batches accumulate in fp32.
  void absorb_gradients();
  // Sums the gradients across ranks (reduce-scatter when sharded, else all-reduce), takes
  // the global L2 norm in fp64 — squares summed per block of B values, the blocks added in
  // order, so the figure does not depend on the world size or the sharding — and scales
  // this rank's [S] gradients so the norm is at most `clip` (<= 0: no clipping). Returns
  // the norm before clipping (not finite when a gradient is not).
  double reduce_gradients(Dist& dist, double clip);
  // AdamW on this rank's shard, then every trained tensor receives the new master values
  // (all-gathered when sharded). Clears the gradients.
  void step(Dist& dist, double lr);
  // Clears the gradients without an update (a step with a non-finite figure).
  void skip();

  int64_t steps() const { return steps_; }
  int64_t numel() const { return numel_; }                              // N
  std::pair<int64_t, int64_t> range() const { return {begin_, end_}; }  // real values
  int64_t shard_index() const { return index_; }
  int64_t shard_count() const { return count_; }
  // What this rank writes into a checkpoint: its range's moments and master weights (CPU
  // copies); nullopt when it writes none (unsharded: only rank 0 does; an empty range).
  std::optional<OptimizerShard> saved_shard() const;
  // Takes a checkpoint's optimizer state of range() and its update count. The trained
  // tensors are restored by the caller (they hold the master values, rounded).
  void load(const OptimizerShard& s, int64_t steps);

 private:
  // fn(i, flat, n): trained tensor i has n values of [lo, hi) from flat position `flat`.
  template <typename Fn>
  void for_each_overlap(int64_t lo, int64_t hi, Fn&& fn) const;
  void publish(Dist& dist);

  std::vector<at::Tensor> params_;
  std::vector<int64_t> offsets_;  // of each trained tensor in the flat space
  AdamWOptions opts_;
  ShardPlan plan_;
  int64_t numel_ = 0, block_ = 64, shard_ = 0, index_ = 0, count_ = 1;
  int64_t begin_ = 0, end_ = 0;
  at::Tensor grad_;            // fp32 [P*S]: this rank's gradients; all-gather scratch
  at::Tensor reduced_;         // fp32 [S]: the summed gradients of this shard
  at::Tensor master_, m_, v_;  // fp32 [S]: shard's master weights and moments
  int64_t steps_ = 0;
};

}  // namespace dms
