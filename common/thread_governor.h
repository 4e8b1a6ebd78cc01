// The intra-op thread count beside co-tenants. OpenMP threads spin at every barrier; when
// another process takes one of our cores, the thread that shares it is descheduled for whole
// time slices while the others spin for it, and a step takes 5x longer instead of 2x. Running
// one thread fewer per core the others take keeps the throughput of the cores that are left
// (docs/robustness.md quotes bench/cotenant_bench). Passive waiting would also fix it, but
// costs a quarter of the uncontended speed on small models (a futex wake per parallel region).
//
// The governor looks at the CPU time of the cores this process may run on (/proc/stat), less
// its own (/proc/self/stat), at most once a second, and sets the count to
//   clamp(cores - cores the others want, 1, the default count).
// It governs only the default count: `--threads N` and OMP_NUM_THREADS are kept as given, and
// pin it where results must not depend on the count: BLAS libraries may sum in another order
// with other thread counts (docs/results.md's spread found Debian's LibTorch 1.13 with
// OpenBLAS byte-identical at 1 and 2 threads; other builds may not be).
#pragma once
#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace dms {

// CPU time in clock ticks, summed over the cores of this process's affinity mask.
struct CpuSample {
  double busy = 0;  // every process (user, nice, system, irq, softirq, steal)
  double idle = 0;  // idle and iowait
  double self = 0;  // this process (utime + stime)
};

// Reads /proc/stat and /proc/self/stat; nullopt-like `ok == false` when they cannot be read
// (no /proc: the governor then keeps the count it has).
struct CpuReading {
  bool ok = false;
  CpuSample sample;
};
CpuReading read_cpu_sample();
// Parses /proc/stat text for the cores in `cores` (the "cpuN" lines) and the utime + stime
// of a /proc/<pid>/stat line. Exposed for tests.
CpuSample parse_cpu_sample(const std::string& proc_stat, const std::vector<int>& cores,
                           const std::string& self_stat);

// The decision, from the CPU time spent between two samples. `cores`: cores we may run on;
// `threads`: our count during the interval; `lost`: cores we gave up before. Returns the
// cores to give up now (0 .. cores). The others' share of a saturated machine understates
// what they want (the scheduler splits it among all runnable threads, ours included), so it
// is scaled back to their demand; a band of 0.2 core around each step keeps it from
// flapping.
int cores_taken_by_others(const CpuSample& delta, int cores, int threads, int lost);

class ThreadGovernor {
 public:
  // The governor of the default count `base` (use_threads(0)), or nullptr when the count was
  // given (--threads > 0, OMP_NUM_THREADS) or there is nothing to govern (one core).
  static std::unique_ptr<ThreadGovernor> for_default(int64_t requested_threads);
  // At most once per period: samples, decides and sets the count. Returns a line saying what
  // changed and why ("" when nothing did), for the run's log.
  std::string tick();
  int threads() const { return threads_; }
  // Gives the process its default count back (the count is process-wide state).
  ~ThreadGovernor();
  ThreadGovernor(const ThreadGovernor&) = delete;
  ThreadGovernor& operator=(const ThreadGovernor&) = delete;

 private:
  using Clock = std::chrono::steady_clock;
  ThreadGovernor(int cores, int base, const CpuSample& first);
  int cores_, base_, threads_, lost_ = 0;
  CpuSample last_;
  Clock::time_point last_time_;
};

}  // namespace dms
