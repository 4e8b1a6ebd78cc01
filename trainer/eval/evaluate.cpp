#include "trainer/eval/evaluate.h"

#include <cmath>
#include <iomanip>
#include <sstream>

#include "model/generate.h"

namespace dms {

nlohmann::json EvalRow::to_json() const {
  return {{"model", model},
          {"policy", policy},
          {"budget", budget},
          {"decision_cr", decision_cr},
          {"effective_kv_cr", effective_kv_cr},
          {"ppl", ppl},
          {"kl_to_original", kl_to_original},
          {"greedy_agreement", greedy_agreement},
          {"peak_tokens", peak_tokens}};
}

int64_t budget_for_cr(double cr, int64_t T) {
  const double full = double(T) * double(T + 1) / 2.0;
  int64_t best = 1;
  double best_err = 1e300;
  for (int64_t b = 1; b < T; ++b) {
    double reads = 0;
    for (int64_t i = 0; i < T; ++i) reads += double(std::min(i + 1, b + 1));
    const double err = std::abs(full / reads - cr);
    if (err < best_err) {
      best_err = err;
      best = b;
    }
  }
  return best;
}

EvalRow evaluate(const Model& model, const Model& original, const TokenData& data,
                 CachePolicy policy, int64_t budget, const EvalOptions& o) {
  at::NoGradGuard ng;
  EvalRow row;
  row.policy = policy_name(policy);
  row.budget = budget;
  const int64_t n = o.rows > 0 ? std::min(o.rows, data.n_rows) : data.n_rows;
  const int64_t V = model.config.vocab_size;
  double nll = 0, kl = 0, full = 0, used = 0, closed = 0, decisions = 0;
  int64_t count = 0;
  for (int64_t r0 = 0; r0 < n; r0 += o.batch) {
    std::vector<int64_t> idx;
    for (int64_t i = r0; i < std::min(n, r0 + o.batch); ++i) idx.push_back(i);
    at::Tensor x = data.rows(idx);  // [b, T]
    const int64_t b = x.size(0), T = x.size(1);
    ForwardOptions teacher;
    teacher.mode = AttentionMode::teacher;
    at::Tensor ref = forward_full(original, x, {}, teacher).logits;  // [b, T, V]
    at::Tensor logits;
    if (policy == CachePolicy::full || policy == CachePolicy::dms) {
      ForwardOptions fo;
      fo.mode = policy == CachePolicy::dms ? AttentionMode::eval : AttentionMode::teacher;
      ForwardResult r = forward_full(model, x, {}, fo);
      logits = r.logits;
      if (policy == CachePolicy::dms) {
        CompressionStats cs = compression_from_decisions(r.decisions, {}, model.dms.window,
                                                         model.config.sliding_window);
        used += cs.visible_sum;
        closed += cs.evicted;
        decisions += cs.decisions;
        row.peak_tokens = std::max<int64_t>(row.peak_tokens, cs.visible_keys.max().item<int64_t>());
      } else {
        used +=
            double(model.config.n_layers * model.config.n_kv_heads * b) * double(T * (T + 1) / 2);
        row.peak_tokens = T;
      }
    } else {
      CacheOptions co;
      co.policy = policy;
      co.budget = budget;
      KVCache cache = make_cache(model, b, co);
      logits = forward_cached(model, x, cache);
      CacheStats cs = cache_stats(cache);
      used += cs.effective_kv_cr > 0 ? double(model.config.n_layers * model.config.n_kv_heads * b) *
                                           double(T * (T + 1) / 2) / cs.effective_kv_cr
                                     : 0;
      row.peak_tokens = std::max(row.peak_tokens, cs.peak_tokens);
    }
    full += double(model.config.n_layers * model.config.n_kv_heads * b) * double(T * (T + 1) / 2);
    at::Tensor lp = at::log_softmax(logits.to(at::kDouble), -1);  // [b, T, V]
    at::Tensor lr = at::log_softmax(ref.to(at::kDouble), -1);
    at::Tensor tgt = x.narrow(1, 1, T - 1).unsqueeze(-1);
    nll -= lp.narrow(1, 0, T - 1).gather(-1, tgt).sum().item<double>();
    count += b * (T - 1);
    kl += (lr.exp() * (lr - lp)).sum().item<double>() / double(T);  // mean over positions
    (void)V;
  }
  row.ppl = std::exp(nll / double(std::max<int64_t>(1, count)));
  row.kl_to_original = kl / double(std::max<int64_t>(1, n));
  row.effective_kv_cr = used > 0 ? full / used : 1.0;
  // Only DMS makes per-token decisions; baselines report 0 ("-" in the table).
  row.decision_cr = policy == CachePolicy::dms
                        ? 1.0 / std::max(1e-9, 1.0 - closed / std::max(1.0, decisions))
                    : policy == CachePolicy::full ? 1.0
                                                  : 0.0;

  // Greedy continuations from held-out prompts, compared with the original model's.
  if (o.gen_rows > 0 && o.gen_tokens > 0) {
    const int64_t g = std::min(o.gen_rows, data.n_rows);
    std::vector<int64_t> idx;
    for (int64_t i = 0; i < g; ++i) idx.push_back(data.n_rows - 1 - i);
    at::Tensor prompts = data.rows(idx).narrow(1, 0, std::min(o.prompt_len, data.seq_len));
    KVCache ref_cache = make_cache(original, g, CacheOptions{});
    at::Tensor want = generate(original, prompts, o.gen_tokens, SamplingOptions{}, {}, &ref_cache);
    CacheOptions co;
    co.policy = policy;
    co.budget = budget;
    KVCache cache = make_cache(model, g, co);
    at::Tensor got = generate(model, prompts, o.gen_tokens, SamplingOptions{}, {}, &cache);
    row.greedy_agreement = got.eq(want).to(at::kDouble).mean().item<double>();
  }
  return row;
}

static std::string cell(double v) {
  if (v <= 0) return "-";
  std::ostringstream o;
  o << std::fixed << std::setprecision(2) << v;
  return o.str();
}

std::string format_table(const std::vector<EvalRow>& rows) {
  std::ostringstream o;
  o << std::left << std::setw(10) << "model" << std::setw(8) << "policy" << std::right
    << std::setw(8) << "budget" << std::setw(13) << "decision CR" << std::setw(14) << "effective CR"
    << std::setw(10) << "ppl" << std::setw(14) << "KL to orig" << std::setw(12) << "greedy =="
    << "\n";
  for (const auto& r : rows) {
    o << std::left << std::setw(10) << r.model << std::setw(8) << r.policy << std::right
      << std::setw(8) << (r.budget > 0 ? std::to_string(r.budget) : std::string("-")) << std::fixed
      << std::setprecision(2) << std::setw(13) << cell(r.decision_cr) << std::setw(14)
      << r.effective_kv_cr << std::setprecision(3) << std::setw(10) << r.ppl << std::setprecision(4)
      << std::setw(14) << r.kl_to_original << std::setprecision(3) << std::setw(12)
      << r.greedy_agreement << "\n";
  }
  return o.str();
}

}  // namespace dms
