// Multi-process retrofit on c10d/Gloo through build/dms: equivalence with one process,
// exact resume after SIGKILL, a lost rank, damaged and failed checkpoints; the sharded
// optimizer (ZeRO-1): equal to plain data parallel, resumable exactly and onto another
// world size, its damaged checkpoints skipped by name.
#include <signal.h>

#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <random>
#include <thread>

#include "checkpoints/checkpoint_dir.h"
#include "checkpoints/safetensors.h"
#include "tests/test_util.h"
#include "trainer/dist/distributed.h"

namespace fs = std::filesystem;

namespace dms {
namespace {

using test::asset;
using test::quote;

// final_step < 0: 3/4 of the steps.
std::string retrofit_args(const std::string& out, int64_t steps, int timeout_s = 60,
                          int64_t final_step = -1) {
  return "retrofit --model " + quote(asset("stories260K/stories260K.bin")) + " --data " +
         quote(test::small_token_file()) + " --out " + quote(out) +
         " --window 8 --target-cr 4 --max-steps " + std::to_string(steps) + " --final-step " +
         std::to_string(final_step < 0 ? steps * 3 / 4 : final_step) +
         " --lr 1e-2 --eval-every 1000 --checkpoint-every 2 --keep-checkpoints 0 --threads 1"
         " --checksum-every 4 --dist-timeout " +
         std::to_string(timeout_s);
}

std::vector<nlohmann::json> train_records(const std::string& run) {
  std::vector<nlohmann::json> out;
  std::ifstream in(run + "/metrics.jsonl");
  std::string line;
  while (std::getline(in, line)) {
    auto j = nlohmann::json::parse(line);
    if (j.contains("kd_loss")) out.push_back(j);
  }
  return out;
}

// Deterministic fields of the metrics (timings excluded).
const char* kDeterministic[] = {"step",    "tokens",    "kd_loss",     "dms_loss",
                                "lm_loss", "target_cr", "decision_cr", "effective_kv_cr",
                                "lr",      "grad_norm"};

NamedTensors final_tensors(const std::string& run) {
  auto all = list_checkpoints(run);
  if (all.empty()) throw std::runtime_error("no checkpoints in " + run);
  return read_train_state(all.back()).trained;
}

// Largest relative difference of two runs' per-step losses (KD, DMS, LM) and gradient
// norms: |a - b| / |b| (0 where both are 0).
double max_rel_metrics(const std::string& run_a, const std::string& run_b, size_t steps) {
  auto a = train_records(run_a), b = train_records(run_b);
  EXPECT_EQ(a.size(), steps);
  EXPECT_EQ(b.size(), steps);
  double worst = 0;
  for (size_t i = 0; i < std::min(a.size(), b.size()); ++i)
    for (const char* k : {"kd_loss", "dms_loss", "lm_loss", "grad_norm"}) {
      const double x = a[i][k].get<double>(), y = b[i][k].get<double>();
      if (x != y) worst = std::max(worst, std::abs(x - y) / std::abs(y));
    }
  return worst;
}

// Largest relative difference of the final trained tensors: max |a - b| / max |b| per tensor.
double max_rel_weights(const std::string& run_a, const std::string& run_b) {
  auto ta = final_tensors(run_a), tb = final_tensors(run_b);
  EXPECT_EQ(ta.size(), tb.size());
  double worst = 0;
  for (size_t i = 0; i < std::min(ta.size(), tb.size()); ++i) {
    EXPECT_EQ(ta[i].first, tb[i].first);
    worst = std::max(worst, test::max_abs_diff(ta[i].second, tb[i].second) /
                                tb[i].second.abs().max().item<double>());
  }
  return worst;
}

// The optimizer shards a checkpoint lists: their ranges, in order.
std::vector<std::pair<int64_t, int64_t>> shard_ranges(const std::string& ck) {
  std::vector<std::pair<int64_t, int64_t>> out;
  for (const auto& f : read_manifest(ck).files)
    if (f.is_shard()) out.emplace_back(f.begin, f.end);
  return out;
}

TEST(Distributed, TwoRanksEqualOneRankWithAccumulation) {
  test::TempDir tmp;
  const int64_t steps = 24;
  auto one =
      test::run_dms(retrofit_args(tmp.file("one"), steps) + " --micro-batch 2 --grad-accum 2");
  ASSERT_EQ(one.exit_code, 0) << one.err;
  auto two = test::run_dms(retrofit_args(tmp.file("two"), steps) + " --micro-batch 2 --nproc 2");
  ASSERT_EQ(two.exit_code, 0) << two.err;
  EXPECT_NE(two.err.find("2 ranks (gloo)"), std::string::npos) << two.err;
  EXPECT_NE(two.err.find("all-reduce took"), std::string::npos) << two.err;
  auto a = train_records(tmp.file("one")), b = train_records(tmp.file("two"));
  ASSERT_EQ(a.size(), size_t(steps));
  ASSERT_EQ(b.size(), size_t(steps));
  for (size_t i = 0; i < a.size(); ++i)
    for (const char* k : {"kd_loss", "dms_loss", "grad_norm", "decision_cr", "effective_kv_cr"})
      EXPECT_NEAR(a[i][k].get<double>(), b[i][k].get<double>(), 1e-5)
          << "step " << i + 1 << " " << k;
  auto ta = final_tensors(tmp.file("one")), tb = final_tensors(tmp.file("two"));
  ASSERT_EQ(ta.size(), tb.size());
  for (size_t i = 0; i < ta.size(); ++i)
    EXPECT_LT(test::max_abs_diff(ta[i].second, tb[i].second), 1e-5) << ta[i].first;
  EXPECT_EQ(read_train_state(list_checkpoints(tmp.file("two")).back()).world_size, 2);
}

// Runs to the end, SIGKILLs a second run at a random step, resumes it, compares.
void kill_and_resume(const std::string& extra) {
  test::TempDir tmp;
  const int64_t steps = 16;
  auto ref = test::run_dms(retrofit_args(tmp.file("ref"), steps) + extra);
  ASSERT_EQ(ref.exit_code, 0) << ref.err;

  std::mt19937 rng(std::random_device{}());
  const int64_t kill_after = 3 + int64_t(rng() % 10);  // a step in 3..12
  test::Background bg =
      test::spawn_dms(retrofit_args(tmp.file("cut"), steps) + extra, "", tmp.path, "cut");
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(120);
  while (std::chrono::steady_clock::now() < deadline) {
    if (train_records(tmp.file("cut")).size() >= size_t(kill_after)) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  bg.kill_group(SIGKILL);
  EXPECT_EQ(bg.wait(30), 128 + SIGKILL);
  ASSERT_LT(train_records(tmp.file("cut")).size(), size_t(steps)) << "killed too late to test";

  auto resumed = test::run_dms(retrofit_args(tmp.file("cut"), steps) + extra + " --resume");
  ASSERT_EQ(resumed.exit_code, 0) << resumed.err;
  EXPECT_NE(resumed.err.find("resuming from"), std::string::npos) << resumed.err;
  auto a = train_records(tmp.file("ref")), b = train_records(tmp.file("cut"));
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i)
    for (const char* k : kDeterministic)
      EXPECT_EQ(a[i][k], b[i][k]) << "step " << i + 1 << " " << k;
  auto ta = final_tensors(tmp.file("ref")), tb = final_tensors(tmp.file("cut"));
  for (size_t i = 0; i < ta.size(); ++i)
    EXPECT_TRUE(at::equal(ta[i].second, tb[i].second)) << ta[i].first;
}

TEST(Distributed, KilledAndResumedRunIsBitwiseIdenticalOneProcess) {
  kill_and_resume(" --micro-batch 2 --grad-accum 2");
}
TEST(Distributed, KilledAndResumedRunIsBitwiseIdenticalTwoProcesses) {
  kill_and_resume(" --micro-batch 2 --nproc 2");
}
TEST(Distributed, KilledAndResumedShardedRunIsBitwiseIdentical) {
  kill_and_resume(" --micro-batch 2 --nproc 2 --shard-optimizer --train-mode all");
}

TEST(Distributed, LosingARankStopsTheOtherWithinTheTimeoutNamingIt) {
  test::TempDir tmp;
  const int port = free_local_port();  // ask the kernel for an unused one
  const std::string env = "WORLD_SIZE=2 MASTER_ADDR=127.0.0.1 MASTER_PORT=" + std::to_string(port);
  const std::string args = retrofit_args(tmp.file("run"), 400, 15) + " --micro-batch 2";
  test::Background r0 = test::spawn_dms(args, env + " RANK=0 LOCAL_RANK=0", tmp.path, "r0");
  test::Background r1 = test::spawn_dms(args, env + " RANK=1 LOCAL_RANK=1", tmp.path, "r1");
  struct Reaper {  // never leave workers behind, whatever the assertions do
    test::Background &a, &b;
    ~Reaper() {
      a.kill_group(SIGKILL);
      b.kill_group(SIGKILL);
      a.wait(5);
      b.wait(5);
    }
  } reaper{r0, r1};
  // Let it train a few steps, then kill rank 1 outright.
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(120);
  while (std::chrono::steady_clock::now() < deadline && train_records(tmp.file("run")).size() < 3)
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  ASSERT_GE(train_records(tmp.file("run")).size(), 3u) << r0.err() << r1.err();
  r1.kill_group(SIGKILL);
  const auto t0 = std::chrono::steady_clock::now();
  const int code = r0.wait(15 + 30);
  const double took = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  r1.wait(5);
  ASSERT_NE(code, -1) << "rank 0 hung after losing rank 1";
  EXPECT_NE(code, 0);
  EXPECT_LT(code, 128) << "rank 0 died of signal " << code - 128 << " instead of reporting";
  EXPECT_LT(took, 15 + 10);
  EXPECT_NE(r0.err().find("lost rank 1"), std::string::npos) << r0.err();
}

TEST(Distributed, DamagedLatestCheckpointFallsBackAndFailedWritesKeepThePrevious) {
  test::TempDir tmp;
  auto r = test::run_dms(retrofit_args(tmp.file("run"), 6) + " --micro-batch 2");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  auto ck = list_checkpoints(tmp.file("run"));
  ASSERT_EQ(ck.size(), 3u);  // steps 2, 4, 6
  // Truncate the newest's state file: resume must say so and continue from step 4.
  const std::string state = ck.back() + "/state.h5";
  std::string bytes = test::read_bytes(state);
  test::write_bytes(state, bytes.substr(0, bytes.size() / 2));
  // More steps, the same schedule (its final step is part of what a resume may not change).
  r = test::run_dms(retrofit_args(tmp.file("run"), 8) + " --micro-batch 2 --resume --final-step 4");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.err.find("skipping unusable checkpoint"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("step-000006/state.h5"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("resuming from"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("(step 4"), std::string::npos) << r.err;

  // A write that fails at step 4: the run stops, step 2's checkpoint is intact, no debris.
  auto f = test::spawn_dms(retrofit_args(tmp.file("fail2"), 8) + " --micro-batch 2",
                           "DMS_TEST_FAIL_CHECKPOINT_AT=4", tmp.path, "fail2");
  EXPECT_EQ(f.wait(120), 1) << f.err();
  EXPECT_NE(f.err().find("checkpoint at step 4 failed"), std::string::npos) << f.err();
  auto left = list_checkpoints(tmp.file("fail2"));
  ASSERT_EQ(left.size(), 1u);
  EXPECT_EQ(read_train_state(left[0]).step, 2);
  for (const auto& e : fs::directory_iterator(tmp.file("fail2/checkpoints")))
    EXPECT_EQ(e.path().string().find(".tmp"), std::string::npos) << e.path();
  // With --on-checkpoint-error continue the run goes on and later checkpoints succeed.
  auto c = test::spawn_dms(
      retrofit_args(tmp.file("cont"), 8) + " --micro-batch 2 --on-checkpoint-error continue",
      "DMS_TEST_FAIL_CHECKPOINT_AT=4", tmp.path, "cont");
  EXPECT_EQ(c.wait(120), 0) << c.err();
  EXPECT_EQ(list_checkpoints(tmp.file("cont")).size(), 3u);  // 2, 6, 8
}

// ZeRO-1 is the same training as data parallel: the same reduced gradients, norm and
// AdamW, only the optimizer state is split (each rank writes half of it).
TEST(Distributed, ShardedOptimizerEqualsDataParallelOverFullWeights) {
  test::TempDir tmp;
  const int64_t steps = 20;
  const std::string two = " --micro-batch 2 --nproc 2 --train-mode all";
  auto dp = test::run_dms(retrofit_args(tmp.file("dp"), steps) + two);
  ASSERT_EQ(dp.exit_code, 0) << dp.err;
  auto zero = test::run_dms(retrofit_args(tmp.file("zero"), steps) + two + " --shard-optimizer");
  ASSERT_EQ(zero.exit_code, 0) << zero.err;
  const double losses = max_rel_metrics(tmp.file("dp"), tmp.file("zero"), steps);
  const double weights = max_rel_weights(tmp.file("dp"), tmp.file("zero"));
  std::cout << "ZeRO-1 vs data parallel, 2 ranks, " << steps
            << " full-weight steps: max relative difference of the losses " << losses
            << ", of the final weights " << weights << "\n";
  EXPECT_LE(losses, 1e-6);
  EXPECT_LE(weights, 1e-6);
  // The split: two shard files of about half the values each; data parallel writes one.
  const std::string ck = list_checkpoints(tmp.file("zero")).back();
  const auto halves = shard_ranges(ck);
  const auto whole = shard_ranges(list_checkpoints(tmp.file("dp")).back());
  ASSERT_EQ(halves.size(), 2u);
  ASSERT_EQ(whole.size(), 1u);
  EXPECT_EQ(halves[1].second, whole[0].second);
  EXPECT_NEAR(double(halves[0].second), whole[0].second / 2.0, 64.0);
  // A sharded checkpoint is inspectable, and exports like any other.
  auto r = test::run_dms("inspect " + quote(ck));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("in 2 shards"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("every checksum ok"), std::string::npos) << r.out;
  r = test::run_dms("export --run " + quote(tmp.file("zero")) + " --out " + quote(tmp.file("exp")));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  SafetensorsFile f = open_safetensors(tmp.file("exp/model.safetensors"));
  for (const auto& [name, t] : final_tensors(tmp.file("zero")))
    EXPECT_TRUE(at::equal(f.tensor(name), t)) << name;
}

// 2 ranks with sharded optimizer state stop at step 8; one rank (micro-batch 2 x
// accumulation 2: the same global batch) reads both shards and finishes the run.
TEST(Distributed, ShardedCheckpointResumesOnOneRankWithTheSameGlobalBatch) {
  test::TempDir tmp;
  const std::string two = " --micro-batch 2 --nproc 2 --train-mode all --shard-optimizer";
  auto ref = test::run_dms(retrofit_args(tmp.file("ref"), 16, 60, 12) + two);
  ASSERT_EQ(ref.exit_code, 0) << ref.err;
  auto cut = test::run_dms(retrofit_args(tmp.file("cut"), 8, 60, 12) + two);
  ASSERT_EQ(cut.exit_code, 0) << cut.err;
  auto one = test::run_dms(retrofit_args(tmp.file("cut"), 16, 60, 12) +
                           " --micro-batch 2 --grad-accum 2 --train-mode all --resume");
  ASSERT_EQ(one.exit_code, 0) << one.err;
  EXPECT_NE(one.err.find("(step 8, written by 2 ranks)"), std::string::npos) << one.err;
  const double losses = max_rel_metrics(tmp.file("ref"), tmp.file("cut"), 16);
  const double weights = max_rel_weights(tmp.file("ref"), tmp.file("cut"));
  std::cout << "2 sharded ranks -> 1 rank at step 8 of 16: max relative difference of the "
               "losses "
            << losses << ", of the final weights " << weights << "\n";
  EXPECT_LE(losses, 1e-6);
  EXPECT_LE(weights, 1e-6);
  const std::string last = list_checkpoints(tmp.file("cut")).back();
  EXPECT_EQ(read_train_state(last).world_size, 1);
  EXPECT_EQ(shard_ranges(last).size(), 1u);
}

// A checkpoint without its manifest, and one whose shard changed, are skipped with a
// warning naming them; the resume continues from the newest intact one and rewrites them.
TEST(Distributed, DamagedShardedCheckpointsAreSkippedNamingThem) {
  test::TempDir tmp;
  const std::string two = " --micro-batch 2 --nproc 2 --shard-optimizer";
  auto r = test::run_dms(retrofit_args(tmp.file("run"), 6) + two);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  auto ck = list_checkpoints(tmp.file("run"));
  ASSERT_EQ(ck.size(), 3u);  // steps 2, 4, 6
  const std::string shard = ck[2] + "/optim-00001-of-00002.h5";
  std::string bytes = test::read_bytes(shard);
  bytes[bytes.size() / 2] ^= 0x10;  // same size, other values
  test::write_bytes(shard, bytes);
  fs::remove(ck[1] + "/manifest.json");
  test::write_bytes(tmp.file("run/checkpoints/step-000007.h5"), "of an earlier version");
  r = test::run_dms(retrofit_args(tmp.file("run"), 8, 60, 4) + two + " --resume");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.err.find("step-000007.h5: a single-file checkpoint of an earlier version"),
            std::string::npos)
      << r.err;
  EXPECT_NE(r.err.find("skipping unusable checkpoint: " + shard + ": checksum mismatch"),
            std::string::npos)
      << r.err;
  EXPECT_NE(r.err.find("skipping unusable checkpoint: " + ck[1] + ": no manifest.json"),
            std::string::npos)
      << r.err;
  EXPECT_NE(r.err.find("(step 2, written by 2 ranks)"), std::string::npos) << r.err;
  ck = list_checkpoints(tmp.file("run"));
  ASSERT_EQ(ck.size(), 4u);  // 2, and 4, 6, 8 written again
  for (const auto& c : ck) EXPECT_NO_THROW(read_optimizer_range(c, read_manifest(c), 0, 1)) << c;
  for (const auto& e : fs::directory_iterator(tmp.file("run/checkpoints")))
    EXPECT_NE(e.path().filename().string()[0], '.') << e.path();
  EXPECT_TRUE(fs::exists(tmp.file("run/checkpoints/step-000007.h5")));  // left alone
}

}  // namespace
}  // namespace dms
