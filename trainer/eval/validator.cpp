#include "trainer/eval/validator.h"

#include <algorithm>

namespace dms {

namespace {

// Sums over the rows seen; ratios at the end.
struct Sums {
  double kd = 0, lm_nll = 0, closed = 0, decisions = 0, visible = 0, full = 0;
  int64_t positions = 0, rows = 0;
  at::Tensor eviction_lh, cache_lh;  // [L, K] sums
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
  s.rows += b;
  s.lm_nll += next_token_nll(r.logits, lse, x).first;
  CompressionStats cs = compression_from_decisions(r.decisions, {}, student.dms.window);
  at::Tensor lh = cs.eviction_rate_lh.to(at::kDouble) * double(b);
  at::Tensor held = cs.visible_keys.to(at::kDouble).sum({1, 3});  // [L, K]
  s.eviction_lh = s.eviction_lh.defined() ? s.eviction_lh + lh : lh;
  s.cache_lh = s.cache_lh.defined() ? s.cache_lh + held : held;
  const double ndec = double(b * (T - 1));
  s.closed += cs.eviction_rate * ndec;
  s.decisions += ndec;
  s.visible += cs.visible_keys.sum().item<double>();
  s.full += double(student.config.n_layers * student.config.n_kv_heads) * double(b) *
            double(T * (T + 1) / 2);
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
  if (s.eviction_lh.defined()) {
    v.eviction_lh = s.eviction_lh / double(n);
    v.cache_lh = s.cache_lh / double(std::max<int64_t>(1, s.positions));
  }
  v.kd = s.kd / double(std::max<int64_t>(1, s.positions));
  v.lm = s.lm_nll / double(std::max<int64_t>(1, s.positions - n));
  const double eviction = s.decisions > 0 ? s.closed / s.decisions : 0;
  v.decision_cr = 1.0 / std::max(1e-9, 1.0 - eviction);
  v.effective_kv_cr = s.visible > 0 ? s.full / s.visible : 1;
  return v;
}

}  // namespace dms
