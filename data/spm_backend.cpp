// The SentencePiece backend, through the isolated shim module (see data/spm_shim.h for why).
#include <dlfcn.h>
#include <unistd.h>

#include <filesystem>
#include <mutex>

#include "common/error.h"
#include "common/mapped_file.h"
#include "data/spm_shim.h"
#include "data/tokenizer.h"
#include "data/utf8.h"

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

// A loaded SentencePieceProcessor inside the shim.
class SpmBackend final : public TokenizerBackend {
 public:
  SpmBackend(void* p, std::string path) : p_(p), path_(std::move(path)) {}
  ~SpmBackend() override { shim().free(p_); }
  SpmBackend(const SpmBackend&) = delete;
  SpmBackend& operator=(const SpmBackend&) = delete;

  int64_t special(int which) const { return shim().special(p_, which); }
  std::string kind() const override { return "SentencePiece"; }
  int64_t vocab_size() const override { return special(0); }
  std::vector<int64_t> encode(const std::string& text) const override {
    const size_t bad = utf8::first_invalid(text);
    if (bad != utf8::npos) throw InputError("text is not valid UTF-8 at byte " + std::to_string(bad));
    std::vector<int> ids;
    if (shim().encode(p_, text.data(), text.size(), copy_ids, &ids, nullptr) != 0)
      throw std::runtime_error(path_ + ": encode failed");
    return std::vector<int64_t>(ids.begin(), ids.end());
  }
  std::vector<int64_t> prefix_ids() const override {
    return special(1) >= 0 ? std::vector<int64_t>{special(1)} : std::vector<int64_t>{};
  }
  std::vector<int64_t> suffix_ids() const override { return {}; }
  // Control ids (BOS/EOS) produce nothing, as SentencePiece decodes them.
  std::string decode(const std::vector<int64_t>& ids, bool) const override {
    std::vector<int> v;
    v.reserve(ids.size());
    const int64_t n = vocab_size();
    for (int64_t id : ids) {
      if (id < 0 || id >= n)
        throw InputError(path_ + ": token id " + std::to_string(id) +
                         " outside the vocabulary of " + std::to_string(n));
      v.push_back(int(id));
    }
    std::string text;
    if (shim().decode(p_, v.data(), v.size(), append_bytes, &text, nullptr) != 0)
      throw std::runtime_error(path_ + ": decode failed");
    return text;
  }
  std::string piece(int64_t id) const override {
    std::string p;
    if (id >= 0 && id < vocab_size()) shim().id_to_piece(p_, int(id), append_bytes, &p);
    return p;
  }
  int64_t token_id(const std::string& piece) const override {
    for (int64_t id = 0; id < vocab_size(); ++id)
      if (this->piece(id) == piece) return id;
    return -1;
  }
  std::vector<NamedToken> named_tokens() const override {
    std::vector<NamedToken> v;
    for (int which : {1, 2, 3, 4})
      if (special(which) >= 0) v.push_back({piece(special(which)), special(which), true});
    return v;
  }

 private:
  void* p_;
  std::string path_;
};

}  // namespace

std::shared_ptr<const TokenizerBackend> load_sentencepiece(const std::string& path) {
  require_regular_file(path);
  ErrorText err;
  void* p = shim().load(path.c_str(), set_error, &err);
  require(p != nullptr, path, "not a SentencePiece model (" + err.text + ")");
  return std::make_shared<SpmBackend>(p, path);
}

SpmSpecials sentencepiece_specials(const TokenizerBackend& b) {
  const auto& s = dynamic_cast<const SpmBackend&>(b);
  return {s.special(1), s.special(2), s.special(3), s.special(4)};
}

}  // namespace dms
