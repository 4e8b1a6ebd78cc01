#include "data/tokenizer.h"

#include <dlfcn.h>
#include <unistd.h>

#include <filesystem>
#include <mutex>

#include "data/spm_shim.h"
#include "common/error.h"

namespace fs = std::filesystem;

namespace dms {

namespace {

// Function table of the shim, loaded once per process.
struct Shim {
  decltype(&dms_spm_load) load;
  decltype(&dms_spm_free) free;
  decltype(&dms_spm_special) special;
  decltype(&dms_spm_encode) encode;
  decltype(&dms_spm_encode_pieces) encode_pieces;
  decltype(&dms_spm_decode) decode;
  decltype(&dms_spm_id_to_piece) id_to_piece;
};

std::string shim_path() {
  if (const char* env = std::getenv("DMS_SPM_SHIM")) return env;
  // Next to the running binary first (installed layout), then the build tree.
  std::error_code ec;
  fs::path exe = fs::read_symlink("/proc/self/exe", ec);
  if (!ec) {
    fs::path beside = exe.parent_path() / "libdms_spm.so";
    if (fs::exists(beside)) return beside.string();
  }
  return DMS_SPM_SHIM_PATH;
}

const Shim& shim() {
  static Shim s;
  static std::once_flag once;
  std::call_once(once, [] {
    const std::string path = shim_path();
    void* lib = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL | RTLD_DEEPBIND);
    if (!lib)
      throw std::runtime_error("cannot load the SentencePiece shim: " + std::string(dlerror()));
    auto sym = [&](const char* name) {
      void* p = dlsym(lib, name);
      if (!p) throw std::runtime_error(path + ": missing symbol " + name);
      return p;
    };
    s.load = reinterpret_cast<decltype(s.load)>(sym("dms_spm_load"));
    s.free = reinterpret_cast<decltype(s.free)>(sym("dms_spm_free"));
    s.special = reinterpret_cast<decltype(s.special)>(sym("dms_spm_special"));
    s.encode = reinterpret_cast<decltype(s.encode)>(sym("dms_spm_encode"));
    s.encode_pieces = reinterpret_cast<decltype(s.encode_pieces)>(sym("dms_spm_encode_pieces"));
    s.decode = reinterpret_cast<decltype(s.decode)>(sym("dms_spm_decode"));
    s.id_to_piece = reinterpret_cast<decltype(s.id_to_piece)>(sym("dms_spm_id_to_piece"));
  });
  return s;
}

void append_bytes(void* ctx, const char* data, size_t len) {
  static_cast<std::string*>(ctx)->append(data, len);
}
void push_piece(void* ctx, const char* data, size_t len) {
  static_cast<std::vector<std::string>*>(ctx)->emplace_back(data, len);
}
void copy_ids(void* ctx, const int* ids, size_t n) {
  static_cast<std::vector<int>*>(ctx)->assign(ids, ids + n);
}

// Collects an error message from the shim into a string.
struct ErrorText {
  std::string text;
};
void set_error(void* ctx, const char* data, size_t len) {
  static_cast<ErrorText*>(ctx)->text.assign(data, len);
}

}  // namespace

struct SpmHandle {
  void* p = nullptr;
  ~SpmHandle() {
    if (p) shim().free(p);
  }
};

int64_t Tokenizer::vocab_size() const {
  return shim().special(handle->p, 0);
}
int64_t Tokenizer::bos_id() const {
  return shim().special(handle->p, 1);
}
int64_t Tokenizer::eos_id() const {
  return shim().special(handle->p, 2);
}
int64_t Tokenizer::unk_id() const {
  return shim().special(handle->p, 3);
}
int64_t Tokenizer::pad_id() const {
  return shim().special(handle->p, 4);
}

std::vector<int64_t> Tokenizer::encode(const std::string& text, bool add_bos, bool add_eos) const {
  std::vector<int> ids;
  if (shim().encode(handle->p, text.data(), text.size(), copy_ids, &ids, nullptr) != 0)
    throw std::runtime_error(path + ": encode failed");
  std::vector<int64_t> out;
  out.reserve(ids.size() + 2);
  if (add_bos && bos_id() >= 0) out.push_back(bos_id());
  out.insert(out.end(), ids.begin(), ids.end());
  if (add_eos && eos_id() >= 0) out.push_back(eos_id());
  return out;
}

std::vector<std::string> Tokenizer::encode_pieces(const std::string& text) const {
  std::vector<std::string> pieces;
  if (shim().encode_pieces(handle->p, text.data(), text.size(), push_piece, &pieces, nullptr) != 0)
    throw std::runtime_error(path + ": encode failed");
  return pieces;
}

std::string Tokenizer::decode(const std::vector<int64_t>& ids) const {
  std::vector<int> v;
  v.reserve(ids.size());
  const int64_t n = vocab_size();
  for (int64_t id : ids) {
    if (id < 0 || id >= n)
      throw InputError(path + ": token id " + std::to_string(id) + " outside the vocabulary of " +
                       std::to_string(n));
    v.push_back(int(id));
  }
  std::string text;
  if (shim().decode(handle->p, v.data(), v.size(), append_bytes, &text, nullptr) != 0)
    throw std::runtime_error(path + ": decode failed");
  return text;
}

std::string Tokenizer::piece(int64_t id) const {
  std::string p;
  shim().id_to_piece(handle->p, int(id), append_bytes, &p);
  return p;
}

Tokenizer load_tokenizer(const std::string& path) {
  require(fs::is_regular_file(path), path, "tokenizer file not found");
  Tokenizer t;
  t.path = path;
  ErrorText err;
  void* p = shim().load(path.c_str(), set_error, &err);
  require(p != nullptr, path, "not a SentencePiece model (" + err.text + ")");
  t.handle = std::make_shared<SpmHandle>();
  t.handle->p = p;
  return t;
}

void check_tokenizer_fits(const Tokenizer& t, int64_t model_vocab, const std::string& model_path) {
  require(t.vocab_size() <= model_vocab, t.path,
          "tokenizer has " + std::to_string(t.vocab_size()) + " pieces but the model " +
              model_path + " has a vocabulary of " + std::to_string(model_vocab));
}

}  // namespace dms
