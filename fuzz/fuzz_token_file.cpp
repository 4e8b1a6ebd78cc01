// Fuzzes token-file opening (data/token_file.h, open_tokens) on .bin token streams: llm.c's
// files (256 int32 header: magic 20240520, version 1 = uint16 / 2 = uint32, token count,
// then the ids) and nanoGPT's headerless uint16 streams, cut into rows.
// Input: byte 0 chooses the options the command line would give (bits 0-5: --seq-len
// 1..64, bit 6: --bin-dtype uint32 instead of uint16); the rest is the file.
// Then rows are read: the first, the last, and every row when there are few
// (validate_tokens against a vocabulary of 2^17 and the row length as context).
// Expected rejection: dms::InputError (short file, bad header or version, a count the
// file does not hold, ids outside the vocabulary).
// HDF5 token files (.h5) are not fuzzed: for them open_tokens checks only that the path
// is a regular file (h5::open_file) before HDF5 itself, which is not instrumented and
// has known crashes on crafted files, parses it.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include "data/token_file.h"
#include "fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  at::set_num_threads(1);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  const int64_t seq_len = 1 + (data[0] & 63);
  const std::string dtype = (data[0] & 64) ? "uint32" : "uint16";
  const std::string path = fuzz::write_file("tokens.bin", data + 1, size - 1);
  fuzz::accepts([&] {
    const dms::TokenData d = dms::open_tokens(path, seq_len, dtype);
    FUZZ_CHECK(d.n_rows > 0 && d.seq_len == seq_len, "rows of the requested length");
    // Every accepted row must lie inside the file: at most (size - 1) / 2 ids of 2 bytes.
    FUZZ_CHECK(uint64_t(d.n_rows) * uint64_t(seq_len) <= (size - 1) / 2,
               "claims " + std::to_string(d.n_rows) + " rows of " + std::to_string(seq_len) +
                   " from a file of " + std::to_string(size - 1) + " bytes");
    const at::Tensor first = d.rows({0}), last = d.rows({d.n_rows - 1});
    FUZZ_CHECK(first.size(1) == seq_len && last.size(1) == seq_len, "row shape");
    if (d.n_rows <= 4096) dms::validate_tokens(d, int64_t(1) << 17, seq_len);
  });
  return 0;
}
