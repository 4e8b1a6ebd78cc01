#include "trainer/train/checkpointer.h"

#include <iostream>

#include "common/error.h"

namespace dms {

std::optional<Checkpoint> Checkpointer::newest_usable(bool warn) const {
  const auto all = list_checkpoints(run_dir_);
  for (auto it = all.rbegin(); it != all.rend(); ++it) {
    try {
      return Checkpoint{*it, read_train_state(*it)};
    } catch (const InputError& e) {
      if (warn) std::cerr << "warning: skipping unusable checkpoint: " << e.what() << "\n";
    }
  }
  return std::nullopt;
}

std::string Checkpointer::save(int64_t step_done, const TrainState& s) const {
  try {
    faults_.before_checkpoint(step_done);
    write_train_state(checkpoint_path(run_dir_, step_done), s);
    prune_checkpoints(run_dir_, keep_);
    return "";
  } catch (const std::exception& e) {
    return e.what();
  }
}

}  // namespace dms
