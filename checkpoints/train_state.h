// Resumable training state (DESIGN.md §3): the two kinds of HDF5 file inside a checkpoint
// directory (checkpoints/checkpoint_dir.h says how they are put together and verified).
//   state.h5                 TrainState, written by rank 0: step, data cursor, run config,
//                            base identity and the trained tensors
//   optim-RRRRR-of-PPPPP.h5  OptimizerShard, written by the rank that owns it: AdamW moments
//                            and fp32 master weights of one contiguous range of the flat space
// Shapes: N = values of every trained tensor flattened in their order (the flat space);
// [begin, end) = a range of it, end - begin = n.
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
  int64_t adam_steps = 0;                   // updates applied (AdamW bias correction)
  std::string config_json;                  // resolved run configuration (trainer/config)
  // What an export needs without the run's configuration: the DMS config of the trained
  // predictors and the base model's identity ({path, size, sha256}).
  std::string dms_json, base_json;
  // The trained tensors as the model held them; stored and read back as fp32 (exact for
  // bf16 tensors), each with its dtype recorded.
  NamedTensors trained;
};

// The optimizer state of the range [begin, end) of a flat space of `numel` values.
struct OptimizerShard {
  int64_t begin = 0, end = 0, numel = 0;
  at::Tensor m, v, master;  // fp32 [n] each: AdamW moments, fp32 master weights
};

// Plain writes (the caller writes into a temporary directory); InputError "<path>: ..."
// when a read finds a file that is not what it should be.
void write_state_file(const std::string& path, const TrainState& s);
TrainState read_state_file(const std::string& path);
void write_optimizer_shard(const std::string& path, const OptimizerShard& s);
OptimizerShard read_optimizer_shard(const std::string& path);

}  // namespace dms
