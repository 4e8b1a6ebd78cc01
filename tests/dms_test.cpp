#include <ATen/core/grad_mode.h>
#include <algorithm>
// DMS in the model: golden vectors from an independent implementation, exactness at
// init, gradients, noise, the evicting cache's invariant, and the eviction baselines.
#include <map>
#include <set>

#include "checkpoints/load_model.h"
#include "model/generate.h"
#include "model/kv_cache.h"
#include "tests/test_util.h"

namespace dms {
namespace {

using test::asset;

const nlohmann::json& vectors() {
  static nlohmann::json j = test::read_json(asset("dms-vectors/stories260K_dms_vectors.json"));
  return j;
}

Model stories_with_golden_adapters(int64_t window, bool per_layer) {
  Model m = load_model(asset("stories260K/stories260K.bin"));
  DmsConfig d;
  d.window = window;
  d.per_layer = per_layer;
  d.scale = vectors()["scale"];
  d.offset = vectors()["offset"];
  attach_dms(m, d);
  at::Tensor norm = test::json_tensor(vectors()["adapter_norm_weight"]);  // [L, D]
  at::Tensor proj = test::json_tensor(vectors()["adapter_proj_weight"]);  // [L, K, D]
  for (size_t l = 0; l < m.layers.size(); ++l) {
    m.layers[l].dms_norm.copy_(norm[int64_t(l)]);
    m.layers[l].dms_proj.copy_(proj[int64_t(l)]);
  }
  return m;
}

const nlohmann::json& golden_case(const std::string& name) {
  for (const auto& c : vectors()["cases"])
    if (c["name"] == name) return c;
  throw std::runtime_error("no case " + name);
}

at::Tensor golden_input() {
  return at::tensor(test::json_ids(vectors()["input_ids"]), at::kLong).unsqueeze(0);  // [1, 96]
}

void check_eval_case(const std::string& name, int64_t window, bool per_layer) {
  const auto& c = golden_case(name);
  Model m = stories_with_golden_adapters(window, per_layer);
  ForwardResult r = forward_full(m, golden_input(), {}, ForwardOptions{});
  EXPECT_LT(test::max_abs_diff(r.logits[0], test::json_tensor(c["logits"])), 1e-4);
  at::Tensor z = r.z.select(1, 0);  // [L, K, T]
  EXPECT_LT(test::max_abs_diff(z, test::json_tensor(c["decision_logits"])), 1e-3);
  EXPECT_TRUE(at::equal(r.decisions.select(1, 0), test::json_tensor(c["decisions"])));
  CompressionStats s = compression_from_decisions(r.decisions, {}, window);
  EXPECT_TRUE(at::equal(s.visible_keys.select(1, 0), test::json_tensor(c["visible_keys"])));
  EXPECT_NEAR(s.decision_cr(), c["decision_cr"].get<double>(), 1e-9);
  EXPECT_NEAR(s.effective_kv_cr(), c["effective_kv_cr"].get<double>(), 1e-9);
}

TEST(DmsGolden, EvalPerHeadWindow8) {
  check_eval_case("eval_head_w8", 8, false);
}
TEST(DmsGolden, EvalPerLayerWindow4) {
  check_eval_case("eval_layer_w4", 4, true);
}

TEST(DmsGolden, TrainModeWithGivenNoise) {
  const auto& c = golden_case("train_head_w8");
  Model m = stories_with_golden_adapters(8, false);
  m.dms.tau = c["tau"];
  ForwardOptions o;
  o.mode = AttentionMode::train;
  o.noise = test::json_tensor(c["noise"]).unsqueeze(1);  // [L, 1, K, T]
  ForwardResult r = forward_full(m, golden_input(), {}, o);
  EXPECT_LT(test::max_abs_diff(r.logits[0], test::json_tensor(c["logits"])), 1e-4);
  EXPECT_TRUE(at::equal(r.decisions.select(1, 0).detach(), test::json_tensor(c["decisions"])));
  // KL(student || teacher) per position, averaged; fraction closed over positions 1..T-1.
  at::Tensor teacher = test::json_tensor(vectors()["teacher_logits"]).to(at::kDouble);
  at::Tensor ls = at::log_softmax(r.logits[0].detach().to(at::kDouble), -1);
  at::Tensor lt = at::log_softmax(teacher, -1);
  const double kd = (ls.exp() * (ls - lt)).sum(-1).mean().item<double>();
  EXPECT_NEAR(kd, c["kd_student_teacher"].get<double>(), 1e-4);
  const double closed = r.decisions.detach().narrow(3, 1, 95).mean().item<double>();
  EXPECT_NEAR(closed, c["frac_closed"].get<double>(), 1e-6);
  // The teacher logits are the plain model's.
  Model plain = load_model(asset("stories260K/stories260K.bin"));
  EXPECT_LT(test::max_abs_diff(forward(plain, golden_input())[0], teacher), 1e-4);
}

TEST(DmsGolden, OffByOneWindowOrMissingShiftWouldBeCaught) {
  // The same adapters with window 7 must move the logits far beyond the tolerance.
  Model m = stories_with_golden_adapters(7, false);
  at::Tensor logits = forward(m, golden_input())[0];
  EXPECT_GT(test::max_abs_diff(logits, test::json_tensor(golden_case("eval_head_w8")["logits"])),
            0.5);
}

// ---- Fresh predictors leave the model unchanged ------------------------------------------

TEST(DmsInit, FreshAdaptersKeepTheOriginalLogits) {
  for (const std::string src : {"stories260K/stories260K.bin", "hf-tiny/qwen2", "hf-tiny/qwen3"}) {
    Model plain = load_model(asset(src));
    at::Tensor tokens =
        at::arange(1, 41, at::kLong).remainder(plain.config.vocab_size).unsqueeze(0);
    at::Tensor want = forward(plain, tokens);
    for (bool per_layer : {false, true}) {
      Model m = load_model(asset(src));
      DmsConfig d;
      d.window = 4;
      d.per_layer = per_layer;
      attach_dms(m, d);
      EXPECT_EQ(named_dms_weights(m).size(),
                size_t(m.config.n_layers) * (m.config.qkv_bias ? 3 : 2));
      ForwardResult r = forward_full(m, tokens, {}, ForwardOptions{});
      EXPECT_LT(test::max_abs_diff(r.logits, want), 1e-6) << src << " per_layer " << per_layer;
      EXPECT_EQ(r.decisions.sum().item<double>(), 0.0) << src;
      EXPECT_TRUE(at::allclose(r.z, at::full_like(r.z, -d.offset)));
      ForwardOptions teacher;
      teacher.mode = AttentionMode::teacher;
      EXPECT_LT(test::max_abs_diff(forward_full(m, tokens, {}, teacher).logits, want), 1e-6);
    }
  }
}

// Reference forward that removes coordinate d-1 of each group's first query head
// before and after RoPE, written from the building blocks. tokens [1, T] -> [1, T, V]
at::Tensor forward_without_query_neuron(const Model& m, const at::Tensor& tokens) {
  const ModelConfig& c = m.config;
  const int64_t T = tokens.size(1);
  at::Tensor pos = at::arange(T, at::kLong);
  auto [cos, sin] = rope_tables(c, pos);
  at::Tensor bias = attention_bias(pos, T, {}, c.sliding_window);
  at::Tensor x = at::embedding(m.embed, tokens);
  for (const auto& w : m.layers) {
    at::Tensor h = rms_norm(x, w.attn_norm, c.rms_eps);
    auto heads = [&](const at::Tensor& t, int64_t n) {
      return t.view({1, T, n, c.head_dim}).transpose(1, 2);
    };
    at::Tensor q = zero_query_neuron(heads(at::linear(h, w.wq, w.bq), c.n_heads), c.n_kv_heads);
    q = zero_query_neuron(apply_rope(q, cos, sin), c.n_kv_heads);
    at::Tensor k = apply_rope(heads(at::linear(h, w.wk, w.bk), c.n_kv_heads), cos, sin);
    at::Tensor v = heads(at::linear(h, w.wv, w.bv), c.n_kv_heads);
    at::Tensor att = grouped_attention(q, k, v, bias).transpose(1, 2).reshape({1, T, -1});
    x = x + at::linear(att, w.wo, w.bo);
    x = x + mlp(w, rms_norm(x, w.mlp_norm, c.rms_eps));
  }
  return at::linear(rms_norm(x, m.final_norm, c.rms_eps), m.lm_head);
}

TEST(DmsInit, QueryNeuronChangesTheModelOnlyThroughItsCoordinate) {
  Model m = load_model(asset("stories260K/stories260K.bin"));
  at::Tensor tokens = golden_input().narrow(1, 0, 40);
  at::Tensor original = forward(m, tokens);
  DmsConfig d;
  d.predictor = DmsPredictor::query_neuron;
  d.window = 64;  // longer than the input: decisions cannot evict anything yet
  attach_dms(m, d);
  EXPECT_TRUE(named_dms_weights(m).empty());
  // The reference is built on the dense attention: compare like with like (blockwise ==
  // dense is its own test).
  ForwardOptions dense;
  dense.attention = AttentionImpl::dense;
  ForwardResult r = forward_full(m, tokens, {}, dense);
  EXPECT_LT(test::max_abs_diff(r.logits, forward_without_query_neuron(m, tokens)), 1e-6);
  EXPECT_GT(test::max_abs_diff(r.logits, original), 1e-3);  // it does change the model
  // z reads q[..., d-1] of head 0, G, ...: scaling that weight row scales z + o.
  const int64_t d_head = m.config.head_dim;
  m.layers[0].wq[d_head - 1].mul_(2.0);
  ForwardResult r2 = forward_full(m, tokens, {}, dense);
  EXPECT_LT(test::max_abs_diff(r2.z[0][0][0] + d.offset, (r.z[0][0][0] + d.offset) * 2), 1e-3);
  EXPECT_LT(test::max_abs_diff(r2.logits, r.logits), 1e-6);  // and nothing else
}

// ---- Gradients ----------------------------------------------------------------------------

Model tiny_double_model() {
  Model m = make_model(llama_config(23, 16, 24, 2, 4, 2, 64), at::kDouble);
  init_random(m, 3, 0.3);
  DmsConfig d;
  d.window = 2;
  d.scale = 1.0;
  d.tau = 1.0;
  d.offset = 0.5;
  attach_dms(m, d);
  auto gen = at::make_generator<at::CPUGeneratorImpl>(11);
  for (auto& [n, t] : named_dms_weights(m))
    t->normal_(n.find("norm") != std::string::npos ? 1.0 : 0.0, 0.5, gen);
  return m;
}

double relative_error(double a, double b) {
  return std::abs(a - b) / std::max(1e-8, std::abs(a) + std::abs(b));
}

TEST(DmsGradients, AdapterWeightsMatchFiniteDifferences) {
  Model m = tiny_double_model();
  at::Tensor tokens = at::randint(0, 23, {2, 10}, at::kLong);
  ForwardOptions o;
  o.mode = AttentionMode::train;
  o.noise = dms_batch_noise(5, 0, 0, 2, 2, 2, 10).to(at::kDouble);
  at::Tensor R = at::randn({2, 10, 23}, at::kDouble);
  auto loss = [&] { return (forward_full(m, tokens, {}, o).logits * R).sum(); };
  for (auto& [name, t] : named_dms_weights(m)) t->requires_grad_(true);
  loss().backward();
  int checked = 0;
  for (auto& [name, t] : named_dms_weights(m)) {
    at::Tensor g = t->grad().clone();
    at::NoGradGuard ng;
    for (int64_t idx : {int64_t(0), t->numel() / 2, t->numel() - 1}) {
      double* p = t->data_ptr<double>() + idx;
      const double keep = *p, eps = 1e-6;
      *p = keep + eps;
      const double up = loss().item<double>();
      *p = keep - eps;
      const double down = loss().item<double>();
      *p = keep;
      const double fd = (up - down) / (2 * eps);
      EXPECT_LT(relative_error(fd, g.view(-1)[idx].item<double>()), 1e-4)
          << name << "[" << idx << "]";
      ++checked;
    }
  }
  EXPECT_GE(checked, 12);
}

TEST(DmsGradients, DecisionLogitsThroughSoftAttentionMatchFiniteDifferences) {
  const int64_t B = 2, H = 4, K = 2, T = 9, d = 3, w = 2;
  at::Tensor q = at::randn({B, H, T, d}, at::kDouble), k = at::randn({B, K, T, d}, at::kDouble);
  at::Tensor v = at::randn({B, K, T, d}, at::kDouble), R = at::randn({B, H, T, d}, at::kDouble);
  at::Tensor noise = at::randn({B, K, T}, at::kDouble);
  at::Tensor z = at::randn({B, K, T}, at::kDouble).requires_grad_(true);
  DmsConfig cfg;
  cfg.tau = 0.7;
  at::Tensor pos = at::arange(T, at::kLong);
  at::Tensor base = attention_bias(pos, T, {}, 0);
  auto loss = [&](const at::Tensor& zz) {
    DmsLayerTerms terms = dms_layer_terms(zz, {}, noise, AttentionMode::train, cfg);
    return (grouped_attention(q, k, v, dms_bias(terms.key_term, base, pos, w)) * R).sum();
  };
  loss(z).backward();
  at::Tensor g = z.grad();
  at::NoGradGuard ng;
  int nonzero = 0;
  for (int64_t idx = 0; idx < z.numel(); ++idx) {
    at::Tensor zp = z.detach().clone(), zm = z.detach().clone();
    zp.view(-1)[idx] += 1e-6;
    zm.view(-1)[idx] -= 1e-6;
    const double fd = (loss(zp).item<double>() - loss(zm).item<double>()) / 2e-6;
    const double an = g.view(-1)[idx].item<double>();
    if (std::abs(an) > 1e-9) ++nonzero;
    EXPECT_LT(std::abs(fd - an), 1e-4 * std::max(1.0, std::abs(fd))) << idx;
  }
  EXPECT_GT(nonzero, 10);  // only positions >= w+2 influence queries beyond the window
}

// ---- Noise --------------------------------------------------------------------------------

// Per-layer predictors: head 0's noisy decision goes to every head (the official code's
// rule), not head 0's logit plus each head's own noise. Hand-computed with tau 0.1.
TEST(DmsNoise, PerLayerDecisionsTakeHeadZerosNoiseToo) {
  DmsConfig cfg;
  cfg.tau = 0.1;
  cfg.per_layer = true;
  at::Tensor zraw = at::tensor({0.1, -0.3, 0.2, 0.05, 5.0, 5.0, -5.0, -5.0}, at::kDouble);
  at::Tensor noise = at::tensor({0.0, 0.5, -0.4, 0.1, -1.0, 1.0, -1.0, 1.0}, at::kDouble);
  at::Tensor z = apply_granularity(zraw.view({1, 2, 4}), cfg);
  DmsLayerTerms t = dms_layer_terms(z, {}, noise.view({1, 2, 4}), AttentionMode::train, cfg);
  // a = (z0 + n0) / tau = [1, 2, -2, 1.5] for both heads.
  const at::Tensor want = at::tensor({1.0, 1.0, 0.0, 1.0}, at::kDouble);
  EXPECT_TRUE(at::equal(t.decisions.detach()[0][0], want));
  EXPECT_TRUE(at::equal(t.decisions.detach()[0][1], want));
  // Key j carries the decision made at j + 1: log(1 - alpha) = logsigmoid(-a[j + 1]).
  const double term[4] = {std::log(1 / (1 + std::exp(2.0))), std::log(1 / (1 + std::exp(-2.0))),
                          std::log(1 / (1 + std::exp(1.5))), 0.0};
  for (int h = 0; h < 2; ++h)
    for (int j = 0; j < 4; ++j)
      EXPECT_NEAR(t.key_term[0][h][j].item<double>(), term[j], 1e-12) << h << " " << j;
  // Per head, head 1 keeps its own logit and noise: a = [40, 60, -60, -40] -> [1, 1, 0, 0].
  cfg.per_layer = false;
  DmsLayerTerms ph =
      dms_layer_terms(zraw.view({1, 2, 4}), {}, noise.view({1, 2, 4}), AttentionMode::train, cfg);
  EXPECT_TRUE(
      at::equal(ph.decisions.detach()[0][1], at::tensor({1.0, 1.0, 0.0, 0.0}, at::kDouble)));
}

TEST(DmsNoise, ReproducibleByKeyAndLogisticDistributed) {
  at::Tensor a = dms_noise(1, 7, 3, 2, 4, 64), b = dms_noise(1, 7, 3, 2, 4, 64);
  EXPECT_TRUE(at::equal(a, b));
  EXPECT_FALSE(at::equal(a, dms_noise(1, 7, 4, 2, 4, 64)));  // another sample (e.g. another rank's)
  EXPECT_FALSE(at::equal(a, dms_noise(1, 8, 3, 2, 4, 64)));  // another step
  EXPECT_FALSE(at::equal(a, dms_noise(2, 7, 3, 2, 4, 64)));  // another run seed
  // A batch is the stack of its samples: splitting it does not change the noise.
  at::Tensor batch = dms_batch_noise(1, 7, 2, 3, 2, 4, 64);  // samples 2, 3, 4
  EXPECT_TRUE(at::equal(batch.select(1, 1), a));
  at::Tensor big = dms_noise(9, 0, 0, 1, 1, 200000).to(at::kDouble);
  EXPECT_NEAR(big.mean().item<double>(), 0.0, 0.02);
  EXPECT_NEAR(big.var().item<double>(), M_PI * M_PI / 3.0, 0.05);
  EXPECT_NEAR(big.gt(5.0).to(at::kDouble).mean().item<double>(), 1.0 / (1.0 + std::exp(5.0)),
              0.001);
}

// ---- The evicting cache ------------------------------------------------------------------

// stories260K (fp64) with random adapters that evict about half of the tokens.
Model stories_half_evicting(int64_t window) {
  Model m = load_model(asset("stories260K/stories260K.bin"));
  for (auto& [n, t] : named_weights(m)) *t = t->to(at::kDouble);
  m.lm_head = m.embed;
  DmsConfig d;
  d.window = window;
  attach_dms(m, d);
  auto gen = at::make_generator<at::CPUGeneratorImpl>(1234);
  for (auto& w : m.layers) w.dms_proj.normal_(0.0, 0.05, gen);
  return m;
}

TEST(DmsCache, GenerationEqualsTeacherForcedHardMaskForward) {
  for (int64_t window : {8, 32}) {
    SCOPED_TRACE("window " + std::to_string(window));
    Model m = stories_half_evicting(window);
    CacheOptions co;
    co.policy = CachePolicy::dms;
    KVCache cache = make_cache(m, 1, co);
    std::vector<at::Tensor> step_logits;
    std::vector<at::Tensor> live_after;  // [L, K] after each position
    at::Tensor prompt =
        at::tensor(std::vector<int64_t>{1, 403, 407, 261, 378}, at::kLong).unsqueeze(0);
    std::vector<int64_t> seq = {1, 403, 407, 261, 378};
    // Prefill one position at a time to record per-step counts, then greedy decode.
    at::Tensor logits;
    for (int64_t t = 0; t < prompt.size(1); ++t) {
      logits = forward_cached(m, prompt.narrow(1, t, 1), cache);
      live_after.push_back(cache_stats(cache).live_lh.clone());
    }
    for (int step = 0; step < 300; ++step) {
      at::Tensor last = logits.select(1, 0);  // [1, V]
      step_logits.push_back(last[0]);
      const int64_t next = last.argmax(-1).item<int64_t>();
      seq.push_back(next);
      if (step + 1 == 300) break;
      logits = forward_cached(m, at::full({1, 1}, next, at::kLong), cache);
      live_after.push_back(cache_stats(cache).live_lh.clone());
    }
    // One teacher-forced eval-mode forward over everything that was fed in.
    std::vector<int64_t> fed(seq.begin(), seq.end() - 1);
    const int64_t T = int64_t(fed.size());
    ForwardResult r =
        forward_full(m, at::tensor(fed, at::kLong).unsqueeze(0), {}, ForwardOptions{});
    double worst = 0;
    for (size_t s = 0; s < step_logits.size(); ++s)
      worst = std::max(worst,
                       test::max_abs_diff(step_logits[s],
                                          r.logits[0][int64_t(prompt.size(1)) - 1 + int64_t(s)]));
    EXPECT_LT(worst, 1e-5);
    // Cached tokens per head at every step == keys the visibility rule leaves visible.
    CompressionStats cs = compression_from_decisions(r.decisions, {}, window);
    ASSERT_EQ(int64_t(live_after.size()), T);
    for (int64_t i = 0; i < T; ++i)
      ASSERT_TRUE(at::equal(live_after[size_t(i)], cs.visible_keys.select(1, 0).select(2, i)))
          << "position " << i;
    EXPECT_GT(cs.eviction_rate(), 0.3);
    EXPECT_LT(cs.eviction_rate(), 0.7);
    CacheStats st = cache_stats(cache);
    EXPECT_NEAR(st.effective_kv_cr, cs.effective_kv_cr(), 1e-9);
    EXPECT_GT(st.effective_kv_cr, 1.3);
    // Storage follows the live set: slots are reused, so capacity stays near the peak.
    EXPECT_LE(cache.layers[0].high, st.peak_tokens);
  }
}

// Positions each (layer, row, head) holds, sorted.
std::vector<std::vector<int64_t>> held_positions(const KVCache& kc) {
  std::vector<std::vector<int64_t>> out;
  for (const LayerCache& lc : kc.layers)
    for (int64_t bh = 0; bh < kc.B * kc.K; ++bh) {
      std::vector<int64_t> p;
      for (int64_t s = 0; s < lc.cap; ++s)
        if (lc.pos[size_t(bh * lc.cap + s)] >= 0) p.push_back(lc.pos[size_t(bh * lc.cap + s)]);
      std::sort(p.begin(), p.end());
      out.push_back(p);
    }
  return out;
}

TEST(DmsCache, PrefillEqualsTokenByTokenForEveryBulkPolicy) {
  for (int64_t sliding : {int64_t(0), int64_t(24)}) {
    Model m = stories_half_evicting(8);
    m.config.sliding_window = sliding;
    auto gen = at::make_generator<at::CPUGeneratorImpl>(77);
    at::Tensor prompt = at::randint(1, 512, {2, 90}, gen, at::kLong);
    at::Tensor more = at::randint(1, 512, {2, 20}, gen, at::kLong);
    for (CachePolicy p : {CachePolicy::full, CachePolicy::dms, CachePolicy::window}) {
      SCOPED_TRACE(policy_name(p) + " sliding " + std::to_string(sliding));
      CacheOptions co;
      co.policy = p;
      co.budget = 20;
      KVCache a = make_cache(m, 2, co), b = make_cache(m, 2, co);
      at::Tensor la = prefill(m, prompt, a);                          // [2, 1, V]
      at::Tensor lb = forward_cached(m, prompt, b).narrow(1, 89, 1);  // token by token
      EXPECT_LT(test::max_abs_diff(la, lb), 1e-9);
      EXPECT_EQ(held_positions(a), held_positions(b));
      EXPECT_EQ(a.live, b.live);
      EXPECT_EQ(a.peak, b.peak);
      EXPECT_EQ(a.reads, b.reads);
      EXPECT_EQ(a.full_reads, b.full_reads);
      // Decoding on from either cache gives the same logits and the same holdings.
      for (int64_t t = 0; t < more.size(1); ++t) {
        at::Tensor x = more.narrow(1, t, 1);
        EXPECT_LT(test::max_abs_diff(forward_cached(m, x, a), forward_cached(m, x, b)), 1e-9);
      }
      EXPECT_EQ(held_positions(a), held_positions(b));
      EXPECT_EQ(a.reads, b.reads);
      if (p == CachePolicy::dms) {
        int64_t held = 0, total = 0;
        for (const auto& h : held_positions(a)) held += int64_t(h.size()), total += 110;
        EXPECT_LT(held, total * 3 / 4);  // the rule does evict: the comparison is not vacuous
      }
    }
  }
}

TEST(DmsCache, DecodingReusesStorageInsteadOfCopyingIt) {
  // Appending and evicting touch single slots; the storage is reallocated (and copied)
  // only when every slot is taken, doubling, so a long decode reallocates O(log n) times.
  Model m = stories_half_evicting(8);
  CacheOptions co;
  co.policy = CachePolicy::dms;
  KVCache kc = make_cache(m, 1, co);
  prefill(m, at::randint(1, 512, {1, 40}, at::kLong), kc);
  const void* ptr = kc.layers[0].k.data_ptr();
  int reallocations = 0;
  for (int t = 0; t < 400; ++t) {
    forward_cached(m, at::randint(1, 512, {1, 1}, at::kLong), kc);
    if (kc.layers[0].k.data_ptr() != ptr) {
      ++reallocations;
      ptr = kc.layers[0].k.data_ptr();
    }
  }
  EXPECT_LE(reallocations, 5);  // 440 tokens but about half evicted
  // The storage follows the live tokens, not the sequence length: a head takes a new slot
  // only when none is free, so a layer's slots never exceed its heads' peak live count.
  int64_t smallest = 440;
  for (int64_t l = 0; l < kc.L; ++l) {
    int64_t peak = 0;
    for (int64_t h = 0; h < kc.K; ++h) peak = std::max(peak, kc.peak[size_t(l * kc.K + h)]);
    EXPECT_LE(kc.layers[size_t(l)].high, peak);
    smallest = std::min(smallest, kc.layers[size_t(l)].high);
  }
  EXPECT_LT(smallest, 440 * 3 / 4);
}

TEST(DmsCache, BatchedRowsEvictIndependently) {
  Model m = stories_half_evicting(16);
  CacheOptions co;
  co.policy = CachePolicy::dms;
  at::Tensor tokens = golden_input().narrow(1, 0, 80);
  at::Tensor two = at::cat({tokens, tokens.flip(1)}, 0);  // [2, 80], different decisions
  KVCache cache = make_cache(m, 2, co);
  at::Tensor got = forward_cached(m, two, cache);
  ForwardResult want = forward_full(m, two, {}, ForwardOptions{});
  EXPECT_LT(test::max_abs_diff(got, want.logits), 1e-9);
  CompressionStats cs = compression_from_decisions(want.decisions, {}, 16);
  for (int64_t l = 0; l < m.config.n_layers; ++l)
    for (int64_t b = 0; b < 2; ++b)
      for (int64_t h = 0; h < m.config.n_kv_heads; ++h)
        EXPECT_EQ(cache.live[size_t((l * 2 + b) * m.config.n_kv_heads + h)],
                  cs.visible_keys[l][b][h][79].item<int64_t>());
}

TEST(DmsCompression, StatsOfTwoHalvesAddUpToTheWholeBatch) {
  const int64_t L = 2, B = 4, K = 3, T = 20;
  auto gen = at::make_generator<at::CPUGeneratorImpl>(31);
  at::Tensor dec = at::rand({L, B, K, T}, gen).lt(0.4).to(at::kFloat);  // [L, B, K, T]
  at::Tensor valid = at::ones({B, T}, at::kBool);                       // right padding
  valid[1].narrow(0, 14, 6).fill_(false);
  valid[2].narrow(0, 9, 11).fill_(false);
  for (int64_t sliding : {int64_t(0), int64_t(6)}) {
    SCOPED_TRACE("sliding " + std::to_string(sliding));
    const CompressionStats whole = compression_from_decisions(dec, valid, 3, sliding);
    CompressionStats sum;
    sum += compression_from_decisions(dec.narrow(1, 0, 2), valid.narrow(0, 0, 2), 3, sliding);
    sum += compression_from_decisions(dec.narrow(1, 2, 2), valid.narrow(0, 2, 2), 3, sliding);
    EXPECT_EQ(sum.decisions, whole.decisions);
    EXPECT_EQ(sum.evicted, whole.evicted);
    EXPECT_EQ(sum.visible_sum, whole.visible_sum);
    EXPECT_EQ(sum.full_sum, whole.full_sum);
    EXPECT_EQ(sum.seen_sum, whole.seen_sum);
    EXPECT_EQ(sum.held_end_sum, whole.held_end_sum);
    EXPECT_EQ(sum.eviction_rate(), whole.eviction_rate());
    EXPECT_EQ(sum.decision_cr(), whole.decision_cr());
    EXPECT_EQ(sum.effective_kv_cr(), whole.effective_kv_cr());
    EXPECT_EQ(sum.end_kv_cr(), whole.end_kv_cr());
    for (auto [a, b] : {std::pair{sum.decisions_lh, whole.decisions_lh},
                        {sum.evicted_lh, whole.evicted_lh},
                        {sum.visible_lh, whole.visible_lh},
                        {sum.full_lh, whole.full_lh},
                        {sum.seen_lh, whole.seen_lh},
                        {sum.held_end_lh, whole.held_end_lh},
                        {sum.eviction_rate_lh(), whole.eviction_rate_lh()},
                        {sum.effective_cr_lh(), whole.effective_cr_lh()},
                        {sum.end_kv_cr_lh(), whole.end_kv_cr_lh()}})
      EXPECT_TRUE(at::equal(a, b));
    EXPECT_FALSE(sum.visible_keys.defined());  // per-query counts do not add up
    // The sums are the per-query counts', and the figures are not trivial.
    EXPECT_EQ(whole.visible_keys.to(at::kDouble).sum().item<double>(), whole.visible_sum);
    EXPECT_EQ(whole.seen_sum, double(L * K * (20 + 14 + 9 + 20)));
    EXPECT_EQ(whole.decisions, double(L * K * (19 + 13 + 8 + 19)));
    EXPECT_GT(whole.effective_kv_cr(), 1.2);
    EXPECT_GT(whole.end_kv_cr(), 1.2);
  }
}

TEST(DmsCache, CompressionFiguresWithASlidingWindowEqualTheCacheCounters) {
  // A sliding window shorter and longer than the DMS window: the teacher-forced figures
  // follow both rules exactly as the evicting cache does.
  for (int64_t sliding : {int64_t(0), int64_t(6), int64_t(24)}) {
    SCOPED_TRACE("sliding " + std::to_string(sliding));
    const int64_t window = 8, B = 2, T = 70;
    Model m = stories_half_evicting(window);
    m.config.sliding_window = sliding;
    auto gen = at::make_generator<at::CPUGeneratorImpl>(19);
    at::Tensor tokens = at::randint(1, 512, {B, T}, gen, at::kLong);
    CacheOptions co;
    co.policy = CachePolicy::dms;
    KVCache kc = make_cache(m, B, co);
    at::Tensor got = forward_cached(m, tokens, kc);
    ForwardResult r = forward_full(m, tokens, {}, ForwardOptions{});
    EXPECT_LT(test::max_abs_diff(got, r.logits), 1e-9);
    CompressionStats cs = compression_from_decisions(r.decisions, {}, window, sliding);
    CacheStats st = cache_stats(kc);
    EXPECT_NEAR(cs.effective_kv_cr(), st.effective_kv_cr, 1e-12 * st.effective_kv_cr);
    EXPECT_NEAR(cs.held_end_sum / double(kc.L * B * kc.K), st.mean_live, 1e-12);
    at::Tensor reads = cs.visible_keys.to(at::kDouble).sum(3);  // [L, B, K]
    for (int64_t l = 0; l < kc.L; ++l)
      for (int64_t b = 0; b < B; ++b)
        for (int64_t h = 0; h < kc.K; ++h) {
          const size_t ci = size_t((l * B + b) * kc.K + h);
          EXPECT_EQ(reads[l][b][h].item<double>(), kc.reads[ci]);
          EXPECT_EQ(cs.visible_keys[l][b][h][T - 1].item<int64_t>(), kc.live[ci]);
        }
    EXPECT_GT(cs.eviction_rate(), 0.3);  // decisions are not trivial
    if (sliding > 0) {                   // and the sliding window does shrink the cache further
      EXPECT_GT(cs.effective_kv_cr(),
                compression_from_decisions(r.decisions, {}, window).effective_kv_cr() + 0.1);
    }
  }
}

// Direct, slow reference of the baseline rules: at every step, a full masked forward
// over the prefix with per-(layer, head) visible sets, then the rule applied to the
// attention weights of the newest query.
struct ReferenceRun {
  std::vector<at::Tensor> logits;            // per step [V]
  std::vector<std::vector<int64_t>> counts;  // per step, per (l, h): tokens kept after the step
};

ReferenceRun reference_baseline(const Model& m, const std::vector<int64_t>& tokens,
                                const CacheOptions& o) {
  const int64_t L = m.config.n_layers, K = m.config.n_kv_heads, T = int64_t(tokens.size());
  std::vector<std::set<int64_t>> kept(size_t(L * K));
  std::vector<std::map<int64_t, double>> score(size_t(L * K));
  // rows[l*K+h][i] = visible set of query i
  std::vector<std::vector<std::set<int64_t>>> rows(size_t(L * K));
  ReferenceRun run;
  for (int64_t i = 0; i < T; ++i) {
    at::Tensor mask = at::zeros({L, 1, K, i + 1, i + 1}, at::kBool);
    for (int64_t lh = 0; lh < L * K; ++lh) {
      kept[size_t(lh)].insert(i);
      rows[size_t(lh)].push_back(kept[size_t(lh)]);
      for (int64_t r = 0; r <= i; ++r)
        for (int64_t j : rows[size_t(lh)][size_t(r)]) mask[lh / K][0][lh % K][r][j] = true;
    }
    ForwardOptions fo;
    fo.mode = AttentionMode::teacher;
    fo.key_mask = mask;
    fo.keep_attention = true;
    at::Tensor prefix =
        at::tensor(std::vector<int64_t>(tokens.begin(), tokens.begin() + i + 1), at::kLong)
            .unsqueeze(0);
    ForwardResult r = forward_full(m, prefix, {}, fo);
    run.logits.push_back(r.logits[0][i]);
    std::vector<int64_t> counts;
    for (int64_t lh = 0; lh < L * K; ++lh) {
      at::Tensor w = r.attention[size_t(lh / K)][0][lh % K].select(1, i).mean(0);  // [i+1]
      auto& ks = kept[size_t(lh)];
      for (int64_t j : ks) score[size_t(lh)][j] += w[j].item<double>();
      while (int64_t(ks.size()) > o.budget) {
        int64_t victim = -1;
        if (o.policy == CachePolicy::window) {
          for (int64_t j : ks)
            if (j >= o.sinks) {
              victim = j;
              break;
            }
        } else {
          const int64_t recent =
              o.policy == CachePolicy::h2o ? int64_t(double(o.budget) * o.h2o_recent) : 0;
          double best = 1e300;
          for (int64_t j : ks) {  // ascending j: ties go to the older token
            if (j > i - recent) continue;
            const double v =
                o.policy == CachePolicy::h2o ? score[size_t(lh)][j] : w[j].item<double>();
            if (v < best) {
              best = v;
              victim = j;
            }
          }
        }
        ks.erase(victim);
      }
      counts.push_back(int64_t(ks.size()));
    }
    run.counts.push_back(counts);
  }
  return run;
}

TEST(Baselines, MatchTheDirectMaskedRuleAndHoldTheBudget) {
  Model m = load_model(asset("stories260K/stories260K.bin"));
  for (auto& [n, t] : named_weights(m)) *t = t->to(at::kDouble);
  m.lm_head = m.embed;
  std::vector<int64_t> tokens = test::json_ids(vectors()["input_ids"]);
  tokens.resize(26);
  for (CachePolicy p : {CachePolicy::window, CachePolicy::h2o, CachePolicy::tova}) {
    SCOPED_TRACE(policy_name(p));
    CacheOptions o;
    o.policy = p;
    o.budget = 8;
    o.sinks = 2;
    ReferenceRun ref = reference_baseline(m, tokens, o);
    KVCache cache = make_cache(m, 1, o);
    for (int64_t i = 0; i < int64_t(tokens.size()); ++i) {
      at::Tensor logits = forward_cached(m, at::full({1, 1}, tokens[size_t(i)], at::kLong), cache);
      ASSERT_LT(test::max_abs_diff(logits[0][0], ref.logits[size_t(i)]), 1e-9) << "step " << i;
      for (int64_t lh = 0; lh < m.config.n_layers * m.config.n_kv_heads; ++lh) {
        ASSERT_EQ(cache.live[size_t(lh)], std::min<int64_t>(i + 1, o.budget)) << "step " << i;
        ASSERT_EQ(cache.live[size_t(lh)], ref.counts[size_t(i)][size_t(lh)]);
      }
    }
    EXPECT_GT(test::max_abs_diff(ref.logits.back(),
                                 forward(m, at::tensor(tokens, at::kLong).unsqueeze(0))[0][25]),
              1e-3)
        << "the budget must actually change the result";
    EXPECT_LE(cache.layers[0].high, o.budget + 1);  // freed slots are reused
  }
}

}  // namespace
}  // namespace dms
