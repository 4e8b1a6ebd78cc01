// Fuzzes token-file opening (data/token_file.h, open_tokens) on .bin token streams: llm.c's
// files (256 int32 header: magic 20240520, version 1 = uint16 / 2 = uint32, token count,
// then the ids) and nanoGPT's headerless uint16 streams, cut into rows.
// Input: byte 0 chooses the options the command line would give (bits 0-5: --seq-len
// 1..64, bit 6: --bin-dtype uint32 instead of uint16) and, bit 7, an HDF5 token file
// instead of a stream; the rest is the file.
// Streams: rows are read, the first, the last, and every row when there are few
// (validate_tokens against a vocabulary of 2^17 and the row length as context).
// Expected rejection: dms::InputError (short file, bad header or version, a count the
// file does not hold, ids outside the vocabulary).
// HDF5 files: what runs before HDF5 is fuzzed, the seal of the first 512 bytes
// (read_token_seal, verify_token_seal). HDF5 is not instrumented and has known crashes on
// crafted files, so it must only ever see files the seal vouches for: whatever passes is
// then opened and read, and can only be a file TokenWriter wrote (the seeds, written by
// DMS_FUZZ_WRITE_SEEDS=DIR), short of a sha256 collision.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <fstream>
#include <iterator>

#include "data/token_file.h"
#include "fuzz/fuzz_util.h"

namespace {

// Sealed token files as TokenWriter writes them, as seeds (option byte with bit 7).
void write_seeds() {
  for (const int64_t T : {8, 33}) {
    const std::string path = fuzz::scratch_dir() + "/seed.h5";
    dms::TokenFileInfo info;
    info.vocab_size = 512;
    info.source = "fuzz seed";
    dms::TokenWriter w(path, T, info);
    for (int64_t r = 0; r < 5; ++r) {
      std::vector<uint32_t> row(static_cast<size_t>(T));
      for (int64_t t = 0; t < T; ++t) row[size_t(t)] = uint32_t((r * 31 + t * 7) % 512);
      w.add_row(row);
    }
    w.finish(5, 5 * T);
    std::ifstream in(path, std::ios::binary);
    const std::string file((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    fuzz::write_seed("sealed-T" + std::to_string(T) + ".bin", std::string(1, char(0x80)) + file);
  }
}

void open_hdf5(const uint8_t* data, size_t size) {
  const std::string path = fuzz::write_file("tokens.h5", data, size);
  if (!fuzz::accepts([&] { dms::verify_token_seal(path); })) return;
  const dms::TokenData d = dms::open_tokens(path);  // vouched for: any error is a finding
  FUZZ_CHECK(d.n_rows > 0 && d.seq_len > 0, "rows of a sealed file");
  dms::validate_tokens(d, 512, d.seq_len);
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  at::set_num_threads(1);
  if (fuzz::seed_dir()) write_seeds();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  if (data[0] & 128) {
    open_hdf5(data + 1, size - 1);
    return 0;
  }
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
