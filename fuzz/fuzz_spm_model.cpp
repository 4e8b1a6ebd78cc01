// Fuzzes SentencePiece .model loading through our backend (data/spm_backend.cpp,
// load_sentencepiece) and its shim module (data/spm_shim.cpp, libdms_spm.so): the input is
// a .model file (a serialized protobuf ModelProto). SentencePiece's parser runs inside
// the shim; the library itself is not instrumented (a crash in it still shows as SEGV).
// Then what Tokenizer does with one: specials, encode, decode, pieces, named tokens.
// Expected rejection: dms::InputError (not a SentencePiece model, invalid UTF-8 text,
// ids outside the vocabulary). The backend's std::runtime_error "encode/decode failed"
// is a finding: SentencePiece accepted the model, so it should encode any valid text.
// Built without Torch, and dlopen() below drops RTLD_DEEPBIND (see fuzz/CMakeLists.txt).
#include <dlfcn.h>

#include "data/tokenizer.h"
#include "fuzz/fuzz_util.h"

// ASan's interceptor refuses RTLD_DEEPBIND; this definition replaces its weak alias and
// calls the interceptor itself without the flag.
extern "C" void* __interceptor_dlopen(const char* filename, int flags);
extern "C" void* dlopen(const char* filename, int flags) {
  return __interceptor_dlopen(filename, flags & ~RTLD_DEEPBIND);
}

namespace {

const char* kSample =
    "Once upon a time, a little robot said: \"Hello, World!\" 123 4567 \n\n  tabs\there. "
    "caf\xc3\xa9 na\xc3\xafve \xe6\x97\xa5\xe6\x9c\xac\xe8\xaa\x9e \xf0\x9f\x98\x80 <s></s><unk>";

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string path = fuzz::write_file("tokenizer.model", data, size);
  std::shared_ptr<const dms::TokenizerBackend> b;
  if (!fuzz::accepts([&] { b = dms::load_sentencepiece(path); })) return 0;
  const int64_t n = b->vocab_size();
  FUZZ_CHECK(n > 0, "a model without pieces accepted");
  const dms::SpmSpecials s = dms::sentencepiece_specials(*b);
  for (int64_t id : {s.bos, s.eos, s.unk, s.pad})
    FUZZ_CHECK(id < n, "special id " + std::to_string(id) + " outside " + std::to_string(n));
  const std::vector<int64_t> ids = b->encode(kSample);
  for (int64_t id : ids) FUZZ_CHECK(id >= 0 && id < n, "encode gave id " + std::to_string(id));
  b->decode(ids, false);
  if (n <= 4096)  // token_id() scans the vocabulary
    for (const auto& t : b->named_tokens()) b->token_id(t.content);
  for (int64_t id : {int64_t(0), n / 2, n - 1}) b->piece(id);
  fuzz::accepts([&] { b->decode({n}, false); });
  fuzz::accepts([&] { b->encode(std::string("\xff\xfe bad utf-8")); });
  return 0;
}
