#include "model/kv_cache.h"

#include <algorithm>
#include <limits>
#include <unordered_map>

#include "model/error.h"

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

}  // namespace

at::Tensor forward_cached(const Model& m, const at::Tensor& tokens, KVCache& kc) {
  at::NoGradGuard no_grad;
  const ModelConfig& c = m.config;
  const int64_t B = tokens.size(0), T = tokens.size(1), K = kc.K;
  if (B != kc.B) throw std::invalid_argument("forward_cached: batch size differs from the cache");
  const CachePolicy policy = kc.opts.policy;
  const bool baseline =
      policy == CachePolicy::window || policy == CachePolicy::h2o || policy == CachePolicy::tova;
  const bool need_order = policy == CachePolicy::window || c.sliding_window > 0;
  const AttentionMode mode =
      policy == CachePolicy::dms ? AttentionMode::eval : AttentionMode::teacher;
  const auto opts = m.embed.options().requires_grad(false);

  std::vector<at::Tensor> out;
  for (int64_t t = 0; t < T; ++t) {
    const int64_t i = kc.length;  // absolute position of this token
    at::Tensor q_pos = at::full({1}, i, at::kLong);
    auto [cos, sin] = rope_tables(c, q_pos);
    at::Tensor x = at::embedding(m.embed, tokens.narrow(1, t, 1));  // [B, 1, D]
    for (int64_t l = 0; l < kc.L; ++l) {
      const LayerWeights& w = m.layers[size_t(l)];
      LayerCache& lc = kc.layers[size_t(l)];
      QKV qkv = project_qkv(w, m, x, cos, sin, mode);  // q [B, H, 1, d], k/v [B, K, 1, d]
      at::Tensor e;                                    // [B, K] decisions (dms)
      if (qkv.z.defined()) e = qkv.z.select(2, 0).gt(0).to(at::kBool).cpu().contiguous();

      // Bookkeeping: mark, evict, allocate a slot for token i in every head.
      int64_t need = lc.high + 1;
      grow(lc, need, B, K, kc.d, opts);
      std::vector<int64_t> slots(size_t(B * K));
      for (int64_t bh = 0; bh < B * K; ++bh) {
        if (e.defined() && i >= 1 && e.data_ptr<bool>()[bh])
          lc.marked[size_t(bh)].emplace_back(i - 1, lc.newest_slot[size_t(bh)]);
        auto& mk = lc.marked[size_t(bh)];
        while (!mk.empty() && i - mk.front().first > m.dms.window) {
          evict(kc, l, bh, mk.front().second, mk.front().first);
          mk.pop_front();
        }
        auto& ord = lc.order[size_t(bh)];
        if (c.sliding_window > 0)
          while (!ord.empty() && i - ord.front().first >= c.sliding_window) {
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
        slots[size_t(bh)] = slot;
        const size_t at = size_t(bh * lc.cap + slot);
        lc.pos[at] = i;
        lc.score[at] = 0.0;
        set_bias(lc, int64_t(at), 0.0f);
        lc.newest_slot[size_t(bh)] = slot;
        if (need_order) ord.emplace_back(i, slot);
        const size_t ci = size_t(l * kc.B * K + bh);
        kc.live[ci]++;
        kc.peak[ci] = std::max(kc.peak[ci], kc.live[ci]);
        kc.reads[ci] += double(kc.live[ci]);
        kc.full_reads[ci] += double(i + 1);
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
      if (baseline) {
        // Mean attention over the group's query heads: [B, K, hw] on CPU.
        at::Tensor wmean = probs.select(3, 0).mean(2).to(at::kFloat).cpu().contiguous();
        for (int64_t bh = 0; bh < B * K; ++bh) {
          const float* wrow = wmean.data_ptr<float>() + bh * hw;
          if (policy == CachePolicy::h2o)
            for (int64_t s = 0; s < hw; ++s)
              if (lc.pos[size_t(bh * lc.cap + s)] >= 0)
                lc.score[size_t(bh * lc.cap + s)] += double(wrow[s]);
          const size_t ci = size_t(l * kc.B * K + bh);
          while (kc.live[ci] > kc.opts.budget) {
            const int64_t victim = choose_victim(kc, l, bh, wrow, i);
            const int64_t vp = lc.pos[size_t(bh * lc.cap + victim)];
            evict(kc, l, bh, victim, vp);
            auto& ord = lc.order[size_t(bh)];
            if (need_order)
              ord.erase(std::find(ord.begin(), ord.end(), std::make_pair(vp, victim)));
          }
        }
      }
      att = att.transpose(1, 2).reshape({B, 1, c.n_heads * c.head_dim});
      x = x + at::linear(att, w.wo, w.bo);
      x = x + mlp(w, rms_norm(x, w.mlp_norm, c.rms_eps));
    }
    out.push_back(at::linear(rms_norm(x, m.final_norm, c.rms_eps), m.lm_head));  // [B, 1, V]
    kc.length++;
  }
  return at::cat(out, 1);  // [B, T, V]
}

namespace {

// Keys query i sees under "key j is held iff (i - j <= window or kept[j]) and
// (sliding == 0 or i - j < sliding)". kept_prefix[j] = kept keys among 0 .. j-1.
int64_t visible_count(const std::vector<int64_t>& kept_prefix, int64_t i, int64_t window,
                      int64_t sliding) {
  const int64_t lo = sliding > 0 ? std::max<int64_t>(0, i - sliding + 1) : 0;
  int64_t n = i - std::max(lo, i - window) + 1;  // within the window
  const int64_t far_end = i - window;            // far keys: lo <= j < far_end
  if (far_end > lo) n += kept_prefix[size_t(far_end)] - kept_prefix[size_t(lo)];
  return n;
}

}  // namespace

at::Tensor prefill(const Model& m, const at::Tensor& tokens, KVCache& kc) {
  const CachePolicy policy = kc.opts.policy;
  const int64_t B = tokens.size(0), T = tokens.size(1), K = kc.K;
  // The StreamingLLM rule together with a model's own sliding window (which can take the
  // sinks away) has no simple closed form: that pair goes token by token too.
  const bool stepwise = policy == CachePolicy::h2o || policy == CachePolicy::tova ||
                        (policy == CachePolicy::window && m.config.sliding_window > 0);
  if (kc.length > 0 || T == 0 || stepwise) {
    at::Tensor logits = forward_cached(m, tokens, kc);
    return T == 0 ? logits : logits.narrow(1, T - 1, 1);
  }
  if (B != kc.B) throw std::invalid_argument("prefill: batch size differs from the cache");
  at::NoGradGuard no_grad;
  const ModelConfig& c = m.config;
  const auto opts = m.embed.options().requires_grad(false);
  const int64_t sinks = kc.opts.sinks, budget = kc.opts.budget;

  ForwardOptions fo;
  fo.mode = policy == CachePolicy::dms ? AttentionMode::eval : AttentionMode::teacher;
  fo.keep_kv = true;
  fo.last_logits_only = true;
  if (policy == CachePolicy::window) {
    // StreamingLLM as an eviction rule: sinks always visible, others for budget - sinks
    // steps back (the step's own token arrives before the oldest one leaves).
    at::Tensor term = at::full({B, K, T}, -std::numeric_limits<double>::infinity(), at::kFloat);
    term.narrow(2, 0, std::min(sinks, T)).zero_();
    fo.extra_key_term = term;
    fo.extra_window = budget - sinks;
  }
  ForwardResult r = forward_full(m, tokens, {}, fo);
  at::Tensor e = policy == CachePolicy::dms ? r.decisions.gt(0.5).cpu().contiguous()
                                            : at::Tensor();  // [L, B, K, T] bool

  for (int64_t l = 0; l < kc.L; ++l) {
    LayerCache& lc = kc.layers[size_t(l)];
    std::vector<std::vector<int64_t>> held(size_t(B * K));  // positions, oldest first
    std::vector<uint8_t> marked_flag;                       // dms: e[j+1] for held j
    for (int64_t bh = 0; bh < B * K; ++bh) {
      // The rule while reading (visibility) and after the last step (what stays).
      std::vector<uint8_t> kept(size_t(T), 0);
      int64_t window = T, hold_window = T;
      if (policy == CachePolicy::full) {
        std::fill(kept.begin(), kept.end(), 1);
      } else if (policy == CachePolicy::dms) {
        const bool* ev = e.data_ptr<bool>() + ((l * B) * K + bh) * T;
        for (int64_t j = 0; j + 1 < T; ++j) kept[size_t(j)] = !ev[j + 1];
        window = hold_window = m.dms.window;
      } else {  // window
        for (int64_t j = 0; j < std::min(sinks, T); ++j) kept[size_t(j)] = 1;
        window = budget - sinks;
        hold_window = budget - sinks - 1;  // after the last step's eviction
      }
      std::vector<int64_t> prefix(size_t(T + 1), 0);
      for (int64_t j = 0; j < T; ++j) prefix[size_t(j + 1)] = prefix[size_t(j)] + kept[size_t(j)];
      const size_t ci = size_t(l * kc.B * K + bh);
      for (int64_t i = 0; i < T; ++i) {
        const int64_t n = visible_count(prefix, i, window, c.sliding_window);
        kc.reads[ci] += double(n);
        kc.touched[ci] += double(n);
        kc.full_reads[ci] += double(i + 1);
        kc.peak[ci] = std::max(kc.peak[ci], n);
      }
      for (int64_t j = 0; j < T; ++j) {
        const int64_t age = T - 1 - j;
        const bool in_slide = c.sliding_window <= 0 || age < c.sliding_window;
        if (in_slide && (age <= hold_window || kept[size_t(j)])) held[size_t(bh)].push_back(j);
      }
      kc.live[ci] = int64_t(held[size_t(bh)].size());
    }
    int64_t high = 0;
    for (const auto& h : held) high = std::max<int64_t>(high, int64_t(h.size()));
    grow(lc, high, B, K, kc.d, opts);
    const bool need_order = policy == CachePolicy::window || c.sliding_window > 0;
    for (int64_t bh = 0; bh < B * K; ++bh) {
      const auto& pos = held[size_t(bh)];
      const int64_t n = int64_t(pos.size()), b = bh / K, h = bh % K;
      at::Tensor idx = at::tensor(pos, at::kLong).to(opts.device());
      lc.k[b][h].narrow(0, 0, n).copy_(r.keys[size_t(l)][b][h].index_select(0, idx));
      lc.v[b][h].narrow(0, 0, n).copy_(r.values[size_t(l)][b][h].index_select(0, idx));
      const bool* ev = e.defined() ? e.data_ptr<bool>() + ((l * B) * K + bh) * T : nullptr;
      for (int64_t s = 0; s < n; ++s) {
        const int64_t j = pos[size_t(s)];
        const size_t at = size_t(bh * lc.cap + s);
        lc.pos[at] = j;
        lc.score[at] = 0.0;
        set_bias(lc, int64_t(at), 0.0f);
        if (ev && j + 1 < T && ev[j + 1]) lc.marked[size_t(bh)].emplace_back(j, s);
        if (need_order) lc.order[size_t(bh)].emplace_back(j, s);
      }
      lc.used[size_t(bh)] = n;
      lc.newest_slot[size_t(bh)] = n - 1;  // position T-1 is always held
    }
    lc.high = high;
    flush_bias(lc);
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
  return s;
}

}  // namespace dms
