// The memory and FLOPs model of one retrofit step on one device (docs/plan.md): what
// `dms plan` prints and what `dms retrofit` checks before it loads a model.
//
// Units: bytes (int64), FLOPs (double), counts of values (int64). Shapes: B micro-batch
// rows, T positions per row, N = B x T positions, L layers, D hidden, H query heads, K
// key/value heads, d head_dim, I MLP hidden, V vocabulary; a = bytes of an activation
// (4 for f32, 2 for bf16). P = parameters of the base (config.h parameter_count), A = DMS
// adapter values (dms.h dms_parameter_count), W = trained values: A (adapters) or P + A
// (all).
//
// The model of each part (its bytes on one device at the step's peak):
//   weights       (P + A) x w, w = 4 (f32) or 2 (bf16): the student with its adapters
//   teacher       0 in adapter mode (the student is its own teacher, eviction off);
//                 P_teacher x w in full-weight mode (a frozen copy, or --teacher)
//   gradients     W x 4: the fp32 gradients (f32) or the fp32 accumulation buffer (bf16),
//                 counted in full (they are, from the second micro-batch on); at the end
//                 of a bf16 backward the bf16 gradients W x 2 exist beside it
//   master        W x 4 / S for bf16 (fp32 masters of the trained tensors), 0 for f32;
//                 S = world size with --shard-optimizer (ZeRO-1), else 1
//   optimizer     W x 8 / S (AdamW m and v, fp32); plus, during the optimizer step, the
//                 clip's fp64 square of the largest trained tensor (16 bytes a value)
//   activations   what autograd keeps of the student's decoder layers for backward (the
//                 tensors each op saves, counted op by op in plan.cpp), per position;
//                 with checkpointing, each layer's input (D x a) and DMS terms only, plus
//                 one layer recomputed with its backward temporaries
//   logits / KD   the fused LM head and KD loss (trainer/train/kd_loss.h): no [N, V]
//                 tensor; both models' final hidden states [N, D] and the student's
//                 hidden-state gradient, plus chunk buffers of R x V fp32 (R rows a chunk)
//                 and, training the head in bf16, its fp32 gradient [V, D]
// The parts that live through the whole step (weights, teacher, gradients, master,
// optimizer) add up; the others are the largest of the step's phases (top of backward,
// backward of the last layer, end of backward, gradient all-reduce, optimizer step), and
// the table shows each part as it is in the phase that peaks.
#pragma once
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "model/attention.h"
#include "model/config.h"
#include "model/dms.h"
#include "trainer/config/retrofit_config.h"

namespace dms {

enum class PlanDtype { f32, bf16 };

struct PlanInput {
  ModelConfig model;    // the student's base
  ModelConfig teacher;  // full-weight mode's teacher (the base unless --teacher)
  TrainMode mode = TrainMode::adapters;
  DmsPredictor predictor = DmsPredictor::adapter;
  PlanDtype dtype = PlanDtype::f32;
  int64_t seq_len = 0;      // T
  int64_t micro_batch = 1;  // B: rows per forward/backward
  int64_t grad_accum = 1;   // micro-batches per step (FLOPs only)
  int64_t world = 1;        // ranks
  bool shard_optimizer = false, activation_checkpointing = false;
  int64_t kd_chunk = 0;  // rows per KD chunk (0: the loss's automatic size)
  AttentionImpl attention = AttentionImpl::blockwise;
  AttentionBlocks blocks;
};

// The step's configuration as `dms retrofit` runs it: cfg's mode, dtype (auto resolved
// by `cuda`), micro-batch, sharding, checkpointing, KD chunk and attention; T and the
// world size from the run.
PlanInput plan_input(const RetrofitConfig& cfg, const ModelConfig& model,
                     const ModelConfig& teacher, int64_t seq_len, int64_t world, bool cuda);

struct ParamCounts {
  int64_t base = 0;             // P
  int64_t adapters = 0;         // A
  int64_t trained = 0;          // W
  int64_t teacher = 0;          // P_teacher (0 in adapter mode: shared with the student)
  int64_t largest_trained = 0;  // values of the largest trained tensor
};
ParamCounts count_parameters(const PlanInput& in);

// FLOPs of one optimizer step on one device (B x grad_accum rows). model: the usual MFU
// convention, 2 per multiply-add of the matmuls and attention products, no recomputation:
// teacher forward + student forward + student backward (input gradients twice the
// forward's products, weight gradients as many again for what trains). recompute: what
// checkpointing (the decoder layers' forward again) and the fused head (both models'
// logits again in backward: 2 x V x D per position each) add.
struct StepFlops {
  double model = 0, recompute = 0;
};
StepFlops step_flops(const PlanInput& in);

struct Plan {
  ParamCounts params;
  // Bytes at the peak, per part (see the header comment).
  int64_t weights = 0, teacher = 0, gradients = 0, master = 0, optimizer = 0;
  int64_t activations = 0, logits = 0;
  int64_t total = 0;
  std::string peak;  // the phase that peaks ("top of backward", ...)
  StepFlops flops;
};
// InputError when the input cannot describe a step (T, B or world < 1).
Plan plan_step(const PlanInput& in);

// The parts as (name, bytes), in the table's order.
std::vector<std::pair<std::string, int64_t>> plan_parts(const Plan& p);

double gib(int64_t bytes);  // bytes / 2^30

}  // namespace dms
