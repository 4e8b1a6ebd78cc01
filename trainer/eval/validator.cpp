#include "trainer/eval/validator.h"

#include <ATen/core/grad_mode.h>
#include <algorithm>

#include "trainer/eval/forced.h"

namespace dms {

ValidationRecord validate_heldout(const Model& student, const Model& teacher, const TokenData& val,
                                  const ValidationOptions& o) {
  at::NoGradGuard ng;
  ForcedSums s;
  const ForcedOptions fo{AttentionMode::eval, o.kd_chunk, o.attention, o.blocks};
  const int64_t n = std::min(val.n_rows, o.rows);
  for (int64_t r0 = 0; r0 < n; r0 += o.micro_batch) {
    std::vector<int64_t> idx;
    for (int64_t i = r0; i < std::min(n, r0 + o.micro_batch); ++i) idx.push_back(i);
    s += forced_pass(student, teacher, val.rows(idx).to(student.embed.device()), fo);
  }
  ValidationRecord v;
  const CompressionStats& cs = s.compression;
  if (cs.visible_lh.defined()) {
    v.eviction_lh = cs.eviction_rate_lh().to(at::kDouble);
    v.cache_lh = cs.visible_lh / double(std::max<int64_t>(1, s.positions));
  }
  v.kd = s.kd_mean(o.kd_direction);
  v.kl_student_teacher = s.kl_model_ref_mean();
  v.kl_teacher_student = s.kl_ref_model_mean();
  v.lm = s.nll_mean();
  v.decision_cr = 1.0 / std::max(1e-9, 1.0 - cs.eviction_rate());
  v.effective_kv_cr = cs.effective_kv_cr();
  v.end_kv_cr = cs.end_kv_cr();
  return v;
}

}  // namespace dms
