// SentencePiece tokenizer (.model files: llama2.c's tok512, Llama 2, TinyLlama, ...),
// through the isolated shim module (see data/spm_shim.h for why).
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace dms {

struct SpmHandle;  // the loaded SentencePieceProcessor inside the shim

struct Tokenizer {
  std::string path;
  std::shared_ptr<SpmHandle> handle;

  bool loaded() const { return handle != nullptr; }
  int64_t vocab_size() const;
  int64_t bos_id() const;  // -1 when the model has none
  int64_t eos_id() const;
  int64_t unk_id() const;
  int64_t pad_id() const;
  // ids of `text`, optionally with BOS in front / EOS at the end.
  std::vector<int64_t> encode(const std::string& text, bool add_bos = false,
                              bool add_eos = false) const;
  std::vector<std::string> encode_pieces(const std::string& text) const;
  // Text of ids; control ids (BOS/EOS) produce nothing.
  std::string decode(const std::vector<int64_t>& ids) const;
  std::string piece(int64_t id) const;
};

// Loads a SentencePiece model; InputError naming the file on failure.
Tokenizer load_tokenizer(const std::string& path);

// InputError unless the tokenizer's ids all fit the model's embedding
// (a model may pad its vocabulary, never the other way round).
void check_tokenizer_fits(const Tokenizer& t, int64_t model_vocab, const std::string& model_path);

}  // namespace dms
