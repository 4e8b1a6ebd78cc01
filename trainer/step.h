// One optimizer step's forward/backward: teacher forward (no grad), student forward in
// train mode with keyed noise, KD + DMS losses, backward — over the micro-batches of this
// rank's slice. Losses are normalised by the *global* batch (positions for KD, samples for
// DMS), so any split into ranks and micro-batches yields the same summed gradient.
#pragma once
#include <ATen/ATen.h>

#include "model/transformer.h"
#include "trainer/losses.h"

namespace dms {

struct StepInputs {
  Model* student;
  const Model* teacher;  // == student in adapter mode (teacher mode = eviction off)
  KdDirection kd_dir;
  int64_t micro_batch, kd_chunk;
  double dms_weight;
  int64_t window;
  uint64_t seed;
  AttentionImpl attention = AttentionImpl::blockwise;
  AttentionBlocks blocks;
};

struct StepStats {
  double kd = 0, dms = 0;  // sums (KD over positions, DMS over samples) of this slice
  double lm_nll = 0;       // student next-token NLL sum
  int64_t lm_count = 0, tokens = 0;
  double eviction = 0;                   // mean fraction closed over the slice's samples
  double effective_cr = 1;               // effective KV CR of the slice (hard decisions)
  double visible_sum = 0, full_sum = 0;  // its parts, summed over queries (for reduction)
  double grad_norm = 0;                  // filled by the caller after reduction/clipping
};

// tokens [b, T]: this rank's rows of the global batch, first_index = position of row 0
// in the global batch (the noise key). Gradients accumulate into the student's tensors.
StepStats accumulate_gradients(const StepInputs& in, const at::Tensor& tokens, int64_t step,
                               int64_t first_index, int64_t global_batch, double target);

}  // namespace dms
