// Resumable training state (DESIGN.md §3): one HDF5 file per checkpoint,
// "<run>/checkpoints/step-000123.h5", written to a temporary name and renamed, with
// a sha256 over every stored tensor so a damaged file is detected on load.
#pragma once
#include <ATen/ATen.h>

#include <string>
#include <utility>
#include <vector>

namespace dms {

using NamedTensors = std::vector<std::pair<std::string, at::Tensor>>;

struct TrainState {
  int64_t step = 0;                         // optimizer steps completed
  int64_t world_size = 1;                   // ranks that wrote it
  int64_t data_epoch = 0, data_offset = 0;  // cursor of the global sample order
  int64_t adam_steps = 0;
  std::string config_json;  // resolved run configuration (trainer/config)
  // What an export needs without the run's configuration: the DMS config of the trained
  // predictors and the base model's identity ({path, size, sha256}). Empty in checkpoints
  // written before they were recorded.
  std::string dms_json, base_json;
  NamedTensors trained, adam_m, adam_v;
};

void write_train_state(const std::string& path, const TrainState& s);
// InputError "<path>: ..." when unreadable, incomplete, or the checksum disagrees.
TrainState read_train_state(const std::string& path);

// "<run>/checkpoints/step-000123.h5"
std::string checkpoint_path(const std::string& run_dir, int64_t step);
// Existing checkpoint files of a run, oldest first.
std::vector<std::string> list_checkpoints(const std::string& run_dir);
// Deletes all but the newest `keep` checkpoints (keep <= 0 keeps all).
void prune_checkpoints(const std::string& run_dir, int64_t keep);

}  // namespace dms
