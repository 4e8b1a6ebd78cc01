// One retrofit training step through the trainer's own pieces (accumulate_gradients with
// the Optimizer's fp32 gradient accumulation, its reduction with clipping, and AdamW on
// the fp32 master weights), set up as `dms retrofit` sets it up in a world of one: shared
// by the benchmarks that time a step (train_bench) and measure its memory (plan_bench).
#pragma once
#include <functional>
#include <memory>
#include <vector>

#include "model/transformer.h"
#include "trainer/dist/distributed.h"
#include "trainer/train/optimizer.h"
#include "trainer/train/step.h"

namespace dms::bench {

struct TrainSetup {
  int64_t batch = 4, seq = 1024, window = 64;
  AttentionImpl attention = AttentionImpl::blockwise;
  bool full = false;  // every weight trains against a frozen copy (else the adapters)
  at::ScalarType dtype = at::kFloat;  // every weight and the activations (cast_to)
  bool checkpoint = false;            // activation checkpointing of the student's layers
  at::Device device = at::kCPU;       // where the models, tokens and step live
};

struct TrainRun {
  Model student, teacher_copy;
  std::unique_ptr<Dist> dist;  // a world of one: collectives are local
  std::unique_ptr<Optimizer> opt;
  StepInputs in;
  at::Tensor tokens;  // [batch, seq]
  NamedTensors trained;
  int64_t step = 0;
};

// load() gives the base model (called twice in full mode: student and teacher). The
// adapters start N(0, 0.02) so that decisions vary; tokens are uniform random (seeded).
std::unique_ptr<TrainRun> make_train_run(const std::function<Model()>& load, const TrainSetup& s);

// Teacher + student forward/backward over the batch (gradients folded into the fp32
// buffer), reduction with clipping at 1, AdamW step; returns when the device is done.
void train_step(TrainRun& r);

// Bytes the optimizer holds across steps: the fp32 gradient buffer, master weights and
// AdamW moments.
int64_t optimizer_bytes(const TrainRun& r);

}  // namespace dms::bench
