#include "model/transformer.h"

#include <ATen/core/grad_mode.h>
#include <cmath>
#include <limits>

#include "model/checkpoint.h"
#include "model/visibility.h"

namespace dms {

Model make_model(const ModelConfig& c, const at::TensorOptions& opts) {
  const int64_t D = c.hidden_size, d = c.head_dim, H = c.n_heads, K = c.n_kv_heads;
  const int64_t I = c.intermediate_size, V = c.vocab_size;
  Model m;
  m.config = c;
  m.embed = at::zeros({V, D}, opts);
  for (int64_t l = 0; l < c.n_layers; ++l) {
    LayerWeights w;
    w.attn_norm = at::ones({D}, opts);
    w.wq = at::zeros({H * d, D}, opts);
    w.wk = at::zeros({K * d, D}, opts);
    w.wv = at::zeros({K * d, D}, opts);
    w.wo = at::zeros({D, H * d}, opts);
    if (c.qkv_bias) {
      w.bq = at::zeros({H * d}, opts);
      w.bk = at::zeros({K * d}, opts);
      w.bv = at::zeros({K * d}, opts);
    }
    if (c.o_bias) w.bo = at::zeros({D}, opts);
    if (c.qk_norm) {
      w.q_norm = at::ones({d}, opts);
      w.k_norm = at::ones({d}, opts);
    }
    w.mlp_norm = at::ones({D}, opts);
    w.w_gate = at::zeros({I, D}, opts);
    w.w_up = at::zeros({I, D}, opts);
    w.w_down = at::zeros({D, I}, opts);
    if (c.mlp_bias) {
      w.b_gate = at::zeros({I}, opts);
      w.b_up = at::zeros({I}, opts);
      w.b_down = at::zeros({D}, opts);
    }
    m.layers.push_back(std::move(w));
  }
  m.final_norm = at::ones({D}, opts);
  m.lm_head = c.tied_embeddings ? m.embed : at::zeros({V, D}, opts);
  return m;
}

std::vector<std::pair<std::string, at::Tensor*>> named_weights(Model& m) {
  std::vector<std::pair<std::string, at::Tensor*>> out;
  auto add = [&](const std::string& name, at::Tensor& t) {
    if (t.defined()) out.emplace_back(name, &t);
  };
  add("model.embed_tokens.weight", m.embed);
  for (size_t l = 0; l < m.layers.size(); ++l) {
    LayerWeights& w = m.layers[l];
    const std::string p = "model.layers." + std::to_string(l) + ".";
    add(p + "input_layernorm.weight", w.attn_norm);
    add(p + "self_attn.q_proj.weight", w.wq);
    add(p + "self_attn.k_proj.weight", w.wk);
    add(p + "self_attn.v_proj.weight", w.wv);
    add(p + "self_attn.o_proj.weight", w.wo);
    add(p + "self_attn.q_proj.bias", w.bq);
    add(p + "self_attn.k_proj.bias", w.bk);
    add(p + "self_attn.v_proj.bias", w.bv);
    add(p + "self_attn.o_proj.bias", w.bo);
    add(p + "self_attn.q_norm.weight", w.q_norm);
    add(p + "self_attn.k_norm.weight", w.k_norm);
    add(p + "post_attention_layernorm.weight", w.mlp_norm);
    add(p + "mlp.gate_proj.weight", w.w_gate);
    add(p + "mlp.up_proj.weight", w.w_up);
    add(p + "mlp.down_proj.weight", w.w_down);
    add(p + "mlp.gate_proj.bias", w.b_gate);
    add(p + "mlp.up_proj.bias", w.b_up);
    add(p + "mlp.down_proj.bias", w.b_down);
    add(p + "self_attn.dms_proj_alpha.weight", w.dms_proj);
    add(p + "self_attn.dms_proj_alpha.bias", w.dms_bias);
    add(p + "self_attn.dms_proj_alpha_norm.weight", w.dms_norm);
  }
  add("model.norm.weight", m.final_norm);
  if (!m.config.tied_embeddings) add("lm_head.weight", m.lm_head);
  return out;
}

void move_to(Model& m, const at::Device& device) {
  for (auto& [name, t] : named_weights(m)) *t = t->to(device);
  if (m.config.tied_embeddings) m.lm_head = m.embed;
}

void cast_to(Model& m, at::ScalarType dtype) {
  at::NoGradGuard no_grad;
  for (auto& [name, t] : named_weights(m)) *t = t->to(dtype);
  if (m.config.tied_embeddings) m.lm_head = m.embed;
}

int64_t weight_bytes(const Model& m) {
  int64_t n = 0;
  for (const auto& [name, t] : weight_list(m)) n += int64_t(t.nbytes());
  return n;
}

std::vector<std::pair<std::string, at::Tensor>> weight_list(const Model& m) {
  std::vector<std::pair<std::string, at::Tensor>> out;
  for (auto& [name, t] : named_weights(const_cast<Model&>(m))) out.emplace_back(name, *t);
  return out;
}

std::vector<std::pair<std::string, at::Tensor*>> named_dms_weights(Model& m) {
  std::vector<std::pair<std::string, at::Tensor*>> out;
  for (auto& nw : named_weights(m))
    if (nw.first.find(".dms_") != std::string::npos) out.push_back(nw);
  return out;
}

void init_random(Model& m, uint64_t seed, double std) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  at::NoGradGuard no_grad;
  for (auto& [name, t] : named_weights(m)) {
    const bool is_norm = name.find("norm") != std::string::npos;
    if (is_norm) {
      t->fill_(1.0);
    } else {
      at::Tensor r = at::empty(t->sizes(), at::kFloat);
      r.normal_(0.0, std, gen);
      t->copy_(r);
    }
  }
}

// fp32 for half types, the tensor's own type for fp32/fp64.
static at::ScalarType compute_type(at::ScalarType t) {
  return at::promote_types(t, at::kFloat);
}

at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& w, double eps) {
  at::Tensor xf = x.to(compute_type(x.scalar_type()));
  at::Tensor inv = at::rsqrt(xf.pow(2).mean(-1, /*keepdim=*/true) + eps);
  return w * (xf * inv).to(x.scalar_type());
}

// Inverse frequencies [d/2] (double), with llama3 band-wise scaling when configured.
static std::vector<double> rope_inv_freq(const ModelConfig& c) {
  const int64_t half = c.head_dim / 2;
  std::vector<double> f(static_cast<size_t>(half));
  for (int64_t i = 0; i < half; ++i)
    f[size_t(i)] = 1.0 / std::pow(c.rope_theta, double(2 * i) / double(c.head_dim));
  const RopeScaling& s = c.rope_scaling;
  if (s.type == "llama3") {
    const double old_ctx = double(s.original_max_position);
    const double low_wavelen = old_ctx / s.low_freq_factor;
    const double high_wavelen = old_ctx / s.high_freq_factor;
    for (double& inv : f) {
      const double wavelen = 2.0 * M_PI / inv;
      if (wavelen > low_wavelen) {
        inv = inv / s.factor;
      } else if (wavelen >= high_wavelen) {
        const double smooth =
            (old_ctx / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor);
        inv = (1.0 - smooth) * inv / s.factor + smooth * inv;
      }
    }
  }
  return f;
}

std::pair<at::Tensor, at::Tensor> rope_tables(const ModelConfig& c, const at::Tensor& positions) {
  std::vector<double> inv = rope_inv_freq(c);
  at::Tensor inv_t = at::tensor(inv, at::kDouble);                               // [d/2]
  at::Tensor ang = positions.to(at::kDouble).unsqueeze(1) * inv_t.unsqueeze(0);  // [T, d/2]
  ang = at::cat({ang, ang}, 1);                                                  // [T, d]
  return {ang.cos(), ang.sin()};  // fp64; apply_rope casts to the activations' type
}

at::Tensor apply_rope(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin) {
  const int64_t half = x.size(-1) / 2;
  at::Tensor x1 = x.narrow(-1, 0, half), x2 = x.narrow(-1, half, half);
  at::Tensor rotated = at::cat({-x2, x1}, -1);
  const auto o = x.options().requires_grad(false);
  return x * cos.to(o) + rotated * sin.to(o);
}

at::Tensor attention_bias(const at::Tensor& q_pos, int64_t S, const at::Tensor& key_valid,
                          int64_t sliding_window) {
  at::Tensor kp = at::arange(S, at::kLong).unsqueeze(0);  // [1, S]
  at::Tensor qp = q_pos.unsqueeze(1);                     // [T, 1]
  // Causal and inside the sliding window; no DMS term here (dms_bias adds it).
  at::Tensor visible = Visibility{Visibility::kNoEviction, sliding_window}.in_view(qp - kp);
  visible = visible.unsqueeze(0);  // [1, T, S]
  if (key_valid.defined()) {
    at::Tensor self = kp.eq(qp).unsqueeze(0);                                // [1, T, S]
    visible = visible.logical_and(key_valid.unsqueeze(1).logical_or(self));  // [B, T, S]
  }
  at::Tensor bias = at::zeros(visible.sizes(), at::kFloat);
  bias.masked_fill_(visible.logical_not(), -std::numeric_limits<float>::infinity());
  return bias.unsqueeze(1);  // [B|1, 1, T, S]
}

at::Tensor grouped_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                             const at::Tensor& bias, at::Tensor* probs) {
  const int64_t B = q.size(0), H = q.size(1), T = q.size(2), d = q.size(3);
  const int64_t K = k.size(1), G = H / K;
  const at::ScalarType ct = compute_type(q.scalar_type());
  // Scale the (small) queries rather than the (large) scores.
  const int64_t S = k.size(2);
  // Batched GEMMs over (batch, KV head): the G query heads of a group share one K/V.
  at::Tensor qg = (q * (1.0 / std::sqrt(double(d)))).reshape({B * K, G * T, d});
  at::Tensor scores =
      at::bmm(qg, k.reshape({B * K, S, d}).transpose(1, 2)).to(ct).view({B, K, G, T, S});
  scores.add_(bias.to(ct).unsqueeze(2));  // in place: bmm's backward does not need its output
  at::Tensor p = at::softmax(scores, -1);
  if (probs) *probs = p;
  at::Tensor out = at::bmm(p.to(v.scalar_type()).view({B * K, G * T, S}), v.reshape({B * K, S, d}));
  return out.view({B, H, T, d});
}

QKV project_qkv(const LayerWeights& w, const Model& m, const at::Tensor& x, const at::Tensor& cos,
                const at::Tensor& sin, AttentionMode mode) {
  const ModelConfig& c = m.config;
  const int64_t B = x.size(0), T = x.size(1), d = c.head_dim;
  const bool dms_on = m.dms.enabled && mode != AttentionMode::teacher;
  // [B, T, h*d] -> [B, h, T, d]
  auto heads = [&](const at::Tensor& t, int64_t h) { return t.view({B, T, h, d}).transpose(1, 2); };
  at::Tensor h = rms_norm(x, w.attn_norm, c.rms_eps);
  QKV out;
  at::Tensor q = heads(at::linear(h, w.wq, w.bq), c.n_heads);
  at::Tensor k = heads(at::linear(h, w.wk, w.bk), c.n_kv_heads);
  out.v = heads(at::linear(h, w.wv, w.bv), c.n_kv_heads);
  if (c.qk_norm) {
    q = rms_norm(q, w.q_norm, c.rms_eps);
    k = rms_norm(k, w.k_norm, c.rms_eps);
  }
  const bool neuron = dms_on && m.dms.predictor == DmsPredictor::query_neuron;
  if (dms_on) {
    out.z = neuron ? query_neuron_decision_logits(q, c, m.dms)
                   : adapter_decision_logits(w, c, m.dms, x);
    out.z = apply_granularity(out.z, m.dms);
  }
  if (neuron) q = zero_query_neuron(q, c.n_kv_heads);
  out.q = apply_rope(q, cos, sin);
  if (neuron) out.q = zero_query_neuron(out.q, c.n_kv_heads);
  out.k = apply_rope(k, cos, sin);
  return out;
}

at::Tensor mlp(const LayerWeights& w, const at::Tensor& x) {
  at::Tensor g = at::silu(at::linear(x, w.w_gate, w.b_gate));
  return at::linear(g * at::linear(x, w.w_up, w.b_up), w.w_down, w.b_down);
}

at::Tensor decoder_layer(const LayerWeights& w, const Model& m, const at::Tensor& x,
                         const at::Tensor& cos, const at::Tensor& sin, AttentionMode mode,
                         const std::function<at::Tensor(const QKV&)>& attend) {
  const ModelConfig& c = m.config;
  const int64_t B = x.size(0), T = x.size(1);
  at::Tensor att = attend(project_qkv(w, m, x, cos, sin, mode));  // [B, H, T, d]
  att = att.transpose(1, 2).reshape({B, T, c.n_heads * c.head_dim});
  at::Tensor h = x + at::linear(att, w.wo, w.bo);
  return h + mlp(w, rms_norm(h, w.mlp_norm, c.rms_eps));
}

namespace {

// What one layer's attention reads besides its QKV: fixed for the whole forward (and its
// recomputation under activation checkpointing).
struct LayerInputs {
  at::Tensor valid, noise, extra_key_term;  // [B, T], [B, K, T], [B, K, T] or undefined
  int64_t extra_window = 0;
  int64_t sliding_window = 0;
  AttentionMode mode = AttentionMode::eval;
  AttentionImpl attention = AttentionImpl::blockwise;
  AttentionBlocks blocks;
  bool dense = false;
};

// The layer's attention with the DMS terms (or the extra eviction rule) applied; the
// decisions and logits go to z / e when the layer has DMS terms. qkv as project_qkv.
// -> [B, H, T, d]
at::Tensor attend(const Model& m, const LayerInputs& li, const QKV& qkv, at::Tensor& z,
                  at::Tensor& e, const at::Tensor& key_mask, at::Tensor* probs) {
  AttentionMask am;
  am.key_valid = li.valid;
  am.sliding_window = li.sliding_window;
  if (qkv.z.defined()) {
    DmsLayerTerms terms = dms_layer_terms(qkv.z, li.valid, li.noise, li.mode, m.dms);
    am.key_term = terms.key_term;  // [B, K, T]
    am.window = m.dms.window;
    z = qkv.z;
    e = terms.decisions;
  } else if (li.extra_key_term.defined()) {
    am.key_term = li.extra_key_term;
    am.window = li.extra_window;
  }
  if (!li.dense) return blockwise_attention(qkv.q, qkv.k, qkv.v, am, li.blocks);
  am.key_mask = key_mask;
  return dense_attention(qkv.q, qkv.k, qkv.v, am, probs);
}

// The tensors of one layer (what may require grad under checkpointing).
std::vector<at::Tensor> layer_tensors(const LayerWeights& w) {
  std::vector<at::Tensor> out;
  for (const at::Tensor* t :
       {&w.attn_norm, &w.wq, &w.wk, &w.wv, &w.wo, &w.bq, &w.bk, &w.bv, &w.bo, &w.q_norm,
        &w.k_norm, &w.mlp_norm, &w.w_gate, &w.w_up, &w.w_down, &w.b_gate, &w.b_up, &w.b_down,
        &w.dms_norm, &w.dms_proj, &w.dms_bias})
    if (t->defined()) out.push_back(*t);
  return out;
}

// Layer l of a DMS model in train/eval mode under activation checkpointing:
// x [B, T, D] -> x_out [B, T, D]; z, e [B, K, T] appended to zs / decisions.
at::Tensor checkpointed_layer(const Model& m, int64_t l, const LayerInputs& li,
                              const at::Tensor& cos, const at::Tensor& sin, const at::Tensor& x,
                              std::vector<at::Tensor>& zs, std::vector<at::Tensor>& decisions) {
  const LayerWeights& w = m.layers[size_t(l)];
  CheckpointFn fn = [&m, &w, li, cos, sin](const at::Tensor& xin) {
    at::Tensor z, e;
    at::Tensor out = decoder_layer(w, m, xin, cos, sin, li.mode, [&](const QKV& qkv) {
      return attend(m, li, qkv, z, e, {}, nullptr);
    });
    return std::vector<at::Tensor>{out, z, e};
  };
  std::vector<at::Tensor> outs = checkpointed(fn, x, layer_tensors(w));
  zs.push_back(outs[1]);
  decisions.push_back(outs[2]);
  return outs[0];
}

}  // namespace

ForwardResult forward_full(const Model& m, const at::Tensor& tokens, const at::Tensor& valid,
                           const ForwardOptions& opts) {
  const ModelConfig& c = m.config;
  const int64_t T = tokens.size(1);
  const AttentionMode mode = m.dms.enabled ? opts.mode : AttentionMode::teacher;
  auto [cos, sin] = rope_tables(c, at::arange(T, at::kLong));  // [T, d]
  const at::Device dev = m.embed.device();
  LayerInputs li;
  li.valid = valid;
  li.sliding_window = c.sliding_window;
  li.mode = mode;
  li.attention = opts.attention;
  li.blocks = opts.blocks;
  li.dense =
      opts.attention == AttentionImpl::dense || opts.keep_attention || opts.key_mask.defined();
  li.extra_key_term = opts.extra_key_term.defined() ? opts.extra_key_term.to(dev) : at::Tensor();
  li.extra_window = opts.extra_window;
  const bool checkpoint = opts.checkpoint_layers && mode != AttentionMode::teacher;
  if (checkpoint && (opts.keep_attention || opts.keep_kv || opts.key_mask.defined()))
    throw std::invalid_argument("forward_full: checkpoint_layers with kept tensors or key_mask");

  ForwardResult r;
  std::vector<at::Tensor> zs, decisions;
  at::Tensor x = at::embedding(m.embed, tokens);  // [B, T, D]
  for (int64_t l = 0; l < c.n_layers; ++l) {
    li.noise = opts.noise.defined() ? opts.noise[l].to(dev) : at::Tensor();  // [B, K, T]
    if (checkpoint) {
      x = checkpointed_layer(m, l, li, cos, sin, x, zs, decisions);
      continue;
    }
    auto attend_here = [&](const QKV& qkv) {
      at::Tensor z, e, probs;
      at::Tensor att = attend(m, li, qkv, z, e, opts.key_mask.defined() ? opts.key_mask[l] : at::Tensor(),
                              opts.keep_attention ? &probs : nullptr);
      if (z.defined()) {
        zs.push_back(z);
        decisions.push_back(e);
      }
      if (opts.keep_kv) {
        r.keys.push_back(qkv.k);
        r.values.push_back(qkv.v);
      }
      if (opts.keep_attention) r.attention.push_back(probs);
      return att;
    };
    x = decoder_layer(m.layers[size_t(l)], m, x, cos, sin, mode, attend_here);
  }
  if (!zs.empty()) {
    r.z = at::stack(zs);                 // [L, B, K, T]
    r.decisions = at::stack(decisions);  // [L, B, K, T]
  }
  if (opts.last_logits_only) x = x.narrow(1, T - 1, 1);
  at::Tensor h = rms_norm(x, m.final_norm, c.rms_eps);  // [B, T|1, D]
  if (opts.final_hidden)
    r.hidden = h;
  else
    r.logits = at::linear(h, m.lm_head);  // [B, T|1, V]
  return r;
}

at::Tensor forward(const Model& m, const at::Tensor& tokens, const at::Tensor& valid) {
  return forward_full(m, tokens, valid, ForwardOptions{}).logits;
}

}  // namespace dms
