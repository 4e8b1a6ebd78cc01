// Fuzzes Hugging Face tokenizer loading (data/tokenizer.h load_tokenizer on a folder,
// data/hf_tokenizer.h) and then the loaded tokenizer on some text.
// Input: up to four parts separated by the line "@@dms-fuzz-file@@" (with its newlines):
//   part 1  tokenizer.json, or vocab.json when part 3 is there
//   part 2  tokenizer_config.json (none when empty)
//   part 3  merges.txt: when present and not empty, the GPT-2 form (vocab.json + merges.txt)
//   part 4  text to encode (else a fixed multilingual sample)
// Each part becomes that file in a folder, and load_tokenizer(folder) picks the form as
// for a user's path. Then: encode (with and without special tokens), encode_pieces,
// decode, piece/token_id of named tokens, framing, and decode of ids around the vocabulary.
// Expected rejection: dms::InputError (malformed or unsupported component, invalid UTF-8,
// ids outside the vocabulary).
// SentencePiece .model files are fuzzed by fuzz_spm_model (this folder never holds one).
#include "data/tokenizer.h"
#include "fuzz/fuzz_util.h"

namespace {

const char* kSample =
    "Once upon a time, a little robot said: \"Hello, World!\" 123 4567 \n\n  tabs\there. "
    "caf\xc3\xa9 na\xc3\xafve \xe6\x97\xa5\xe6\x9c\xac\xe8\xaa\x9e \xd0\xbf\xd1\x80\xd0\xb8"
    "\xd0\xb2\xd0\xb5\xd1\x82 \xf0\x9f\x98\x80 <|endoftext|><s></s><|im_end|>";

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const auto parts = fuzz::split(std::string_view(reinterpret_cast<const char*>(data), size),
                                 "\n@@dms-fuzz-file@@\n");
  for (const char* f : {"tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt"})
    fuzz::remove_file(f);
  const bool gpt2 = parts.size() >= 3 && !parts[2].empty();
  fuzz::write_file(gpt2 ? "vocab.json" : "tokenizer.json", parts[0]);
  if (parts.size() >= 2 && !parts[1].empty()) fuzz::write_file("tokenizer_config.json", parts[1]);
  if (gpt2) fuzz::write_file("merges.txt", parts[2]);
  const std::string text = parts.size() >= 4 ? std::string(parts[3]) : std::string(kSample);
  dms::Tokenizer t;
  if (!fuzz::accepts([&] { t = dms::load_tokenizer(fuzz::scratch_dir()); })) return 0;
  const int64_t n = t.vocab_size();
  FUZZ_CHECK(n > 0, "empty vocabulary accepted");
  FUZZ_CHECK(t.bos_id() < n && t.eos_id() < n && t.unk_id() < n && t.pad_id() < n,
             "special id outside the vocabulary");
  fuzz::accepts([&] {
    const std::vector<int64_t> ids = t.encode(text, /*add_special_tokens=*/true);
    for (int64_t id : ids) FUZZ_CHECK(id >= 0 && id < n, "encode gave id " + std::to_string(id));
    t.decode(ids);
    t.decode(ids, /*skip_special=*/true);
    t.encode(text, false);
    t.encode_pieces(text);
  });
  for (const auto& nt : t.named_tokens()) {
    FUZZ_CHECK(nt.id >= 0 && nt.id < n, "named token id " + std::to_string(nt.id));
    t.piece(nt.id);
    t.token_id(nt.content);
  }
  fuzz::accepts([&] {
    const dms::Framing f = t.default_framing();
    t.describe(f);
  });
  for (int64_t id : {int64_t(0), n / 2, n - 1, n, int64_t(-1)}) {
    fuzz::accepts([&] { t.decode({id}); });
    if (id >= 0 && id < n) t.piece(id);
  }
  fuzz::accepts([&] { t.framing_tokens("none", "--bos"); });
  t.chat_template();
  t.fingerprint();
  return 0;
}
