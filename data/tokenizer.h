// One tokenizer interface over SentencePiece `.model` files and Hugging Face tokenizers
// (tokenizer.json, or vocab.json + merges.txt), chosen by the path given:
//   DIR                 tokenizer.json, else vocab.json + merges.txt, else tokenizer.model
//   .../vocab.json      the GPT-2 form in that folder
//   .../*.json          tokenizer.json
//   anything else       a SentencePiece model
// A tokenizer_config.json beside the files supplies what the model's authors configured:
// BOS/EOS/PAD tokens and the chat template.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "data/tokenizer_backend.h"

namespace dms {

// How documents are framed in training data: ids put before and after each one.
struct Framing {
  std::vector<int64_t> before, after;
  std::string rule;  // where the framing came from, in words (recorded in token files)
};

class Tokenizer {
 public:
  std::string path;         // what the user gave
  std::string config_path;  // tokenizer_config.json, "" when there is none

  bool loaded() const { return backend_ != nullptr; }
  std::string kind() const { return backend_->kind(); }
  int64_t vocab_size() const { return backend_->vocab_size(); }
  int64_t bos_id() const { return bos_; }  // beginning of text, -1 when none
  // The configured end token: where generation stops and the token training masks.
  int64_t eos_id() const { return eos_; }
  int64_t unk_id() const { return unk_; }
  int64_t pad_id() const { return pad_; }

  // Ids of `text`; with add_special_tokens, what the post-processor puts around it (HF's
  // `add_special_tokens=True`; for SentencePiece, BOS). Text in added tokens' spelling
  // (`<|im_end|>`) becomes those tokens. InputError for invalid UTF-8, naming the offset.
  std::vector<int64_t> encode(const std::string& text, bool add_special_tokens = false) const;
  std::vector<std::string> encode_pieces(const std::string& text) const;
  // Text of ids (special tokens spelled out unless skip_special); InputError for an id
  // outside the vocabulary.
  std::string decode(const std::vector<int64_t>& ids, bool skip_special = false) const;
  std::string piece(int64_t id) const { return backend_->piece(id); }
  int64_t token_id(const std::string& content) const { return backend_->token_id(content); }
  std::vector<NamedToken> named_tokens() const { return backend_->named_tokens(); }

  // Framing the model was trained with, as the tokenizer's files say (see tokenizer.cpp).
  Framing default_framing() const;
  // "none", or a token's content -> the framing with it; InputError naming `option`.
  std::vector<int64_t> framing_tokens(const std::string& spec, const std::string& option) const;
  std::string describe(const Framing& f) const;  // "<|begin_of_text|> (128000) ... | none"

  // The chat template (Jinja) and the special-token strings it may use; "" when none.
  const std::string& chat_template() const { return chat_template_; }
  const std::string& special_string(const std::string& name) const;  // bos_token, eos_token, ...
  // sha256 identifying the files read (one file: that file's sha256).
  const std::string& fingerprint() const { return fingerprint_; }

 private:
  friend Tokenizer load_tokenizer(const std::string& path);
  std::shared_ptr<const TokenizerBackend> backend_;
  int64_t bos_ = -1, eos_ = -1, unk_ = -1, pad_ = -1;
  bool sentencepiece_ = false;
  std::string chat_template_;
  std::vector<std::pair<std::string, std::string>> special_strings_;
  std::string fingerprint_;
};

// InputError naming the file on any problem (missing, unsupported component, malformed).
Tokenizer load_tokenizer(const std::string& path);

// InputError unless the tokenizer's ids all fit the model's embedding
// (a model may pad its vocabulary, never the other way round).
void check_tokenizer_fits(const Tokenizer& t, int64_t model_vocab, const std::string& model_path);

// The SentencePiece backend (data/spm_backend.cpp).
std::shared_ptr<const TokenizerBackend> load_sentencepiece(const std::string& path);
// SentencePiece's own BOS/EOS/UNK/PAD ids (-1 when the model has none).
struct SpmSpecials {
  int64_t bos = -1, eos = -1, unk = -1, pad = -1;
};
SpmSpecials sentencepiece_specials(const TokenizerBackend& spm);

}  // namespace dms
