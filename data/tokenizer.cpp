#include "data/tokenizer.h"

#include <filesystem>

#include "common/error.h"
#include "common/json_file.h"
#include "common/mapped_file.h"
#include "common/sha256.h"
#include "data/hf_tokenizer.h"

namespace fs = std::filesystem;
using nlohmann::json;

namespace dms {

namespace {

struct Located {
  enum Form { SentencePiece, TokenizerJson, Gpt2 } form;
  std::string file;  // the model file (Gpt2: the folder)
  std::string dir;   // where tokenizer_config.json would be
  std::vector<std::string> files;  // every file read, for the fingerprint
};

Located locate(const std::string& path) {
  require(fs::exists(path), path, "tokenizer not found");
  if (fs::is_directory(path)) {
    const fs::path d(path);
    if (fs::exists(d / "tokenizer.json"))
      return {Located::TokenizerJson, (d / "tokenizer.json").string(), path, {(d / "tokenizer.json").string()}};
    if (fs::exists(d / "vocab.json") && fs::exists(d / "merges.txt"))
      return {Located::Gpt2, path, path, {(d / "vocab.json").string(), (d / "merges.txt").string()}};
    if (fs::exists(d / "tokenizer.model"))
      return {Located::SentencePiece, (d / "tokenizer.model").string(), path, {(d / "tokenizer.model").string()}};
    throw InputError(path + ": no tokenizer.json, vocab.json + merges.txt or tokenizer.model in this folder");
  }
  require_regular_file(path);
  const fs::path p(path);
  const std::string dir = p.has_parent_path() ? p.parent_path().string() : ".";
  if (p.filename() == "vocab.json") {
    require(fs::exists(p.parent_path() / "merges.txt"), path, "no merges.txt beside vocab.json");
    return {Located::Gpt2, dir, dir, {path, (p.parent_path() / "merges.txt").string()}};
  }
  if (p.extension() == ".json") return {Located::TokenizerJson, path, dir, {path}};
  return {Located::SentencePiece, path, dir, {path}};
}

// A special-token entry of tokenizer_config.json: "text", {"content": "text"} or null.
std::string config_token(const json& config, const char* key, const std::string& where) {
  if (!config.is_object() || !config.contains(key) || config[key].is_null()) return "";
  const json& v = config[key];
  if (v.is_string()) return v.get<std::string>();
  if (v.is_object() && v.contains("content") && v["content"].is_string())
    return v["content"].get<std::string>();
  throw InputError(where + ": " + key + ": expected a string or {\"content\": ...}");
}

// chat_template: a string, or a list of {name, template} (the "default" one), or a
// chat_template.jinja file beside the config.
std::string chat_template_of(const json& config, const std::string& dir, const std::string& where) {
  if (config.is_object() && config.contains("chat_template")) {
    const json& t = config["chat_template"];
    if (t.is_string()) return t.get<std::string>();
    if (t.is_array()) {
      for (const json& e : t)
        if (e.is_object() && e.value("name", "") == "default" && e.contains("template") &&
            e["template"].is_string())
          return e["template"].get<std::string>();
      throw InputError(where + ": chat_template: no template named \"default\" in the list");
    }
    if (!t.is_null()) throw InputError(where + ": chat_template: expected a string or a list");
  }
  const fs::path jinja = fs::path(dir) / "chat_template.jinja";
  if (fs::exists(jinja)) {
    auto m = map_file(jinja.string());
    require(m->size <= (4u << 20), jinja.string(), "chat template over 4 MiB");
    return std::string(reinterpret_cast<const char*>(m->data), m->size);
  }
  return "";
}

int64_t id_or_none(const Tokenizer& t, const std::string& content, const std::string& where) {
  if (content.empty()) return -1;
  const int64_t id = t.token_id(content);
  require(id >= 0, where, "token '" + content + "' is not in the vocabulary");
  return id;
}

}  // namespace

std::vector<int64_t> Tokenizer::encode(const std::string& text, bool add_special_tokens) const {
  std::vector<int64_t> ids = backend_->encode(text);
  if (!add_special_tokens) return ids;
  std::vector<int64_t> out = backend_->prefix_ids();
  out.insert(out.end(), ids.begin(), ids.end());
  for (int64_t id : backend_->suffix_ids()) out.push_back(id);
  return out;
}

std::vector<std::string> Tokenizer::encode_pieces(const std::string& text) const {
  std::vector<std::string> pieces;
  for (int64_t id : encode(text)) pieces.push_back(piece(id));
  return pieces;
}

std::string Tokenizer::decode(const std::vector<int64_t>& ids, bool skip_special) const {
  try {
    return backend_->decode(ids, skip_special);
  } catch (const InputError& e) {
    throw InputError(path + ": " + e.what());
  }
}

const std::string& Tokenizer::special_string(const std::string& name) const {
  static const std::string none;
  for (const auto& [k, v] : special_strings_)
    if (k == name) return v;
  return none;
}

// The rule, in order:
//  1. SentencePiece (llama2.c, Llama 2, Mistral's .model): BOS before each document, no
//     EOS — how llama2.c's TinyStories models and Llama 2 were trained.
//  2. A post-processor that adds tokens (Llama 3's <|begin_of_text|>, Mistral's <s>): those.
//  3. Otherwise <|endoftext|> after each document when the vocabulary has it (GPT-2 and
//     Qwen pretraining separate documents with it).
Framing Tokenizer::default_framing() const {
  Framing f;
  if (sentencepiece_) {
    if (bos_ >= 0) f.before = {bos_};
    f.rule = "SentencePiece: BOS before each document, no EOS";
    return f;
  }
  f.before = backend_->prefix_ids();
  f.after = backend_->suffix_ids();
  if (!f.before.empty() || !f.after.empty()) {
    f.rule = "the tokenizer's post-processor";
    return f;
  }
  const int64_t eot = token_id("<|endoftext|>");
  if (eot >= 0) {
    f.after = {eot};
    f.rule = "<|endoftext|> between documents";
    return f;
  }
  f.rule = "nothing: the tokenizer names no document boundary";
  return f;
}

std::vector<int64_t> Tokenizer::framing_tokens(const std::string& spec,
                                               const std::string& option) const {
  if (spec == "none") return {};
  const int64_t id = token_id(spec);
  require(id >= 0, option, "'" + spec + "' is not a token of " + path + " (or use 'none')");
  return {id};
}

std::string Tokenizer::describe(const Framing& f) const {
  auto list = [&](const std::vector<int64_t>& ids) {
    if (ids.empty()) return std::string("none");
    std::string s;
    for (int64_t id : ids) s += (s.empty() ? "" : " ") + piece(id) + " (" + std::to_string(id) + ")";
    return s;
  };
  return "before " + list(f.before) + ", after " + list(f.after) + " [" + f.rule + "]";
}

Tokenizer load_tokenizer(const std::string& path) {
  const Located where = locate(path);
  Tokenizer t;
  t.path = path;
  const std::string config_path = (fs::path(where.dir) / "tokenizer_config.json").string();
  json config;
  if (where.form != Located::SentencePiece && fs::exists(config_path)) {
    config = read_json_file(config_path);
    require(config.is_object(), config_path, "expected a JSON object");
    t.config_path = config_path;
  }
  switch (where.form) {
    case Located::SentencePiece:
      t.backend_ = load_sentencepiece(where.file);
      t.sentencepiece_ = true;
      break;
    case Located::TokenizerJson:
      t.backend_ = load_hf_tokenizer_json(where.file);
      break;
    case Located::Gpt2:
      require(!t.config_path.empty(), config_path,
              "missing: vocab.json + merges.txt need it for the tokenizer class");
      t.backend_ = load_gpt2_tokenizer(where.file, config, config_path);
      break;
  }
  if (t.sentencepiece_) {
    const SpmSpecials s = sentencepiece_specials(*t.backend_);
    t.bos_ = s.bos, t.eos_ = s.eos, t.unk_ = s.unk, t.pad_ = s.pad;
  } else {
    for (const char* k : {"bos_token", "eos_token", "unk_token", "pad_token"}) {
      const std::string s = config_token(config, k, config_path);
      if (!s.empty()) t.special_strings_.emplace_back(k, s);
    }
    t.bos_ = id_or_none(t, t.special_string("bos_token"), config_path);
    t.eos_ = id_or_none(t, t.special_string("eos_token"), config_path);
    t.unk_ = id_or_none(t, t.special_string("unk_token"), config_path);
    t.pad_ = id_or_none(t, t.special_string("pad_token"), config_path);
    const Framing f = t.default_framing();  // no config: what the tokenizer itself says
    if (t.bos_ < 0 && !config.contains("bos_token") && f.before.size() == 1) t.bos_ = f.before[0];
    if (t.eos_ < 0 && !config.contains("eos_token") && f.after.size() == 1) t.eos_ = f.after[0];
    t.chat_template_ = chat_template_of(config, where.dir, config_path);
  }
  std::string hashes;
  for (const auto& f : where.files) hashes += sha256_file(f);
  if (!t.config_path.empty()) hashes += sha256_file(t.config_path);
  t.fingerprint_ = where.files.size() == 1 && t.config_path.empty()
                       ? hashes
                       : sha256_hex(hashes.data(), hashes.size());
  return t;
}

void check_tokenizer_fits(const Tokenizer& t, int64_t model_vocab, const std::string& model_path) {
  require(t.vocab_size() <= model_vocab, t.path,
          "tokenizer has " + std::to_string(t.vocab_size()) + " pieces but the model " +
              model_path + " has a vocabulary of " + std::to_string(model_vocab));
}

}  // namespace dms
