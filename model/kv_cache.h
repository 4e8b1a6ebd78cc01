// The KV cache used for decoding: per layer and KV head, variable length, with
// real eviction. Slots freed by an evicted token are reused by the next one, so
// memory follows the live token count; appending and evicting are O(1) per token
// per head (amortised: storage doubles when every slot is taken).
//
// Policies (every one keeps per-head sets; `budget` = tokens a head holds between steps):
// - full:   nothing is evicted (except by a model's own sliding window).
// - dms:    the model's learned decisions: the decision emitted at position j+1 marks
//           token j; a marked token leaves once it is more than `window` positions
//           behind the newest token (DESIGN.md §2). Needs a DMS model.
// - window: StreamingLLM (Xiao et al., "Efficient Streaming Language Models with
//           Attention Sinks", ICLR 2024): keep the first `sinks` tokens and the most
//           recent budget - sinks; the oldest non-sink token leaves first.
// - h2o:    Heavy-Hitter Oracle (Zhang et al., NeurIPS 2023): every token accumulates the
//           attention it receives (summed over the query heads of its KV group and over
//           steps); the most recent budget * h2o_recent tokens are protected, and among the
//           rest the token with the smallest accumulated attention leaves.
// - tova:   Token Omission Via Attention (Oren et al., "Transformers are Multi-State
//           RNNs", 2024): the token with the smallest attention weight from the current
//           query (averaged over the query heads of its KV group) leaves; any token,
//           including the newest, can go.
// Baselines evict after the step's attention, so a step reads at most budget + 1 keys and
// a head holds exactly min(tokens seen, budget) tokens between steps.
#pragma once
#include <ATen/ATen.h>

#include <deque>
#include <string>
#include <utility>
#include <vector>

#include "model/transformer.h"

namespace dms {

enum class CachePolicy { full, dms, window, h2o, tova };
std::string policy_name(CachePolicy p);
CachePolicy parse_policy(const std::string& s, const std::string& where);

struct CacheOptions {
  CachePolicy policy = CachePolicy::full;
  int64_t budget = 0;       // window / h2o / tova: tokens per head between steps
  int64_t sinks = 4;        // window: attention sinks always kept
  double h2o_recent = 0.5;  // h2o: share of the budget kept for the most recent tokens
};

// One layer's storage. Index (b*K + h) * cap + slot addresses per-slot state.
struct LayerCache {
  at::Tensor k, v;  // [B, K, cap, d]
  at::Tensor bias;  // [B, K, cap] fp32 on the model's device: 0 live, -inf free
  // Bias writes not yet applied (non-CPU devices apply them in one indexed write per
  // step instead of copying the whole bias each step): flat index (b*K + h)*cap + slot.
  std::vector<int64_t> pending_at;
  std::vector<float> pending_value;
  std::vector<int64_t> pos;                      // position held by a slot, -1 when free
  std::vector<double> score;                     // h2o: accumulated attention per slot
  std::vector<std::vector<int64_t>> free_slots;  // per (b, h)
  std::vector<std::deque<std::pair<int64_t, int64_t>>> marked;  // dms: (pos, slot) FIFO
  std::vector<std::deque<std::pair<int64_t, int64_t>>> order;   // live (pos, slot), oldest first
  std::vector<int64_t> newest_slot;                             // per (b, h)
  std::vector<int64_t> used;  // per (b, h): slots [0, used) have ever held a token
  int64_t cap = 0;            // slots allocated per head
  int64_t high = 0;           // max of used: attention reads slots [0, high) (free ones masked)
};

struct KVCache {
  CacheOptions opts;
  int64_t B = 0, L = 0, K = 0, d = 0;
  int64_t length = 0;  // tokens processed so far
  std::vector<LayerCache> layers;
  // Counters per (layer, batch row, head), index (l*B + b)*K + h.
  std::vector<int64_t> live;       // tokens held now
  std::vector<int64_t> peak;       // most tokens held at any step
  std::vector<double> reads;       // sum over steps of keys attended (KV reads)
  std::vector<double> full_reads;  // the same for a cache that keeps everything: sum (i+1)
  // Slots the attention kernel touched: a layer's heads are read as one padded block of
  // `high` slots (free slots masked), so this is >= reads; what memory traffic follows.
  std::vector<double> touched;
  at::Tensor row_index, head_index;  // [B*K]: b and h of each (b, h) pair, for slot writes
};

KVCache make_cache(const Model& m, int64_t batch, const CacheOptions& opts);

// Feeds tokens [B, T] (no padding) that follow the cached ones, one position at a
// time, evicting by the policy. -> logits [B, T, V]
at::Tensor forward_cached(const Model& m, const at::Tensor& tokens, KVCache& cache);

// Feeds a prompt [B, T] into an empty cache in one blockwise forward (memory O(T)) with
// the policy's visibility rule, then stores only the keys/values that policy would still
// hold: the same cache contents and counters as forward_cached token by token.
// Policies full, dms and window; h2o and tova (whose state depends on every step's
// attention) and a non-empty cache fall back to forward_cached. -> last logits [B, 1, V]
at::Tensor prefill(const Model& m, const at::Tensor& tokens, KVCache& cache);

struct CacheStats {
  double effective_kv_cr = 1.0;  // sum full_reads / sum reads
  int64_t peak_tokens = 0;       // largest per-head peak
  double mean_live = 0.0;        // mean tokens held per head now
  int64_t full_tokens = 0;       // what a full cache would hold per head now
  double end_kv_cr = 1.0;        // the official figure: tokens seen / tokens held now (mean)
  at::Tensor live_lh;            // [L, K] tokens held now (batch row 0)
  at::Tensor effective_cr_lh;    // [L, K]
};
CacheStats cache_stats(const KVCache& c);

}  // namespace dms
