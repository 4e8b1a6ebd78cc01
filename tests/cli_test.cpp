// The `dms` binary end to end: inspect on real configs, exit codes on bad input, generate.
#include <filesystem>

#include "checkpoints/export.h"
#include "checkpoints/load_model.h"
#include "checkpoints/safetensors.h"
#include "data/token_file.h"
#include "tests/test_util.h"

namespace fs = std::filesystem;

namespace dms {
namespace {

using test::asset;
using test::quote;

TEST(Cli, InspectReportsFamilyAndParameterCountOfRealConfigs) {
  const std::vector<std::tuple<std::string, std::string, std::string>> cases = {
      {"Llama-3.2-1B", "llama", "1,235,814,400"},
      {"Qwen2.5-0.5B-Instruct", "qwen2", "494,032,768"},
      {"Qwen3-8B", "qwen3", "8,190,735,360"},
      {"TinyLlama-1.1B-Chat-v1.0", "llama", "1,100,048,384"},
  };
  for (const auto& [dir, family, params] : cases) {
    auto r = test::run_dms("inspect " + quote(asset("hf-configs/" + dir + "/config.json")));
    EXPECT_EQ(r.exit_code, 0) << r.err;
    EXPECT_NE(r.out.find("family:          " + family), std::string::npos) << r.out;
    EXPECT_NE(r.out.find("parameters:      " + params), std::string::npos) << r.out;
  }
}

TEST(Cli, InspectModelsAndTokenizers) {
  auto r = test::run_dms("inspect " + quote(asset("hf-tiny/llama_bf16")));
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("BF16"), std::string::npos) << r.out;
  r = test::run_dms("inspect " + quote(asset("stories260K/stories260K.bin")));
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("parameters:      260,032"), std::string::npos) << r.out;
  r = test::run_dms("inspect " + quote(asset("llama2-tokenizer/tokenizer.model")));
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("vocab:           32000"), std::string::npos) << r.out;
}

TEST(Cli, BadFilesExitWithCode2AndOneLineNamingTheFile) {
  test::TempDir tmp;
  for (const auto& bad : test::bad_safetensors_files()) {
    test::write_bytes(tmp.file(bad.name), bad.bytes);
    auto r = test::run_dms("inspect " + quote(tmp.file(bad.name)));
    EXPECT_EQ(r.exit_code, 2) << bad.name << ": " << r.err;
    EXPECT_NE(r.err.find(bad.name), std::string::npos) << r.err;
    EXPECT_NE(r.err.find(bad.error), std::string::npos) << r.err;
    EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
  }
  std::string bytes = test::read_bytes(asset("stories260K/stories260K.bin"));
  test::write_bytes(tmp.file("cut.bin"), bytes.substr(0, 5000));
  auto r = test::run_dms("generate --model " + quote(tmp.file("cut.bin")) + " --steps 4");
  EXPECT_EQ(r.exit_code, 2) << r.err;
  EXPECT_NE(r.err.find("cut.bin"), std::string::npos) << r.err;

  auto cfg = test::read_json(asset("hf-tiny/llama/config.json"));
  cfg["architectures"] = {"FalconForCausalLM"};
  fs::create_directories(tmp.file("falcon"));
  test::write_bytes(tmp.file("falcon/config.json"), cfg.dump());
  r = test::run_dms("inspect " + quote(tmp.file("falcon")));
  EXPECT_EQ(r.exit_code, 2) << r.err;
  EXPECT_NE(r.err.find("unknown architecture 'FalconForCausalLM'"), std::string::npos) << r.err;

  r = test::run_dms("generate --model " + quote(asset("stories260K/stories260K.bin")) +
                    " --tokenizer " + quote(asset("llama2-tokenizer/tokenizer.model")));
  EXPECT_EQ(r.exit_code, 2) << r.err;
  EXPECT_NE(r.err.find("tokenizer has 32000 pieces"), std::string::npos) << r.err;

  r = test::run_dms("generate --steps 3");
  EXPECT_EQ(r.exit_code, 2) << r.err;  // --model is required
  r = test::run_dms("inspect " + quote(tmp.file("does-not-exist")));
  EXPECT_EQ(r.exit_code, 2) << r.err;
}

TEST(Cli, GenerateGreedyStoryFromStories260K) {
  auto r = test::run_dms("generate --model " + quote(asset("stories260K/stories260K.bin")) +
                         " --steps 256 --temperature 0");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out, test::read_bytes(asset("stories260K/reference/greedy256_from_bos.txt")));
  EXPECT_NE(r.err.find("tokens/s"), std::string::npos) << r.err;
}

TEST(Cli, GenerateFromIdsWithoutTokenizer) {
  auto ref = test::read_json(asset("hf-tiny/qwen3/reference.json"));
  const auto row = ref["input_ids"][0].get<std::vector<int64_t>>();
  std::string ids;
  for (size_t i = 0; i < row.size(); ++i) ids += (i ? "," : "") + std::to_string(row[i]);
  auto r = test::run_dms("generate --model " + quote(asset("hf-tiny/qwen3")) + " --prompt-ids " +
                         ids + " --steps 16");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  std::string want;
  for (const auto& id : ref["greedy"]["sequences"][0])
    want += std::to_string(id.get<int64_t>()) + " ";
  want.back() = '\n';
  EXPECT_EQ(r.out, want);
}

// --dump-logits: the per-position logits and hard decisions of what eval measured, for
// comparing with other code (the Python remote code, transformers).
TEST(Cli, EvalDumpsLogitsAndDecisions) {
  test::TempDir tmp;
  const Model m = test::stories_with_adapters(16, 99);
  write_hf_model(m, tmp.file("dms"), ExportExtras{});
  const std::string data = test::small_token_file();
  auto r = test::run_dms("eval --model " + quote(tmp.file("dms")) + " --data " + quote(data) +
                         " --rows 3 --gen-rows 0 --dump-logits " + quote(tmp.file("d.safetensors")));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  SafetensorsFile f = open_safetensors(tmp.file("d.safetensors"));
  const at::Tensor tokens = f.tensor("tokens"), logits = f.tensor("logits");
  ASSERT_EQ(tokens.size(0), 3);
  Model back = load_model(tmp.file("dms"));
  ForwardOptions fo;
  fo.mode = AttentionMode::eval;
  const ForwardResult want = forward_full(back, tokens, {}, fo);
  EXPECT_TRUE(at::allclose(logits, want.logits, 1e-6, 1e-5));
  EXPECT_TRUE(at::equal(f.tensor("decisions"), want.decisions.to(at::kFloat)));
  EXPECT_GT(f.tensor("decisions").sum().item<double>(), 0.0);
  r = test::run_dms("eval --model " + quote(tmp.file("dms")) + " --data " + quote(data) +
                    " --policy window --budget 8 --rows 1 --gen-rows 0 --dump-logits " +
                    quote(tmp.file("w.safetensors")));
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.err.find("--dump-logits"), std::string::npos) << r.err;
}

TEST(Cli, GenerateReportsCompressionForDmsAndBaselines) {
  test::TempDir tmp;
  const Model m = test::stories_with_adapters(16, 1234);
  ExportExtras x;
  x.copy_files = {{asset("stories260K/tok512.model"), "tokenizer.model"}};
  write_hf_model(m, tmp.file("dms"), x);

  auto r = test::run_dms("inspect " + quote(tmp.file("dms")));
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("dms:             adapter predictor, per KV head, window 16"),
            std::string::npos)
      << r.out;

  r = test::run_dms("generate --model " + quote(tmp.file("dms")) +
                    " --prompt 'Once upon a time' --steps 120");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out.rfind("Once upon a time", 0), 0u) << r.out;
  EXPECT_NE(r.err.find("policy dms, effective KV CR "), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("end-of-sequence KV CR "), std::string::npos) << r.err;
  const double cr = std::stod(r.err.substr(r.err.find("KV CR ") + 6));
  EXPECT_GT(cr, 1.3) << r.err;
  EXPECT_NE(r.err.find("peak "), std::string::npos) << r.err;

  r = test::run_dms("generate --model " + quote(asset("stories260K/stories260K.bin")) +
                    " --policy h2o --budget 24 --steps 100");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.err.find("policy h2o (budget 24)"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("peak 25 tokens per head"), std::string::npos) << r.err;

  r = test::run_dms("generate --model " + quote(asset("stories260K/stories260K.bin")) +
                    " --policy dms");
  EXPECT_EQ(r.exit_code, 2) << r.err;
  EXPECT_NE(r.err.find("no DMS predictors"), std::string::npos) << r.err;
  r = test::run_dms("generate --model " + quote(asset("stories260K/stories260K.bin")) +
                    " --policy lru");
  EXPECT_EQ(r.exit_code, 2) << r.err;
}

TEST(Cli, HelpExplainsEachCommand) {
  for (const char* cmd : {"generate", "inspect"}) {
    auto r = test::run_dms(std::string(cmd) + " --help");
    EXPECT_EQ(r.exit_code, 0);
    EXPECT_NE(r.out.find("--"), std::string::npos) << cmd;
  }
}

}  // namespace
}  // namespace dms
