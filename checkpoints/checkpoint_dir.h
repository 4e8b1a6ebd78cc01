// One checkpoint on disk (DESIGN.md §3) is a directory, <run>/checkpoints/step-000123/:
//   state.h5                   TrainState (checkpoints/train_state.h), written by rank 0
//   optim-00000-of-00002.h5 …  one OptimizerShard per shard, written by the rank owning it
//                              (an unsharded run writes a single shard covering everything)
//   manifest.json              written last: every file with its size and sha256, the
//                              shards' ranges
// It is assembled under a temporary name (.step-000123.tmp) and renamed when complete, so
// a checkpoint exists only when its manifest exists and every file agrees with it; a
// directory that does not is damaged and readers say so, naming it.
// Shapes: N = values of the flat optimizer space; shards tile [0, N) in order.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "checkpoints/train_state.h"

namespace dms {

inline constexpr const char* kStateFile = "state.h5";
inline constexpr const char* kManifestFile = "manifest.json";

struct ManifestFile {
  std::string name;  // inside the checkpoint directory
  uint64_t bytes = 0;
  std::string sha256;            // lowercase hex of the whole file
  int64_t begin = -1, end = -1;  // optimizer shards: their range; -1 for the state file
  bool is_shard() const { return begin >= 0; }
};

struct Manifest {
  int64_t step = 0, world_size = 1, numel = 0;  // numel: N
  std::vector<ManifestFile> files;              // state file first, then shards by range
  // > 0: kept for the curve as the first checkpoint at which the scheduled CR reached this
  // (retrofit --keep-at-cr); pruning leaves it.
  double kept_for_cr = 0;
};

// "<run>/checkpoints/step-000123" and the temporary name it is written under.
std::string checkpoint_dir(const std::string& run_dir, int64_t step);
std::string checkpoint_temp_dir(const std::string& run_dir, int64_t step);
// "optim-00001-of-00004.h5"
std::string shard_file_name(int64_t index, int64_t count);
// Size and sha256 of a written file of `dir`.
ManifestFile describe_file(const std::string& dir, const std::string& name);

// Writes <tmp>/manifest.json (last, durable), then renames tmp to final. A directory
// already under the final name (a damaged checkpoint of the same step: the resume skipped
// it) is replaced only once the new one is complete.
void publish_checkpoint(const std::string& tmp, const std::string& final_dir, const Manifest& m);

// InputError "<dir>/<file>: ..." unless the manifest parses, names only files of the
// format, every file is there with its size, and the shards tile [0, N).
Manifest read_manifest(const std::string& dir);
// InputError naming the file when its sha256 disagrees with the manifest.
void verify_file(const std::string& dir, const ManifestFile& f);
// The state, its file verified against the manifest (what export and resume read).
TrainState read_train_state(const std::string& dir);
// The optimizer values [begin, end) of a checkpoint, assembled from the shards that overlap
// them (each verified before it is parsed), whatever the ranks that wrote them.
OptimizerShard read_optimizer_range(const std::string& dir, const Manifest& m, int64_t begin,
                                    int64_t end);

// Checkpoint directories of a run (step-NNNNNN), oldest first; temporaries are not listed.
std::vector<std::string> list_checkpoints(const std::string& run_dir);
// Deletes all but the newest `keep` checkpoints (keep <= 0 keeps all) and any temporary
// left by an interrupted save. Checkpoints kept for a CR are neither deleted nor counted.
void prune_checkpoints(const std::string& run_dir, int64_t keep);

}  // namespace dms
