#include "trainer/monitor/alerts.h"

#include <algorithm>
#include <cmath>
#include <sstream>

#include "common/error.h"

namespace dms {

namespace {

double median(std::deque<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0.0 : v[v.size() / 2];
}

std::string num(double v) {
  std::ostringstream o;
  o.precision(4);
  o << v;
  return o.str();
}

}  // namespace

bool is_alert_kind(const std::string& kind) {
  return kind == "nan" || kind == "kd_spike" || kind == "grad_explosion" || kind == "cr_lag";
}

AlertMonitor::AlertMonitor(const AlertConfig& c) : cfg_(c) {
  std::stringstream in(c.stop_on);
  std::string kind;
  while (std::getline(in, kind, ','))
    require(is_alert_kind(kind) || kind == "all" || kind == "none", "--stop-on-alert",
            "unknown alert kind '" + kind + "'");
}

bool AlertMonitor::stops(const Alert& a) const {
  if (cfg_.stop_on == "all") return true;
  std::stringstream in(cfg_.stop_on);
  std::string kind;
  while (std::getline(in, kind, ','))
    if (kind == a.kind) return true;
  return false;
}

std::vector<Alert> AlertMonitor::on_step(int64_t step, double kd, double dms, double grad) {
  std::vector<Alert> out;
  if (!std::isfinite(kd) || !std::isfinite(dms) || !std::isfinite(grad)) {
    out.push_back({"nan", "non-finite value at step " + std::to_string(step) + " (kd " + num(kd) +
                              ", dms " + num(dms) + ", grad norm " + num(grad) +
                              "); the update was skipped"});
    return out;  // keep NaNs out of the running medians
  }
  if (int64_t(kd_.size()) >= cfg_.min_history) {
    const double mk = median(kd_), mg = median(grad_);
    if (mk > 0 && kd > cfg_.kd_spike_factor * mk && kd > cfg_.kd_spike_floor)
      out.push_back({"kd_spike", "KD loss " + num(kd) + " at step " + std::to_string(step) +
                                     " is " + num(kd / mk) + "x its running median " + num(mk)});
    if (mg > 0 && grad > cfg_.grad_factor * mg)
      out.push_back({"grad_explosion", "gradient norm " + num(grad) + " at step " +
                                           std::to_string(step) + " is " + num(grad / mg) +
                                           "x its running median " + num(mg)});
  }
  kd_.push_back(kd);
  grad_.push_back(grad);
  if (int64_t(kd_.size()) > cfg_.median_window) kd_.pop_front();
  if (int64_t(grad_.size()) > cfg_.median_window) grad_.pop_front();
  return out;
}

std::vector<Alert> AlertMonitor::on_validation(int64_t step, double cr, double target) {
  lagging_ = cr < target * (1.0 - cfg_.cr_margin) ? lagging_ + 1 : 0;
  if (lagging_ < cfg_.cr_lag_evals) return {};
  return {{"cr_lag", "validation decision CR " + num(cr) + " at step " + std::to_string(step) +
                         " is behind the target " + num(target) + " for " +
                         std::to_string(lagging_) + " validations"}};
}

}  // namespace dms
