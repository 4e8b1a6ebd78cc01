#include "trainer/plan/plan.h"

#include <algorithm>
#include <cmath>
#include <iomanip>
#include <sstream>

#include "common/error.h"
#include "trainer/train/kd_loss.h"

namespace dms {

namespace {

constexpr int64_t kF32 = 4;

// The sizes the activation model needs, as doubles (bytes per position add up past
// 2^31 quickly), and which tensors require gradients.
struct Dims {
  double D, H, K, d, I, V, L, T, B, a;
  bool trains;   // every weight trains (full-weight mode)
  bool adapter;  // the adapter predictor (its norm and projection train)
  bool qk_norm, dense;
};

Dims dims_of(const PlanInput& in) {
  const ModelConfig& c = in.model;
  return {double(c.hidden_size),
          double(c.n_heads),
          double(c.n_kv_heads),
          double(c.head_dim),
          double(c.intermediate_size),
          double(c.vocab_size),
          double(c.n_layers),
          double(in.seq_len),
          double(in.micro_batch),
          in.dtype == PlanDtype::bf16 ? 2.0 : 4.0,
          in.mode == TrainMode::all,
          in.predictor == DmsPredictor::adapter,
          c.qk_norm,
          in.attention == AttentionImpl::dense};
}

// Bytes per position that rms_norm(x [.., n], w) keeps beyond x itself. When x requires a
// gradient: the fp32 square of x (the mean's backward node holds it; measured, LibTorch
// 1.13) and, for a half-type x, its fp32 copy (the square and the product save it). The
// normalised x when w trains (w's gradient), the output when the linear it feeds trains
// (that weight's gradient).
double norm_saved(const Dims& s, double n, bool input_grad, bool weight_trains, bool out_saved) {
  double b = 0;
  if (input_grad) b += kF32 * n;
  if (input_grad && s.a != kF32) b += kF32 * n;
  if (weight_trains) b += n * s.a;
  if (out_saved) b += n * s.a;
  return b;
}

// Bytes per position (one row) autograd keeps for one decoder layer of the student, op by
// op as model/transformer.cpp, model/dms.cpp and model/attention.cpp compute it. An fp32
// tensor that requires a gradient and enters a norm is saved as itself (counted once).
// input_grad: the layer's input requires a gradient (not layer 0 in adapter mode).
double layer_saved(const Dims& s, bool input_grad) {
  const double f32_input = input_grad && s.a == kF32 ? 1 : 0;
  double b = f32_input * s.D * kF32;                               // x, read by the norms
  b += norm_saved(s, s.D, input_grad, s.trains, s.trains);         // input norm -> q, k, v
  if (s.adapter) b += norm_saved(s, s.D, input_grad, true, true);  // DMS norm -> projection
  if (s.qk_norm) {  // per-head norms on q and k (their outputs go to RoPE, which keeps none)
    const double qk = (s.H + s.K) * s.d;
    b += f32_input * qk * kF32 + norm_saved(s, qk, input_grad, s.trains, false);
  }
  if (s.dense)  // scaled q, k, v and the probabilities [H, T] (fp32) of the reference
    b += (s.H + 2 * s.K) * s.d * s.a + s.H * s.T * kF32;
  else  // blockwise: q, k, v (contiguous), output, log-sum-exp, eviction term
    b += (2 * s.H + 2 * s.K) * s.d * s.a + s.H * kF32 + s.K * s.a;
  if (s.trains) b += s.H * s.d * s.a;  // o_proj input
  b += (s.a == kF32 ? s.D * kF32 : 0) + norm_saved(s, s.D, true, s.trains, s.trains);  // h
  b += 3 * s.I * s.a + (s.trains ? s.I * s.a : 0);  // gate in/out, up (+ down's input)
  b += 6 * s.K * kF32;  // decision logits, sigmoid, log-sigmoid, key term, stacked z and e
  return b;
}

// Bytes per layer that do not scale with rows: RoPE tables cast for q and k (cos, sin),
// saved by the products when q requires a gradient.
double layer_rope_tables(const Dims& s) {
  return 4 * s.T * s.d * s.a;
}

// Bytes per position of one layer's backward temporaries beyond its saved tensors:
// attention (the output gradient made contiguous, fp32 dq, dk, dv, delta) or the MLP
// (gradients of its three [I] tensors), whichever is larger, plus the residual gradient.
double layer_backward_temp(const Dims& s) {
  double attn = s.H * s.d * s.a + (s.H + 2 * s.K) * s.d * kF32 + s.H * kF32;
  if (s.dense) attn += 2 * s.H * s.T * kF32;  // the probabilities' gradient and product
  return std::max(attn, 3 * s.I * s.a) + 2 * s.D * s.a;
}

// Blockwise score tiles alive at once in a layer's backward (probabilities, dS, casts).
double attention_tiles(const PlanInput& in, const Dims& s) {
  if (s.dense) return 0;
  const double bq = double(std::min(in.blocks.q, in.seq_len));
  const double bk = double(std::min(in.blocks.k, in.seq_len));
  return 3 * s.B * s.H * bq * bk * kF32;
}

// The final norm before the head: its input (f32), fp32 copy (half types), and with a
// trained head its normalised input and output.
double final_norm_saved(const Dims& s) {
  return (s.a == kF32 ? s.D * kF32 : 0) + norm_saved(s, s.D, true, s.trains, s.trains);
}

int64_t ceil_div(int64_t a, int64_t b) {
  return (a + b - 1) / b;
}

int64_t matrix_values_per_layer(const ModelConfig& c) {
  const int64_t D = c.hidden_size, d = c.head_dim;
  return 2 * D * c.n_heads * d + 2 * D * c.n_kv_heads * d + 3 * D * c.intermediate_size;
}

// One moment of the step: what lives then beside the weights, teacher, masters and
// optimizer state (gradients included: they come and go with the phases).
struct Phase {
  const char* name;
  double activations = 0, logits = 0, gradients = 0, optimizer = 0;
  double sum() const { return activations + logits + gradients + optimizer; }
};

// The fused LM head and KD loss (kd_loss.cpp), by phase: both final hidden states (the
// step keeps them) and per-row fp32 figures throughout; in its forward, per chunk of R
// rows, both sides' fp32 logits, log-probabilities and two products (6 x R x V fp32); in
// its backward, the student's hidden-state gradient and per chunk both log-probabilities,
// the probabilities and the chunk being made (4 x R x V fp32; a half-type copy of the
// gradient is made once one of those is gone).
struct HeadBytes {
  double forward, backward, kept;
};
HeadBytes head_bytes(const PlanInput& in, const Dims& s) {
  const double N = s.B * s.T;
  const double R = std::min(double(rows_per_chunk(in.kd_chunk, in.model.vocab_size, true)), N);
  // hidden states; KL both ways, two log-sum-exps, target logit, weight (fp32), targets (int64)
  const double kept = 2 * N * s.D * s.a + N * (6 * kF32 + 8);
  return {kept + 6 * R * s.V * kF32, kept + N * s.D * s.a + 4 * R * s.V * kF32, kept};
}

// Activations the student keeps through its backward, and their peak during the last
// layer's backward (its temporaries; with checkpointing, the recomputed layer too).
std::pair<double, double> activation_bytes(const PlanInput& in, const Dims& s) {
  const double N = s.B * s.T;
  const double noise = N * s.L * s.K * kF32;  // [L, B, K, T] fp32
  const double tail = N * final_norm_saved(s) + noise;
  const double temp = N * layer_backward_temp(s) + attention_tiles(in, s);
  if (in.activation_checkpointing) {  // each layer's input and DMS terms
    const double kept = N * s.L * (s.D * s.a + 2 * s.K * kF32) + tail;
    return {kept, kept + N * layer_saved(s, true) + layer_rope_tables(s) + temp};
  }
  const double first_layer_grad = s.trains ? 1 : 0;  // the embedding trains
  const double layers =
      N * (layer_saved(s, first_layer_grad > 0) + (s.L - 1) * layer_saved(s, true)) +
      (s.L - 1 + first_layer_grad) * layer_rope_tables(s) + tail;
  return {layers, layers + temp};
}

// The phases, in order, with what each holds beside the persistent parts (the Optimizer's
// fp32 gradient buffer among them). The backward's own gradients, in the weights' dtype
// (w), are folded into that buffer and dropped after each micro-batch: the head's comes
// first (made in fp32 by the KD backward, then cast), all of them by the end of backward.
// The optimizer step holds, on S = ceil(W / shards) values: the reduce-scattered
// gradients when sharded (fp32 [S]), the clip's fp64 squares of a chunk of at most 2^22
// values and then AdamW's denominator (two fp32 [S] at once).
std::vector<Phase> phases_of(const PlanInput& in, const ParamCounts& pc) {
  const Dims s = dims_of(in);
  const double W = double(pc.trained), w = in.dtype == PlanDtype::bf16 ? 2 : 4;
  const double shards = in.shard_optimizer ? double(in.world) : 1;
  const double S = std::ceil(W / shards);
  const double head_grad = s.trains ? s.V * s.D : 0;  // values of the head's gradient
  const HeadBytes h = head_bytes(in, s);
  const auto [act, act_peak] = activation_bytes(in, s);
  const double reduced = shards > 1 ? S * kF32 : 0;
  const double clip = 2 * std::min(S, double(int64_t(1) << 22)) * 8;
  return {{"end of forward (KD loss forward)", act, h.forward, 0, 0},
          {"top of backward (LM head and KD loss)", act, h.backward, head_grad * kF32, 0},
          {"backward of the last decoder layer", act_peak, h.kept, head_grad * w, 0},
          {"end of backward", 0, h.kept, W * w, 0},
          {"optimizer step", 0, 0, 0, reduced + std::max(clip, 2 * S * kF32)}};
}

}  // namespace

PlanInput plan_input(const RetrofitConfig& cfg, const ModelConfig& model,
                     const ModelConfig& teacher, int64_t seq_len, int64_t world, bool cuda) {
  PlanInput in;
  in.model = model;
  in.teacher = teacher;
  in.mode = cfg.dms.train_mode;
  in.predictor = cfg.dms.predictor;
  in.dtype = computes_in_bf16(cfg.optim.dtype, cuda) ? PlanDtype::bf16 : PlanDtype::f32;
  in.seq_len = seq_len;
  in.micro_batch = cfg.optim.micro_batch;
  in.grad_accum = cfg.optim.grad_accum;
  in.world = world;
  in.shard_optimizer = cfg.dist.shard_optimizer;
  in.activation_checkpointing = cfg.optim.activation_checkpointing;
  in.kd_chunk = cfg.optim.kd_chunk;
  in.attention = cfg.optim.attention;
  in.blocks = {cfg.optim.attn_block_q, cfg.optim.attn_block_k};
  return in;
}

ParamCounts count_parameters(const PlanInput& in) {
  const ModelConfig& c = in.model;
  ParamCounts pc;
  pc.base = parameter_count(c);
  pc.adapters = dms_parameter_count(c, in.predictor);
  const bool all = in.mode == TrainMode::all;
  pc.trained = all ? pc.base + pc.adapters : pc.adapters;
  pc.teacher = all ? parameter_count(in.teacher) : 0;
  return pc;
}

StepFlops step_flops(const PlanInput& in) {
  const ModelConfig& s = in.model;
  const ModelConfig& t = in.mode == TrainMode::all ? in.teacher : in.model;
  const double rows = double(in.micro_batch * in.grad_accum), T = double(in.seq_len);
  const double tokens = rows * T;
  // Visible (query, key) pairs of a row: the causal triangle, cut by a sliding window.
  auto pairs = [&](const ModelConfig& c) {
    const double w = c.sliding_window > 0 ? std::min<double>(double(c.sliding_window), T) : T;
    return rows * (w * (w + 1) / 2 + (T - w) * w);
  };
  auto attn = [&](const ModelConfig& c) {
    return double(c.n_layers) * 4.0 * double(c.head_dim * c.n_heads) * pairs(c);
  };
  const double adapter = double(
      dms_parameter_count(s, in.predictor) > 0 ? s.n_layers * s.n_kv_heads * s.hidden_size : 0);
  const double head_s = double(s.vocab_size * s.hidden_size);
  const double head_t = double(t.vocab_size * t.hidden_size);
  const double mm_s = double(s.n_layers * matrix_values_per_layer(s)) + head_s + adapter;
  const double mm_t = double(t.n_layers * matrix_values_per_layer(t)) + head_t;
  const double fwd_t = 2 * mm_t * tokens + attn(t);
  const double fwd_s = 2 * mm_s * tokens + attn(s);
  const double weight_grads = 2 * (in.mode == TrainMode::all ? mm_s : adapter) * tokens;
  const double bwd_s = 2 * mm_s * tokens + 2 * attn(s) + weight_grads;
  StepFlops f;
  f.model = fwd_t + fwd_s + bwd_s;
  if (in.activation_checkpointing) f.recompute += 2 * (mm_s - head_s) * tokens + attn(s);
  f.recompute += 2 * (head_s + head_t) * tokens;  // the fused head's logits in backward
  return f;
}

Plan plan_step(const PlanInput& in) {
  require(in.seq_len >= 1, "--seq-len", "must be at least 1");
  require(in.micro_batch >= 1, "--micro-batch", "must be at least 1");
  require(in.world >= 1, "--world-size", "must be at least 1");
  Plan p;
  p.params = count_parameters(in);
  const ParamCounts& pc = p.params;
  const int64_t w = in.dtype == PlanDtype::bf16 ? 2 : 4;
  const int64_t shards = in.shard_optimizer ? in.world : 1;
  PersistentBytes& k = p.persistent;
  k.weights = (pc.base + pc.adapters) * w;
  k.teacher = pc.teacher * w;
  k.gradient_buffer = pc.trained * kF32;  // every rank's gradients of the whole flat space
  k.master = ceil_div(pc.trained, shards) * kF32;
  k.moments = ceil_div(pc.trained, shards) * 2 * kF32;
  // The moment with the most bytes beside the persistent ones.
  const std::vector<Phase> phases = phases_of(in, p.params);
  size_t best = 0;
  for (size_t i = 0; i < phases.size(); ++i) {
    p.phases.emplace_back(phases[i].name, k.sum() + int64_t(std::llround(phases[i].sum())));
    if (phases[i].sum() > phases[best].sum()) best = i;
  }
  const Phase& top = phases[best];
  p.peak = top.name;
  p.weights = k.weights;
  p.teacher = k.teacher;
  p.master = k.master;
  p.gradients = k.gradient_buffer + int64_t(std::llround(top.gradients));
  p.optimizer = k.moments + int64_t(std::llround(top.optimizer));
  p.activations = int64_t(std::llround(top.activations));
  p.logits = int64_t(std::llround(top.logits));
  p.total = p.weights + p.teacher + p.gradients + p.master + p.optimizer + p.activations + p.logits;
  p.phases[best].second = p.total;  // the same figure, whatever the parts' rounding
  p.flops = step_flops(in);
  return p;
}

std::vector<std::pair<std::string, int64_t>> plan_parts(const Plan& p) {
  return {{"weights", p.weights},       {"teacher", p.teacher},     {"gradients", p.gradients},
          {"master weights", p.master}, {"optimizer", p.optimizer}, {"activations", p.activations},
          {"logits and KD", p.logits}};
}

double gib(int64_t bytes) {
  return double(bytes) / double(int64_t(1) << 30);
}

}  // namespace dms
