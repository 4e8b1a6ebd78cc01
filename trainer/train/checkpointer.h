// The run's checkpoints, saved and found by every rank together: one directory per
// checkpoint (checkpoints/checkpoint_dir.h) with one optimizer shard file per shard, each
// written by the rank that owns it, and rank 0's state file and manifest. A save happens
// under a temporary name and is renamed only once every file is written and listed in the
// manifest, so a failed save never replaces the last good checkpoint; older ones are
// pruned to the newest `keep`. A resume walks from the newest back past damaged
// checkpoints (each named in a warning) to one that every rank reads back intact.
#pragma once
#include <functional>
#include <optional>
#include <string>

#include "checkpoints/checkpoint_dir.h"
#include "trainer/dist/distributed.h"
#include "trainer/train/faults.h"
#include "trainer/train/optimizer.h"

namespace dms {

struct Checkpoint {
  std::string path;  // the checkpoint directory
  Manifest manifest;
  TrainState state;
  // The optimizer values of this rank's range; undefined tensors when the checkpoint
  // holds another number of values (another model or train mode: the resume refuses it).
  OptimizerShard optim;
};

class Checkpointer {
 public:
  Checkpointer(std::string run_dir, int64_t keep, FaultInjection faults, Dist& dist)
      : run_dir_(std::move(run_dir)), keep_(keep), faults_(std::move(faults)), dist_(dist) {}

  // Every rank: the newest checkpoint whose files every rank read back intact, with the
  // optimizer state of opt's range (re-sharded from whatever ranks wrote it). A skipped
  // one is named in a warning printed by the lowest rank that found it damaged.
  std::optional<Checkpoint> newest_usable(const Optimizer& opt) const;
  // Every rank: writes the checkpoint of step `step_done` (state() is called on rank 0
  // only) and prunes. "" when it was published; else what failed — on every rank, so all
  // take the same decision (the previous checkpoints are then untouched). kept_for_cr > 0:
  // the checkpoint is kept for the curve (Manifest::kept_for_cr), never pruned.
  std::string save(int64_t step_done, const std::function<TrainState()>& state,
                   const Optimizer& opt, double kept_for_cr = 0) const;

 private:
  // "" when every rank's `error` is empty; else this rank's error, or which rank failed.
  std::string agree(const std::string& error) const;
  // Rank 0 (after every shard was written): state file, manifest, rename, prune.
  void finish_save(int64_t step_done, const TrainState& s, const std::vector<ManifestFile>& shards,
                   int64_t numel, double kept_for_cr) const;

  std::string run_dir_;
  int64_t keep_;
  FaultInjection faults_;
  Dist& dist_;
};

}  // namespace dms
