#include "common/host.h"

#include <sched.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>

#include "common/error.h"

#include <ATen/Parallel.h>

#include <iostream>

namespace dms {

double mem_available_bytes() {
  std::ifstream f("/proc/meminfo");
  std::string line;
  while (std::getline(f, line)) {
    std::istringstream in(line);
    std::string key;
    double kib = 0;
    if (in >> key >> kib && key == "MemAvailable:") return kib * 1024.0;
  }
  return 0;
}

int local_ranks() {
  const char* v = std::getenv("LOCAL_WORLD_SIZE");
  const long n = v ? std::strtol(v, nullptr, 10) : 1;
  return n >= 1 && n <= 1 << 16 ? int(n) : 1;
}

void require_fits_in_memory(uint64_t bytes, const std::string& what) {
  const double available = mem_available_bytes();
  if (available <= 0 || double(bytes) <= available) return;
  char msg[160];
  std::snprintf(msg, sizeof msg, "needs %.2f GiB of memory, %.2f GiB is available",
                double(bytes) / (1 << 30), available / (1 << 30));
  throw InputError(what + ": " + msg);
}

std::vector<int> affinity_cores() {
  std::vector<int> out;
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof set, &set) != 0) return out;
  for (int c = 0; c < CPU_SETSIZE; ++c)
    if (CPU_ISSET(c, &set)) out.push_back(c);
  return out;
}

int usable_cores() {
  return std::max(1, int(affinity_cores().size()));
}

int use_threads(int64_t requested) {
  const int cores = usable_cores();
  int n = 0;
  if (requested > 0) {
    n = int(std::min<int64_t>(requested, cores));
    if (requested > cores)
      std::cerr << "warning: --threads " << requested << " is more than the " << cores
                << " cores this process may run on; using " << cores << "\n";
  } else if (const char* env = std::getenv("OMP_NUM_THREADS"); env && std::atoi(env) > 0) {
    n = std::atoi(env);
  } else {
    n = std::max(1, cores / local_ranks());
  }
  at::set_num_threads(n);
  return n;
}

}  // namespace dms
