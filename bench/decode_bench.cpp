// Decoding cost with a long context: per-token time and KV bytes read for the full
// cache, the DMS cache (adapters set to evict at a given rate) and the window baseline
// at the DMS cache's budget, on the synthetic 15M Llama. The context is filled by one
// blockwise prefill; then `--tokens` single-token steps are timed (median).
#include <ATen/Parallel.h>
#include <ATen/core/grad_mode.h>

#include <CLI/CLI.hpp>
#include <iostream>

#include "bench/bench_util.h"
#include "model/kv_cache.h"

using namespace dms;

namespace {

// Per-(layer, KV head) offsets so that each head evicts `rate` of the tokens of `tokens`: the
// adapter projection u = W rms_norm(x) is measured and the bias set to o/s - quantile(u, 1 - rate),
// so z = s (u + b) - o > 0 for a share `rate` of positions. Layer by layer, each measured with the
// layers below already evicting (eval mode), since their eviction changes what reaches it. (Llama
// has no adapter bias; the benchmark adds one.)
void calibrate(Model& m, const at::Tensor& tokens, double rate) {
  at::NoGradGuard ng;
  const ModelConfig& c = m.config;
  auto gen = at::make_generator<at::CPUGeneratorImpl>(5);
  for (auto& w : m.layers) {
    w.dms_proj.normal_(0.0, 1.0 / std::sqrt(double(c.hidden_size)), gen);
    w.dms_bias = at::full({c.n_kv_heads}, -1e4);  // z << 0: nothing evicted yet
  }
  ForwardOptions fo;
  fo.mode = AttentionMode::eval;
  for (int64_t l = 0; l < c.n_layers; ++l) {
    auto& w = m.layers[size_t(l)];
    at::Tensor z = forward_full(m, tokens, {}, fo).z[l];  // [B, K, T]
    for (int64_t h = 0; h < c.n_kv_heads; ++h) {
      at::Tensor u = ((z.select(1, h) + m.dms.offset) / m.dms.scale - w.dms_bias[h]).reshape({-1});
      const double q = at::quantile(u.to(at::kDouble), 1.0 - rate).item<double>();
      w.dms_bias[h] = m.dms.offset / m.dms.scale - q;
    }
  }
}

struct Point {
  double ms_per_token = 0, touched_bytes = 0, live_bytes = 0, prefill_s = 0;
  double mean_live = 0, storage_bytes = 0;
};

Point measure(const Model& m, CacheOptions co, const at::Tensor& ctx, const at::Tensor& more) {
  at::NoGradGuard ng;
  const int64_t B = ctx.size(0), N = more.size(1);
  KVCache kc = make_cache(m, B, co);
  Point p;
  const double t0 = bench::now_s();
  prefill(m, ctx, kc);
  p.prefill_s = bench::now_s() - t0;
  p.mean_live = cache_stats(kc).mean_live;
  auto sum = [](const std::vector<double>& v) {
    double s = 0;
    for (double x : v) s += x;
    return s;
  };
  const double touched0 = sum(kc.touched), reads0 = sum(kc.reads);
  std::vector<double> times;
  for (int64_t t = 0; t < N; ++t) {
    const double s = bench::now_s();
    forward_cached(m, more.narrow(1, t, 1), kc);
    times.push_back(bench::now_s() - s);
  }
  // Keys and values, fp32, per generated token of one sequence.
  const double per_slot = 2.0 * double(kc.d) * 4.0 / double(B * N);
  p.ms_per_token = bench::median(times) * 1e3;
  p.touched_bytes = (sum(kc.touched) - touched0) * per_slot;
  p.live_bytes = (sum(kc.reads) - reads0) * per_slot;
  for (const LayerCache& lc : kc.layers)
    p.storage_bytes += double(B * kc.K * lc.high) * 2.0 * double(kc.d) * 4.0;
  return p;
}

}  // namespace

int main(int argc, char** argv) {
  bench::init(argc, argv);
  CLI::App app{
      "Decode cost at long context: ms/token and KV bytes read per token for the full cache,\n"
      "the DMS cache (adapters calibrated to evict at 1 - 1/CR) and the window baseline at the\n"
      "DMS cache's mean budget. Synthetic 15M Llama, fp32."};
  std::vector<int64_t> contexts{4096, 8192};
  int64_t window = 256, tokens = 48, batch = 1;
  double cr = 8.0;
  std::string json;
  app.add_option("--contexts", contexts, "context lengths filled before decoding")
      ->capture_default_str();
  app.add_option("--window", window, "DMS window w (delayed eviction)")->capture_default_str();
  app.add_option("--cr", cr, "decision compression ratio the adapters are set to")
      ->capture_default_str();
  app.add_option("--tokens", tokens, "decode steps timed per point (median)")
      ->capture_default_str();
  app.add_option("--batch", batch, "sequences decoded together")->capture_default_str();
  app.add_option("--json", json, "also write the figures to this JSON file");
  CLI11_PARSE(app, argc, argv);

  Model m = bench::synthetic_15m();
  DmsConfig d;
  d.window = window;
  attach_dms(m, d);
  auto gen = at::make_generator<at::CPUGeneratorImpl>(9);
  std::cout << "decode, synthetic 15M Llama (6 layers x 6 KV heads x 48), fp32, batch " << batch
            << ", DMS w " << window << " at CR " << cr << ", median of " << tokens << " steps, "
            << at::get_num_threads() << " threads\n";

  nlohmann::json out = {{"benchmark", "decode"},
                        {"machine", bench::machine_info()},
                        {"window", window},
                        {"cr", cr},
                        {"tokens", tokens},
                        {"batch", batch},
                        {"points", nlohmann::json::array()}};
  std::vector<std::vector<std::string>> rows;
  for (int64_t C : contexts) {
    at::Tensor ctx =
        at::randint(0, m.config.vocab_size, {batch, C}, gen, at::TensorOptions(at::kLong));
    at::Tensor more =
        at::randint(0, m.config.vocab_size, {batch, tokens}, gen, at::TensorOptions(at::kLong));
    // The residual stream's statistics drift with position, so the adapters are set on
    // this context itself (first row): its decisions then evict 1 - 1/CR per head.
    calibrate(m, ctx.narrow(0, 0, 1), 1.0 - 1.0 / cr);
    CacheOptions full, dms, win;
    full.policy = CachePolicy::full;
    dms.policy = CachePolicy::dms;
    const Point pf = measure(m, full, ctx, more);
    const Point pd = measure(m, dms, ctx, more);
    win.policy = CachePolicy::window;
    win.budget = std::max<int64_t>(win.sinks + 1, int64_t(std::llround(pd.mean_live)));
    const Point pw = measure(m, win, ctx, more);
    // Decision CR the DMS cache reached: old tokens (beyond the window) over those kept.
    const double old = double(C - window - 1), kept_old = pd.mean_live - double(window + 1);
    const double decision_cr = kept_old > 0 ? old / kept_old : 0.0;
    for (auto [name, p] : {std::pair<std::string, Point>{"full", pf},
                           {"dms", pd},
                           {"window (" + std::to_string(win.budget) + ")", pw}}) {
      out["points"].push_back({{"context", C},
                               {"policy", name},
                               {"ms_per_token", p.ms_per_token},
                               {"tokens_per_s", 1e3 / p.ms_per_token},
                               {"speedup_vs_full", pf.ms_per_token / p.ms_per_token},
                               {"kv_bytes_read_per_token", p.touched_bytes},
                               {"kv_bytes_live_per_token", p.live_bytes},
                               {"kv_read_ratio_full_over_this", pf.touched_bytes / p.touched_bytes},
                               {"kv_storage_bytes", p.storage_bytes},
                               {"mean_tokens_per_head", p.mean_live},
                               {"prefill_s", p.prefill_s}});
      rows.push_back({std::to_string(C), name, bench::fmt(p.ms_per_token, 2),
                      bench::fmt(1e3 / p.ms_per_token, 1),
                      bench::fmt(pf.ms_per_token / p.ms_per_token, 2) + "x",
                      bench::mib(int64_t(p.touched_bytes)),
                      bench::fmt(pf.touched_bytes / p.touched_bytes, 2) + "x",
                      bench::fmt(p.mean_live, 0), bench::mib(int64_t(p.storage_bytes))});
    }
    out["points"][out["points"].size() - 2]["dms_decision_cr"] = decision_cr;  // the dms row
    std::cout << "context " << C << ": DMS decision CR reached " << bench::fmt(decision_cr, 2)
              << " (old tokens kept " << bench::fmt(kept_old, 0) << " of " << bench::fmt(old, 0)
              << ")\n";
  }
  bench::print_table({"context", "policy", "ms/token", "tokens/s", "speedup", "KV read/token",
                      "fewer KV bytes", "tokens/head", "KV storage"},
                     rows);
  bench::write_json(json, out);
  return 0;
}
