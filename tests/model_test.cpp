// The transformer against independent references: llama2.c's run.c on stories260K and
// Hugging Face transformers on the hf-tiny fixtures; plus cache/padding invariants.
#include <fstream>

#include "checkpoints/hf_config.h"
#include "checkpoints/load_model.h"
#include "data/tokenizer.h"
#include "model/generate.h"
#include "tests/test_util.h"

namespace dms {
namespace {

using test::asset;

const Model& stories() {
  static Model m = load_model(asset("stories260K/stories260K.bin"));
  return m;
}

at::Tensor ids_tensor(const std::vector<int64_t>& ids) {
  return at::tensor(ids, at::kLong).unsqueeze(0);  // [1, T]
}

TEST(Stories260K, LogitsMatchLlama2cOnPrompt) {
  auto ref = test::read_json(asset("stories260K/reference/logits_once_upon_a_time_8pos.json"));
  at::Tensor logits = forward(stories(), ids_tensor(test::json_ids(ref["input_ids"])))[0];
  ASSERT_EQ(ref["positions"].size(), 8u);
  for (const auto& pos : ref["positions"]) {
    const int64_t p = pos["pos"].get<int64_t>();
    at::Tensor want = test::json_tensor(pos["logits"]);
    EXPECT_LT(test::max_abs_diff(logits[p], want), 1e-4) << "position " << p;
    EXPECT_EQ(logits[p].argmax().item<int64_t>(), pos["argmax"].get<int64_t>());
  }
}

TEST(Stories260K, AllGreedyRowsMatchLlama2cTeacherForced) {
  auto ref = test::read_json(asset("stories260K/reference/greedy256_from_bos.json"));
  std::vector<int64_t> ids = test::json_ids(ref["ids"]);
  ASSERT_EQ(ids.size(), 257u);
  const std::string raw = test::read_bytes(asset("stories260K/reference/greedy256_logits.f32"));
  ASSERT_EQ(raw.size(), 256u * 512u * 4u);
  at::Tensor want = at::empty({256, 512}, at::kFloat);
  std::memcpy(want.data_ptr<float>(), raw.data(), raw.size());
  std::vector<int64_t> inputs(ids.begin(), ids.end() - 1);
  at::Tensor got = forward(stories(), ids_tensor(inputs))[0];  // [256, 512]
  EXPECT_LT(test::max_abs_diff(got, want), 1e-4);
}

TEST(Stories260K, GreedyFromBosReproducesIdsAndText) {
  auto ref = test::read_json(asset("stories260K/reference/greedy256_from_bos.json"));
  std::vector<int64_t> ids = test::json_ids(ref["ids"]);
  at::Tensor out = generate(stories(), ids_tensor({1}), 256, SamplingOptions{});
  std::vector<int64_t> got(out.data_ptr<int64_t>(), out.data_ptr<int64_t>() + out.numel());
  EXPECT_EQ(got, std::vector<int64_t>(ids.begin() + 1, ids.end()));

  Tokenizer tok = load_tokenizer(asset("stories260K/tok512.model"));
  std::string text = test::read_bytes(asset("stories260K/reference/greedy256_from_bos.txt"));
  ASSERT_FALSE(text.empty());
  ASSERT_EQ(text.back(), '\n');  // run.c appends a newline after the stream
  text.pop_back();
  EXPECT_EQ(tok.decode(got), text);
}

TEST(Stories260K, CachedDecodingEqualsFullForward) {
  auto ref = test::read_json(asset("stories260K/reference/greedy256_from_bos.json"));
  std::vector<int64_t> ids = test::json_ids(ref["ids"]);
  ids.resize(40);
  at::Tensor full = forward(stories(), ids_tensor(ids))[0];  // [40, V]
  KVCache cache = make_cache(stories(), 1, CacheOptions{});
  // A prompt chunk of 7, then one token at a time.
  std::vector<at::Tensor> rows{
      forward_cached(stories(), ids_tensor({ids.begin(), ids.begin() + 7}), cache)[0]};
  for (size_t i = 7; i < ids.size(); ++i)
    rows.push_back(forward_cached(stories(), ids_tensor({ids[i]}), cache)[0]);
  // Same math in a different order: float32 rounding only (logits are ~10).
  EXPECT_LT(test::max_abs_diff(at::cat(rows, 0), full), 5e-5);
  EXPECT_EQ(cache.length, 40);
}

TEST(Stories260K, RightPaddingDoesNotChangeValidPositions) {
  std::vector<int64_t> a = {1, 403, 407, 261, 378, 432, 383, 286};
  std::vector<int64_t> b = {1, 403, 407, 261, 0, 0, 0, 0};  // 4 real tokens + padding
  at::Tensor tokens = at::stack({at::tensor(a, at::kLong), at::tensor(b, at::kLong)});
  at::Tensor valid = tokens.ne(0);
  valid.select(1, 0).fill_(true);
  at::Tensor batch = forward(stories(), tokens, valid);  // [2, 8, V]
  at::Tensor alone_a = forward(stories(), ids_tensor(a))[0];
  at::Tensor alone_b = forward(stories(), ids_tensor({1, 403, 407, 261}))[0];
  // Different GEMM shapes round differently in fp32; logits are ~10, so 5e-5 is noise.
  EXPECT_LT(test::max_abs_diff(batch[0], alone_a), 5e-5);
  EXPECT_LT(test::max_abs_diff(batch[1].narrow(0, 0, 4), alone_b), 5e-5);
  EXPECT_TRUE(batch.isfinite().all().item<bool>());
}

// ---- Hugging Face fixtures -------------------------------------------------------------

class HfTiny : public ::testing::TestWithParam<std::string> {};

TEST_P(HfTiny, LogitsAndGreedyMatchTransformers) {
  const std::string dir = asset("hf-tiny/" + GetParam());
  auto ref = test::read_json(dir + "/reference.json");
  Model m = load_model(dir);
  at::Tensor input =
      at::tensor(ref["input_ids"].get<std::vector<std::vector<int64_t>>>()[0], at::kLong);
  std::vector<at::Tensor> rows;
  for (const auto& r : ref["input_ids"]) rows.push_back(at::tensor(test::json_ids(r), at::kLong));
  at::Tensor tokens = at::stack(rows);  // [2, 12]
  at::Tensor logits = forward(m, tokens);
  at::Tensor want = test::json_tensor(ref["logits"]);
  ASSERT_EQ(logits.sizes(), want.sizes());
  for (int64_t b = 0; b < 2; ++b)
    EXPECT_LT(test::max_abs_diff(logits[b], want[b]), 1e-4) << "row " << b;

  at::Tensor new_tokens = generate(m, tokens, 16, SamplingOptions{});  // [2, 16]
  auto want_new = ref["greedy"]["new_tokens"].get<std::vector<std::vector<int64_t>>>();
  for (int64_t b = 0; b < 2; ++b) {
    at::Tensor row = new_tokens[b].contiguous();
    std::vector<int64_t> got(row.data_ptr<int64_t>(), row.data_ptr<int64_t>() + row.numel());
    EXPECT_EQ(got, want_new[size_t(b)]) << "row " << b;
  }
}

INSTANTIATE_TEST_SUITE_P(Fixtures, HfTiny,
                         ::testing::Values("llama", "llama3_rope", "qwen2", "mistral",
                                           "mistral_swa", "llama_bf16", "llama_sharded", "qwen3"));

TEST(HfTinyBf16, KeepDtypeLoadsBf16WeightsAndStaysClose) {
  const std::string dir = asset("hf-tiny/llama_bf16");
  LoadOptions keep;
  keep.keep_dtype = true;
  Model m = load_model(dir, keep);
  EXPECT_EQ(m.embed.scalar_type(), at::kBFloat16);
  Model f = load_model(dir);
  EXPECT_EQ(f.embed.scalar_type(), at::kFloat);
  EXPECT_TRUE(at::equal(m.embed.to(at::kFloat), f.embed));  // upcast is exact
}

TEST(HfTinyFeatures, SlidingWindowAndRopeScalingMatter) {
  // Guards against the fixtures silently agreeing: the features change the logits.
  Model swa = load_model(asset("hf-tiny/mistral_swa"));
  Model full = load_model(asset("hf-tiny/mistral"));
  at::Tensor t = at::arange(1, 13, at::kLong).unsqueeze(0);
  EXPECT_GT(test::max_abs_diff(forward(swa, t), forward(full, t)), 0.1);
  EXPECT_LT(test::max_abs_diff(forward(swa, t.narrow(1, 0, 8)), forward(full, t.narrow(1, 0, 8))),
            1e-6);  // identical while the sequence fits in the window
}

// ---- Real configs: build scaled-down models with random weights ------------------------

TEST(RealConfigs, ScaledDownModelsRunAndCountParameters) {
  for (const char* name :
       {"Llama-3.2-1B", "Qwen2.5-0.5B-Instruct", "Qwen3-8B", "TinyLlama-1.1B-Chat-v1.0"}) {
    ModelConfig c = read_hf_config(asset(std::string("hf-configs/") + name + "/config.json"));
    // Keep the architecture (GQA ratio, biases, norms, rope), shrink the sizes.
    const int64_t group = c.n_heads / c.n_kv_heads;
    c.n_layers = 2;
    c.n_kv_heads = 2;
    c.n_heads = 2 * group;
    c.head_dim = 8;
    c.hidden_size = 32;
    c.intermediate_size = 48;
    c.vocab_size = 300;
    Model m = make_model(c);
    init_random(m, 7);
    int64_t count = 0;
    for (auto& [n, t] : named_weights(m)) count += t->numel();
    EXPECT_EQ(count, parameter_count(c)) << name;
    at::Tensor logits = forward(m, at::randint(0, 300, {2, 9}, at::kLong));
    EXPECT_EQ(logits.sizes(), (at::IntArrayRef{2, 9, 300})) << name;
    EXPECT_TRUE(logits.isfinite().all().item<bool>()) << name;
  }
}

TEST(Sampling, TopPIsDeterministicAndRespectsTheNucleus) {
  at::Tensor logits = at::tensor({5.0f, 4.9f, 0.0f, -3.0f}).unsqueeze(0);  // [1, 4]
  SamplingOptions o{1.0, 0.6, 123};
  Sampler a(o), b(o);
  for (int i = 0; i < 200; ++i) {
    const int64_t x = a.next(logits).item<int64_t>();
    EXPECT_EQ(x, b.next(logits).item<int64_t>());
    EXPECT_TRUE(x == 0 || x == 1);  // the top two tokens hold > 0.6 of the mass
  }
  Sampler greedy(SamplingOptions{});
  EXPECT_EQ(greedy.next(logits).item<int64_t>(), 0);
}

}  // namespace
}  // namespace dms
