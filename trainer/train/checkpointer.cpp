#include "trainer/train/checkpointer.h"

#include <cstring>
#include <filesystem>
#include <iostream>

#include "common/error.h"

namespace fs = std::filesystem;

namespace dms {

namespace {

std::string attempt(const std::function<void()>& fn) {
  try {
    fn();
    return "";
  } catch (const std::exception& e) {
    return e.what()[0] ? e.what() : "unknown error";
  }
}

// A shard's manifest entry as 10 integers (sha256 as 4 x 8 bytes), to all-gather.
constexpr int64_t kRecord = 10;

at::Tensor encode(const ManifestFile& f, int64_t index, int64_t count) {
  at::Tensor r = at::zeros({kRecord}, at::kLong);
  if (f.name.empty()) return r;  // this rank wrote no shard
  int64_t* p = r.data_ptr<int64_t>();
  p[0] = 1;
  p[1] = int64_t(f.bytes);
  p[2] = f.begin;
  p[3] = f.end;
  p[4] = index;
  p[5] = count;
  unsigned char d[32];
  for (int i = 0; i < 32; ++i) d[i] = uint8_t(std::stoi(f.sha256.substr(2 * i, 2), nullptr, 16));
  std::memcpy(p + 6, d, 32);
  return r;
}

std::optional<ManifestFile> decode(const int64_t* p) {
  if (p[0] != 1) return std::nullopt;
  ManifestFile f;
  f.name = shard_file_name(p[4], p[5]);
  f.bytes = uint64_t(p[1]);
  f.begin = p[2];
  f.end = p[3];
  unsigned char d[32];
  std::memcpy(d, p + 6, 32);
  char hex[65];
  for (int i = 0; i < 32; ++i) std::snprintf(hex + 2 * i, 3, "%02x", d[i]);
  f.sha256.assign(hex, 64);
  return f;
}

// The lowest rank whose `error` is not empty, or -1.
int first_failed(Dist& dist, const std::string& error) {
  at::Tensor flags = at::zeros({dist.world()}, at::kDouble);
  if (!error.empty()) flags[dist.rank()] = 1.0;
  dist.all_reduce_sum({flags});
  for (int r = 0; r < dist.world(); ++r)
    if (flags[r].item<double>() > 0) return r;
  return -1;
}

// Single files step-NNNNNN.h5 are checkpoints of versions before directories: say so.
void warn_about_old_files(const std::string& run_dir) {
  const fs::path dir = fs::path(run_dir) / "checkpoints";
  if (!fs::is_directory(dir)) return;
  for (const auto& e : fs::directory_iterator(dir)) {
    const std::string n = e.path().filename().string();
    if (e.is_regular_file() && n.rfind("step-", 0) == 0 && e.path().extension() == ".h5")
      std::cerr << "warning: " << e.path().string()
                << ": a single-file checkpoint of an earlier version, not read (checkpoints "
                   "are directories now)\n";
  }
}

}  // namespace

std::string Checkpointer::agree(const std::string& error) const {
  const int bad = first_failed(dist_, error);
  if (bad < 0) return "";
  return error.empty() ? "rank " + std::to_string(bad) + " could not write its part" : error;
}

std::optional<Checkpoint> Checkpointer::newest_usable(const Optimizer& opt) const {
  if (dist_.rank() == 0) warn_about_old_files(run_dir_);
  const auto all = list_checkpoints(run_dir_);
  const int64_t begin = opt.range().first, end = opt.range().second;
  for (auto it = all.rbegin(); it != all.rend(); ++it) {
    Checkpoint c;
    c.path = *it;
    const std::string error = attempt([&] {
      c.manifest = read_manifest(c.path);
      c.state = read_train_state(c.path);
      if (c.manifest.numel == opt.numel())
        c.optim = read_optimizer_range(c.path, c.manifest, begin, end);
    });
    const int bad = first_failed(dist_, error);
    if (bad < 0) return c;
    if (bad == dist_.rank())
      std::cerr << "warning: skipping unusable checkpoint: " << error << "\n";
  }
  return std::nullopt;
}

std::string Checkpointer::save(int64_t step_done, const std::function<TrainState()>& state,
                               const Optimizer& opt, double kept_for_cr) const {
  const bool lead = dist_.rank() == 0;
  const std::string tmp = checkpoint_temp_dir(run_dir_, step_done);
  std::string error;
  if (lead)
    error = attempt([&] {
      fs::remove_all(tmp);  // debris of an interrupted save of this step
      fs::create_directories(tmp);
    });
  if (!(error = agree(error)).empty()) return error;
  ManifestFile mine;
  error = attempt([&] {
    const auto shard = opt.saved_shard();
    if (!shard) return;  // another rank writes this rank's values
    const std::string name = shard_file_name(opt.shard_index(), opt.shard_count());
    write_optimizer_shard((fs::path(tmp) / name).string(), *shard);
    mine = describe_file(tmp, name);
    mine.begin = shard->begin;
    mine.end = shard->end;
  });
  error = agree(error);  // also the barrier after every shard write
  if (error.empty()) {
    at::Tensor all = at::empty({kRecord * dist_.world()}, at::kLong);
    dist_.all_gather(encode(mine, opt.shard_index(), opt.shard_count()), all);
    std::vector<ManifestFile> shards;
    for (int r = 0; r < dist_.world(); ++r)
      if (auto f = decode(all.data_ptr<int64_t>() + r * kRecord)) shards.push_back(*f);
    if (lead)
      error = attempt([&] { finish_save(step_done, state(), shards, opt.numel(), kept_for_cr); });
    error = agree(error);
  }
  if (lead && !error.empty()) {
    std::error_code ec;
    fs::remove_all(tmp, ec);
  }
  return error;
}

void Checkpointer::finish_save(int64_t step_done, const TrainState& s,
                               const std::vector<ManifestFile>& shards, int64_t numel,
                               double kept_for_cr) const {
  faults_.before_checkpoint(step_done);
  const std::string tmp = checkpoint_temp_dir(run_dir_, step_done);
  write_state_file((fs::path(tmp) / kStateFile).string(), s);
  Manifest m{step_done, s.world_size, numel, {describe_file(tmp, kStateFile)}, kept_for_cr};
  m.files.insert(m.files.end(), shards.begin(), shards.end());  // gathered in rank order
  publish_checkpoint(tmp, checkpoint_dir(run_dir_, step_done), m);
  prune_checkpoints(run_dir_, keep_);
}

}  // namespace dms
