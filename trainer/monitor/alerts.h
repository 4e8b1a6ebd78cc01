// Alerts during a retrofit: things a person watching would want to be told at once.
// - nan:            a loss or the gradient norm is NaN/inf (that step's update is skipped);
// - kd_spike:       KD loss above kd_spike_factor x the median of the last median_window steps
//                   and above kd_spike_floor (while the target CR anneals up from 1 a healthy
//                   KL grows from ~1e-4 a hundredfold: relative growth alone is no alarm);
// - grad_explosion: gradient norm above grad_factor x its running median;
// - cr_lag:         validation decision CR below target x (1 - cr_margin) for cr_lag_evals
//                   validations in a row.
// Each alert is one console line and one metrics.jsonl record; the kinds listed in
// stop_on end the run cleanly (the last checkpoint stays as it was).
#pragma once
#include <deque>
#include <string>
#include <vector>

namespace dms {

struct AlertConfig {
  double kd_spike_factor = 10.0;
  double grad_factor = 50.0;
  int64_t median_window = 50;
  int64_t min_history = 10;  // steps before spike rules apply
  double cr_margin = 0.25;
  int64_t cr_lag_evals = 3;
  std::string stop_on = "nan";  // comma list of kinds, "all" or "none"
  double kd_spike_floor = 0.1;  // nats per token
};

// nan | kd_spike | grad_explosion | cr_lag
bool is_alert_kind(const std::string& kind);

struct Alert {
  std::string kind, message;
};

class AlertMonitor {
 public:
  explicit AlertMonitor(const AlertConfig& c);
  std::vector<Alert> on_step(int64_t step, double kd_loss, double dms_loss, double grad_norm);
  std::vector<Alert> on_validation(int64_t step, double decision_cr, double target_cr);
  bool stops(const Alert& a) const;

 private:
  AlertConfig cfg_;
  std::deque<double> kd_, grad_;
  int64_t lagging_ = 0;
};

}  // namespace dms
