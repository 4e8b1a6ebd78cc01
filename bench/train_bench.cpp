// A retrofit training step (teacher forward, student forward in train mode, KD + DMS
// losses, backward, clipping, AdamW) through the trainer's own code: tokens/s, achieved
// FLOP/s and MFU against this machine's fp32 matmul peak measured in the same run, and
// peak memory, for stories260K and a synthetic Llama of stories15M's size.
#include <ATen/Parallel.h>

#include <CLI/CLI.hpp>
#include <cstdlib>
#include <iostream>

#include "bench/bench_util.h"
#include "bench/train_run.h"
#include "checkpoints/load_model.h"
#include "trainer/plan/plan.h"

using namespace dms;

namespace {

struct Setup {
  std::string model = "15m";  // 15m | stories260K
  int64_t batch = 4, seq = 1024, window = 64;
  std::string attention = "blockwise";
  bool full = false;  // full fine-tune instead of adapters
};

std::string assets_dir() {
  const char* env = std::getenv("DMS_ASSETS");
  return env && *env ? env : DMS_DEFAULT_ASSETS;
}

Model load(const Setup& s) {
  if (s.model == "15m") return bench::synthetic_15m();
  if (s.model == "stories260K") return load_model(assets_dir() + "/stories260K/stories260K.bin");
  throw std::runtime_error("--model: 15m or stories260K");
}

int64_t parameter_count(Model& m) {
  int64_t n = 0;
  for (auto& [name, t] : named_weights(m)) n += t->numel();
  return n;
}

// Model FLOPs of one step: the planner's rule (trainer/plan/plan.h step_flops, the usual
// MFU convention: no recomputation counted).
double model_flops(const Model& m, const Setup& s) {
  PlanInput in;
  in.model = in.teacher = m.config;
  in.mode = s.full ? TrainMode::all : TrainMode::adapters;
  in.seq_len = s.seq;
  in.micro_batch = s.batch;
  return step_flops(in).model;
}

std::unique_ptr<bench::TrainRun> make_run(const Setup& s) {
  bench::TrainSetup t;
  t.batch = s.batch;
  t.seq = s.seq;
  t.window = s.window;
  t.full = s.full;
  t.attention = parse_attention_impl(s.attention, "--attention");
  return bench::make_train_run([&] { return load(s); }, t);
}

std::vector<std::string> child_cmd(const Setup& s) {
  return {s.model,     std::to_string(s.batch),     std::to_string(s.seq),
          s.attention, s.full ? "all" : "adapters", std::to_string(s.window)};
}

int run_child(const std::vector<std::string>& a) {
  Setup s;
  s.model = a.at(0);
  s.batch = std::stoll(a.at(1));
  s.seq = std::stoll(a.at(2));
  s.attention = a.at(3);
  s.full = a.at(4) == "all";
  s.window = std::stoll(a.at(5));
  auto r = make_run(s);
  bench::train_step(*r);  // optimizer state exists from here on
  bench::region_begin();
  bench::train_step(*r);
  bench::region_end();
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  bench::init(argc, argv);
  if (bench::is_child(argc, argv)) return run_child(bench::child_args(argc, argv));
  CLI::App app{
      "One retrofit step (teacher fwd + student fwd/bwd + AdamW) per model: tokens/s, achieved\n"
      "FLOP/s and MFU vs the fp32 matmul peak measured in this run, peak memory."};
  std::vector<std::string> models{"stories260K", "15m"};
  std::vector<std::string> attentions{"blockwise", "dense"};
  Setup base;
  int reps = 3;
  bool memory = true;
  std::string json;
  app.add_option("--models", models, "15m and/or stories260K")->capture_default_str();
  app.add_option("--attention", attentions, "blockwise and/or dense")->capture_default_str();
  app.add_option("--batch", base.batch, "rows per step")->capture_default_str();
  app.add_option("--seq", base.seq, "tokens per row")->capture_default_str();
  app.add_option("--window", base.window, "DMS window")->capture_default_str();
  app.add_flag("--full", base.full, "full fine-tune (every weight trains) instead of adapters");
  app.add_option("--reps", reps, "timed steps (median)")->capture_default_str();
  app.add_flag("!--no-memory", memory, "skip the peak-memory child runs");
  app.add_option("--json", json, "also write the figures to this JSON file");
  CLI11_PARSE(app, argc, argv);

  const double peak = bench::matmul_peak_flops(2048, 7);
  std::cout << "fp32 matmul peak (2048^3, median of 7): " << bench::fmt(peak / 1e9, 1)
            << " GFLOP/s, " << at::get_num_threads() << " threads\n";
  nlohmann::json out = {{"benchmark", "train_step"},
                        {"machine", bench::machine_info()},
                        {"matmul_peak_flops", peak},
                        {"batch", base.batch},
                        {"seq", base.seq},
                        {"window", base.window},
                        {"train_mode", base.full ? "all" : "adapters"},
                        {"reps", reps},
                        {"runs", nlohmann::json::array()}};
  std::vector<std::vector<std::string>> rows;
  for (const std::string& model : models)
    for (const std::string& att : attentions) {
      Setup s = base;
      s.model = model;
      s.attention = att;
      auto r = make_run(s);
      const double t = bench::time_median([&] { bench::train_step(*r); }, reps, 1);
      const double flops = model_flops(r->student, s);
      const double tok_s = double(s.batch * s.seq) / t;
      const int64_t mem = memory ? bench::child_peak_bytes(child_cmd(s)) : -1;
      const int64_t params = parameter_count(r->student);
      out["runs"].push_back({{"model", model},
                             {"attention", att},
                             {"parameters", params},
                             {"step_s", t},
                             {"tokens_per_s", tok_s},
                             {"step_flops", flops},
                             {"flops_per_s", flops / t},
                             {"mfu", flops / t / peak},
                             {"peak_bytes", mem}});
      rows.push_back({model, att, bench::fmt(double(params) / 1e6, 2) + "M", bench::fmt(t * 1e3, 0),
                      bench::fmt(tok_s, 0), bench::fmt(flops / t / 1e9, 1),
                      bench::fmt(100.0 * flops / t / peak, 1) + "%", bench::mib(mem)});
      std::cerr << "  " << model << " " << att << " done\n";
    }
  std::cout << "step = teacher fwd + student fwd/bwd + clip + AdamW, batch " << base.batch << " x "
            << base.seq << " tokens, " << (base.full ? "full fine-tune" : "adapters")
            << ", median of " << reps << "\n";
  bench::print_table(
      {"model", "attention", "params", "step ms", "tokens/s", "GFLOP/s", "MFU", "peak memory"},
      rows);
  bench::write_json(json, out);
  return 0;
}
