// What every tokenizer implementation provides to the `Tokenizer` facade (data/tokenizer.h):
// SentencePiece models (data/spm_backend.cpp) and Hugging Face tokenizers, tokenizer.json
// or the GPT-2 vocab.json + merges.txt form (data/hf_tokenizer.h).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace dms {

// A token that the text may name by its content: Hugging Face "added tokens"
// (special or not) and SentencePiece control pieces.
struct NamedToken {
  std::string content;
  int64_t id = -1;
  bool special = false;  // skipped by decode(..., skip_special=true)
};

class TokenizerBackend {
 public:
  virtual ~TokenizerBackend() = default;
  // e.g. "SentencePiece (BPE)", "tokenizer.json (BPE, byte-level)".
  virtual std::string kind() const = 0;
  virtual int64_t vocab_size() const = 0;  // largest id + 1
  // Ids of `text` (valid UTF-8), added tokens recognised, nothing added around it.
  virtual std::vector<int64_t> encode(const std::string& text) const = 0;
  // What the post-processor puts around one sequence (HF `add_special_tokens=True`).
  virtual std::vector<int64_t> prefix_ids() const = 0;
  virtual std::vector<int64_t> suffix_ids() const = 0;
  // Text of ids; InputError for an id the vocabulary does not hold.
  virtual std::string decode(const std::vector<int64_t>& ids, bool skip_special) const = 0;
  virtual std::string piece(int64_t id) const = 0;      // "" for an unused id
  virtual int64_t token_id(const std::string& piece) const = 0;  // -1 when absent
  virtual std::vector<NamedToken> named_tokens() const = 0;
};

}  // namespace dms
