// The planner against measurement: for each configuration, the total `dms plan` predicts
// for one step (trainer/plan/plan.h) and the peak resident memory a fresh child process
// measures while it builds the models and optimizer and runs that step through the
// trainer's own code (bench/train_run.h) — everything the plan counts — on one CPU
// thread, in f32 or bf16, with or without activation checkpointing. Prints predicted,
// measured and their ratio; --tolerance makes it exit 1 when a ratio is further from 1
// than that (the test Plan.PredictsMeasuredPeak runs it so).
#include <ATen/Parallel.h>

#include <CLI/CLI.hpp>
#include <cmath>
#include <iostream>

#include "bench/bench_util.h"
#include "bench/train_run.h"
#include "trainer/plan/plan.h"

using namespace dms;

namespace {

struct Config {
  std::string mode;  // adapters | all
  int64_t seq = 512, batch = 1;
  bool bf16 = false, checkpoint = false;
};

// "adapters:512:1", "all:1024:2:bf16:ckpt" -> mode, T, B and the optional switches
Config parse_config(const std::string& s) {
  std::vector<std::string> f;
  for (size_t a = 0, b; a <= s.size(); a = b + 1) {
    b = s.find(':', a);
    if (b == std::string::npos) b = s.size();
    f.push_back(s.substr(a, b - a));
  }
  const auto bad = CLI::ValidationError("--configs", "'" + s + "' is not MODE:T:B[:bf16][:ckpt]");
  if (f.size() < 3 || (f[0] != "adapters" && f[0] != "all")) throw bad;
  Config c;
  c.mode = f[0];
  try {
    c.seq = std::stoll(f[1]);
    c.batch = std::stoll(f[2]);
  } catch (const std::exception&) {
    throw bad;
  }
  for (size_t i = 3; i < f.size(); ++i) {
    if (f[i] == "bf16")
      c.bf16 = true;
    else if (f[i] == "ckpt")
      c.checkpoint = true;
    else
      throw bad;
  }
  if (c.seq < 1 || c.batch < 1) throw bad;
  return c;
}

bench::TrainSetup train_setup(const Config& c) {
  bench::TrainSetup t;
  t.batch = c.batch;
  t.seq = c.seq;
  t.window = 64;
  t.full = c.mode == "all";
  t.dtype = c.bf16 ? at::kBFloat16 : at::kFloat;
  t.checkpoint = c.checkpoint;
  return t;
}

PlanInput plan_of(const Config& c) {
  PlanInput in;
  in.model = in.teacher = bench::synthetic_15m().config;
  in.mode = c.mode == "all" ? TrainMode::all : TrainMode::adapters;
  in.dtype = c.bf16 ? PlanDtype::bf16 : PlanDtype::f32;
  in.seq_len = c.seq;
  in.micro_batch = c.batch;
  in.activation_checkpointing = c.checkpoint;
  return in;
}

// The child: warm the thread pools and BLAS buffers up with a small step, then measure
// the models, the optimizer and one step from an empty start.
int run_child(const std::vector<std::string>& a) {
  const Config c = parse_config(a.at(0));
  // One thread: each further ATen thread keeps reduction buffers of its own (about 16 MiB
  // for all:512:1), which depend on the machine's cores, not on the step.
  at::set_num_threads(1);
  {
    bench::TrainSetup w;
    w.batch = 1;
    w.seq = 64;
    auto tiny = [] {
      Model m = make_model(llama_config(512, 64, 128, 2, 4, 4, 256));
      init_random(m, 1);
      return m;
    };
    auto warm = bench::make_train_run(tiny, w);
    bench::train_step(*warm);
    // BLAS keeps per-thread buffers that large products touch: a library's fixed cost,
    // not the step's tensors (see docs/plan.md, what the plan leaves out).
    at::mm(at::randn({2048, 2048}), at::randn({2048, 2048}));
  }
  bench::region_begin();
  auto r = bench::make_train_run(bench::synthetic_15m, train_setup(c));
  bench::train_step(*r);
  bench::region_end();
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  bench::init(argc, argv);
  if (bench::is_child(argc, argv)) return run_child(bench::child_args(argc, argv));
  CLI::App app{
      "Predicted (dms plan) vs measured peak memory of one retrofit step of the synthetic 15M\n"
      "model on the CPU, per configuration MODE:T:B[:bf16][:ckpt]."};
  std::vector<std::string> configs{"adapters:512:1", "adapters:2048:1", "all:512:1", "all:2048:1"};
  double tolerance = 0;
  std::string json;
  app.add_option("--configs", configs,
                 "MODE:T:B[:bf16][:ckpt] (adapters|all, positions, rows; bf16 weights and "
                 "activations; activation checkpointing)")
      ->capture_default_str();
  app.add_option("--tolerance", tolerance,
                 "exit 1 when |predicted / measured - 1| exceeds this for any (0: report only)");
  app.add_option("--json", json, "also write the figures to this JSON file");
  CLI11_PARSE(app, argc, argv);

  nlohmann::json out = {{"benchmark", "plan_vs_measured"},
                        {"machine", bench::machine_info()},
                        {"runs", nlohmann::json::array()}};
  std::vector<std::vector<std::string>> rows;
  bool ok = true;
  for (const std::string& s : configs) {
    const Config c = parse_config(s);
    const Plan p = plan_step(plan_of(c));
    const int64_t measured = bench::child_peak_bytes({s});
    const double ratio = measured > 0 ? double(p.total) / double(measured) : 0;
    ok = ok && measured > 0 && (tolerance <= 0 || std::abs(ratio - 1) <= tolerance);
    out["runs"].push_back({{"config", s},
                           {"train_mode", c.mode},
                           {"seq_len", c.seq},
                           {"micro_batch", c.batch},
                           {"dtype", c.bf16 ? "bf16" : "f32"},
                           {"activation_checkpointing", c.checkpoint},
                           {"predicted_bytes", p.total},
                           {"measured_bytes", measured},
                           {"ratio", ratio},
                           {"peak", p.peak},
                           {"activations", p.activations},
                           {"logits", p.logits}});
    rows.push_back({c.mode, std::to_string(c.seq), std::to_string(c.batch),
                    std::string(c.bf16 ? "bf16" : "f32") + (c.checkpoint ? ", ckpt" : ""),
                    bench::mib(p.total), bench::mib(measured), bench::fmt(ratio, 3), p.peak});
    std::cerr << "  " << s << " done\n";
  }
  std::cout << "one step of the synthetic 15M model (CPU, one thread): dms plan's total vs the "
               "peak RSS of a child that builds the models and optimizer and runs the step\n";
  bench::print_table({"mode", "T", "B", "dtype", "predicted", "measured", "ratio", "peak phase"},
                     rows);
  bench::write_json(json, out);
  return ok ? 0 : 1;
}
