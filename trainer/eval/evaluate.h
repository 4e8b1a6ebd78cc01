// Evaluation on held-out rows, teacher-forced: the DMS model under hard eviction and
// the training-free baselines (window, H2O, TOVA) in the evicting cache, each against
// the unchanged model: perplexity, KL to the original, decision and effective KV CR,
// and greedy-continuation agreement.
#pragma once
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "data/token_file.h"
#include "model/kv_cache.h"
#include "trainer/eval/forced.h"

namespace dms {

// A figure that was not computed is NaN: "-" in the table, null in JSON.
struct EvalRow {
  std::string model;             // "original" | "dms" | baseline name
  std::string policy;            // none | dms | window | h2o | tova
  int64_t budget = 0;            // tokens per head (baselines)
  double decision_cr = 1.0;      // NaN for baselines (they make no per-token decisions)
  double effective_kv_cr = 1.0;  // ours: full-cache reads / reads, over every step
  double end_kv_cr = 1.0;        // the official code's: tokens seen / tokens held at the end
  double ppl = 0;
  double kl_original_model = 0;   // mean over positions of KL(p_original || p_model)
  double kl_model_original = 0;   // mean over positions of KL(p_model || p_original)
  double greedy_agreement = 1.0;  // share of greedy continuation tokens equal to the original's
  int64_t peak_tokens = 0;
  nlohmann::json to_json() const;
};

struct EvalOptions {
  int64_t rows = 16;  // held-out rows to use (0 = all)
  int64_t batch = 8;
  int64_t prompt_len = 64;  // generation check: prompt tokens from each row
  int64_t gen_tokens = 64;  // ... and greedy tokens generated
  int64_t gen_rows = 4;
};

// Baseline budget whose effective KV CR over rows of T tokens is closest to `cr`
// (every baseline reads min(i + 1, budget + 1) keys at query i).
int64_t budget_for_cr(double cr, int64_t T);

// Bytes one evaluation batch of `batch` rows of T tokens allocates at least: the logits of the
// model and the original with their log-probabilities and probabilities ([b, T, V] x 6, f32),
// the keys and values of a cache ([L, b, K, T, d] x 2, f32) and a layer's activations
// ([b, T, D + 3 x MLP]). An estimate from below: what it refuses cannot fit, and it is checked
// before anything is allocated, so a huge --batch is an error, not the kernel's OOM kill.
double eval_batch_bytes(const ModelConfig& c, int64_t batch, int64_t T);

// `model` (with or without DMS) under `policy`, against `original`. InputError naming
// --batch when one batch cannot fit in the memory available now.
EvalRow evaluate(const Model& model, const Model& original, const TokenData& data,
                 CachePolicy policy, int64_t budget, const EvalOptions& o);

// Per-position figures of the first `rows` rows under `policy` (dms: hard eviction; full:
// eviction off) into a safetensors file: tokens [R, T] I64, logits [R, T, V] F32 and, for
// DMS, decisions and decision_logits [L, R, K, T] F32. InputError for other policies, and
// naming --rows when the R rows cannot fit in memory in one pass.
void dump_logits(const Model& model, const TokenData& data, int64_t rows, CachePolicy policy,
                 const std::string& path);

// The comparison table, one line per row.
std::string format_table(const std::vector<EvalRow>& rows);

}  // namespace dms
