// The decoder transformer shared by every supported family (Llama, Qwen2,
// Qwen3, Mistral): plain weight structs and free functions over ATen.
// Shapes: B batch, T new positions, S cached+new key positions, D hidden,
// H query heads, K key/value heads, G = H/K, d head_dim, V vocab, I MLP hidden.
#pragma once
#include <ATen/ATen.h>

#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "model/attention.h"
#include "model/config.h"
#include "model/dms.h"

namespace dms {

struct LayerWeights {
  at::Tensor attn_norm;             // [D]
  at::Tensor wq, wk, wv, wo;        // [H*d, D], [K*d, D], [K*d, D], [D, H*d]
  at::Tensor bq, bk, bv, bo;        // [H*d], [K*d], [K*d], [D]; undefined without bias
  at::Tensor q_norm, k_norm;        // [d]; Qwen3 only
  at::Tensor mlp_norm;              // [D]
  at::Tensor w_gate, w_up;          // [I, D]
  at::Tensor w_down;                // [D, I]
  at::Tensor b_gate, b_up, b_down;  // MLP biases (Llama mlp_bias) or undefined
  // DMS adapter (DESIGN.md §2), present after attach_dms with the adapter predictor.
  at::Tensor dms_norm;  // [D]
  at::Tensor dms_proj;  // [K, D]
  at::Tensor dms_bias;  // [K]; only for families with attention bias
};

struct Model {
  ModelConfig config;
  at::Tensor embed;  // [V, D]
  std::vector<LayerWeights> layers;
  at::Tensor final_norm;  // [D]
  at::Tensor lm_head;     // [V, D]; the same tensor as embed when tied
  DmsConfig dms;          // dms.enabled once predictors are attached
};

// Allocates every weight of `c` with its shape (zeros; norms set to one).
Model make_model(const ModelConfig& c, const at::TensorOptions& opts = at::kFloat);

// Normal(0, std) for matrices and biases, ones for norms; deterministic in seed.
void init_random(Model& m, uint64_t seed, double std = 0.02);

// Every weight under its Hugging Face name ("model.layers.0.self_attn.q_proj.weight", ...),
// DMS adapters under the official names (...self_attn.dms_proj_alpha.weight,
// ...self_attn.dms_proj_alpha_norm.weight). A tied lm_head is not listed separately.
std::vector<std::pair<std::string, at::Tensor*>> named_weights(Model& m);
// Moves every weight (and the DMS adapters) to `device`, keeping a tied head tied.
void move_to(Model& m, const at::Device& device);
// Casts every weight (and the DMS adapters) to `dtype`, keeping a tied head tied. A bf16
// model computes its activations in bf16; norms, softmax and losses still run in fp32.
void cast_to(Model& m, at::ScalarType dtype);
// Bytes held by the model's weights (a tied head counted once).
int64_t weight_bytes(const Model& m);

// The same list as handles (tensors share storage with the model) for read-only use.
std::vector<std::pair<std::string, at::Tensor>> weight_list(const Model& m);
// Only the DMS adapter tensors (what trains in adapter mode).
std::vector<std::pair<std::string, at::Tensor*>> named_dms_weights(Model& m);

// RMSNorm over the last dim in fp32. x [..., n], w [n] -> [..., n] (dtype of x).
at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& w, double eps);

// RoPE tables for absolute positions. positions [T] int64 -> cos, sin [T, d] fp32,
// rotate-half layout (frequency i at columns i and i + d/2), llama3 scaling applied.
std::pair<at::Tensor, at::Tensor> rope_tables(const ModelConfig& c, const at::Tensor& positions);

// x [B, h, T, d], cos/sin [T, d] -> [B, h, T, d]
at::Tensor apply_rope(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin);

// Additive attention bias: 0 where query (absolute position q_pos[i]) may see key j
// (absolute position j), -inf elsewhere. Causal, sliding window when > 0, padding keys
// hidden (a query always sees itself so no row is empty).
// q_pos [T] int64, key_valid [B, S] bool or undefined -> [B, 1, T, S] fp32
at::Tensor attention_bias(const at::Tensor& q_pos, int64_t S, const at::Tensor& key_valid,
                          int64_t sliding_window);

// Grouped-query softmax attention. q [B, H, T, d], k/v [B, K, S, d],
// bias [B|1, K|1, T, S] (additive, shared by the G query heads of a KV head)
// -> [B, H, T, d]; with probs, also the attention weights [B, K, G, T, S] fp32.
at::Tensor grouped_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                             const at::Tensor& bias, at::Tensor* probs = nullptr);

// Projections, q/k norm, DMS decision logits and RoPE for one layer.
// x [B, T, D] residual entering the layer -> q [B, H, T, d], k/v [B, K, T, d],
// z [B, K, T] decision logits (undefined in teacher mode or without DMS).
struct QKV {
  at::Tensor q, k, v, z;
};
QKV project_qkv(const LayerWeights& w, const Model& m, const at::Tensor& x, const at::Tensor& cos,
                const at::Tensor& sin, AttentionMode mode);

// SwiGLU MLP. x [B, T, D] -> [B, T, D]
at::Tensor mlp(const LayerWeights& w, const at::Tensor& x);

// One decoder layer: x + o_proj(attend(project_qkv(x))), then + MLP(post-attention norm).
// The whole-sequence forward and the cached decode differ only in `attend`, which maps the
// layer's QKV (shapes as above) to the attention output [B, H, T, d] (and records what its
// caller keeps). x [B, T, D], cos/sin [T, d] -> [B, T, D]
at::Tensor decoder_layer(const LayerWeights& w, const Model& m, const at::Tensor& x,
                         const at::Tensor& cos, const at::Tensor& sin, AttentionMode mode,
                         const std::function<at::Tensor(const QKV&)>& attend);

struct ForwardOptions {
  // Used only by DMS models; a plain model always runs as the teacher.
  AttentionMode mode = AttentionMode::eval;
  at::Tensor noise;     // train: [L, B, K, T] logistic noise (undefined: none)
  at::Tensor key_mask;  // optional extra visibility [L, B, K, T, T] bool (reference runs)
  bool keep_attention = false;
  // Blockwise (memory O(T)) unless a run needs the [T, T] matrices: key_mask and
  // keep_attention always use the dense reference.
  AttentionImpl attention = AttentionImpl::blockwise;
  AttentionBlocks blocks;
  // Layers without DMS terms (teacher mode, plain models) can take one shared extra
  // eviction rule instead, AttentionMask semantics: key_term [B, K, T] where i - j > window.
  // The cache's window policy prefills with it (sinks 0, others -inf, window budget - sinks).
  at::Tensor extra_key_term;
  int64_t extra_window = 0;
  bool keep_kv = false;           // return each layer's keys/values (after RoPE)
  bool last_logits_only = false;  // logits for the last position only: [B, 1, V]
  // Leave the LM head to the caller (the fused KD loss): ForwardResult.hidden holds the
  // normed final hidden state and logits stay undefined.
  bool final_hidden = false;
  // Activation checkpointing (model/checkpoint.h) of each decoder layer of a DMS model
  // outside teacher mode: only layer inputs are kept, each layer is recomputed in
  // backward. The noise is an input, so the recomputation is the forward bit for bit.
  // Not with keep_attention, keep_kv or key_mask.
  bool checkpoint_layers = false;
};

struct ForwardResult {
  at::Tensor logits;                     // [B, T, V] (undefined with final_hidden)
  at::Tensor hidden;                     // [B, T, D] normed, with final_hidden
  at::Tensor z;                          // [L, B, K, T] decision logits (DMS, not teacher)
  at::Tensor decisions;                  // [L, B, K, T] e; train: straight-through
  std::vector<at::Tensor> attention;     // per layer [B, K, G, T, T] when keep_attention
  std::vector<at::Tensor> keys, values;  // per layer [B, K, T, d] when keep_kv
};

// Whole-sequence forward. tokens [B, T] int64; valid [B, T] bool (right padding) or undefined.
ForwardResult forward_full(const Model& m, const at::Tensor& tokens, const at::Tensor& valid,
                           const ForwardOptions& opts);

// Logits only, in eval mode (hard eviction for a DMS model). -> [B, T, V]
at::Tensor forward(const Model& m, const at::Tensor& tokens, const at::Tensor& valid = {});

}  // namespace dms
