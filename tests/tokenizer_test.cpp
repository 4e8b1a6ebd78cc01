// Tokenizers against their reference implementations: Hugging Face `tokenizers` and
// `transformers` (pinned, in .venv), run by the ctest fixture tests/reference_outputs.sh
// over tests/data/tokenizer_corpus.txt and tests/data/chat_conversations.jsonl; plus the
// framing of prepared data and the errors for bad tokenizer files and bad text.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <sstream>

#include "common/error.h"
#include "data/bpe.h"
#include "data/chat_data.h"
#include "data/prepare.h"
#include "data/token_file.h"
#include "data/tokenizer.h"
#include "data/utf8.h"
#include "test_util.h"

namespace dms {
namespace {

using nlohmann::json;
using test::asset;

std::string source_file(const std::string& rel) { return std::string(DMS_SOURCE_DIR) + "/" + rel; }

std::vector<json> read_jsonl(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw std::runtime_error(path + " is missing: the Reference.Outputs fixture writes it");
  std::vector<json> out;
  for (std::string line; std::getline(in, line);) out.push_back(json::parse(line));
  return out;
}

// The cases of reference_tokenizer.py's encode mode: each line, blocks of 8 lines, all.
std::vector<std::string> corpus_cases() {
  std::ifstream in(source_file("tests/data/tokenizer_corpus.txt"), std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  const std::string text = ss.str();
  std::vector<std::string> lines;
  size_t pos = 0;
  for (size_t nl; (nl = text.find('\n', pos)) != std::string::npos; pos = nl + 1)
    lines.push_back(text.substr(pos, nl - pos));
  if (pos < text.size()) lines.push_back(text.substr(pos));
  std::vector<std::string> cases = lines;
  for (size_t i = 0; i < lines.size(); i += 8) {
    std::string block;
    for (size_t k = i; k < std::min(lines.size(), i + 8); ++k) block += (k > i ? "\n" : "") + lines[k];
    cases.push_back(block + "\n");
  }
  cases.push_back(text);
  return cases;
}

struct Family {
  std::string name;  // test name
  std::string path;  // what the user passes as --tokenizer
  std::string ref;   // reference file stem
};

void PrintTo(const Family& f, std::ostream* os) { *os << f.path; }

class CorpusTest : public ::testing::TestWithParam<Family> {};

// ids with and without the post-processor, and decode with and without special tokens,
// identical to the reference on every case (2,775 lines, 347 blocks, the whole corpus).
TEST_P(CorpusTest, IdsAndDecodeMatchTheReference) {
  const Family& f = GetParam();
  Tokenizer tok = load_tokenizer(asset(f.path));
  const auto cases = corpus_cases();
  ASSERT_GE(cases.size(), 2000u);
  const auto ref = read_jsonl(std::string(DMS_REFERENCE_DIR) + "/" + f.ref + ".jsonl");
  ASSERT_EQ(ref.size(), cases.size());
  int bad = 0;
  for (size_t i = 0; i < cases.size() && bad < 5; ++i) {
    const auto ids = tok.encode(cases[i]);
    const bool ok = ids == ref[i]["ids"].get<std::vector<int64_t>>() &&
                    tok.encode(cases[i], true) == ref[i]["ids_special"].get<std::vector<int64_t>>() &&
                    tok.decode(ids) == ref[i]["decoded"].get<std::string>() &&
                    tok.decode(ids, true) == ref[i]["decoded_skip"].get<std::string>();
    if (!ok) {
      ++bad;
      ADD_FAILURE() << f.name << " case " << i << ": " << cases[i].substr(0, 200);
    }
  }
  EXPECT_EQ(bad, 0);
}

INSTANTIATE_TEST_SUITE_P(
    Families, CorpusTest,
    ::testing::Values(Family{"qwen3", "tokenizers/qwen3/tokenizer.json", "qwen3"},
                      Family{"qwen2", "tokenizers/qwen2/tokenizer.json", "qwen2"},
                      Family{"llama3", "tokenizers/llama3/tokenizer.json", "llama3"},
                      Family{"mistral", "tokenizers/mistral/tokenizer.json", "mistral"},
                      Family{"qwen2_5_vocab_merges", "tokenizers/qwen2.5", "qwen2.5"}),
    [](const auto& info) { return info.param.name; });

// Components the real files do not use (added tokens with lstrip/rstrip/single_word/
// normalized, every Split behaviour, GPT-2's ByteLevel regex, NFKC/NFD/Replace, Metaspace
// always/never/split, unk without byte fallback, a TemplateProcessing suffix, Strip, no
// decoder): edited copies of the real files, each against `tokenizers` on 324 texts.
TEST(Variants, EveryComponentMatchesTheReference) {
  const std::string dir = std::string(DMS_REFERENCE_DIR) + "/variants";
  std::ifstream m(dir + "/manifest.json");
  ASSERT_TRUE(m.good()) << dir << "/manifest.json is missing: the Reference.Outputs fixture writes it";
  const auto names = json::parse(m).get<std::vector<std::string>>();
  EXPECT_GE(names.size(), 14u);
  for (const auto& name : names) {
    Tokenizer tok = load_tokenizer(dir + "/" + name + ".json");
    int bad = 0;
    for (const auto& r : read_jsonl(dir + "/" + name + ".jsonl")) {
      const std::string text = r["text"].get<std::string>();
      const auto ids = tok.encode(text);
      const bool ok = ids == r["ids"].get<std::vector<int64_t>>() &&
                      tok.encode(text, true) == r["ids_special"].get<std::vector<int64_t>>() &&
                      tok.decode(ids) == r["decoded"].get<std::string>() &&
                      tok.decode(ids, true) == r["decoded_skip"].get<std::string>();
      if (!ok && ++bad <= 3) ADD_FAILURE() << name << ": " << text.substr(0, 120);
    }
    EXPECT_EQ(bad, 0) << name;
  }
}

struct ChatCase {
  std::string family;
  Reasoning reasoning;
};

void PrintTo(const ChatCase& c, std::ostream* os) {
  *os << c.family << (c.reasoning == Reasoning::Keep ? " keep" : " drop");
}

class ChatTest : public ::testing::TestWithParam<ChatCase> {};

std::string chat_ref_name(const ChatCase& c) {
  const std::string fam = c.family == "qwen2.5" ? "qwen2.5" : c.family;
  return "chat_" + fam + (c.reasoning == Reasoning::Keep ? "_keep" : "_drop");
}

// Rendering and ids identical to apply_chat_template(tokenize=False / True).
TEST_P(ChatTest, RenderingAndIdsMatchApplyChatTemplate) {
  const ChatCase& c = GetParam();
  Tokenizer tok = load_tokenizer(asset("tokenizers/" + c.family));
  ChatRenderer chat(tok, c.reasoning, "26 Jul 2024");
  const auto ref = read_jsonl(std::string(DMS_REFERENCE_DIR) + "/" + chat_ref_name(c) + ".jsonl");
  std::ifstream in(source_file("tests/data/chat_conversations.jsonl"));
  size_t i = 0;
  for (std::string line; std::getline(in, line); ++i) {
    ASSERT_LT(i, ref.size());
    const std::string text = chat.render(nlohmann::ordered_json::parse(line), "conversation");
    EXPECT_EQ(text, ref[i]["text"].get<std::string>()) << "conversation " << i;
    EXPECT_EQ(tok.encode(text), ref[i]["ids"].get<std::vector<int64_t>>()) << "conversation " << i;
  }
  EXPECT_EQ(i, ref.size());
  EXPECT_GE(i, 20u);
}

INSTANTIATE_TEST_SUITE_P(Templates, ChatTest,
                         ::testing::Values(ChatCase{"qwen3", Reasoning::Keep},
                                           ChatCase{"qwen3", Reasoning::Drop},
                                           ChatCase{"qwen2.5", Reasoning::Keep},
                                           ChatCase{"qwen2.5", Reasoning::Drop},
                                           ChatCase{"llama3", Reasoning::Keep},
                                           ChatCase{"llama3", Reasoning::Drop}),
                         [](const auto& info) {
                           std::string n = chat_ref_name(info.param);
                           for (char& ch : n)
                             if (ch == '.') ch = '_';
                           return n;
                         });

// All the token rows of a file, concatenated.
std::vector<int64_t> stream_of(const std::string& path) {
  TokenData d = open_tokens(path);
  at::Tensor all = d.rows([&] {
    std::vector<int64_t> idx(size_t(d.n_rows));
    for (int64_t i = 0; i < d.n_rows; ++i) idx[size_t(i)] = i;
    return idx;
  }());
  return std::vector<int64_t>(all.data_ptr<int64_t>(), all.data_ptr<int64_t>() + all.numel());
}

// `dms data prepare --chat` end to end: the rows are apply_chat_template's ids, back to
// back, whatever the thread count.
TEST(ChatPrepare, RowsAreTheReferenceIds) {
  test::TempDir tmp;
  const auto ref = read_jsonl(std::string(DMS_REFERENCE_DIR) + "/chat_llama3_keep.jsonl");
  std::vector<int64_t> expected;
  for (const auto& r : ref)
    for (int64_t id : r["ids"].get<std::vector<int64_t>>()) expected.push_back(id);
  for (int threads : {1, 2}) {
    const std::string out = tmp.file("chat" + std::to_string(threads) + ".h5");
    auto r = test::run_dms("data prepare --chat --chat-date '26 Jul 2024' --tokenizer " +
                           test::quote(asset("tokenizers/llama3")) + " --input " +
                           test::quote(source_file("tests/data/chat_conversations.jsonl")) +
                           " --out " + test::quote(out) + " --seq-len 16 --val-fraction 0 --threads " +
                           std::to_string(threads));
    ASSERT_EQ(r.exit_code, 0) << r.err;
    const auto got = stream_of(out);
    ASSERT_EQ(got.size(), expected.size() / 16 * 16);
    EXPECT_TRUE(std::equal(got.begin(), got.end(), expected.begin()));
    EXPECT_NE(open_tokens(out).info.framing.find("chat template"), std::string::npos);
  }
}

// Each family's documents framed as it was trained, recorded in the file.
TEST(Framing, PerFamilyAndRecorded) {
  test::TempDir tmp;
  test::write_bytes(tmp.file("d.txt"), "Once upon a time.\n\nThe end of it.\n\nA third one.\n");
  struct Expect {
    std::string tokenizer;
    std::vector<int64_t> before, after;
  };
  const std::vector<Expect> cases = {
      {"stories260K/tok512.model", {1}, {}},                  // BOS only, no EOS
      {"tokenizers/llama3/tokenizer.json", {128000}, {}},     // <|begin_of_text|>
      {"tokenizers/qwen3/tokenizer.json", {}, {151643}},      // <|endoftext|> between
      {"tokenizers/qwen2.5", {}, {151643}},
      {"tokenizers/mistral/tokenizer.json", {1}, {}},         // <s>
  };
  for (const auto& c : cases) {
    Tokenizer tok = load_tokenizer(asset(c.tokenizer));
    const Framing f = tok.default_framing();
    EXPECT_EQ(f.before, c.before) << c.tokenizer;
    EXPECT_EQ(f.after, c.after) << c.tokenizer;
    PrepareOptions o;
    o.tokenizer = asset(c.tokenizer);
    o.inputs = {tmp.file("d.txt")};
    o.out = tmp.file("d.h5");
    o.seq_len = 4;
    o.val_fraction = 0;
    prepare_data(o);
    std::vector<int64_t> expected;
    for (const char* doc : {"Once upon a time.", "The end of it.", "A third one."}) {
      expected.insert(expected.end(), c.before.begin(), c.before.end());
      for (int64_t id : tok.encode(doc)) expected.push_back(id);
      expected.insert(expected.end(), c.after.begin(), c.after.end());
    }
    const auto got = stream_of(o.out);
    EXPECT_TRUE(std::equal(got.begin(), got.end(), expected.begin())) << c.tokenizer;
    const TokenData d = open_tokens(o.out);
    EXPECT_EQ(d.info.framing, tok.describe(f));
    EXPECT_EQ(d.info.eos_id, tok.eos_id());
    EXPECT_EQ(d.info.documents, 3);
  }
  // Overrides: --eos with a token's text, --bos none.
  PrepareOptions o;
  o.tokenizer = asset("stories260K/tok512.model");
  o.inputs = {tmp.file("d.txt")};
  o.out = tmp.file("o.h5");
  o.seq_len = 4;
  o.val_fraction = 0;
  o.bos = "none";
  o.eos = "</s>";
  prepare_data(o);
  Tokenizer tok = load_tokenizer(o.tokenizer);
  std::vector<int64_t> expected = tok.encode("Once upon a time.");
  expected.push_back(2);
  const auto got = stream_of(o.out);
  EXPECT_TRUE(std::equal(expected.begin(), expected.end(), got.begin()));
  EXPECT_NE(open_tokens(o.out).info.framing.find("--eos </s>"), std::string::npos);
  o.eos = "<|nope|>";
  EXPECT_THROW(prepare_data(o), InputError);
}

// The configured end token is the one training masks: Llama 3.2's <|eot_id|>, Qwen3's
// <|im_end|>; without a config, the document separator.
TEST(Framing, EndTokenIsTheConfiguredOne) {
  EXPECT_EQ(load_tokenizer(asset("tokenizers/llama3")).eos_id(), 128009);
  EXPECT_EQ(load_tokenizer(asset("tokenizers/qwen3")).eos_id(), 151645);
  EXPECT_EQ(load_tokenizer(asset("tokenizers/qwen2/tokenizer.json")).eos_id(), 151643);
  EXPECT_EQ(load_tokenizer(asset("tokenizers/llama3")).bos_id(), 128000);
}

// Bad tokenizer files: one InputError naming the file and the problem.
TEST(BadTokenizer, FilesAreInputErrorsNamingTheProblem) {
  test::TempDir tmp;
  const std::string good =
      R"({"model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "ab": 2}, "merges": ["a b"]},
          "pre_tokenizer": null, "normalizer": null, "decoder": null, "added_tokens": []})";
  struct Bad {
    std::string name, text, error;
  };
  const std::vector<Bad> cases = {
      {"truncated", good.substr(0, good.size() / 2), "not valid JSON"},
      {"vocab_list", R"({"model": {"type": "BPE", "vocab": ["a"], "merges": []}})", "expected an object"},
      {"merge_number", R"({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": [7]}})", "model.merges[0]"},
      {"id_string", R"({"model": {"type": "BPE", "vocab": {"a": "0"}, "merges": []}})", "expected an integer"},
      {"wordpiece", R"({"model": {"type": "WordPiece", "vocab": {}}})", "unsupported model 'WordPiece'"},
      {"normalizer", R"({"normalizer": {"type": "BertNormalizer"}, "model": {"type": "BPE", "vocab": {"a": 0}, "merges": []}})",
       "unsupported normalizer 'BertNormalizer'"},
      {"pretok", R"({"pre_tokenizer": {"type": "Whitespace"}, "model": {"type": "BPE", "vocab": {"a": 0}, "merges": []}})",
       "unsupported pre-tokenizer 'Whitespace'"},
      {"decoder", R"({"decoder": {"type": "WordPiece"}, "model": {"type": "BPE", "vocab": {"a": 0}, "merges": []}})",
       "unsupported decoder 'WordPiece'"},
      {"missing_merge", R"({"model": {"type": "BPE", "vocab": {"a": 0, "ab": 2}, "merges": ["a b"]}})",
       "names a piece that is not in the vocabulary"},
      {"missing_result", R"({"model": {"type": "BPE", "vocab": {"a": 0, "b": 1}, "merges": ["a b"]}})",
       "makes a piece that is not in the vocabulary"},
      {"bad_regex", R"({"pre_tokenizer": {"type": "Split", "pattern": {"Regex": "(a"}, "behavior": "Isolated"}, "model": {"type": "BPE", "vocab": {"a": 0}, "merges": []}})",
       "regex does not compile"},
      {"dup_id", R"({"model": {"type": "BPE", "vocab": {"a": 0, "b": 0}, "merges": []}})", "given to two pieces"},
      {"huge_id", R"({"model": {"type": "BPE", "vocab": {"a": 4000000000}, "merges": []}})", "outside"},
  };
  for (const auto& c : cases) {
    const std::string path = tmp.file(c.name + ".json");
    test::write_bytes(path, c.text);
    try {
      load_tokenizer(path);
      ADD_FAILURE() << c.name << ": loaded";
    } catch (const InputError& e) {
      const std::string msg = e.what();
      EXPECT_NE(msg.find(path), std::string::npos) << msg;
      EXPECT_NE(msg.find(c.error), std::string::npos) << c.name << ": " << msg;
    }
  }
  test::write_bytes(tmp.file("good.json"), good);
  EXPECT_EQ(load_tokenizer(tmp.file("good.json")).encode("abab"), (std::vector<int64_t>{2, 2}));
}

// The GPT-2 form: each of its three files checked, the problem named with the file.
TEST(BadTokenizer, Gpt2FormFilesAreChecked) {
  test::TempDir tmp;
  struct Case {
    std::string name, vocab, merges, config, error_file, error;
  };
  const std::string vocab = R"({"a": 0, "b": 1, "ab": 2})", merges = "#version: 0.2\na b\n",
                    config = R"({"tokenizer_class": "GPT2Tokenizer"})";
  const std::vector<Case> cases = {
      {"merge3", vocab, "a b c\n", config, "merges.txt:1", "expected \"left right\""},
      {"merge_missing", vocab, "a x\n", config, "merges.txt", "not in the vocabulary"},
      {"vocab_type", R"({"a": "0"})", merges, config, "vocab.json", "expected an integer"},
      {"class", vocab, merges, R"({"tokenizer_class": "BertTokenizer"})", "tokenizer_config.json",
       "'BertTokenizer' is not supported"},
      {"no_config", vocab, merges, "", "tokenizer_config.json", "missing"},
      {"added_key", vocab, merges,
       R"({"tokenizer_class": "GPT2Tokenizer", "added_tokens_decoder": {"x": {"content": "<q>"}}})",
       "tokenizer_config.json", "key is not a token id"},
  };
  for (const auto& c : cases) {
    const std::string dir = tmp.file(c.name);
    std::filesystem::create_directories(dir);
    test::write_bytes(dir + "/vocab.json", c.vocab);
    test::write_bytes(dir + "/merges.txt", c.merges);
    if (!c.config.empty()) test::write_bytes(dir + "/tokenizer_config.json", c.config);
    try {
      load_tokenizer(dir);
      ADD_FAILURE() << c.name << ": loaded";
    } catch (const InputError& e) {
      const std::string msg = e.what();
      EXPECT_NE(msg.find(dir + "/" + c.error_file), std::string::npos) << c.name << ": " << msg;
      EXPECT_NE(msg.find(c.error), std::string::npos) << c.name << ": " << msg;
    }
  }
  const std::string ok = tmp.file("ok");
  std::filesystem::create_directories(ok);
  test::write_bytes(ok + "/vocab.json", vocab);
  test::write_bytes(ok + "/merges.txt", merges);
  test::write_bytes(ok + "/tokenizer_config.json", config);
  EXPECT_EQ(load_tokenizer(ok + "/vocab.json").encode("abab"), (std::vector<int64_t>{2, 2}));
}

// The CLI: bad tokenizer and invalid UTF-8 text exit 2 with one line naming the file.
TEST(BadTokenizer, CliExitsTwoWithOneLine) {
  test::TempDir tmp;
  test::write_bytes(tmp.file("tokenizer.json"), R"({"model": {"type": "Unigram", "vocab": []}})");
  auto r = test::run_dms("inspect " + test::quote(tmp.file("tokenizer.json")));
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.err.find("unsupported model 'Unigram'"), std::string::npos) << r.err;
  // Invalid UTF-8 at byte 19 of the file: "Hello\n" is 6 bytes, "Valid start, " 13.
  test::write_bytes(tmp.file("bad.txt"), "Hello\nValid start, \xC3\x28 bad\n");
  r = test::run_dms("data prepare --tokenizer " + test::quote(asset("tokenizers/qwen3")) +
                    " --input " + test::quote(tmp.file("bad.txt")) + " --out " +
                    test::quote(tmp.file("o.h5")));
  EXPECT_EQ(r.exit_code, 2) << r.err;
  EXPECT_NE(r.err.find(tmp.file("bad.txt") + ": invalid UTF-8 at byte 19 (line 2)"), std::string::npos)
      << r.err;
  // Malformed chat records: file:line and the problem.
  r = test::run_dms("data prepare --chat --tokenizer " + test::quote(asset("tokenizers/qwen3")) +
                    " --input " + test::quote(source_file("tests/data/chat_conversations_bad.jsonl")) +
                    " --out " + test::quote(tmp.file("c.h5")));
  EXPECT_EQ(r.exit_code, 2) << r.err;
  EXPECT_NE(r.err.find("chat_conversations_bad.jsonl:1"), std::string::npos) << r.err;
  // --chat with a tokenizer that has no chat template.
  test::write_bytes(tmp.file("c.jsonl"), R"({"messages": [{"role": "user", "content": "hi"}]})" "\n");
  r = test::run_dms("data prepare --chat --tokenizer " +
                    test::quote(asset("tokenizers/qwen2/tokenizer.json")) + " --input " +
                    test::quote(tmp.file("c.jsonl")) + " --out " + test::quote(tmp.file("c.h5")));
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.err.find("no chat_template"), std::string::npos) << r.err;
}

// `dms inspect` on a tokenizer: kind, vocabulary, special tokens, framing, sample ids.
TEST(Inspect, TokenizerShowsKindSpecialsAndSampleIds) {
  auto r = test::run_dms("inspect " + test::quote(asset("tokenizers/llama3")));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  for (const char* s : {"byte-level", "128256", "<|begin_of_text|>' (128000)", "<|eot_id|>' (128009)",
                        "added tokens:    256", "chat template:", " 128000 9906 11 1917 0"})
    EXPECT_NE(r.out.find(s), std::string::npos) << s << "\n" << r.out;
}

// UTF-8 helpers: validation offsets and the lossy conversion (maximal subparts).
TEST(Utf8, ValidationAndLossyDecoding) {
  EXPECT_EQ(utf8::first_invalid("abc\xC3\xA9"), utf8::npos);
  EXPECT_EQ(utf8::first_invalid("ab\xC0\xAF"), 2u);          // overlong
  EXPECT_EQ(utf8::first_invalid("a\xED\xA0\x80"), 1u);       // surrogate
  EXPECT_EQ(utf8::first_invalid("\xF4\x90\x80\x80"), 0u);    // past U+10FFFF
  EXPECT_EQ(utf8::first_invalid("ok\xE2\x82"), 2u);          // truncated
  EXPECT_EQ(utf8::lossy("a\xE2\x82z"), "a\xEF\xBF\xBDz");    // one U+FFFD for the subpart
  EXPECT_EQ(utf8::lossy("\xFF\xFE"), "\xEF\xBF\xBD\xEF\xBF\xBD");
  EXPECT_EQ(utf8::lossy("\xF0\x9F\x91\x8B"), "\xF0\x9F\x91\x8B");
}

// BPE order: the lowest rank first, the leftmost first among equals.
TEST(Bpe, LowestRankThenLeftmost) {
  BpeModel m({{"a", 0}, {"b", 1}, {"aa", 2}, {"ab", 3}, {"aab", 4}},
             {{"a", "b"}, {"a", "a"}, {"aa", "b"}}, {}, "test");
  std::vector<int32_t> out;
  m.encode_word("aab", out);  // "a b" (rank 0) first: a + ab, then no merge a+ab
  EXPECT_EQ(out, (std::vector<int32_t>{0, 3}));
  out.clear();
  m.encode_word("aaa", out);  // equal ranks: leftmost pair first
  EXPECT_EQ(out, (std::vector<int32_t>{2, 0}));
}

}  // namespace
}  // namespace dms
