// Schedules: the compression-ratio annealing and the learning rate.
#pragma once
#include <cstdint>
#include <string>

namespace dms {

// CR(step) = cr0 + (cr1 - cr0) * min(step / final_step, 1); target eviction 1 - 1/CR.
struct CrSchedule {
  double cr0 = 1.0, cr1 = 8.0;
  int64_t final_step = 1;
  double cr(int64_t step) const;
  double target(int64_t step) const { return 1.0 - 1.0 / cr(step); }
  // The first step whose CR is at least c; -1 when the schedule never reaches it.
  int64_t first_step_reaching(double c) const;
};

enum class LrScheduleKind { constant, warmup, cosine };

// constant | warmup (linear from 0 over warmup steps, then constant) |
// cosine (warmup, then cosine from lr down to lr * min_ratio at total_steps).
struct LrSchedule {
  LrScheduleKind kind = LrScheduleKind::constant;
  double lr = 3e-5;
  int64_t warmup = 0, total_steps = 1;
  double min_ratio = 0.1;
  double at(int64_t step) const;
};

}  // namespace dms
