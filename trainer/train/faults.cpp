#include "trainer/train/faults.h"

#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <sstream>
#include <stdexcept>
#include <string>

#include "common/error.h"

namespace dms {

namespace {

// The whole of s as a step number.
bool parse_step(const std::string& s, int64_t& out) {
  char* end = nullptr;
  errno = 0;
  const long long v = std::strtoll(s.c_str(), &end, 10);
  if (s.empty() || *end != '\0' || errno == ERANGE) return false;
  out = v;
  return true;
}

}  // namespace

FaultInjection FaultInjection::from_env() {
  FaultInjection f;
  if (const char* s = std::getenv("DMS_TEST_FAIL_CHECKPOINT_AT")) {
    require(parse_step(s, f.fail_checkpoint_at), "DMS_TEST_FAIL_CHECKPOINT_AT",
            "'" + std::string(s) + "' is not a step number");
  }
  if (const char* s = std::getenv("DMS_TEST_INJECT")) {
    std::stringstream in(s);
    std::string item;
    while (std::getline(in, item, ',')) {
      const auto at = item.find('@');
      int64_t step = 0;
      require(at != std::string::npos && parse_step(item.substr(at + 1), step), "DMS_TEST_INJECT",
              "'" + item + "' is not kind@step");
      const std::string kind = item.substr(0, at);
      require(kind == "nan" || kind == "spike", "DMS_TEST_INJECT",
              "unknown fault '" + kind + "' (nan, spike)");
      (kind == "nan" ? f.nan_at : f.spike_at).insert(step);
    }
  }
  return f;
}

void FaultInjection::before_checkpoint(int64_t step_done) const {
  if (step_done == fail_checkpoint_at)
    throw std::runtime_error("simulated write failure (DMS_TEST_FAIL_CHECKPOINT_AT)");
}

double FaultInjection::monitored_kd(int64_t step_done, double kd) const {
  if (nan_at.count(step_done)) return std::nan("");
  if (spike_at.count(step_done)) return kd * 1000 + 1;  // above the alert's absolute floor too
  return kd;
}

}  // namespace dms
