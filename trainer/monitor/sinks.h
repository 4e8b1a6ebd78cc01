// Where a run's figures go, on rank 0: the console (progress line with ETA, alerts),
// metrics.jsonl (one JSON object per record) and TensorBoard event files. The loop hands
// over named records; this is the one place that knows their keys.
#pragma once
#include <ATen/ATen.h>

#include <memory>
#include <string>

#include "trainer/monitor/metrics.h"
#include "trainer/monitor/tensorboard.h"

namespace dms {

struct TrainRecord {
  int64_t step = 0, tokens = 0;  // steps done, tokens seen in all
  double kd = 0, dms = 0, lm = 0;
  double target_cr = 1, decision_cr = 1, effective_kv_cr = 1;
  double end_kv_cr = 1;  // tokens seen / tokens held after each row's last token
  double lr = 0, grad_norm = 0;
  double tokens_per_s = 0, allreduce_s = 0, elapsed_s = 0;
};

struct ValidationRecord {
  int64_t step = 0;
  double kd = 0;  // the KL that trains (--kd-direction), as val_kd_loss
  double kl_student_teacher = 0, kl_teacher_student = 0;  // both directions, named
  double lm = 0, decision_cr = 1, effective_kv_cr = 1;
  double end_kv_cr = 1;    // tokens seen / tokens held after the last token (official figure)
  at::Tensor eviction_lh;  // [L, K] eviction rate per layer and head
  at::Tensor cache_lh;     // [L, K] mean keys held per query
};

class MetricsSinks {
 public:
  // resume_step > 0: metrics.jsonl keeps its records up to that step (later ones, written
  // before an interruption, are dropped: they will be written again) and is appended to.
  MetricsSinks(const std::string& run_dir, int64_t max_steps, bool tensorboard,
               int64_t resume_step);
  // Every step: the progress line and TensorBoard; metrics.jsonl when `record`.
  void train(const TrainRecord& r, bool record);
  void validation(const ValidationRecord& v);
  // One console line and one metrics.jsonl record.
  void alert(int64_t step, const std::string& kind, const std::string& message);
  // A change the run made to itself (e.g. its thread count): a console line and a record
  // {"step", "note": kind, "message"}.
  void note(int64_t step, const std::string& kind, const std::string& message);
  void finish(const std::string& status = "");

 private:
  std::unique_ptr<MetricsLog> log_;
  std::unique_ptr<EventWriter> events_;
  std::unique_ptr<Progress> bar_;
};

}  // namespace dms
