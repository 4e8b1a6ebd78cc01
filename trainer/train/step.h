// One optimizer step's forward/backward: teacher forward (no grad), student forward in
// train mode with keyed noise, KD + DMS losses, backward — over the micro-batches of this
// rank's slice. Neither model materialises logits: both stop at their final hidden state
// and the KD loss applies the LM heads chunk by chunk (kd_loss.h). The losses and their
// sums are fp32 whatever the models' dtype. Losses are normalised by the *global* batch (positions
// for KD, samples for DMS), so any split into ranks and micro-batches yields the same summed
// gradient.
#pragma once
#include <ATen/ATen.h>

#include <functional>

#include "model/transformer.h"
#include "trainer/train/losses.h"
#include "trainer/train/step_metrics.h"

namespace dms {

struct StepInputs {
  Model* student = nullptr;
  const Model* teacher = nullptr;  // == student in adapter mode (teacher mode = eviction off)
  KdDirection kd_dir = KdDirection::student_teacher;
  int64_t micro_batch = 1, kd_chunk = 0;
  double dms_weight = 1.0;
  uint64_t seed = 0;
  AttentionImpl attention = AttentionImpl::blockwise;
  AttentionBlocks blocks;
  bool checkpoint_layers = false;  // activation checkpointing of the student's layers
  // Positions whose input token is kd_skip_id get no KD (the data's end token, as the
  // official code masks it; -1: none). kd_positions: the KD positions of the whole global
  // batch, the KD's denominator (0: every position, global_batch x T).
  int64_t kd_skip_id = -1;
  double kd_positions = 0;
  // Called after each micro-batch's backward (e.g. to fold low-precision gradients into
  // an fp32 accumulator); may be empty.
  std::function<void()> after_backward;
};

// tokens [b, T]: this rank's rows of the global batch, first_index = position of row 0
// in the global batch (the noise key). Gradients accumulate into the student's tensors;
// the returned sums cover this rank's rows (the compression figures follow the student's
// own DMS window).
// KD weight of each position of tokens [b, T]: 0 where the input token is skip_id, else 1.
// -> [b * T] fp32
at::Tensor kd_weights(const at::Tensor& tokens, int64_t skip_id);

StepMetrics accumulate_gradients(const StepInputs& in, const at::Tensor& tokens, int64_t step,
                                 int64_t first_index, int64_t global_batch, double target);

}  // namespace dms
