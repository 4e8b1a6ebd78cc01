// Importers and writers: safetensors (valid and hostile files), HF configs, llama2.c,
// training checkpoint directories (manifest, shards, damage).
#include <filesystem>
#include <functional>

#include "checkpoints/checkpoint_dir.h"
#include "checkpoints/export.h"
#include "checkpoints/hf_config.h"
#include "checkpoints/llama2c.h"
#include "checkpoints/load_model.h"
#include "checkpoints/safetensors.h"
#include "common/error.h"
#include "common/sha256.h"
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

// A checkpoint of step `step` in <run>: a state with an fp32 and a bf16 tensor, and the
// flat optimizer space [0, 1000) in the shards `cuts` ([0, c1), [c1, c2), ..., [ck, 1000)),
// m = i, v = 2i, master = 3i for value i.
std::string write_checkpoint(const std::string& run, int64_t step, std::vector<int64_t> cuts) {
  const std::string tmp = checkpoint_temp_dir(run, step);
  fs::create_directories(tmp);
  TrainState s;
  s.step = step;
  s.world_size = int64_t(cuts.size()) + 1;
  s.config_json = "{}";
  s.trained = {{"w", at::arange(6, at::kFloat).view({2, 3}) / 7},
               {"h", (at::arange(5, at::kFloat) / 3).to(at::kBFloat16)}};
  write_state_file(tmp + "/" + kStateFile, s);
  Manifest m{step, s.world_size, 1000, {describe_file(tmp, kStateFile)}};
  cuts.insert(cuts.begin(), 0);
  cuts.push_back(1000);
  for (size_t i = 0; i + 1 < cuts.size(); ++i) {
    const at::Tensor x = at::arange(cuts[i], cuts[i + 1], at::kFloat);
    const std::string name = shard_file_name(int64_t(i), int64_t(cuts.size()) - 1);
    write_optimizer_shard(tmp + "/" + name, {cuts[i], cuts[i + 1], 1000, x, 2 * x, 3 * x});
    ManifestFile f = describe_file(tmp, name);
    f.begin = cuts[i];
    f.end = cuts[i + 1];
    m.files.push_back(f);
  }
  publish_checkpoint(tmp, checkpoint_dir(run, step), m);
  return checkpoint_dir(run, step);
}

TEST(TrainCheckpoint, ShardsOfAnyWorldReassembleIntoAnyRange) {
  test::TempDir tmp;
  const std::string ck = write_checkpoint(tmp.path, 3, {256, 640});
  EXPECT_EQ(ck, tmp.path + "/checkpoints/step-000003");
  EXPECT_FALSE(fs::exists(checkpoint_temp_dir(tmp.path, 3)));
  const Manifest m = read_manifest(ck);
  EXPECT_EQ(m.files.size(), 4u);
  for (const auto& f : m.files) {  // sizes and digests of the files as they are on disk
    EXPECT_EQ(f.bytes, fs::file_size(ck + "/" + f.name)) << f.name;
    EXPECT_EQ(f.sha256, sha256_file(ck + "/" + f.name)) << f.name;
  }
  const TrainState s = read_train_state(ck);
  EXPECT_EQ(s.step, 3);
  EXPECT_TRUE(at::equal(s.trained[0].second, at::arange(6, at::kFloat).view({2, 3}) / 7));
  EXPECT_TRUE(at::equal(s.trained[1].second,  // bf16 values come back exactly, as fp32
                        (at::arange(5, at::kFloat) / 3).to(at::kBFloat16).to(at::kFloat)));
  for (auto [lo, hi] :
       {std::pair<int64_t, int64_t>{0, 1000}, {250, 750}, {256, 640}, {999, 1000}, {500, 500}}) {
    const OptimizerShard r = read_optimizer_range(ck, m, lo, hi);
    const at::Tensor x = at::arange(lo, hi, at::kFloat);
    EXPECT_TRUE(at::equal(r.m, x) && at::equal(r.v, 2 * x) && at::equal(r.master, 3 * x))
        << lo << ".." << hi;
  }
  EXPECT_THROW(read_optimizer_range(ck, m, 0, 1001), InputError);
}

TEST(TrainCheckpoint, DamageIsFoundAndNamed) {
  test::TempDir tmp;
  const std::string ck = write_checkpoint(tmp.path, 5, {500});
  const std::string shard = ck + "/" + shard_file_name(1, 2);
  std::string bytes = test::read_bytes(shard);
  bytes[bytes.size() - 9] ^= 0x20;  // same size, other content
  test::write_bytes(shard, bytes);
  const Manifest m = read_manifest(ck);  // sizes agree
  expect_input_error([&] { read_optimizer_range(ck, m, 400, 600); },
                     {"optim-00001-of-00002.h5", "checksum mismatch"});
  EXPECT_NO_THROW(read_optimizer_range(ck, m, 0, 500));  // the intact shard alone
  test::write_bytes(shard, bytes.substr(0, 100));
  expect_input_error([&] { read_manifest(ck); }, {"optim-00001-of-00002.h5", "100 bytes"});
  fs::remove(ck + "/" + kManifestFile);
  expect_input_error([&] { read_train_state(ck); }, {ck, "no manifest.json"});
  // Manifests that point outside the directory or do not tile the values.
  const std::string ck2 = write_checkpoint(tmp.path, 6, {500});
  auto j = test::read_json(ck2 + "/manifest.json");
  auto edit = [&](const std::function<void(nlohmann::json&)>& f, const std::string& error) {
    nlohmann::json k = j;
    f(k);
    test::write_bytes(ck2 + "/manifest.json", k.dump());
    expect_input_error([&] { read_manifest(ck2); }, {"manifest.json", error});
  };
  edit([](nlohmann::json& k) { k["files"][1]["name"] = "../state.h5"; }, "unexpected");
  edit([](nlohmann::json& k) { k["files"][2]["begin"] = 501; }, "do not tile");
  edit([](nlohmann::json& k) { k["numel"] = 1001; }, "cover 1000 of 1001");
  edit([](nlohmann::json& k) { k["files"].erase(0); }, "exactly one state file");
  edit([](nlohmann::json& k) { k["format"] = "x"; }, "not a");
  edit([](nlohmann::json& k) { k["kept_for_cr"] = 0.5; }, "kept_for_cr must be");
  // Floats where integers belong, 7e115 among them (converting it to int64 is undefined
  // behaviour: found by fuzz_checkpoint_manifest), and counts past int64.
  edit([](nlohmann::json& k) { k["numel"] = 7e115; }, "'numel' is not an integer");
  edit([](nlohmann::json& k) { k["step"] = 6.0; }, "'step' is not an integer");
  edit([](nlohmann::json& k) { k["files"][1]["end"] = uint64_t(1) << 63; }, "'end' is not an");
  edit([](nlohmann::json& k) { k["files"][0]["bytes"] = -3; }, "'bytes' is negative");
  test::write_bytes(ck2 + "/manifest.json", "{");
  expect_input_error([&] { read_manifest(ck2); }, {"manifest.json", "not valid JSON"});
}

TEST(TrainCheckpoint, ListingPruningAndReplacing) {
  test::TempDir tmp;
  for (int64_t step : {2, 10, 4, 1000000}) write_checkpoint(tmp.path, step, {});
  fs::create_directories(checkpoint_temp_dir(tmp.path, 12));  // an interrupted save
  test::write_bytes(tmp.path + "/checkpoints/step-000012.h5", "an old single-file checkpoint");
  auto all = list_checkpoints(tmp.path);
  ASSERT_EQ(all.size(), 4u);  // numeric order, no temporaries, no files
  EXPECT_EQ(fs::path(all[0]).filename(), "step-000002");
  EXPECT_EQ(fs::path(all[2]).filename(), "step-000010");
  EXPECT_EQ(fs::path(all[3]).filename(), "step-1000000");
  // Publishing a step that exists (a damaged one a resume skipped) replaces it.
  fs::remove(all[1] + "/" + kManifestFile);
  write_checkpoint(tmp.path, 4, {100});
  EXPECT_EQ(read_manifest(all[1]).files.size(), 3u);
  // Step 2 was kept for a CR (the curve's): pruning neither deletes nor counts it.
  auto m2 = test::read_json(all[0] + "/" + kManifestFile);
  m2["kept_for_cr"] = 2.0;
  test::write_bytes(all[0] + "/" + kManifestFile, m2.dump());
  EXPECT_EQ(read_manifest(all[0]).kept_for_cr, 2.0);
  prune_checkpoints(tmp.path, 2);
  all = list_checkpoints(tmp.path);
  ASSERT_EQ(all.size(), 3u);
  EXPECT_EQ(fs::path(all[0]).filename(), "step-000002");
  all.erase(all.begin());
  EXPECT_EQ(fs::path(all[0]).filename(), "step-000010");
  EXPECT_FALSE(fs::exists(checkpoint_temp_dir(tmp.path, 12)));
  for (const auto& e : fs::directory_iterator(tmp.path + "/checkpoints"))
    EXPECT_NE(e.path().filename().string()[0], '.') << e.path();
}

}  // namespace
}  // namespace dms
