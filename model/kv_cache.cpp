#include "model/kv_cache.h"

#include <ATen/core/grad_mode.h>
#include <algorithm>
#include <limits>
#include <unordered_map>

#include "common/error.h"
#include "model/visibility.h"

namespace dms {

namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// Sets the bias of flat slot `at`: directly on CPU, queued for one indexed write elsewhere.
void set_bias(LayerCache& lc, int64_t at, float value) {
  if (lc.bias.is_cpu()) {
    lc.bias.data_ptr<float>()[at] = value;
  } else {
    lc.pending_at.push_back(at);
    lc.pending_value.push_back(value);
  }
}

// Applies queued bias writes (in order: a later write to a slot wins).
void flush_bias(LayerCache& lc) {
  if (lc.pending_at.empty()) return;
  // index_put_ with repeated indices has no defined winner: keep the last write per slot.
  std::vector<int64_t> idx;
  std::vector<float> val;
  std::unordered_map<int64_t, size_t> last;
  for (size_t i = 0; i < lc.pending_at.size(); ++i) last[lc.pending_at[i]] = i;
  for (const auto& [at, i] : last) {
    idx.push_back(at);
    val.push_back(lc.pending_value[i]);
  }
  const auto dev = lc.bias.device();
  lc.bias.view({-1}).index_put_({at::tensor(idx, at::kLong).to(dev)},
                                at::tensor(val, at::kFloat).to(dev));
  lc.pending_at.clear();
  lc.pending_value.clear();
}

// Grows one layer's storage to hold at least `need` slots per head (doubling).
void grow(LayerCache& lc, int64_t need, int64_t B, int64_t K, int64_t d,
          const at::TensorOptions& opts) {
  if (need <= lc.cap) return;
  const int64_t cap = std::max<int64_t>({16, lc.cap * 2, need});
  at::Tensor k = at::zeros({B, K, cap, d}, opts), v = at::zeros({B, K, cap, d}, opts);
  at::Tensor bias = at::full({B, K, cap}, kNegInf, opts.dtype(at::kFloat));
  std::vector<int64_t> pos(size_t(B * K * cap), -1);
  std::vector<double> score(size_t(B * K * cap), 0.0);
  flush_bias(lc);
  if (lc.cap > 0) {
    k.narrow(2, 0, lc.cap).copy_(lc.k);
    v.narrow(2, 0, lc.cap).copy_(lc.v);
    bias.narrow(2, 0, lc.cap).copy_(lc.bias);
    for (int64_t bh = 0; bh < B * K; ++bh)
      for (int64_t s = 0; s < lc.cap; ++s) {
        pos[size_t(bh * cap + s)] = lc.pos[size_t(bh * lc.cap + s)];
        score[size_t(bh * cap + s)] = lc.score[size_t(bh * lc.cap + s)];
      }
  }
  lc.k = k;
  lc.v = v;
  lc.bias = bias;
  lc.pos = std::move(pos);
  lc.score = std::move(score);
  lc.cap = cap;
}

}  // namespace

std::string policy_name(CachePolicy p) {
  switch (p) {
    case CachePolicy::full:
      return "none";
    case CachePolicy::dms:
      return "dms";
    case CachePolicy::window:
      return "window";
    case CachePolicy::h2o:
      return "h2o";
    case CachePolicy::tova:
      return "tova";
  }
  return "?";
}

CachePolicy parse_policy(const std::string& s, const std::string& where) {
  if (s == "none" || s == "full") return CachePolicy::full;
  if (s == "dms") return CachePolicy::dms;
  if (s == "window") return CachePolicy::window;
  if (s == "h2o") return CachePolicy::h2o;
  if (s == "tova") return CachePolicy::tova;
  throw InputError(where + ": unknown policy '" + s + "' (dms, window, h2o, tova, none)");
}

KVCache make_cache(const Model& m, int64_t batch, const CacheOptions& opts) {
  const ModelConfig& c = m.config;
  if (opts.policy == CachePolicy::dms && !m.dms.enabled)
    throw InputError("policy dms: the model has no DMS predictors");
  const bool baseline = opts.policy == CachePolicy::window || opts.policy == CachePolicy::h2o ||
                        opts.policy == CachePolicy::tova;
  if (baseline && opts.budget < 1)
    throw InputError("policy " + policy_name(opts.policy) + ": --budget must be at least 1");
  if (opts.policy == CachePolicy::window && opts.budget <= opts.sinks)
    throw InputError("policy window: the budget must exceed the " + std::to_string(opts.sinks) +
                     " attention sinks");
  KVCache kc;
  kc.opts = opts;
  kc.B = batch;
  kc.L = c.n_layers;
  kc.K = c.n_kv_heads;
  kc.d = c.head_dim;
  kc.layers.resize(size_t(kc.L));
  for (auto& lc : kc.layers) {
    lc.free_slots.resize(size_t(batch * kc.K));
    lc.marked.resize(size_t(batch * kc.K));
    lc.order.resize(size_t(batch * kc.K));
    lc.newest_slot.assign(size_t(batch * kc.K), -1);
    lc.used.assign(size_t(batch * kc.K), 0);
    grow(lc, 16, batch, kc.K, kc.d, m.embed.options().requires_grad(false));
  }
  const size_t n = size_t(kc.L * batch * kc.K);
  kc.live.assign(n, 0);
  kc.peak.assign(n, 0);
  kc.reads.assign(n, 0.0);
  kc.full_reads.assign(n, 0.0);
  kc.touched.assign(n, 0.0);
  const auto idx = at::TensorOptions(at::kLong).device(m.embed.device());
  kc.row_index = at::arange(batch, idx).repeat_interleave(kc.K);
  kc.head_index = at::arange(kc.K, idx).repeat(batch);
  return kc;
}

namespace {

// Frees `slot` of head bh in layer l if it still holds position `p` (a slot may have
// been freed by another rule and reused since).
void evict(KVCache& kc, int64_t l, int64_t bh, int64_t slot, int64_t p) {
  LayerCache& lc = kc.layers[size_t(l)];
  const size_t at = size_t(bh * lc.cap + slot);
  if (lc.pos[at] != p) return;
  lc.pos[at] = -1;
  lc.score[at] = 0.0;
  set_bias(lc, int64_t(at), kNegInf);
  lc.free_slots[size_t(bh)].push_back(slot);
  kc.live[size_t(l * kc.B * kc.K + bh)]--;
}

// Baseline rule: the slot to evict from head bh, given this step's attention
// weights w[slot] (averaged over the group's query heads) for the live slots.
int64_t choose_victim(KVCache& kc, int64_t l, int64_t bh, const float* w, int64_t i) {
  LayerCache& lc = kc.layers[size_t(l)];
  const CacheOptions& o = kc.opts;
  const int64_t base = bh * lc.cap;
  if (o.policy == CachePolicy::window) {
    auto& ord = lc.order[size_t(bh)];
    for (auto it = ord.begin(); it != ord.end(); ++it)
      if (it->first >= o.sinks) return it->second;  // oldest non-sink
    return ord.front().second;
  }
  int64_t best = -1;
  double best_v = std::numeric_limits<double>::infinity();
  const int64_t recent = o.policy == CachePolicy::h2o
                             ? std::max<int64_t>(0, int64_t(double(o.budget) * o.h2o_recent))
                             : 0;
  for (int64_t s = 0; s < lc.high; ++s) {
    const int64_t p = lc.pos[size_t(base + s)];
    if (p < 0) continue;
    if (o.policy == CachePolicy::h2o && p > i - recent) continue;  // protected recent token
    const double v = o.policy == CachePolicy::h2o ? lc.score[size_t(base + s)] : double(w[s]);
    if (best < 0 || v < best_v || (v == best_v && p < lc.pos[size_t(base + best)])) {
      best_v = v;
      best = s;
    }
  }
  if (best < 0) return lc.order[size_t(bh)].empty() ? 0 : lc.order[size_t(bh)].front().second;
  return best;
}

// The model's own rules: its DMS window (applies to marked tokens only) and sliding window.
Visibility model_rules(const Model& m) {
  return Visibility{m.dms.window, m.config.sliding_window};
}

bool is_baseline(CachePolicy p) {
  return p == CachePolicy::window || p == CachePolicy::h2o || p == CachePolicy::tova;
}

// Heads keep their live (pos, slot) pairs in order when a rule evicts by age: StreamingLLM
// (oldest non-sink first) and the sliding window.
bool needs_order(CachePolicy p, const Visibility& vis) {
  return p == CachePolicy::window || vis.has_sliding();
}

// Token i arrives in head bh of layer l: marks token i-1 when its decision says so, evicts
// what the rules take away before i reads (a marked token once far, any token once outside
// the sliding window), takes a slot for i and counts the step's reads. -> the slot
int64_t admit_token(KVCache& kc, int64_t l, int64_t bh, int64_t i, bool mark_previous,
                    const Visibility& vis, bool need_order) {
  LayerCache& lc = kc.layers[size_t(l)];
  auto& mk = lc.marked[size_t(bh)];
  if (mark_previous) mk.emplace_back(i - 1, lc.newest_slot[size_t(bh)]);
  while (!mk.empty() && vis.far(i - mk.front().first)) {
    evict(kc, l, bh, mk.front().second, mk.front().first);
    mk.pop_front();
  }
  auto& ord = lc.order[size_t(bh)];
  if (vis.has_sliding())
    while (!ord.empty() && !vis.in_sliding(i - ord.front().first)) {
      evict(kc, l, bh, ord.front().second, ord.front().first);
      ord.pop_front();
    }
  auto& fr = lc.free_slots[size_t(bh)];
  int64_t slot;
  if (!fr.empty()) {
    slot = fr.back();
    fr.pop_back();
  } else {
    slot = lc.used[size_t(bh)]++;
    lc.high = std::max(lc.high, lc.used[size_t(bh)]);
  }
  const size_t at = size_t(bh * lc.cap + slot);
  lc.pos[at] = i;
  lc.score[at] = 0.0;
  set_bias(lc, int64_t(at), 0.0f);
  lc.newest_slot[size_t(bh)] = slot;
  if (need_order) ord.emplace_back(i, slot);
  const size_t ci = size_t(l * kc.B * kc.K + bh);
  kc.live[ci]++;
  kc.peak[ci] = std::max(kc.peak[ci], kc.live[ci]);
  kc.reads[ci] += double(kc.live[ci]);
  kc.full_reads[ci] += double(i + 1);
  return slot;
}

// Baselines evict after the step's attention (h2o first adds the weights to the scores):
// each head drops victims until it holds the budget. probs [B, K, G, 1, hw]
void evict_after_attention(KVCache& kc, int64_t l, const at::Tensor& probs, int64_t i,
                           bool need_order) {
  LayerCache& lc = kc.layers[size_t(l)];
  const int64_t hw = probs.size(-1);
  // Mean attention over the group's query heads: [B, K, hw] on CPU.
  at::Tensor wmean = probs.select(3, 0).mean(2).to(at::kFloat).cpu().contiguous();
  for (int64_t bh = 0; bh < kc.B * kc.K; ++bh) {
    const float* wrow = wmean.data_ptr<float>() + bh * hw;
    if (kc.opts.policy == CachePolicy::h2o)
      for (int64_t s = 0; s < hw; ++s)
        if (lc.pos[size_t(bh * lc.cap + s)] >= 0)
          lc.score[size_t(bh * lc.cap + s)] += double(wrow[s]);
    const size_t ci = size_t(l * kc.B * kc.K + bh);
    while (kc.live[ci] > kc.opts.budget) {
      const int64_t victim = choose_victim(kc, l, bh, wrow, i);
      const int64_t vp = lc.pos[size_t(bh * lc.cap + victim)];
      evict(kc, l, bh, victim, vp);
      auto& ord = lc.order[size_t(bh)];
      if (need_order) ord.erase(std::find(ord.begin(), ord.end(), std::make_pair(vp, victim)));
    }
  }
}

// Token i's attention in layer l over the cache, with the bookkeeping around it.
// q [B, H, 1, d], k/v [B, K, 1, d], z [B, K, 1] (dms) -> [B, H, 1, d]
at::Tensor attend_cached(const Model& m, KVCache& kc, int64_t l, int64_t i, const QKV& qkv) {
  const int64_t B = kc.B, K = kc.K;
  LayerCache& lc = kc.layers[size_t(l)];
  const Visibility vis = model_rules(m);
  const bool need_order = needs_order(kc.opts.policy, vis);
  const bool baseline = is_baseline(kc.opts.policy);
  const auto opts = m.embed.options().requires_grad(false);
  at::Tensor e;  // [B, K] decisions (dms)
  if (qkv.z.defined()) e = qkv.z.select(2, 0).gt(0).to(at::kBool).cpu().contiguous();

  // Bookkeeping: mark, evict, allocate a slot for token i in every head.
  grow(lc, lc.high + 1, B, K, kc.d, opts);
  std::vector<int64_t> slots(size_t(B * K));
  for (int64_t bh = 0; bh < B * K; ++bh) {
    const bool mark = e.defined() && i >= 1 && e.data_ptr<bool>()[bh];
    slots[size_t(bh)] = admit_token(kc, l, bh, i, mark, vis, need_order);
  }
  // Write k/v of token i into the chosen slots: one indexed copy per layer.
  at::Tensor slot_t = at::tensor(slots, at::kLong).to(opts.device());
  lc.k.index_put_({kc.row_index, kc.head_index, slot_t}, qkv.k.reshape({B * K, kc.d}));
  lc.v.index_put_({kc.row_index, kc.head_index, slot_t}, qkv.v.reshape({B * K, kc.d}));

  const int64_t hw = lc.high;
  flush_bias(lc);
  at::Tensor bias = lc.bias.narrow(2, 0, hw).unsqueeze(2);  // [B, K, 1, hw]
  for (int64_t bh = 0; bh < B * K; ++bh) kc.touched[size_t(l * kc.B * K + bh)] += double(hw);
  at::Tensor probs;
  at::Tensor att = grouped_attention(qkv.q, lc.k.narrow(2, 0, hw), lc.v.narrow(2, 0, hw), bias,
                                     baseline ? &probs : nullptr);  // [B, H, 1, d]
  if (baseline) evict_after_attention(kc, l, probs, i, need_order);
  return att;
}

}  // namespace

at::Tensor forward_cached(const Model& m, const at::Tensor& tokens, KVCache& kc) {
  at::NoGradGuard no_grad;
  const ModelConfig& c = m.config;
  const int64_t B = tokens.size(0), T = tokens.size(1);
  if (B != kc.B) throw std::invalid_argument("forward_cached: batch size differs from the cache");
  const AttentionMode mode =
      kc.opts.policy == CachePolicy::dms ? AttentionMode::eval : AttentionMode::teacher;
  std::vector<at::Tensor> out;
  for (int64_t t = 0; t < T; ++t) {
    const int64_t i = kc.length;  // absolute position of this token
    auto [cos, sin] = rope_tables(c, at::full({1}, i, at::kLong));
    at::Tensor x = at::embedding(m.embed, tokens.narrow(1, t, 1));  // [B, 1, D]
    for (int64_t l = 0; l < kc.L; ++l)
      x = decoder_layer(m.layers[size_t(l)], m, x, cos, sin, mode,
                        [&](const QKV& qkv) { return attend_cached(m, kc, l, i, qkv); });
    out.push_back(at::linear(rms_norm(x, m.final_norm, c.rms_eps), m.lm_head));  // [B, 1, V]
    kc.length++;
  }
  return at::cat(out, 1);  // [B, T, V]
}

namespace {

// The prompt's forward under the policy's visibility rule, keeping every layer's keys and
// values for the cache.
ForwardResult prefill_forward(const Model& m, const at::Tensor& tokens, const KVCache& kc) {
  const CachePolicy policy = kc.opts.policy;
  const int64_t B = tokens.size(0), T = tokens.size(1), sinks = kc.opts.sinks;
  ForwardOptions fo;
  fo.mode = policy == CachePolicy::dms ? AttentionMode::eval : AttentionMode::teacher;
  fo.keep_kv = true;
  fo.last_logits_only = true;
  if (policy == CachePolicy::window) {
    // StreamingLLM as an eviction rule: sinks always visible, others for budget - sinks
    // steps back (the step's own token arrives before the oldest one leaves).
    at::Tensor term = at::full({B, kc.K, T}, -std::numeric_limits<double>::infinity(), at::kFloat);
    term.narrow(2, 0, std::min(sinks, T)).zero_();
    fo.extra_key_term = term;
    fo.extra_window = kc.opts.budget - sinks;
  }
  return forward_full(m, tokens, {}, fo);
}

// One head's rule over a prompt of T tokens: which keys are kept (exempt from the window),
// the rule while reading (visibility) and after the last step (what stays).
struct HeadRule {
  std::vector<uint8_t> kept;
  Visibility read, hold;
};

// ev: the head's hard decisions [T] (dms) or null.
HeadRule head_rule(const Model& m, const CacheOptions& o, const bool* ev, int64_t T) {
  HeadRule r;
  r.kept.assign(size_t(T), 0);
  int64_t window = Visibility::kNoEviction, hold_window = Visibility::kNoEviction;
  if (o.policy == CachePolicy::full) {
    std::fill(r.kept.begin(), r.kept.end(), 1);
  } else if (o.policy == CachePolicy::dms) {
    for (int64_t j = 0; j + 1 < T; ++j) r.kept[size_t(j)] = !ev[j + 1];
    window = hold_window = m.dms.window;
  } else {  // window
    for (int64_t j = 0; j < std::min(o.sinks, T); ++j) r.kept[size_t(j)] = 1;
    window = o.budget - o.sinks;
    hold_window = o.budget - o.sinks - 1;  // after the last step's eviction
  }
  r.read = model_rules(m);
  r.read.window = window;
  r.hold = r.read;
  r.hold.window = hold_window;
  return r;
}

// Counts head ci's reads over the prompt as forward_cached would token by token, and
// returns the positions it still holds after the last token, oldest first.
std::vector<int64_t> replay_head(KVCache& kc, size_t ci, const HeadRule& rule, int64_t T) {
  std::vector<int64_t> prefix(size_t(T + 1), 0);  // kept keys among 0 .. j-1
  for (int64_t j = 0; j < T; ++j) prefix[size_t(j + 1)] = prefix[size_t(j)] + rule.kept[size_t(j)];
  for (int64_t i = 0; i < T; ++i) {
    const int64_t n = rule.read.visible_count(prefix, i);
    kc.reads[ci] += double(n);
    kc.touched[ci] += double(n);
    kc.full_reads[ci] += double(i + 1);
    kc.peak[ci] = std::max(kc.peak[ci], n);
  }
  std::vector<int64_t> held;
  for (int64_t j = 0; j < T; ++j)
    if (rule.hold.visible(T - 1 - j, bool(rule.kept[size_t(j)]))) held.push_back(j);
  kc.live[ci] = int64_t(held.size());
  return held;
}

// Stores layer l's held keys/values (r.keys/values) in slots 0, 1, ... of each head, in
// position order. ev: the layer's hard decisions [B*K, T] (dms) or null.
void store_held(const Model& m, KVCache& kc, const ForwardResult& r, int64_t l, const bool* ev,
                const std::vector<std::vector<int64_t>>& held, int64_t T) {
  LayerCache& lc = kc.layers[size_t(l)];
  const int64_t K = kc.K;
  const auto opts = m.embed.options().requires_grad(false);
  const bool need_order = needs_order(kc.opts.policy, model_rules(m));
  int64_t high = 0;
  for (const auto& h : held) high = std::max<int64_t>(high, int64_t(h.size()));
  grow(lc, high, kc.B, K, kc.d, opts);
  for (int64_t bh = 0; bh < kc.B * K; ++bh) {
    const auto& pos = held[size_t(bh)];
    const int64_t n = int64_t(pos.size()), b = bh / K, h = bh % K;
    at::Tensor idx = at::tensor(pos, at::kLong).to(opts.device());
    lc.k[b][h].narrow(0, 0, n).copy_(r.keys[size_t(l)][b][h].index_select(0, idx));
    lc.v[b][h].narrow(0, 0, n).copy_(r.values[size_t(l)][b][h].index_select(0, idx));
    const bool* evh = ev ? ev + bh * T : nullptr;
    for (int64_t s = 0; s < n; ++s) {
      const int64_t j = pos[size_t(s)];
      const size_t at = size_t(bh * lc.cap + s);
      lc.pos[at] = j;
      lc.score[at] = 0.0;
      set_bias(lc, int64_t(at), 0.0f);
      if (evh && j + 1 < T && evh[j + 1]) lc.marked[size_t(bh)].emplace_back(j, s);
      if (need_order) lc.order[size_t(bh)].emplace_back(j, s);
    }
    lc.used[size_t(bh)] = n;
    lc.newest_slot[size_t(bh)] = n - 1;  // position T-1 is always held
  }
  lc.high = high;
  flush_bias(lc);
}

}  // namespace

at::Tensor prefill(const Model& m, const at::Tensor& tokens, KVCache& kc) {
  const CachePolicy policy = kc.opts.policy;
  const int64_t B = tokens.size(0), T = tokens.size(1), K = kc.K;
  // The StreamingLLM rule together with a model's own sliding window (which can take the
  // sinks away) has no simple closed form: that pair goes token by token too.
  const bool stepwise = policy == CachePolicy::h2o || policy == CachePolicy::tova ||
                        (policy == CachePolicy::window && model_rules(m).has_sliding());
  if (kc.length > 0 || T == 0 || stepwise) {
    at::Tensor logits = forward_cached(m, tokens, kc);
    return T == 0 ? logits : logits.narrow(1, T - 1, 1);
  }
  if (B != kc.B) throw std::invalid_argument("prefill: batch size differs from the cache");
  at::NoGradGuard no_grad;
  ForwardResult r = prefill_forward(m, tokens, kc);
  at::Tensor e = policy == CachePolicy::dms ? r.decisions.gt(0.5).cpu().contiguous()
                                            : at::Tensor();  // [L, B, K, T] bool
  for (int64_t l = 0; l < kc.L; ++l) {
    const bool* ev = e.defined() ? e.data_ptr<bool>() + l * B * K * T : nullptr;  // [B*K, T]
    std::vector<std::vector<int64_t>> held(size_t(B * K));
    for (int64_t bh = 0; bh < B * K; ++bh)
      held[size_t(bh)] = replay_head(kc, size_t(l * kc.B * K + bh),
                                     head_rule(m, kc.opts, ev ? ev + bh * T : nullptr, T), T);
    store_held(m, kc, r, l, ev, held, T);
  }
  kc.length = T;
  return r.logits;  // [B, 1, V]
}

CacheStats cache_stats(const KVCache& kc) {
  CacheStats s;
  double full = 0, used = 0, live = 0;
  s.live_lh = at::zeros({kc.L, kc.K}, at::kFloat);
  s.effective_cr_lh = at::zeros({kc.L, kc.K}, at::kFloat);
  for (int64_t l = 0; l < kc.L; ++l)
    for (int64_t b = 0; b < kc.B; ++b)
      for (int64_t h = 0; h < kc.K; ++h) {
        const size_t ci = size_t((l * kc.B + b) * kc.K + h);
        full += kc.full_reads[ci];
        used += kc.reads[ci];
        live += double(kc.live[ci]);
        s.peak_tokens = std::max(s.peak_tokens, kc.peak[ci]);
        if (b == 0) {
          s.live_lh[l][h] = float(kc.live[ci]);
          s.effective_cr_lh[l][h] =
              kc.reads[ci] > 0 ? float(kc.full_reads[ci] / kc.reads[ci]) : 1.0f;
        }
      }
  s.effective_kv_cr = used > 0 ? full / used : 1.0;
  s.mean_live = live / double(std::max<int64_t>(1, kc.L * kc.B * kc.K));
  s.full_tokens = kc.length;
  s.end_kv_cr = s.mean_live > 0 ? double(kc.length) / s.mean_live : 1.0;
  return s;
}

}  // namespace dms
