// The step planner (trainer/plan): parameter counts against the tensors a model really
// has, the issue's reference arithmetic for Qwen3-8B, the FLOPs against an independent
// count, `dms plan` end to end, and the retrofit's refusal of a run that cannot fit.
// (Predicted against measured memory: the test Plan.PredictsMeasuredPeak, bench/plan_bench.)
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "checkpoints/load_model.h"
#include "common/error.h"
#include "tests/test_util.h"
#include "trainer/plan/plan.h"
#include "trainer/plan/plan_report.h"

namespace fs = std::filesystem;
using dms::test::asset;
using dms::test::quote;

namespace dms {
namespace {

// Every model source the tests have: stories260K, the tiny HF models (loaded), and the
// configurations of real models (allocated on the meta device: shapes without memory).
std::vector<std::pair<std::string, Model>> all_models() {
  std::vector<std::pair<std::string, Model>> out;
  out.emplace_back("stories260K", load_model(asset("stories260K/stories260K.bin")));
  for (const auto& e : fs::directory_iterator(asset("hf-tiny")))
    if (fs::exists(e.path() / "config.json"))
      out.emplace_back(e.path().filename().string(), load_model(e.path().string()));
  for (const auto& e : fs::directory_iterator(asset("hf-configs")))
    out.emplace_back(
        e.path().filename().string(),
        make_model(read_model_config(e.path().string()), at::TensorOptions().device(at::kMeta)));
  return out;
}

int64_t numel(const std::vector<std::pair<std::string, at::Tensor*>>& ts) {
  int64_t n = 0;
  for (const auto& [name, t] : ts) n += t->numel();
  return n;
}

PlanInput input_for(const ModelConfig& c, TrainMode mode, int64_t T, int64_t B = 1) {
  PlanInput in;
  in.model = in.teacher = c;
  in.mode = mode;
  in.seq_len = T;
  in.micro_batch = B;
  return in;
}

ModelConfig qwen3_8b() {
  return read_model_config(asset("hf-configs/Qwen3-8B/config.json"));
}

TEST(PlanParameters, CountsMatchTheTensorsOfEveryModel) {
  int checked = 0;
  for (auto& [name, m] : all_models()) {
    SCOPED_TRACE(name);
    PlanInput in = input_for(m.config, TrainMode::all, 16);
    const int64_t base = numel(named_weights(m));
    DmsConfig d;
    attach_dms(m, d);
    const ParamCounts pc = count_parameters(in);
    EXPECT_EQ(pc.base, base);
    EXPECT_EQ(pc.adapters, numel(named_dms_weights(m)));
    EXPECT_EQ(pc.base + pc.adapters, numel(named_weights(m)));
    EXPECT_EQ(pc.trained, pc.base + pc.adapters);
    in.mode = TrainMode::adapters;
    EXPECT_EQ(count_parameters(in).trained, pc.adapters);
    EXPECT_EQ(count_parameters(in).teacher, 0);
    in.predictor = DmsPredictor::query_neuron;  // adds no weights
    EXPECT_EQ(count_parameters(in).adapters, 0);
    ++checked;
  }
  EXPECT_GE(checked, 13);  // stories260K, 8 tiny HF models, 4 real configurations
}

TEST(PlanParameters, Qwen3_8BHas8_19BillionParameters) {
  const ParamCounts pc = count_parameters(input_for(qwen3_8b(), TrainMode::all, 1));
  EXPECT_NEAR(double(pc.base), 8.19e9, 0.005e9);
  EXPECT_EQ(pc.adapters, 36 * (8 * 4096 + 4096));  // L x (K x D + D), no attention bias
}

// The issue's figures for Qwen3-8B full-weight in bf16: 16 GB student + 16 GB teacher +
// 33 GB fp32 gradients + 33 GB fp32 masters + 66 GB AdamW = 164 GB before activations;
// masters and moments sharded over 8 ranks: about 77 GB.
TEST(PlanMemory, Qwen3_8BPersistentPartsAreTheIssuesArithmetic) {
  PlanInput in = input_for(qwen3_8b(), TrainMode::all, 8192);
  in.dtype = PlanDtype::bf16;
  in.world = 8;
  const Plan p = plan_step(in);
  const int64_t W = p.params.trained, P = p.params.base;
  const PersistentBytes& k = p.persistent;
  EXPECT_EQ(k.weights, 2 * W);
  EXPECT_EQ(k.teacher, 2 * P);
  EXPECT_EQ(k.gradient_buffer, 4 * W);
  EXPECT_EQ(k.master, 4 * W);
  EXPECT_EQ(k.moments, 8 * W);
  EXPECT_NEAR(double(k.sum()) / 1e9, 164, 1.0);
  EXPECT_GE(p.total, k.sum());
  in.shard_optimizer = true;
  const PersistentBytes s = plan_step(in).persistent;
  EXPECT_EQ(s.gradient_buffer, 4 * W);  // ZeRO-1 shards the optimizer, not the gradients
  EXPECT_EQ(s.master, (W + 7) / 8 * 4);
  EXPECT_EQ(s.moments, (W + 7) / 8 * 8);
  EXPECT_NEAR(double(s.sum()) / 1e9, 77, 1.5);
}

// The table's parts add up to the total and hold at least the persistent bytes.
TEST(PlanMemory, PartsAddUpAtThePeak) {
  for (TrainMode mode : {TrainMode::adapters, TrainMode::all})
    for (bool ckpt : {false, true}) {
      PlanInput in = input_for(qwen3_8b(), mode, 2048, 2);
      in.activation_checkpointing = ckpt;
      const Plan p = plan_step(in);
      int64_t sum = 0;
      for (const auto& [name, bytes] : plan_parts(p)) sum += bytes;
      EXPECT_EQ(sum, p.total);
      EXPECT_EQ(p.weights, p.persistent.weights);
      EXPECT_GE(p.gradients, p.persistent.gradient_buffer);
      EXPECT_GE(p.optimizer, p.persistent.moments);
      EXPECT_FALSE(p.peak.empty());
    }
}

TEST(PlanMemory, EachSwitchLowersWhatItShould) {
  const PlanInput base = input_for(qwen3_8b(), TrainMode::all, 4096, 2);
  const Plan p = plan_step(base);
  PlanInput bf = base;
  bf.dtype = PlanDtype::bf16;
  const Plan b = plan_step(bf);
  EXPECT_EQ(b.persistent.weights * 2, p.persistent.weights);
  EXPECT_EQ(b.persistent.teacher * 2, p.persistent.teacher);
  EXPECT_EQ(b.persistent.master, p.persistent.master);  // fp32 masters either way
  EXPECT_LT(b.total, p.total);
  PlanInput ck = base;
  ck.activation_checkpointing = true;
  const Plan c = plan_step(ck);
  EXPECT_LT(c.total, p.total);
  EXPECT_GT(c.flops.recompute, p.flops.recompute);
  EXPECT_EQ(c.flops.model, p.flops.model);
  PlanInput one = base;
  one.world = 4;
  PlanInput sh = one;
  sh.shard_optimizer = true;
  EXPECT_EQ(plan_step(sh).persistent.moments * 4, plan_step(one).persistent.moments);
  EXPECT_EQ(plan_step(sh).persistent.master * 4, plan_step(one).persistent.master);
  EXPECT_LT(plan_step(sh).total, plan_step(one).total);
  PlanInput ad = base;
  ad.mode = TrainMode::adapters;
  const Plan a = plan_step(ad);
  EXPECT_EQ(a.teacher, 0);
  EXPECT_LT(a.persistent.gradient_buffer, p.persistent.gradient_buffer / 1000);
  // What the activations hold: checkpointing keeps a small part of the stored layers.
  PlanInput ad_ck = ad;
  ad_ck.activation_checkpointing = true;
  EXPECT_LT(double(plan_step(ad_ck).activations), 0.3 * double(a.activations));
  // Dense attention keeps each layer's probabilities: L x B x H x T^2 x 4 bytes more.
  PlanInput de = ad;
  de.attention = AttentionImpl::dense;
  const ModelConfig& m = base.model;
  const double probs = double(m.n_layers * 2 * m.n_heads) * 4096.0 * 4096.0 * 4;
  EXPECT_GT(double(plan_step(de).activations - a.activations), probs);
}

// The FLOPs against a count of the matrices the model really multiplies by: its 2-D
// weights (the embedding is a lookup; the head multiplies by lm_head, the embedding when
// tied). At T = 1 every query sees one key, so attention is 4 x d x H per layer.
TEST(PlanFlops, MatchTheMatricesOfTheModel) {
  for (const char* name : {"hf-tiny/qwen3", "hf-tiny/llama", "stories260K/stories260K.bin"}) {
    SCOPED_TRACE(name);
    Model m = load_model(asset(name));
    const ModelConfig& c = m.config;
    double mm_base = c.tied_embeddings ? double(c.vocab_size * c.hidden_size) : 0;
    for (auto& [n, t] : named_weights(m))
      if (t->dim() == 2 && n != "model.embed_tokens.weight") mm_base += double(t->numel());
    DmsConfig d;
    attach_dms(m, d);
    double mm_adapter = 0;
    for (auto& [n, t] : named_dms_weights(m))
      if (t->dim() == 2) mm_adapter += double(t->numel());
    const double attn = double(c.n_layers * 4 * c.head_dim * c.n_heads);
    const double mm_s = mm_base + mm_adapter;
    PlanInput in = input_for(c, TrainMode::all, 1);
    // teacher fwd + student fwd + input grads + weight grads (all), per token
    EXPECT_DOUBLE_EQ(step_flops(in).model,
                     2 * mm_base + attn + 2 * mm_s + attn + 4 * mm_s + 2 * attn);
    in.mode = TrainMode::adapters;
    EXPECT_DOUBLE_EQ(step_flops(in).model,
                     2 * mm_base + attn + 2 * mm_s + attn + 2 * mm_s + 2 * mm_adapter + 2 * attn);
    // The fused head multiplies by both heads again in backward; checkpointing adds the
    // student layers' forward (not its head).
    const double head = double(c.vocab_size * c.hidden_size);
    EXPECT_DOUBLE_EQ(step_flops(in).recompute, 2 * (2 * head));
    in.activation_checkpointing = true;
    EXPECT_DOUBLE_EQ(step_flops(in).recompute, 2 * (2 * head) + 2 * (mm_s - head) + attn);
  }
}

// Visible (query, key) pairs under a sliding window, against a brute-force count. The
// matmuls are linear in T, so step(T) - T x step(1) is attention alone: 4 forwards' worth
// (teacher, student, and twice the student's in backward) of 4 x d x H per pair beyond
// the T pairs of T = 1.
TEST(PlanFlops, AttentionCountsTheVisiblePairs) {
  const ModelConfig c = read_model_config(asset("hf-tiny/mistral_swa"));
  ASSERT_GT(c.sliding_window, 0);
  const double per_pair = double(c.n_layers * 4 * c.head_dim * c.n_heads);
  const double one = step_flops(input_for(c, TrainMode::all, 1)).model;
  for (int64_t T : {c.sliding_window, 3 * c.sliding_window + 5}) {
    double pairs = 0;
    for (int64_t i = 0; i < T; ++i) pairs += double(std::min(i + 1, c.sliding_window));
    const double attention = step_flops(input_for(c, TrainMode::all, T)).model - double(T) * one;
    EXPECT_NEAR(attention, 4 * per_pair * (pairs - double(T)), 1e-9 * attention) << T;
  }
}

// --- dms plan -------------------------------------------------------------------------

std::string qwen_plan(const std::string& extra) {
  return "plan --model " + quote(asset("hf-configs/Qwen3-8B")) +
         " --train-mode all --seq-len 8192 --world-size 8 --device-memory 141 " + extra;
}

TEST(PlanCli, Qwen3_8BFullWeightFitsOnlyWithShardingCheckpointingAndBf16) {
  test::TempDir tmp;
  auto plain = test::run_dms(qwen_plan("--json " + quote(tmp.file("plain.json"))));
  ASSERT_EQ(plain.exit_code, 0) << plain.err;
  EXPECT_NE(plain.out.find("does not fit in 141 GiB"), std::string::npos) << plain.out;
  auto fits =
      test::run_dms(qwen_plan("--shard-optimizer --activation-checkpointing --dtype bf16 --json " +
                              quote(tmp.file("fits.json"))));
  ASSERT_EQ(fits.exit_code, 0) << fits.err;
  EXPECT_NE(fits.out.find("fits in 141 GiB"), std::string::npos) << fits.out;
  EXPECT_EQ(fits.out.find("does not fit"), std::string::npos) << fits.out;
  for (const char* part : {"weights", "teacher", "gradients", "master weights", "optimizer",
                           "activations", "logits and KD", "total", "step FLOPs"})
    EXPECT_NE(fits.out.find(part), std::string::npos) << part;
  const auto a = test::read_json(tmp.file("plain.json")),
             b = test::read_json(tmp.file("fits.json"));
  EXPECT_FALSE(a["fits"].get<bool>());
  EXPECT_TRUE(b["fits"].get<bool>());
  const double limit = 141.0 * double(int64_t(1) << 30);
  EXPECT_GT(a["total_bytes"].get<double>(), limit);
  EXPECT_LT(b["total_bytes"].get<double>(), limit);
  int64_t sum = 0;
  for (const auto& [k, v] : b["bytes"].items()) sum += v.get<int64_t>();
  EXPECT_EQ(sum, b["total_bytes"].get<int64_t>());
  int64_t highest = 0;  // the total is the phase that holds the most
  for (const auto& [k, v] : b["phases"].items()) highest = std::max(highest, v.get<int64_t>());
  EXPECT_EQ(highest, b["total_bytes"].get<int64_t>());
  EXPECT_EQ(b["phases"][b["peak"].get<std::string>()].get<int64_t>(), highest);
  // Without sharding the same switches are not enough: 164 GB lives before activations.
  auto unsharded = test::run_dms(qwen_plan("--activation-checkpointing --dtype bf16"));
  EXPECT_NE(unsharded.out.find("does not fit"), std::string::npos) << unsharded.out;
}

TEST(PlanCli, BadInputExitsWith2AndOneLine) {
  const std::string model = " --model " + quote(asset("hf-configs/Qwen3-8B/config.json"));
  const std::vector<std::pair<std::string, std::string>> cases = {
      {model + " --seq-len 0", "--seq-len"},
      {model + " --seq-len 64 --world-size 0", "--world-size"},
      {model + " --seq-len 64 --dtype f16", "--dtype"},
      {model + " --seq-len 64 --micro-batch -1", "--micro-batch"},
      {model + " --seq-len 64 --device-memory -5", "--device-memory"},
      {model + " --seq-len 64 --teacher " + quote(asset("hf-tiny/llama")), "--teacher"},
      {" --model /nonexistent/model --seq-len 64", "/nonexistent/model"},
      {model + " --seq-len 64 --train-mode most", "--train-mode"},
  };
  for (const auto& [args, what] : cases) {
    auto r = test::run_dms("plan" + args);
    EXPECT_EQ(r.exit_code, 2) << args << "\n" << r.out << r.err;
    EXPECT_NE(r.err.find(what), std::string::npos) << args << "\n" << r.err;
    EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
  }
  EXPECT_EQ(test::run_dms("plan" + model).exit_code, 2);  // --seq-len is required
}

// --- the retrofit's fit check -----------------------------------------------------------

// A model directory whose configuration is fine and whose weights are not: loading them
// fails, so a refusal that names the memory came before any weight was read.
std::string model_with_broken_weights(const test::TempDir& tmp) {
  nlohmann::json c = test::read_json(asset("hf-tiny/llama/config.json"));
  c["vocab_size"] = 512;  // the small token file's tokenizer
  const std::string dir = tmp.file("model");
  fs::create_directories(dir);
  test::write_bytes(dir + "/config.json", c.dump(2));
  test::write_bytes(dir + "/model.safetensors", "not a safetensors file");
  return dir;
}

TEST(RetrofitFitCheck, RefusesARunThatCannotFitBeforeReadingWeights) {
  test::TempDir tmp;
  const std::string model = model_with_broken_weights(tmp);
  auto retrofit = [&](const std::string& out, const std::string& extra) {
    return test::run_dms("retrofit --model " + quote(model) + " --data " +
                         quote(test::small_token_file()) + " --out " + quote(tmp.file(out)) +
                         " --max-steps 1 --micro-batch 2 --window 8 --train-mode all " + extra);
  };
  auto r = retrofit("small", "--device-memory 0.001");
  EXPECT_EQ(r.exit_code, 2) << r.err;
  EXPECT_NE(r.err.find("--device-memory: does not fit in"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("largest parts"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("activations"), std::string::npos) << r.err;
  EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
  EXPECT_FALSE(fs::exists(tmp.file("small")));  // nothing written
  // With room, the same run goes on to read the weights (and fails on them).
  auto roomy = retrofit("roomy", "--device-memory 100");
  EXPECT_EQ(roomy.exit_code, 2) << roomy.err;
  EXPECT_NE(roomy.err.find("model.safetensors"), std::string::npos) << roomy.err;
  EXPECT_EQ(roomy.err.find("does not fit"), std::string::npos) << roomy.err;
}

// The refusal names the switches that would make it fit, with their totals.
TEST(RetrofitFitCheck, SuggestsTheSwitchesThatWouldFit) {
  PlanInput in = input_for(qwen3_8b(), TrainMode::all, 8192);
  in.world = 8;
  const double device = 141.0 * double(int64_t(1) << 30);
  try {
    require_fit(in, device, "--device-memory");
    FAIL() << "expected a refusal";
  } catch (const InputError& e) {
    const std::string m = e.what();
    EXPECT_NE(m.find("--device-memory: does not fit in 141 GiB"), std::string::npos) << m;
    EXPECT_NE(m.find("--shard-optimizer --activation-checkpointing --dtype bf16"),
              std::string::npos)
        << m;
  }
  in.shard_optimizer = in.activation_checkpointing = true;
  in.dtype = PlanDtype::bf16;
  EXPECT_NO_THROW(require_fit(in, device, "--device-memory"));
}

}  // namespace
}  // namespace dms
