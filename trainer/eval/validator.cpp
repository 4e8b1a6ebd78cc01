#include "trainer/eval/validator.h"

#include <algorithm>

namespace dms {

namespace {

// Sums over the rows seen; ratios at the end.
struct Sums {
  double kd = 0, lm_nll = 0;
  int64_t positions = 0;
  CompressionStats compression;
};

void add_batch(Sums& s, const Model& student, const Model& teacher, const at::Tensor& x,
               const ValidationOptions& o) {
  const int64_t V = student.config.vocab_size, b = x.size(0), T = x.size(1);
  ForwardOptions to;
  to.mode = AttentionMode::teacher;
  to.attention = o.attention;
  to.blocks = o.blocks;
  at::Tensor tl = forward_full(teacher, x, {}, to).logits;
  ForwardOptions so = to;
  so.mode = AttentionMode::eval;
  ForwardResult r = forward_full(student, x, {}, so);
  at::Tensor lse;  // [b * T] student log-sum-exp, for the NLL
  s.kd += kd_loss_sum(r.logits.reshape({-1, V}), tl.reshape({-1, V}),
                      at::ones({b * T}, r.logits.options().dtype(at::kFloat)), o.kd_direction,
                      o.kd_chunk, &lse)
              .item<double>();
  s.positions += b * T;
  s.lm_nll += next_token_nll(r.logits, lse, x).first;
  s.compression += compression_from_decisions(r.decisions, {}, student.dms.window,
                                              student.config.sliding_window);
}

}  // namespace

ValidationRecord validate_heldout(const Model& student, const Model& teacher, const TokenData& val,
                                  const ValidationOptions& o) {
  at::NoGradGuard ng;
  Sums s;
  const int64_t n = std::min(val.n_rows, o.rows);
  for (int64_t r0 = 0; r0 < n; r0 += o.micro_batch) {
    std::vector<int64_t> idx;
    for (int64_t i = r0; i < std::min(n, r0 + o.micro_batch); ++i) idx.push_back(i);
    add_batch(s, student, teacher, val.rows(idx).to(student.embed.device()), o);
  }
  ValidationRecord v;
  const CompressionStats& cs = s.compression;
  if (cs.visible_lh.defined()) {
    v.eviction_lh = cs.eviction_rate_lh().to(at::kDouble);
    v.cache_lh = cs.visible_lh / double(std::max<int64_t>(1, s.positions));
  }
  v.kd = s.kd / double(std::max<int64_t>(1, s.positions));
  v.lm = s.lm_nll / double(std::max<int64_t>(1, s.positions - n));
  v.decision_cr = 1.0 / std::max(1e-9, 1.0 - cs.eviction_rate());
  v.effective_kv_cr = cs.effective_kv_cr();
  return v;
}

}  // namespace dms
