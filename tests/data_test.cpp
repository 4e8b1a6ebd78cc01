// SentencePiece through our shim against goldens from llama2.c and python sentencepiece.
#include "data/tokenizer.h"
#include "model/error.h"
#include "tests/test_util.h"

namespace dms {
namespace {

using test::asset;

TEST(Tokenizer, Tok512MatchesSentencePieceGoldens) {
  Tokenizer t = load_tokenizer(asset("stories260K/tok512.model"));
  EXPECT_EQ(t.vocab_size(), 512);
  EXPECT_EQ(t.bos_id(), 1);
  EXPECT_EQ(t.eos_id(), 2);
  auto ref = test::read_json(asset("stories260K/reference/tok512_encodings.json"));
  ASSERT_GE(ref["cases"].size(), 20u);
  for (const auto& c : ref["cases"]) {
    const std::string text = c["text"];
    EXPECT_EQ(t.encode(text, /*add_bos=*/true), test::json_ids(c["ids_sentencepiece_tok512_model"]))
        << text;
  }
}

TEST(Tokenizer, Llama2EncodesAndDecodesEveryGolden) {
  Tokenizer t = load_tokenizer(asset("llama2-tokenizer/tokenizer.model"));
  auto ref = test::read_json(asset("llama2-tokenizer/golden_encodings.json"));
  EXPECT_EQ(t.vocab_size(), ref["vocab_size"].get<int64_t>());
  EXPECT_EQ(t.bos_id(), ref["bos_id"].get<int64_t>());
  EXPECT_EQ(t.eos_id(), ref["eos_id"].get<int64_t>());
  EXPECT_EQ(t.unk_id(), ref["unk_id"].get<int64_t>());
  ASSERT_GE(ref["cases"].size(), 20u);
  for (const auto& c : ref["cases"]) {
    const std::string text = c["text"];
    const std::vector<int64_t> ids = test::json_ids(c["ids"]);
    EXPECT_EQ(t.encode(text), ids) << text;
    EXPECT_EQ(t.encode_pieces(text), c["pieces"].get<std::vector<std::string>>()) << text;
    EXPECT_EQ(t.decode(ids), c["decoded"].get<std::string>()) << text;
  }
}

TEST(Tokenizer, BadFilesAreInputErrors) {
  test::TempDir tmp;
  test::write_bytes(tmp.file("junk.model"), "this is not a protobuf");
  try {
    load_tokenizer(tmp.file("junk.model"));
    FAIL() << "expected InputError";
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("junk.model"), std::string::npos);
    EXPECT_NE(std::string(e.what()).find("not a SentencePiece model"), std::string::npos);
  }
  EXPECT_THROW(load_tokenizer(tmp.file("absent.model")), InputError);
}

TEST(Tokenizer, VocabularyLargerThanTheModelIsRejected) {
  Tokenizer t = load_tokenizer(asset("llama2-tokenizer/tokenizer.model"));
  try {
    check_tokenizer_fits(t, 512, "stories260K.bin");
    FAIL() << "expected InputError";
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("32000 pieces"), std::string::npos) << e.what();
  }
  EXPECT_NO_THROW(check_tokenizer_fits(t, 32000, "llama"));
  EXPECT_THROW(t.decode({40000}), InputError);
}

}  // namespace
}  // namespace dms
