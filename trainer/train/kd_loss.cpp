#include "trainer/train/kd_loss.h"

#include <ATen/core/grad_mode.h>
#include <torch/csrc/autograd/custom_function.h>

#include <stdexcept>

namespace dms {

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

at::Tensor none() {
  return at::empty({0});
}
at::Tensor or_none(const at::Tensor& t) {
  return t.defined() ? t : none();
}

// One side as the autograd function sees it: 0-element tensors stand for "absent".
struct Side {
  at::Tensor logits, hidden, head;
  bool fused() const { return logits.numel() == 0; }
  int64_t rows() const { return fused() ? hidden.size(0) : logits.size(0); }
  int64_t vocab() const { return fused() ? head.size(0) : logits.size(1); }
  // Logits of rows [r0, r0 + n) in type kt -> [n, V]
  at::Tensor chunk(int64_t r0, int64_t n, at::ScalarType kt) const {
    if (!fused()) return logits.narrow(0, r0, n).to(kt);
    return at::matmul(hidden.narrow(0, r0, n), head.t()).to(kt);
  }
};

// fp32 for half types and fp32 itself; fp64 stays fp64 (tests).
at::ScalarType kd_type(const Side& s) {
  const at::Tensor& x = s.fused() ? s.hidden : s.logits;
  return at::promote_types(x.scalar_type(), at::kFloat);
}

struct KdFunction : public torch::autograd::Function<KdFunction> {
  // Student (s_*) and teacher (t_*) sides, w [N], targets [N] (0 elements: none); the
  // per-row figures are written into the four out_* tensors [N] (0 elements: not wanted
  // for the target logit). -> scalar
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& s_logits,
                            const at::Tensor& s_hidden, const at::Tensor& s_head,
                            const at::Tensor& t_logits, const at::Tensor& t_hidden,
                            const at::Tensor& t_head, const at::Tensor& w,
                            const at::Tensor& targets, int64_t dir, int64_t chunk, at::Tensor kl_st,
                            at::Tensor kl_ts, at::Tensor lse_s, at::Tensor target_logit) {
    const Side s{s_logits, s_hidden, s_head}, t{t_logits, t_hidden, t_head};
    const at::ScalarType kt = kd_type(s);
    const int64_t N = s.rows(), R = rows_per_chunk(chunk, s.vocab(), s.fused());
    at::Tensor lse_t = at::empty({N}, kl_st.options());
    for (int64_t r0 = 0; r0 < N; r0 += R) {
      const int64_t n = std::min(R, N - r0);
      at::Tensor xs = s.chunk(r0, n, kt), xt = t.chunk(r0, n, kt);  // [n, V]
      at::Tensor ls = at::log_softmax(xs, 1), lt = at::log_softmax(xt, 1);
      // log_softmax = x - lse, so lse = x[:, 0] - log_softmax[:, 0].
      lse_s.narrow(0, r0, n).copy_(xs.select(1, 0) - ls.select(1, 0));
      lse_t.narrow(0, r0, n).copy_(xt.select(1, 0) - lt.select(1, 0));
      if (targets.numel()) {
        at::Tensor tg = targets.narrow(0, r0, n);  // [n]
        target_logit.narrow(0, r0, n).copy_(
            xs.gather(1, tg.clamp_min(0).unsqueeze(1)).squeeze(1).masked_fill(tg.lt(0), 0));
      }
      at::Tensor diff = ls.sub_(lt);  // log p_s - log p_t, in ls's buffer
      kl_ts.narrow(0, r0, n).copy_((lt.exp_() * diff).sum(1).neg_());
      kl_st.narrow(0, r0, n).copy_(
          ((xs - lse_s.narrow(0, r0, n).unsqueeze(1)).exp_() * diff).sum(1));
    }
    ctx->save_for_backward({s_logits, s_hidden, s_head, t_logits, t_hidden, t_head, w,
                            dir == 0 ? kl_st : kl_ts, lse_s, lse_t});
    ctx->saved_data["dir"] = dir;
    ctx->saved_data["chunk"] = chunk;
    return ((dir == 0 ? kl_st : kl_ts) * w.to(kt)).sum();
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_out) {
    auto sv = ctx->get_saved_variables();
    const Side s{sv[0], sv[1], sv[2]}, t{sv[3], sv[4], sv[5]};
    const at::Tensor &w = sv[6], &kl = sv[7], &lse_s = sv[8], &lse_t = sv[9];
    const int64_t dir = ctx->saved_data["dir"].toInt(), chunk = ctx->saved_data["chunk"].toInt();
    const at::ScalarType kt = kl.scalar_type();
    const int64_t N = s.rows(), R = rows_per_chunk(chunk, s.vocab(), s.fused());
    const bool want_logits = !s.fused() && ctx->needs_input_grad(0);
    const bool want_hidden = s.fused() && ctx->needs_input_grad(1);
    const bool want_head = s.fused() && ctx->needs_input_grad(2);
    at::Tensor scale = (w.to(kt) * grad_out[0].to(kt)).unsqueeze(1);  // [N, 1]
    at::Tensor g_logits = want_logits ? at::empty_like(s.logits) : at::Tensor();
    at::Tensor g_hidden = want_hidden ? at::empty_like(s.hidden) : at::Tensor();
    at::Tensor g_head =
        want_head ? at::zeros(s.head.sizes(), s.head.options().dtype(kt)) : at::Tensor();
    for (int64_t r0 = 0; r0 < N; r0 += R) {
      const int64_t n = std::min(R, N - r0);
      // One product each instead of a second log-softmax: log p = x - lse.  [n, V]
      // (Out of place: a chunk of given logits may be a view of the caller's tensor.)
      at::Tensor ls = s.chunk(r0, n, kt) - lse_s.narrow(0, r0, n).unsqueeze(1);
      at::Tensor lt = t.chunk(r0, n, kt) - lse_t.narrow(0, r0, n).unsqueeze(1);
      at::Tensor ps = ls.exp();
      // d/dx_k KL(ps||pt) = ps_k (ls_k - lt_k - KL); d/dx_k KL(pt||ps) = ps_k - pt_k
      at::Tensor g = dir == 0 ? ps.mul_(ls.sub_(lt).sub_(kl.narrow(0, r0, n).unsqueeze(1)))
                              : ps.sub_(lt.exp_());
      g.mul_(scale.narrow(0, r0, n));
      if (want_logits) g_logits.narrow(0, r0, n).copy_(g);
      if (want_hidden)
        g_hidden.narrow(0, r0, n).copy_(at::matmul(g.to(s.head.scalar_type()), s.head));
      if (want_head) g_head.addmm_(g.t(), s.hidden.narrow(0, r0, n).to(kt));
    }
    if (want_head) g_head = g_head.to(s.head.scalar_type());
    variable_list out(14);
    out[0] = g_logits;
    out[1] = g_hidden;
    out[2] = g_head;
    return out;
  }
};

}  // namespace

// `chunk` when given; else about 2^18 logits (1 MiB in fp32) for given
// logits, so that a chunk's softmax stays in cache, and 2^22 for the fused form, whose
// chunks are matrix products that want many rows per pass over the head.
int64_t rows_per_chunk(int64_t chunk, int64_t V, bool fused) {
  if (chunk > 0) return chunk;
  const int64_t budget = int64_t(1) << (fused ? 22 : 18);
  return std::max<int64_t>(1, budget / std::max<int64_t>(1, V));
}

LogitSource LogitSource::of_logits(at::Tensor logits) {
  LogitSource s;
  s.logits = std::move(logits);
  return s;
}

LogitSource LogitSource::of_hidden(at::Tensor hidden, at::Tensor head) {
  LogitSource s;
  s.hidden = std::move(hidden);
  s.head = std::move(head);
  return s;
}

int64_t LogitSource::rows() const {
  return logits.defined() ? logits.size(0) : hidden.size(0);
}

int64_t LogitSource::vocab() const {
  return logits.defined() ? logits.size(1) : head.size(0);
}

at::Tensor kd_loss_sum(const LogitSource& student, const LogitSource& teacher,
                       const at::Tensor& weight, KdDirection dir, int64_t chunk,
                       const at::Tensor& targets, KdRows* rows) {
  const int64_t N = student.rows();
  if (teacher.rows() != N || teacher.vocab() != student.vocab() || weight.numel() != N ||
      (targets.defined() && targets.numel() != N))
    throw std::invalid_argument("kd_loss_sum: student, teacher, weight and targets disagree");
  const at::Tensor& x = student.logits.defined() ? student.logits : student.hidden;
  const auto o = x.options().dtype(at::promote_types(x.scalar_type(), at::kFloat));
  KdRows r;
  r.kl_st = at::empty({N}, o);
  r.kl_ts = at::empty({N}, o);
  r.lse = at::empty({N}, o);
  r.target_logit = at::empty({targets.defined() ? N : 0}, o);
  // The teacher is never differentiated; the student's tensors keep their autograd.
  auto t = [](const at::Tensor& v) { return or_none(v).detach(); };
  at::Tensor loss =
      KdFunction::apply(or_none(student.logits), or_none(student.hidden), or_none(student.head),
                        t(teacher.logits), t(teacher.hidden), t(teacher.head), weight.detach(),
                        targets.defined() ? targets.to(x.device(), at::kLong) : none(),
                        int64_t(dir == KdDirection::student_teacher ? 0 : 1),
                        std::max<int64_t>(0, chunk), r.kl_st, r.kl_ts, r.lse, r.target_logit);
  if (rows) *rows = r;
  return loss;
}

at::Tensor next_token_targets(const at::Tensor& tokens) {
  const int64_t T = tokens.size(1);
  at::Tensor out = at::full(tokens.sizes(), -1, tokens.options().dtype(at::kLong));
  if (T > 1) out.narrow(1, 0, T - 1).copy_(tokens.narrow(1, 1, T - 1));
  return out.reshape({-1});
}

std::pair<double, int64_t> target_nll(const KdRows& rows, const at::Tensor& targets) {
  at::NoGradGuard no_grad;
  at::Tensor has = targets.to(rows.lse.device()).ge(0);
  at::Tensor nll = (rows.lse - rows.target_logit).masked_fill(has.logical_not(), 0);
  return {nll.sum().item<double>(), has.sum().item<int64_t>()};
}

}  // namespace dms
