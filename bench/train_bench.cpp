// A retrofit training step (teacher forward, student forward in train mode, KD + DMS
// losses, backward, the Optimizer's reduction, clipping and AdamW) through the trainer's
// own code (bench/train_run.h): tokens/s, achieved FLOP/s and MFU against this machine's
// fp32 matmul peak measured in the same run, and the step's peak memory by part (weights,
// optimizer, gradients, the KD loss's buffers measured on their own, and the activations:
// the rest of the measured peak), for stories260K and a synthetic Llama of stories15M's
// size, or any Hugging Face config.json with random weights (--hf-config), in f32 or
// bf16, with or without activation checkpointing, on the CPU or a GPU (--device). On a GPU
// the MFU is against the device's matmul peak in the run's dtype, and the peak memory is
// the CUDA allocator's over one whole step; `dms plan`'s prediction is printed beside it.
#include <ATen/Parallel.h>

#include <CLI/CLI.hpp>
#include <cstdlib>
#include <filesystem>
#include <iostream>

#include "bench/bench_util.h"
#include "bench/train_run.h"
#include "checkpoints/hf_config.h"
#include "checkpoints/load_model.h"
#include "trainer/plan/plan.h"
#include "trainer/train/kd_loss.h"

using namespace dms;
namespace fs = std::filesystem;

namespace {

struct Setup {
  std::string model = "15m";  // 15m | stories260K | hf:<directory with config.json>
  int64_t batch = 4, seq = 1024, window = 64;
  std::string attention = "blockwise";
  bool full = false;          // full fine-tune instead of adapters
  std::string dtype = "f32";  // f32 | bf16: every weight and the activations
  bool checkpoint = false;    // activation checkpointing of the student's layers
  std::string device = "cpu";
};

at::ScalarType dtype_of(const Setup& s) {
  if (s.dtype == "f32") return at::kFloat;
  if (s.dtype == "bf16") return at::kBFloat16;
  throw std::runtime_error("--dtype: f32 or bf16");
}

std::string assets_dir() {
  const char* env = std::getenv("DMS_ASSETS");
  return env && *env ? env : DMS_DEFAULT_ASSETS;
}

Model load(const Setup& s) {
  if (s.model == "15m") return bench::synthetic_15m();
  if (s.model == "stories260K") return load_model(assets_dir() + "/stories260K/stories260K.bin");
  if (s.model.rfind("hf:", 0) == 0) {  // the config's shape, random weights (seeded)
    Model m = make_model(read_hf_config(s.model.substr(3) + "/config.json"));
    init_random(m, 1);
    return m;
  }
  throw std::runtime_error("--model: 15m or stories260K");
}

int64_t parameter_count(Model& m) {
  int64_t n = 0;
  for (auto& [name, t] : named_weights(m)) n += t->numel();
  return n;
}

// Model FLOPs of one step: the planner's rule (trainer/plan/plan.h step_flops, the usual
// MFU convention: no recomputation counted).
PlanInput plan_of(const Model& m, const Setup& s) {
  PlanInput in;
  in.model = in.teacher = m.config;
  in.mode = s.full ? TrainMode::all : TrainMode::adapters;
  in.dtype = s.dtype == "bf16" ? PlanDtype::bf16 : PlanDtype::f32;
  in.seq_len = s.seq;
  in.micro_batch = s.batch;
  in.activation_checkpointing = s.checkpoint;
  in.attention = parse_attention_impl(s.attention, "--attention");
  return in;
}

double model_flops(const Model& m, const Setup& s) {
  return step_flops(plan_of(m, s)).model;
}

using Run = bench::TrainRun;

std::unique_ptr<Run> make_run(const Setup& s) {
  bench::TrainSetup t;
  t.batch = s.batch;
  t.seq = s.seq;
  t.window = s.window;
  t.full = s.full;
  t.attention = parse_attention_impl(s.attention, "--attention");
  t.dtype = dtype_of(s);
  t.checkpoint = s.checkpoint;
  t.device = at::Device(s.device);
  return bench::make_train_run([&] { return load(s); }, t);
}

// What a child process measures: a whole step, or the KD loss alone (forward and
// backward of kd_loss_sum on hidden states of the step's shape: its logits buffers).
std::vector<std::string> child_cmd(const Setup& s, const std::string& region) {
  return {region,
          s.model,
          std::to_string(s.batch),
          std::to_string(s.seq),
          s.attention,
          s.full ? "all" : "adapters",
          std::to_string(s.window),
          s.dtype,
          s.checkpoint ? "ckpt" : "-",
          s.device};
}

// The KD loss of one step on random hidden states: the region holds only its buffers
// (and the hidden-state gradient it returns).
void kd_region(Run& r) {
  const int64_t N = r.tokens.numel(), D = r.student.config.hidden_size;
  const auto o = r.student.embed.options().requires_grad(false);
  at::Tensor hs = at::randn({N, D}, o).requires_grad_(true), ht = at::randn({N, D}, o);
  bench::region_begin();
  kd_loss_sum(LogitSource::of_hidden(hs, r.student.lm_head),
              LogitSource::of_hidden(ht, r.student.lm_head), at::ones({N}),
              KdDirection::student_teacher, 0, next_token_targets(r.tokens))
      .backward();
  bench::region_end();
}

int run_child(const std::vector<std::string>& a) {
  Setup s;
  s.model = a.at(1);
  s.batch = std::stoll(a.at(2));
  s.seq = std::stoll(a.at(3));
  s.attention = a.at(4);
  s.full = a.at(5) == "all";
  s.window = std::stoll(a.at(6));
  s.dtype = a.at(7);
  s.checkpoint = a.at(8) == "ckpt";
  s.device = a.at(9);
  auto r = make_run(s);
  if (a.at(0) == "kd") {
    kd_region(*r);
    return 0;
  }
  bench::train_step(*r);  // optimizer state exists from here on
  bench::region_begin();
  bench::train_step(*r);
  bench::region_end();
  return 0;
}

int64_t bytes_of(const std::vector<at::Tensor>& ts) {
  int64_t n = 0;
  for (const auto& t : ts) n += int64_t(t.nbytes());
  return n;
}

}  // namespace

int main(int argc, char** argv) {
  bench::init(argc, argv);
  if (bench::is_child(argc, argv)) return run_child(bench::child_args(argc, argv));
  CLI::App app{
      "One retrofit step (teacher fwd + student fwd/bwd + AdamW) per model: tokens/s, achieved\n"
      "FLOP/s and MFU vs the matmul peak measured in this run (CPU: fp32; GPU: the run's\n"
      "dtype), the step's peak memory by part and dms plan's prediction of it."};
  std::vector<std::string> models{"stories260K", "15m"};
  std::vector<std::string> attentions{"blockwise", "dense"};
  Setup base;
  int reps = 3;
  bool memory = true;
  std::string json;
  std::string hf_config;
  app.add_option("--models", models, "15m and/or stories260K")->capture_default_str();
  app.add_option("--hf-config", hf_config,
                 "a directory with a Hugging Face config.json: that shape with random weights "
                 "(instead of --models)")
      ->check(CLI::ExistingDirectory);
  app.add_option("--device", base.device, "cpu, cuda or cuda:N")->capture_default_str();
  app.add_option("--attention", attentions, "blockwise and/or dense")->capture_default_str();
  app.add_option("--batch", base.batch, "rows per step")->capture_default_str();
  app.add_option("--seq", base.seq, "tokens per row")->capture_default_str();
  app.add_option("--window", base.window, "DMS window")->capture_default_str();
  app.add_flag("--full", base.full, "full fine-tune (every weight trains) instead of adapters");
  app.add_option("--dtype", base.dtype, "f32 | bf16 (weights and activations)")
      ->capture_default_str();
  app.add_flag("--activation-checkpointing", base.checkpoint,
               "recompute each student layer in backward");
  app.add_option("--reps", reps, "timed steps (median)")->capture_default_str();
  app.add_flag("!--no-memory", memory, "skip the peak-memory child runs");
  app.add_option("--json", json, "also write the figures to this JSON file");
  CLI11_PARSE(app, argc, argv);
  if (!hf_config.empty()) models = {"hf:" + hf_config};
  const at::Device device(base.device);
  const bool gpu = !device.is_cpu();

  // The CPU's fp32 GEMM rate; a GPU's rate in the run's dtype (its tensor cores).
  const at::ScalarType peak_type = gpu ? dtype_of(base) : at::kFloat;
  const int64_t peak_n = gpu ? 8192 : 2048;
  const double peak = bench::matmul_peak_flops(peak_n, 7, peak_type, device);
  std::cout << c10::toString(peak_type) << " matmul peak on " << device << " (" << peak_n
            << "^3, median of 7): " << bench::fmt(peak / 1e9, 1) << " GFLOP/s"
            << (gpu ? "" : ", " + std::to_string(at::get_num_threads()) + " threads") << "\n";
  nlohmann::json out = {{"benchmark", "train_step"},
                        {"machine", bench::machine_info()},
                        {"matmul_peak_flops", peak},
                        {"matmul_peak_dtype", c10::toString(peak_type)},
                        {"device", device.str()},
                        {"batch", base.batch},
                        {"seq", base.seq},
                        {"window", base.window},
                        {"train_mode", base.full ? "all" : "adapters"},
                        {"dtype", base.dtype},
                        {"activation_checkpointing", base.checkpoint},
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
      // CPU: resident-set growth over a step in a fresh child; GPU: the allocator's peak
      // over one more step here (everything allocated counts: it is the whole step's).
      int64_t mem = -1, kd_mem = -1, gpu_whole = -1;
      if (memory && gpu) {
        bench::device_peak_reset(device);
        bench::train_step(*r);
        gpu_whole = bench::device_peak_bytes(device);
      } else if (memory) {
        mem = bench::child_peak_bytes(child_cmd(s, "step"));
        kd_mem = bench::child_peak_bytes(child_cmd(s, "kd"));
      }
      const Plan plan = plan_step(plan_of(r->student, s));
      const int64_t params = parameter_count(r->student);
      // The step's peak = what lives across steps (weights, the optimizer's gradient buffer,
      // masters and moments) + the region's peak; activations = region peak - the
      // backward's own gradients (in the weights' dtype) - the KD loss's own buffers.
      const int64_t weights =
          weight_bytes(r->student) + (s.full ? weight_bytes(r->teacher_copy) : 0);
      const int64_t optimizer = bench::optimizer_bytes(*r);
      std::vector<at::Tensor> trained;
      for (const auto& [n, t] : r->trained) trained.push_back(t);
      const int64_t grads = bytes_of(trained);
      const int64_t acts = mem >= 0 && kd_mem >= 0 ? mem - grads - kd_mem : -1;
      const int64_t whole = gpu ? gpu_whole : mem >= 0 ? weights + optimizer + mem : -1;
      out["runs"].push_back({{"model", model},
                             {"attention", att},
                             {"parameters", params},
                             {"step_s", t},
                             {"tokens_per_s", tok_s},
                             {"step_flops", flops},
                             {"flops_per_s", flops / t},
                             {"mfu", flops / t / peak},
                             {"peak_bytes", mem},
                             {"whole_step_peak_bytes", whole},
                             {"weight_bytes", weights},
                             {"optimizer_bytes", optimizer},
                             {"gradient_bytes", grads},
                             {"kd_buffer_bytes", kd_mem},
                             {"activation_bytes", acts},
                             {"plan_whole_step_bytes", plan.total}});
      const std::string shown =  // an hf: model by its directory's name
          model.rfind("hf:", 0) == 0 ? "hf:" + fs::path(model.substr(3)).filename().string()
                                     : model;
      rows.push_back({shown, att, bench::fmt(double(params) / 1e6, 2) + "M", bench::fmt(t * 1e3, 0),
                      bench::fmt(tok_s, 0), bench::fmt(flops / t / 1e9, 1),
                      bench::fmt(100.0 * flops / t / peak, 1) + "%", bench::mib(whole),
                      bench::mib(weights), bench::mib(optimizer), bench::mib(grads),
                      bench::mib(kd_mem), bench::mib(acts), bench::mib(plan.total)});
      std::cerr << "  " << model << " " << att << " done\n";
    }
  std::cout << "step = teacher fwd + student fwd/bwd + clip + AdamW, batch " << base.batch << " x "
            << base.seq << " tokens, " << (base.full ? "full fine-tune" : "adapters") << ", "
            << base.dtype << (base.checkpoint ? ", activation checkpointing" : "") << ", median of "
            << reps << "\n";
  bench::print_table(
      {"model", "attention", "params", "step ms", "tokens/s", "GFLOP/s", "MFU", "step peak",
       "weights", "optimizer", "grads", "logits+KD", "activations", "dms plan"},
      rows);
  bench::write_json(json, out);
  return 0;
}
