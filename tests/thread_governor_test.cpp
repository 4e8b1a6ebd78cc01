// The thread governor (common/thread_governor.h): /proc parsing and the decision, on CPU
// times shaped like what the kernel reports beside co-tenants; then a real retrofit beside
// busy loops on its cores.
#include <sched.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstring>

#include "common/host.h"
#include "common/thread_governor.h"
#include "tests/test_util.h"

namespace dms {
namespace {

TEST(ThreadGovernor, ParsesProcStatForTheAffinityCoresAndSelfStat) {
  const std::string stat =
      "cpu  500 0 100 9000 10 0 0 0 0 0\n"
      "cpu0 100 5 20 1000 2 3 4 6 50 0\n"
      "cpu1 200 0 30 2000 8 0 1 0 0 0\n"
      "cpu2 999 0 999 1 0 0 0 0 0 0\n"
      "intr 1 2 3\n";
  // comm with spaces and a ')' inside, as /proc/<pid>/stat writes it.
  const std::string self = "4242 (dms (x) y) R 1 2 3 4 5 6 7 8 9 10 70 30 1 1 20 0 3";
  const CpuSample s = parse_cpu_sample(stat, {0, 1}, self);
  EXPECT_DOUBLE_EQ(s.busy, (100 + 5 + 20 + 3 + 4 + 6) + (200 + 30 + 1));
  EXPECT_DOUBLE_EQ(s.idle, (1000 + 2) + (2000 + 8));
  EXPECT_DOUBLE_EQ(s.self, 70 + 30);
  EXPECT_DOUBLE_EQ(parse_cpu_sample(stat, {2}, self).busy, 999 + 999);
}

// An interval of 100 ticks per core on `cores` cores: `self` cores' worth ours, `others`
// theirs, the rest idle.
CpuSample interval(int cores, double self, double others) {
  const double t = 100;
  return {(self + others) * t, (cores - self - others) * t, self * t};
}

TEST(ThreadGovernor, KeepsEveryThreadAloneAndGivesUpTheCoresOthersWant) {
  // Alone: 2 threads spin on 2 cores, a daemon takes 3%.
  EXPECT_EQ(cores_taken_by_others(interval(2, 1.97, 0.03), 2, 2, 0), 0);
  // One busy loop beside 2 threads on 2 cores: the scheduler gives it a third of the machine
  // (0.67 core) though it would take a whole one.
  EXPECT_EQ(cores_taken_by_others(interval(2, 1.33, 0.67), 2, 2, 0), 1);
  // Then with 1 thread: each has its core; the loop still wants one.
  EXPECT_EQ(cores_taken_by_others(interval(2, 1.0, 1.0), 2, 1, 1), 1);
  // The loop ended: our one thread leaves a core idle.
  EXPECT_EQ(cores_taken_by_others(interval(2, 1.0, 0.02), 2, 1, 1), 0);
  // Two busy loops against 2 threads: each of 4 threads gets half a core.
  EXPECT_EQ(cores_taken_by_others(interval(2, 1.0, 1.0), 2, 2, 0), 2);
  // A light co-tenant (a third of a core, unsaturated machine) takes nothing from us.
  EXPECT_EQ(cores_taken_by_others(interval(8, 6.0, 0.33), 8, 8, 0), 0);
  // 16 cores, 2 ranks of 8 threads each: the sibling rank is another process with 8.
  EXPECT_EQ(cores_taken_by_others(interval(16, 8.0, 8.0), 16, 8, 0), 8);
}

TEST(ThreadGovernor, DoesNotFlapInsideTheBand) {
  // Demand wandering between 0.45 and 0.55 core (unsaturated) changes nothing either way.
  for (double d : {0.45, 0.5, 0.55}) {
    EXPECT_EQ(cores_taken_by_others(interval(4, 2.0, d), 4, 4, 0), 0) << d;
    EXPECT_EQ(cores_taken_by_others(interval(4, 2.0, d), 4, 4, 1), 1) << d;
  }
  EXPECT_EQ(cores_taken_by_others(interval(4, 2.0, 0.65), 4, 4, 0), 1);
  EXPECT_EQ(cores_taken_by_others(interval(4, 2.0, 0.35), 4, 4, 1), 0);
  // Nothing measured (no time passed): the decision stands.
  EXPECT_EQ(cores_taken_by_others(CpuSample{}, 4, 4, 1), 1);
}

TEST(ThreadGovernor, OnlyTheDefaultCountIsGoverned) {
  EXPECT_EQ(ThreadGovernor::for_default(3), nullptr);
  const char* old = std::getenv("OMP_NUM_THREADS");
  const std::string saved = old ? old : "";
  ::setenv("OMP_NUM_THREADS", "2", 1);
  EXPECT_EQ(ThreadGovernor::for_default(0), nullptr);
  if (old)
    ::setenv("OMP_NUM_THREADS", saved.c_str(), 1);
  else
    ::unsetenv("OMP_NUM_THREADS");
}

// A retrofit sharing two cores with two busy loops: its log says it went down to one thread.
// The test process pins itself (and so the retrofit, its child) and the loops to the first
// two cores it may use, so the test means the same on a machine with more cores.
TEST(ThreadGovernor, RetrofitBesideBusyLoopsDropsToOneThread) {
  // A nanoGPT-style uint16 stream (no tokenizer: the sanitized build cannot load SentencePiece).
  test::TempDir tmp;
  std::string ids(2 * 64 * 200, '\0');
  for (size_t i = 0; i < ids.size() / 2; ++i) {
    const uint16_t id = uint16_t((i * 7919) % 512);
    std::memcpy(&ids[2 * i], &id, 2);
  }
  test::write_bytes(tmp.file("t.bin"), ids);
  cpu_set_t mine, two;
  ASSERT_EQ(sched_getaffinity(0, sizeof mine, &mine), 0);
  ASSERT_GE(CPU_COUNT(&mine), 2) << "needs two cores";
  CPU_ZERO(&two);
  for (int c = 0, n = 0; c < CPU_SETSIZE && n < 2; ++c) {
    if (!CPU_ISSET(c, &mine)) continue;
    CPU_SET(c, &two);
    ++n;
  }
  ASSERT_EQ(sched_setaffinity(0, sizeof two, &two), 0);
  // The loops die with this scope, and with this process if it dies first (PDEATHSIG): a
  // failed assertion must not leave them spinning.
  struct Loops {
    std::vector<pid_t> pids;
    ~Loops() {
      for (pid_t pid : pids) {
        kill(pid, SIGKILL);
        waitpid(pid, nullptr, 0);
      }
    }
  } loops;
  for (int i = 0; i < 2; ++i) {
    const pid_t pid = fork();
    if (pid == 0) {
      prctl(PR_SET_PDEATHSIG, SIGKILL);
      volatile uint64_t x = 0;
      for (;;) x = x + 1;
    }
    loops.pids.push_back(pid);
  }
  const test::CommandResult r = test::run_dms(
      "retrofit --model " + test::quote(test::asset("stories260K/stories260K.bin")) + " --data " +
          test::quote(tmp.file("t.bin")) + " --seq-len 64 --out " + test::quote(tmp.file("run")) +
          " --max-steps 40 --micro-batch 4 --window 8 --eval-every 1000 --checkpoint-every 1000",
      240);
  sched_setaffinity(0, sizeof mine, &mine);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.err.find("threads 2 -> 1"), std::string::npos) << r.err;
  EXPECT_NE(test::read_bytes(tmp.file("run/metrics.jsonl")).find("\"note\":\"threads\""),
            std::string::npos);
}

}  // namespace
}  // namespace dms
