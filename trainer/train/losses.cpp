#include "trainer/train/losses.h"

#include <ATen/core/grad_mode.h>
#include <torch/csrc/autograd/custom_function.h>

namespace dms {

namespace {

// fp32 for half types and fp32 itself; fp64 stays fp64 (tests).
at::ScalarType kd_type(const at::Tensor& x) {
  return at::promote_types(x.scalar_type(), at::kFloat);
}

// Rows per chunk: `chunk` when given, else about 2^18 logits (1 MiB in fp32) so that a
// chunk's log-softmax, products and sums stay in cache.
int64_t rows_per_chunk(int64_t chunk, int64_t V) {
  return chunk > 0 ? chunk : std::max<int64_t>(1, (int64_t(1) << 18) / std::max<int64_t>(1, V));
}

// Log-probabilities of rows [r0, r0 + n) of x [N, V] in the KD type -> [n, V]
at::Tensor log_probs(const at::Tensor& x, int64_t r0, int64_t n) {
  return at::log_softmax(x.narrow(0, r0, n).to(kd_type(x)), 1);
}

struct KdFunction : public torch::autograd::Function<KdFunction> {
  // s, t [N, V], w [N] -> scalar; lse_out [N] (or 0 elements) receives the student's
  // row log-sum-exp.
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& s,
                            const at::Tensor& t, const at::Tensor& w, int64_t dir, int64_t chunk,
                            at::Tensor lse_out) {
    const int64_t N = s.size(0), R = rows_per_chunk(chunk, s.size(1));
    at::Tensor kl = at::empty({N}, s.options().dtype(kd_type(s)));      // [N]
    at::Tensor lse_s = at::empty_like(kl), lse_t = at::empty_like(kl);  // [N]
    for (int64_t r0 = 0; r0 < N; r0 += R) {
      const int64_t n = std::min(R, N - r0);
      at::Tensor ls = log_probs(s, r0, n), lt = log_probs(t, r0, n);  // [n, V]
      at::Tensor row = dir == 0 ? (ls.exp() * (ls - lt)).sum(1) : (lt.exp() * (lt - ls)).sum(1);
      kl.narrow(0, r0, n).copy_(row);
      // log_softmax = x - lse, so lse = x[:, 0] - log_softmax[:, 0].
      lse_s.narrow(0, r0, n).copy_(s.narrow(0, r0, n).select(1, 0).to(kl.scalar_type()) -
                                   ls.select(1, 0));
      lse_t.narrow(0, r0, n).copy_(t.narrow(0, r0, n).select(1, 0).to(kl.scalar_type()) -
                                   lt.select(1, 0));
    }
    if (lse_out.numel() == N) lse_out.copy_(lse_s);
    ctx->save_for_backward({s, t, w, kl, lse_s, lse_t});
    ctx->saved_data["dir"] = dir;
    ctx->saved_data["chunk"] = chunk;
    return (kl * w.to(kl.scalar_type())).sum();
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_out) {
    auto saved = ctx->get_saved_variables();
    const at::Tensor &s = saved[0], &t = saved[1], &w = saved[2], &kl = saved[3];
    const at::Tensor &lse_s = saved[4], &lse_t = saved[5];
    const int64_t dir = ctx->saved_data["dir"].toInt(), chunk = ctx->saved_data["chunk"].toInt();
    const int64_t N = s.size(0), R = rows_per_chunk(chunk, s.size(1));
    at::Tensor scale = (w.to(kl.scalar_type()) * grad_out[0].to(kl.scalar_type())).unsqueeze(1);
    at::Tensor grad = at::empty_like(s);
    for (int64_t r0 = 0; r0 < N; r0 += R) {
      const int64_t n = std::min(R, N - r0);
      // One pass each instead of a second log-softmax: log p = x - lse.  [n, V]
      at::Tensor ls = s.narrow(0, r0, n).to(kl.scalar_type()) - lse_s.narrow(0, r0, n).unsqueeze(1);
      at::Tensor lt = t.narrow(0, r0, n).to(kl.scalar_type()) - lse_t.narrow(0, r0, n).unsqueeze(1);
      at::Tensor ps = ls.exp();
      // d/ds_k KL(ps||pt) = ps_k (ls_k - lt_k - KL); d/ds_k KL(pt||ps) = ps_k - pt_k
      at::Tensor g = dir == 0 ? ps.mul_(ls.sub_(lt).sub_(kl.narrow(0, r0, n).unsqueeze(1)))
                              : ps.sub_(lt.exp_());
      grad.narrow(0, r0, n).copy_(g.mul_(scale.narrow(0, r0, n)));
    }
    return {grad, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

}  // namespace

at::Tensor kd_loss_sum(const at::Tensor& student, const at::Tensor& teacher,
                       const at::Tensor& weight, KdDirection dir, int64_t chunk,
                       at::Tensor* student_lse) {
  at::Tensor lse = at::empty({student_lse ? student.size(0) : 0},
                             student.options().dtype(kd_type(student)).requires_grad(false));
  at::Tensor loss = KdFunction::apply(student, teacher.detach(), weight.detach(),
                                      int64_t(dir == KdDirection::student_teacher ? 0 : 1),
                                      std::max<int64_t>(0, chunk), lse);
  if (student_lse) *student_lse = lse;
  return loss;
}

at::Tensor fraction_closed(const at::Tensor& decisions, const at::Tensor& valid) {
  const int64_t L = decisions.size(0), B = decisions.size(1), K = decisions.size(2);
  const int64_t T = decisions.size(3);
  at::Tensor mask = at::zeros({B, T}, decisions.options().requires_grad(false));
  if (T > 1) {
    if (valid.defined())
      mask.narrow(1, 1, T - 1).copy_(valid.narrow(1, 1, T - 1).to(mask.device()));
    else
      mask.narrow(1, 1, T - 1).fill_(1.0);
  }
  at::Tensor m = mask.view({1, B, 1, T});
  at::Tensor count = mask.sum(1) * double(L * K);                     // [B]
  return (decisions * m).sum({0, 2, 3}) / at::clamp_min(count, 1.0);  // [B]
}

at::Tensor dms_loss_sum(const at::Tensor& frac_closed, double target) {
  return at::relu(target - frac_closed).sum();
}

std::pair<double, int64_t> next_token_nll(const at::Tensor& logits, const at::Tensor& lse,
                                          const at::Tensor& tokens) {
  at::NoGradGuard no_grad;
  const int64_t B = logits.size(0), T = logits.size(1);
  if (T < 2) return {0.0, 0};
  at::Tensor tgt = tokens.narrow(1, 1, T - 1).unsqueeze(2);                  // [B, T-1, 1]
  at::Tensor picked = logits.narrow(1, 0, T - 1).gather(2, tgt).squeeze(2);  // [B, T-1]
  at::Tensor l = lse.view({B, T}).narrow(1, 0, T - 1);                       // [B, T-1]
  return {(l - picked.to(l.scalar_type())).sum().item<double>(), B * (T - 1)};
}

}  // namespace dms
