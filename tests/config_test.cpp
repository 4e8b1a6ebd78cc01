// The retrofit's one option table (trainer/config): every option reaches --help, TOML and
// config.json; every bad value exits 2 before any work, naming the option; and the two
// ways a finished run used to be lost: --resume with a changed configuration, and
// export --force onto something that is not an export.
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <csignal>

#include <filesystem>
#include <map>
#include <set>

#include "checkpoints/checkpoint_dir.h"
#include "common/error.h"
#include "tests/test_util.h"
#include "trainer/cli/commands.h"
#include "trainer/config/retrofit_config.h"

namespace fs = std::filesystem;

namespace dms {
namespace {

using test::asset;
using test::quote;

// Every regular file under dir (recursively) -> its bytes.
std::map<std::string, std::string> snapshot(const std::string& dir) {
  std::map<std::string, std::string> out;
  for (const auto& e : fs::recursive_directory_iterator(dir))
    if (e.is_regular_file()) out[e.path().string()] = test::read_bytes(e.path().string());
  return out;
}

std::string base_args(const std::string& out,
                      const std::string& model = asset("stories260K/stories260K.bin")) {
  return "retrofit --model " + quote(model) + " --data " + quote(test::small_token_file()) +
         " --out " + quote(out);
}

TEST(RetrofitOptions, TableIsWellFormedAndRoundTrips) {
  std::set<std::string> names, keys;
  for (const auto& f : retrofit_fields()) {
    EXPECT_TRUE(names.insert(f.name).second) << "duplicate option " << f.name;
    EXPECT_TRUE(keys.insert(f.key()).second) << "duplicate key " << f.key();
    EXPECT_FALSE(f.help.empty()) << f.name;
    EXPECT_FALSE(f.group.empty()) << f.name;
  }
  // A config with every field off its default survives config.json and the command line.
  RetrofitConfig c;
  c.run.model = "m";
  c.run.data = "d";
  c.run.out = "o";
  c.dms.window = 17;
  c.dms.alpha_per = AlphaPer::layer;
  c.optim.lr_schedule = LrScheduleKind::cosine;
  c.optim.kd_direction = KdDirection::teacher_student;
  c.monitor.tensorboard = false;
  c.monitor.keep_at_cr = {2, 4.5};
  c.dist.backend = BackendKind::gloo;
  const nlohmann::json j = c.to_json();
  EXPECT_EQ(RetrofitConfig::from_json(j, "x").to_json(), j);
  RetrofitConfig d;
  for (const auto& f : retrofit_fields()) {
    if (!f.saved) continue;
    const nlohmann::json v = f.get(c);
    EXPECT_EQ(f.parse(d, v.is_string() ? v.get<std::string>() : v.dump()), "") << f.name;
    EXPECT_EQ(f.get(d), v) << f.name;
  }
  // A moved run directory or base model is no change of configuration (the base is checked
  // by sha256), a changed data file is; configs written before the tables still read.
  RetrofitConfig moved = c;
  moved.run.out = "elsewhere";
  moved.run.model = "moved-model";
  EXPECT_TRUE(resume_conflicts(c, 1, moved, 1, 0).empty());
  moved.run.data = "other-data";
  EXPECT_EQ(resume_conflicts(c, 1, moved, 1, 0).size(), 1u);
  nlohmann::json old_keys = j;
  old_keys.erase("dist_timeout");
  old_keys["dist_timeout_s"] = 30.0;
  EXPECT_EQ(RetrofitConfig::from_json(old_keys, "old.json").dist.timeout_s, 30.0);
  // config.json from elsewhere: unknown keys and wrong types are errors naming the file.
  nlohmann::json bad = j;
  bad["max_step"] = 1;
  EXPECT_THROW(RetrofitConfig::from_json(bad, "cfg.json"), InputError);
  bad = j;
  bad["window"] = "wide";
  EXPECT_THROW(RetrofitConfig::from_json(bad, "cfg.json"), InputError);
}

TEST(RetrofitOptions, EveryOptionReachesHelpTomlAndConfigJson) {
  auto help = test::run_dms("retrofit --help");
  ASSERT_EQ(help.exit_code, 0);
  test::TempDir tmp;
  // Every option in the TOML file (at its default, the run-specific ones set), one step.
  std::string toml = "[retrofit]\n";
  RetrofitConfig defaults;
  defaults.run.model = asset("stories260K/stories260K.bin");
  defaults.run.data = test::small_token_file();
  defaults.run.out = tmp.file("run");
  defaults.optim.max_steps = 1;
  defaults.dms.window = 8;
  defaults.monitor.eval_every = 1;
  // Values off their defaults, so a key that lands in the wrong field shows in config.json.
  defaults.dms.tau = 0.2;
  defaults.dms.alpha_per = AlphaPer::layer;
  defaults.run.seed = 3;
  defaults.optim.lr = 1e-3;
  defaults.optim.lr_schedule = LrScheduleKind::cosine;
  defaults.optim.kd_direction = KdDirection::teacher_student;
  defaults.monitor.keep_checkpoints = 2;
  defaults.monitor.alert_kd_spike = 12;
  defaults.monitor.tensorboard = false;
  defaults.dist.checksum_every = 7;
  defaults.dist.timeout_s = 99;
  for (const auto& f : retrofit_fields()) {
    EXPECT_NE(help.out.find("--" + f.name), std::string::npos) << f.name << " not in --help";
    toml += f.name + " = " + f.get(defaults).dump() + "\n";
  }
  test::write_bytes(tmp.file("run.toml"), toml);
  auto r = test::run_dms("--config " + quote(tmp.file("run.toml")) + " retrofit");
  ASSERT_EQ(r.exit_code, 0) << r.err << "\n" << toml;
  const auto cfg = test::read_json(tmp.file("run/config.json"));
  for (const auto& f : retrofit_fields()) {
    if (!f.saved) {
      EXPECT_FALSE(cfg.contains(f.key())) << f.key();
      continue;
    }
    ASSERT_TRUE(cfg.contains(f.key())) << f.key() << " missing from config.json";
    if (f.name != "final-step") {
      EXPECT_EQ(cfg[f.key()], f.get(defaults)) << f.key();
    }
  }
  EXPECT_EQ(cfg["final_step"], 1);  // resolved: 90% of one step, at least 1
  // A key no option has is an error naming it, not silently ignored.
  test::write_bytes(tmp.file("typo.toml"), "[retrofit]\nmax_step = 1\n");
  r = test::run_dms("--config " + quote(tmp.file("typo.toml")) + " " + base_args(tmp.file("t")));
  EXPECT_EQ(r.exit_code, 2) << r.err;
  EXPECT_NE(r.err.find("max_step"), std::string::npos) << r.err;
  EXPECT_FALSE(fs::exists(tmp.file("t")));
}

// Bad values of one kind for every option they apply to, all in one command line: the run
// exits 2 before opening anything (the model path does not exist) and names each option.
void expect_all_named(const std::map<std::string, std::string>& bad, const std::string& what) {
  test::TempDir tmp;
  std::string args = "retrofit --model " + quote(tmp.file("no-model")) + " --data " +
                     quote(tmp.file("no-data")) + " --out " + quote(tmp.file("run"));
  for (const auto& [opt, v] : bad) args += " --" + opt + " " + quote(v);
  auto r = test::run_dms(args);
  EXPECT_EQ(r.exit_code, 2) << what << ": " << r.err;
  EXPECT_EQ(r.err.find("no-model"), std::string::npos) << what << ": opened before checking";
  EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << "one line: " << r.err;
  for (const auto& [opt, v] : bad)
    EXPECT_NE(r.err.find("--" + opt + ":"), std::string::npos)
        << what << " " << opt << " = " << v << " not named in: " << r.err;
  EXPECT_FALSE(fs::exists(tmp.file("run")));
}

TEST(RetrofitOptions, EveryBadValueExitsWith2BeforeAnyWorkNamingTheOption) {
  std::map<std::string, std::string> text, nan, inf, low, high, choice;
  RetrofitConfig probe;
  for (const auto& f : retrofit_fields()) {
    if (f.flag || f.values == "text") continue;
    if (f.values.find('|') != std::string::npos) {
      choice[f.name] = "bogus";
      continue;
    }
    text[f.name] = "12abc";
    const bool integral = f.parse(probe, "1.5") != "";
    if (!integral) {
      nan[f.name] = "nan";
      inf[f.name] = "inf";
    }
    // Values outside the table's own range, when it has one on that side.
    if (f.name == "seed") continue;  // every uint64 is a seed
    for (const double v : {-1e18, -1e9, -1.0, -1e-9, 0.0})
      if (f.parse(probe, integral ? std::to_string(int64_t(v)) : std::to_string(v)) == "" &&
          !f.check(probe).empty()) {
        low[f.name] = integral ? std::to_string(int64_t(v)) : std::to_string(v);
        break;
      }
    for (const double v : {1e18, 1e9, 1e7})
      if (f.parse(probe, integral ? std::to_string(int64_t(v)) : std::to_string(v)) == "" &&
          !f.check(probe).empty()) {
        high[f.name] = integral ? std::to_string(int64_t(v)) : std::to_string(v);
        break;
      }
  }
  EXPECT_GE(text.size(), 35u);
  EXPECT_GE(low.size(), 30u);  // every bounded number has a value below its range
  for (const char* must : {"window", "log-every", "eval-every", "checkpoint-every", "lr", "tau",
                           "micro-batch", "max-steps", "threads", "dist-timeout"})
    EXPECT_TRUE(low.count(must)) << must << " has no lower bound";
  expect_all_named(text, "not a number");
  expect_all_named(nan, "NaN");
  expect_all_named(inf, "infinity");
  expect_all_named(low, "below range");
  expect_all_named(high, "above range");
  expect_all_named(choice, "not one of the values");
  expect_all_named({{"stop-on-alert", "nan,bogus"}}, "alert list");
  // TOML: a list option takes an array, any other option an empty array is no value (it
  // once crashed CLI11).
  for (const auto& [line, error] : std::vector<std::pair<std::string, std::string>>{
           {"max-steps = []", "--max-steps: no value"},
           {"keep-at-cr = [2, 9]", "--keep-at-cr: 9 is above --target-cr 8"},
           {"keep-at-cr = [2, \"x\"]", "--keep-at-cr: 'x' is not a number"}}) {
    test::TempDir tmp;
    test::write_bytes(tmp.file("r.toml"), "[retrofit]\n" + line + "\n");
    auto r =
        test::run_dms("--config " + quote(tmp.file("r.toml")) + " " + base_args(tmp.file("run")));
    EXPECT_EQ(r.exit_code, 2) << line << ": " << r.err;
    EXPECT_NE(r.err.find(error), std::string::npos) << line << ": " << r.err;
    EXPECT_FALSE(fs::exists(tmp.file("run"))) << line;
  }
  // The cases reported from the field, one by one.
  for (const char* bad_c : {"--window -1", "--log-every 0", "--beta1 2", "--tau -1",
                            "--backend bogus", "--lr -1e-3", "--threads 100000"}) {
    const std::string bad = bad_c;
    test::TempDir tmp;
    auto r = test::run_dms(base_args(tmp.file("run")) + " " + bad);
    EXPECT_EQ(r.exit_code, 2) << bad << ": " << r.err;
    EXPECT_NE(r.err.find(bad.substr(0, bad.find(' ')) + ":"), std::string::npos) << r.err;
    EXPECT_FALSE(fs::exists(tmp.file("run"))) << bad;
  }
}

// Every option of a command's table is in its --help, and bad values of every numeric or
// enumerated option exit 2 before the command opens anything, each named in one line.
template <class C>
void check_command_table(const std::string& command, const std::vector<Field<C>>& table,
                         const std::string& required_args) {
  auto help = test::run_dms(command + " --help");
  ASSERT_EQ(help.exit_code, 0) << command;
  std::string bad_text, bad_range;
  std::vector<std::string> named_text, named_range;
  C probe{};
  for (const auto& f : table) {
    EXPECT_NE(help.out.find("--" + f.name), std::string::npos) << command << " --" << f.name;
    if (f.flag || f.values == "text") continue;
    bad_text += " --" + f.name + " 7x";
    named_text.push_back("--" + f.name + ":");
    for (const char* v : {"-1000000000000", "-1", "nan", "1e18"})
      if (f.values.find('|') == std::string::npos && f.parse(probe, v).empty() &&
          !f.check(probe).empty()) {
        bad_range += " --" + f.name + " " + v;
        named_range.push_back("--" + f.name + ":");
        break;
      }
  }
  test::TempDir tmp;
  const std::string base = command + " " + required_args + " ";
  for (const auto& [args, names] : {std::pair{bad_text, named_text}, {bad_range, named_range}}) {
    if (names.empty()) continue;
    auto r = test::run_dms(base + args);
    EXPECT_EQ(r.exit_code, 2) << command << args << ": " << r.err;
    EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
    for (const auto& n : names) EXPECT_NE(r.err.find(n), std::string::npos) << n << " in " << r.err;
    EXPECT_EQ(r.err.find("no-such"), std::string::npos) << "opened before checking: " << r.err;
  }
}

TEST(CommandOptions, EveryCommandChecksEveryOptionUpFront) {
  check_command_table("eval", eval_fields(), "--model no-such --data no-such");
  check_command_table("generate", generate_fields(), "--model no-such");
  check_command_table("data prepare", prepare_fields(),
                      "--tokenizer no-such --input no-such --out no-such.h5");
  check_command_table("data sample", sample_fields(), "--model no-such --out no-such.h5");
  check_command_table("export", export_fields(), "--run no-such --out no-such-dir");
}

TEST(SpecialFiles, AreRefusedWithoutOpeningThem) {
  // A FIFO where a file is meant: opening it would wait for a writer for ever.
  test::TempDir tmp;
  for (const char* name : {"fifo", "fifo.h5", "fifo.safetensors", "fifo.bin", "fifo.json"})
    ASSERT_EQ(::mkfifo(tmp.file(name).c_str(), 0600), 0) << name;
  const std::string model = quote(asset("stories260K/stories260K.bin"));
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"inspect " + quote(tmp.file("fifo")), "fifo"},
      {"inspect " + quote(tmp.file("fifo.h5")), "fifo.h5"},
      {"inspect " + quote(tmp.file("fifo.safetensors")), "fifo.safetensors"},
      {"inspect " + quote(tmp.file("fifo.bin")), "fifo.bin"},
      {"inspect " + quote(tmp.file("fifo.json")), "fifo.json"},
      {"inspect /dev/zero", "/dev/zero"},
      {base_args(tmp.file("r1"), tmp.file("fifo.bin")), "fifo.bin"},
      {"retrofit --model " + model + " --data " + quote(tmp.file("fifo.h5")) + " --out " +
           quote(tmp.file("r2")),
       "fifo.h5"},
      {"eval --model " + model + " --data " + quote(tmp.file("fifo.h5")), "fifo.h5"},
      {"data prepare --tokenizer " + quote(asset("stories260K/tok512.model")) + " --input " +
           quote(tmp.file("fifo")) + " --out " + quote(tmp.file("p.h5")),
       "fifo"}};
  int i = 0;
  for (const auto& [args, named] : cases) {
    auto p = test::spawn_dms(args, "", tmp.path, "case" + std::to_string(i++));
    const int code = p.wait(60);
    if (code == -1) p.kill_group(SIGKILL);
    EXPECT_EQ(code, 2) << args << " (-1: it hung): " << p.err();
    EXPECT_NE(p.err().find(named), std::string::npos) << p.err();
    EXPECT_NE(p.err().find("not a regular file"), std::string::npos) << p.err();
  }
}

// A 4-step run with checkpoints at 2 and 4 and a validation file.
void small_run(const std::string& out, const std::string& extra = "",
               const std::string& model = asset("stories260K/stories260K.bin")) {
  auto r = test::run_dms(base_args(out, model) +
                         " --max-steps 4 --checkpoint-every 2 --eval-every 2 --window 8 "
                         "--micro-batch 2 --target-cr 3 --lr 1e-2 " +
                         extra);
  ASSERT_EQ(r.exit_code, 0) << r.err;
}

TEST(RetrofitResume, ChangedConfigurationExitsWith2AndChangesNothing) {
  test::TempDir tmp;
  const std::string run = tmp.file("run");
  small_run(run);
  const auto before = snapshot(run);
  ASSERT_GE(before.size(), 4u);
  const std::string again = base_args(run) +
                            " --max-steps 4 --checkpoint-every 2 --eval-every 2 --window 8 "
                            "--micro-batch 2 --target-cr 3 --lr 1e-2 --resume ";
  // Each kind of field that changes what the run computes.
  for (const char* change_c :
       {"--train-mode all", "--window 9", "--lr 2e-2", "--seed 5", "--target-cr 4",
        "--kd-direction teacher_student", "--alpha-per layer", "--tau 0.2", "--final-step 2",
        "--micro-batch 1", "--grad-accum 2", "--attention dense", "--lr-schedule cosine",
        "--max-steps 3"}) {
    const std::string change = change_c;
    auto r = test::run_dms(again + change);
    EXPECT_EQ(r.exit_code, 2) << change << ": " << r.err;
    const std::string opt = change.substr(0, change.find(' '));
    const bool batch = opt == "--micro-batch" || opt == "--grad-accum";
    EXPECT_NE(r.err.find(batch ? "global batch" : opt), std::string::npos) << r.err;
    EXPECT_NE(r.err.find("changed configuration"), std::string::npos) << r.err;
    EXPECT_TRUE(snapshot(run) == before) << change << " changed files of the run";
  }
  // --resume where there is nothing to resume: exit 2, nothing created.
  auto r = test::run_dms(base_args(tmp.file("none")) + " --resume");
  EXPECT_EQ(r.exit_code, 2) << r.err;
  EXPECT_NE(r.err.find("no usable checkpoint"), std::string::npos) << r.err;
  EXPECT_FALSE(fs::exists(tmp.file("none")));
  // What may change: more steps, intervals, threads, timeouts, the split of the global batch.
  r = test::run_dms(again +
                    "--max-steps 6 --log-every 2 --eval-every 3 --threads 1 --dist-timeout 60 "
                    "--keep-checkpoints 5 --micro-batch 1 --grad-accum 2");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.err.find("resuming from"), std::string::npos) << r.err;
  EXPECT_EQ(read_train_state(list_checkpoints(run).back()).step, 6);
  // The schedule kept its resolved final step (90% of the first run's 4 steps).
  EXPECT_EQ(test::read_json(run + "/config.json")["final_step"], 3);
}

TEST(ExportForce, OnlyReplacesOurOwnExports) {
  test::TempDir tmp;
  const std::string run = tmp.file("runs/run");
  small_run(run);
  fs::create_directories(tmp.file("other"));
  test::write_bytes(tmp.file("other/notes.txt"), "mine");
  fs::create_directories(tmp.file("empty"));
  const auto before = snapshot(tmp.path);
  for (const std::string& target :
       {run, tmp.file("runs"), tmp.path, tmp.file("other"), run + "/config.json"}) {
    auto r = test::run_dms("export --run " + quote(run) + " --out " + quote(target) + " --force");
    EXPECT_EQ(r.exit_code, 2) << target << ": " << r.err;
    EXPECT_NE(r.err.find(target), std::string::npos) << r.err;
    EXPECT_TRUE(snapshot(tmp.path) == before) << "--force onto " << target << " changed files";
  }
  // Our own export is replaced (atomically), and an empty directory is fine.
  auto r = test::run_dms("export --run " + quote(run) + " --out " + quote(tmp.file("exp")));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  r = test::run_dms("export --run " + quote(run) + " --out " + quote(tmp.file("exp")));
  EXPECT_EQ(r.exit_code, 2) << "an existing export without --force: " << r.err;
  test::write_bytes(tmp.file("exp/config.json.bak"), "x");  // no longer only our files
  r = test::run_dms("export --run " + quote(run) + " --out " + quote(tmp.file("exp")) + " --force");
  EXPECT_EQ(r.exit_code, 2) << r.err;
  fs::remove(tmp.file("exp/config.json.bak"));
  r = test::run_dms("export --run " + quote(run) + " --out " + quote(tmp.file("exp")) + " --force");
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_TRUE(fs::exists(tmp.file("exp/model.safetensors")));
  r = test::run_dms("export --run " + quote(run) + " --out " + quote(tmp.file("empty")));
  EXPECT_EQ(r.exit_code, 0) << r.err;
  for (const auto& e : fs::directory_iterator(tmp.path))
    EXPECT_EQ(e.path().string().find(".partial-"), std::string::npos) << e.path();
}

TEST(ExportFromRun, NeedsOnlyTheCheckpointsAndFindsAMovedBaseBySha256) {
  test::TempDir tmp;
  fs::create_directories(tmp.file("base"));
  for (const char* f : {"stories260K.bin", "tok512.model"})
    fs::copy_file(asset(std::string("stories260K/") + f), tmp.file(std::string("base/") + f));
  const std::string run = tmp.file("run");
  small_run(run, "", tmp.file("base/stories260K.bin"));
  fs::remove(run + "/config.json");  // the checkpoint carries what export needs
  auto r = test::run_dms("export --run " + quote(run) + " --out " + quote(tmp.file("e1")));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const auto report = test::read_json(tmp.file("e1/dms_report.json"));
  EXPECT_EQ(report["base_model"]["size"], fs::file_size(tmp.file("base/stories260K.bin")));
  EXPECT_EQ(report["base_model"]["sha256"].get<std::string>().size(), 64u);
  // The base moves: export says where it looked and how to point at the new place.
  fs::rename(tmp.file("base"), tmp.file("moved"));
  r = test::run_dms("export --run " + quote(run) + " --out " + quote(tmp.file("e2")));
  EXPECT_EQ(r.exit_code, 2) << r.err;
  EXPECT_NE(r.err.find(tmp.file("base/stories260K.bin")), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("--base"), std::string::npos) << r.err;
  EXPECT_FALSE(fs::exists(tmp.file("e2")));
  r = test::run_dms("export --run " + quote(run) + " --out " + quote(tmp.file("e2")) + " --base " +
                    quote(tmp.file("moved/stories260K.bin")));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(test::read_bytes(tmp.file("e1/model.safetensors")),
            test::read_bytes(tmp.file("e2/model.safetensors")));
  // Another model under the recorded name (one weight changed) is refused.
  std::string bytes = test::read_bytes(tmp.file("moved/stories260K.bin"));
  bytes[bytes.size() / 2] ^= 0x40;
  test::write_bytes(tmp.file("changed.bin"), bytes);
  r = test::run_dms("export --run " + quote(run) + " --out " + quote(tmp.file("e3")) + " --base " +
                    quote(tmp.file("changed.bin")));
  EXPECT_EQ(r.exit_code, 2) << r.err;
  EXPECT_NE(r.err.find("is not the base model"), std::string::npos) << r.err;
  // A resume onto a changed base is refused the same way.
  fs::create_directories(tmp.file("base"));
  test::write_bytes(tmp.file("base/stories260K.bin"), bytes);
  const auto before = snapshot(run);
  r = test::run_dms(base_args(run, tmp.file("base/stories260K.bin")) +
                    " --max-steps 6 --checkpoint-every 2 --eval-every 2 --window 8 "
                    "--micro-batch 2 --target-cr 3 --lr 1e-2 --resume");
  EXPECT_EQ(r.exit_code, 2) << r.err;
  EXPECT_NE(r.err.find("not the base model"), std::string::npos) << r.err;
  EXPECT_TRUE(snapshot(run) == before);
}

}  // namespace
}  // namespace dms
