// SentencePiece through our shim against goldens from llama2.c and python sentencepiece.
#include "common/error.h"
#include "data/tokenizer.h"
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

// ---- token files, preparation, sampling, order -------------------------------------------
#include <filesystem>
#include <fstream>
#include <sstream>

#include "checkpoints/load_model.h"
#include "common/h5.h"
#include "data/loader.h"
#include "data/prepare.h"
#include "data/token_file.h"

namespace dms {
namespace {

TEST(Prepare, TextRowsDecodeBackToTheDocumentsInOrder) {
  test::TempDir tmp;
  std::string text;
  std::vector<std::string> docs;
  for (int i = 0; i < 40; ++i) {
    docs.push_back("Tom had " + std::to_string(i) +
                   " red balls. He gave one to Sue and she smiled.");
    text += docs.back() + "\n\n";
  }
  test::write_bytes(tmp.file("c.txt"), text);
  PrepareOptions o;
  o.tokenizer = asset("stories260K/tok512.model");
  o.inputs = {tmp.file("c.txt")};
  o.out = tmp.file("c.h5");
  o.seq_len = 32;
  o.val_fraction = 0.2;
  PrepareResult r = prepare_data(o);
  EXPECT_EQ(r.documents, 40);
  TokenData train = open_tokens(r.train_path), val = open_tokens(r.val_path);
  EXPECT_EQ(train.seq_len, 32);
  EXPECT_GT(val.n_rows, 0);
  EXPECT_EQ(train.info.vocab_size, 512);
  EXPECT_EQ(train.info.tokenizer_hash,
            "fec6aa960a1fb3ebf71d26f9b0e486afcbd76c34cf0fbfb93e21126ca9f778d3");
  // The packed stream is the train documents, each as BOS + ids: stories260K never saw EOS.
  Tokenizer tok = load_tokenizer(o.tokenizer);
  std::vector<int64_t> stream;
  for (int64_t i = 0; i < train.n_rows; ++i) {
    at::Tensor row = train.rows({i})[0];
    stream.insert(stream.end(), row.data_ptr<int64_t>(), row.data_ptr<int64_t>() + 32);
  }
  std::vector<int64_t> all_docs;
  int64_t n_train_docs = 0;
  for (size_t d = 0; d < docs.size() && all_docs.size() < stream.size(); ++d) {
    auto ids = tok.encode(docs[d], /*add_special_tokens=*/true);  // BOS + ids
    // A document belongs to train iff its ids appear at the current stream position.
    if (std::equal(ids.begin(), ids.begin() + std::min(ids.size(), stream.size() - all_docs.size()),
                   stream.begin() + int64_t(all_docs.size()))) {
      all_docs.insert(all_docs.end(), ids.begin(), ids.end());
      ++n_train_docs;
    }
  }
  EXPECT_GE(all_docs.size(), stream.size());
  EXPECT_GT(n_train_docs, 20);
}

TEST(Prepare, JsonlFieldAndBadLines) {
  test::TempDir tmp;
  test::write_bytes(
      tmp.file("a.jsonl"),
      "{\"text\": \"Once upon a time there was a cat.\"}\n{\"text\": \"The cat was happy.\"}\n");
  PrepareOptions o;
  o.tokenizer = asset("stories260K/tok512.model");
  o.inputs = {tmp.file("a.jsonl")};
  o.out = tmp.file("a.h5");
  o.seq_len = 8;
  o.val_fraction = 0;
  PrepareResult r = prepare_data(o);
  EXPECT_EQ(r.documents, 2);
  EXPECT_EQ(open_tokens(r.train_path).rows({0})[0][0].item<int64_t>(), 1);  // BOS first
  test::write_bytes(tmp.file("b.jsonl"), "{\"body\": \"x\"}\n");
  o.inputs = {tmp.file("b.jsonl")};
  try {
    prepare_data(o);
    FAIL();
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("b.jsonl:1"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("'text'"), std::string::npos) << e.what();
  }
}

TEST(TokenFiles, BinStreamsLlmcHeaderAndRawUint16) {
  test::TempDir tmp;
  std::vector<uint16_t> ids(100);
  for (int i = 0; i < 100; ++i) ids[size_t(i)] = uint16_t(i * 3);
  std::string raw(reinterpret_cast<const char*>(ids.data()), ids.size() * 2);
  test::write_bytes(tmp.file("raw.bin"), raw);
  std::vector<int32_t> header(256, 0);
  header[0] = 20240520;
  header[1] = 1;
  header[2] = 100;
  test::write_bytes(tmp.file("llmc.bin"),
                    std::string(reinterpret_cast<const char*>(header.data()), 1024) + raw);
  for (const char* f : {"raw.bin", "llmc.bin"}) {
    TokenData d = open_tokens(tmp.file(f), 16);
    EXPECT_EQ(d.n_rows, 6) << f;
    EXPECT_EQ(d.rows({2})[0][5].item<int64_t>(), (2 * 16 + 5) * 3) << f;
    EXPECT_EQ(d.id_range().second, 95 * 3) << f;
  }
  EXPECT_THROW(open_tokens(tmp.file("raw.bin"), 0), InputError);
  EXPECT_THROW(open_tokens(tmp.file("raw.bin"), 200), InputError);
  EXPECT_THROW(validate_tokens(open_tokens(tmp.file("raw.bin"), 16), 256, 512), InputError);
  EXPECT_NO_THROW(validate_tokens(open_tokens(tmp.file("raw.bin"), 16), 512, 512));
}

TEST(TokenFiles, TeacherSamplesRoundTrip) {
  test::TempDir tmp;
  Model m = load_model(asset("stories260K/stories260K.bin"));
  SampleOptions o;
  o.count = 3;
  o.length = 20;
  o.batch = 2;
  o.seed = 5;
  o.out = tmp.file("s.h5");
  sample_teacher_data(m, o);
  TokenData d = open_tokens(o.out);
  ASSERT_EQ(d.n_rows, 3);
  at::Tensor rows = d.rows({0, 1, 2});
  EXPECT_TRUE(rows.select(1, 0).eq(1).all().item<bool>());  // BOS
  // Greedy (temperature 0) samples reproduce the model's own greedy chain.
  o.temperature = 0;
  o.out = tmp.file("g.h5");
  sample_teacher_data(m, o);
  auto ref = test::read_json(asset("stories260K/reference/greedy256_from_bos.json"));
  at::Tensor g = open_tokens(o.out).rows({0})[0];
  for (int64_t t = 0; t < 20; ++t)
    EXPECT_EQ(g[t].item<int64_t>(), ref["ids"][size_t(t)].get<int64_t>());
}

TEST(Order, DeterministicShufflingResumableCursorAndRankSlices) {
  EXPECT_EQ(epoch_order(50, 3, 0), epoch_order(50, 3, 0));
  EXPECT_NE(epoch_order(50, 3, 0), epoch_order(50, 3, 1));
  EXPECT_NE(epoch_order(50, 3, 0), epoch_order(50, 4, 0));
  auto e = epoch_order(50, 3, 2);
  std::sort(e.begin(), e.end());
  for (int64_t i = 0; i < 50; ++i) EXPECT_EQ(e[size_t(i)], i);

  test::TempDir tmp;
  std::vector<uint16_t> ids(10 * 8);
  for (size_t i = 0; i < ids.size(); ++i) ids[i] = uint16_t(i);
  test::write_bytes(tmp.file("t.bin"),
                    std::string(reinterpret_cast<const char*>(ids.data()), ids.size() * 2));
  TokenData d = open_tokens(tmp.file("t.bin"), 8);  // 10 rows
  BatchLoader a(d, 4, 9);
  std::vector<int64_t> seen;
  for (int s = 0; s < 5; ++s)  // 20 rows: two epochs
    for (int64_t r : a.next().rows) seen.push_back(r);
  // Resuming from a saved cursor continues the same sequence.
  BatchLoader b(d, 4, 9);
  for (int s = 0; s < 2; ++s) b.next();
  BatchLoader c(d, 4, 9);
  c.cursor = b.cursor;
  std::vector<int64_t> tail;
  for (int s = 0; s < 3; ++s)
    for (int64_t r : c.next().rows) tail.push_back(r);
  EXPECT_EQ(tail, std::vector<int64_t>(seen.begin() + 8, seen.end()));
  // Two ranks take the two halves of each global batch.
  BatchLoader r0(d, 4, 9, 0, 2), r1(d, 4, 9, 1, 2);
  LocalBatch x0 = r0.next(), x1 = r1.next();
  EXPECT_EQ(x0.first_index, 0);
  EXPECT_EQ(x1.first_index, 2);
  std::vector<int64_t> both = x0.rows;
  both.insert(both.end(), x1.rows.begin(), x1.rows.end());
  EXPECT_EQ(both, std::vector<int64_t>(seen.begin(), seen.begin() + 4));
}

}  // namespace
}  // namespace dms

// ---- seals of HDF5 token files (data/token_file.h) --------------------------------------

namespace dms {
namespace {

// The seal read by an independent reader: Python's hashlib hashes the bytes after the user
// block, and h5py (HDF5's own reader, which skips the block) reads the same ids we do.
TEST(TokenSeal, PythonVerifiesTheSealAndH5pyReadsTheSealedFile) {
  const std::string& path = test::small_token_file();
  const TokenData d = open_tokens(path);
  const std::string python = std::string(DMS_SOURCE_DIR) + "/.venv/bin/python";
  ASSERT_TRUE(std::filesystem::exists(python)) << python << " missing: run scripts/setup.sh";
  const std::string script =
      "import hashlib, sys, h5py\n"
      "b = open(sys.argv[1], 'rb').read()\n"
      "head = b[:512].rstrip(b'\\0').decode()\n"
      "w = head.split()\n"
      "assert len(w) == 6 and w[:3] == ['dms-retrofit', 'tokens', 'sha256'], head\n"
      "assert w[4] == 'bytes' and head.endswith('\\n'), head\n"
      "assert w[3] == hashlib.sha256(b[512:]).hexdigest(), 'digest'\n"
      "assert int(w[5]) == len(b) - 512, 'count'\n"
      "t = h5py.File(sys.argv[1], 'r')['tokens']\n"
      "print(t.shape[0], t.shape[1], ' '.join(str(int(x)) for x in t[3, :8]))\n";
  test::TempDir tmp;
  test::write_bytes(tmp.file("check.py"), script);
  const std::string out_file = tmp.file("out.txt");
  ASSERT_EQ(std::system((python + " " + test::quote(tmp.file("check.py")) + " " +
                         test::quote(path) + " > " + test::quote(out_file))
                            .c_str()),
            0);
  std::ostringstream want;
  want << d.n_rows << " " << d.seq_len;
  const at::Tensor row = d.rows({3})[0];
  for (int64_t t = 0; t < 8; ++t) want << " " << row[t].item<int64_t>();
  std::string got = test::read_bytes(out_file);
  while (!got.empty() && got.back() == '\n') got.pop_back();
  EXPECT_EQ(got, want.str());
}

// An HDF5 token file another tool wrote (no seal) is refused unless trusted; trusted, it is
// read as it is. Any changed byte of a sealed file is caught before HDF5 sees it.
TEST(TokenSeal, UnsealedNeedsTrustAndAnyChangedByteIsCaught) {
  test::TempDir tmp;
  const std::string plain = tmp.file("plain.h5");
  {
    h5::Handle f = h5::create_file(plain);
    std::vector<uint32_t> ids(4 * 16);
    for (size_t i = 0; i < ids.size(); ++i) ids[i] = uint32_t(i % 7);
    h5::write_array(f.get(), "tokens", ids.data(), H5T_NATIVE_UINT32, {4, 16});
  }
  EXPECT_EQ(read_token_seal(plain).kind, TokenSeal::none);
  EXPECT_THROW(open_tokens(plain), InputError);
  const TokenData trusted = open_tokens(plain, 0, "uint16", TokenTrust::trust);
  EXPECT_EQ(trusted.n_rows, 4);
  EXPECT_EQ(trusted.rows({1})[0][2].item<int64_t>(), (16 + 2) % 7);

  const std::string bytes = test::read_bytes(test::small_token_file());
  EXPECT_EQ(read_token_seal(test::small_token_file()).kind, TokenSeal::sealed);
  EXPECT_NO_THROW(verify_token_seal(test::small_token_file()));
  // Bytes spread over the file, in the seal, the HDF5 metadata and the rows.
  for (size_t at : {size_t(3), size_t(100), size_t(512), size_t(800), bytes.size() / 3,
                    bytes.size() / 2, bytes.size() - 1}) {
    std::string b = bytes;
    b[at] = char(b[at] ^ 0x20);
    const std::string p = tmp.file("edited.h5");
    test::write_bytes(p, b);
    EXPECT_THROW(open_tokens(p), InputError) << "byte " << at;
  }
}

}  // namespace
}  // namespace dms
