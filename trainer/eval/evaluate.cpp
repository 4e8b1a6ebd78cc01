#include "trainer/eval/evaluate.h"

#include <ATen/core/grad_mode.h>
#include <cmath>
#include <iomanip>
#include <sstream>

#include "checkpoints/safetensors.h"
#include "common/error.h"
#include "common/host.h"
#include "model/generate.h"

namespace dms {

namespace {

nlohmann::json figure(double v) {
  return std::isnan(v) ? nlohmann::json(nullptr) : nlohmann::json(v);
}

}  // namespace

nlohmann::json EvalRow::to_json() const {
  return {{"model", model},
          {"policy", policy},
          {"budget", budget},
          {"decision_cr", figure(decision_cr)},
          {"effective_kv_cr", effective_kv_cr},
          {"end_of_sequence_kv_cr", end_kv_cr},
          {"ppl", ppl},
          {"kl_original_model", kl_original_model},
          {"kl_model_original", kl_model_original},
          {"greedy_agreement", figure(greedy_agreement)},
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

namespace {

// Keys a full cache would read over rows of T tokens, per layer and head: sum of (i + 1).
double full_keys(const Model& m, int64_t rows, int64_t T) {
  return double(m.config.n_layers * m.config.n_kv_heads * rows) * double(T * (T + 1) / 2);
}

// One batch under a cache policy: the evicting cache, token by token, against the
// original's logits. Adds the keys read to `used` and raises `peak`.
// `held` adds the tokens held per head at the end, times the batch rows.
ForcedSums cached_batch(const Model& model, const Model& original, const at::Tensor& x,
                        CachePolicy policy, int64_t budget, double& used, double& held,
                        int64_t& peak) {
  ForwardOptions teacher;
  teacher.mode = AttentionMode::teacher;
  const at::Tensor ref = forward_full(original, x, {}, teacher).logits;  // [b, T, V]
  CacheOptions co;
  co.policy = policy;
  co.budget = budget;
  KVCache cache = make_cache(model, x.size(0), co);
  const at::Tensor logits = forward_cached(model, x, cache);
  const CacheStats cs = cache_stats(cache);
  used += full_keys(model, x.size(0), x.size(1)) / cs.effective_kv_cr;
  held += cs.mean_live * double(x.size(0));
  peak = std::max(peak, cs.peak_tokens);
  return compare_logits(logits, ref, x);
}

// Greedy continuations from held-out prompts, compared with the original model's.
double greedy_agreement(const Model& model, const Model& original, const TokenData& data,
                        CachePolicy policy, int64_t budget, const EvalOptions& o) {
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
  return got.eq(want).to(at::kDouble).mean().item<double>();
}

void require_batch_fits(const ModelConfig& c, int64_t rows, int64_t T, const std::string& what) {
  require_fits_in_memory(uint64_t(std::min(eval_batch_bytes(c, rows, T), 1e19)),
                         what + " (" + std::to_string(rows) + " rows of " + std::to_string(T) +
                             " tokens, vocabulary " + std::to_string(c.vocab_size) + ")");
}

}  // namespace

double eval_batch_bytes(const ModelConfig& c, int64_t batch, int64_t T) {
  const double bt = double(batch) * double(T);
  const double logits = 6.0 * bt * double(c.vocab_size);
  const double cache = 2.0 * double(c.n_layers) * double(c.n_kv_heads) * double(c.head_dim) * bt;
  const double layer = bt * double(c.hidden_size + 3 * c.intermediate_size);
  return 4.0 * (logits + cache + layer);
}

EvalRow evaluate(const Model& model, const Model& original, const TokenData& data,
                 CachePolicy policy, int64_t budget, const EvalOptions& o) {
  at::NoGradGuard ng;
  EvalRow row;
  row.policy = policy_name(policy);
  row.budget = budget;
  const int64_t n = o.rows > 0 ? std::min(o.rows, data.n_rows) : data.n_rows;
  require_batch_fits(model.config, std::min(n, o.batch), data.seq_len,
                     "--batch " + std::to_string(o.batch));
  const bool forced = policy == CachePolicy::full || policy == CachePolicy::dms;
  ForcedSums s;
  double used = 0, full = 0, held = 0, seen = 0;
  for (int64_t r0 = 0; r0 < n; r0 += o.batch) {
    std::vector<int64_t> idx;
    for (int64_t i = r0; i < std::min(n, r0 + o.batch); ++i) idx.push_back(i);
    const at::Tensor x = data.rows(idx);  // [b, T]
    full += full_keys(model, x.size(0), x.size(1));
    seen += double(x.size(0) * x.size(1));
    if (forced) {
      ForcedOptions fo;
      fo.mode = policy == CachePolicy::dms ? AttentionMode::eval : AttentionMode::teacher;
      const ForcedSums b = forced_pass(model, original, x, fo);
      if (b.compression.visible_keys.defined())  // per batch: a sum keeps no per-query counts
        row.peak_tokens =
            std::max(row.peak_tokens, b.compression.visible_keys.max().item<int64_t>());
      s += b;
    } else {
      s += cached_batch(model, original, x, policy, budget, used, held, row.peak_tokens);
    }
  }
  const CompressionStats& cs = s.compression;
  if (policy == CachePolicy::dms) {
    used = cs.visible_sum;
  } else if (policy == CachePolicy::full) {
    used = full;
    row.peak_tokens = data.seq_len;
  }
  row.ppl = std::exp(s.nll_mean());
  row.kl_original_model = s.kl_ref_model_mean();
  row.kl_model_original = s.kl_model_ref_mean();
  row.effective_kv_cr = used > 0 ? full / used : 1.0;
  row.end_kv_cr = policy == CachePolicy::dms    ? cs.end_kv_cr()
                  : policy == CachePolicy::full ? 1.0
                  : held > 0                    ? seen / held
                                                : 1.0;
  // Only DMS makes per-token decisions; a full cache decides nothing (CR 1).
  row.decision_cr = policy == CachePolicy::dms    ? cs.decision_cr()
                    : policy == CachePolicy::full ? 1.0
                                                  : std::nan("");
  row.greedy_agreement = o.gen_rows > 0 && o.gen_tokens > 0
                             ? greedy_agreement(model, original, data, policy, budget, o)
                             : std::nan("");
  return row;
}

void dump_logits(const Model& model, const TokenData& data, int64_t rows, CachePolicy policy,
                 const std::string& path) {
  require(policy == CachePolicy::dms || policy == CachePolicy::full, "--dump-logits",
          "needs --policy dms or none (the baselines' logits come from the cache, token by token)");
  at::NoGradGuard ng;
  const int64_t n = rows > 0 ? std::min(rows, data.n_rows) : data.n_rows;
  require_batch_fits(model.config, n, data.seq_len,
                     "--rows " + std::to_string(rows) + " of --dump-logits");
  std::vector<int64_t> idx;
  for (int64_t i = 0; i < n; ++i) idx.push_back(i);
  const at::Tensor x = data.rows(idx);
  ForwardOptions fo;
  fo.mode = policy == CachePolicy::dms ? AttentionMode::eval : AttentionMode::teacher;
  const ForwardResult r = forward_full(model, x, {}, fo);
  std::vector<std::pair<std::string, at::Tensor>> out = {
      {"tokens", x.contiguous()}, {"logits", r.logits.to(at::kFloat).contiguous()}};
  if (policy == CachePolicy::dms && r.decisions.defined()) {
    out.emplace_back("decisions", r.decisions.to(at::kFloat).contiguous());
    out.emplace_back("decision_logits", r.z.to(at::kFloat).contiguous());
  }
  write_safetensors(path, out, {{"policy", policy_name(policy)}, {"producer", "dms eval"}});
}

static std::string cell(double v, int precision) {
  if (std::isnan(v)) return "-";
  std::ostringstream o;
  o << std::fixed << std::setprecision(precision) << v;
  return o.str();
}

std::string format_table(const std::vector<EvalRow>& rows) {
  std::ostringstream o;
  o << std::left << std::setw(10) << "model" << std::setw(8) << "policy" << std::right
    << std::setw(8) << "budget" << std::setw(13) << "decision CR" << std::setw(14) << "effective CR"
    << std::setw(12) << "end CR" << std::setw(10) << "ppl" << std::setw(14) << "KL(orig||m)"
    << std::setw(14) << "KL(m||orig)" << std::setw(12) << "greedy =="
    << "\n";
  for (const auto& r : rows) {
    o << std::left << std::setw(10) << r.model << std::setw(8) << r.policy << std::right
      << std::setw(8) << (r.budget > 0 ? std::to_string(r.budget) : std::string("-"))
      << std::setw(13) << cell(r.decision_cr, 2) << std::setw(14) << cell(r.effective_kv_cr, 2)
      << std::setw(12) << cell(r.end_kv_cr, 2) << std::setw(10) << cell(r.ppl, 3) << std::setw(14)
      << cell(r.kl_original_model, 4) << std::setw(14) << cell(r.kl_model_original, 4)
      << std::setw(12) << cell(r.greedy_agreement, 3) << "\n";
  }
  return o.str();
}

}  // namespace dms
