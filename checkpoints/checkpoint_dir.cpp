#include "checkpoints/checkpoint_dir.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <set>
#include <stdexcept>

#include "common/atomic_file.h"
#include "common/error.h"
#include "common/json_file.h"
#include "common/mapped_file.h"
#include "common/sha256.h"

namespace fs = std::filesystem;

namespace dms {

namespace {

const char* kManifestFormat = "dms-retrofit checkpoint v2";

// The step of a checkpoint directory name ("step-000123" -> 123), or -1 for anything else.
int64_t step_of(const std::string& name) {
  if (name.rfind("step-", 0) != 0 || name.size() < 6 || name.size() > 5 + 18) return -1;
  int64_t step = 0;
  for (size_t i = 5; i < name.size(); ++i) {
    if (name[i] < '0' || name[i] > '9') return -1;
    step = step * 10 + (name[i] - '0');
  }
  return step;
}

// Only names the format writes: never a path that leaves the directory.
bool known_name(const std::string& n) {
  if (n == kStateFile) return true;
  if (n.size() != shard_file_name(0, 1).size() || n.rfind("optim-", 0) != 0) return false;
  for (size_t i : {6, 7, 8, 9, 10, 15, 16, 17, 18, 19})
    if (n[i] < '0' || n[i] > '9') return false;
  return n.compare(11, 4, "-of-") == 0 && n.compare(20, 3, ".h5") == 0;
}

nlohmann::json to_json(const Manifest& m) {
  nlohmann::json files = nlohmann::json::array();
  for (const auto& f : m.files) {
    nlohmann::json j = {{"name", f.name}, {"bytes", f.bytes}, {"sha256", f.sha256}};
    if (f.is_shard()) {
      j["begin"] = f.begin;
      j["end"] = f.end;
    }
    files.push_back(j);
  }
  nlohmann::json j = {{"format", kManifestFormat},
                      {"step", m.step},
                      {"world_size", m.world_size},
                      {"numel", m.numel},
                      {"files", files}};
  if (m.kept_for_cr > 0) j["kept_for_cr"] = m.kept_for_cr;
  return j;
}

// A JSON integer field. nlohmann's get<int64_t>() would also convert a float such as 7e115,
// which is undefined behaviour out of range (the manifest fuzzer found it): integers only.
int64_t integer(const nlohmann::json& j, const char* key) {
  const nlohmann::json& v = j.at(key);
  if (!v.is_number_integer() || (v.is_number_unsigned() && v.get<uint64_t>() > INT64_MAX))
    throw std::invalid_argument(std::string("'") + key + "' is not an integer in range");
  return v.get<int64_t>();
}

ManifestFile file_from_json(const nlohmann::json& j) {
  ManifestFile f;
  f.name = j.at("name").get<std::string>();
  const int64_t bytes = integer(j, "bytes");
  if (bytes < 0) throw std::invalid_argument("'bytes' is negative");
  f.bytes = uint64_t(bytes);
  f.sha256 = j.at("sha256").get<std::string>();
  if (j.contains("begin") || j.contains("end")) {
    f.begin = integer(j, "begin");
    f.end = integer(j, "end");
  }
  return f;
}

Manifest parse_manifest(const nlohmann::json& j, const std::string& path) {
  try {
    require(j.at("format").get<std::string>() == kManifestFormat, path,
            std::string("not a ") + kManifestFormat + " manifest");
    Manifest m;
    m.step = integer(j, "step");
    m.world_size = integer(j, "world_size");
    m.numel = integer(j, "numel");
    for (const auto& f : j.at("files")) m.files.push_back(file_from_json(f));
    if (j.contains("kept_for_cr")) {
      m.kept_for_cr = j.at("kept_for_cr").get<double>();
      require(std::isfinite(m.kept_for_cr) && m.kept_for_cr >= 1 && m.kept_for_cr <= 1e6, path,
              "kept_for_cr must be 1 .. 1000000");
    }
    return m;
  } catch (const nlohmann::json::exception& e) {
    throw InputError(path + ": malformed manifest (" + e.what() + ")");
  } catch (const std::invalid_argument& e) {
    throw InputError(path + ": malformed manifest (" + e.what() + ")");
  }
}

// Exactly one state file, known names only, shards tiling [0, N) in order.
void check_listing(const Manifest& m, const std::string& path) {
  require(m.step >= 0 && m.world_size >= 1 && m.numel >= 0, path, "implausible step or sizes");
  std::set<std::string> names;
  int64_t states = 0, next = 0;
  for (const auto& f : m.files) {
    require(known_name(f.name) && names.insert(f.name).second, path,
            "lists an unexpected or repeated file '" + f.name + "'");
    if (!f.is_shard()) {
      ++states;
      continue;
    }
    require(f.begin == next && f.end > f.begin, path,
            "its optimizer shards do not tile the values in order (at " + f.name + ")");
    next = f.end;
  }
  require(states == 1, path, "must list exactly one state file");
  require(next == m.numel, path,
          "its optimizer shards cover " + std::to_string(next) + " of " + std::to_string(m.numel) +
              " values");
}

}  // namespace

std::string checkpoint_dir(const std::string& run_dir, int64_t step) {
  char name[32];
  std::snprintf(name, sizeof(name), "step-%06lld", static_cast<long long>(step));
  return (fs::path(run_dir) / "checkpoints" / name).string();
}

std::string checkpoint_temp_dir(const std::string& run_dir, int64_t step) {
  const fs::path final_dir(checkpoint_dir(run_dir, step));
  return (final_dir.parent_path() / ("." + final_dir.filename().string() + ".tmp")).string();
}

std::string shard_file_name(int64_t index, int64_t count) {
  char name[40];
  std::snprintf(name, sizeof(name), "optim-%05lld-of-%05lld.h5", static_cast<long long>(index),
                static_cast<long long>(count));
  return name;
}

ManifestFile describe_file(const std::string& dir, const std::string& name) {
  const std::string path = (fs::path(dir) / name).string();
  ManifestFile f;
  f.name = name;
  f.bytes = fs::file_size(path);
  f.sha256 = sha256_file(path);
  return f;
}

void publish_checkpoint(const std::string& tmp, const std::string& final_dir, const Manifest& m) {
  write_file_atomic((fs::path(tmp) / kManifestFile).string(), to_json(m).dump(2) + "\n");
  sync_path(tmp);
  const fs::path parent = fs::path(final_dir).parent_path();
  const fs::path old = parent / ("." + fs::path(final_dir).filename().string() + ".replaced");
  const bool replacing = fs::exists(final_dir);
  if (replacing) {
    fs::remove_all(old);
    fs::rename(final_dir, old);
  }
  fs::rename(tmp, final_dir);
  sync_path(parent.string());
  if (replacing) fs::remove_all(old);
}

Manifest read_manifest(const std::string& dir) {
  const std::string path = (fs::path(dir) / kManifestFile).string();
  require(fs::exists(path), dir, "no manifest.json (an incomplete or damaged checkpoint)");
  Manifest m = parse_manifest(read_json_file(path, 16ull << 20), path);
  check_listing(m, path);
  for (const auto& f : m.files) {
    const std::string p = (fs::path(dir) / f.name).string();
    require(fs::exists(p), p, "missing (listed in the manifest)");
    require_regular_file(p);
    require(fs::file_size(p) == f.bytes, p,
            std::to_string(fs::file_size(p)) + " bytes, the manifest says " +
                std::to_string(f.bytes) + " (damaged checkpoint)");
  }
  return m;
}

void verify_file(const std::string& dir, const ManifestFile& f) {
  const std::string p = (fs::path(dir) / f.name).string();
  require(sha256_file(p) == f.sha256, p, "checksum mismatch (damaged checkpoint)");
}

TrainState read_train_state(const std::string& dir) {
  const Manifest m = read_manifest(dir);
  const ManifestFile& f = *std::find_if(m.files.begin(), m.files.end(),
                                        [](const ManifestFile& x) { return !x.is_shard(); });
  verify_file(dir, f);
  const std::string path = (fs::path(dir) / f.name).string();
  TrainState s = read_state_file(path);
  require(s.step == m.step, path, "its step disagrees with the manifest");
  return s;
}

OptimizerShard read_optimizer_range(const std::string& dir, const Manifest& m, int64_t begin,
                                    int64_t end) {
  require(0 <= begin && begin <= end && end <= m.numel, dir,
          "holds " + std::to_string(m.numel) + " optimizer values, not the range [" +
              std::to_string(begin) + ", " + std::to_string(end) + ")");
  const int64_t n = end - begin;
  OptimizerShard out{begin, end, m.numel, at::zeros({n}), at::zeros({n}), at::zeros({n})};
  for (const auto& f : m.files) {
    const int64_t lo = std::max(begin, f.begin), hi = std::min(end, f.end);
    if (!f.is_shard() || lo >= hi) continue;
    verify_file(dir, f);
    const std::string path = (fs::path(dir) / f.name).string();
    const OptimizerShard s = read_optimizer_shard(path);
    require(s.begin == f.begin && s.end == f.end && s.numel == m.numel, path,
            "its range disagrees with the manifest");
    out.m.narrow(0, lo - begin, hi - lo).copy_(s.m.narrow(0, lo - f.begin, hi - lo));
    out.v.narrow(0, lo - begin, hi - lo).copy_(s.v.narrow(0, lo - f.begin, hi - lo));
    out.master.narrow(0, lo - begin, hi - lo).copy_(s.master.narrow(0, lo - f.begin, hi - lo));
  }
  return out;
}

std::vector<std::string> list_checkpoints(const std::string& run_dir) {
  std::vector<std::pair<int64_t, std::string>> found;
  const fs::path dir = fs::path(run_dir) / "checkpoints";
  if (!fs::is_directory(dir)) return {};
  for (const auto& e : fs::directory_iterator(dir)) {
    const int64_t step = step_of(e.path().filename().string());
    if (step >= 0 && e.is_directory()) found.emplace_back(step, e.path().string());
  }
  std::sort(found.begin(), found.end());
  std::vector<std::string> out;
  for (auto& [step, path] : found) out.push_back(std::move(path));
  return out;
}

void prune_checkpoints(const std::string& run_dir, int64_t keep) {
  const fs::path dir = fs::path(run_dir) / "checkpoints";
  if (!fs::is_directory(dir)) return;
  for (const auto& e : fs::directory_iterator(dir))
    if (e.path().filename().string().rfind(".step-", 0) == 0) fs::remove_all(e.path());
  if (keep <= 0) return;
  std::vector<std::string> prunable;  // oldest first
  for (const auto& c : list_checkpoints(run_dir)) {
    bool kept = false;
    try {
      kept = read_manifest(c).kept_for_cr > 0;
    } catch (const InputError&) {  // damaged: an ordinary candidate
    }
    if (!kept) prunable.push_back(c);
  }
  for (size_t i = 0; i + size_t(keep) < prunable.size(); ++i) fs::remove_all(prunable[i]);
}

}  // namespace dms
