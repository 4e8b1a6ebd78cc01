// Importers and writers: safetensors (valid and hostile files), HF configs, llama2.c.
#include <filesystem>

#include "checkpoints/export.h"
#include "checkpoints/hf_config.h"
#include "checkpoints/llama2c.h"
#include "checkpoints/load_model.h"
#include "checkpoints/safetensors.h"
#include "common/error.h"
#include "tests/test_util.h"

namespace fs = std::filesystem;

namespace dms {
namespace {

using test::asset;

// Runs f, expecting an InputError whose message contains every part.
template <typename F>
void expect_input_error(F&& f, const std::vector<std::string>& parts) {
  try {
    f();
    ADD_FAILURE() << "expected InputError containing '" << parts[0] << "'";
  } catch (const InputError& e) {
    for (const auto& p : parts)
      EXPECT_NE(std::string(e.what()).find(p), std::string::npos)
          << "message: " << e.what() << "\nmissing: " << p;
  }
}

TEST(Safetensors, RoundTripKeepsDtypesShapesValuesAndMetadata) {
  test::TempDir tmp;
  at::Tensor a = at::randn({3, 5});
  at::Tensor b = at::randn({7}).to(at::kBFloat16);
  at::Tensor c = at::randn({2, 2, 2}).to(at::kHalf);
  write_safetensors(tmp.file("x.safetensors"), {{"a", a}, {"b", b}, {"c", c}}, {{"k", "v"}});
  SafetensorsFile f = open_safetensors(tmp.file("x.safetensors"));
  EXPECT_EQ(f.metadata.at("k"), "v");
  EXPECT_EQ(f.data_offset % 8, 0u);
  EXPECT_TRUE(at::equal(f.tensor("a"), a));
  EXPECT_TRUE(at::equal(f.tensor("b"), b));
  EXPECT_TRUE(at::equal(f.tensor("c"), c));
  EXPECT_EQ(f.find("b")->dtype, "BF16");
  expect_input_error([&] { f.tensor("nope"); }, {"x.safetensors", "missing tensor 'nope'"});
  // No temporary left behind.
  EXPECT_EQ(std::distance(fs::directory_iterator(tmp.path), fs::directory_iterator()), 1);
}

TEST(Safetensors, HostileHeadersAreRejectedWithTheFileNamed) {
  test::TempDir tmp;
  for (const auto& bad : test::bad_safetensors_files()) {
    SCOPED_TRACE(bad.name);
    test::write_bytes(tmp.file(bad.name), bad.bytes);
    expect_input_error([&] { open_safetensors(tmp.file(bad.name)); }, {bad.name, bad.error});
  }
}

TEST(Safetensors, FailedWriteLeavesThePreviousFileIntact) {
  test::TempDir tmp;
  const std::string path = tmp.file("w.safetensors");
  write_safetensors(path, {{"a", at::ones({4})}});
  const std::string before = test::read_bytes(path);
  // A tensor we cannot store makes the writer throw midway.
  EXPECT_ANY_THROW(
      write_safetensors(path, {{"a", at::ones({4})}, {"z", at::ones({2}, at::kComplexFloat)}}));
  EXPECT_EQ(test::read_bytes(path), before);
  EXPECT_EQ(std::distance(fs::directory_iterator(tmp.path), fs::directory_iterator()), 1);
}

// A copy of hf-tiny/llama (config + weights) that a test may damage.
std::string copy_fixture(const test::TempDir& tmp, const std::string& name) {
  const std::string dst = tmp.file(name);
  fs::copy(asset("hf-tiny/" + name), dst, fs::copy_options::recursive);
  for (auto& e : fs::recursive_directory_iterator(dst))
    fs::permissions(e.path(), fs::perms::owner_write, fs::perm_options::add);
  fs::permissions(dst, fs::perms::owner_write, fs::perm_options::add);
  return dst;
}

TEST(HfImport, MissingTensorIsNamed) {
  test::TempDir tmp;
  const std::string dir = copy_fixture(tmp, "llama");
  SafetensorsFile f = open_safetensors(dir + "/model.safetensors");
  std::vector<std::pair<std::string, at::Tensor>> keep;
  for (const auto& e : f.entries)
    if (e.name != "model.layers.1.mlp.up_proj.weight") keep.emplace_back(e.name, f.tensor(e.name));
  write_safetensors(dir + "/model.safetensors", keep);
  expect_input_error([&] { load_model(dir); },
                     {"model.safetensors", "missing tensor 'model.layers.1.mlp.up_proj.weight'"});
}

TEST(HfImport, ShardIndexNamingAMissingFile) {
  test::TempDir tmp;
  const std::string dir = copy_fixture(tmp, "llama_sharded");
  fs::remove(dir + "/model-00002-of-00002.safetensors");
  expect_input_error(
      [&] { load_model(dir); },
      {"model.safetensors.index.json", "model-00002-of-00002.safetensors", "does not exist"});
}

TEST(HfImport, WrongShapeIsNamed) {
  test::TempDir tmp;
  const std::string dir = copy_fixture(tmp, "llama");
  auto cfg = test::read_json(dir + "/config.json");
  cfg["intermediate_size"] = 96;
  test::write_bytes(dir + "/config.json", cfg.dump());
  expect_input_error([&] { load_model(dir); }, {"mlp.gate_proj.weight", "shape"});
}

TEST(HfConfig, UnknownArchitectureAndMissingFields) {
  auto cfg = test::read_json(asset("hf-tiny/llama/config.json"));
  auto gpt2 = cfg;
  gpt2["architectures"] = {"GPT2LMHeadModel"};
  expect_input_error([&] { parse_hf_config(gpt2, "cfg.json"); },
                     {"cfg.json", "unknown architecture 'GPT2LMHeadModel'"});
  auto no_vocab = cfg;
  no_vocab.erase("vocab_size");
  expect_input_error([&] { parse_hf_config(no_vocab, "cfg.json"); },
                     {"missing required field 'vocab_size'"});
  auto bad_heads = cfg;
  bad_heads["num_key_value_heads"] = 3;
  expect_input_error([&] { parse_hf_config(bad_heads, "cfg.json"); }, {"not a multiple"});
  auto yarn = cfg;
  yarn["rope_scaling"] = {{"rope_type", "yarn"}, {"factor", 4.0}};
  expect_input_error([&] { parse_hf_config(yarn, "cfg.json"); }, {"rope_scaling type 'yarn'"});
  auto gelu = cfg;
  gelu["hidden_act"] = "gelu";
  expect_input_error([&] { parse_hf_config(gelu, "cfg.json"); }, {"hidden_act"});
}

TEST(HfConfig, FamiliesAndFeatures) {
  ModelConfig q2 = read_hf_config(asset("hf-tiny/qwen2/config.json"));
  EXPECT_EQ(q2.family, "qwen2");
  EXPECT_TRUE(q2.qkv_bias && q2.tied_embeddings && !q2.o_bias);
  ModelConfig q3 = read_hf_config(asset("hf-tiny/qwen3/config.json"));
  EXPECT_TRUE(q3.qk_norm);
  EXPECT_EQ(q3.head_dim, 16);
  EXPECT_EQ(q3.hidden_size, 48);
  ModelConfig swa = read_hf_config(asset("hf-tiny/mistral_swa/config.json"));
  EXPECT_EQ(swa.sliding_window, 8);
  ModelConfig l3 = read_hf_config(asset("hf-tiny/llama3_rope/config.json"));
  EXPECT_EQ(l3.rope_scaling.type, "llama3");
  EXPECT_EQ(l3.rope_scaling.original_max_position, 64);
}

TEST(Llama2c, HeaderAndTensorsOfStories260K) {
  ModelConfig c = read_llama2c_config(asset("stories260K/stories260K.bin"));
  EXPECT_EQ(c.hidden_size, 64);
  EXPECT_EQ(c.intermediate_size, 172);
  EXPECT_EQ(c.n_layers, 5);
  EXPECT_EQ(c.n_heads, 8);
  EXPECT_EQ(c.n_kv_heads, 4);
  EXPECT_EQ(c.vocab_size, 512);
  EXPECT_TRUE(c.tied_embeddings);
  EXPECT_EQ(parameter_count(c), 260032);
}

TEST(Llama2c, SizeNotMatchingTheHeaderIsRejected) {
  test::TempDir tmp;
  std::string bytes = test::read_bytes(asset("stories260K/stories260K.bin"));
  test::write_bytes(tmp.file("short.bin"), bytes.substr(0, bytes.size() - 4));
  expect_input_error([&] { load_llama2c(tmp.file("short.bin")); },
                     {"short.bin", "1056536 bytes but its header implies 1056540"});
  test::write_bytes(tmp.file("long.bin"), bytes + "xxxx");
  expect_input_error([&] { load_llama2c(tmp.file("long.bin")); }, {"long.bin", "implies"});
  test::write_bytes(tmp.file("tiny.bin"), bytes.substr(0, 10));
  expect_input_error([&] { load_llama2c(tmp.file("tiny.bin")); }, {"tiny.bin", "truncated"});
  std::string garbage = bytes;
  garbage[0] = '\xff';
  garbage[3] = '\x7f';  // dim = huge
  test::write_bytes(tmp.file("garbage.bin"), garbage);
  expect_input_error([&] { load_llama2c(tmp.file("garbage.bin")); }, {"garbage.bin", "dim"});
}

}  // namespace
}  // namespace dms

namespace dms {
namespace {

// The official configuration's constraints (its Qwen3ConfigDMS asserts them) hold for every
// window we allow from 2 up: 0 < dms_paged_attention_block_size < dms_window_size, alpha per
// head or layer; and every official field is written.
TEST(Export, OfficialConfigFieldsAndConstraints) {
  for (int64_t w : {2, 3, 8, 16, 32, 100, 256, 257, 512, 4096}) {
    DmsConfig d;
    d.window = w;
    const auto j = dms_config_json(d);
    EXPECT_GT(j["dms_paged_attention_block_size"].get<int64_t>(), 0) << w;
    EXPECT_LT(j["dms_paged_attention_block_size"].get<int64_t>(), w) << w;
    EXPECT_LE(j["dms_paged_attention_block_size"].get<int64_t>(), 256) << w;
    for (const char* k : {"dms_alpha_scale", "dms_initial_alpha_offset", "dms_window_size",
                          "dms_paged_attention_block_size", "dms_cr", "dms_disable_eviction",
                          "dms_separate_alpha", "dms_alpha_per", "dms_tau", "dms_compile_limit",
                          "dms_manual_inference_mode", "dms_chunked_prefill",
                          "dms_preallocate_for_tokens"})
      EXPECT_TRUE(j.contains(k)) << k;
    EXPECT_EQ(j["dms_disable_eviction"], false);
    const DmsConfig back = parse_dms_config(j, "test");
    EXPECT_EQ(back.window, w);
    EXPECT_EQ(back.predictor, d.predictor);
  }
  DmsConfig d;
  d.target_cr = 12;
  EXPECT_EQ(dms_config_json(d)["dms_cr"], 12);  // an integer, as the official default 8 is
  d.target_cr = 6.5;
  EXPECT_EQ(dms_config_json(d)["dms_cr"], 6.5);
}

// An official export's config may leave fields out: they take the official defaults
// (dms_separate_alpha false = the query-neuron predictor; scale 100, offset 5, tau 0.1).
TEST(Import, AbsentOfficialFieldsTakeTheOfficialDefaults) {
  const DmsConfig d = parse_dms_config({{"model_type", "qwen3"}, {"dms_window_size", 256}}, "c");
  EXPECT_TRUE(d.enabled);
  EXPECT_EQ(d.predictor, DmsPredictor::query_neuron);
  EXPECT_FALSE(d.per_layer);
  EXPECT_EQ(d.scale, 100.0);
  EXPECT_EQ(d.offset, 5.0);
  EXPECT_EQ(d.tau, 0.1);
  EXPECT_EQ(d.target_cr, 8.0);
  EXPECT_THROW(parse_dms_config({{"dms_window_size", 256}, {"dms_disable_eviction", true}}, "c"),
               InputError);
  // A Qwen3 model whose config.json is official-style: no architectures, only the window.
  test::TempDir tmp;
  const std::string src = test::asset("hf-tiny/qwen3");
  fs::create_directories(tmp.file("q"));
  auto cfg = test::read_json(src + "/config.json");
  cfg.erase("architectures");
  cfg["dms_window_size"] = 8;
  test::write_bytes(tmp.file("q/config.json"), cfg.dump());
  fs::copy_file(src + "/model.safetensors", tmp.file("q/model.safetensors"));
  Model m = load_model(tmp.file("q"));
  EXPECT_TRUE(m.dms.enabled);
  EXPECT_EQ(m.dms.predictor, DmsPredictor::query_neuron);
  EXPECT_EQ(m.config.family, "qwen3");
}

// Weights keep or change dtype as asked (rounded to nearest even), and past the shard size
// they go into shards with an index that load_model reads back to the same logits.
TEST(Export, DtypeAndShards) {
  const Model m = test::stories_with_adapters(16, 7);
  test::TempDir tmp;
  ExportExtras x;
  write_hf_model(m, tmp.file("f32"), x);
  x.dtype = at::kBFloat16;
  write_hf_model(m, tmp.file("bf16"), x);
  const double f32 = double(fs::file_size(tmp.file("f32/model.safetensors")));
  const double bf16 = double(fs::file_size(tmp.file("bf16/model.safetensors")));
  EXPECT_NEAR(bf16 / f32, 0.5, 0.02);
  EXPECT_EQ(test::read_json(tmp.file("bf16/config.json"))["torch_dtype"], "bfloat16");
  SafetensorsFile f = open_safetensors(tmp.file("bf16/model.safetensors"));
  const at::Tensor w = f.tensor("model.layers.0.self_attn.dms_proj_alpha.weight");
  EXPECT_EQ(w.scalar_type(), at::kBFloat16);
  EXPECT_TRUE(at::equal(w, m.layers[0].dms_proj.to(at::kBFloat16)));  // RNE, as torch rounds
  Model back = load_model(tmp.file("bf16"));
  EXPECT_TRUE(back.dms.enabled);

  x.dtype = at::kFloat;
  x.max_shard_bytes = 300'000;  // stories260K is ~1 MB in fp32: four shards
  x.report = {{"note", "sharded"}};
  write_hf_model(m, tmp.file("sharded"), x);
  EXPECT_TRUE(fs::exists(tmp.file("sharded/model.safetensors.index.json")));
  EXPECT_FALSE(fs::exists(tmp.file("sharded/model.safetensors")));
  EXPECT_TRUE(fs::exists(tmp.file("sharded/model-00001-of-00004.safetensors")));
  EXPECT_TRUE(is_dms_export(tmp.file("sharded")));  // so --force may replace it
  Model s = load_model(tmp.file("sharded"));
  at::Tensor tokens = at::arange(1, 60, at::kLong).unsqueeze(0);
  EXPECT_TRUE(at::equal(forward_full(m, tokens, {}, ForwardOptions{}).logits,
                        forward_full(s, tokens, {}, ForwardOptions{}).logits));
}

TEST(Export, DmsModelRoundTripsBitForBit) {
  Model m = load_model(test::asset("stories260K/stories260K.bin"));
  DmsConfig d;
  d.window = 16;
  d.per_layer = true;
  attach_dms(m, d);
  auto gen = at::make_generator<at::CPUGeneratorImpl>(5);
  for (auto& [n, t] : named_dms_weights(m))
    t->normal_(n.find("norm") != std::string::npos ? 1.0 : 0.0, 0.05, gen);
  test::TempDir tmp;
  const std::string out = tmp.file("export");
  ExportExtras x;
  x.copy_files = {{test::asset("stories260K/tok512.model"), "tokenizer.model"}};
  x.report = {{"note", "test"}};
  write_hf_model(m, out, x);
  EXPECT_TRUE(fs::exists(out + "/tokenizer.model"));
  EXPECT_TRUE(fs::exists(out + "/dms_report.json"));
  auto cfg = test::read_json(out + "/config.json");
  EXPECT_EQ(cfg["dms_window_size"], 16);
  EXPECT_EQ(cfg["dms_alpha_per"], "layer");
  EXPECT_EQ(cfg["dms_separate_alpha"], true);
  SafetensorsFile f = open_safetensors(out + "/model.safetensors");
  EXPECT_NE(f.find("model.layers.4.self_attn.dms_proj_alpha.weight"), nullptr);
  EXPECT_NE(f.find("model.layers.0.self_attn.dms_proj_alpha_norm.weight"), nullptr);

  Model back = load_model(out);
  EXPECT_TRUE(back.dms.enabled);
  EXPECT_TRUE(back.dms.per_layer);
  at::Tensor tokens = at::arange(1, 80, at::kLong).unsqueeze(0);
  ForwardResult a = forward_full(m, tokens, {}, ForwardOptions{});
  ForwardResult b = forward_full(back, tokens, {}, ForwardOptions{});
  EXPECT_TRUE(at::equal(a.logits, b.logits));
  EXPECT_TRUE(at::equal(a.decisions, b.decisions));
  EXPECT_GT(a.decisions.sum().item<double>(), 0.0);

  // Existing directory: refused unless overwriting; the old export stays intact.
  EXPECT_THROW(write_hf_model(m, out, x), InputError);
  EXPECT_TRUE(fs::exists(out + "/model.safetensors"));
  write_hf_model(m, out, x, /*overwrite=*/true);
  EXPECT_TRUE(at::equal(forward(load_model(out), tokens), a.logits));
  EXPECT_EQ(std::distance(fs::directory_iterator(tmp.path), fs::directory_iterator()), 1);
}

}  // namespace
}  // namespace dms
