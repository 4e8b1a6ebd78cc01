// One retrofit training step through the trainer's own pieces (accumulate_gradients,
// clip_grad_norm, AdamW), set up as `dms retrofit` sets it up: shared by the benchmarks
// that time a step (train_bench) and measure its memory (plan_bench).
#pragma once
#include <functional>
#include <memory>
#include <vector>

#include "model/transformer.h"
#include "trainer/train/optimizer.h"
#include "trainer/train/step.h"

namespace dms::bench {

struct TrainSetup {
  int64_t batch = 4, seq = 1024, window = 64;
  AttentionImpl attention = AttentionImpl::blockwise;
  bool full = false;  // every weight trains against a frozen copy (else the adapters)
  at::ScalarType dtype = at::kFloat;  // every weight and the activations (cast_to)
  bool checkpoint = false;            // activation checkpointing of the student's layers
};

struct TrainRun {
  Model student, teacher_copy;
  std::unique_ptr<AdamW> opt;
  StepInputs in;
  at::Tensor tokens;  // [batch, seq]
  std::vector<at::Tensor> params;
  int64_t step = 0;
};

// load() gives the base model (called twice in full mode: student and teacher). The
// adapters start N(0, 0.02) so that decisions vary; tokens are uniform random (seeded).
std::unique_ptr<TrainRun> make_train_run(const std::function<Model()>& load, const TrainSetup& s);

// zero_grad, teacher + student forward/backward over the batch, clip at 1, AdamW step.
void train_step(TrainRun& r);

}  // namespace dms::bench
