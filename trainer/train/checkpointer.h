// The run's checkpoints on disk: <run>/checkpoints/step-NNNNNN.h5 (checkpoints/train_state.h).
// Writing goes through a temporary name, so a failed write never replaces the last good
// checkpoint; older ones are pruned to the newest `keep`. Reading for a resume walks from
// the newest back past damaged files (each named in a warning).
#pragma once
#include <optional>
#include <string>

#include "checkpoints/train_state.h"
#include "trainer/train/faults.h"

namespace dms {

struct Checkpoint {
  std::string path;
  TrainState state;
};

class Checkpointer {
 public:
  Checkpointer(std::string run_dir, int64_t keep, FaultInjection faults)
      : run_dir_(std::move(run_dir)), keep_(keep), faults_(std::move(faults)) {}

  // The newest checkpoint that reads back intact; `warn` prints the skipped ones.
  std::optional<Checkpoint> newest_usable(bool warn) const;
  // Writes the state of step `step_done` and prunes; "" on success, else what failed
  // (the previous checkpoints are then untouched).
  std::string save(int64_t step_done, const TrainState& s) const;

 private:
  std::string run_dir_;
  int64_t keep_;
  FaultInjection faults_;
};

}  // namespace dms
