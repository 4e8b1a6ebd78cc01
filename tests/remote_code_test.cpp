// Our exports in the ecosystem: transformers (the pinned .venv) loads each family's export
// with trust_remote_code=True and computes what the C++ model computes — per-position
// logits, hard decisions, greedy generation and the evicting cache's peak entries per head —
// and without it the plain base model. The fixtures get non-trivial decisions: about half
// the keys evicted, every decision logit at least 1e-2 away from 0 (asserted), so that no
// rounding difference can flip a decision.
#include <ATen/core/grad_mode.h>
#include <gtest/gtest.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>

#include "checkpoints/export.h"
#include "checkpoints/load_model.h"
#include "checkpoints/safetensors.h"
#include "model/generate.h"
#include "model/kv_cache.h"
#include "tests/test_util.h"

namespace dms {
namespace {

constexpr int64_t kTokens = 48, kPrompt = 12, kNew = 32;

at::Tensor decision_logits(const Model& m, const at::Tensor& tokens) {
  ForwardOptions fo;
  fo.mode = AttentionMode::eval;
  return forward_full(m, tokens, {}, fo).z;  // [L, B, K, T]
}

// Scales each layer's per-head decision weights (the adapter row, or the query-neuron row
// of q_proj) so that the decision logits over `tokens` cross 0 in the widest gap between
// their middle values, layer after layer (each layer sees the ones below already
// evicting): about half the keys go, and none sits near the threshold.
void calibrate(Model& m, const at::Tensor& tokens) {
  at::NoGradGuard ng;
  const ModelConfig& c = m.config;
  const int64_t G = c.n_heads / c.n_kv_heads, d = c.head_dim;
  for (int64_t l = 0; l < c.n_layers; ++l) {
    auto& w = m.layers[size_t(l)];
    const at::Tensor z = decision_logits(m, tokens)[l][0];  // [K, T]
    for (int64_t h = 0; h < c.n_kv_heads; ++h) {
      // z = s * u - o: scale u so that its median becomes o / s.
      const at::Tensor u = (z[h] + m.dms.offset) / m.dms.scale;
      const at::Tensor sorted = std::get<0>(u.to(at::kDouble).sort());
      const auto* v = sorted.data_ptr<double>();
      int64_t best = kTokens / 2;
      for (int64_t i = kTokens * 35 / 100; i < kTokens * 65 / 100; ++i)
        if (v[i + 1] - v[i] > v[best + 1] - v[best]) best = i;
      const double threshold = 0.5 * (v[best] + v[best + 1]);
      const double f = (m.dms.offset / m.dms.scale) / threshold;
      if (m.dms.predictor == DmsPredictor::adapter) {
        w.dms_proj[h].mul_(f);
      } else {
        w.wq[h * G * d + d - 1].mul_(f);
        if (w.bq.defined()) w.bq[h * G * d + d - 1].mul_(f);
      }
      if (m.dms.per_layer) break;  // head 0 decides for all
    }
  }
}

struct Fixture {
  std::string name, model;
  DmsPredictor predictor;
  bool per_layer;
  int64_t window;
};

void PrintTo(const Fixture& f, std::ostream* os) { *os << f.name; }

class RemoteCode : public ::testing::TestWithParam<Fixture> {};

TEST_P(RemoteCode, TransformersComputesWhatWeCompute) {
  const Fixture& fx = GetParam();
  Model m = load_model(test::asset(fx.model));
  DmsConfig d;
  d.window = fx.window;
  d.predictor = fx.predictor;
  d.per_layer = fx.per_layer;
  attach_dms(m, d);
  auto gen = at::make_generator<at::CPUGeneratorImpl>(11);
  at::Tensor tokens =
      at::randint(3, std::min<int64_t>(m.config.vocab_size, 500), {1, kTokens}, gen, at::kLong);
  for (auto& w : m.layers)
    if (w.dms_proj.defined()) w.dms_proj.normal_(0.0, 1.0 / std::sqrt(double(m.config.hidden_size)), gen);
  calibrate(m, tokens);
  // Non-trivial and rounding-proof decisions.
  const at::Tensor z = decision_logits(m, tokens);
  ASSERT_GE(z.abs().min().item<double>(), 1e-2) << "a decision logit is too close to 0";
  const double evicted = z.gt(0).to(at::kDouble).mean().item<double>();
  EXPECT_GT(evicted, 0.3);
  EXPECT_LT(evicted, 0.7);

  test::TempDir tmp;
  const std::string dir = tmp.file("export");
  write_hf_model(m, dir, ExportExtras{});
  // Our side: teacher-forced logits and decisions, greedy generation through the evicting
  // cache, and the plain model's logits.
  ForwardOptions fo;
  fo.mode = AttentionMode::eval;
  const ForwardResult ours = forward_full(m, tokens, {}, fo);
  Model plain = m;
  plain.dms.enabled = false;
  const at::Tensor prompt = tokens.narrow(1, 0, kPrompt).contiguous();
  CacheOptions co;
  co.policy = CachePolicy::dms;
  KVCache cache = make_cache(m, 1, co);
  const at::Tensor new_ids = generate(m, prompt, kNew, SamplingOptions{}, {}, &cache);
  write_safetensors(tmp.file("ref.safetensors"),
                    {{"tokens", tokens},
                     {"prompt", prompt},
                     {"logits", ours.logits.contiguous()},
                     {"decisions", ours.decisions.to(at::kFloat).contiguous()},
                     {"plain_logits", forward(plain, tokens).contiguous()}});

  // The pinned reference environment (scripts/setup.sh --reference); DMS_REFERENCE_PYTHON
  // points elsewhere (e.g. an environment with another transformers version).
  const char* py = std::getenv("DMS_REFERENCE_PYTHON");
  const std::string python = py ? py : std::string(DMS_SOURCE_DIR) + "/.venv/bin/python";
  const std::string cmd = python + " " + DMS_SOURCE_DIR +
                          "/tests/remote_code_check.py " + test::quote(dir) + " " +
                          test::quote(tmp.file("ref.safetensors")) + " " + std::to_string(kNew) +
                          " 2>" + test::quote(tmp.file("py.err"));
  FILE* p = popen(cmd.c_str(), "r");
  ASSERT_NE(p, nullptr);
  std::string out;
  char buf[4096];
  for (size_t n; (n = fread(buf, 1, sizeof buf, p)) > 0;) out.append(buf, n);
  ASSERT_EQ(pclose(p), 0) << test::read_bytes(tmp.file("py.err"));
  const auto r = nlohmann::json::parse(out);

  EXPECT_EQ(r["class"], "DmsForCausalLM");
  EXPECT_LE(r["logits_max_abs_diff"].get<double>(), 1e-4);
  EXPECT_TRUE(r["decisions_equal"].get<bool>());
  std::vector<int64_t> want(new_ids.data_ptr<int64_t>(), new_ids.data_ptr<int64_t>() + new_ids.numel());
  EXPECT_EQ(r["generated"].get<std::vector<int64_t>>(), want);
  // Peak cached entries per layer and head, and the compression figures of the cache.
  const auto peak = r["peak_entries"];
  for (int64_t l = 0; l < cache.L; ++l)
    for (int64_t h = 0; h < cache.K; ++h)
      EXPECT_EQ(peak[size_t(l)][size_t(h)].get<int64_t>(), cache.peak[size_t(l * cache.K + h)])
          << "layer " << l << " head " << h;
  const CacheStats st = cache_stats(cache);
  EXPECT_NEAR(r["effective_kv_cr"].get<double>(), st.effective_kv_cr, 1e-9);
  EXPECT_NEAR(r["end_of_sequence_kv_cr"].get<double>(), st.end_kv_cr, 1e-9);
  EXPECT_GT(st.end_kv_cr, 1.2);
  // Without trust_remote_code: the plain base model.
  EXPECT_EQ(r["plain_class"], m.config.architecture);
  EXPECT_LE(r["plain_logits_max_abs_diff"].get<double>(), 1e-4);
}

INSTANTIATE_TEST_SUITE_P(
    Families, RemoteCode,
    ::testing::Values(
        Fixture{"stories260K", "stories260K/stories260K.bin", DmsPredictor::adapter, false, 8},
        Fixture{"qwen2", "hf-tiny/qwen2", DmsPredictor::adapter, false, 6},
        Fixture{"qwen3_per_layer", "hf-tiny/qwen3", DmsPredictor::adapter, true, 6},
        Fixture{"mistral_swa", "hf-tiny/mistral_swa", DmsPredictor::adapter, false, 5},
        Fixture{"llama_query_neuron", "hf-tiny/llama", DmsPredictor::query_neuron, false, 6}),
    [](const auto& info) { return info.param.name; });

}  // namespace
}  // namespace dms
