// Dynamic Memory Sparsification (DESIGN.md §2): eviction predictors, noise, the
// attention-bias rules for train (soft) and eval (hard) modes, compression figures.
// Shapes: L layers, B batch, K KV heads, T positions, S key positions, D hidden.
#pragma once
#include <ATen/ATen.h>

#include <cstdint>
#include <string>

namespace dms {

struct Model;
struct LayerWeights;
struct ModelConfig;

enum class DmsPredictor { adapter, query_neuron };

struct DmsConfig {
  bool enabled = false;
  DmsPredictor predictor = DmsPredictor::adapter;
  bool per_layer = false;  // one decision per layer (head 0's) instead of per KV head
  int64_t window = 512;    // w: a token marked for eviction stays visible w more steps
  double tau = 0.1;        // temperature of the soft decisions in train mode
  double scale = 100.0;    // s in z = s * (...) - o
  double offset = 5.0;     // o; at init z = -o, so nothing is evicted
  double target_cr = 8.0;  // the compression the retrofit aimed at (dms_cr; documentation only)
};

std::string predictor_name(DmsPredictor p);  // "adapter" | "query_neuron"

// teacher: eviction off (the original model). train: soft eviction bias with noise.
// eval: hard eviction, no noise.
enum class AttentionMode { teacher, train, eval };

// Turns DMS on for `m`. The adapter variant adds per layer a zero projection
// dms_proj [K, D] (+ bias [K] when the family has attention bias) and an RMSNorm
// weight dms_norm [D] of ones; the query-neuron variant adds nothing.
void attach_dms(Model& m, const DmsConfig& c);

// Values attach_dms adds to a model of config `c` (the shapes above, over every layer):
// L x (K x D + D (+ K with attention bias)) for the adapter, 0 for the query neuron.
int64_t dms_parameter_count(const ModelConfig& c, DmsPredictor p);

// Adapter decision logits, fp32 for half-precision models (z = s * (...) - o with s = 100
// would turn bf16 rounding into whole units). x [B, T, D] (residual entering the layer)
// -> z [B, K, T]
at::Tensor adapter_decision_logits(const LayerWeights& w, const ModelConfig& c, const DmsConfig& d,
                                   const at::Tensor& x);

// Query-neuron decision logits from q before RoPE: coordinate d-1 of the first query
// head of each group. q [B, H, T, d] -> z [B, K, T]
at::Tensor query_neuron_decision_logits(const at::Tensor& q, const ModelConfig& c,
                                        const DmsConfig& d);

// q [B, H, T, d] with coordinate d-1 of each group's first head set to 0.
at::Tensor zero_query_neuron(const at::Tensor& q, int64_t n_kv_heads);

// z [B, K, T] -> per-layer mode: head 0's logits for every head; per-head: unchanged.
at::Tensor apply_granularity(const at::Tensor& z, const DmsConfig& d);

// Logistic(0, 1) noise for one sample, reproducible bit for bit from the key
// (seed, step, sample index in the global batch): keying by the sample makes a run
// independent of how a global batch is split over ranks and micro-batches.
// -> [L, K, T] fp32
at::Tensor dms_noise(uint64_t seed, int64_t step, int64_t sample, int64_t L, int64_t K, int64_t T);
// Noise for samples first_sample .. first_sample+B-1 -> [L, B, K, T]
at::Tensor dms_batch_noise(uint64_t seed, int64_t step, int64_t first_sample, int64_t B, int64_t L,
                           int64_t K, int64_t T);

// Shifts per-position values to the key they decide about: out[..., j] = t[..., j+1],
// out[..., T-1] = fill. t [..., T] -> [..., T]
at::Tensor shift_to_keys(const at::Tensor& t, double fill);

// Attention bias for DMS: base (causal, padding, sliding window) plus, where
// i - j > window (Visibility::far), key_term[b, h, j]. key_term is logsigmoid(-a[j+1]) in
// train mode and 0 / -inf (kept / evicted) in eval mode.
// key_term [B, K, S], base [B|1, 1, T, S], q_pos [T] -> [B, K, T, S]
at::Tensor dms_bias(const at::Tensor& key_term, const at::Tensor& base, const at::Tensor& q_pos,
                    int64_t window);

// Per-layer DMS outputs for one forward.
// z [B, K, T]; valid [B, T] bool or undefined; noise [B, K, T] (train) ->
//   key_term [B, K, T] (for dms_bias) and decisions e [B, K, T] (train: straight-through
//   hard decisions with the gradient of sigmoid(a); eval: {0, 1}).
struct DmsLayerTerms {
  at::Tensor key_term, decisions;
};
DmsLayerTerms dms_layer_terms(const at::Tensor& z, const at::Tensor& valid, const at::Tensor& noise,
                              AttentionMode mode, const DmsConfig& d);

// Compression of a teacher-forced pass (DESIGN.md §2 "Reported compression"), as sums
// so that the figures of several batches (or ranks) add up with += and the ratios are
// taken once at the end. A "cache size at query i" is the keys query i sees under the DMS
// rule and the model's sliding window (model/visibility.h); the full cache holds i + 1.
// Sums run over layers, batch rows, heads and real queries (decisions); [L, K] ones over
// batch rows and queries only. All sums are exact integers held in doubles.
struct CompressionStats {
  double decisions = 0;     // decisions about real tokens
  double evicted = 0;       // ... of which e = 1
  double visible_sum = 0;   // sum over real queries of the DMS cache size
  double full_sum = 0;      // sum over real queries of the full cache size (i + 1)
  double seen_sum = 0;      // end of sequence: real tokens seen
  double held_end_sum = 0;  // end of sequence: tokens held after the last real token
  at::Tensor decisions_lh, evicted_lh, visible_lh, full_lh, seen_lh, held_end_lh;  // [L, K] f64
  // Keys each query sees, per layer, row, head and query [L, B, K, T] fp32 (0 for padding
  // queries), of one call: a sum of several (+=) has none (undefined).
  at::Tensor visible_keys;

  CompressionStats& operator+=(const CompressionStats& o);

  double eviction_rate() const;         // mean e
  double decision_cr() const;           // 1 / (1 - mean e)
  double effective_kv_cr() const;       // sum of full cache sizes / sum of DMS cache sizes
  double end_kv_cr() const;             // tokens seen / tokens held after the last token
  at::Tensor eviction_rate_lh() const;  // [L, K] fp32
  at::Tensor effective_cr_lh() const;   // [L, K] fp32
  at::Tensor end_kv_cr_lh() const;      // [L, K] fp32
};
// decisions [L, B, K, T] (position t decides about token t-1), valid [B, T] or undefined,
// window: DMS w, sliding_window: the model's (0: none).
CompressionStats compression_from_decisions(const at::Tensor& decisions, const at::Tensor& valid,
                                            int64_t window, int64_t sliding_window = 0);

}  // namespace dms
