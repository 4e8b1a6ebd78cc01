#include "trainer/monitor/sinks.h"

#include <filesystem>
#include <fstream>
#include <iostream>
#include <sstream>

#include "common/atomic_file.h"
#include "common/mapped_file.h"

namespace fs = std::filesystem;

namespace dms {

namespace {

std::string fmt(double v, int prec) {
  std::ostringstream o;
  o.precision(prec);
  o << v;
  return o.str();
}

nlohmann::json matrix_json(const at::Tensor& t) {
  nlohmann::json rows = nlohmann::json::array();
  at::Tensor d = t.to(at::kDouble).contiguous();
  for (int64_t l = 0; l < d.size(0); ++l)
    rows.push_back(std::vector<double>(d.data_ptr<double>() + l * d.size(1),
                                       d.data_ptr<double>() + (l + 1) * d.size(1)));
  return rows;
}

// Keeps metrics.jsonl consistent with a resumed checkpoint: records after its step are
// dropped (they would be written again), so a resumed run's file equals an uninterrupted one's.
void truncate_metrics(const fs::path& path, int64_t step) {
  if (!fs::exists(path)) return;
  require_regular_file(path.string());
  std::ifstream in(path);
  std::string line, kept;
  while (std::getline(in, line)) {
    if (line.empty()) continue;
    try {
      auto j = nlohmann::json::parse(line);
      if (j.value("step", int64_t(0)) > step) continue;
    } catch (const nlohmann::json::exception&) {
      continue;  // a torn last line of a killed run
    }
    kept += line + "\n";
  }
  write_file_atomic(path.string(), kept);
}

}  // namespace

MetricsSinks::MetricsSinks(const std::string& run_dir, int64_t max_steps, bool tensorboard,
                           int64_t resume_step) {
  const fs::path metrics = fs::path(run_dir) / "metrics.jsonl";
  if (resume_step > 0) truncate_metrics(metrics, resume_step);
  log_ = std::make_unique<MetricsLog>(metrics.string(), /*append=*/resume_step > 0);
  if (tensorboard) events_ = std::make_unique<EventWriter>(run_dir);
  bar_ = std::make_unique<Progress>("retrofit", max_steps);
}

void MetricsSinks::train(const TrainRecord& r, bool record) {
  if (record)
    log_->write({{"step", r.step},
                 {"tokens", r.tokens},
                 {"kd_loss", r.kd},
                 {"dms_loss", r.dms},
                 {"lm_loss", r.lm},
                 {"target_cr", r.target_cr},
                 {"decision_cr", r.decision_cr},
                 {"effective_kv_cr", r.effective_kv_cr},
                 {"end_of_sequence_kv_cr", r.end_kv_cr},
                 {"lr", r.lr},
                 {"grad_norm", r.grad_norm},
                 {"tokens_per_s", r.tokens_per_s},
                 {"allreduce_s", r.allreduce_s},
                 {"elapsed_s", r.elapsed_s}});
  if (events_)
    events_->scalars(r.step, {{"train/kd_loss", float(r.kd)},
                              {"train/dms_loss", float(r.dms)},
                              {"train/lm_loss", float(r.lm)},
                              {"compression/target_cr", float(r.target_cr)},
                              {"compression/decision_cr", float(r.decision_cr)},
                              {"compression/effective_kv_cr", float(r.effective_kv_cr)},
                              {"compression/end_of_sequence_kv_cr", float(r.end_kv_cr)},
                              {"train/lr", float(r.lr)},
                              {"train/grad_norm", float(r.grad_norm)},
                              {"perf/tokens_per_s", float(r.tokens_per_s)}});
  bar_->update(r.step, "kd " + fmt(r.kd, 3) + "  cr " + fmt(r.decision_cr, 3) + "/" +
                           fmt(r.target_cr, 3) + " (eff " + fmt(r.effective_kv_cr, 3) + ")  " +
                           fmt(r.tokens_per_s, 4) + " tok/s");
}

void MetricsSinks::validation(const ValidationRecord& v) {
  log_->write({{"step", v.step},
               {"val_kd_loss", v.kd},
               {"val_kl_student_teacher", v.kl_student_teacher},
               {"val_kl_teacher_student", v.kl_teacher_student},
               {"val_lm_loss", v.lm},
               {"val_decision_cr", v.decision_cr},
               {"val_effective_kv_cr", v.effective_kv_cr},
               {"val_end_of_sequence_kv_cr", v.end_kv_cr},
               {"val_eviction_rate_lh", matrix_json(v.eviction_lh)},
               {"val_cache_size_lh", matrix_json(v.cache_lh)}});
  if (!events_) return;
  std::vector<std::pair<std::string, float>> s = {
      {"val/kd_loss", float(v.kd)},
      {"val/lm_loss", float(v.lm)},
      {"val/decision_cr", float(v.decision_cr)},
      {"val/effective_kv_cr", float(v.effective_kv_cr)},
      {"val/end_of_sequence_kv_cr", float(v.end_kv_cr)}};
  at::Tensor per_layer = v.eviction_lh.mean(1);
  for (int64_t l = 0; l < per_layer.size(0); ++l)
    s.emplace_back("val_layer_decision_cr/layer_" + std::to_string(l),
                   float(1.0 / std::max(1e-9, 1.0 - per_layer[l].item<double>())));
  events_->scalars(v.step, s);
}

void MetricsSinks::alert(int64_t step, const std::string& kind, const std::string& message) {
  std::cerr << "\nALERT " << kind << ": " << message << "\n";
  log_->write({{"step", step}, {"alert", kind}, {"message", message}});
}

void MetricsSinks::note(int64_t step, const std::string& kind, const std::string& message) {
  std::cerr << "\n" << message << "\n";
  log_->write({{"step", step}, {"note", kind}, {"message", message}});
}

void MetricsSinks::finish(const std::string& status) {
  bar_->finish(status);
}

}  // namespace dms
