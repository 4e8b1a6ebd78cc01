// A retrofit beside a co-tenant: the default `dms retrofit` (stories260K, micro-batch 8 x 512;
// threads: the usable cores, one fewer per core other processes take, common/thread_governor.h)
// alone and next to one single-threaded busy loop; then the same at a fixed --threads (every
// usable core: what the default was before the governor) with libgomp's default wait (spin,
// then sleep) and with passive waiting (OMP_WAIT_POLICY=PASSIVE). Prints tokens/s (median over
// the steps after warm-up), the share of the uncontended throughput each keeps, measured in
// this one run, the thread changes the default run logged, and the children's peak memory.
//   cotenant_bench [--dms build/dms] [--steps 12] [--rounds 3] [--json FILE]
#include <signal.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>

#include "bench/bench_util.h"
#include "common/host.h"

namespace fs = std::filesystem;
using namespace dms::bench;

namespace {

std::string assets() {
  const char* env = std::getenv("DMS_ASSETS");
  return env && *env ? env : DMS_DEFAULT_ASSETS;
}

int sh(const std::string& cmd) {
  const int status = std::system(cmd.c_str());
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128;
}

// A child that spins on one core for the life of this object.
struct BusyLoop {
  pid_t pid = fork();
  BusyLoop() {
    if (pid == 0) {
      prctl(PR_SET_PDEATHSIG, SIGKILL);  // never outlives the bench
      volatile uint64_t x = 0;
      for (;;) x = x + 1;
    }
  }
  ~BusyLoop() {
    kill(pid, SIGKILL);
    waitpid(pid, nullptr, 0);
  }
  BusyLoop(const BusyLoop&) = delete;
  BusyLoop& operator=(const BusyLoop&) = delete;
};

// Median tokens/s of the retrofit's steps after the first two (allocator and page warm-up);
// every step is recorded (--log-every 1).
struct Result {
  double tokens_per_s = 0;
  std::string notes;  // the run's thread changes
};

Result run_retrofit(const std::string& dms, const std::string& data, const std::string& out,
                    int steps, const std::string& env, const std::string& args) {
  fs::remove_all(out);
  const std::string cmd = env + " " + dms + " retrofit " + args + " --model " + assets() +
                          "/stories260K/stories260K.bin --data " + data + " --out " + out +
                          " --micro-batch 8 --max-steps " + std::to_string(steps) +
                          " --eval-every 100000 --checkpoint-every 100000 --log-every 1 > " + out +
                          ".log 2>&1";
  if (sh(cmd) != 0) throw std::runtime_error("retrofit failed: see " + out + ".log");
  std::ifstream in(out + "/metrics.jsonl");
  std::vector<double> tps;
  Result r;
  for (std::string line; std::getline(in, line);) {
    auto j = nlohmann::json::parse(line);
    if (j.contains("tokens_per_s") && j.value("step", 0) > 2)
      tps.push_back(j["tokens_per_s"].get<double>());
    if (j.contains("note"))
      r.notes += (r.notes.empty() ? "" : "; ") + std::string("step ") +
                 std::to_string(j.value("step", 0)) + ": " + j.value("message", std::string());
  }
  if (tps.empty()) throw std::runtime_error("no step records in " + out + "/metrics.jsonl");
  r.tokens_per_s = median(tps);
  return r;
}

}  // namespace

int main(int argc, char** argv) {
  std::string dms = "build/dms", json;
  int steps = 12, rounds = 3;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string a = argv[i];
    if (a == "--dms") dms = argv[i + 1];
    if (a == "--steps") steps = std::atoi(argv[i + 1]);
    if (a == "--rounds") rounds = std::max(1, std::atoi(argv[i + 1]));
    if (a == "--json") json = argv[i + 1];
  }
  const fs::path tmp = fs::temp_directory_path() / ("dms_cotenant_" + std::to_string(getpid()));
  fs::create_directories(tmp);
  const std::string data = (tmp / "train.h5").string();
  if (sh(dms + " data prepare --tokenizer " + assets() + "/stories260K/tok512.model --input " +
         assets() + "/tinystories/tinystories_val_prefix.txt --out " + data +
         " --seq-len 512 > /dev/null 2>&1") != 0) {
    std::cerr << "data prepare failed\n";
    return 1;
  }
  struct Policy {
    std::string name, env, args;
  };
  const std::string all = "--threads " + std::to_string(dms::usable_cores());
  const std::vector<Policy> policies = {
      {"default (governed threads)", "", ""},
      {all + ", libgomp's wait", "", all},
      {all + ", OMP_WAIT_POLICY=PASSIVE", "OMP_WAIT_POLICY=PASSIVE", all}};
  // Rounds interleave the policies and their alone/shared runs: this VM's speed drifts by 2x
  // over minutes, so each round's ratio compares runs a few seconds apart.
  std::vector<std::vector<double>> alone(policies.size()), shared(policies.size()),
      kept(policies.size());
  std::vector<std::string> notes;
  for (int round = 0; round < rounds; ++round) {
    for (size_t i = 0; i < policies.size(); ++i) {
      const Policy& p = policies[i];
      const Result a = run_retrofit(dms, data, (tmp / "alone").string(), steps, p.env, p.args);
      Result b;
      {
        BusyLoop loop;
        b = run_retrofit(dms, data, (tmp / "shared").string(), steps, p.env, p.args);
      }
      alone[i].push_back(a.tokens_per_s);
      shared[i].push_back(b.tokens_per_s);
      kept[i].push_back(b.tokens_per_s / a.tokens_per_s);
      if (p.args.empty()) {
        const std::string r = "round " + std::to_string(round + 1) + ", ";
        notes.push_back(r + "alone: " + (a.notes.empty() ? "no thread change" : a.notes));
        notes.push_back(r + "beside the loop: " + (b.notes.empty() ? "no thread change" : b.notes));
      }
    }
  }
  std::vector<std::vector<std::string>> rows;
  nlohmann::json out = nlohmann::json::array();
  for (size_t i = 0; i < policies.size(); ++i) {
    const auto [lo, hi] = std::minmax_element(kept[i].begin(), kept[i].end());
    rows.push_back({policies[i].name, fmt(median(alone[i]), 0), fmt(median(shared[i]), 0),
                    fmt(100.0 * median(kept[i]), 1) + "%",
                    fmt(100.0 * *lo, 1) + "-" + fmt(100.0 * *hi, 1) + "%"});
    out.push_back({{"policy", policies[i].name},
                   {"alone_tokens_per_s", alone[i]},
                   {"with_busy_loop_tokens_per_s", shared[i]},
                   {"kept", kept[i]}});
  }
  rusage ru{};
  getrusage(RUSAGE_CHILDREN, &ru);
  std::cout << "default retrofit (stories260K, micro-batch 8 x 512), " << steps
            << " steps, median tokens/s after step 2, medians over " << rounds
            << " interleaved rounds (kept: the median of each round's ratio); usable cores: "
            << dms::usable_cores() << "\n";
  print_table({"threads", "alone tok/s", "+ 1 busy loop tok/s", "kept", "kept, min-max"}, rows);
  for (const auto& n : notes) std::cout << "default run, " << n << "\n";
  std::cout << "peak memory of a retrofit child: " << mib(int64_t(ru.ru_maxrss) * 1024) << "\n";
  if (!json.empty()) std::ofstream(json) << nlohmann::json{{"runs", out}}.dump(2) << "\n";
  fs::remove_all(tmp);
  return 0;
}
