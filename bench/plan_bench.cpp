// The planner against measurement: for each configuration, the total `dms plan` predicts
// for one step (trainer/plan/plan.h) and the peak resident memory a fresh child process
// measures while it builds the models and optimizer and runs that step through the
// trainer's own code (bench/train_run.h) — everything the plan counts, on the CPU in f32.
// Prints predicted, measured and their ratio; --tolerance makes it exit 1 when a ratio is
// further from 1 than that (the test Plan.PredictsMeasuredPeak runs it so).
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
};

// "adapters:512:1" -> mode, T, B
Config parse_config(const std::string& s) {
  Config c;
  const size_t a = s.find(':'), b = s.find(':', a + 1);
  if (a == std::string::npos || b == std::string::npos)
    throw CLI::ValidationError("--configs", "'" + s + "' is not MODE:T:B");
  c.mode = s.substr(0, a);
  c.seq = std::stoll(s.substr(a + 1, b - a - 1));
  c.batch = std::stoll(s.substr(b + 1));
  if ((c.mode != "adapters" && c.mode != "all") || c.seq < 1 || c.batch < 1)
    throw CLI::ValidationError("--configs", "'" + s + "' is not MODE:T:B");
  return c;
}

bench::TrainSetup train_setup(const Config& c) {
  bench::TrainSetup t;
  t.batch = c.batch;
  t.seq = c.seq;
  t.window = 64;
  t.full = c.mode == "all";
  return t;
}

PlanInput plan_of(const Config& c) {
  PlanInput in;
  in.model = in.teacher = bench::synthetic_15m().config;
  in.mode = c.mode == "all" ? TrainMode::all : TrainMode::adapters;
  in.seq_len = c.seq;
  in.micro_batch = c.batch;
  return in;
}

// The child: warm the thread pools and BLAS buffers up with a small step, then measure
// the models, the optimizer and one step from an empty start.
int run_child(const std::vector<std::string>& a) {
  const Config c = parse_config(a.at(0));
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
      "model, f32 on the CPU, per configuration MODE:T:B."};
  std::vector<std::string> configs{"adapters:512:1", "adapters:2048:1", "all:512:1", "all:2048:1"};
  double tolerance = 0;
  std::string json;
  app.add_option("--configs", configs, "MODE:T:B (adapters|all, positions, rows)")
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
                           {"predicted_bytes", p.total},
                           {"measured_bytes", measured},
                           {"ratio", ratio},
                           {"peak", p.peak},
                           {"activations", p.activations},
                           {"logits", p.logits}});
    rows.push_back({c.mode, std::to_string(c.seq), std::to_string(c.batch), bench::mib(p.total),
                    bench::mib(measured), bench::fmt(ratio, 3), p.peak});
    std::cerr << "  " << s << " done\n";
  }
  std::cout << "one step of the synthetic 15M model (f32, CPU): dms plan's total vs the peak RSS "
               "of a child that builds the models and optimizer and runs the step\n";
  bench::print_table({"mode", "T", "B", "predicted", "measured", "ratio", "peak phase"}, rows);
  bench::write_json(json, out);
  return ok ? 0 : 1;
}
