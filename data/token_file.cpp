#include "data/token_file.h"

#include <fcntl.h>
#include <unistd.h>

#include <cctype>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>

#include "common/atomic_file.h"
#include "common/error.h"
#include "common/h5.h"
#include "common/mapped_file.h"
#include "common/sha256.h"

namespace fs = std::filesystem;

namespace dms {

// ---- the seal ------------------------------------------------------------------------

namespace {

constexpr char kSealPrefix[] = "dms-retrofit tokens sha256 ";

std::string seal_text(const std::string& sha256, uint64_t bytes) {
  std::string t = kSealPrefix + sha256 + " bytes " + std::to_string(bytes) + "\n";
  t.resize(kTokenSealBytes, '\0');
  return t;
}

// Writes the seal of the finished HDF5 file `path` into its user block.
void seal(const std::string& path) {
  const std::shared_ptr<MappedFile> m = map_file(path);
  if (m->size < kTokenSealBytes) throw std::runtime_error(path + ": shorter than its user block");
  const uint64_t n = m->size - kTokenSealBytes;
  const std::string text = seal_text(sha256_hex(m->data + kTokenSealBytes, n), n);
  const int fd = ::open(path.c_str(), O_WRONLY | O_CLOEXEC);
  const bool ok = fd >= 0 && ::pwrite(fd, text.data(), text.size(), 0) == ssize_t(text.size());
  if (fd >= 0) ::close(fd);
  if (!ok) throw std::runtime_error(path + ": cannot write the token file's seal");
}

}  // namespace

TokenSeal read_token_seal(const std::string& path) {
  const uint64_t size = require_regular_file(path);
  TokenSeal s;
  std::ifstream in(path, std::ios::binary);
  std::string block(kTokenSealBytes, '\0');
  if (size < kTokenSealBytes || !in.read(block.data(), std::streamsize(block.size()))) return s;
  if (block.compare(0, sizeof kSealPrefix - 1, kSealPrefix) != 0) return s;
  s.kind = TokenSeal::malformed;
  // Exactly as seal_text writes it: 64 lowercase hex digits, " bytes ", decimal, newline,
  // zeros to the end of the block.
  const size_t hex = sizeof kSealPrefix - 1, tail = hex + 64;
  const std::string rest = block.substr(tail);
  if (rest.compare(0, 7, " bytes ") != 0) return s;
  const size_t nl = rest.find('\n');
  if (nl == std::string::npos || nl <= 7 || nl > 7 + 20) return s;
  const std::string digits = rest.substr(7, nl - 7);
  for (char c : digits)
    if (c < '0' || c > '9') return s;
  for (size_t i = tail + nl + 1; i < block.size(); ++i)
    if (block[i] != '\0') return s;
  for (size_t i = hex; i < tail; ++i)
    if (!std::isxdigit(static_cast<unsigned char>(block[i])) || std::isupper(block[i])) return s;
  errno = 0;
  const unsigned long long bytes = std::strtoull(digits.c_str(), nullptr, 10);
  if (errno != 0) return s;
  s.kind = TokenSeal::sealed;
  s.sha256 = block.substr(hex, 64);
  s.bytes = bytes;
  return s;
}

void verify_token_seal(const std::string& path) {
  const TokenSeal s = read_token_seal(path);
  require(s.kind != TokenSeal::none, path,
          "no dms seal (not written by 'dms data prepare/sample', or by a version before seals): "
          "pass --trust-token-files to let HDF5 read it unchecked, or prepare it again");
  require(s.kind == TokenSeal::sealed, path, "damaged: its seal (first 512 bytes) is malformed");
  const std::shared_ptr<MappedFile> m = map_file(path);
  const uint64_t n = m->size - kTokenSealBytes;
  require(n == s.bytes, path,
          "damaged: holds " + std::to_string(n) + " bytes after its seal, which names " +
              std::to_string(s.bytes) + " (truncated or appended to?)");
  require(sha256_hex(m->data + kTokenSealBytes, n) == s.sha256, path,
          "damaged: its bytes do not match the sha256 of its seal (changed since it was "
          "written)");
}

// ---- writing -------------------------------------------------------------------------

struct TokenWriter::Impl {
  std::string path, tmp;
  int64_t T = 0;
  TokenFileInfo info;
  h5::Handle file, dset;
  bool done = false;
};

TokenWriter::TokenWriter(const std::string& path, int64_t seq_len, const TokenFileInfo& info)
    : impl_(std::make_unique<Impl>()) {
  impl_->path = path;
  impl_->tmp = path + ".tmp." + std::to_string(::getpid());
  impl_->T = seq_len;
  impl_->info = info;
  if (fs::path(path).has_parent_path()) fs::create_directories(fs::path(path).parent_path());
  impl_->file = h5::create_file(impl_->tmp, kTokenSealBytes);
  hsize_t dims[2] = {0, hsize_t(seq_len)}, maxdims[2] = {H5S_UNLIMITED, hsize_t(seq_len)};
  h5::Handle space(H5Screate_simple(2, dims, maxdims), H5Sclose);
  h5::Handle plist(H5Pcreate(H5P_DATASET_CREATE), H5Pclose);
  hsize_t chunk[2] = {hsize_t(std::max<int64_t>(1, 65536 / seq_len)), hsize_t(seq_len)};
  H5Pset_chunk(plist.get(), 2, chunk);
  H5Pset_obj_track_times(plist.get(), false);  // same rows, same bytes: no timestamps
  impl_->dset = h5::Handle(H5Dcreate2(impl_->file.get(), "tokens", H5T_STD_U32LE, space.get(),
                                      H5P_DEFAULT, plist.get(), H5P_DEFAULT),
                           H5Dclose);
  if (!impl_->dset.valid()) throw std::runtime_error(impl_->tmp + ": cannot create dataset");
}

TokenWriter::~TokenWriter() {
  if (impl_ && !impl_->done) {
    impl_->dset = h5::Handle();
    impl_->file = h5::Handle();
    std::remove(impl_->tmp.c_str());
  }
}

void TokenWriter::add_row(const std::vector<uint32_t>& row) {
  if (int64_t(row.size()) != impl_->T) throw std::invalid_argument("TokenWriter: row length");
  hsize_t dims[2] = {hsize_t(rows_ + 1), hsize_t(impl_->T)};
  if (H5Dset_extent(impl_->dset.get(), dims) < 0)
    throw std::runtime_error(impl_->tmp + ": cannot extend dataset");
  h5::Handle fspace(H5Dget_space(impl_->dset.get()), H5Sclose);
  hsize_t start[2] = {hsize_t(rows_), 0}, count[2] = {1, hsize_t(impl_->T)};
  H5Sselect_hyperslab(fspace.get(), H5S_SELECT_SET, start, nullptr, count, nullptr);
  h5::Handle mspace(H5Screate_simple(2, count, nullptr), H5Sclose);
  if (H5Dwrite(impl_->dset.get(), H5T_NATIVE_UINT32, mspace.get(), fspace.get(), H5P_DEFAULT,
               row.data()) < 0)
    throw std::runtime_error(impl_->tmp + ": write failed (disk full?)");
  ++rows_;
}

void TokenWriter::finish(int64_t documents, int64_t tokens) {
  hid_t f = impl_->file.get();
  impl_->info.documents = documents;
  impl_->info.tokens = tokens;
  const TokenFileInfo& i = impl_->info;
  h5::set_attr(f, "format", std::string("dms-retrofit tokens v1"));
  h5::set_attr(f, "vocab_size", i.vocab_size);
  h5::set_attr(f, "tokenizer_sha256", i.tokenizer_hash);
  h5::set_attr(f, "bos_id", i.bos_id);
  h5::set_attr(f, "eos_id", i.eos_id);
  h5::set_attr(f, "source", i.source);
  h5::set_attr(f, "framing", i.framing);
  h5::set_attr(f, "documents", i.documents);
  h5::set_attr(f, "tokens", i.tokens);
  h5::set_attr(f, "rows", rows_);
  h5::set_attr(f, "seq_len", impl_->T);
  impl_->dset = h5::Handle();
  if (H5Fflush(f, H5F_SCOPE_GLOBAL) < 0) throw std::runtime_error(impl_->tmp + ": flush failed");
  impl_->file = h5::Handle();
  seal(impl_->tmp);
  sync_path(impl_->tmp);
  fs::rename(impl_->tmp, impl_->path);
  impl_->done = true;
}

// ---- reading -------------------------------------------------------------------------

struct TokenData::Source {
  // HDF5
  h5::Handle file, dset;
  // .bin
  std::shared_ptr<MappedFile> map;
  uint64_t bin_offset = 0;
  int bin_width = 2;
};

TokenData open_tokens(const std::string& path, int64_t bin_seq_len, const std::string& bin_dtype,
                      TokenTrust trust) {
  require(fs::exists(path), path, "no such file");
  TokenData d;
  d.path = path;
  d.src = std::make_shared<TokenData::Source>();
  if (fs::path(path).extension() == ".bin") {
    require(bin_seq_len > 0, path, "a .bin token stream needs --seq-len to cut it into rows");
    auto& s = *d.src;
    s.map = map_file(path);
    s.bin_width = bin_dtype == "uint32" ? 4 : 2;
    require(bin_dtype == "uint16" || bin_dtype == "uint32", path,
            "bin dtype must be uint16 or uint32");
    uint64_t n = s.map->size / uint64_t(s.bin_width);
    if (s.map->size >= 1024) {
      int32_t h[3];
      std::memcpy(h, s.map->data, sizeof(h));
      if (h[0] == 20240520) {  // llm.c: 256 int32 header, version 1 = uint16, 2 = uint32
        require(h[1] == 1 || h[1] == 2, path,
                "unknown llm.c token file version " + std::to_string(h[1]));
        s.bin_width = h[1] == 1 ? 2 : 4;
        s.bin_offset = 1024;
        // The count is a signed int32: checked as such, before any product could wrap.
        require(h[2] >= 0 && s.bin_offset + uint64_t(h[2]) * uint64_t(s.bin_width) <= s.map->size,
                path,
                "header claims " + std::to_string(h[2]) + " tokens but the file holds " +
                    std::to_string((s.map->size - s.bin_offset) / uint64_t(s.bin_width)));
        n = uint64_t(h[2]);
      }
    }
    require(s.map->size % uint64_t(s.bin_width) == 0 || s.bin_offset > 0, path,
            "size is not a multiple of the token width");
    d.seq_len = bin_seq_len;
    d.n_rows = int64_t(n / uint64_t(bin_seq_len));
    d.info.tokens = int64_t(n);
    d.info.source = path;
    require(
        d.n_rows > 0, path,
        "fewer tokens (" + std::to_string(n) + ") than one row of " + std::to_string(bin_seq_len));
    return d;
  }
  if (trust == TokenTrust::verify) verify_token_seal(path);
  d.src->file = h5::open_file(path);
  hid_t f = d.src->file.get();
  auto dims = h5::dataset_dims(f, "tokens", path);
  require(dims.size() == 2, path, "dataset 'tokens' must be 2-D [N, T]");
  d.n_rows = int64_t(dims[0]);
  d.seq_len = int64_t(dims[1]);
  require(d.n_rows > 0 && d.seq_len > 0, path, "no token rows (empty file)");
  d.src->dset = h5::open_dataset(f, "tokens", path);
  {
    h5::Handle type(H5Dget_type(d.src->dset.get()), H5Tclose);
    require(H5Tget_class(type.get()) == H5T_INTEGER, path, "dataset 'tokens' is not integer");
  }
  if (h5::has_attr(f, "vocab_size")) d.info.vocab_size = h5::get_int_attr(f, "vocab_size", path);
  if (h5::has_attr(f, "tokenizer_sha256"))
    d.info.tokenizer_hash = h5::get_string_attr(f, "tokenizer_sha256", path);
  if (h5::has_attr(f, "bos_id")) d.info.bos_id = h5::get_int_attr(f, "bos_id", path);
  if (h5::has_attr(f, "eos_id")) d.info.eos_id = h5::get_int_attr(f, "eos_id", path);
  if (h5::has_attr(f, "source")) d.info.source = h5::get_string_attr(f, "source", path);
  if (h5::has_attr(f, "framing")) d.info.framing = h5::get_string_attr(f, "framing", path);
  if (h5::has_attr(f, "documents")) d.info.documents = h5::get_int_attr(f, "documents", path);
  if (h5::has_attr(f, "tokens")) d.info.tokens = h5::get_int_attr(f, "tokens", path);
  return d;
}

at::Tensor TokenData::rows(const std::vector<int64_t>& index) const {
  const int64_t n = int64_t(index.size());
  at::Tensor out = at::empty({n, seq_len}, at::kLong);
  // int64: HDF5 converts any stored integer type without clipping (a negative id read as
  // uint32 would silently become 0), so validate_tokens sees the ids as they are stored.
  std::vector<int64_t> buf(static_cast<size_t>(seq_len));
  for (int64_t r = 0; r < n; ++r) {
    const int64_t i = index[size_t(r)];
    if (i < 0 || i >= n_rows) throw std::out_of_range(path + ": row " + std::to_string(i));
    if (src->map) {
      const uint8_t* p =
          src->map->data + src->bin_offset + uint64_t(i * seq_len) * uint64_t(src->bin_width);
      for (int64_t t = 0; t < seq_len; ++t) {
        if (src->bin_width == 2) {
          uint16_t v;
          std::memcpy(&v, p + 2 * t, 2);
          buf[size_t(t)] = v;
        } else {
          uint32_t v;
          std::memcpy(&v, p + 4 * t, 4);
          buf[size_t(t)] = v;
        }
      }
    } else {
      h5::Handle fspace(H5Dget_space(src->dset.get()), H5Sclose);
      hsize_t start[2] = {hsize_t(i), 0}, count[2] = {1, hsize_t(seq_len)};
      H5Sselect_hyperslab(fspace.get(), H5S_SELECT_SET, start, nullptr, count, nullptr);
      h5::Handle mspace(H5Screate_simple(2, count, nullptr), H5Sclose);
      require(H5Dread(src->dset.get(), H5T_NATIVE_INT64, mspace.get(), fspace.get(), H5P_DEFAULT,
                      buf.data()) >= 0,
              path, "cannot read row " + std::to_string(i) + " (damaged file?)");
    }
    int64_t* o = out.data_ptr<int64_t>() + r * seq_len;
    std::memcpy(o, buf.data(), size_t(seq_len) * sizeof(int64_t));
  }
  return out;
}

std::pair<int64_t, int64_t> TokenData::id_range() const {
  int64_t mn = std::numeric_limits<int64_t>::max(), mx = -1;
  const int64_t block = 256;
  for (int64_t start = 0; start < n_rows; start += block) {
    std::vector<int64_t> idx;
    for (int64_t i = start; i < std::min(n_rows, start + block); ++i) idx.push_back(i);
    const at::Tensor r = rows(idx);
    mn = std::min(mn, r.min().item<int64_t>());
    mx = std::max(mx, r.max().item<int64_t>());
  }
  return {mn, mx};
}

void validate_tokens(const TokenData& d, int64_t model_vocab, int64_t model_context) {
  require(d.n_rows > 0, d.path, "no token rows (empty file)");
  require(model_context <= 0 || d.seq_len <= model_context, d.path,
          "rows of " + std::to_string(d.seq_len) + " tokens exceed the model's context of " +
              std::to_string(model_context));
  if (d.info.vocab_size > 0)
    require(d.info.vocab_size <= model_vocab, d.path,
            "made with a vocabulary of " + std::to_string(d.info.vocab_size) +
                " but the model has " + std::to_string(model_vocab));
  const auto [mn, mx] = d.id_range();
  require(mn >= 0, d.path, "token id " + std::to_string(mn) + " is negative");
  require(mx < model_vocab, d.path,
          "token id " + std::to_string(mx) + " is outside the model's vocabulary of " +
              std::to_string(model_vocab));
}

}  // namespace dms
