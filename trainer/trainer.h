// The retrofit (DESIGN.md §2): distil a DMS student from the unchanged model while the
// target compression ratio is annealed. `run_retrofit` builds a Trainer — a thin loop
// over components with narrow interfaces:
//   config      RetrofitConfig (trainer/config), validated before anything is opened
//   parallelism Dist (trainer/dist): process group, gradient and metric all-reduce
//   data        BatchLoader (data/loader.h): the global batch order, this rank's slice
//   step        accumulate_gradients (step.h): teacher + student forward, KD + DMS, backward
//   metrics     StepMetrics (step_metrics.h): named sums that all-reduce themselves
//   optimizer   Optimizer (optimizer.h): fp32 gradients and master weights, reduction,
//               clipping, AdamW, optionally sharded (ZeRO-1); LrSchedule; CrSchedule
//   checkpoints Checkpointer (checkpointer.h): directories with a shard per rank, save,
//               prune, resume with fallback and re-sharding
//   monitoring  MetricsSinks (console, metrics.jsonl, TensorBoard), AlertMonitor
//   validation  validate_heldout (trainer/eval/validator.h)
//   faults      FaultInjection (faults.h): the test hooks, read once
#pragma once
#include <stdexcept>

#include "trainer/config/retrofit_config.h"

namespace dms {

// A run ended by an alert configured to stop it (--stop-on-alert).
struct AlertStop : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// Runs (or resumes) a retrofit into cfg.run.out, joining a process group when the
// environment describes one (torchrun, Slurm, or `--nproc`). Returns 0 when finished and
// saved, 128+signal after a SIGINT/SIGTERM (a checkpoint is written first); throws on
// errors (InputError for bad input or a resume whose configuration changed, DistError
// when a rank is lost, std::runtime_error when a checkpoint that had to be saved was not).
int run_retrofit(const RetrofitConfig& cfg);

}  // namespace dms
