#include "common/thread_governor.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>

#include "common/host.h"

namespace dms {

namespace {

std::string slurp(const char* path) {
  std::ifstream f(path);
  std::ostringstream s;
  s << f.rdbuf();
  return s.str();
}

}  // namespace

CpuSample parse_cpu_sample(const std::string& proc_stat, const std::vector<int>& cores,
                           const std::string& self_stat) {
  CpuSample s;
  std::istringstream in(proc_stat);
  for (std::string line; std::getline(in, line);) {
    // "cpuN user nice system idle iowait irq softirq steal guest guest_nice" (guest time is
    // already inside user); the summary line "cpu " has no number and is skipped.
    int id = -1;
    if (std::sscanf(line.c_str(), "cpu%d", &id) != 1) continue;
    if (std::find(cores.begin(), cores.end(), id) == cores.end()) continue;
    std::istringstream f(line.substr(line.find(' ')));
    double v[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    for (double& x : v) f >> x;
    s.busy += v[0] + v[1] + v[2] + v[5] + v[6] + v[7];
    s.idle += v[3] + v[4];
  }
  // "pid (comm) state ..." where comm may hold spaces and parentheses: the fields after the
  // last ')' are state (3rd) onwards, so utime (14th) and stime (15th) are the 12th and 13th.
  const size_t close = self_stat.rfind(')');
  if (close != std::string::npos) {
    std::istringstream f(self_stat.substr(close + 1));
    std::string field;
    double utime = 0, stime = 0;
    for (int i = 1; i <= 13 && f >> field; ++i) {
      if (i == 12) utime = std::atof(field.c_str());
      if (i == 13) stime = std::atof(field.c_str());
    }
    s.self = utime + stime;
  }
  return s;
}

CpuReading read_cpu_sample() {
  const std::string stat = slurp("/proc/stat"), self = slurp("/proc/self/stat");
  if (stat.empty() || self.empty()) return {};
  return {true, parse_cpu_sample(stat, affinity_cores(), self)};
}

int cores_taken_by_others(const CpuSample& d, int cores, int threads, int lost) {
  const double total = d.busy + d.idle;
  if (total <= 0 || cores < 1) return lost;
  const double scale = cores / total;  // ticks -> cores
  const double others = std::max(0.0, d.busy - d.self) * scale;
  const double idle = d.idle * scale;
  double demand = others;
  // Saturated: the scheduler gave our `threads` and the others' n runnable threads equal
  // shares, others = cores * n / (threads + n), so they want n = threads * others /
  // (cores - others) cores.
  if (idle < 0.15) demand = others >= cores - 0.05 ? cores : threads * others / (cores - others);
  demand = std::min<double>(demand, cores);
  if (demand >= lost + 0.6 || demand <= lost - 0.6) lost = int(std::lround(demand));
  return std::clamp(lost, 0, cores);
}

std::unique_ptr<ThreadGovernor> ThreadGovernor::for_default(int64_t requested_threads) {
  if (requested_threads > 0) return nullptr;
  if (const char* env = std::getenv("OMP_NUM_THREADS"); env && std::atoi(env) > 0) return nullptr;
  const int cores = usable_cores();
  const int base = at::get_num_threads();
  if (cores < 2 || base < 2) return nullptr;
  const CpuReading first = read_cpu_sample();  // the first interval ends at the first tick
  if (!first.ok) return nullptr;
  return std::unique_ptr<ThreadGovernor>(new ThreadGovernor(cores, base, first.sample));
}

ThreadGovernor::ThreadGovernor(int cores, int base, const CpuSample& first)
    : cores_(cores), base_(base), threads_(base), last_(first), last_time_(Clock::now()) {}

ThreadGovernor::~ThreadGovernor() {
  if (threads_ != base_) at::set_num_threads(base_);
}

std::string ThreadGovernor::tick() {
  const auto now = Clock::now();
  if (now - last_time_ < std::chrono::seconds(1)) return "";
  const CpuReading r = read_cpu_sample();
  if (!r.ok) return "";
  const CpuSample prev = last_;
  last_ = r.sample;
  last_time_ = now;
  const CpuSample d{r.sample.busy - prev.busy, r.sample.idle - prev.idle,
                    r.sample.self - prev.self};
  lost_ = cores_taken_by_others(d, cores_, threads_, lost_);
  const int want = std::clamp(cores_ - lost_, 1, base_);
  if (want == threads_) return "";
  char msg[200];
  std::snprintf(msg, sizeof msg,
                "threads %d -> %d: other processes want %d of the %d cores this process may "
                "run on",
                threads_, want, lost_, cores_);
  threads_ = want;
  at::set_num_threads(want);
  return msg;
}

}  // namespace dms
