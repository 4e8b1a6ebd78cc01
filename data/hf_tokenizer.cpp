#include "data/hf_tokenizer.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <utf8proc.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <set>
#include <unordered_map>

#include "common/error.h"
#include "common/json_file.h"
#include "common/mapped_file.h"
#include "data/bpe.h"
#include "data/utf8.h"

namespace fs = std::filesystem;
using nlohmann::json;

namespace dms {

namespace {

constexpr int64_t kMaxVocab = 1 << 24;       // ids past this are a malformed file
constexpr size_t kMaxPieceBytes = 1 << 12;   // longest vocabulary piece or added token
constexpr uint64_t kMaxMergesFile = 64 << 20;

// The regex of GPT-2's ByteLevel pre-tokenizer (use_regex: true).
const char* const kGpt2Regex =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";
// The Split regex that Qwen2Tokenizer implies (the same as Qwen's tokenizer.json).
const char* const kQwenRegex =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| "
    "?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";

// ---- reading fields, naming the file and the field in errors ----------------------------

struct Ctx {
  const std::string& file;
  std::string field;  // e.g. "pre_tokenizer.pretokenizers[1]"
  Ctx at(const std::string& key) const { return {file, field.empty() ? key : field + "." + key}; }
  Ctx index(size_t i) const { return {file, field + "[" + std::to_string(i) + "]"}; }
  [[noreturn]] void fail(const std::string& what) const {
    throw InputError(file + ": " + (field.empty() ? "" : field + ": ") + what);
  }
};

const json& need(const json& o, const std::string& key, const Ctx& c) {
  if (!o.is_object()) c.fail("expected an object");
  auto it = o.find(key);
  if (it == o.end()) c.fail("missing field '" + key + "'");
  return *it;
}
std::string str(const json& v, const Ctx& c) {
  if (!v.is_string()) c.fail("expected a string");
  return v.get<std::string>();
}
bool flag(const json& o, const std::string& key, bool dflt, const Ctx& c) {
  auto it = o.find(key);
  if (it == o.end() || it->is_null()) return dflt;
  if (!it->is_boolean()) c.at(key).fail("expected true or false");
  return it->get<bool>();
}
int64_t int_in(const json& v, int64_t lo, int64_t hi, const Ctx& c) {
  if (!v.is_number_integer()) c.fail("expected an integer");
  const int64_t x = v.get<int64_t>();
  if (x < lo || x > hi)
    c.fail(std::to_string(x) + " is outside [" + std::to_string(lo) + ", " + std::to_string(hi) +
           "]");
  return x;
}
std::string type_of(const json& o, const Ctx& c) { return str(need(o, "type", c), c.at("type")); }

// ---- byte-level alphabet (GPT-2's bytes_to_unicode) --------------------------------------

struct ByteAlphabet {
  std::string to_char[256];                       // byte -> UTF-8 of its stand-in character
  std::unordered_map<char32_t, uint8_t> to_byte;  // stand-in character -> byte
  ByteAlphabet() {
    int extra = 0;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE;
      const char32_t cp = printable ? char32_t(b) : char32_t(256 + extra++);
      utf8::append(to_char[b], cp);
      to_byte[cp] = uint8_t(b);
    }
  }
};
const ByteAlphabet& byte_alphabet() {
  static const ByteAlphabet a;
  return a;
}

// ---- PCRE2 --------------------------------------------------------------------------------

// `tokenizers` runs Split regexes with Oniguruma, whose \s is TAB..CR, U+0085 and the
// Unicode separators (Z*); PCRE2's \s also takes U+180E. Spelling \s and \S out keeps
// PCRE2 to Oniguruma's meaning.
std::string oniguruma_spaces(const std::string& pattern) {
  const std::string space = "\\t-\\r\\x{85}\\p{Z}";
  std::string out;
  bool in_class = false;
  for (size_t i = 0; i < pattern.size(); ++i) {
    const char c = pattern[i];
    if (c == '\\' && i + 1 < pattern.size()) {
      const char e = pattern[++i];
      if (e == 's') out += in_class ? space : "[" + space + "]";
      else if (e == 'S' && !in_class) out += "[^" + space + "]";
      else out += std::string{c, e};
      continue;
    }
    if (c == '[' && !in_class) {
      in_class = true;
      out += c;
      if (i + 1 < pattern.size() && pattern[i + 1] == '^') out += pattern[++i];
      if (i + 1 < pattern.size() && pattern[i + 1] == ']') out += pattern[++i];  // literal ]
      continue;
    }
    if (c == ']' && in_class) in_class = false;
    out += c;
  }
  return out;
}

// A compiled Unicode regex (UTF + UCP: \s, \p{L}, (?i) follow Unicode, as Oniguruma does).
class Regex {
 public:
  Regex(const std::string& source, const Ctx& c) {
    const std::string pattern = oniguruma_spaces(source);
    int err = 0;
    PCRE2_SIZE off = 0;
    code_ = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(),
                          PCRE2_UTF | PCRE2_UCP, &err, &off, nullptr);
    if (!code_) {
      PCRE2_UCHAR msg[256];
      pcre2_get_error_message(err, msg, sizeof msg);
      c.fail("regex does not compile at offset " + std::to_string(off) + ": " +
             reinterpret_cast<char*>(msg));
    }
    // Without JIT (an unsupported CPU) pcre2_match interprets: slower, same matches.
    pcre2_jit_compile(code_, PCRE2_JIT_COMPLETE);
  }
  ~Regex() { pcre2_code_free(code_); }
  Regex(const Regex&) = delete;
  Regex& operator=(const Regex&) = delete;

  // Appends [begin, end) of successive non-overlapping matches in `text` (valid UTF-8).
  void find_all(std::string_view text, std::vector<std::pair<size_t, size_t>>& out) const {
    struct Scratch {  // per thread: match data and a JIT stack big enough for long runs
      pcre2_match_data* md = pcre2_match_data_create(32, nullptr);
      pcre2_jit_stack* stack = pcre2_jit_stack_create(32 << 10, 8 << 20, nullptr);
      pcre2_match_context* mc = pcre2_match_context_create(nullptr);
      Scratch() { pcre2_jit_stack_assign(mc, nullptr, stack); }
      ~Scratch() {
        pcre2_match_data_free(md);
        pcre2_jit_stack_free(stack);
        pcre2_match_context_free(mc);
      }
    };
    thread_local Scratch s;
    const auto* subject = reinterpret_cast<PCRE2_SPTR>(text.data());
    size_t pos = 0;
    while (pos <= text.size()) {
      const int rc = pcre2_match(code_, subject, text.size(), pos, PCRE2_NO_UTF_CHECK, s.md, s.mc);
      if (rc == PCRE2_ERROR_NOMATCH) break;
      if (rc < 0) {
        PCRE2_UCHAR msg[256];
        pcre2_get_error_message(rc, msg, sizeof msg);
        throw InputError(std::string("pre-tokenizer regex failed on the text: ") +
                         reinterpret_cast<char*>(msg));
      }
      const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(s.md);
      out.emplace_back(ov[0], ov[1]);
      // After an empty match move one character on, as find_iter does.
      pos = ov[1] > ov[0] ? ov[1]
                          : ov[1] + (ov[1] < text.size()
                                         ? utf8::char_len(static_cast<unsigned char>(text[ov[1]]))
                                         : 1);
    }
  }

 private:
  pcre2_code* code_ = nullptr;
};

// ---- the pipeline's pieces ----------------------------------------------------------------

// A piece of text on its way to the model. `at_start`: it begins the input (Metaspace's
// prepend_scheme "first" adds its prefix only there).
struct Piece {
  std::string text;
  bool at_start = false;
};
using Pieces = std::vector<Piece>;
using Normalizer = std::function<void(std::string&)>;
using PreTokenizer = std::function<void(Pieces&)>;
using Decoder = std::function<void(std::vector<std::string>&)>;

void replace_all(std::string& s, const std::string& from, const std::string& to) {
  if (from.empty()) return;
  std::string out;
  size_t i = 0;
  for (size_t j; (j = s.find(from, i)) != std::string::npos; i = j + from.size())
    out.append(s, i, j - i).append(to);
  out.append(s, i, std::string::npos);
  s = std::move(out);
}

// {"String": s} -> s; the Regex form only where a caller supports it.
std::string string_pattern(const json& p, const Ctx& c) {
  if (p.is_object() && p.contains("String")) return str(p["String"], c.at("String"));
  if (p.is_object() && p.contains("Regex")) c.fail("Regex patterns are not supported here");
  c.fail("expected {\"String\": ...}");
}

// A Sequence component: the steps of list `key`, each built by `make`, applied in order.
template <class Arg>
std::function<void(Arg&)> sequence(const json& j, const char* key, const Ctx& c,
                                   std::function<void(Arg&)> (*make)(const json&, const Ctx&)) {
  if (c.field.size() > 256) c.fail("components nested too deeply");  // untrusted nesting
  const json& list = need(j, key, c);
  if (!list.is_array()) c.at(key).fail("expected a list");
  std::vector<std::function<void(Arg&)>> steps;
  for (size_t i = 0; i < list.size(); ++i) steps.push_back(make(list[i], c.at(key).index(i)));
  return [steps](Arg& x) {
    for (const auto& f : steps) f(x);
  };
}

// ---- normalizers ----------------------------------------------------------------------------

Normalizer unicode_normalizer(int options) {
  return [options](std::string& s) {
    if (utf8::is_ascii(s)) return;  // ASCII is invariant under every normal form
    utf8proc_uint8_t* out = nullptr;
    const auto n = utf8proc_map(reinterpret_cast<const utf8proc_uint8_t*>(s.data()),
                                utf8proc_ssize_t(s.size()), &out, utf8proc_option_t(options));
    if (n < 0) throw InputError(std::string("Unicode normalization failed: ") +
                                utf8proc_errmsg(n));
    s.assign(reinterpret_cast<char*>(out), size_t(n));
    free(out);
  };
}

Normalizer make_normalizer(const json& j, const Ctx& c);

Normalizer make_normalizer(const json& j, const Ctx& c) {
  const std::string t = type_of(j, c);
  if (t == "NFC") return unicode_normalizer(UTF8PROC_STABLE | UTF8PROC_COMPOSE);
  if (t == "NFD") return unicode_normalizer(UTF8PROC_STABLE | UTF8PROC_DECOMPOSE);
  if (t == "NFKC") return unicode_normalizer(UTF8PROC_STABLE | UTF8PROC_COMPOSE | UTF8PROC_COMPAT);
  if (t == "NFKD")
    return unicode_normalizer(UTF8PROC_STABLE | UTF8PROC_DECOMPOSE | UTF8PROC_COMPAT);
  if (t == "Sequence") return sequence<std::string>(j, "normalizers", c, make_normalizer);
  if (t == "Prepend") {
    const std::string p = str(need(j, "prepend", c), c.at("prepend"));
    return [p](std::string& s) {
      if (!s.empty()) s.insert(0, p);
    };
  }
  if (t == "Replace") {
    const std::string from = string_pattern(need(j, "pattern", c), c.at("pattern"));
    const std::string to = str(need(j, "content", c), c.at("content"));
    return [from, to](std::string& s) { replace_all(s, from, to); };
  }
  c.fail("unsupported normalizer '" + t + "'");
}

// ---- pre-tokenizers -------------------------------------------------------------------------

enum class SplitBehavior { Removed, Isolated, MergedWithPrevious, MergedWithNext, Contiguous };

SplitBehavior split_behavior(const json& j, const Ctx& c) {
  static const std::map<std::string, SplitBehavior> names = {
      {"Removed", SplitBehavior::Removed},
      {"Isolated", SplitBehavior::Isolated},
      {"MergedWithPrevious", SplitBehavior::MergedWithPrevious},
      {"MergedWithNext", SplitBehavior::MergedWithNext},
      {"Contiguous", SplitBehavior::Contiguous}};
  const std::string b = str(j, c);
  auto it = names.find(b);
  if (it == names.end()) c.fail("unsupported split behavior '" + b + "'");
  return it->second;
}

// `tokenizers`' NormalizedString::split: (range, is_match) spans covering the text become
// pieces as the behaviour says; empty pieces are dropped.
void split_spans(const Piece& p, std::vector<std::pair<std::pair<size_t, size_t>, bool>> spans,
                 SplitBehavior b, Pieces& out) {
  using Span = std::pair<std::pair<size_t, size_t>, bool>;
  std::vector<std::pair<size_t, size_t>> keep;
  bool prev_match = false;
  switch (b) {
    case SplitBehavior::Removed:
      for (const Span& s : spans)
        if (!s.second) keep.push_back(s.first);
      break;
    case SplitBehavior::Isolated:
      for (const Span& s : spans) keep.push_back(s.first);
      break;
    case SplitBehavior::MergedWithPrevious:
      for (const Span& s : spans) {
        if (s.second && !prev_match && !keep.empty()) keep.back().second = s.first.second;
        else keep.push_back(s.first);
        prev_match = s.second;
      }
      break;
    case SplitBehavior::MergedWithNext:
      for (auto it = spans.rbegin(); it != spans.rend(); ++it) {
        if (it->second && !prev_match && !keep.empty()) keep.back().first = it->first.first;
        else keep.push_back(it->first);
        prev_match = it->second;
      }
      std::reverse(keep.begin(), keep.end());
      break;
    case SplitBehavior::Contiguous:
      for (size_t i = 0; i < spans.size(); ++i) {
        if (i > 0 && spans[i].second == prev_match) keep.back().second = spans[i].first.second;
        else keep.push_back(spans[i].first);
        prev_match = spans[i].second;
      }
      break;
  }
  bool first = true;
  for (const auto& [a, e] : keep) {
    if (e <= a) continue;
    out.push_back({p.text.substr(a, e - a), p.at_start && first && a == 0});
    first = false;
  }
}

// Matches of a regex or a literal as (range, is_match) spans covering the whole text.
using Matcher = std::function<void(std::string_view, std::vector<std::pair<size_t, size_t>>&)>;

PreTokenizer split_pre_tokenizer(Matcher find, SplitBehavior behavior, bool invert) {
  return [find, behavior, invert](Pieces& pieces) {
    Pieces out;
    std::vector<std::pair<size_t, size_t>> m;
    for (const Piece& p : pieces) {
      m.clear();
      find(p.text, m);
      std::vector<std::pair<std::pair<size_t, size_t>, bool>> spans;
      size_t prev = 0;
      for (const auto& [a, e] : m) {
        if (a > prev) spans.push_back({{prev, a}, invert});
        spans.push_back({{a, e}, !invert});
        prev = e;
      }
      if (prev < p.text.size()) spans.push_back({{prev, p.text.size()}, invert});
      split_spans(p, std::move(spans), behavior, out);
    }
    pieces = std::move(out);
  };
}

Matcher regex_matcher(const std::string& pattern, const Ctx& c) {
  auto re = std::make_shared<const Regex>(pattern, c);
  return [re](std::string_view s, std::vector<std::pair<size_t, size_t>>& m) {
    re->find_all(s, m);
  };
}

Matcher literal_matcher(const std::string& lit) {
  return [lit](std::string_view s, std::vector<std::pair<size_t, size_t>>& m) {
    if (lit.empty()) return;
    for (size_t i = s.find(lit); i != std::string_view::npos; i = s.find(lit, i + lit.size()))
      m.emplace_back(i, i + lit.size());
  };
}

PreTokenizer byte_level_pre_tokenizer(bool add_prefix_space, bool use_regex, const Ctx& c) {
  PreTokenizer split;
  if (use_regex)
    split = split_pre_tokenizer(regex_matcher(kGpt2Regex, c), SplitBehavior::Isolated, false);
  return [add_prefix_space, split](Pieces& pieces) {
    if (add_prefix_space)
      for (Piece& p : pieces)
        if (p.text.empty() || p.text[0] != ' ') p.text.insert(0, " ");
    if (split) split(pieces);
    const ByteAlphabet& a = byte_alphabet();
    for (Piece& p : pieces) {
      std::string mapped;
      mapped.reserve(p.text.size() * 2);
      for (unsigned char b : p.text) mapped += a.to_char[b];
      p.text = std::move(mapped);
    }
  };
}

enum class Prepend { Always, First, Never };

Prepend prepend_scheme(const json& j, const Ctx& c) {
  if (j.contains("prepend_scheme")) {
    const std::string s = str(j["prepend_scheme"], c.at("prepend_scheme"));
    if (s == "always") return Prepend::Always;
    if (s == "first") return Prepend::First;
    if (s == "never") return Prepend::Never;
    c.at("prepend_scheme").fail("unsupported value '" + s + "'");
  }
  return flag(j, "add_prefix_space", true, c) ? Prepend::Always : Prepend::Never;  // older files
}

PreTokenizer metaspace_pre_tokenizer(const json& j, const Ctx& c) {
  const std::string rep = str(need(j, "replacement", c), c.at("replacement"));
  if (rep.empty() || utf8::char_len(static_cast<unsigned char>(rep[0])) != rep.size())
    c.at("replacement").fail("must be one character");
  const Prepend scheme = prepend_scheme(j, c);
  PreTokenizer split;
  if (flag(j, "split", true, c))
    split = split_pre_tokenizer(literal_matcher(rep), SplitBehavior::MergedWithNext, false);
  return [rep, scheme, split](Pieces& pieces) {
    for (Piece& p : pieces) {
      replace_all(p.text, " ", rep);
      const bool starts = p.text.compare(0, rep.size(), rep) == 0;
      if (!starts && (scheme == Prepend::Always || (scheme == Prepend::First && p.at_start)))
        p.text.insert(0, rep);
    }
    if (split) split(pieces);
  };
}

PreTokenizer make_pre_tokenizer(const json& j, const Ctx& c);

PreTokenizer make_pre_tokenizer(const json& j, const Ctx& c) {
  const std::string t = type_of(j, c);
  if (t == "Sequence") return sequence<Pieces>(j, "pretokenizers", c, make_pre_tokenizer);
  if (t == "ByteLevel")
    return byte_level_pre_tokenizer(flag(j, "add_prefix_space", false, c),
                                    flag(j, "use_regex", true, c), c);
  if (t == "Metaspace") return metaspace_pre_tokenizer(j, c);
  if (t == "Split") {
    const json& pat = need(j, "pattern", c);
    const Ctx pc = c.at("pattern");
    Matcher m = pat.is_object() && pat.contains("Regex")
                    ? regex_matcher(str(pat["Regex"], pc.at("Regex")), pc.at("Regex"))
                    : literal_matcher(string_pattern(pat, pc));
    return split_pre_tokenizer(m, split_behavior(need(j, "behavior", c), c.at("behavior")),
                               flag(j, "invert", false, c));
  }
  c.fail("unsupported pre-tokenizer '" + t + "'");
}

// ---- decoders -------------------------------------------------------------------------------

void byte_level_decode(std::vector<std::string>& tokens) {
  const ByteAlphabet& a = byte_alphabet();
  std::string bytes;
  for (const std::string& t : tokens) {
    std::string mine;
    bool mapped = true;
    for (size_t i = 0; i < t.size() && mapped;) {
      auto it = a.to_byte.find(utf8::decode_at(t, i));
      mapped = it != a.to_byte.end();
      if (mapped) mine += char(it->second);
      i += utf8::char_len(static_cast<unsigned char>(t[i]));
    }
    bytes += mapped ? mine : t;  // a token outside the alphabet is kept as it is
  }
  tokens = {utf8::lossy(bytes)};
}

void byte_fallback_decode(std::vector<std::string>& tokens) {
  std::vector<std::string> out;
  std::string bytes;
  auto flush = [&] {
    if (bytes.empty()) return;
    if (utf8::first_invalid(bytes) == utf8::npos) out.push_back(bytes);
    else for (size_t i = 0; i < bytes.size(); ++i) out.push_back("\xEF\xBF\xBD");
    bytes.clear();
  };
  for (std::string& t : tokens) {
    if (t.size() == 6 && t.compare(0, 3, "<0x") == 0 && t[5] == '>' && isxdigit(t[3]) &&
        isxdigit(t[4])) {
      bytes += char(std::stoi(t.substr(3, 2), nullptr, 16));
    } else {
      flush();
      out.push_back(std::move(t));
    }
  }
  flush();
  tokens = std::move(out);
}

Decoder strip_decoder(const json& j, const Ctx& c) {
  const std::string content = str(need(j, "content", c), c.at("content"));
  if (content.empty() || utf8::char_len(static_cast<unsigned char>(content[0])) != content.size())
    c.at("content").fail("must be one character");
  const int64_t start = int_in(need(j, "start", c), 0, 1 << 20, c.at("start"));
  const int64_t stop = int_in(need(j, "stop", c), 0, 1 << 20, c.at("stop"));
  return [content, start, stop](std::vector<std::string>& tokens) {
    for (std::string& t : tokens) {
      int64_t n = 0;
      size_t a = 0, e = t.size();
      while (n < start && t.compare(a, content.size(), content) == 0) a += content.size(), ++n;
      n = 0;
      while (n < stop && e >= a + content.size() &&
             t.compare(e - content.size(), content.size(), content) == 0)
        e -= content.size(), ++n;
      t = t.substr(a, e - a);
    }
  };
}

Decoder metaspace_decoder(const json& j, const Ctx& c) {
  const std::string rep = str(need(j, "replacement", c), c.at("replacement"));
  const bool strip_first = prepend_scheme(j, c) != Prepend::Never;
  return [rep, strip_first](std::vector<std::string>& tokens) {
    for (size_t i = 0; i < tokens.size(); ++i)
      replace_all(tokens[i], rep, i == 0 && strip_first ? "" : " ");
  };
}

Decoder make_decoder(const json& j, const Ctx& c);

Decoder make_decoder(const json& j, const Ctx& c) {
  const std::string t = type_of(j, c);
  if (t == "ByteLevel") return byte_level_decode;
  if (t == "ByteFallback") return byte_fallback_decode;
  if (t == "Fuse")
    return [](std::vector<std::string>& tokens) {
      std::string all;
      for (const auto& s : tokens) all += s;
      tokens = {all};
    };
  if (t == "Strip") return strip_decoder(j, c);
  if (t == "Metaspace") return metaspace_decoder(j, c);
  if (t == "Sequence") return sequence<std::vector<std::string>>(j, "decoders", c, make_decoder);
  if (t == "Replace") {
    const std::string from = string_pattern(need(j, "pattern", c), c.at("pattern"));
    const std::string to = str(need(j, "content", c), c.at("content"));
    return [from, to](std::vector<std::string>& tokens) {
      for (auto& s : tokens) replace_all(s, from, to);
    };
  }
  c.fail("unsupported decoder '" + t + "'");
}

// ---- added tokens ---------------------------------------------------------------------------

struct AddedToken {
  std::string content;
  int32_t id = -1;
  bool special = false, lstrip = false, rstrip = false, single_word = false, normalized = false;
};

AddedToken parse_added_token(const json& j, int64_t id, const Ctx& c) {
  AddedToken t;
  t.content = str(need(j, "content", c), c.at("content"));
  if (t.content.empty() || t.content.size() > kMaxPieceBytes)
    c.at("content").fail("added token of " + std::to_string(t.content.size()) + " bytes");
  if (utf8::first_invalid(t.content) != utf8::npos) c.at("content").fail("not valid UTF-8");
  t.id = int32_t(id);
  t.special = flag(j, "special", false, c);
  t.lstrip = flag(j, "lstrip", false, c);
  t.rstrip = flag(j, "rstrip", false, c);
  t.single_word = flag(j, "single_word", false, c);
  t.normalized = flag(j, "normalized", !t.special, c);
  return t;
}

bool is_word_char(std::string_view s, size_t i) {
  const char32_t cp = utf8::decode_at(s, i);
  if (cp == '_') return true;
  const auto cat = utf8proc_category(utf8proc_int32_t(cp));
  return (cat >= UTF8PROC_CATEGORY_LU && cat <= UTF8PROC_CATEGORY_LO) ||
         (cat >= UTF8PROC_CATEGORY_MN && cat <= UTF8PROC_CATEGORY_ME) ||
         (cat >= UTF8PROC_CATEGORY_ND && cat <= UTF8PROC_CATEGORY_NO);
}
size_t prev_char(std::string_view s, size_t i) {  // start of the character before s[i]
  do --i;
  while (i > 0 && (static_cast<unsigned char>(s[i]) & 0xC0) == 0x80);
  return i;
}
bool is_space_at(std::string_view s, size_t i) {
  const char32_t cp = utf8::decode_at(s, i);
  return utf8proc_category(utf8proc_int32_t(cp)) == UTF8PROC_CATEGORY_ZS ||
         (cp >= 0x09 && cp <= 0x0D) || cp == 0x85 || cp == 0x2028 || cp == 0x2029;
}

// Leftmost-longest matching of added tokens (what `tokenizers` does with Aho-Corasick),
// over a byte trie.
class AddedMatcher {
 public:
  void add(const AddedToken& t) {
    int node = 0;
    for (unsigned char b : t.content) {
      auto& next = nodes_[size_t(node)].next;
      auto it = next.find(b);
      if (it == next.end()) {
        nodes_.push_back({});
        it = nodes_[size_t(node)].next.emplace(b, int(nodes_.size()) - 1).first;
      }
      node = it->second;
    }
    nodes_[size_t(node)].token = tokens_.size();
    tokens_.push_back(t);
  }
  bool empty() const { return tokens_.empty(); }

  struct Hit {
    size_t begin, end;
    int32_t id;
  };
  // Matches in `s`, after lstrip/rstrip/single_word are applied.
  std::vector<Hit> find(std::string_view s) const {
    std::vector<Hit> hits;
    size_t done = 0;  // end of the previous hit
    for (size_t i = 0; i < s.size();) {
      size_t best_len = 0, best = 0;
      for (size_t k = i, node = 0; k < s.size(); ++k) {
        auto it = nodes_[node].next.find(static_cast<unsigned char>(s[k]));
        if (it == nodes_[node].next.end()) break;
        node = size_t(it->second);
        if (nodes_[node].token != kNone) best_len = k + 1 - i, best = nodes_[node].token;
      }
      if (best_len == 0) {
        ++i;
        continue;
      }
      const AddedToken& t = tokens_[best];
      size_t a = i, e = i + best_len;
      i = e;
      if (t.single_word && ((a > 0 && is_word_char(s, prev_char(s, a))) ||
                            (e < s.size() && is_word_char(s, e))))
        continue;
      if (t.lstrip)
        while (a > done && is_space_at(s, prev_char(s, a))) a = prev_char(s, a);
      if (t.rstrip)
        while (e < s.size() && is_space_at(s, e))
          e += utf8::char_len(static_cast<unsigned char>(s[e]));
      hits.push_back({a, e, t.id});
      i = done = e;
    }
    return hits;
  }

 private:
  static constexpr size_t kNone = size_t(-1);
  struct Node {
    std::map<unsigned char, int> next;
    size_t token = kNone;
  };
  std::vector<Node> nodes_{Node{}};
  std::vector<AddedToken> tokens_;
};

// ---- the tokenizer --------------------------------------------------------------------------

class HfTokenizer final : public TokenizerBackend {
 public:
  std::string kind_;
  std::unique_ptr<BpeModel> model;
  Normalizer normalizer;      // may be empty
  PreTokenizer pre_tokenizer;  // may be empty
  Decoder decoder;            // empty: tokens joined with spaces
  std::vector<int64_t> prefix, suffix;
  std::vector<AddedToken> added;
  AddedMatcher raw_matcher, normalized_matcher;
  std::unordered_map<int32_t, size_t> added_by_id;
  std::set<std::string> special_contents;

  // Gives the added tokens their ids as `tokenizers`' AddedVocabulary::add_tokens does (the
  // ids written in the file are only checked there, with a warning): a content already in
  // the vocabulary or added before keeps that id; a new one gets the next id past both the
  // vocabulary and the added tokens. A repeated content keeps its id and takes the later
  // flags. Then builds the matchers.
  void finish_added_tokens() {
    std::map<std::string, int32_t> id_of_content;
    std::map<std::string, size_t> kept_at;
    std::vector<AddedToken> kept;
    int32_t max_added = -1;
    for (AddedToken t : added) {
      auto seen = id_of_content.find(t.content);
      if (seen != id_of_content.end()) {
        t.id = seen->second;
        kept[kept_at[t.content]] = t;
        continue;
      }
      const int32_t in_vocab = model->id_of(t.content);
      if (in_vocab >= 0) {
        t.id = in_vocab;
      } else {
        const int32_t vocab = int32_t(model->piece_count());
        t.id = max_added < 0 ? vocab : (max_added >= vocab || vocab == 0 ? max_added + 1 : vocab);
      }
      id_of_content[t.content] = t.id;
      max_added = std::max(max_added, t.id);
      kept_at[t.content] = kept.size();
      kept.push_back(t);
    }
    added = std::move(kept);
    for (size_t i = 0; i < added.size(); ++i) {
      (added[i].normalized ? normalized_matcher : raw_matcher).add(added[i]);
      added_by_id[added[i].id] = i;
      if (added[i].special) special_contents.insert(added[i].content);
    }
  }

  std::string kind() const override { return kind_; }
  int64_t vocab_size() const override {
    int64_t n = model->max_id() + 1;
    for (const auto& t : added) n = std::max<int64_t>(n, t.id + 1);
    return n;
  }

  // Normalizes a stretch of text between added tokens, then splits it on the added tokens
  // that match normalized text, and runs the rest through the pre-tokenizer and the model.
  void encode_segment(std::string text, bool at_start, std::vector<int64_t>& out) const {
    if (normalizer) normalizer(text);
    size_t pos = 0;
    if (!normalized_matcher.empty())
      for (const auto& h : normalized_matcher.find(text)) {
        if (h.begin > pos) encode_words(text.substr(pos, h.begin - pos), at_start && pos == 0, out);
        out.push_back(h.id);
        pos = h.end;
      }
    if (pos == 0) encode_words(std::move(text), at_start, out);
    else if (pos < text.size()) encode_words(text.substr(pos), false, out);
  }

  void encode_words(std::string text, bool at_start, std::vector<int64_t>& out) const {
    Pieces pieces{{std::move(text), at_start}};
    if (pre_tokenizer) pre_tokenizer(pieces);
    std::vector<int32_t> ids;
    for (const Piece& p : pieces) model->encode_word(p.text, ids);
    out.insert(out.end(), ids.begin(), ids.end());
  }

  std::vector<int64_t> encode(const std::string& text) const override;
  std::vector<int64_t> prefix_ids() const override { return prefix; }
  std::vector<int64_t> suffix_ids() const override { return suffix; }
  std::string decode(const std::vector<int64_t>& ids, bool skip_special) const override;
  std::string piece(int64_t id) const override {
    auto it = added_by_id.find(int32_t(id));
    if (it != added_by_id.end()) return added[it->second].content;
    const std::string* p = model->piece_of(int32_t(id));
    return p ? *p : "";
  }
  int64_t token_id(const std::string& piece) const override {
    for (const auto& t : added)
      if (t.content == piece) return t.id;
    return model->id_of(piece);
  }
  std::vector<NamedToken> named_tokens() const override {
    std::vector<NamedToken> v;
    for (const auto& t : added) v.push_back({t.content, t.id, t.special});
    return v;
  }

};

std::vector<int64_t> HfTokenizer::encode(const std::string& text) const {
  const size_t bad = utf8::first_invalid(text);
  if (bad != utf8::npos)
    throw InputError("text is not valid UTF-8 at byte " + std::to_string(bad));
  std::vector<int64_t> out;
  out.reserve(text.size() / 3 + 4);
  size_t pos = 0;
  for (const auto& h : raw_matcher.find(text)) {
    if (h.begin > pos) encode_segment(text.substr(pos, h.begin - pos), pos == 0, out);
    out.push_back(h.id);
    pos = h.end;
  }
  if (pos < text.size()) encode_segment(pos == 0 ? text : text.substr(pos), pos == 0, out);
  return out;
}

std::string HfTokenizer::decode(const std::vector<int64_t>& ids, bool skip_special) const {
  const int64_t n = vocab_size();
  std::vector<std::string> tokens;
  tokens.reserve(ids.size());
  for (int64_t id : ids) {
    if (id < 0 || id >= n)
      throw InputError("token id " + std::to_string(id) + " outside the vocabulary of " +
                       std::to_string(n));
    std::string t = piece(id);
    if (t.empty()) continue;  // an id the vocabulary leaves unused, dropped as `tokenizers` does
    if (skip_special && special_contents.count(t)) continue;
    tokens.push_back(std::move(t));
  }
  if (!decoder) {
    std::string joined;
    for (size_t i = 0; i < tokens.size(); ++i) joined += (i ? " " : "") + tokens[i];
    return joined;
  }
  decoder(tokens);
  std::string text;
  for (const auto& t : tokens) text += t;
  return text;
}

// ---- tokenizer.json -------------------------------------------------------------------------

std::vector<std::pair<std::string, int32_t>> read_vocab(const json& v, const Ctx& c) {
  if (!v.is_object()) c.fail("expected an object of piece -> id");
  if (int64_t(v.size()) > kMaxVocab) c.fail("more than " + std::to_string(kMaxVocab) + " pieces");
  std::vector<std::pair<std::string, int32_t>> out;
  out.reserve(v.size());
  for (auto it = v.begin(); it != v.end(); ++it) {
    if (it.key().size() > kMaxPieceBytes) c.fail("a piece of " + std::to_string(it.key().size()) + " bytes");
    out.emplace_back(it.key(), int32_t(int_in(it.value(), 0, kMaxVocab - 1, c.at(it.key()))));
  }
  return out;
}

std::vector<std::pair<std::string, std::string>> read_merges(const json& m, const Ctx& c) {
  if (!m.is_array()) c.fail("expected a list");
  std::vector<std::pair<std::string, std::string>> out;
  out.reserve(m.size());
  for (size_t i = 0; i < m.size(); ++i) {
    const json& e = m[i];
    if (e.is_string()) {  // "left right": pieces never contain a space
      const std::string s = e.get<std::string>();
      const size_t sp = s.find(' ');
      if (sp == std::string::npos || s.find(' ', sp + 1) != std::string::npos)
        c.index(i).fail("expected \"left right\"");
      out.emplace_back(s.substr(0, sp), s.substr(sp + 1));
    } else if (e.is_array() && e.size() == 2 && e[0].is_string() && e[1].is_string()) {
      out.emplace_back(e[0].get<std::string>(), e[1].get<std::string>());
    } else {
      c.index(i).fail("expected \"left right\" or [left, right]");
    }
  }
  return out;
}

std::unique_ptr<BpeModel> read_bpe_model(const json& j, const Ctx& c) {
  const std::string t = j.contains("type") ? type_of(j, c) : "BPE";
  if (t != "BPE") c.fail("unsupported model '" + t + "' (BPE only)");
  if (j.contains("dropout") && !j["dropout"].is_null() &&
      !(j["dropout"].is_number() && j["dropout"].get<double>() == 0))
    c.at("dropout").fail("BPE dropout is not supported");
  for (const char* k : {"continuing_subword_prefix", "end_of_word_suffix"})
    if (j.contains(k) && !j[k].is_null() && str(j[k], c.at(k)) != "")
      c.at(k).fail("unsupported (only empty or null)");
  BpeOptions o;
  if (j.contains("unk_token") && !j["unk_token"].is_null())
    o.unk_token = str(j["unk_token"], c.at("unk_token"));
  o.fuse_unk = flag(j, "fuse_unk", false, c);
  o.byte_fallback = flag(j, "byte_fallback", false, c);
  o.ignore_merges = flag(j, "ignore_merges", false, c);
  return std::make_unique<BpeModel>(read_vocab(need(j, "vocab", c), c.at("vocab")),
                                    read_merges(need(j, "merges", c), c.at("merges")), o,
                                    c.file);
}

// The special tokens a TemplateProcessing puts before and after the single sequence $A.
void template_processing(const json& j, const Ctx& c, HfTokenizer& t) {
  const json& single = need(j, "single", c);
  if (!single.is_array()) c.at("single").fail("expected a list");
  const json& specials = need(j, "special_tokens", c);
  bool seen_a = false;
  for (size_t i = 0; i < single.size(); ++i) {
    const Ctx ic = c.at("single").index(i);
    const json& e = single[i];
    if (e.is_object() && e.contains("Sequence")) {
      if (seen_a) ic.fail("more than one sequence in a single-sequence template");
      seen_a = true;
      continue;
    }
    if (!(e.is_object() && e.contains("SpecialToken"))) ic.fail("expected SpecialToken or Sequence");
    const std::string name = str(need(e["SpecialToken"], "id", ic), ic.at("id"));
    const json& st = need(specials, name, c.at("special_tokens"));
    const json& ids = need(st, "ids", c.at("special_tokens").at(name));
    if (!ids.is_array()) c.at("special_tokens").at(name).fail("ids: expected a list");
    for (const json& id : ids)
      (seen_a ? t.suffix : t.prefix).push_back(int_in(id, 0, kMaxVocab - 1, c.at("special_tokens").at(name)));
  }
  if (!seen_a) c.at("single").fail("no $A sequence");
}

void post_processor(const json& j, const Ctx& c, HfTokenizer& t) {
  if (j.is_null()) return;
  const std::string type = type_of(j, c);
  if (type == "ByteLevel") return;  // offsets only: ids are unchanged
  if (type == "TemplateProcessing") return template_processing(j, c, t);
  if (type == "Sequence") {
    if (c.field.size() > 256) c.fail("components nested too deeply");
    const json& list = need(j, "processors", c);
    if (!list.is_array()) c.at("processors").fail("expected a list");
    for (size_t i = 0; i < list.size(); ++i) post_processor(list[i], c.at("processors").index(i), t);
    return;
  }
  if (type == "RobertaProcessing" || type == "BertProcessing") {
    auto id_of = [&](const char* k) {
      const json& p = need(j, k, c);
      if (!p.is_array() || p.size() != 2) c.at(k).fail("expected [token, id]");
      return int_in(p[1], 0, kMaxVocab - 1, c.at(k));
    };
    t.prefix.push_back(id_of("cls"));
    t.suffix.push_back(id_of("sep"));
    return;
  }
  c.fail("unsupported post-processor '" + type + "'");
}

void check_ids_fit(const HfTokenizer& t, const std::string& path) {
  const int64_t n = t.vocab_size();
  for (int64_t id : t.prefix) require(id < n, path, "post-processor id " + std::to_string(id) + " outside the vocabulary");
  for (int64_t id : t.suffix) require(id < n, path, "post-processor id " + std::to_string(id) + " outside the vocabulary");
}

std::string describe(const HfTokenizer& t, const std::string& form) {
  const BpeOptions& o = t.model->options();
  std::string k = form + " (BPE";
  if (o.byte_fallback) k += ", byte fallback";
  if (o.ignore_merges) k += ", ignore_merges";
  return k + ")";
}

}  // namespace

std::shared_ptr<const TokenizerBackend> load_hf_tokenizer_json(const std::string& path) {
  const json j = read_json_file(path);
  const Ctx c{path, ""};
  if (!j.is_object()) c.fail("not a tokenizer.json (expected an object)");
  auto t = std::make_shared<HfTokenizer>();
  t->model = read_bpe_model(need(j, "model", c), c.at("model"));
  if (j.contains("normalizer") && !j["normalizer"].is_null())
    t->normalizer = make_normalizer(j["normalizer"], c.at("normalizer"));
  if (j.contains("pre_tokenizer") && !j["pre_tokenizer"].is_null())
    t->pre_tokenizer = make_pre_tokenizer(j["pre_tokenizer"], c.at("pre_tokenizer"));
  if (j.contains("decoder") && !j["decoder"].is_null())
    t->decoder = make_decoder(j["decoder"], c.at("decoder"));
  post_processor(j.value("post_processor", json()), c.at("post_processor"), *t);
  if (j.contains("added_tokens")) {
    const json& list = j["added_tokens"];
    if (!list.is_array()) c.at("added_tokens").fail("expected a list");
    for (size_t i = 0; i < list.size(); ++i) {
      const Ctx ic = c.at("added_tokens").index(i);
      t->added.push_back(parse_added_token(list[i], int_in(need(list[i], "id", ic), 0, kMaxVocab - 1, ic.at("id")), ic));
    }
  }
  t->finish_added_tokens();
  check_ids_fit(*t, path);
  const bool byte_level = t->decoder && j["decoder"].value("type", "") == "ByteLevel";
  t->kind_ = describe(*t, byte_level ? "tokenizer.json, byte-level" : "tokenizer.json");
  return t;
}

namespace {

// merges.txt: one "left right" per line; a "#version" first line and empty lines skipped.
std::vector<std::pair<std::string, std::string>> read_merges_txt(const std::string& path) {
  auto m = map_file(path);
  require(m->size <= kMaxMergesFile, path, "file of " + std::to_string(m->size) + " bytes is over the limit");
  std::string_view text(reinterpret_cast<const char*>(m->data), m->size);
  const size_t bad = utf8::first_invalid(text);
  require(bad == utf8::npos, path, "not valid UTF-8 at byte " + std::to_string(bad));
  std::vector<std::pair<std::string, std::string>> out;
  size_t line_no = 0;
  for (size_t pos = 0; pos < text.size();) {
    size_t nl = text.find('\n', pos);
    if (nl == std::string_view::npos) nl = text.size();
    std::string_view line = text.substr(pos, nl - pos);
    pos = nl + 1;
    ++line_no;
    while (!line.empty() && (line.back() == '\r' || line.back() == ' ')) line.remove_suffix(1);
    if (line.empty() || (line_no == 1 && line.substr(0, 9) == "#version:")) continue;
    const size_t sp = line.find(' ');
    require(sp != std::string_view::npos && line.find(' ', sp + 1) == std::string_view::npos,
            path + ":" + std::to_string(line_no), "expected \"left right\"");
    out.emplace_back(std::string(line.substr(0, sp)), std::string(line.substr(sp + 1)));
  }
  return out;
}

}  // namespace

std::shared_ptr<const TokenizerBackend> load_gpt2_tokenizer(const std::string& dir,
                                                            const json& config,
                                                            const std::string& config_path) {
  const std::string vocab_path = (fs::path(dir) / "vocab.json").string();
  const std::string merges_path = (fs::path(dir) / "merges.txt").string();
  const Ctx cc{config_path, ""};
  const std::string cls = config.contains("tokenizer_class")
                              ? str(config["tokenizer_class"], cc.at("tokenizer_class"))
                              : "";
  const bool qwen = cls == "Qwen2Tokenizer" || cls == "Qwen2TokenizerFast";
  const bool gpt2 = cls == "GPT2Tokenizer" || cls == "GPT2TokenizerFast";
  if (!qwen && !gpt2)
    cc.at("tokenizer_class").fail("'" + cls + "' is not supported with vocab.json + merges.txt "
                                  "(GPT2Tokenizer, Qwen2Tokenizer)");
  auto t = std::make_shared<HfTokenizer>();
  t->model = std::make_unique<BpeModel>(read_vocab(read_json_file(vocab_path), Ctx{vocab_path, ""}),
                                        read_merges_txt(merges_path), BpeOptions{}, merges_path);
  const bool prefix_space = flag(config, "add_prefix_space", false, cc);
  if (qwen) {
    t->normalizer = unicode_normalizer(UTF8PROC_STABLE | UTF8PROC_COMPOSE);
    PreTokenizer split = split_pre_tokenizer(regex_matcher(kQwenRegex, cc), SplitBehavior::Isolated, false);
    PreTokenizer bytes = byte_level_pre_tokenizer(prefix_space, false, cc);
    t->pre_tokenizer = [split, bytes](Pieces& p) {
      split(p);
      bytes(p);
    };
  } else {
    t->pre_tokenizer = byte_level_pre_tokenizer(prefix_space, true, cc);
  }
  t->decoder = byte_level_decode;
  if (config.contains("added_tokens_decoder")) {
    const json& d = config["added_tokens_decoder"];
    if (!d.is_object()) cc.at("added_tokens_decoder").fail("expected an object");
    for (auto it = d.begin(); it != d.end(); ++it) {
      const Ctx ic = cc.at("added_tokens_decoder").at(it.key());
      int64_t id = -1;
      try {
        size_t used = 0;
        id = std::stoll(it.key(), &used);
        if (used != it.key().size()) id = -1;
      } catch (const std::exception&) {
      }
      if (id < 0 || id >= kMaxVocab) ic.fail("key is not a token id");
      t->added.push_back(parse_added_token(it.value(), id, ic));
    }
  }
  if (gpt2 && flag(config, "add_bos_token", false, cc)) {
    const json& b = need(config, "bos_token", cc);
    const std::string name = b.is_object() ? str(need(b, "content", cc), cc.at("bos_token")) : str(b, cc.at("bos_token"));
    const int64_t id = t->model->id_of(name);
    if (id < 0) cc.at("bos_token").fail("'" + name + "' is not in the vocabulary");
    t->prefix.push_back(id);
  }
  t->finish_added_tokens();
  t->kind_ = describe(*t, "vocab.json + merges.txt, " + cls + ", byte-level");
  return t;
}

}  // namespace dms
