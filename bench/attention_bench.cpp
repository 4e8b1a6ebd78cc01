// Attention forward + backward: blockwise DMS attention vs the dense reference
// (the [B, K, T, T] bias + softmax it replaces), time (median) and peak memory per T.
// Each memory figure comes from a fresh child process running one fwd+bwd.
#include <ATen/Parallel.h>

#include <CLI/CLI.hpp>
#include <iostream>

#include "bench/bench_util.h"
#include "model/attention.h"
#include "model/dms.h"
#include "model/transformer.h"

using namespace dms;

namespace {

struct Shape {
  int64_t B = 1, H = 6, K = 6, d = 48, window = 64;
  AttentionBlocks blocks;
  std::string dtype = "float";
};

// One layer's attention inputs as the trainer has them: q/k/v after RoPE and an
// eviction term logsigmoid(-a) that needs a gradient.
struct Problem {
  at::Tensor q, k, v, term, dout;
  at::Tensor base, q_pos;  // dense only: the causal bias, built once per forward in the model
};

Problem make_problem(const Shape& s, int64_t T, bool dense) {
  const at::ScalarType dt = s.dtype == "bf16" ? at::kBFloat16 : at::kFloat;
  auto gen = at::make_generator<at::CPUGeneratorImpl>(1);
  auto rnd = [&](std::vector<int64_t> shape) {
    return at::empty(shape, at::kFloat).normal_(0.0, 1.0, gen).to(dt);
  };
  Problem p;
  p.q = rnd({s.B, s.H, T, s.d}).requires_grad_(true);
  p.k = rnd({s.B, s.K, T, s.d}).requires_grad_(true);
  p.v = rnd({s.B, s.K, T, s.d}).requires_grad_(true);
  p.term = at::log_sigmoid(rnd({s.B, s.K, T}) * 3).detach().requires_grad_(true);
  p.dout = rnd({s.B, s.H, T, s.d});
  if (dense) {
    p.q_pos = at::arange(T, at::kLong);
    p.base = attention_bias(p.q_pos, T, {}, 0);
  }
  return p;
}

void fwd_bwd(Problem& p, const Shape& s, bool dense) {
  at::Tensor out;
  if (dense) {
    at::Tensor bias = dms_bias(p.term, p.base, p.q_pos, s.window);  // [B, K, T, T]
    out = grouped_attention(p.q, p.k, p.v, bias);
  } else {
    AttentionMask m;
    m.key_term = p.term;
    m.window = s.window;
    out = blockwise_attention(p.q, p.k, p.v, m, s.blocks);
  }
  out.backward(p.dout);
  for (at::Tensor* t : {&p.q, &p.k, &p.v, &p.term}) t->mutable_grad() = at::Tensor();
}

std::vector<std::string> child_cmd(const Shape& s, int64_t T, bool dense) {
  return {dense ? "dense" : "blockwise", std::to_string(T),
          std::to_string(s.B),           std::to_string(s.H),
          std::to_string(s.K),           std::to_string(s.d),
          std::to_string(s.window),      std::to_string(s.blocks.q),
          std::to_string(s.blocks.k),    s.dtype};
}

int run_child(const std::vector<std::string>& a) {
  Shape s;
  const bool dense = a.at(0) == "dense";
  const int64_t T = std::stoll(a.at(1));
  s.B = std::stoll(a.at(2));
  s.H = std::stoll(a.at(3));
  s.K = std::stoll(a.at(4));
  s.d = std::stoll(a.at(5));
  s.window = std::stoll(a.at(6));
  s.blocks = {std::stoll(a.at(7)), std::stoll(a.at(8))};
  s.dtype = a.at(9);
  Problem p = make_problem(s, T, dense);
  bench::region_begin();
  fwd_bwd(p, s, dense);
  bench::region_end();
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  bench::init(argc, argv);
  if (bench::is_child(argc, argv)) return run_child(bench::child_args(argc, argv));
  CLI::App app{
      "Attention forward+backward, blockwise DMS attention vs the dense reference: median time\n"
      "and peak memory (resident-set growth of a fresh process running one fwd+bwd) per T."};
  Shape s;
  std::vector<int64_t> seqs{512, 1024, 2048, 4096, 8192};
  int reps = 9;
  double max_dense_gib = 16;
  bool memory = true;
  std::string json;
  app.add_option("--seq", seqs, "sequence lengths")->capture_default_str();
  app.add_option("--batch", s.B, "batch")->capture_default_str();
  app.add_option("--heads", s.H, "query heads")->capture_default_str();
  app.add_option("--kv-heads", s.K, "key/value heads")->capture_default_str();
  app.add_option("--head-dim", s.d, "head dimension")->capture_default_str();
  app.add_option("--window", s.window, "DMS window w")->capture_default_str();
  app.add_option("--block-q", s.blocks.q, "query rows per tile")->capture_default_str();
  app.add_option("--block-k", s.blocks.k, "keys per tile")->capture_default_str();
  app.add_option("--dtype", s.dtype, "float or bf16")->capture_default_str();
  app.add_option("--reps", reps, "timed runs per point (median)")->capture_default_str();
  app.add_option("--max-dense-gib", max_dense_gib,
                 "skip dense where its estimated memory exceeds this")
      ->capture_default_str();
  app.add_flag("!--no-memory", memory, "skip the peak-memory child runs");
  app.add_option("--json", json, "also write the figures to this JSON file");
  CLI11_PARSE(app, argc, argv);

  std::cout << "attention fwd+bwd, B " << s.B << " H " << s.H << " K " << s.K << " d " << s.d
            << " w " << s.window << " blocks " << s.blocks.q << "x" << s.blocks.k << " " << s.dtype
            << ", " << at::get_num_threads() << " threads, median of " << reps << "\n";
  nlohmann::json out = {{"benchmark", "attention"},
                        {"machine", bench::machine_info()},
                        {"shape",
                         {{"batch", s.B},
                          {"heads", s.H},
                          {"kv_heads", s.K},
                          {"head_dim", s.d},
                          {"window", s.window},
                          {"block_q", s.blocks.q},
                          {"block_k", s.blocks.k},
                          {"dtype", s.dtype}}},
                        {"reps", reps},
                        {"points", nlohmann::json::array()}};
  std::vector<std::vector<std::string>> rows;
  for (int64_t T : seqs) {
    // Dense holds about five [B, H, T, T] fp32 tensors at its peak (bias, scores,
    // probabilities and their gradients).
    const double dense_gib = 5.0 * double(s.B * s.H) * double(T) * double(T) * 4.0 / (1 << 30);
    const bool dense_fits = dense_gib <= max_dense_gib;
    const int r = T >= 4096 ? std::max(3, reps / 2) : reps;
    // Alternate the two so that drifts in machine speed hit both alike.
    Problem pb = make_problem(s, T, false), pd;
    if (dense_fits) pd = make_problem(s, T, true);
    std::vector<double> times_b, times_d;
    for (int i = -1; i < r; ++i) {  // i = -1: warm-up
      double t0 = bench::now_s();
      fwd_bwd(pb, s, false);
      if (i >= 0) times_b.push_back(bench::now_s() - t0);
      if (!dense_fits) continue;
      t0 = bench::now_s();
      fwd_bwd(pd, s, true);
      if (i >= 0) times_d.push_back(bench::now_s() - t0);
    }
    pd = Problem{};  // frees dense's inputs before the next T
    const double tb = bench::median(times_b), td = dense_fits ? bench::median(times_d) : -1;
    const int64_t mb = memory ? bench::child_peak_bytes(child_cmd(s, T, false)) : -1;
    const int64_t md = memory && dense_fits ? bench::child_peak_bytes(child_cmd(s, T, true)) : -1;
    nlohmann::json pt = {{"T", T}, {"blockwise_ms", tb * 1e3}, {"blockwise_peak_bytes", mb}};
    if (td > 0) {
      pt["dense_ms"] = td * 1e3;
      pt["time_ratio_blockwise_over_dense"] = tb / td;
    }
    if (md > 0) {
      pt["dense_peak_bytes"] = md;
      if (mb > 0) pt["memory_ratio_blockwise_over_dense"] = double(mb) / double(md);
    }
    out["points"].push_back(pt);
    rows.push_back({std::to_string(T), td > 0 ? bench::fmt(td * 1e3, 1) : "-",
                    bench::fmt(tb * 1e3, 1), td > 0 ? bench::fmt(tb / td, 3) : "-", bench::mib(md),
                    bench::mib(mb),
                    md > 0 && mb > 0 ? bench::fmt(double(mb) / double(md), 4) : "-"});
    std::cerr << "  T " << T << " done\n";
  }
  bench::print_table({"T", "dense ms", "blockwise ms", "time ratio (b/d)", "dense peak",
                      "blockwise peak", "memory ratio (b/d)"},
                     rows);
  bench::write_json(json, out);
  return 0;
}
