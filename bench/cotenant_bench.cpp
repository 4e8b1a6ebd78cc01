// A retrofit beside a co-tenant: the default `dms retrofit` (stories260K, micro-batch 8 x 512,
// threads = the usable cores) alone and next to one single-threaded busy loop, with libgomp's
// default wait (spin, then sleep) and with passive waiting (OMP_WAIT_POLICY=PASSIVE). Prints
// tokens/s (median over the steps after warm-up) and the share of the uncontended throughput each
// keeps, measured in this one run, and the children's peak memory.
//   cotenant_bench [--dms build/dms] [--steps 12] [--json FILE]
#include <signal.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>

#include "bench/bench_util.h"

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

// A child that spins on one core until killed.
pid_t start_busy_loop() {
  const pid_t pid = fork();
  if (pid == 0) {
    volatile uint64_t x = 0;
    for (;;) x = x + 1;
  }
  return pid;
}

// Median tokens/s of the retrofit's steps after the first two (allocator and page warm-up).
double run_retrofit(const std::string& dms, const std::string& data, const std::string& out,
                    int steps, const std::string& env) {
  fs::remove_all(out);
  const std::string cmd =
      env + " " + dms + " retrofit --model " + assets() + "/stories260K/stories260K.bin --data " +
      data + " --out " + out + " --micro-batch 8 --max-steps " + std::to_string(steps) +
      " --eval-every 100000 --checkpoint-every 100000 --log-every 1000 > " + out + ".log 2>&1";
  if (sh(cmd) != 0) throw std::runtime_error("retrofit failed: see " + out + ".log");
  std::ifstream in(out + "/metrics.jsonl");
  std::vector<double> tps;
  for (std::string line; std::getline(in, line);) {
    auto j = nlohmann::json::parse(line);
    if (j.contains("tokens_per_s") && j.value("step", 0) > 2)
      tps.push_back(j["tokens_per_s"].get<double>());
  }
  if (tps.empty()) throw std::runtime_error("no step records in " + out + "/metrics.jsonl");
  return median(tps);
}

}  // namespace

int main(int argc, char** argv) {
  std::string dms = "build/dms", json;
  int steps = 12;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string a = argv[i];
    if (a == "--dms") dms = argv[i + 1];
    if (a == "--steps") steps = std::atoi(argv[i + 1]);
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
    std::string name, env;
  };
  const std::vector<Policy> policies = {{"libgomp default (dms)", ""},
                                        {"passive", "OMP_WAIT_POLICY=PASSIVE"}};
  std::vector<std::vector<std::string>> rows;
  nlohmann::json out = nlohmann::json::array();
  for (const auto& p : policies) {
    const double alone = run_retrofit(dms, data, (tmp / "alone").string(), steps, p.env);
    const pid_t busy = start_busy_loop();
    double shared = 0;
    try {
      shared = run_retrofit(dms, data, (tmp / "shared").string(), steps, p.env);
    } catch (...) {
      kill(busy, SIGKILL);
      waitpid(busy, nullptr, 0);
      throw;
    }
    kill(busy, SIGKILL);
    waitpid(busy, nullptr, 0);
    rows.push_back({p.name, fmt(alone, 0), fmt(shared, 0), fmt(100.0 * shared / alone, 1) + "%"});
    out.push_back({{"policy", p.name},
                   {"alone_tokens_per_s", alone},
                   {"with_busy_loop_tokens_per_s", shared},
                   {"kept", shared / alone}});
  }
  rusage ru{};
  getrusage(RUSAGE_CHILDREN, &ru);
  std::cout << "default retrofit (stories260K, micro-batch 8 x 512), " << steps
            << " steps, median tokens/s after step 2; usable cores: "
            << sysconf(_SC_NPROCESSORS_ONLN) << "\n";
  print_table({"OpenMP wait", "alone tok/s", "+ 1 busy loop tok/s", "kept"}, rows);
  std::cout << "peak memory of a retrofit child: " << mib(int64_t(ru.ru_maxrss) * 1024) << "\n";
  if (!json.empty()) std::ofstream(json) << nlohmann::json{{"runs", out}}.dump(2) << "\n";
  fs::remove_all(tmp);
  return 0;
}
