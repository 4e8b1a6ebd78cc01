// Fuzzes the checks a training checkpoint directory passes before HDF5 opens any of its
// files (checkpoints/checkpoint_dir.h): the input is manifest.json of a checkpoint
// directory that holds fixed stand-ins for state.h5 and the optimizer shards
// (optim-00000-of-00001.h5, optim-0000{0,1}-of-00002.h5). As the resume does
// (Checkpointer::newest_usable) and `dms inspect`: read_manifest (format, names, sizes,
// shard tiling), verify_file on every listed file (sha256), read_train_state, and
// read_optimizer_range for a rank's part of a 64-value flat space.
// Expected rejection: dms::InputError. The stand-ins are not HDF5, so a manifest that
// passes every check ends in h5::open_file's "not an HDF5 file" (InputError): HDF5 only
// ever sees the fixed stand-ins, never fuzzed bytes (it is not instrumented and has known
// crashes on crafted files). train_state.h's readers do nothing of their own before
// opening the file with HDF5, so this manifest path is all there is to fuzz in front of it.
// Seeds: DMS_FUZZ_WRITE_SEEDS=DIR writes valid manifests for the stand-ins into DIR.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <filesystem>
#include <nlohmann/json.hpp>

#include "checkpoints/checkpoint_dir.h"
#include "common/sha256.h"
#include "fuzz/fuzz_util.h"

namespace {

// The stand-in files of the checkpoint directory: name and content.
const std::vector<std::pair<std::string, std::string>>& stand_ins() {
  static const std::vector<std::pair<std::string, std::string>> files = {
      {"state.h5", "stand-in for the state file\n"},
      {"optim-00000-of-00001.h5", "stand-in for the only optimizer shard\n"},
      {"optim-00000-of-00002.h5", "stand-in for optimizer shard 0 of 2\n"},
      {"optim-00001-of-00002.h5", "stand-in for optimizer shard 1 of 2 (longer)\n"}};
  return files;
}

constexpr int64_t kNumel = 64;  // the flat space of the run resuming

std::string dir() {
  static const std::string d = [] {
    const std::string p = fuzz::scratch_dir() + "/step-000010";
    std::filesystem::create_directories(p);
    return p;
  }();
  return d;
}

nlohmann::json entry(const std::string& name, int64_t begin = -1, int64_t end = -1) {
  for (const auto& [n, content] : stand_ins())
    if (n == name) {
      nlohmann::json j = {{"name", n},
                          {"bytes", content.size()},
                          {"sha256", dms::sha256_hex(content.data(), content.size())}};
      if (begin >= 0) {
        j["begin"] = begin;
        j["end"] = end;
      }
      return j;
    }
  std::abort();
}

void write_seeds() {
  auto manifest = [](nlohmann::json files) {
    return nlohmann::json{{"format", "dms-retrofit checkpoint v2"},
                          {"step", 10},
                          {"world_size", 1},
                          {"numel", kNumel},
                          {"files", std::move(files)}};
  };
  nlohmann::json one = manifest({entry("state.h5"), entry("optim-00000-of-00001.h5", 0, kNumel)});
  nlohmann::json two = manifest({entry("state.h5"), entry("optim-00000-of-00002.h5", 0, 32),
                                 entry("optim-00001-of-00002.h5", 32, kNumel)});
  two["world_size"] = 2;
  nlohmann::json kept = one;
  kept["kept_for_cr"] = 4;
  nlohmann::json empty = manifest({entry("state.h5")});
  empty["numel"] = 0;
  nlohmann::json damaged = two;
  damaged["files"][1]["sha256"] = std::string(64, '0');
  int i = 0;
  for (const auto& j : {one, two, kept, empty, damaged})
    fuzz::write_seed("manifest-" + std::to_string(i++) + ".json", j.dump(2) + "\n");
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  at::set_num_threads(1);
  dir();
  if (fuzz::seed_dir()) write_seeds();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string d = dir();
  // The stand-ins again each time: nothing may have changed them.
  for (const auto& [name, content] : stand_ins()) fuzz::write_file("step-000010/" + name, content);
  fuzz::write_file("step-000010/manifest.json", data, size);
  dms::Manifest m;
  if (!fuzz::accepts([&] { m = dms::read_manifest(d); })) return 0;
  FUZZ_CHECK(!m.files.empty() && m.numel >= 0 && m.world_size >= 1, "accepted manifest");
  for (const auto& f : m.files) {
    bool known = false;
    for (const auto& [name, content] : stand_ins())
      known = known || (name == f.name && content.size() == f.bytes);
    FUZZ_CHECK(known, "accepted a file that is not in the directory: " + f.name);
    fuzz::accepts([&] { dms::verify_file(d, f); });
  }
  fuzz::accepts([&] { dms::read_train_state(d); });
  if (m.numel == kNumel) fuzz::accepts([&] { dms::read_optimizer_range(d, m, 16, 48); });
  return 0;
}
