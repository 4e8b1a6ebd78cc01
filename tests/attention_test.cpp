// Blockwise DMS attention against the dense reference: outputs, gradients into q, k, v
// and the eviction terms, across shapes, windows, GQA, block sizes (ragged last tiles,
// T smaller than a tile), padding, sliding windows, hard (eval) terms, bf16, and a whole
// model step; plus central differences for the eviction-term gradient.
#include <ATen/core/grad_mode.h>
#include <gtest/gtest.h>

#include <sstream>

#include "checkpoints/load_model.h"
#include "model/attention.h"
#include "model/transformer.h"
#include "test_util.h"
#include "trainer/train/losses.h"

namespace dms {
namespace {

using test::asset;

// max |a - b| / max |b|
double rel_err(const at::Tensor& a, const at::Tensor& b) {
  const double scale = b.abs().max().item<double>();
  return (a.to(at::kDouble) - b.to(at::kDouble)).abs().max().item<double>() /
         std::max(scale, 1e-30);
}

struct Case {
  int64_t B, H, K, T, d, window, bq, bk;
  bool padding = false;  // right padding in batch row 1
  int64_t sliding = 0;   // sliding window (Mistral)
  bool hard = false;     // eval-mode terms: 0 / -inf, no gradient
  std::string str() const {
    std::ostringstream s;
    s << "B" << B << " H" << H << " K" << K << " T" << T << " d" << d << " w" << window
      << " blocks " << bq << "x" << bk << (padding ? " padded" : "")
      << (sliding ? " sliding " + std::to_string(sliding) : "") << (hard ? " hard" : "");
    return s.str();
  }
};

struct Inputs {
  at::Tensor q, k, v, term, dout;
  AttentionMask mask;
};

Inputs make_inputs(const Case& c, uint64_t seed, at::ScalarType dt = at::kFloat) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  auto rnd = [&](std::vector<int64_t> shape, double s) {
    return (at::empty(shape, at::kFloat).normal_(0.0, 1.0, gen) * s).to(dt);
  };
  Inputs in;
  in.q = rnd({c.B, c.H, c.T, c.d}, 1.5).requires_grad_(true);
  in.k = rnd({c.B, c.K, c.T, c.d}, 1.5).requires_grad_(true);
  in.v = rnd({c.B, c.K, c.T, c.d}, 1.0).requires_grad_(true);
  in.dout = rnd({c.B, c.H, c.T, c.d}, 1.0);
  if (c.hard) {
    at::Tensor evict = at::empty({c.B, c.K, c.T}, at::kFloat).uniform_(0.0, 1.0, gen).lt(0.6);
    in.term = at::zeros({c.B, c.K, c.T}, dt).masked_fill(evict, -INFINITY);
  } else {
    // logsigmoid(-a) with a spread over (-8, 8): from ~0 (kept) to ~-8 (evicted).
    in.term = at::log_sigmoid(rnd({c.B, c.K, c.T}, 4.0).to(at::kFloat)).to(dt).requires_grad_(true);
  }
  in.mask.key_term = in.term;
  in.mask.window = c.window;
  in.mask.sliding_window = c.sliding;
  if (c.padding) {
    at::Tensor valid = at::ones({c.B, c.T}, at::kBool);
    valid[c.B - 1].narrow(0, c.T - c.T / 3, c.T / 3).fill_(false);
    in.mask.key_valid = valid;
  }
  return in;
}

struct Result {
  at::Tensor out, dq, dk, dv, dterm;
};

Result run(const Inputs& in, bool blockwise, const AttentionBlocks& blocks) {
  for (const at::Tensor* t : {&in.q, &in.k, &in.v, &in.term})
    if (t->grad().defined()) const_cast<at::Tensor*>(t)->mutable_grad() = at::Tensor();
  at::Tensor out = blockwise ? blockwise_attention(in.q, in.k, in.v, in.mask, blocks)
                             : dense_attention(in.q, in.k, in.v, in.mask);
  (out * in.dout).sum().backward();
  Result r{out.detach(), in.q.grad(), in.k.grad(), in.v.grad(), in.term.grad()};
  return r;
}

void expect_equal(const Case& c, uint64_t seed) {
  SCOPED_TRACE(c.str());
  Inputs in = make_inputs(c, seed);
  Result want = run(in, false, {});
  Result got = run(in, true, {c.bq, c.bk});
  EXPECT_LT((got.out - want.out).abs().max().item<double>(), 1e-5);
  EXPECT_LT(rel_err(got.dq, want.dq), 1e-4);
  EXPECT_LT(rel_err(got.dk, want.dk), 1e-4);
  EXPECT_LT(rel_err(got.dv, want.dv), 1e-4);
  if (c.hard) {
    EXPECT_FALSE(got.dterm.defined());
  } else {
    ASSERT_TRUE(got.dterm.defined());
    EXPECT_LT(rel_err(got.dterm, want.dterm), 1e-4);
    // The terms matter: keys far enough back exist, so the gradient is not all zero.
    if (c.T > c.window + 1) {
      EXPECT_GT(want.dterm.abs().max().item<double>(), 1e-6);
    }
  }
}

TEST(BlockwiseAttention, EqualsDenseAcrossShapesWindowsAndBlocks) {
  const std::vector<Case> cases = {
      // B, H, K, T, d, w, bq, bk
      {2, 4, 4, 1, 8, 0, 16, 16},        // a single position
      {2, 4, 2, 5, 8, 1, 16, 32},        // T smaller than a tile
      {2, 4, 2, 64, 8, 4, 16, 16},       // exact tiles
      {2, 6, 2, 77, 16, 8, 16, 32},      // ragged last query and key tiles
      {1, 8, 1, 130, 8, 16, 32, 48},     // 8 query heads share one KV head
      {2, 4, 4, 200, 16, 0, 64, 16},     // w = 0: eviction from the first step back
      {2, 3, 3, 150, 8, 300, 32, 32},    // window longer than the sequence: no term applies
      {1, 4, 2, 333, 16, 32, 128, 256},  // the defaults, ragged
      {2, 4, 2, 97, 8, 7, 7, 13},        // odd tile sizes
      {2, 4, 2, 120, 8, 10, 200, 500},   // tiles larger than T
  };
  uint64_t seed = 1;
  for (const Case& c : cases) expect_equal(c, seed++);
}

TEST(BlockwiseAttention, EqualsDenseWithPaddingSlidingWindowAndHardTerms) {
  std::vector<Case> cases = {
      {2, 4, 2, 90, 8, 6, 32, 16},   // padding
      {2, 4, 2, 90, 8, 6, 16, 16},   // sliding window 20
      {2, 4, 2, 90, 8, 6, 32, 24},   // hard 0/-inf terms (eval mode)
      {2, 4, 4, 120, 8, 5, 32, 32},  // all three
  };
  cases[0].padding = true;
  cases[1].sliding = 20;
  cases[2].hard = true;
  cases[3].padding = true;
  cases[3].sliding = 33;
  cases[3].hard = true;
  uint64_t seed = 100;
  for (const Case& c : cases) expect_equal(c, seed++);
}

TEST(BlockwiseAttention, NoTermAndFrozenInputs) {
  // Without eviction terms it is plain causal attention; inputs that need no gradient get none.
  Case c{2, 4, 2, 70, 8, 0, 16, 32};
  Inputs in = make_inputs(c, 7);
  in.mask.key_term = at::Tensor();
  in.q = in.q.detach();
  Result want = run(in, false, {});
  Result got = run(in, true, {16, 32});
  EXPECT_LT((got.out - want.out).abs().max().item<double>(), 1e-5);
  EXPECT_FALSE(got.dq.defined());
  EXPECT_LT(rel_err(got.dk, want.dk), 1e-4);
  EXPECT_LT(rel_err(got.dv, want.dv), 1e-4);
}

TEST(BlockwiseAttention, TermGradientMatchesCentralDifferences) {
  Case c{1, 4, 2, 24, 4, 3, 8, 8};
  Inputs in = make_inputs(c, 9);
  auto f = [&](const at::Tensor& term) {
    AttentionMask m = in.mask;
    m.key_term = term;
    return (blockwise_attention(in.q.to(at::kDouble), in.k.to(at::kDouble), in.v.to(at::kDouble), m,
                                {8, 8}) *
            in.dout.to(at::kDouble))
        .sum();
  };
  at::Tensor term = in.term.detach().to(at::kDouble).requires_grad_(true);
  f(term).backward();
  at::Tensor g = term.grad();
  at::NoGradGuard ng;
  const double h = 1e-6;
  double worst = 0;
  for (int64_t kh = 0; kh < c.K; ++kh)
    for (int64_t j = 0; j < c.T; ++j) {
      at::Tensor tp = term.detach().clone(), tm = term.detach().clone();
      tp[0][kh][j] += h;
      tm[0][kh][j] -= h;
      const double fd = (f(tp).item<double>() - f(tm).item<double>()) / (2 * h);
      worst = std::max(worst, std::abs(fd - g[0][kh][j].item<double>()));
    }
  EXPECT_LT(worst / g.abs().max().item<double>(), 1e-6);
  // Keys within w of the last query never pay the term: their gradient is exactly 0.
  EXPECT_EQ(g[0].narrow(1, c.T - c.window - 1, c.window + 1).abs().max().item<double>(), 0.0);
}

TEST(BlockwiseAttention, Bf16UsesFp32StateAndStaysClose) {
  Case c{2, 4, 2, 150, 16, 10, 32, 64};
  Inputs in16 = make_inputs(c, 21, at::kBFloat16);
  Inputs in32 = in16;  // the same (rounded) values in fp32
  in32.q = in16.q.detach().to(at::kFloat).requires_grad_(true);
  in32.k = in16.k.detach().to(at::kFloat).requires_grad_(true);
  in32.v = in16.v.detach().to(at::kFloat).requires_grad_(true);
  in32.term = in16.term.detach().to(at::kFloat).requires_grad_(true);
  in32.dout = in16.dout.to(at::kFloat);
  in32.mask.key_term = in32.term;
  Result got = run(in16, true, {32, 64});
  Result want = run(in32, false, {});
  EXPECT_EQ(got.out.scalar_type(), at::kBFloat16);
  EXPECT_EQ(got.dq.scalar_type(), at::kBFloat16);
  EXPECT_EQ(got.dterm.scalar_type(), at::kBFloat16);
  // bf16 keeps 8 bits of mantissa: 2^-8 relative per rounding, a few roundings deep.
  EXPECT_LT(rel_err(got.out, want.out), 2e-2);
  EXPECT_LT(rel_err(got.dq, want.dq), 3e-2);
  EXPECT_LT(rel_err(got.dk, want.dk), 3e-2);
  EXPECT_LT(rel_err(got.dv, want.dv), 3e-2);
  EXPECT_LT(rel_err(got.dterm, want.dterm), 3e-2);
}

TEST(BlockwiseAttention, RejectsBadBlocks) {
  Case c{1, 2, 2, 8, 4, 1, 4, 4};
  Inputs in = make_inputs(c, 3);
  EXPECT_THROW(blockwise_attention(in.q, in.k, in.v, in.mask, {0, 4}), std::exception);
}

// One retrofit step's gradients through a whole model: blockwise == dense.
void expect_model_step_equal(Model& m, const at::Tensor& tokens, const at::Tensor& valid,
                             const AttentionBlocks& blocks) {
  const int64_t B = tokens.size(0), T = tokens.size(1);
  ForwardOptions to;
  to.mode = AttentionMode::teacher;
  at::Tensor teacher;
  {
    at::NoGradGuard ng;
    teacher = forward_full(m, tokens, valid, to).logits;
  }
  auto step = [&](AttentionImpl impl) {
    for (auto& [n, t] : named_weights(m))
      if (t->grad().defined()) t->mutable_grad() = at::Tensor();
    ForwardOptions so;
    so.mode = AttentionMode::train;
    so.attention = impl;
    so.blocks = blocks;
    so.noise = dms_batch_noise(5, 1, 0, B, m.config.n_layers, m.config.n_kv_heads, T);
    ForwardResult r = forward_full(m, tokens, valid, so);
    at::Tensor w = valid.defined() ? valid.reshape({-1}).to(at::kFloat) : at::ones({B * T});
    at::Tensor loss = kd_loss_sum(LogitSource::of_logits(r.logits.reshape({B * T, -1})),
                                  LogitSource::of_logits(teacher.reshape({B * T, -1})), w,
                                  KdDirection::student_teacher) +
                      dms_loss_sum(fraction_closed(r.decisions, valid, FractionOver::positions), 0.6);
    loss.backward();
    std::vector<std::pair<std::string, at::Tensor>> grads;
    for (auto& [n, t] : named_weights(m))
      if (t->requires_grad()) grads.emplace_back(n, t->grad().clone());
    return std::make_pair(r.logits.detach(), grads);
  };
  auto [want_logits, want] = step(AttentionImpl::dense);
  auto [got_logits, got] = step(AttentionImpl::blockwise);
  // Logits after L layers: relative to their scale (|logit| reaches ~20 for stories260K).
  EXPECT_LT(rel_err(got_logits, want_logits), 1e-5);
  ASSERT_EQ(got.size(), want.size());
  ASSERT_FALSE(got.empty());
  for (size_t i = 0; i < got.size(); ++i) {
    SCOPED_TRACE(got[i].first);
    ASSERT_TRUE(got[i].second.defined() && want[i].second.defined());
    if (want[i].second.abs().max().item<double>() == 0) continue;  // e.g. an untouched row
    EXPECT_LT(rel_err(got[i].second, want[i].second), 1e-4);
  }
}

TEST(BlockwiseAttention, WholeModelStepMatchesDenseStories260K) {
  Model m = load_model(asset("stories260K/stories260K.bin"));
  DmsConfig d;
  d.window = 8;
  attach_dms(m, d);
  auto gen = at::make_generator<at::CPUGeneratorImpl>(4);
  for (auto& [n, t] : named_dms_weights(m)) {
    if (n.find("norm") == std::string::npos) t->normal_(0.0, 0.02, gen);
    t->requires_grad_(true);  // adapter mode: only the predictors train
  }
  at::Tensor tokens = at::randint(1, m.config.vocab_size, {2, 100}, gen, at::kLong);
  at::Tensor valid = at::ones({2, 100}, at::kBool);
  valid[1].narrow(0, 80, 20).fill_(false);
  expect_model_step_equal(m, tokens, valid, {32, 48});
}

TEST(BlockwiseAttention, WholeModelStepMatchesDenseFullFineTuneGqa) {
  const ModelConfig c = llama_config(50, 32, 48, 2, 4, 2, 128);
  Model m = make_model(c);
  init_random(m, 8, 0.2);
  DmsConfig d;
  d.window = 5;
  attach_dms(m, d);
  auto gen = at::make_generator<at::CPUGeneratorImpl>(6);
  for (auto& [n, t] : named_weights(m)) {
    if (n.find("dms_proj") != std::string::npos) t->normal_(0.0, 0.05, gen);
    t->requires_grad_(true);  // full fine-tune: every weight trains
  }
  at::Tensor tokens = at::randint(0, c.vocab_size, {2, 70}, gen, at::kLong);
  expect_model_step_equal(m, tokens, {}, {16, 16});
}

}  // namespace
}  // namespace dms
