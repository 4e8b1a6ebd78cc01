#include "trainer/train/step_metrics.h"

#include <algorithm>

#include "trainer/dist/distributed.h"

namespace dms {

void StepMetrics::all_reduce(Dist& dist, const at::Device& device) {
  double* fields[] = {&kd,      &kd_positions, &dms,       &lm_nll,   &lm_count, &tokens,
                      &evicted, &visible_keys, &full_keys, &seen_end, &held_end, &stop_requested};
  std::vector<double> values;
  for (double* f : fields) values.push_back(*f);
  at::Tensor t = at::tensor(values, at::TensorOptions(at::kDouble)).to(device);
  dist.all_reduce_sum({t});
  t = t.cpu().contiguous();
  for (size_t i = 0; i < values.size(); ++i) *fields[i] = t.data_ptr<double>()[i];
}

double StepMetrics::decision_cr(int64_t rows) const {
  return 1.0 / std::max(1e-9, 1.0 - eviction_rate(rows));
}

}  // namespace dms
