#include "trainer/config/options.h"

#include <stdexcept>

#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <sstream>

#include "common/error.h"

namespace dms {

std::string format_number(double v) {
  if (v == std::floor(v) && std::abs(v) < 1e15) return std::to_string(int64_t(v));  // 16777216
  std::ostringstream o;
  o << v;
  return o.str();
}

namespace {

bool unbounded(double v) {
  return std::abs(v) >= std::numeric_limits<double>::max();
}

}  // namespace

std::string Range::describe() const {
  const bool has_lo = !unbounded(lo), has_hi = !unbounded(hi);
  if (has_lo && has_hi && !lo_open && !hi_open)
    return format_number(lo) + " .. " + format_number(hi);
  std::string s;
  if (has_lo) s += std::string(lo_open ? "> " : ">= ") + format_number(lo);
  if (has_hi)
    s += std::string(s.empty() ? "" : ", ") + (hi_open ? "< " : "<= ") + format_number(hi);
  return s.empty() ? "number" : s;
}

std::string Range::check(double v) const {
  if (!std::isfinite(v)) return "must be a finite number";
  const bool ok = (lo_open ? v > lo : v >= lo) && (hi_open ? v < hi : v <= hi);
  return ok ? "" : "must be " + describe() + " (got " + format_number(v) + ")";
}

std::string snake_case(const std::string& option_name) {
  std::string k = option_name;
  for (char& ch : k)
    if (ch == '-') ch = '_';
  return k;
}

std::string parse_int(const std::string& s, int64_t& out) {
  errno = 0;
  char* end = nullptr;
  const long long v = std::strtoll(s.c_str(), &end, 10);
  if (s.empty() || *end != '\0') return "'" + s + "' is not an integer";
  if (errno == ERANGE) return "'" + s + "' is out of range";
  out = v;
  return "";
}

std::string parse_uint(const std::string& s, uint64_t& out) {
  errno = 0;
  char* end = nullptr;
  if (s.empty() || s[0] == '-') return "'" + s + "' is not a non-negative integer";
  const unsigned long long v = std::strtoull(s.c_str(), &end, 10);
  if (*end != '\0') return "'" + s + "' is not a non-negative integer";
  if (errno == ERANGE) return "'" + s + "' is out of range";
  out = v;
  return "";
}

std::string parse_double(const std::string& s, double& out) {
  char* end = nullptr;
  const double v = std::strtod(s.c_str(), &end);
  if (s.empty() || *end != '\0') return "'" + s + "' is not a number";
  out = v;  // NaN / inf parse; the range check rejects them with a clear message
  return "";
}

bool is_flag_value_error(const std::exception& e) {
  const std::string what = e.what();
  return (dynamic_cast<const std::invalid_argument*>(&e) ||
          dynamic_cast<const std::out_of_range*>(&e)) &&
         (what == "stoll" || what == "stol" || what == "stoi");
}

void throw_input_error(const std::string& message) {
  throw InputError(message);
}

std::string join_problems(const std::vector<std::string>& problems) {
  std::string s;
  for (const auto& p : problems) s += (s.empty() ? "" : "; ") + p;
  return s;
}

}  // namespace dms
