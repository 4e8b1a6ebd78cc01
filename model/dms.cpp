#include "model/dms.h"

#include <ATen/core/grad_mode.h>
#include <limits>

#include "model/transformer.h"
#include "model/visibility.h"

namespace dms {

std::string predictor_name(DmsPredictor p) {
  return p == DmsPredictor::adapter ? "adapter" : "query_neuron";
}

void attach_dms(Model& m, const DmsConfig& c) {
  m.dms = c;
  m.dms.enabled = true;
  if (c.predictor != DmsPredictor::adapter) return;
  const auto opts = m.embed.options().requires_grad(false);
  for (auto& w : m.layers) {
    w.dms_norm = at::ones({m.config.hidden_size}, opts);
    w.dms_proj = at::zeros({m.config.n_kv_heads, m.config.hidden_size}, opts);
    if (m.config.qkv_bias) w.dms_bias = at::zeros({m.config.n_kv_heads}, opts);
  }
}

int64_t dms_parameter_count(const ModelConfig& c, DmsPredictor p) {
  if (p != DmsPredictor::adapter) return 0;
  const int64_t per_layer =
      c.n_kv_heads * c.hidden_size + c.hidden_size + (c.qkv_bias ? c.n_kv_heads : 0);
  return c.n_layers * per_layer;
}

at::Tensor adapter_decision_logits(const LayerWeights& w, const ModelConfig& c, const DmsConfig& d,
                                   const at::Tensor& x) {
  at::Tensor h = rms_norm(x, w.dms_norm, c.rms_eps);
  // fp32 from here on: the scale (100) would multiply bf16 rounding into whole units of z.
  at::Tensor p = at::linear(h, w.dms_proj, w.dms_bias);
  at::Tensor z =
      p.to(at::promote_types(p.scalar_type(), at::kFloat)) * d.scale - d.offset;  // [B, T, K]
  return z.transpose(1, 2);                                                       // [B, K, T]
}

at::Tensor query_neuron_decision_logits(const at::Tensor& q, const ModelConfig& c,
                                        const DmsConfig& d) {
  const int64_t G = c.n_heads / c.n_kv_heads, hd = q.size(3);
  at::Tensor first = q.slice(1, 0, c.n_heads, G);  // [B, K, T, d]: heads 0, G, 2G, ...
  at::Tensor n = first.select(3, hd - 1);
  return n.to(at::promote_types(n.scalar_type(), at::kFloat)) * d.scale - d.offset;  // fp32
}

at::Tensor zero_query_neuron(const at::Tensor& q, int64_t n_kv_heads) {
  const int64_t H = q.size(1), hd = q.size(3), G = H / n_kv_heads;
  at::Tensor keep = at::ones({H, hd}, q.options().requires_grad(false));
  for (int64_t h = 0; h < H; h += G) keep[h][hd - 1] = 0;
  return q * keep.view({1, H, 1, hd});
}

at::Tensor apply_granularity(const at::Tensor& z, const DmsConfig& d) {
  if (!d.per_layer) return z;
  return z.narrow(1, 0, 1).expand_as(z);
}

// splitmix64: a well-mixed 64-bit key from (seed, step, sample).
static uint64_t mix(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

at::Tensor dms_noise(uint64_t seed, int64_t step, int64_t sample, int64_t L, int64_t K, int64_t T) {
  const uint64_t key = mix(mix(mix(seed) ^ uint64_t(step)) ^ uint64_t(sample));
  auto gen = at::make_generator<at::CPUGeneratorImpl>(key);
  // u in (0, 1): logistic = log(u) - log(1 - u) (the difference of two Gumbels).
  at::Tensor u = at::empty({L, K, T}, at::kDouble).uniform_(1e-12, 1.0 - 1e-12, gen);
  return (u.log() - (-u).log1p()).to(at::kFloat);
}

at::Tensor dms_batch_noise(uint64_t seed, int64_t step, int64_t first_sample, int64_t B, int64_t L,
                           int64_t K, int64_t T) {
  std::vector<at::Tensor> rows;
  for (int64_t b = 0; b < B; ++b) rows.push_back(dms_noise(seed, step, first_sample + b, L, K, T));
  return at::stack(rows, 1);  // [L, B, K, T]
}

at::Tensor shift_to_keys(const at::Tensor& t, double fill) {
  const int64_t T = t.size(-1);
  std::vector<int64_t> last_shape = t.sizes().vec();
  last_shape.back() = 1;
  at::Tensor tail = at::full(last_shape, fill, t.options());
  if (T == 1) return tail;
  return at::cat({t.narrow(-1, 1, T - 1), tail}, -1);
}

at::Tensor dms_bias(const at::Tensor& key_term, const at::Tensor& base, const at::Tensor& q_pos,
                    int64_t window) {
  const int64_t S = key_term.size(-1);
  at::Tensor kp = at::arange(S, at::kLong).unsqueeze(0);                // [1, S]
  at::Tensor far = Visibility{window, 0}.far(q_pos.unsqueeze(1) - kp);  // [T, S]
  at::Tensor extra = at::where(far.view({1, 1, far.size(0), S}), key_term.unsqueeze(2),
                               at::zeros({}, key_term.options()));  // [B, K, T, S]
  return base.to(extra.scalar_type()) + extra;
}

DmsLayerTerms dms_layer_terms(const at::Tensor& z, const at::Tensor& valid, const at::Tensor& noise,
                              AttentionMode mode, const DmsConfig& d) {
  DmsLayerTerms out;
  // A decision exists only where the position and the token it decides about are real.
  at::Tensor has_decision;  // [B, 1, T] bool, or undefined (all positions)
  if (valid.defined()) has_decision = valid.unsqueeze(1);
  if (mode == AttentionMode::train) {
    // Per-layer predictors: head 0's noisy decision is every head's (as the official code
    // does), not head 0's logit with each head's own noise.
    const at::Tensor n = noise.defined() ? apply_granularity(noise, d) : noise;
    at::Tensor a = (n.defined() ? z + n.to(z.scalar_type()) : z) / d.tau;
    at::Tensor alpha = at::sigmoid(a);
    at::Tensor hard = alpha.gt(0.5).to(alpha.scalar_type());
    out.decisions = hard + (alpha - alpha.detach());  // forward: exactly hard; backward: d alpha
    at::Tensor log_keep = at::log_sigmoid(-a);        // log(1 - alpha)
    if (has_decision.defined()) {
      log_keep = log_keep * has_decision.to(log_keep.scalar_type());
      out.decisions = out.decisions * has_decision.to(alpha.scalar_type());
    }
    out.key_term = shift_to_keys(log_keep, 0.0);
  } else {
    at::Tensor e = z.gt(0);
    if (has_decision.defined()) e = e.logical_and(has_decision);
    out.decisions = e.to(z.scalar_type());
    at::Tensor term = at::zeros(z.sizes(), z.options().requires_grad(false));
    term.masked_fill_(e, -std::numeric_limits<double>::infinity());
    out.key_term = shift_to_keys(term, 0.0);
  }
  return out;
}

CompressionStats compression_from_decisions(const at::Tensor& decisions, const at::Tensor& valid,
                                            int64_t window, int64_t sliding_window) {
  at::NoGradGuard no_grad;
  at::Tensor e = decisions.detach().cpu().to(at::kDouble);  // [L, B, K, T]: small, on CPU
  const int64_t L = e.size(0), B = e.size(1), K = e.size(2), T = e.size(3);
  at::Tensor v = valid.defined() ? valid.cpu().to(at::kDouble) : at::ones({B, T}, at::kDouble);
  at::Tensor vq = v.view({1, B, 1, T});
  const auto lh = [&](double x) { return at::full({L, K}, x, at::kDouble); };
  CompressionStats s;
  // Decisions about real tokens: positions 1..T-1 whose position and previous token are real.
  at::Tensor dmask = at::zeros({1, B, 1, T}, at::kDouble);
  if (T > 1) dmask.narrow(3, 1, T - 1).copy_(vq.narrow(3, 1, T - 1));
  const double per_lh = dmask.sum().item<double>();
  at::Tensor closed = e * dmask;
  s.decisions = (dmask.sum() * double(L * K)).item<double>();
  s.evicted = closed.sum().item<double>();
  s.decisions_lh = lh(per_lh);
  s.evicted_lh = closed.sum({1, 3});  // [L, K]

  // Key j is kept when its decision (made at j+1) is 0; the last key has none yet.
  at::Tensor keep = shift_to_keys(1.0 - e, 1.0) * vq;  // [L, B, K, T] per key j
  at::Tensor kept_prefix = at::cat({at::zeros({L, B, K, 1}, at::kDouble), keep.cumsum(3)}, 3);
  const Visibility vis{window, sliding_window};
  // Padding keys do not count for a real query (right padding: only at the end), and
  // padding queries count nothing.
  at::Tensor visible = vis.visible_count(kept_prefix, at::arange(T, at::kLong)) * vq;
  s.visible_keys = visible.to(at::kFloat);
  // A cache that keeps everything holds i + 1 keys at query i.
  at::Tensor full = (at::arange(T, at::kLong) + 1).to(at::kDouble).view({1, 1, 1, T}) * vq;
  s.visible_sum = visible.sum().item<double>();
  s.full_sum = full.sum().item<double>() * double(L * K);
  s.visible_lh = visible.sum({1, 3});
  s.full_lh = lh(full.sum().item<double>());

  // End of sequence: what the cache holds after each row's last real token.
  at::Tensor n_real = v.sum(1);  // [B]
  at::Tensor last = (n_real - 1).clamp_min(0).to(at::kLong).view({1, B, 1, 1});
  at::Tensor held = visible.gather(3, last.expand({L, B, K, 1})).squeeze(3);  // [L, B, K]
  s.seen_sum = n_real.sum().item<double>() * double(L * K);
  s.held_end_sum = held.sum().item<double>();
  s.seen_lh = lh(n_real.sum().item<double>());
  s.held_end_lh = held.sum(1);
  return s;
}

CompressionStats& CompressionStats::operator+=(const CompressionStats& o) {
  const bool was_empty = !decisions_lh.defined();
  decisions += o.decisions;
  evicted += o.evicted;
  visible_sum += o.visible_sum;
  full_sum += o.full_sum;
  seen_sum += o.seen_sum;
  held_end_sum += o.held_end_sum;
  if (!o.decisions_lh.defined()) return *this;  // o is empty
  const auto add = [](at::Tensor& a, const at::Tensor& b) { a = a.defined() ? a + b : b; };
  add(decisions_lh, o.decisions_lh);
  add(evicted_lh, o.evicted_lh);
  add(visible_lh, o.visible_lh);
  add(full_lh, o.full_lh);
  add(seen_lh, o.seen_lh);
  add(held_end_lh, o.held_end_lh);
  // Per-query counts do not add up; keeping every part's would make a running total
  // grow with the data it has seen.
  visible_keys = was_empty ? o.visible_keys : at::Tensor();
  return *this;
}

double CompressionStats::eviction_rate() const {
  return decisions > 0 ? evicted / decisions : 0.0;
}

double CompressionStats::decision_cr() const {
  return 1.0 / std::max(1e-12, 1.0 - eviction_rate());
}

double CompressionStats::effective_kv_cr() const {
  return visible_sum > 0 ? full_sum / visible_sum : 1.0;
}

double CompressionStats::end_kv_cr() const {
  return held_end_sum > 0 ? seen_sum / held_end_sum : 1.0;
}

at::Tensor CompressionStats::eviction_rate_lh() const {
  if (!evicted_lh.defined()) return {};
  return (evicted_lh / decisions_lh.clamp_min(1.0)).to(at::kFloat);
}

at::Tensor CompressionStats::effective_cr_lh() const {
  if (!full_lh.defined()) return {};
  return (full_lh / visible_lh).to(at::kFloat);
}

at::Tensor CompressionStats::end_kv_cr_lh() const {
  if (!seen_lh.defined()) return {};
  return (seen_lh / held_end_lh).to(at::kFloat);
}

}  // namespace dms
