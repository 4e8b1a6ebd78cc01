// Token files: our HDF5 format (dataset `tokens` [N, T] uint32 + attributes) and
// pre-tokenized streams (.bin: llm.c's 256-int32 header + uint16/uint32 ids, or
// nanoGPT's headerless uint16), cut into rows of T tokens.
#pragma once
#include <ATen/ATen.h>

#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace dms {

struct TokenFileInfo {
  int64_t vocab_size = 0;
  std::string tokenizer_hash;  // sha256 of the tokenizer file ("" when unknown)
  int64_t bos_id = -1;         // the tokenizer's beginning-of-text token
  int64_t eos_id = -1;         // its configured end token: what training masks, framed or not
  std::string framing;         // how documents were framed, e.g. "before <s> (1), after none [...]"
  std::string source;          // what the rows came from (file names, "teacher samples", ...)
  int64_t documents = 0;
  int64_t tokens = 0;  // real tokens before packing/padding
};

// HDF5 token files we write carry a seal in HDF5's user block (the first 512 bytes, which
// HDF5 itself skips): "dms-retrofit tokens sha256 <hex of every byte after the block> bytes
// <their count>\n". It is checked before HDF5 parses anything (HDF5 is not hardened against
// crafted files), unless the user trusts the file (--trust-token-files): files of other
// tools have no seal.
constexpr uint64_t kTokenSealBytes = 512;
enum class TokenTrust { verify, trust };
// What the first block of `path` says (reads only that): kind none / sealed / malformed,
// with the digest and byte count it claims.
struct TokenSeal {
  enum Kind { none, sealed, malformed } kind = none;
  std::string sha256;
  uint64_t bytes = 0;
};
TokenSeal read_token_seal(const std::string& path);
// InputError naming the path unless the seal is there and matches the bytes after it.
void verify_token_seal(const std::string& path);

// Streams rows into `path` (written as "<path>.tmp.<pid>", sealed and renamed by finish()).
class TokenWriter {
 public:
  TokenWriter(const std::string& path, int64_t seq_len, const TokenFileInfo& info);
  ~TokenWriter();
  void add_row(const std::vector<uint32_t>& row);  // exactly seq_len ids
  // Writes the attributes (info as given, with the counts of what was written), closes,
  // renames to the final name.
  void finish(int64_t documents, int64_t tokens);
  int64_t rows() const { return rows_; }

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
  int64_t rows_ = 0;
};

struct TokenData {
  std::string path;
  int64_t n_rows = 0, seq_len = 0;
  TokenFileInfo info;
  // Rows by index. -> [n, T] int64
  at::Tensor rows(const std::vector<int64_t>& index) const;
  std::pair<int64_t, int64_t> id_range() const;  // smallest and largest id; scans the file

  struct Source;
  std::shared_ptr<Source> src;
};

// Opens an HDF5 token file (its seal verified first unless `trust`), or a .bin stream cut
// into rows of `bin_seq_len` (parsed by our own bounded code: no seal).
// InputError naming the file for an empty file, a missing dataset, bad header, a seal that
// is missing or does not match.
TokenData open_tokens(const std::string& path, int64_t bin_seq_len = 0,
                      const std::string& bin_dtype = "uint16",
                      TokenTrust trust = TokenTrust::verify);

// InputError unless every id < model_vocab and rows fit the model's context.
void validate_tokens(const TokenData& d, int64_t model_vocab, int64_t model_context);

}  // namespace dms
