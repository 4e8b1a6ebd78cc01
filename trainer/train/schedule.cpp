#include "trainer/train/schedule.h"

#include <algorithm>
#include <cmath>

namespace dms {

double CrSchedule::cr(int64_t step) const {
  const double f = final_step > 0 ? std::min(1.0, double(step) / double(final_step)) : 1.0;
  return cr0 + (cr1 - cr0) * f;
}

int64_t CrSchedule::first_step_reaching(double c) const {
  if (c > std::max(cr0, cr1)) return -1;
  if (cr(0) >= c || cr1 <= cr0) return 0;
  // The closed form, then corrected by a step either way against rounding.
  int64_t s = int64_t(std::ceil((c - cr0) / (cr1 - cr0) * double(final_step)));
  s = std::clamp<int64_t>(s, 0, std::max<int64_t>(final_step, 0));
  while (s > 0 && cr(s - 1) >= c) --s;
  while (cr(s) < c) ++s;
  return s;
}

double LrSchedule::at(int64_t step) const {
  const double warm = warmup > 0 && step < warmup ? double(step + 1) / double(warmup) : 1.0;
  switch (kind) {
    case LrScheduleKind::constant:
      return lr;
    case LrScheduleKind::warmup:
      return lr * warm;
    case LrScheduleKind::cosine:
      break;
  }
  if (step < warmup) return lr * warm;
  const double span = double(std::max<int64_t>(1, total_steps - warmup));
  const double p = std::min(1.0, double(step - warmup) / span);
  return lr * (min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + std::cos(M_PI * p)));
}

}  // namespace dms
