// The chat-template interpreter: lexer -> parser (AST) -> evaluator. See chat_template.h for the
// supported subset; the comments here say where and why we follow jinja2's own implementation.
#include "data/chat_template.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <optional>
#include <unordered_map>
#include <utility>
#include <vector>

#include "common/error.h"

namespace dms {
namespace {

constexpr int kMaxNesting = 256;            // expression and block nesting in the source
constexpr int kMaxValueDepth = 512;         // lists/dicts nested in values (input or built)
constexpr size_t kMaxString = 256u << 20;   // any one string, the output included
constexpr size_t kMaxItems = 4u << 20;      // any one list
constexpr uint64_t kMaxSteps = 20000000;    // evaluation steps and elements visited
constexpr uint64_t kMaxBytes = 4ull << 30;  // string bytes created or scanned
constexpr int64_t kMaxRange = 100000;       // jinja2's sandbox MAX_RANGE

// Runtime errors travel as Fail (the renderer adds origin and line); raise_exception as Raised.
struct Fail {
  std::string msg;
};
struct Raised {
  std::string msg;
};
[[noreturn]] void fail(std::string msg) {
  throw Fail{std::move(msg)};
}

// Bounds the work of one render, so that hostile templates stop instead of hanging.
class Budget {
 public:
  void steps(uint64_t n) {
    if ((steps_ += n) > kMaxSteps) fail("evaluation exceeds the step limit");
  }
  void bytes(uint64_t n) {
    if ((bytes_ += n) > kMaxBytes) fail("evaluation exceeds the byte limit");
  }

 private:
  uint64_t steps_ = 0, bytes_ = 0;
};

void check_size(size_t n) {
  if (n > kMaxString) fail("string exceeds 256 MiB");
}

// Whether `c` is one of `set` (strchr alone would also match the terminating '\0').
bool one_of(const char* set, uint32_t c) {
  return c != 0 && c < 128 && strchr(set, static_cast<int>(c)) != nullptr;
}

// ------------------------------------------------------------------------------------- UTF-8
// Python strings index by code point; we keep UTF-8 and decode where positions matter. Invalid
// bytes count as one character each, so every operation stays in bounds.

struct Cp {
  uint32_t cp;
  size_t len;
};

Cp decode(const std::string& s, size_t i) {
  unsigned char c = s[i];
  size_t n = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 1;
  if (i + n > s.size()) return {c, 1};
  uint32_t cp = n == 1 ? c : c & (0x7f >> n);
  for (size_t k = 1; k < n; ++k) {
    unsigned char d = s[i + k];
    if ((d & 0xc0) != 0x80) return {c, 1};
    cp = cp << 6 | (d & 0x3f);
  }
  return {cp, n};
}

void append_cp(std::string& out, uint32_t cp) {
  if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else if (cp < 0x800) {
    out += static_cast<char>(0xc0 | cp >> 6);
    out += static_cast<char>(0x80 | (cp & 0x3f));
  } else if (cp < 0x10000) {
    out += static_cast<char>(0xe0 | cp >> 12);
    out += static_cast<char>(0x80 | (cp >> 6 & 0x3f));
    out += static_cast<char>(0x80 | (cp & 0x3f));
  } else {
    out += static_cast<char>(0xf0 | (cp >> 18 & 0x07));
    out += static_cast<char>(0x80 | (cp >> 12 & 0x3f));
    out += static_cast<char>(0x80 | (cp >> 6 & 0x3f));
    out += static_cast<char>(0x80 | (cp & 0x3f));
  }
}

std::vector<std::string> chars(const std::string& s) {
  std::vector<std::string> out;
  for (size_t i = 0; i < s.size();) {
    size_t n = decode(s, i).len;
    out.push_back(s.substr(i, n));
    i += n;
  }
  return out;
}

size_t cp_count(const std::string& s) {
  size_t n = 0;
  for (size_t i = 0; i < s.size(); i += decode(s, i).len) ++n;
  return n;
}

size_t cp_index(const std::string& s, size_t byte) {  // code point index of a byte offset
  size_t n = 0;
  for (size_t i = 0; i < byte; i += decode(s, i).len) ++n;
  return n;
}

// Python's str.isspace(), which is also what `\s` and str.strip() use.
bool is_space(uint32_t c) {
  return (c >= 0x09 && c <= 0x0d) || (c >= 0x1c && c <= 0x20) || c == 0x85 || c == 0xa0 ||
         c == 0x1680 || (c >= 0x2000 && c <= 0x200a) || c == 0x2028 || c == 0x2029 || c == 0x202f ||
         c == 0x205f || c == 0x3000;
}

// Simple case mapping: ASCII, Latin-1, Latin Extended-A, Greek and Cyrillic.
uint32_t to_lower(uint32_t c) {
  if (c < 0x80) return c >= 'A' && c <= 'Z' ? c + 32 : c;
  if ((c >= 0xc0 && c <= 0xde && c != 0xd7) || (c >= 0x391 && c <= 0x3ab && c != 0x3a2) ||
      (c >= 0x410 && c <= 0x42f))
    return c + 32;
  if (c >= 0x400 && c <= 0x40f) return c + 80;
  if (c == 0x178) return 0xff;
  if ((c >= 0x100 && c <= 0x12f) || (c >= 0x132 && c <= 0x137) || (c >= 0x14a && c <= 0x177))
    return c | 1;
  if ((c >= 0x139 && c <= 0x148) || (c >= 0x179 && c <= 0x17e)) return c & 1 ? c + 1 : c;
  return c;
}

uint32_t to_upper(uint32_t c) {
  if (c < 0x80) return c >= 'a' && c <= 'z' ? c - 32 : c;
  if ((c >= 0xe0 && c <= 0xfe && c != 0xf7) || (c >= 0x3b1 && c <= 0x3cb && c != 0x3c2) ||
      (c >= 0x430 && c <= 0x44f))
    return c - 32;
  if (c >= 0x450 && c <= 0x45f) return c - 80;
  if (c == 0xff) return 0x178;
  if (c == 0xb5) return 0x39c;
  if (c == 0x3c2) return 0x3a3;
  if (c == 0x131 || c == 0x17f) return c == 0x131 ? 'I' : 'S';
  if ((c >= 0x100 && c <= 0x12f) || (c >= 0x132 && c <= 0x137) || (c >= 0x14a && c <= 0x177))
    return c & ~1u;
  if ((c >= 0x139 && c <= 0x148) || (c >= 0x179 && c <= 0x17e)) return c & 1 ? c : c - 1;
  return c;
}

bool is_cased(uint32_t c) {
  return to_lower(c) != c || to_upper(c) != c;
}

enum class Case { kLower, kUpper, kCapitalize, kTitle, kJinjaTitle };

// kTitle is str.title(); kJinjaTitle is jinja2's `title` filter, which starts words after
// whitespace, '-', '(', '{', '[' and '<' only.
std::string map_case(const std::string& s, Case mode) {
  std::string out;
  bool start = true;  // kCapitalize/kJinjaTitle: at a word start; kTitle: previous not cased
  for (size_t i = 0; i < s.size();) {
    Cp c = decode(s, i);
    uint32_t m = c.cp;
    if (mode == Case::kLower) m = to_lower(m);
    if (mode == Case::kUpper) m = to_upper(m);
    if (mode == Case::kCapitalize) {
      m = start ? to_upper(m) : to_lower(m);
      start = false;
    }
    if (mode == Case::kTitle) {
      m = start ? to_upper(m) : to_lower(m);
      start = !is_cased(c.cp);
    }
    if (mode == Case::kJinjaTitle) {
      bool delim = is_space(c.cp) || one_of("-({[<", c.cp);
      m = delim ? m : start ? to_upper(m) : to_lower(m);
      start = delim;
    }
    if (mode == Case::kUpper && c.cp == 0xdf) {  // the common multi-character mappings
      out += "SS";
    } else if (mode == Case::kLower && c.cp == 0x130) {
      out += "i\u0307";
    } else if (c.len == 1 && m == c.cp) {
      out += s[i];
    } else {
      append_cp(out, m);
    }
    i += c.len;
  }
  return out;
}

// str.strip/lstrip/rstrip: `set` null strips whitespace, else any of its code points.
std::string strip(const std::string& s, const std::string* set, bool left, bool right) {
  std::vector<uint32_t> cps;
  if (set)
    for (size_t i = 0; i < set->size(); i += decode(*set, i).len) cps.push_back(decode(*set, i).cp);
  auto strippable = [&](uint32_t c) {
    return set ? std::find(cps.begin(), cps.end(), c) != cps.end() : is_space(c);
  };
  size_t b = 0, e = s.size();
  while (left && b < e && strippable(decode(s, b).cp)) b += decode(s, b).len;
  if (right) {  // cut after the last character that is kept
    size_t keep = b;
    for (size_t i = b; i < e;) {
      Cp c = decode(s, i);
      i += c.len;
      if (!strippable(c.cp)) keep = i;
    }
    e = keep;
  }
  return s.substr(b, e - b);
}

bool all_space(const std::string& s, size_t from) {
  for (size_t i = from; i < s.size(); i += decode(s, i).len)
    if (!is_space(decode(s, i).cp)) return false;
  return true;
}

// ------------------------------------------------------------------------------------ values

struct Value;
struct Array;
struct Object;
struct Func;
struct Namespace;

struct Value {
  enum Kind : uint8_t { kUndef, kNone, kBool, kInt, kFloat, kStr, kList, kDict, kNs, kFunc };
  Kind kind = kUndef;
  int64_t i = 0;  // kBool, kInt
  double f = 0;   // kFloat
  // kStr: std::string; kList: Array; kDict: Object; kFunc: Func; kUndef: optional std::string,
  // the reason it is undefined, reported when it is misused.
  std::shared_ptr<const void> p;
  Namespace* ns = nullptr;  // kNs: owned by the render, so cycles and chains cost nothing

  const std::string& s() const { return *static_cast<const std::string*>(p.get()); }
  const Array& list() const { return *static_cast<const Array*>(p.get()); }
  const Object& dict() const { return *static_cast<const Object*>(p.get()); }
  const Func& fn() const { return *static_cast<const Func*>(p.get()); }
  bool num() const { return kind == kBool || kind == kInt || kind == kFloat; }
  double d() const { return kind == kFloat ? f : static_cast<double>(i); }

  static Value make(Kind k, int64_t i = 0, double f = 0) {
    Value v;
    v.kind = k;
    v.i = i;
    v.f = f;
    return v;
  }
};

using Pairs = std::vector<std::pair<std::string, Value>>;

struct Array {
  std::vector<Value> items;
  bool tuple = false;
  int depth = 1;
};
struct Object {
  Pairs items;  // insertion order, as Python dicts and json.dumps keep it
  int depth = 1;
  const Value* find(const std::string& k) const {
    for (const auto& kv : items)
      if (kv.first == k) return &kv.second;
    return nullptr;
  }
};
struct Func {
  std::string name;
  Value self;  // the bound object of a method; kUndef for a global
  bool method = false;
};
struct Namespace {
  Pairs attrs;
};

Value undef(std::string why = "") {
  Value v;
  if (!why.empty()) v.p = std::make_shared<const std::string>(std::move(why));
  return v;
}
Value none() {
  return Value::make(Value::kNone);
}
Value boolean(bool b) {
  return Value::make(Value::kBool, b);
}
Value integer(int64_t i) {
  return Value::make(Value::kInt, i);
}
Value real(double f) {
  return Value::make(Value::kFloat, 0, f);
}
Value str(std::string s) {
  check_size(s.size());
  Value v;
  v.kind = Value::kStr;
  v.p = std::make_shared<const std::string>(std::move(s));
  return v;
}

int depth_of(const Value& v) {
  if (v.kind == Value::kList) return v.list().depth;
  if (v.kind == Value::kDict) return v.dict().depth;
  if (v.kind == Value::kFunc) return depth_of(v.fn().self) + 1;
  return 0;
}

Value list(std::vector<Value> items, bool tuple = false) {
  if (items.size() > kMaxItems) fail("list exceeds the size limit");
  auto a = std::make_shared<Array>();
  for (const Value& x : items) a->depth = std::max(a->depth, depth_of(x) + 1);
  if (a->depth > kMaxValueDepth) fail("values nested too deeply");
  a->items = std::move(items);
  a->tuple = tuple;
  Value v;
  v.kind = Value::kList;
  v.p = std::move(a);
  return v;
}

Value dict(Pairs items) {
  auto o = std::make_shared<Object>();
  for (auto& kv : items) {  // a repeated key keeps its first position and its last value
    Value* old = nullptr;
    for (auto& e : o->items)
      if (e.first == kv.first) old = &e.second;
    if (old)
      *old = std::move(kv.second);
    else
      o->items.push_back(std::move(kv));
  }
  for (const auto& kv : o->items) o->depth = std::max(o->depth, depth_of(kv.second) + 1);
  if (o->depth > kMaxValueDepth) fail("values nested too deeply");
  Value v;
  v.kind = Value::kDict;
  v.p = std::move(o);
  return v;
}

Value func(std::string name, Value self = Value(), bool method = false) {
  Value v;
  v.kind = Value::kFunc;
  v.p = std::make_shared<const Func>(Func{std::move(name), std::move(self), method});
  return v;
}

Value from_json(const nlohmann::ordered_json& j, int depth) {
  if (depth > kMaxValueDepth) fail("context nested too deeply");
  if (j.is_null()) return none();
  if (j.is_boolean()) return boolean(j.get<bool>());
  if (j.is_number_unsigned() && j.get<uint64_t>() > static_cast<uint64_t>(INT64_MAX))
    fail("context integer too large");
  if (j.is_number_integer()) return integer(j.get<int64_t>());
  if (j.is_number_float()) return real(j.get<double>());
  if (j.is_string()) return str(j.get<std::string>());
  if (j.is_array()) {
    std::vector<Value> items;
    for (const auto& x : j) items.push_back(from_json(x, depth + 1));
    return list(std::move(items));
  }
  if (!j.is_object()) fail("unsupported value in the context");
  Pairs items;
  for (const auto& kv : j.items()) items.emplace_back(kv.key(), from_json(kv.value(), depth + 1));
  return dict(std::move(items));
}

std::string type_name(const Value& v) {
  static const char* const kNames[] = {"Undefined", "NoneType", "bool", "int",       "float",
                                       "str",       "list",     "dict", "Namespace", "function"};
  if (v.kind == Value::kList && v.list().tuple) return "tuple";
  return kNames[v.kind];
}

[[noreturn]] void fail_undefined(const Value& v) {
  fail(v.p ? v.s() : std::string("undefined value"));
}

bool truthy(const Value& v) {  // Python's bool()
  if (v.kind == Value::kStr) return !v.s().empty();
  if (v.kind == Value::kList) return !v.list().items.empty();
  if (v.kind == Value::kDict) return !v.dict().items.empty();
  if (v.kind == Value::kFloat) return v.f != 0;
  return v.kind >= Value::kNs || ((v.kind == Value::kBool || v.kind == Value::kInt) && v.i != 0);
}

// --------------------------------------------------------------------------------- printing

// Python's float repr: the shortest digits that round-trip, scientific below 1e-4 and from 1e16.
std::string float_repr(double d) {
  if (std::isnan(d)) return "nan";
  if (std::isinf(d)) return d > 0 ? "inf" : "-inf";
  char buf[40];
  for (int prec = 1; prec <= 17; ++prec) {
    snprintf(buf, sizeof buf, "%.*e", prec - 1, d);
    if (strtod(buf, nullptr) == d) break;
  }
  std::string m(buf, strchr(buf, 'e')), digits;
  int exp = atoi(strchr(buf, 'e') + 1);
  bool neg = m[0] == '-';
  for (char c : m)
    if (c >= '0' && c <= '9') digits += c;
  std::string out = neg ? "-" : "";
  if (exp < -4 || exp >= 16) {
    out += digits.substr(0, 1);
    if (digits.size() > 1) out += "." + digits.substr(1);
    snprintf(buf, sizeof buf, "e%c%02d", exp < 0 ? '-' : '+', std::abs(exp));
    return out + buf;
  }
  if (exp < 0) return out + "0." + std::string(-exp - 1, '0') + digits;
  if (digits.size() <= static_cast<size_t>(exp) + 1) digits.resize(exp + 1, '0');
  std::string frac = digits.substr(exp + 1);
  return out + digits.substr(0, exp + 1) + "." + (frac.empty() ? "0" : frac);
}

// Non-ASCII code points Python's repr escapes (controls, format characters, separators and
// private use); unassigned code points are not tracked.
bool printable(uint32_t c) {
  return !((c >= 0x80 && c <= 0xa0) || c == 0xad || (c >= 0x600 && c <= 0x605) || c == 0x61c ||
           c == 0x6dd || c == 0x70f || c == 0x1680 || c == 0x180e || (c >= 0x2000 && c <= 0x200f) ||
           (c >= 0x2028 && c <= 0x202f) || (c >= 0x205f && c <= 0x206f) || c == 0x3000 ||
           (c >= 0xd800 && c <= 0xf8ff) || c == 0xfeff || (c >= 0xfff9 && c <= 0xfffb) ||
           c >= 0xf0000);
}

void repr_str(const std::string& s, std::string& out) {
  char q = s.find('\'') != std::string::npos && s.find('"') == std::string::npos ? '"' : '\'';
  out += q;
  char buf[16];
  for (size_t i = 0; i < s.size();) {
    Cp c = decode(s, i);
    if (c.cp == static_cast<uint32_t>(q) || c.cp == '\\')
      out += '\\', out += s[i];
    else if (c.cp == '\n')
      out += "\\n";
    else if (c.cp == '\r')
      out += "\\r";
    else if (c.cp == '\t')
      out += "\\t";
    else if (c.cp < 0x20 || c.cp == 0x7f || (c.len > 1 && !printable(c.cp))) {
      const char* fmt = c.cp <= 0xff ? "\\x%02x" : c.cp <= 0xffff ? "\\u%04x" : "\\U%08x";
      snprintf(buf, sizeof buf, fmt, c.cp);
      out += buf;
    } else {
      out.append(s, i, c.len);
    }
    i += c.len;
  }
  out += q;
}

// Python's str(): strings as they are, everything else as its repr.
void repr(const Value& v, std::string& out, Budget& b, int depth, bool top);

std::string to_str(const Value& v, Budget& b) {
  if (v.kind == Value::kStr) return v.s();
  std::string out;
  repr(v, out, b, 0, true);
  return out;
}

void repr(const Value& v, std::string& out, Budget& b, int depth, bool top) {
  if (depth > kMaxValueDepth) fail("value nested too deeply to print");
  b.steps(1);
  check_size(out.size());
  using V = Value;
  if (v.kind == V::kUndef) out += top ? "" : "Undefined";
  if (v.kind == V::kNone) out += "None";
  if (v.kind == V::kBool) out += v.i ? "True" : "False";
  if (v.kind == V::kInt) out += std::to_string(v.i);
  if (v.kind == V::kFloat) out += float_repr(v.f);
  if (v.kind == V::kFunc) out += "<built-in method " + v.fn().name + ">";
  if (v.kind == V::kStr) top ? void(out += v.s()) : repr_str(v.s(), out);
  if (v.kind == V::kList) {
    const Array& a = v.list();
    out += a.tuple ? "(" : "[";
    for (size_t k = 0; k < a.items.size(); ++k) {
      if (k) out += ", ";
      repr(a.items[k], out, b, depth + 1, false);
    }
    out += a.tuple ? (a.items.size() == 1 ? ",)" : ")") : "]";
  }
  if (v.kind != V::kDict && v.kind != V::kNs) return;
  const Pairs& items = v.kind == Value::kDict ? v.dict().items : v.ns->attrs;
  out += v.kind == Value::kNs ? "<Namespace {" : "{";
  for (size_t k = 0; k < items.size(); ++k) {
    if (k) out += ", ";
    repr_str(items[k].first, out);
    out += ": ";
    repr(items[k].second, out, b, depth + 1, false);
  }
  out += v.kind == Value::kNs ? "}>" : "}";
}

// json.dumps as transformers' tojson calls it.
struct JsonOpts {
  bool ascii = false, pretty = false, sort_keys = false;
  std::string indent, item_sep = ", ", key_sep = ": ";
};

void json_str(const std::string& s, bool ascii, std::string& out) {
  out += '"';
  char buf[16];
  for (size_t i = 0; i < s.size();) {
    Cp c = decode(s, i);
    const char* esc = c.cp == '"'    ? "\\\""
                      : c.cp == '\\' ? "\\\\"
                      : c.cp == '\n' ? "\\n"
                      : c.cp == '\r' ? "\\r"
                      : c.cp == '\t' ? "\\t"
                      : c.cp == '\b' ? "\\b"
                      : c.cp == '\f' ? "\\f"
                                     : nullptr;
    if (esc) {
      out += esc;
    } else if (c.cp < 0x20 || (ascii && c.cp >= 0x80)) {
      if (c.cp >= 0x10000) {  // a surrogate pair, as Python writes astral code points
        snprintf(buf, sizeof buf, "\\u%04x\\u%04x", 0xd800 + ((c.cp - 0x10000) >> 10),
                 0xdc00 + ((c.cp - 0x10000) & 0x3ff));
      } else {
        snprintf(buf, sizeof buf, "\\u%04x", c.cp);
      }
      out += buf;
    } else {
      out.append(s, i, c.len);
    }
    i += c.len;
  }
  out += '"';
}

void json(const Value& v, const JsonOpts& o, int level, std::string& out, Budget& b) {
  if (level > kMaxValueDepth) fail("value nested too deeply for tojson");
  b.steps(1);
  check_size(out.size());
  auto newline = [&](int lv) {
    if (!o.pretty) return;
    out += '\n';
    for (int k = 0; k < lv; ++k) out += o.indent;
  };
  using V = Value;
  if (v.kind == V::kNone) return void(out += "null");
  if (v.kind == V::kBool) return void(out += v.i ? "true" : "false");
  if (v.kind == V::kInt) return void(out += std::to_string(v.i));
  if (v.kind == V::kStr) return json_str(v.s(), o.ascii, out);
  if (v.kind == V::kFloat) {
    bool inf = std::isinf(v.f);
    out += std::isnan(v.f) ? "NaN" : inf ? (v.f > 0 ? "Infinity" : "-Infinity") : float_repr(v.f);
    return;
  }
  if (v.kind == V::kList) {
    const auto& items = v.list().items;
    out += '[';
    for (size_t k = 0; k < items.size(); ++k) {
      out += k ? o.item_sep : "";
      newline(level + 1);
      json(items[k], o, level + 1, out, b);
    }
    if (!items.empty()) newline(level);
    return void(out += ']');
  }
  if (v.kind != V::kDict) fail("Object of type " + type_name(v) + " is not JSON serializable");
  std::vector<const std::pair<std::string, Value>*> items;
  for (const auto& kv : v.dict().items) items.push_back(&kv);
  if (o.sort_keys)
    std::stable_sort(items.begin(), items.end(),
                     [](auto* x, auto* y) { return x->first < y->first; });
  out += '{';
  for (size_t k = 0; k < items.size(); ++k) {
    out += k ? o.item_sep : "";
    newline(level + 1);
    json_str(items[k]->first, o.ascii, out);
    out += o.key_sep;
    json(items[k]->second, o, level + 1, out, b);
  }
  if (!items.empty()) newline(level);
  out += '}';
}

// ------------------------------------------------------------------------------- comparison

bool equals(const Value& a, const Value& b, Budget& bud, int depth = 0) {
  if (depth > kMaxValueDepth) fail("values nested too deeply to compare");
  bud.steps(1);
  if (a.num() && b.num()) {
    if (a.kind != Value::kFloat && b.kind != Value::kFloat) return a.i == b.i;
    return a.d() == b.d();
  }
  if (a.kind != b.kind) return false;
  switch (a.kind) {
    case Value::kUndef:
    case Value::kNone:
      return true;
    case Value::kStr:
      bud.bytes(a.s().size());
      return a.s() == b.s();
    case Value::kNs:
      return a.ns == b.ns;
    case Value::kFunc:
      return a.p == b.p;
    case Value::kList: {
      const Array &x = a.list(), &y = b.list();
      if (x.tuple != y.tuple || x.items.size() != y.items.size()) return false;
      for (size_t k = 0; k < x.items.size(); ++k)
        if (!equals(x.items[k], y.items[k], bud, depth + 1)) return false;
      return true;
    }
    default:
      break;
  }
  const Object &x = a.dict(), &y = b.dict();
  if (x.items.size() != y.items.size()) return false;
  for (const auto& kv : x.items) {
    const Value* other = y.find(kv.first);
    if (!other || !equals(kv.second, *other, bud, depth + 1)) return false;
  }
  return true;
}

// Python's `<`: numbers, strings (code point order = UTF-8 byte order), same-type sequences.
bool less(const Value& a, const Value& b, Budget& bud, int depth = 0) {
  if (depth > kMaxValueDepth) fail("values nested too deeply to compare");
  bud.steps(1);
  if (a.kind == Value::kUndef) fail_undefined(a);
  if (b.kind == Value::kUndef) fail_undefined(b);
  if (a.num() && b.num()) {
    if (a.kind != Value::kFloat && b.kind != Value::kFloat) return a.i < b.i;
    return a.d() < b.d();
  }
  if (a.kind == Value::kStr && b.kind == Value::kStr) return a.s() < b.s();
  if (a.kind == Value::kList && b.kind == Value::kList && a.list().tuple == b.list().tuple) {
    const auto &x = a.list().items, &y = b.list().items;
    for (size_t k = 0; k < x.size() && k < y.size(); ++k)
      if (!equals(x[k], y[k], bud, depth + 1)) return less(x[k], y[k], bud, depth + 1);
    return x.size() < y.size();
  }
  fail("'<' not supported between instances of '" + type_name(a) + "' and '" + type_name(b) + "'");
}

// ------------------------------------------------------------------------------------- lexer

// clang-format off
enum class Tok {
  kText, kVarBegin, kVarEnd, kBlockBegin, kBlockEnd,  // template structure
  kName, kStr, kInt, kFloat, kOp, kEnd                // inside tags
};
// clang-format on

struct Token {
  Tok kind;
  std::string text;
  int line;
};

[[noreturn]] void syntax_error(const std::string& origin, const std::string& what, int line) {
  throw InputError(origin + ": chat template: " + what + " at line " + std::to_string(line));
}

bool is_digit(char c) {
  return c >= '0' && c <= '9';
}
bool is_alpha(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_';
}

// Splits the source into text and tag tokens the way jinja2's lexer does, including its
// whitespace control: `-` strips all whitespace on that side, lstrip_blocks removes the
// indentation before {% and {# (unless `+`), trim_blocks one newline after %} and #}.
class Lexer {
 public:
  Lexer(const std::string& source, const std::string& origin) : origin_(origin) {
    // jinja2 turns \r\n and \r into \n and drops one final newline (keep_trailing_newline=False).
    for (size_t i = 0; i < source.size(); ++i) {
      src_ += source[i] == '\r' ? '\n' : source[i];
      if (source[i] == '\r' && i + 1 < source.size() && source[i + 1] == '\n') ++i;
    }
    if (!src_.empty() && src_.back() == '\n') src_.pop_back();
  }

  std::vector<Token> run() {
    while (pos_ < src_.size()) {
      size_t t = pos_;
      while ((t = src_.find('{', t)) != std::string::npos &&
             (t + 1 >= src_.size() || !one_of("{%#", src_[t + 1])))
        ++t;
      if (t == std::string::npos) t = src_.size();
      std::string text = src_.substr(pos_, t - pos_);
      int lines = static_cast<int>(std::count(text.begin(), text.end(), '\n'));
      if (t == src_.size()) {
        add(Tok::kText, std::move(text));
        break;
      }
      char kind = src_[t + 1];
      char sign = t + 2 < src_.size() && one_of("-+", src_[t + 2]) ? src_[t + 2] : 0;
      control(text, kind, sign);
      add(Tok::kText, std::move(text));
      line_ += lines;
      pos_ = t + 2 + (sign ? 1 : 0);
      line_starting_ = false;
      if (kind == '#')
        comment();
      else
        tag(kind);
    }
    add(Tok::kEnd, "");
    return std::move(out_);
  }

 private:
  void add(Tok kind, std::string text) {
    if (kind != Tok::kText || !text.empty()) out_.push_back({kind, std::move(text), line_});
  }
  [[noreturn]] void error(const std::string& what) { syntax_error(origin_, what, line_); }

  size_t skip_space(size_t p) {  // past whitespace, counting lines
    while (p < src_.size() && is_space(decode(src_, p).cp)) {
      line_ += src_[p] == '\n';
      p += decode(src_, p).len;
    }
    return p;
  }

  void control(std::string& text, char kind, char sign) {
    if (sign == '-') {
      text = strip(text, nullptr, false, true);
    } else if (sign != '+' && kind != '{') {  // lstrip_blocks; never for {{
      size_t l = text.rfind('\n');
      l = l == std::string::npos ? 0 : l + 1;
      if ((l > 0 || line_starting_) && l < text.size() && all_space(text, l)) text.resize(l);
    }
  }

  void comment() {
    size_t q = src_.find("#}", pos_);
    if (q == std::string::npos) error("missing end of comment tag");
    char before = q > pos_ ? src_[q - 1] : 0;
    line_ += static_cast<int>(std::count(src_.begin() + pos_, src_.begin() + q, '\n'));
    pos_ = q + 2;
    finish_tag(before, '%');
  }

  // After a closing delimiter: `-` strips what follows, trim_blocks eats one newline after
  // block tags and comments, and a consumed newline makes the next tag "line starting".
  void finish_tag(char sign, char kind) {
    size_t start = pos_;
    if (sign == '-')
      pos_ = skip_space(pos_);
    else if (sign != '+' && kind != '{' && pos_ < src_.size() && src_[pos_] == '\n')
      ++pos_, ++line_;
    line_starting_ = pos_ > start && src_[pos_ - 1] == '\n';
  }

  void tag(char kind) {
    add(kind == '{' ? Tok::kVarBegin : Tok::kBlockBegin, "");
    std::string balance;  // closing brackets expected; the tag can only end when balanced
    for (;;) {
      if (pos_ >= src_.size()) error(std::string("missing '") + (kind == '{' ? "}}" : "%}") + "'");
      if (balance.empty() && tag_end(kind)) return;
      size_t p = skip_space(pos_);
      if (p != pos_)
        pos_ = p;
      else
        token(balance);
    }
  }

  bool tag_end(char kind) {
    const char* close = kind == '{' ? "}}" : "%}";
    char sign = src_[pos_] == '-' || (src_[pos_] == '+' && kind == '%') ? src_[pos_] : 0;
    if (src_.compare(pos_ + (sign ? 1 : 0), 2, close) != 0) return false;
    pos_ += sign ? 3 : 2;
    add(kind == '{' ? Tok::kVarEnd : Tok::kBlockEnd, "");
    finish_tag(sign, kind);
    return true;
  }

  void token(std::string& balance) {
    char c = src_[pos_];
    if (is_digit(c)) return number();
    if (c == '\'' || c == '"') return string_literal();
    if (is_alpha(c)) {
      size_t e = pos_;
      while (e < src_.size() && (is_alpha(src_[e]) || is_digit(src_[e]))) ++e;
      add(Tok::kName, src_.substr(pos_, e - pos_));
      pos_ = e;
      return;
    }
    static const char* const kOps[] = {"//", "**", "==", "!=", ">=", "<=", "+", "-", "/",
                                       "*",  "%",  "~",  "[",  "]",  "(",  ")", "{", "}",
                                       ">",  "<",  "=",  ".",  ":",  "|",  ",", ";"};
    for (const char* op : kOps) {
      size_t n = strlen(op);
      if (src_.compare(pos_, n, op) != 0) continue;
      if (one_of("([{", c)) balance += c == '(' ? ')' : c == '[' ? ']' : '}';
      if (n == 1 && one_of(")]}", c)) {
        if (balance.empty() || balance.back() != c) error(std::string("unexpected '") + c + "'");
        balance.pop_back();
      }
      add(Tok::kOp, op);
      pos_ += n;
      return;
    }
    error(std::string("unexpected character '") + c + "'");
  }

  // Digits with single underscores, as jinja2's integer and float patterns.
  size_t digits(size_t p) {
    while (p < src_.size() &&
           (is_digit(src_[p]) || (src_[p] == '_' && p + 1 < src_.size() && is_digit(src_[p + 1]))))
      ++p;
    return p;
  }

  void number() {
    size_t e = digits(pos_);
    bool is_float = false, after_dot = pos_ > 0 && src_[pos_ - 1] == '.';  // `x.0.1`: items
    if (!after_dot && e + 1 < src_.size() && src_[e] == '.' && is_digit(src_[e + 1]))
      e = digits(e + 1), is_float = true;
    if (!after_dot && e + 1 < src_.size() && (src_[e] == 'e' || src_[e] == 'E')) {
      size_t x = e + 1 + (one_of("+-", src_[e + 1]) ? 1 : 0);
      if (x < src_.size() && is_digit(src_[x])) e = digits(x), is_float = true;
    }
    std::string text;
    for (size_t k = pos_; k < e; ++k)
      if (src_[k] != '_') text += src_[k];
    add(is_float ? Tok::kFloat : Tok::kInt, text);
    pos_ = e;
  }

  void string_literal() {
    char q = src_[pos_];
    size_t p = pos_ + 1;
    while (p < src_.size() && src_[p] != q) p += src_[p] == '\\' && p + 1 < src_.size() ? 2 : 1;
    if (p >= src_.size()) error("unterminated string literal");
    add(Tok::kStr, unescape(src_.substr(pos_ + 1, p - pos_ - 1)));
    line_ += static_cast<int>(std::count(src_.begin() + pos_, src_.begin() + p, '\n'));
    pos_ = p + 1;
  }

  // Python's unicode-escape decoding, which jinja2 applies to string literals.
  std::string unescape(const std::string& s) {
    std::string out;
    for (size_t i = 0; i < s.size(); ++i) {
      if (s[i] != '\\' || i + 1 == s.size()) {
        out += s[i];
        continue;
      }
      char c = s[++i];
      if (c == '\n') continue;  // line continuation
      const char* simple = c == 'n'   ? "\n"
                           : c == 't' ? "\t"
                           : c == 'r' ? "\r"
                           : c == 'a' ? "\a"
                           : c == 'b' ? "\b"
                           : c == 'f' ? "\f"
                           : c == 'v' ? "\v"
                                      : nullptr;
      if (simple || c == '\\' || c == '\'' || c == '"') {
        out += simple ? simple[0] : c;
      } else if (c == 'x' || c == 'u' || c == 'U') {
        size_t n = c == 'x' ? 2 : c == 'u' ? 4 : 8;
        std::string hex = s.substr(i + 1, n);
        if (hex.size() != n || hex.find_first_not_of("0123456789abcdefABCDEF") != std::string::npos)
          error(std::string("truncated \\") + c + " escape");
        unsigned long cp = strtoul(hex.c_str(), nullptr, 16);
        if (cp > 0x10ffff) error("illegal Unicode character in string literal");
        append_cp(out, static_cast<uint32_t>(cp));
        i += n;
      } else if (c == 'N') {
        error("unsupported \\N{...} escape in string literal");
      } else if (c >= '0' && c <= '7') {
        uint32_t cp = 0;
        size_t k = 0;
        for (; k < 3 && i + k < s.size() && s[i + k] >= '0' && s[i + k] <= '7'; ++k)
          cp = cp * 8 + (s[i + k] - '0');
        append_cp(out, cp);
        i += k - 1;
      } else {
        out += '\\';  // unknown escapes stay as written
        out += c;
      }
    }
    return out;
  }

  std::string src_;
  const std::string& origin_;
  std::vector<Token> out_;
  size_t pos_ = 0;
  int line_ = 1;
  bool line_starting_ = true;  // the last match ended a line (jinja2's lstrip_blocks rule)
};

// --------------------------------------------------------------------------------------- AST

// clang-format off
enum class EK {
  kLit, kName, kList, kTuple, kDict,                                 // atoms and displays
  kAttr, kItem, kSlice, kCall, kFilter, kTest,                       // postfix
  kNot, kNeg, kPos, kBin, kAnd, kOr, kConcat, kCompare, kCond        // operators
};
// clang-format on

struct Expr;
using ExprPtr = std::unique_ptr<Expr>;
struct Expr {
  EK kind;
  int line = 0, depth = 1;
  std::string name;              // variable, attribute, filter, test or binary operator
  Value lit;                     // kLit
  std::vector<ExprPtr> kids;     // operands; null for an omitted slice bound or `else`
  std::vector<std::string> kw;   // names of the last kw.size() kids (keyword arguments)
  std::vector<std::string> ops;  // kCompare: the operator before each later operand
};

enum class SK { kText, kPrint, kIf, kFor, kSet, kBreak, kContinue, kScope };

struct Stmt;
using Body = std::vector<std::unique_ptr<Stmt>>;
struct Stmt {
  SK kind;
  int line = 0;
  std::string text;                                // kText
  ExprPtr expr;                                    // kPrint, kSet value, kFor iterable
  std::vector<std::string> targets;                // kFor, kSet
  std::string attr;                                // kSet: `set ns.attr = ...`
  ExprPtr filter;                                  // kFor: `for x in xs if cond`
  std::vector<std::pair<ExprPtr, Body>> branches;  // kIf: condition (null for else), body
  Body body, else_body;                            // kFor, kScope
};

bool listed(const char* const* names, const std::string& n) {
  for (; *names; ++names)
    if (n == *names) return true;
  return false;
}
const char* const kFilters[] = {"abs",    "capitalize", "count",   "d",       "default", "e",
                                "escape", "first",      "float",   "indent",  "int",     "items",
                                "join",   "last",       "length",  "list",    "lower",   "map",
                                "reject", "rejectattr", "replace", "reverse", "round",   "safe",
                                "select", "selectattr", "sort",    "string",  "title",   "tojson",
                                "trim",   "unique",     "upper",   nullptr};
const char* const kTests[] = {
    "boolean",   "callable", "defined",  "divisibleby", "eq",       "equalto", "even",
    "false",     "float",    "ge",       "greaterthan", "gt",       "in",      "integer",
    "iterable",  "le",       "lessthan", "lower",       "lt",       "mapping", "ne",
    "none",      "number",   "odd",      "sameas",      "sequence", "string",  "true",
    "undefined", "upper",    "==",       "!=",          "<",        "<=",      ">",
    ">=",        nullptr};
const char* const kComparisons[] = {"==", "!=", "<", "<=", ">", ">=", nullptr};

// ------------------------------------------------------------------------------------ parser

// Recursive descent over the tokens with jinja2's grammar and precedence (parser.py): condexpr,
// or, and, not, comparisons, + -, ~, * / // %, **, unary -, then postfix, filters and tests.
class Parser {
 public:
  Parser(std::vector<Token> toks, const std::string& origin)
      : toks_(std::move(toks)), origin_(origin) {}

  Body run() {
    Body body;
    parse_body(body, {}, "", 0);
    return body;
  }

 private:
  // Counts nesting (blocks and recursive descent) so hostile input cannot exhaust the stack.
  struct Nest {
    explicit Nest(Parser& p) : p(p) {
      if (++p.nest_ > kMaxNesting) p.error("template nested too deeply");
    }
    ~Nest() { --p.nest_; }
    Parser& p;
  };

  const Token& cur() const { return toks_[pos_]; }
  const Token& peek() const { return toks_[std::min(pos_ + 1, toks_.size() - 1)]; }
  bool op(const char* o) const { return cur().kind == Tok::kOp && cur().text == o; }
  bool name(const char* n) const { return cur().kind == Tok::kName && cur().text == n; }
  bool skip_op(const char* o) { return op(o) ? (++pos_, true) : false; }
  bool skip_name(const char* n) { return name(n) ? (++pos_, true) : false; }
  void expect_op(const char* o) {
    if (!skip_op(o)) unexpected(std::string("'") + o + "'");
  }
  std::string expect_name() {
    if (cur().kind != Tok::kName) unexpected("a name");
    return toks_[pos_++].text;
  }
  void expect_end(Tok kind) {
    if (cur().kind != kind) unexpected(kind == Tok::kBlockEnd ? "'%}'" : "'}}'");
    ++pos_;
  }
  [[noreturn]] void error(const std::string& what) const {
    syntax_error(origin_, what, cur().line);
  }
  [[noreturn]] void unexpected(const std::string& wanted) const {
    const Token& t = cur();
    std::string got = t.kind == Tok::kEnd        ? "end of template"
                      : t.kind == Tok::kVarEnd   ? "'}}'"
                      : t.kind == Tok::kBlockEnd ? "'%}'"
                      : t.kind == Tok::kStr      ? "string"
                                                 : "'" + t.text + "'";
    error("unexpected " + got + (wanted.empty() ? "" : ", expected " + wanted));
  }

  ExprPtr make(EK kind, int line, std::vector<ExprPtr> kids = {}, std::string name = "") {
    auto e = std::make_unique<Expr>();
    e->kind = kind;
    e->line = line;
    e->name = std::move(name);
    for (const auto& k : kids)
      if (k) e->depth = std::max(e->depth, k->depth + 1);
    if (e->depth > kMaxNesting) syntax_error(origin_, "expression nested too deeply", line);
    e->kids = std::move(kids);
    return e;
  }
  ExprPtr lit(Value v, int line) {
    auto e = make(EK::kLit, line);
    e->lit = std::move(v);
    return e;
  }
  static std::vector<ExprPtr> kids(ExprPtr a, ExprPtr b = nullptr, ExprPtr c = nullptr) {
    std::vector<ExprPtr> v;
    v.push_back(std::move(a));
    if (b) v.push_back(std::move(b));
    if (c) v.push_back(std::move(c));
    return v;
  }
  static std::unique_ptr<Stmt> stmt(SK kind, int line) {
    auto s = std::make_unique<Stmt>();
    s->kind = kind;
    s->line = line;
    return s;
  }

  // Statements into `out` until a block tag named in `ends` (returned, with the parser just past
  // the tag's name) or the end of the template; `block`/`open_line` name an unclosed block.
  std::string parse_body(Body& out, std::initializer_list<const char*> ends, const char* block,
                         int open_line) {
    for (;;) {
      const Token& t = toks_[pos_];
      if (t.kind == Tok::kEnd) {
        if (ends.size() == 0) return "";
        syntax_error(
            origin_,
            std::string("unclosed '") + block + "' block (missing '" + *(ends.end() - 1) + "')",
            open_line);
      }
      ++pos_;
      if (t.kind == Tok::kText) {
        out.push_back(stmt(SK::kText, t.line));
        out.back()->text = t.text;
      } else if (t.kind == Tok::kVarBegin) {
        out.push_back(stmt(SK::kPrint, t.line));
        out.back()->expr = parse_tuple(true);
        expect_end(Tok::kVarEnd);
      } else {
        if (t.kind != Tok::kBlockBegin) unexpected("");
        std::string tag = expect_name();
        for (const char* e : ends)
          if (tag == e) return tag;
        parse_tag(tag, t.line, out);
      }
    }
  }

  void parse_tag(const std::string& tag, int line, Body& out) {
    Nest nest(*this);
    if (tag == "if") return out.push_back(parse_if(line));
    if (tag == "for") return out.push_back(parse_for(line));
    if (tag == "set") return out.push_back(parse_set(line));
    if (tag == "break" || tag == "continue") {
      if (loops_ == 0) error("'" + tag + "' outside of a loop");
      expect_end(Tok::kBlockEnd);
      return out.push_back(stmt(tag == "break" ? SK::kBreak : SK::kContinue, line));
    }
    if (tag == "generation") {  // transformers' AssistantTracker: its body, in its own scope
      auto s = stmt(SK::kScope, line);
      expect_end(Tok::kBlockEnd);
      int loops = std::exchange(loops_, 0);
      parse_body(s->body, {"endgeneration"}, "generation", line);
      loops_ = loops;
      expect_end(Tok::kBlockEnd);
      return out.push_back(std::move(s));
    }
    if (tag.compare(0, 3, "end") == 0 || tag == "elif" || tag == "else")
      error("unexpected '" + tag + "'");
    error("unsupported tag '" + tag + "'");
  }

  std::unique_ptr<Stmt> parse_if(int line) {
    auto s = stmt(SK::kIf, line);
    for (std::string tag = "if";;) {
      ExprPtr cond = tag == "else" ? nullptr : parse_tuple(false);
      expect_end(Tok::kBlockEnd);
      Body body;
      std::string end = tag == "else" ? parse_body(body, {"endif"}, "if", line)
                                      : parse_body(body, {"elif", "else", "endif"}, "if", line);
      s->branches.emplace_back(std::move(cond), std::move(body));
      if (end == "endif") break;
      tag = end;
    }
    expect_end(Tok::kBlockEnd);
    return s;
  }

  void parse_targets(Stmt& s, bool allow_attr) {
    bool paren = skip_op("(");
    do {
      std::string n = expect_name();
      if (n == "true" || n == "false" || n == "none" || n == "True" || n == "False" || n == "None")
        error("can't assign to '" + n + "'");
      s.targets.push_back(n);
    } while (skip_op(","));
    if (paren) expect_op(")");
    if (allow_attr && !paren && s.targets.size() == 1 && skip_op(".")) s.attr = expect_name();
  }

  std::unique_ptr<Stmt> parse_for(int line) {
    auto s = stmt(SK::kFor, line);
    parse_targets(*s, false);
    if (!skip_name("in")) unexpected("'in'");
    s->expr = parse_tuple(false);
    if (skip_name("if")) s->filter = parse_expression(true);
    if (name("recursive")) error("unsupported recursive loop");
    expect_end(Tok::kBlockEnd);
    ++loops_;
    std::string end = parse_body(s->body, {"else", "endfor"}, "for", line);
    --loops_;
    if (end == "else") {
      expect_end(Tok::kBlockEnd);
      parse_body(s->else_body, {"endfor"}, "for", line);
    }
    expect_end(Tok::kBlockEnd);
    return s;
  }

  std::unique_ptr<Stmt> parse_set(int line) {
    auto s = stmt(SK::kSet, line);
    parse_targets(*s, true);
    if (!skip_op("=")) error("unsupported tag 'set' block (only 'set name = value')");
    s->expr = parse_tuple(true);
    expect_end(Tok::kBlockEnd);
    return s;
  }

  // An expression, or a tuple when there are commas (`{{ a, b }}`, `set t = 1, 2`).
  ExprPtr parse_tuple(bool with_cond) {
    int line = cur().line;
    std::vector<ExprPtr> items;
    bool is_tuple = false;
    for (;;) {
      if (!items.empty()) expect_op(",");
      if (cur().kind == Tok::kVarEnd || cur().kind == Tok::kBlockEnd || op(")")) break;
      items.push_back(parse_expression(with_cond));
      if (!op(",")) break;
      is_tuple = true;
    }
    if (is_tuple) return make(EK::kTuple, line, std::move(items));
    if (items.empty()) unexpected("an expression");
    return std::move(items[0]);
  }

  ExprPtr parse_expression(bool with_cond) {
    Nest nest(*this);
    return with_cond ? parse_condexpr() : parse_or();
  }

  ExprPtr parse_condexpr() {
    ExprPtr e = parse_or();
    while (name("if")) {
      Nest nest(*this);
      int line = toks_[pos_++].line;
      ExprPtr cond = parse_or();
      ExprPtr other = skip_name("else") ? parse_condexpr() : nullptr;
      auto c = make(EK::kCond, line, kids(std::move(e), std::move(cond)));
      c->kids.push_back(std::move(other));  // null: `a if b` without else is undefined
      if (c->kids[2]) c->depth = std::max(c->depth, c->kids[2]->depth + 1);
      e = std::move(c);
    }
    return e;
  }

  ExprPtr parse_or() {
    ExprPtr e = parse_and();
    while (name("or")) {
      int line = toks_[pos_++].line;
      e = make(EK::kOr, line, kids(std::move(e), parse_and()));
    }
    return e;
  }

  ExprPtr parse_and() {
    ExprPtr e = parse_not();
    while (name("and")) {
      int line = toks_[pos_++].line;
      e = make(EK::kAnd, line, kids(std::move(e), parse_not()));
    }
    return e;
  }

  ExprPtr parse_not() {
    if (!name("not")) return parse_compare();
    Nest nest(*this);
    int line = toks_[pos_++].line;
    return make(EK::kNot, line, kids(parse_not()));
  }

  ExprPtr parse_compare() {
    int line = cur().line;
    std::vector<ExprPtr> operands;
    operands.push_back(parse_math1());
    std::vector<std::string> ops;
    for (;;) {
      if (cur().kind == Tok::kOp && listed(kComparisons, cur().text)) {
        ops.push_back(toks_[pos_++].text);
      } else if (skip_name("in")) {
        ops.push_back("in");
      } else if (name("not") && peek().kind == Tok::kName && peek().text == "in") {
        pos_ += 2;
        ops.push_back("not in");
      } else {
        break;
      }
      operands.push_back(parse_math1());
    }
    if (ops.empty()) return std::move(operands[0]);
    auto c = make(EK::kCompare, line, std::move(operands));
    c->ops = std::move(ops);
    return c;
  }

  ExprPtr binary(ExprPtr (Parser::*next)(), std::initializer_list<const char*> ops) {
    ExprPtr e = (this->*next)();
    for (;;) {
      const char* o = nullptr;
      for (const char* x : ops)
        if (op(x)) o = x;
      if (!o) return e;
      int line = toks_[pos_++].line;
      e = make(EK::kBin, line, kids(std::move(e), (this->*next)()), o);
    }
  }
  ExprPtr parse_math1() { return binary(&Parser::parse_concat, {"+", "-"}); }
  ExprPtr parse_math2() { return binary(&Parser::parse_pow, {"*", "/", "//", "%"}); }
  ExprPtr parse_pow() { return binary(&Parser::parse_unary_filtered, {"**"}); }
  ExprPtr parse_unary_filtered() { return parse_unary(true); }

  ExprPtr parse_concat() {
    int line = cur().line;
    std::vector<ExprPtr> parts;
    parts.push_back(parse_math2());
    while (skip_op("~")) parts.push_back(parse_math2());
    if (parts.size() == 1) return std::move(parts[0]);
    return make(EK::kConcat, line, std::move(parts));
  }

  // jinja2: `-x|f` is f(-x), `-x.y` is -(x.y); filters and tests bind tighter than binaries.
  ExprPtr parse_unary(bool with_filter) {
    int line = cur().line;
    ExprPtr e;
    if (op("-") || op("+")) {
      Nest nest(*this);
      EK kind = op("-") ? EK::kNeg : EK::kPos;
      ++pos_;
      e = make(kind, line, kids(parse_unary(false)));
    } else {
      e = parse_primary();
    }
    e = parse_postfix(std::move(e));
    return with_filter ? parse_filter_expr(std::move(e)) : std::move(e);
  }

  ExprPtr parse_primary() {
    const Token& t = cur();
    if (t.kind == Tok::kName) {
      ++pos_;
      if (t.text == "true" || t.text == "True") return lit(boolean(true), t.line);
      if (t.text == "false" || t.text == "False") return lit(boolean(false), t.line);
      if (t.text == "none" || t.text == "None") return lit(none(), t.line);
      return make(EK::kName, t.line, {}, t.text);
    }
    if (t.kind == Tok::kStr) {  // adjacent literals concatenate
      std::string s;
      while (cur().kind == Tok::kStr) s += toks_[pos_++].text;
      return lit(str(std::move(s)), t.line);
    }
    if (t.kind == Tok::kInt || t.kind == Tok::kFloat) {
      ++pos_;
      errno = 0;
      Value v = t.kind == Tok::kInt ? integer(strtoll(t.text.c_str(), nullptr, 10))
                                    : real(strtod(t.text.c_str(), nullptr));
      if (errno == ERANGE && t.kind == Tok::kInt) error("integer literal too large");
      return lit(v, t.line);
    }
    if (skip_op("(")) {
      if (skip_op(")")) return make(EK::kTuple, t.line);
      ExprPtr e = parse_tuple(true);
      expect_op(")");
      return e;
    }
    if (op("[") || op("{")) return parse_display();
    unexpected("");
  }

  ExprPtr parse_display() {  // [a, b] or {k: v}
    bool is_dict = op("{");
    int line = toks_[pos_++].line;
    std::vector<ExprPtr> items;
    const char* close = is_dict ? "}" : "]";
    while (!op(close)) {
      if (!items.empty()) expect_op(",");
      if (op(close)) break;
      items.push_back(parse_expression(true));
      if (!is_dict) continue;
      expect_op(":");
      items.push_back(parse_expression(true));
    }
    ++pos_;
    return make(is_dict ? EK::kDict : EK::kList, line, std::move(items));
  }

  ExprPtr parse_postfix(ExprPtr e) {
    for (;;) {
      int line = cur().line;
      if (skip_op(".")) {
        if (cur().kind == Tok::kInt)  // x.0 is x[0]
          e = make(EK::kItem, line, kids(std::move(e), parse_primary()));
        else
          e = make(EK::kAttr, line, kids(std::move(e)), expect_name());
      } else if (skip_op("[")) {
        e = parse_subscript(std::move(e), line);
      } else if (op("(")) {
        e = parse_call(std::move(e));
      } else {
        return e;
      }
    }
  }

  ExprPtr parse_filter_expr(ExprPtr e) {
    for (;;) {
      if (op("|"))
        e = parse_filter(std::move(e));
      else if (name("is"))
        e = parse_test(std::move(e));
      else if (op("("))
        e = parse_call(std::move(e));
      else
        return e;
    }
  }

  ExprPtr parse_subscript(ExprPtr e, int line) {
    std::vector<ExprPtr> parts;
    parts.push_back(std::move(e));
    parts.push_back(op(":") ? nullptr : parse_expression(true));
    if (!skip_op(":")) {
      if (op(",")) error("unsupported tuple subscript");
      expect_op("]");
      return make(EK::kItem, line, std::move(parts));
    }
    parts.push_back(op("]") || op(":") ? nullptr : parse_expression(true));
    ExprPtr step;
    if (skip_op(":")) step = op("]") ? nullptr : parse_expression(true);
    parts.push_back(std::move(step));
    expect_op("]");
    return make(EK::kSlice, line, std::move(parts));
  }

  // `(` positional, then name=value arguments `)`, appended to `out`; returns the names.
  std::vector<std::string> parse_args(std::vector<ExprPtr>& out) {
    expect_op("(");
    std::vector<std::string> kw;
    for (bool first = true; !op(")"); first = false) {
      if (!first) expect_op(",");
      if (op(")")) break;
      if (op("*") || op("**")) error("unsupported *args/**kwargs in a call");
      if (cur().kind == Tok::kName && peek().kind == Tok::kOp && peek().text == "=") {
        kw.push_back(cur().text);
        pos_ += 2;
      } else if (!kw.empty()) {
        error("positional argument after keyword argument");
      }
      out.push_back(parse_expression(true));
    }
    ++pos_;
    return kw;
  }

  ExprPtr with_args(EK kind, int line, ExprPtr subject, std::string name, bool call) {
    std::vector<ExprPtr> parts;
    parts.push_back(std::move(subject));
    std::vector<std::string> kw;
    if (call) kw = parse_args(parts);
    auto e = make(kind, line, std::move(parts), std::move(name));
    e->kw = std::move(kw);
    return e;
  }

  ExprPtr parse_call(ExprPtr e) { return with_args(EK::kCall, cur().line, std::move(e), "", true); }

  ExprPtr parse_filter(ExprPtr e) {
    int line = toks_[pos_++].line;
    std::string f = expect_name();
    if (!listed(kFilters, f)) syntax_error(origin_, "unsupported filter '" + f + "'", line);
    return with_args(EK::kFilter, line, std::move(e), f, op("("));
  }

  ExprPtr parse_test(ExprPtr e) {
    int line = toks_[pos_++].line;
    bool negated = skip_name("not");
    std::string t = expect_name();
    if (!listed(kTests, t)) syntax_error(origin_, "unsupported test '" + t + "'", line);
    if (op("(")) {
      e = with_args(EK::kTest, line, std::move(e), t, true);
    } else {
      Tok k = cur().kind;
      bool arg = ((k == Tok::kName || k == Tok::kStr || k == Tok::kInt || k == Tok::kFloat ||
                   op("[") || op("{")) &&
                  !name("else") && !name("or") && !name("and"));
      if (arg && name("is")) error("cannot chain tests with 'is'");
      e = make(EK::kTest, line,
               arg ? kids(std::move(e), parse_postfix(parse_primary())) : kids(std::move(e)), t);
    }
    return negated ? make(EK::kNot, line, kids(std::move(e))) : std::move(e);
  }

  std::vector<Token> toks_;
  const std::string& origin_;
  size_t pos_ = 0;
  int nest_ = 0, loops_ = 0;
};

// -------------------------------------------------------------------------------- evaluation

struct Args {
  std::vector<Value> pos;
  Pairs kw;
};
using Params = std::vector<std::optional<Value>>;

// Binds arguments to parameter names as Python does; absent parameters stay empty.
Params params(const Args& a, std::initializer_list<const char*> names, const std::string& fn) {
  Params out(names.size());
  if (a.pos.size() > names.size()) fail(fn + "() got too many arguments");
  for (size_t k = 0; k < a.pos.size(); ++k) out[k] = a.pos[k];
  for (const auto& kv : a.kw) {
    size_t k = 0;
    while (k < names.size() && kv.first != names.begin()[k]) ++k;
    if (k == names.size()) fail(fn + "() got an unexpected keyword argument '" + kv.first + "'");
    if (out[k]) fail(fn + "() got multiple values for argument '" + kv.first + "'");
    out[k] = kv.second;
  }
  return out;
}

bool given(const std::optional<Value>& v) {
  return v && v->kind != Value::kNone;
}

int64_t int_param(const std::optional<Value>& v, int64_t dflt, const std::string& what) {
  if (!given(v)) return dflt;
  if (v->kind != Value::kInt && v->kind != Value::kBool) fail(what + " must be an integer");
  return v->i;
}

const std::string* str_param(const std::optional<Value>& v, const std::string& what) {
  if (!given(v)) return nullptr;
  if (v->kind != Value::kStr) fail(what + " must be a string, not " + type_name(*v));
  return &v->s();
}

// Python's int() and float() of a string, for the `int` and `float` filters.
std::optional<double> parse_float(const std::string& text) {
  std::string t = strip(text, nullptr, true, true), clean;
  for (size_t k = 0; k < t.size(); ++k) {
    bool between = k > 0 && k + 1 < t.size() && is_digit(t[k - 1]) && is_digit(t[k + 1]);
    if (t[k] == '_' && between) continue;
    if (!one_of("0123456789+-.eEinfatyINFATY", t[k])) return std::nullopt;
    clean += t[k];
  }
  char* end = nullptr;
  double d = clean.empty() ? 0 : strtod(clean.c_str(), &end);
  if (clean.empty() || *end) return std::nullopt;
  return d;
}

std::optional<int64_t> parse_int(const std::string& text) {
  std::string t = strip(text, nullptr, true, true), clean;
  for (size_t k = 0; k < t.size(); ++k) {
    if (t[k] == '_' && k > 0 && k + 1 < t.size() && is_digit(t[k - 1]) && is_digit(t[k + 1]))
      continue;
    if (!is_digit(t[k]) && !(k == 0 && (t[k] == '+' || t[k] == '-'))) return std::nullopt;
    clean += t[k];
  }
  if (clean.empty() || !is_digit(clean.back())) return std::nullopt;
  errno = 0;
  int64_t v = strtoll(clean.c_str(), nullptr, 10);
  if (errno == ERANGE) fail("integer overflow (integers beyond 64 bits are unsupported)");
  return v;
}

std::string html_escape(const std::string& s) {  // markupsafe.escape
  std::string out;
  for (char c : s) {
    const char* r = c == '&'    ? "&amp;"
                    : c == '<'  ? "&lt;"
                    : c == '>'  ? "&gt;"
                    : c == '"'  ? "&#34;"
                    : c == '\'' ? "&#39;"
                                : nullptr;
    if (r)
      out += r;
    else
      out += c;
  }
  return out;
}

std::string replace(const std::string& s, const std::string& old, const std::string& rep,
                    int64_t count) {
  std::string out;
  int64_t n = 0;
  if (old.empty()) {  // Python puts `rep` before every character and at the end
    for (size_t i = 0;; i += decode(s, i).len) {
      if (count < 0 || n++ < count) out += rep;
      check_size(out.size());
      if (i >= s.size()) break;
      out.append(s, i, decode(s, i).len);
    }
    return out;
  }
  size_t pos = 0;
  for (size_t q; (count < 0 || n < count) && (q = s.find(old, pos)) != std::string::npos; ++n) {
    out.append(s, pos, q - pos);
    out += rep;
    pos = q + old.size();
    check_size(out.size());
  }
  return out.append(s, pos);
}

// str.split / str.rsplit; `sep` null splits on runs of whitespace.
std::vector<Value> split(const std::string& s, const std::string* sep, int64_t max, bool right) {
  std::vector<std::string> parts;
  if (sep) {
    if (sep->empty()) fail("empty separator");
    size_t n = sep->size(), lo = 0, hi = s.size();
    for (int64_t k = 0; max < 0 || k < max; ++k) {
      size_t q = right ? (hi >= n ? s.rfind(*sep, hi - n) : std::string::npos) : s.find(*sep, lo);
      if (q == std::string::npos || (right && q < lo)) break;
      parts.push_back(right ? s.substr(q + n, hi - q - n) : s.substr(lo, q - lo));
      (right ? hi : lo) = right ? q : q + n;
    }
    parts.push_back(s.substr(lo, hi - lo));
  } else {
    std::vector<std::string> cs = chars(s);
    if (right) std::reverse(cs.begin(), cs.end());
    auto ws = [&](size_t k) { return is_space(decode(cs[k], 0).cp); };
    for (size_t i = 0, j;; i = j) {
      while (i < cs.size() && ws(i)) ++i;
      if (i == cs.size()) break;
      bool last = max >= 0 && static_cast<int64_t>(parts.size()) == max;
      for (j = i; j < cs.size() && (last || !ws(j)); ++j) {
      }
      std::string word;
      for (size_t k = i; k < j; ++k) word += right ? cs[j - 1 - (k - i)] : cs[k];
      parts.push_back(std::move(word));
    }
  }
  if (right) std::reverse(parts.begin(), parts.end());
  std::vector<Value> out;
  for (auto& p : parts) out.push_back(str(std::move(p)));
  return out;
}

std::vector<Value> splitlines(const std::string& s) {
  std::vector<Value> out;
  size_t start = 0;
  for (size_t i = 0; i < s.size();) {
    Cp c = decode(s, i);
    bool nl = c.cp == '\n' || c.cp == '\r' || c.cp == 0x0b || c.cp == 0x0c ||
              (c.cp >= 0x1c && c.cp <= 0x1e) || c.cp == 0x85 || c.cp == 0x2028 || c.cp == 0x2029;
    size_t next = i + c.len + (c.cp == '\r' && i + 1 < s.size() && s[i + 1] == '\n' ? 1 : 0);
    if (nl) out.push_back(str(s.substr(start, i - start))), start = next;
    i = next;
  }
  if (start < s.size()) out.push_back(str(s.substr(start)));
  return out;
}

// Python's round(x, ndigits) is correctly rounded, half to even; so is glibc's printf.
double round_to(double x, int64_t digits) {
  if (std::isnan(x) || std::isinf(x) || digits > 300) return x;
  if (digits < -308) return std::copysign(0.0, x);
  if (digits < 0) {
    double p = std::pow(10.0, static_cast<double>(-digits));
    return std::nearbyint(x / p) * p;
  }
  std::vector<char> buf(400);
  snprintf(buf.data(), buf.size(), "%.*f", static_cast<int>(digits), x);
  return strtod(buf.data(), nullptr);
}

std::pair<int64_t, int64_t> slice_range(const std::optional<int64_t> (&b)[3], int64_t n) {
  int64_t step = std::max<int64_t>(b[2].value_or(1), -INT64_MAX);
  auto clamp = [&](const std::optional<int64_t>& v, int64_t dflt) {
    if (!v) return dflt;
    int64_t x = *v;
    if (x < 0)
      x = x + n < 0 ? (step < 0 ? -1 : 0) : x + n;
    else if (x >= n)
      x = step < 0 ? n - 1 : n;
    return x;
  };
  int64_t start = clamp(b[0], step < 0 ? n - 1 : 0), stop = clamp(b[1], step < 0 ? -1 : n);
  int64_t count = step > 0 ? (stop > start ? (stop - start - 1) / step + 1 : 0)
                           : (start > stop ? (start - stop - 1) / -step + 1 : 0);
  return {start, count};
}

const char* const kStrMethods[] = {"startswith", "endswith",   "split", "rsplit", "strip",
                                   "lstrip",     "rstrip",     "lower", "upper",  "replace",
                                   "title",      "capitalize", "find",  "rfind",  "count",
                                   "join",       "splitlines", nullptr};
const char* const kDictMethods[] = {"items", "keys", "values", "get", nullptr};
// What the immutable sandbox refuses.
const char* const kListMutators[] = {"append",  "extend", "insert", "pop",  "remove",
                                     "reverse", "sort",   "clear",  nullptr};
const char* const kDictMutators[] = {"pop", "popitem", "setdefault", "update", "clear", nullptr};

// One render: scopes, namespaces, output and budget. jinja2 scoping: the context is the outer
// scope, each loop iteration (and loop else, and generation body) gets a fresh inner scope, so a
// `set` there does not outlive it, while `if` shares its enclosing scope.
class Renderer {
 public:
  void load(const nlohmann::ordered_json& context) {
    scopes_.emplace_back();
    for (const auto& kv : context.items()) scopes_[0][kv.key()] = from_json(kv.value(), 1);
  }
  std::string run(const Body& body) {
    exec(body);
    return std::move(out_);
  }
  int line() const { return line_; }

 private:
  enum class Flow { kNormal, kBreak, kContinue };

  void emit(const std::string& s) {
    check_size(out_.size() + s.size());
    out_ += s;
  }

  Value charged(Value v) {  // accounts for a value just built
    if (v.kind == Value::kStr) budget_.bytes(v.s().size());
    if (v.kind == Value::kList) budget_.bytes(v.list().items.size() * sizeof(Value));
    if (v.kind == Value::kDict) budget_.bytes(v.dict().items.size() * 2 * sizeof(Value));
    return v;
  }

  Flow exec(const Body& body) {
    for (const auto& s : body) {
      Flow f = exec_stmt(*s);
      if (f != Flow::kNormal) return f;
    }
    return Flow::kNormal;
  }

  void scoped(const Body& body) {
    scopes_.emplace_back();
    exec(body);
    scopes_.pop_back();
  }

  Flow exec_stmt(const Stmt& s) {
    line_ = s.line;
    budget_.steps(1);
    switch (s.kind) {
      case SK::kText:
        emit(s.text);
        break;
      case SK::kPrint: {
        Value v = eval(*s.expr);
        emit(v.kind == Value::kStr ? v.s() : to_str(v, budget_));
        break;
      }
      case SK::kIf:
        for (const auto& branch : s.branches)
          if (!branch.first || truthy(eval(*branch.first))) return exec(branch.second);
        break;
      case SK::kFor:
        exec_for(s);
        break;
      case SK::kSet:
        if (s.attr.empty()) {
          bind(s.targets, eval(*s.expr));
        } else {
          Value ns = lookup(s.targets[0]);
          if (ns.kind != Value::kNs) fail("cannot assign attribute on non-namespace object");
          set_pair(ns.ns->attrs, s.attr, eval(*s.expr));
        }
        break;
      case SK::kBreak:
        return Flow::kBreak;
      case SK::kContinue:
        return Flow::kContinue;
      case SK::kScope:
        scoped(s.body);
        break;
    }
    return Flow::kNormal;
  }

  static void set_pair(Pairs& pairs, const std::string& key, Value v) {
    for (auto& kv : pairs)
      if (kv.first == key) return void(kv.second = std::move(v));
    pairs.emplace_back(key, std::move(v));
  }

  void exec_for(const Stmt& s) {
    Value seq = iterate(eval(*s.expr));
    std::vector<Value> kept;
    const std::vector<Value>* items = &seq.list().items;
    if (s.filter) {  // `for x in xs if cond`: loop.* counts the kept items only
      for (const Value& x : *items) {
        budget_.steps(1);
        scopes_.emplace_back();
        bind(s.targets, x);
        if (truthy(eval(*s.filter))) kept.push_back(x);
        scopes_.pop_back();
      }
      items = &kept;
    }
    bool completed = false;  // jinja2 runs `else` unless some iteration ran to its end
    for (size_t k = 0; k < items->size(); ++k) {
      budget_.steps(1);
      scopes_.emplace_back();
      bind(s.targets, (*items)[k]);
      scopes_.back()["loop"] = loop_info(*items, k);
      Flow f = exec(s.body);
      scopes_.pop_back();
      completed = completed || f == Flow::kNormal;
      if (f == Flow::kBreak) break;
    }
    if (!completed) scoped(s.else_body);
  }

  static Value loop_info(const std::vector<Value>& items, size_t k) {
    int64_t n = static_cast<int64_t>(items.size()), i = static_cast<int64_t>(k);
    Pairs p = {{"index", integer(i + 1)},    {"index0", integer(i)},
               {"revindex", integer(n - i)}, {"revindex0", integer(n - i - 1)},
               {"first", boolean(i == 0)},   {"last", boolean(i == n - 1)},
               {"length", integer(n)},       {"depth", integer(1)},
               {"depth0", integer(0)}};
    if (k > 0) p.emplace_back("previtem", items[k - 1]);
    if (k + 1 < items.size()) p.emplace_back("nextitem", items[k + 1]);
    Value v;
    v.kind = Value::kDict;
    v.p = std::make_shared<Object>(Object{std::move(p), 1});
    return v;
  }

  // Assigns to one name, or unpacks into several as Python does.
  void bind(const std::vector<std::string>& targets, const Value& v) {
    if (targets.size() == 1) return void(scopes_.back()[targets[0]] = v);
    if (v.kind != Value::kList && v.kind != Value::kStr && v.kind != Value::kDict)
      fail("cannot unpack non-iterable " + type_name(v) + " object");
    Value seq = iterate(v);
    const auto& items = seq.list().items;
    if (items.size() != targets.size())
      fail(std::string(items.size() > targets.size() ? "too many" : "not enough") +
           " values to unpack (expected " + std::to_string(targets.size()) + ")");
    for (size_t k = 0; k < targets.size(); ++k) scopes_.back()[targets[k]] = items[k];
  }

  // The items a for loop or filter visits, as a list value: list items, string characters, dict
  // keys; undefined yields nothing (jinja2's Undefined iterates as empty).
  Value iterate(const Value& v) {
    std::vector<Value> out;
    switch (v.kind) {
      case Value::kUndef:
        break;
      case Value::kList:
        return v;  // shared, not copied
      case Value::kDict:
        for (const auto& kv : v.dict().items) out.push_back(str(kv.first));
        break;
      case Value::kStr:
        budget_.bytes(v.s().size() * 64);  // what a value per character costs
        for (auto& c : chars(v.s())) out.push_back(str(std::move(c)));
        break;
      default:
        fail("'" + type_name(v) + "' object is not iterable");
    }
    return charged(list(std::move(out)));
  }

  Value lookup(const std::string& name) const {
    for (auto it = scopes_.rbegin(); it != scopes_.rend(); ++it) {
      auto found = it->find(name);
      if (found != it->end()) return found->second;
    }
    if (name == "namespace" || name == "range" || name == "dict" || name == "raise_exception")
      return func(name);
    return undef("'" + name + "' is undefined");
  }

  Value eval(const Expr& e) {
    budget_.steps(1);
    line_ = e.line;
    switch (e.kind) {
      case EK::kLit:
        return e.lit;
      case EK::kName:
        return lookup(e.name);
      case EK::kList:
      case EK::kTuple: {
        std::vector<Value> items;
        for (const auto& k : e.kids) items.push_back(eval(*k));
        return charged(list(std::move(items), e.kind == EK::kTuple));
      }
      case EK::kDict: {
        Pairs items;
        for (size_t k = 0; k + 1 < e.kids.size(); k += 2) {
          Value key = eval(*e.kids[k]);
          if (key.kind != Value::kStr) fail("unsupported dict key of type " + type_name(key));
          items.emplace_back(key.s(), eval(*e.kids[k + 1]));
        }
        return charged(dict(std::move(items)));
      }
      case EK::kAttr:
        return get_attr(eval(*e.kids[0]), e.name);
      case EK::kItem: {
        Value obj = eval(*e.kids[0]);
        return get_item(obj, eval(*e.kids[1]));
      }
      case EK::kSlice:
        return charged(slice(e));
      case EK::kCall:
        return charged(call(e));
      case EK::kFilter: {
        Value v = eval(*e.kids[0]);
        Value r = filter(e.name, v, args(e));
        return r.p == v.p ? r : charged(std::move(r));  // `xs | list` builds nothing
      }
      case EK::kTest: {
        Value v = eval(*e.kids[0]);
        return boolean(test(e.name, v, args(e)));
      }
      default:
        return eval_operator(e);
    }
  }

  Value eval_operator(const Expr& e) {
    switch (e.kind) {
      case EK::kNot:
        return boolean(!truthy(eval(*e.kids[0])));
      case EK::kNeg:
      case EK::kPos:
        return unary(e.kind == EK::kNeg, eval(*e.kids[0]));
      case EK::kBin: {
        Value a = eval(*e.kids[0]);
        return charged(binary(e.name, a, eval(*e.kids[1])));
      }
      case EK::kAnd: {  // Python's and/or return an operand
        Value a = eval(*e.kids[0]);
        return truthy(a) ? eval(*e.kids[1]) : a;
      }
      case EK::kOr: {
        Value a = eval(*e.kids[0]);
        return truthy(a) ? a : eval(*e.kids[1]);
      }
      case EK::kConcat: {
        std::string out;
        for (const auto& k : e.kids) {
          Value v = eval(*k);
          out += v.kind == Value::kStr ? v.s() : to_str(v, budget_);
          check_size(out.size());
        }
        return charged(str(std::move(out)));
      }
      case EK::kCompare: {
        Value left = eval(*e.kids[0]);
        for (size_t k = 0; k < e.ops.size(); ++k) {
          Value right = eval(*e.kids[k + 1]);
          if (!compare(e.ops[k], left, right)) return boolean(false);
          left = std::move(right);
        }
        return boolean(true);
      }
      default:
        break;  // kCond
    }
    if (truthy(eval(*e.kids[1]))) return eval(*e.kids[0]);
    return e.kids[2] ? eval(*e.kids[2]) : undef();
  }

  Args args(const Expr& e) {
    Args a;
    size_t first_kw = e.kids.size() - e.kw.size();
    for (size_t k = 1; k < e.kids.size(); ++k) {
      Value v = eval(*e.kids[k]);
      if (k < first_kw)
        a.pos.push_back(std::move(v));
      else
        a.kw.emplace_back(e.kw[k - first_kw], std::move(v));
    }
    return a;
  }

  bool compare(const std::string& op, const Value& a, const Value& b) {
    if (op == "==") return equals(a, b, budget_);
    if (op == "!=") return !equals(a, b, budget_);
    if (op == "<") return less(a, b, budget_);
    if (op == ">") return less(b, a, budget_);
    if (op == "<=") return less(a, b, budget_) || equals(a, b, budget_);
    if (op == ">=") return less(b, a, budget_) || equals(a, b, budget_);
    return contains(b, a) == (op == "in");
  }

  bool contains(const Value& c, const Value& x) {
    switch (c.kind) {
      case Value::kUndef:
        return false;
      case Value::kStr:
        if (x.kind != Value::kStr)
          fail("'in <string>' requires string as left operand, not " + type_name(x));
        budget_.bytes(c.s().size());
        return c.s().find(x.s()) != std::string::npos;
      case Value::kList:
        for (const Value& y : c.list().items)
          if (equals(x, y, budget_)) return true;
        return false;
      case Value::kDict:
        if ((x.kind == Value::kList && !x.list().tuple) || x.kind == Value::kDict)
          fail("unhashable type: '" + type_name(x) + "'");
        return x.kind == Value::kStr && c.dict().find(x.s());
      default:
        fail("argument of type '" + type_name(c) + "' is not iterable");
    }
  }

  Value unary(bool negate, const Value& v) {
    if (v.kind == Value::kUndef) fail_undefined(v);
    if (v.kind == Value::kFloat) return real(negate ? -v.f : v.f);
    if (!v.num())
      fail(std::string("bad operand type for unary ") + (negate ? "-" : "+") + ": '" +
           type_name(v) + "'");
    if (negate && v.i == INT64_MIN)
      fail("integer overflow (integers beyond 64 bits are unsupported)");
    return integer(negate ? -v.i : v.i);
  }

  Value binary(const std::string& op, const Value& a, const Value& b) {
    if (a.kind == Value::kUndef) fail_undefined(a);
    if (b.kind == Value::kUndef) fail_undefined(b);
    if (a.num() && b.num()) return arith(op, a, b);
    if (op == "+" && a.kind == Value::kStr && b.kind == Value::kStr) {
      check_size(a.s().size() + b.s().size());
      return str(a.s() + b.s());
    }
    if (op == "+" && a.kind == Value::kList && b.kind == Value::kList &&
        a.list().tuple == b.list().tuple) {
      std::vector<Value> items = a.list().items;
      if (items.size() + b.list().items.size() > kMaxItems) fail("list exceeds the size limit");
      items.insert(items.end(), b.list().items.begin(), b.list().items.end());
      return list(std::move(items), a.list().tuple);
    }
    bool seq_a = a.kind == Value::kStr || a.kind == Value::kList;
    bool seq_b = b.kind == Value::kStr || b.kind == Value::kList;
    if (op == "*" && ((seq_a && b.num() && b.kind != Value::kFloat) ||
                      (seq_b && a.num() && a.kind != Value::kFloat)))
      return seq_a ? repeat(a, b.i) : repeat(b, a.i);
    if (op == "%" && a.kind == Value::kStr) fail("unsupported: string formatting with '%'");
    if (op == "+" && a.kind == Value::kStr)
      fail("can only concatenate str (not \"" + type_name(b) + "\") to str");
    fail("unsupported operand type(s) for " + op + ": '" + type_name(a) + "' and '" + type_name(b) +
         "'");
  }

  Value repeat(const Value& seq, int64_t n) {
    n = std::max<int64_t>(n, 0);
    if (seq.kind == Value::kStr) {
      size_t len = seq.s().size();
      if (len && static_cast<uint64_t>(n) > kMaxString / len) fail("string exceeds 256 MiB");
      std::string out;
      for (int64_t k = 0; k < n; ++k) out += seq.s();
      return str(std::move(out));
    }
    size_t len = seq.list().items.size();
    if (len && static_cast<uint64_t>(n) > kMaxItems / len) fail("list exceeds the size limit");
    std::vector<Value> out;
    for (int64_t k = 0; k < n; ++k)
      out.insert(out.end(), seq.list().items.begin(), seq.list().items.end());
    return list(std::move(out), seq.list().tuple);
  }

  static Value arith(const std::string& op, const Value& a, const Value& b) {
    if (op == "/") {
      if (b.d() == 0) fail("division by zero");
      return real(a.d() / b.d());
    }
    if (a.kind != Value::kFloat && b.kind != Value::kFloat) return int_arith(op, a.i, b.i);
    double x = a.d(), y = b.d();
    if (op == "+") return real(x + y);
    if (op == "-") return real(x - y);
    if (op == "*") return real(x * y);
    if (op == "**") {
      if (x == 0 && y < 0) fail("0.0 cannot be raised to a negative power");
      if (x < 0 && y != std::floor(y)) fail("unsupported: complex result of '**'");
      double r = std::pow(x, y);
      if (std::isinf(r) && std::isfinite(x) && std::isfinite(y))
        fail("numerical result out of range");
      return real(r);
    }
    if (y == 0) fail("float division by zero");
    double mod = std::fmod(x, y), div = (x - mod) / y;  // Python's float divmod
    if (mod != 0 && (y < 0) != (mod < 0)) mod += y, div -= 1.0;
    if (mod == 0) mod = std::copysign(0.0, y);
    double floor_div = div != 0 ? std::floor(div) : std::copysign(0.0, x / y);
    if (div != 0 && div - floor_div > 0.5) floor_div += 1.0;
    return real(op == "%" ? mod : floor_div);
  }

  static Value int_arith(const std::string& op, int64_t x, int64_t y) {
    int64_t r = 0;
    bool over = false;
    if (op == "+") {
      over = __builtin_add_overflow(x, y, &r);
    } else if (op == "-") {
      over = __builtin_sub_overflow(x, y, &r);
    } else if (op == "*") {
      over = __builtin_mul_overflow(x, y, &r);
    } else if (op == "//" || op == "%") {
      if (y == 0) fail("integer division or modulo by zero");
      if (y == -1) {  // x / -1 overflows for INT64_MIN, and x % -1 is undefined in C++
        over = op == "//" && x == INT64_MIN;
        r = op == "%" || over ? 0 : -x;
      } else {
        int64_t q = x / y, m = x % y;
        if (m != 0 && (m < 0) != (y < 0)) --q, m += y;
        r = op == "%" ? m : q;
      }
    } else {  // "**" by squaring
      if (y < 0) {
        if (x == 0) fail("0.0 cannot be raised to a negative power");
        return real(std::pow(static_cast<double>(x), static_cast<double>(y)));
      }
      r = 1;
      for (int64_t base = x; y > 0 && !over; y >>= 1) {
        if (y & 1) over = __builtin_mul_overflow(r, base, &r);
        if (y > 1 && !over) over = __builtin_mul_overflow(base, base, &base);
      }
    }
    if (over) fail("integer overflow (integers beyond 64 bits are unsupported)");
    return integer(r);
  }

  // jinja2's sandboxed getattr: a method of the type first, then a dict key / namespace
  // attribute; what is missing is undefined, carrying the message used if it is misused.
  static Value get_attr(const Value& obj, const std::string& name) {
    if (obj.kind == Value::kUndef) fail_undefined(obj);
    std::string tn = type_name(obj);
    bool unsafe = name.empty() || name[0] == '_' ||
                  (obj.kind == Value::kList && listed(kListMutators, name)) ||
                  (obj.kind == Value::kDict && listed(kDictMutators, name));
    if (unsafe) return undef("access to attribute '" + name + "' of '" + tn + "' object is unsafe");
    if ((obj.kind == Value::kStr && listed(kStrMethods, name)) ||
        (obj.kind == Value::kDict && listed(kDictMethods, name)))
      return func(name, obj, true);
    const Pairs* pairs = obj.kind == Value::kDict ? &obj.dict().items
                         : obj.kind == Value::kNs ? &obj.ns->attrs
                                                  : nullptr;
    if (pairs)
      for (const auto& kv : *pairs)
        if (kv.first == name) return kv.second;
    return undef("'" + (obj.kind == Value::kNone ? "None" : tn + " object") +
                 "' has no attribute '" + name + "'");
  }

  // jinja2's getitem: the item first, then (for a string key) the attribute.
  Value get_item(const Value& obj, const Value& key) {
    if (obj.kind == Value::kUndef) fail_undefined(obj);
    if (obj.kind == Value::kDict && key.kind == Value::kStr)
      if (const Value* v = obj.dict().find(key.s())) return *v;
    if (key.kind == Value::kStr) return get_attr(obj, key.s());
    bool index = key.kind == Value::kInt || key.kind == Value::kBool;
    if (index && obj.kind == Value::kList) {
      const auto& items = obj.list().items;
      int64_t n = static_cast<int64_t>(items.size()), k = key.i < 0 ? key.i + n : key.i;
      if (k >= 0 && k < n) return items[k];
    }
    if (index && obj.kind == Value::kStr) {
      budget_.bytes(obj.s().size());
      int64_t n = static_cast<int64_t>(cp_count(obj.s())), k = key.i < 0 ? key.i + n : key.i;
      for (size_t i = 0; k >= 0 && i < obj.s().size(); i += decode(obj.s(), i).len, --k)
        if (k == 0) return str(obj.s().substr(i, decode(obj.s(), i).len));
    }
    return undef("'" + type_name(obj) + " object' has no element " + to_str(key, budget_));
  }

  // jinja2 compiles a slice to a plain Python subscript, so misuse raises instead of being
  // undefined.
  Value slice(const Expr& e) {
    Value v = eval(*e.kids[0]);
    std::optional<int64_t> bounds[3];
    for (int k = 0; k < 3; ++k) {
      Value b = e.kids[k + 1] ? eval(*e.kids[k + 1]) : none();
      if (b.kind == Value::kInt || b.kind == Value::kBool)
        bounds[k] = b.i;
      else if (b.kind != Value::kNone)
        fail("slice indices must be integers or None");
    }
    if (v.kind == Value::kUndef) fail_undefined(v);
    if (v.kind == Value::kDict) fail("unhashable type: 'slice'");
    if (v.kind != Value::kStr && v.kind != Value::kList)
      fail("'" + type_name(v) + "' object is not subscriptable");
    if (bounds[2] == 0) fail("slice step cannot be zero");
    if (v.kind == Value::kList) {
      const auto& items = v.list().items;
      auto [start, count] = slice_range(bounds, static_cast<int64_t>(items.size()));
      std::vector<Value> out;
      for (int64_t k = 0; k < count; ++k) out.push_back(items[start + k * bounds[2].value_or(1)]);
      return list(std::move(out), v.list().tuple);
    }
    budget_.bytes(v.s().size() * 8);
    std::vector<size_t> at;  // byte offset of each character, then the end
    for (size_t i = 0; i < v.s().size(); i += decode(v.s(), i).len) at.push_back(i);
    auto [start, count] = slice_range(bounds, static_cast<int64_t>(at.size()));
    at.push_back(v.s().size());
    std::string out;
    for (int64_t k = 0; k < count; ++k) {
      size_t c = static_cast<size_t>(start + k * bounds[2].value_or(1));
      out.append(v.s(), at[c], at[c + 1] - at[c]);
    }
    return str(std::move(out));
  }

  Value call(const Expr& e) {
    Value f = eval(*e.kids[0]);
    Args a = args(e);
    if (f.kind == Value::kUndef) fail_undefined(f);
    if (f.kind != Value::kFunc) fail("'" + type_name(f) + "' object is not callable");
    const Func& fn = f.fn();
    if (!fn.method) return global(fn.name, a);
    if (fn.self.kind == Value::kDict) return dict_method(fn.self.dict(), fn.name, a);
    return str_method(fn.self.s(), fn.name, a);
  }

  Value global(const std::string& name, const Args& a) {
    if (name == "raise_exception") {
      Params p = params(a, {"message"}, name);
      throw Raised{p[0] ? to_str(*p[0], budget_) : ""};
    }
    if (name == "range") {
      if (a.pos.empty() || a.pos.size() > 3 || !a.kw.empty())
        fail("range() takes 1 to 3 arguments");
      std::optional<Value> b[3];
      for (size_t k = 0; k < a.pos.size(); ++k) b[k] = a.pos[k];
      int64_t lo = a.pos.size() > 1 ? int_param(b[0], 0, "range()") : 0;
      int64_t hi = int_param(a.pos.size() > 1 ? b[1] : b[0], 0, "range()");
      int64_t step = int_param(b[2], 1, "range()");
      if (step == 0) fail("range() arg 3 must not be zero");
      double n = step > 0 ? std::ceil((static_cast<double>(hi) - lo) / step)
                          : std::ceil((static_cast<double>(lo) - hi) / -static_cast<double>(step));
      if (n > kMaxRange) fail("range too big (the sandbox allows 100000 items)");
      std::vector<Value> out;
      for (int64_t k = 0; k < static_cast<int64_t>(n); ++k) out.push_back(integer(lo + k * step));
      return list(std::move(out));
    }
    Pairs items;  // namespace(...) and dict(...): an optional dict, then keyword arguments
    if (a.pos.size() > 1 || (a.pos.size() == 1 && a.pos[0].kind != Value::kDict))
      fail(name + "() takes an optional dict and keyword arguments");
    if (a.pos.size() == 1) items = a.pos[0].dict().items;
    for (const auto& kv : a.kw) set_pair(items, kv.first, kv.second);
    if (name == "dict") return dict(std::move(items));
    budget_.bytes(sizeof(Namespace) + items.size() * 2 * sizeof(Value));
    namespaces_.emplace_back();
    namespaces_.back().attrs = std::move(items);
    Value v;
    v.kind = Value::kNs;
    v.ns = &namespaces_.back();
    return v;
  }

  Value dict_method(const Object& d, const std::string& name, const Args& a) {
    if (name == "get") {
      Params p = params(a, {"key", "default"}, name);
      if (!p[0]) fail("get() takes at least 1 argument");
      const Value* v = p[0]->kind == Value::kStr ? d.find(p[0]->s()) : nullptr;
      return v ? *v : p[1] ? *p[1] : none();
    }
    params(a, {}, name);
    std::vector<Value> out;
    for (const auto& kv : d.items) {
      if (name == "keys")
        out.push_back(str(kv.first));
      else if (name == "values")
        out.push_back(kv.second);
      else
        out.push_back(list({str(kv.first), kv.second}, true));
    }
    return list(std::move(out));
  }

  Value str_method(const std::string& s, const std::string& name, const Args& a) {
    budget_.bytes(s.size());
    if (name == "startswith" || name == "endswith") {
      Params p = params(a, {"prefix"}, name);
      if (!p[0]) fail(name + "() takes exactly one argument");
      std::vector<Value> options =
          p[0]->kind == Value::kList ? p[0]->list().items : std::vector<Value>{*p[0]};
      for (const Value& o : options) {
        const std::string& x = *str_param(o, name + "() argument");
        if (x.size() <= s.size() &&
            s.compare(name == "startswith" ? 0 : s.size() - x.size(), x.size(), x) == 0)
          return boolean(true);
      }
      return boolean(false);
    }
    if (name == "strip" || name == "lstrip" || name == "rstrip") {
      Params p = params(a, {"chars"}, name);
      return str(strip(s, str_param(p[0], "chars"), name != "rstrip", name != "lstrip"));
    }
    if (name == "split" || name == "rsplit") {
      Params p = params(a, {"sep", "maxsplit"}, name);
      return list(
          split(s, str_param(p[0], "sep"), int_param(p[1], -1, "maxsplit"), name == "rsplit"));
    }
    if (name == "replace") {
      Params p = params(a, {"old", "new", "count"}, name);
      if (!p[0] || !p[1]) fail("replace() takes at least 2 arguments");
      return str(replace(s, *str_param(p[0], "old"), *str_param(p[1], "new"),
                         int_param(p[2], -1, "count")));
    }
    if (name == "find" || name == "rfind" || name == "count") {
      Params p = params(a, {"sub"}, name);
      const std::string* sub = str_param(p[0], name + "() argument");
      if (!sub) fail(name + "() takes exactly one argument");
      if (name == "count") {
        if (sub->empty()) return integer(static_cast<int64_t>(cp_count(s)) + 1);
        int64_t n = 0;
        for (size_t q = s.find(*sub); q != std::string::npos; q = s.find(*sub, q + sub->size()))
          ++n;
        return integer(n);
      }
      size_t q = name == "find" ? s.find(*sub) : s.rfind(*sub);
      return integer(q == std::string::npos ? -1 : static_cast<int64_t>(cp_index(s, q)));
    }
    if (name == "join") {
      Params p = params(a, {"iterable"}, name);
      if (!p[0]) fail("join() takes exactly one argument");
      std::string out;
      Value items = iterate(*p[0]);
      for (size_t k = 0; k < items.list().items.size(); ++k) {
        out += (k ? s : "") + *str_param(items.list().items[k], "join() item");
        check_size(out.size());
      }
      return str(std::move(out));
    }
    params(a, {}, name);
    if (name == "splitlines") return list(splitlines(s));
    return str(map_case(s, name == "lower"   ? Case::kLower
                           : name == "upper" ? Case::kUpper
                           : name == "title" ? Case::kTitle
                                             : Case::kCapitalize));
  }

  // Filters that work on the string form of their subject.
  std::optional<Value> text_filter(const std::string& name, const Value& v, const Args& a) {
    if (name == "tojson") {
      Params p = params(a, {"ensure_ascii", "indent", "separators", "sort_keys"}, name);
      JsonOpts o;
      o.ascii = p[0] && truthy(*p[0]);
      o.sort_keys = p[3] && truthy(*p[3]);
      if (given(p[1])) {  // indent: a count of spaces or a string; items then end with ','
        o.pretty = true;
        o.item_sep = ",";
        o.indent = p[1]->kind == Value::kStr ? p[1]->s() : spaces(int_param(p[1], 0, "indent"));
      }
      if (given(p[2])) {
        if (p[2]->kind != Value::kList || p[2]->list().items.size() != 2)
          fail("separators must be an (item, key) pair");
        o.item_sep = *str_param(p[2]->list().items[0], "separator");
        o.key_sep = *str_param(p[2]->list().items[1], "separator");
      }
      std::string out;
      json(v, o, 0, out, budget_);
      return str(std::move(out));
    }
    static const char* const kOnText[] = {"string",  "safe",       "e",      "escape",
                                          "trim",    "lower",      "upper",  "title",
                                          "replace", "capitalize", "indent", nullptr};
    if (!listed(kOnText, name)) return std::nullopt;
    std::string s = to_str(v, budget_);
    budget_.bytes(s.size());
    if (name == "string" || name == "safe") return params(a, {}, name), str(std::move(s));
    if (name == "e" || name == "escape") return params(a, {}, name), str(html_escape(s));
    if (name == "trim")
      return str(strip(s, str_param(params(a, {"chars"}, name)[0], "chars"), true, true));
    if (name == "replace") {
      Params p = params(a, {"old", "new", "count"}, name);
      if (!p[0] || !p[1]) fail("replace() takes at least 2 arguments");
      return str(
          replace(s, to_str(*p[0], budget_), to_str(*p[1], budget_), int_param(p[2], -1, "count")));
    }
    if (name == "indent") {
      if (v.kind != Value::kStr) fail("indent needs a string, not " + type_name(v));
      return indent(s, a);
    }
    params(a, {}, name);
    return str(map_case(s, name == "lower"   ? Case::kLower
                           : name == "upper" ? Case::kUpper
                           : name == "title" ? Case::kJinjaTitle
                                             : Case::kCapitalize));
  }

  static std::string spaces(int64_t n) {  // Python's ' ' * n
    if (n > static_cast<int64_t>(kMaxString)) fail("string exceeds 256 MiB");
    return std::string(static_cast<size_t>(std::max<int64_t>(n, 0)), ' ');
  }

  Value indent(const std::string& s, const Args& a) {  // jinja2 3.1's do_indent
    Params p = params(a, {"width", "first", "blank"}, "indent");
    std::string pad =
        p[0] && p[0]->kind == Value::kStr ? p[0]->s() : spaces(int_param(p[0], 4, "width"));
    bool first = p[1] && truthy(*p[1]), blank = p[2] && truthy(*p[2]);
    std::vector<Value> lines = splitlines(s + "\n");
    std::string out;
    for (size_t k = 0; k < lines.size(); ++k) {
      const std::string& line = lines[k].s();
      if (k) out += "\n";
      if ((k || first) && (blank || !line.empty())) out += pad;
      out += line;
      check_size(out.size());
    }
    return str(std::move(out));
  }

  // The attribute (dotted path, numbers index) that map/selectattr/sort/unique/join look at.
  Value attribute(const Value& v, const std::string& path) {
    Value cur = v;
    for (size_t b = 0; b <= path.size();) {
      size_t e = std::min(path.find('.', b), path.size());
      std::string part = path.substr(b, e - b);
      bool num = !part.empty() && part.find_first_not_of("0123456789") == std::string::npos;
      cur = get_item(cur, num ? integer(atoll(part.c_str())) : str(part));
      b = e + 1;
    }
    return cur;
  }

  std::optional<Value> seq_filter(const std::string& name, const Value& v, const Args& a) {
    if (name == "length" || name == "count") {
      params(a, {}, name);
      if (v.kind == Value::kStr) return integer(static_cast<int64_t>(cp_count(v.s())));
      if (v.kind != Value::kList && v.kind != Value::kDict && v.kind != Value::kUndef)
        fail("object of type '" + type_name(v) + "' has no len()");
    }
    if (name == "items") {
      params(a, {}, name);
      if (v.kind == Value::kUndef) return list({});
      if (v.kind != Value::kDict) fail("can only get item pairs from a mapping");
      return dict_method(v.dict(), "items", Args());
    }
    if (name == "map" || name == "select" || name == "reject" || name == "selectattr" ||
        name == "rejectattr")
      return map_select(name, v, a);
    static const char* const kOnItems[] = {"length", "count",   "list",   "first", "last",
                                           "join",   "reverse", "unique", "sort",  nullptr};
    if (!listed(kOnItems, name)) return std::nullopt;
    Value seq = iterate(v);
    const std::vector<Value>& items = seq.list().items;
    if (name == "length" || name == "count") return integer(static_cast<int64_t>(items.size()));
    if (name == "list") return params(a, {}, name), seq;
    if (name == "first" || name == "last") {
      params(a, {}, name);
      return items.empty()     ? undef("no " + name + " item")
             : name == "first" ? items[0]
                               : items.back();
    }
    if (name == "join") {
      Params p = params(a, {"d", "attribute"}, name);
      std::string sep = p[0] ? to_str(*p[0], budget_) : "", out;
      for (size_t k = 0; k < items.size(); ++k) {
        const Value& x = given(p[1]) ? attribute(items[k], to_str(*p[1], budget_)) : items[k];
        out += (k ? sep : "") + to_str(x, budget_);
        check_size(out.size());
      }
      return str(std::move(out));
    }
    if (name == "reverse") {
      params(a, {}, name);
      std::vector<Value> out(items.rbegin(), items.rend());
      if (v.kind != Value::kStr) return list(std::move(out));
      std::string s;
      for (const Value& c : out) s += c.s();
      return str(std::move(s));
    }
    return unique_sort(name, items, a);
  }

  // unique(case_sensitive, attribute) keeps first occurrences; sort(reverse, case_sensitive,
  // attribute) is stable. Strings compare case-insensitively unless asked otherwise.
  Value unique_sort(const std::string& name, const std::vector<Value>& items, const Args& a) {
    bool sort = name == "sort";
    Params p = sort ? params(a, {"reverse", "case_sensitive", "attribute"}, name)
                    : params(a, {"case_sensitive", "attribute"}, name);
    bool reverse = sort && p[0] && truthy(*p[0]);
    const std::optional<Value>&cs = p[sort ? 1 : 0], &attr = p[sort ? 2 : 1];
    std::vector<Value> keys;
    for (const Value& x : items) {
      Value k = given(attr) ? attribute(x, to_str(*attr, budget_)) : x;
      bool fold = k.kind == Value::kStr && !(cs && truthy(*cs));
      keys.push_back(fold ? str(map_case(k.s(), Case::kLower)) : k);
    }
    std::vector<size_t> order;
    for (size_t i = 0; i < items.size(); ++i) {
      if (!sort) {
        bool seen = false;
        for (size_t j : order) seen = seen || equals(keys[j], keys[i], budget_);
        if (!seen) order.push_back(i);
        continue;
      }
      size_t at = order.size();  // insertion sort: stable, and safe with any comparison result
      while (at > 0 && (reverse ? less(keys[order[at - 1]], keys[i], budget_)
                                : less(keys[i], keys[order[at - 1]], budget_)))
        --at;
      order.insert(order.begin() + at, i);
    }
    std::vector<Value> out;
    for (size_t i : order) out.push_back(items[i]);
    return list(std::move(out));
  }

  Value map_select(const std::string& name, const Value& v, const Args& a) {
    Value seq = iterate(truthy(v) ? v : undef());  // jinja2 yields nothing for a falsy value
    bool by_attr = name == "selectattr" || name == "rejectattr";
    std::vector<Value> out;
    Args rest;  // the filter's or test's own arguments
    size_t skip = by_attr ? 2 : 1;
    for (size_t k = skip; k < a.pos.size(); ++k) rest.pos.push_back(a.pos[k]);
    const Value* map_attr = nullptr;
    const Value* map_default = nullptr;
    for (const auto& kv : a.kw) {
      if (name == "map" && kv.first == "attribute")
        map_attr = &kv.second;
      else if (name == "map" && kv.first == "default")
        map_default = &kv.second;
      else
        rest.kw.push_back(kv);
    }
    if (by_attr && a.pos.empty()) fail(name + "() needs an attribute");
    if (name == "map" && !map_attr && a.pos.empty()) fail("map() needs a filter or attribute");
    std::string fn = a.pos.size() >= skip ? to_str(a.pos[skip - 1], budget_) : "";
    if (!fn.empty() && !listed(name == "map" ? kFilters : kTests, fn))
      fail(std::string("unsupported ") + (name == "map" ? "filter" : "test") + " '" + fn + "'");
    for (const Value& x : seq.list().items) {
      if (name == "map") {
        Value y = map_attr ? attribute(x, to_str(*map_attr, budget_)) : filter(fn, x, rest);
        out.push_back(y.kind == Value::kUndef && map_default ? *map_default : y);
        continue;
      }
      const Value& subject = by_attr ? attribute(x, to_str(a.pos[0], budget_)) : x;
      bool ok = fn.empty() ? truthy(subject) : test(fn, subject, rest);
      if (ok == (name == "select" || name == "selectattr")) out.push_back(x);
    }
    return list(std::move(out));
  }

  Value filter(const std::string& name, const Value& v, const Args& a) {
    budget_.steps(1);
    if (auto r = text_filter(name, v, a)) return *r;
    if (auto r = seq_filter(name, v, a)) return *r;
    if (name == "default" || name == "d") {
      Params p = params(a, {"default_value", "boolean"}, name);
      bool use = v.kind == Value::kUndef || (p[1] && truthy(*p[1]) && !truthy(v));
      return use ? (p[0] ? *p[0] : str("")) : v;
    }
    if (v.kind == Value::kUndef) fail_undefined(v);
    if (name == "int" || name == "float") {
      Params p = params(a, {"default", "base"}, name);
      double d = v.num() ? v.d() : 0;
      bool ok = v.num();
      if (v.kind == Value::kStr)
        if (auto x = parse_float(v.s())) d = *x, ok = true;
      if (name == "float") return ok ? real(d) : p[0] ? *p[0] : real(0);
      if (v.kind == Value::kInt || v.kind == Value::kBool) return integer(v.i);
      if (v.kind == Value::kStr)
        if (auto i = parse_int(v.s())) return integer(*i);
      if (ok && (std::isnan(d) || std::fabs(d) >= 9.2e18))
        fail("integer overflow (integers beyond 64 bits are unsupported)");
      return ok ? integer(static_cast<int64_t>(d)) : p[0] ? *p[0] : integer(0);
    }
    if (name == "abs") {
      params(a, {}, name);
      if (!v.num()) fail("bad operand type for abs(): '" + type_name(v) + "'");
      return v.kind == Value::kFloat ? real(std::fabs(v.f)) : unary(v.i < 0, integer(v.i));
    }
    Params p = params(a, {"precision", "method"}, name);  // round
    int64_t digits = int_param(p[0], 0, "precision");
    std::string method = p[1] ? to_str(*p[1], budget_) : "common";
    if (!v.num()) fail("round() needs a number, not " + type_name(v));
    if (method != "common" && method != "ceil" && method != "floor")
      fail("round() method must be 'common', 'ceil' or 'floor'");
    if (method == "common" && v.kind != Value::kFloat) return integer(v.i);
    double scale = std::pow(10.0, static_cast<double>(digits)), x = v.d();
    if (method == "common") return real(round_to(x, digits));
    return real((method == "ceil" ? std::ceil(x * scale) : std::floor(x * scale)) / scale);
  }

  bool test(const std::string& name, const Value& v, const Args& a) {
    budget_.steps(1);
    static const char* const kBinary[] = {
        "divisibleby", "in", "sameas", "eq", "equalto", "ne", "lt", "lessthan", "le",   "gt",
        "greaterthan", "ge", "==",     "!=", "<",       "<=", ">",  ">=",       nullptr};
    size_t arity = listed(kBinary, name) ? 1 : 0;
    if (a.pos.size() != arity || !a.kw.empty())
      fail("test '" + name + "' takes " + std::to_string(arity) + " argument(s)");
    auto arg = [&]() -> const Value& { return a.pos[0]; };
    using V = Value;
    if (name == "defined" || name == "undefined")
      return (v.kind != V::kUndef) == (name == "defined");
    if (name == "none") return v.kind == V::kNone;
    if (name == "boolean") return v.kind == V::kBool;
    if (name == "true" || name == "false") return v.kind == V::kBool && v.i == (name == "true");
    if (name == "string") return v.kind == V::kStr;
    if (name == "number") return v.num();
    if (name == "integer") return v.kind == V::kInt;
    if (name == "float") return v.kind == V::kFloat;
    if (name == "mapping") return v.kind == V::kDict;
    if (name == "callable") return v.kind == V::kFunc || v.kind == V::kUndef;
    if (name == "iterable" || name == "sequence")  // jinja2's Undefined is both
      return v.kind == V::kStr || v.kind == V::kList || v.kind == V::kDict || v.kind == V::kUndef;
    if (name == "even" || name == "odd")
      return equals(arith_checked("%", v, integer(2)), integer(name == "odd"), budget_);
    if (name == "divisibleby") return equals(arith_checked("%", v, arg()), integer(0), budget_);
    if (name == "in") return contains(arg(), v);
    if (name == "sameas")
      return v.kind == arg().kind && v.i == arg().i && v.f == arg().f && v.p == arg().p &&
             v.ns == arg().ns;
    if (name == "lower" || name == "upper") {
      std::string s = to_str(v, budget_);
      return s != map_case(s, Case::kLower) || s != map_case(s, Case::kUpper)
                 ? s == map_case(s, name == "lower" ? Case::kLower : Case::kUpper)
                 : false;
    }
    std::string op = name == "eq" || name == "equalto"       ? "=="
                     : name == "ne"                          ? "!="
                     : name == "lt" || name == "lessthan"    ? "<"
                     : name == "gt" || name == "greaterthan" ? ">"
                     : name == "le"                          ? "<="
                     : name == "ge"                          ? ">="
                                                             : name;
    return compare(op, v, arg());
  }

  Value arith_checked(const std::string& op, const Value& a, const Value& b) {
    if (a.kind == Value::kUndef) fail_undefined(a);
    if (!a.num() || !b.num()) fail("unsupported operand type(s) for " + op);
    return arith(op, a, b);
  }

  std::vector<std::unordered_map<std::string, Value>> scopes_;
  std::deque<Namespace> namespaces_;  // stable addresses; values refer to them
  std::string out_;
  Budget budget_;
  int line_ = 0;
};

}  // namespace

struct ChatTemplate::Impl {
  std::string origin;
  Body body;
};

ChatTemplate::ChatTemplate(const std::string& source, const std::string& origin) {
  auto impl = std::make_shared<Impl>();
  impl->origin = origin;
  require(source.size() <= kMaxString, origin, "chat template: larger than 256 MiB");
  try {
    impl->body = Parser(Lexer(source, origin).run(), origin).run();
  } catch (const Fail& f) {
    throw InputError(origin + ": chat template: " + f.msg);
  }
  impl_ = std::move(impl);
}

ChatTemplate::~ChatTemplate() = default;

std::string ChatTemplate::render(const nlohmann::ordered_json& context) const {
  const std::string& origin = impl_->origin;
  require(context.is_object(), origin, "chat template: the context must be a JSON object");
  Renderer r;
  try {
    r.load(context);
    return r.run(impl_->body);
  } catch (const Raised& e) {
    throw InputError(origin + ": template raised: " + e.msg);
  } catch (const Fail& e) {
    std::string at = r.line() > 0 ? " at line " + std::to_string(r.line()) : "";
    throw InputError(origin + ": chat template: " + e.msg + at);
  }
}

}  // namespace dms
