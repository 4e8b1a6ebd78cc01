// Typed option tables: every option of a command is declared once — its name, help,
// group, the member of the typed config it sets, its range or set of values, and what a
// resumed run may do with it — and that one row feeds the command line (CLI11, and so
// the TOML file of `--config`), the run's config.json and validation. A new option is
// one new row.
//
// Errors: parse and check functions return "" when fine, else the problem; callers
// collect every problem and raise one InputError ("--name: problem; --other: ...").
#pragma once
#include <CLI/CLI.hpp>

#include <cstdint>
#include <functional>
#include <limits>
#include <nlohmann/json.hpp>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

namespace dms {

// What a resumed run may do with an option's value (checked against the checkpoint's).
enum class OnResume {
  fixed,  // must be equal: it changes what the run computes
  free,   // may change: logging, intervals, threads, timeouts, devices
  grow,   // may only grow (max-steps)
  batch,  // may change if micro-batch x accumulation x ranks stays equal
};

// A numeric range; open ends read "greater than" instead of "at least". NaN and
// infinities are always out of range.
struct Range {
  double lo = -std::numeric_limits<double>::max(), hi = std::numeric_limits<double>::max();
  bool lo_open = false, hi_open = false;
  std::string check(double v) const;  // "" or "must be ..."
  std::string describe() const;       // "1 .. 1024", "> 0", ...
};
inline Range at_least(double lo) {
  return {lo, std::numeric_limits<double>::max(), false, false};
}
inline Range above(double lo) {
  return {lo, std::numeric_limits<double>::max(), true, false};
}
inline Range between(double lo, double hi) {
  return {lo, hi, false, false};
}
inline Range any_finite() {
  return {};
}

std::string snake_case(const std::string& option_name);  // "max-steps" -> "max_steps"

template <class C>
struct Field {
  std::string name;  // command-line name without dashes ("max-steps"); key() for JSON/TOML
  std::string help, group;
  std::string values;  // accepted values, for --help ("adapter|query_neuron", ">= 1")
  bool flag = false;   // a switch (--name / --no-name)
  bool list = false;   // values accumulate: "2,4" or a TOML array [2, 4]
  bool required = false;
  bool saved = true;  // written to config.json (launch-only options are not)
  OnResume on_resume = OnResume::fixed;
  std::function<std::string(C&, const std::string&)> parse;  // command line / TOML text
  std::function<nlohmann::json(const C&)> get;
  std::function<void(C&, const nlohmann::json&)> set;   // from config.json; throws on type
  std::function<std::string(const C&)> check;           // range / value set
  std::string key() const { return snake_case(name); }  // "max_steps"

  Field&& resume(OnResume r) && {
    on_resume = r;
    return std::move(*this);
  }
  Field&& must() && {
    required = true;
    return std::move(*this);
  }
  Field&& unsaved() && {
    saved = false;
    return std::move(*this);
  }
};

// Parses the whole of s as a number ("" or the problem).
std::string parse_int(const std::string& s, int64_t& out);
std::string parse_uint(const std::string& s, uint64_t& out);
std::string parse_double(const std::string& s, double& out);
// A number as options and messages show it: integers without a point ("16777216", "2"),
// others as the shortest stream form ("0.25").
std::string format_number(double v);

// Builders. Each takes where the value lives as `ref`, a generic lambda returning a
// reference to it from a (const or mutable) config; the overloads below make that lambda
// from a member of a section (`&C::optim, &OptimSection::lr`) or a member of a flat config.
template <class C, class T, class Ref>
Field<C> number_at(std::string name, Ref ref, Range r, std::string help) {
  static_assert(std::is_arithmetic<T>::value, "number() needs an arithmetic member");
  Field<C> f;
  f.name = std::move(name);
  f.help = std::move(help);
  f.values = r.describe();
  f.parse = [ref](C& c, const std::string& s) -> std::string {
    if constexpr (std::is_floating_point<T>::value) {
      double v = 0;
      std::string e = parse_double(s, v);
      if (e.empty()) ref(c) = T(v);
      return e;
    } else if constexpr (std::is_unsigned<T>::value) {
      uint64_t v = 0;
      std::string e = parse_uint(s, v);
      if (e.empty()) ref(c) = T(v);
      return e;
    } else {
      int64_t v = 0;
      std::string e = parse_int(s, v);
      if (e.empty() && (v < int64_t(std::numeric_limits<T>::min()) ||
                        v > int64_t(std::numeric_limits<T>::max())))
        return "'" + s + "' is out of range";
      if (e.empty()) ref(c) = T(v);
      return e;
    }
  };
  f.get = [ref](const C& c) { return nlohmann::json(ref(c)); };
  f.set = [ref](C& c, const nlohmann::json& j) {
    if (!j.is_number()) throw std::invalid_argument("must be a number");
    if (!std::is_floating_point<T>::value && !j.is_number_integer())
      throw std::invalid_argument("must be an integer");
    ref(c) = j.get<T>();
  };
  f.check = [ref, r](const C& c) {
    if (std::is_unsigned<T>::value && r.lo <= 0 && r.hi >= std::numeric_limits<double>::max())
      return std::string();  // every value of an unsigned member is fine (seeds)
    return r.check(double(ref(c)));
  };
  return f;
}

// An enum, spelled by `names` on the command line and in config.json.
template <class C, class E, class Ref>
Field<C> choice_at(std::string name, Ref ref, std::vector<std::pair<std::string, E>> names,
                   std::string help) {
  Field<C> f;
  f.name = std::move(name);
  f.help = std::move(help);
  for (const auto& [n, e] : names) f.values += (f.values.empty() ? "" : "|") + n;
  const std::string values = f.values;
  f.parse = [ref, names, values](C& c, const std::string& s) -> std::string {
    for (const auto& [n, e] : names)
      if (n == s) {
        ref(c) = e;
        return "";
      }
    return "'" + s + "' is not one of " + values;
  };
  f.get = [ref, names](const C& c) {
    for (const auto& [n, e] : names)
      if (e == ref(c)) return nlohmann::json(n);
    return nlohmann::json(nullptr);
  };
  f.set = [parse = f.parse](C& c, const nlohmann::json& j) {
    if (!j.is_string()) throw std::invalid_argument("must be a string");
    const std::string e = parse(c, j.get<std::string>());
    if (!e.empty()) throw std::invalid_argument(e);
  };
  f.check = [](const C&) { return std::string(); };  // parse admits only valid values
  return f;
}

// Text (paths, lists); `rule` may add a check on it.
template <class C, class Ref>
Field<C> text_at(std::string name, Ref ref, std::string help,
                 std::function<std::string(const std::string&)> rule = {}) {
  Field<C> f;
  f.name = std::move(name);
  f.help = std::move(help);
  f.values = "text";
  f.parse = [ref](C& c, const std::string& s) {
    ref(c) = s;
    return std::string();
  };
  f.get = [ref](const C& c) { return nlohmann::json(ref(c)); };
  f.set = [ref](C& c, const nlohmann::json& j) {
    if (!j.is_string()) throw std::invalid_argument("must be a string");
    ref(c) = j.get<std::string>();
  };
  f.check = [ref, rule](const C& c) { return rule ? rule(ref(c)) : std::string(); };
  return f;
}

// A list of numbers, "2,4,8" on the command line and in TOML, an array in config.json;
// each value in range r, at most 64 of them (empty: none).
template <class C, class Ref>
Field<C> numbers_at(std::string name, Ref ref, Range r, std::string help) {
  Field<C> f;
  f.name = std::move(name);
  f.help = std::move(help);
  f.values = "comma list, each " + r.describe();
  f.list = true;
  f.parse = [ref](C& c, const std::string& text) -> std::string {
    std::string s;  // "2, 4" and the JSON form "[2.0,4.0]" too
    for (char ch : text)
      if (ch != ' ') s += ch;
    if (s.size() >= 2 && s.front() == '[' && s.back() == ']') s = s.substr(1, s.size() - 2);
    std::vector<double> out;
    size_t start = 0;
    while (start <= s.size() && !s.empty()) {
      const size_t comma = std::min(s.find(',', start), s.size());
      double v = 0;
      const std::string e = parse_double(s.substr(start, comma - start), v);
      if (!e.empty()) return e;
      out.push_back(v);
      start = comma + 1;
    }
    ref(c) = std::move(out);
    return std::string();
  };
  f.get = [ref](const C& c) { return nlohmann::json(ref(c)); };
  f.set = [ref](C& c, const nlohmann::json& j) {
    if (!j.is_array()) throw std::invalid_argument("must be an array of numbers");
    std::vector<double> out;
    for (const auto& v : j) {
      if (!v.is_number()) throw std::invalid_argument("must be an array of numbers");
      out.push_back(v.get<double>());
    }
    ref(c) = std::move(out);
  };
  f.check = [ref, r](const C& c) {
    if (ref(c).size() > 64) return std::string("at most 64 values");
    for (double v : ref(c)) {
      const std::string e = r.check(v);
      if (!e.empty()) return e;
    }
    return std::string();
  };
  return f;
}

// A switch: --name sets it, --no-name clears it; TOML/JSON take true/false.
template <class C, class Ref>
Field<C> flag_at(std::string name, Ref ref, std::string help) {
  Field<C> f;
  f.name = std::move(name);
  f.help = std::move(help);
  f.values = "switch";
  f.flag = true;
  f.parse = [ref](C& c, const std::string& s) -> std::string {
    if (s == "true" || s == "1" || s == "on" || s == "yes")
      ref(c) = true;
    else if (s == "false" || s == "0" || s == "off" || s == "no")
      ref(c) = false;
    else
      return "'" + s + "' is not true or false";
    return "";
  };
  f.get = [ref](const C& c) { return nlohmann::json(bool(ref(c))); };
  f.set = [ref](C& c, const nlohmann::json& j) {
    if (!j.is_boolean()) throw std::invalid_argument("must be true or false");
    ref(c) = j.get<bool>();
  };
  f.check = [](const C&) { return std::string(); };
  return f;
}

// `ref` lambdas for a member of a section and for a member of a flat config.
#define DMS_MEMBER_REF(sec, mem)   \
  [ sec, mem ](auto& c) -> auto& { \
    return (c.*sec).*mem;          \
  }
#define DMS_FLAT_REF(mem)   \
  [mem](auto& c) -> auto& { \
    return c.*mem;          \
  }

template <class C, class S, class T>
Field<C> number(std::string name, S C::*sec, T S::*mem, Range r, std::string help) {
  return number_at<C, T>(std::move(name), DMS_MEMBER_REF(sec, mem), r, std::move(help));
}
template <class C, class T>
Field<C> number(std::string name, T C::*mem, Range r, std::string help) {
  return number_at<C, T>(std::move(name), DMS_FLAT_REF(mem), r, std::move(help));
}
template <class C, class S, class E>
Field<C> choice(std::string name, S C::*sec, E S::*mem,
                std::vector<std::pair<std::string, E>> names, std::string help) {
  return choice_at<C, E>(std::move(name), DMS_MEMBER_REF(sec, mem), std::move(names),
                         std::move(help));
}
template <class C, class E>
Field<C> choice(std::string name, E C::*mem, std::vector<std::pair<std::string, E>> names,
                std::string help) {
  return choice_at<C, E>(std::move(name), DMS_FLAT_REF(mem), std::move(names), std::move(help));
}
template <class C, class S>
Field<C> text(std::string name, S C::*sec, std::string S::*mem, std::string help,
              std::function<std::string(const std::string&)> rule = {}) {
  return text_at<C>(std::move(name), DMS_MEMBER_REF(sec, mem), std::move(help), std::move(rule));
}
template <class C>
Field<C> text(std::string name, std::string C::*mem, std::string help,
              std::function<std::string(const std::string&)> rule = {}) {
  return text_at<C>(std::move(name), DMS_FLAT_REF(mem), std::move(help), std::move(rule));
}
template <class C, class S>
Field<C> numbers(std::string name, S C::*sec, std::vector<double> S::*mem, Range r,
                 std::string help) {
  return numbers_at<C>(std::move(name), DMS_MEMBER_REF(sec, mem), r, std::move(help));
}
template <class C, class S>
Field<C> flag(std::string name, S C::*sec, bool S::*mem, std::string help) {
  return flag_at<C>(std::move(name), DMS_MEMBER_REF(sec, mem), std::move(help));
}
template <class C>
Field<C> flag(std::string name, bool C::*mem, std::string help) {
  return flag_at<C>(std::move(name), DMS_FLAT_REF(mem), std::move(help));
}
#undef DMS_MEMBER_REF
#undef DMS_FLAT_REF

// A field of a config nested in C (C::*member), as a field of C: the same name, help,
// values, parsing and checks, so that another command can offer an option exactly as the
// command that owns it does (`dms plan` takes `dms retrofit`'s --dtype).
template <class C, class Inner>
Field<C> nested(const Field<Inner>& f, Inner C::*member) {
  Field<C> g;
  g.name = f.name;
  g.help = f.help;
  g.group = f.group;
  g.values = f.values;
  g.flag = f.flag;
  g.list = f.list;
  g.required = f.required;
  g.saved = f.saved;
  g.on_resume = f.on_resume;
  g.parse = [p = f.parse, member](C& c, const std::string& s) { return p(c.*member, s); };
  g.get = [p = f.get, member](const C& c) { return p(c.*member); };
  g.set = [p = f.set, member](C& c, const nlohmann::json& j) { p(c.*member, j); };
  g.check = [p = f.check, member](const C& c) { return p(c.*member); };
  return g;
}

// The row named `name` of a table; std::out_of_range when there is none (a programming
// error: the names are literals).
template <class C>
const Field<C>& field_named(const std::vector<Field<C>>& table, const std::string& name) {
  for (const Field<C>& f : table)
    if (f.name == name) return f;
  throw std::out_of_range("no option --" + name);
}

// True for the exception CLI11 2.1 lets out of parsing when a true/false option (a flag
// below) gets a value that is not a boolean ("--resume=maybe", `resume = "maybe"` in TOML):
// it converts with std::stoll unchecked. A usage error (exit 2), not a failure.
bool is_flag_value_error(const std::exception& e);
inline constexpr const char* kFlagValueMessage =
    "a true/false option has a value that is not one of true, false, on, off, yes, no or a number";

// Registers every field of `table` as an option of `cmd` writing into `cfg`; problems
// met while parsing are appended to `errors` (reported together by the command).
template <class C>
void add_fields(CLI::App* cmd, const std::vector<Field<C>>& table, C& cfg,
                std::vector<std::string>& errors) {
  const C defaults{};
  for (const Field<C>& f : table) {
    const std::string opt = "--" + f.name;
    auto store = [&cfg, &errors, &f, opt](const std::string& s) {
      const std::string e = f.parse(cfg, s);
      if (!e.empty()) errors.push_back(opt + ": " + e);
    };
    CLI::Option* o = nullptr;
    if (f.flag) {
      o = cmd->add_flag_function(
          opt + ",!--no-" + f.name, [store](int64_t n) { store(n > 0 ? "true" : "false"); },
          f.help);
    } else {
      // Our own callback, not add_option_function: CLI11 2.1 reads the first result
      // unchecked, and a TOML key set to an empty array has none (a SIGSEGV).
      o = cmd->add_option(
          opt,
          [store, &errors, opt, list = f.list](const CLI::results_t& res) {
            if (res.empty() && !list) {
              errors.push_back(opt + ": no value (an empty list?)");
            } else if (list) {  // every occurrence and array element, in order
              std::string all;
              for (const auto& v : res) all += (all.empty() ? "" : ",") + v;
              store(all);
            } else {
              store(res.back());
            }
            return true;
          },
          f.help, false);
      o->type_size(1);
      o->expected(1);
      o->type_name(f.values == "text" || f.values.size() >= 40 ? "TEXT" : f.values);
      o->multi_option_policy(f.list ? CLI::MultiOptionPolicy::TakeAll
                                    : CLI::MultiOptionPolicy::TakeLast);  // a later override wins
    }
    nlohmann::json d = f.get(defaults);
    if (!f.required && !f.flag && !(d.is_string() && d.get<std::string>().empty()))
      o->default_str(d.is_string() ? d.get<std::string>() : d.dump());
    if (f.required) o->required();
    if (!f.group.empty()) o->group(f.group);
  }
}

// Every problem of cfg's values: "--name: must be ..." per bad field.
template <class C>
std::vector<std::string> field_problems(const std::vector<Field<C>>& table, const C& cfg) {
  std::vector<std::string> out;
  for (const Field<C>& f : table) {
    const std::string e = f.check(cfg);
    if (!e.empty()) out.push_back("--" + f.name + ": " + e);
  }
  return out;
}

// config.json: one key per saved field.
template <class C>
nlohmann::json fields_to_json(const std::vector<Field<C>>& table, const C& cfg) {
  nlohmann::json j = nlohmann::json::object();
  for (const Field<C>& f : table)
    if (f.saved) j[f.key()] = f.get(cfg);
  return j;
}

// The inverse; keys we do not know and values of the wrong type are problems (a file
// from another version or a damaged one must not be half understood).
template <class C>
C fields_from_json(const std::vector<Field<C>>& table, const nlohmann::json& j,
                   std::vector<std::string>& problems) {
  C c;
  if (!j.is_object()) {
    problems.push_back("not a JSON object");
    return c;
  }
  for (const auto& [k, v] : j.items()) {
    const Field<C>* f = nullptr;
    for (const Field<C>& x : table)
      if (x.key() == k && x.saved) f = &x;
    if (!f) {
      problems.push_back("unknown key '" + k + "'");
      continue;
    }
    try {
      f->set(c, v);
    } catch (const std::exception& e) {
      problems.push_back("'" + k + "' " + e.what());
    }
  }
  return c;
}

// Joins problems into one line: "a; b; c".
std::string join_problems(const std::vector<std::string>& problems);

[[noreturn]] void throw_input_error(const std::string& message);  // InputError

// A command's config as parsed, with the problems met while parsing; check() raises them
// together with the table's range checks as one InputError (exit 2).
template <class C>
struct Parsed {
  C cfg;
  std::vector<std::string> errors;
  void check(const std::vector<Field<C>>& table) const {
    std::vector<std::string> all = errors;
    for (auto& p : field_problems(table, cfg)) all.push_back(p);
    if (!all.empty()) throw_input_error(join_problems(all));
  }
};

}  // namespace dms
