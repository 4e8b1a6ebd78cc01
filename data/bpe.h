// The BPE model of Hugging Face tokenizers: a vocabulary, ranked merges, byte fallback and
// an unknown token. Encodes one pre-tokenized word at a time the way `tokenizers` does:
// start from the word's characters, then repeatedly apply the lowest-ranked merge, the
// leftmost first among equals.
//
// Shapes: a word is UTF-8 in the model's alphabet (for byte-level models, already mapped
// by the ByteLevel pre-tokenizer); ids are int32 < vocab_size().
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

namespace dms {

struct BpeOptions {
  std::string unk_token;     // "" = none: characters outside the vocabulary are dropped
  bool fuse_unk = false;     // consecutive unknowns become one unk id
  bool byte_fallback = false;  // unknown characters become <0xXX> byte tokens when all exist
  bool ignore_merges = false;  // a word that is itself in the vocabulary is one token
};

class BpeModel {
 public:
  // `origin` names the file for errors. merges: (left, right) piece pairs in rank order.
  // InputError when a merge names a piece, or makes a piece, that the vocabulary lacks.
  BpeModel(std::vector<std::pair<std::string, int32_t>> vocab,
           const std::vector<std::pair<std::string, std::string>>& merges, BpeOptions options,
           const std::string& origin);

  // Appends the ids of one word to `out`. Thread-safe.
  void encode_word(std::string_view word, std::vector<int32_t>& out) const;

  int32_t id_of(std::string_view piece) const;  // -1 when absent
  // The piece of `id`, or nullptr for an id the vocabulary does not hold.
  const std::string* piece_of(int32_t id) const;
  int32_t max_id() const { return int32_t(pieces_.size()) - 1; }
  size_t piece_count() const { return to_id_.size(); }  // the vocabulary's entries
  size_t merge_count() const { return merges_.size(); }
  const BpeOptions& options() const { return options_; }

 private:
  struct Merge {
    int32_t rank, result;
  };
  void merge_symbols(std::vector<int32_t>& ids) const;
  void initial_symbols(std::string_view word, std::vector<int32_t>& ids) const;

  std::vector<std::string> pieces_;                       // id -> piece ("" = unused id)
  std::unordered_map<std::string_view, int32_t> to_id_;  // views into pieces_
  std::unordered_map<uint64_t, Merge> merges_;           // (left id << 32 | right id)
  BpeOptions options_;
  int32_t unk_id_ = -1;
  int32_t byte_ids_[256];  // <0xXX> tokens for byte fallback (-1 when absent)

  // Words seen before are cached per thread (natural text repeats its words, and merging is
  // the costly part; a shared cache would serialize the threads of data prepare). The
  // cache is keyed by this model's serial number, never reused by another model.
  uint64_t serial_;
};

}  // namespace dms
