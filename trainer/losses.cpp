#include "trainer/losses.h"

#include <torch/csrc/autograd/custom_function.h>

#include "model/error.h"

namespace dms {

KdDirection parse_kd_direction(const std::string& s) {
  if (s == "student_teacher" || s == "forward") return KdDirection::student_teacher;
  if (s == "teacher_student" || s == "reverse") return KdDirection::teacher_student;
  throw InputError("--kd-direction: '" + s + "' (student_teacher or teacher_student)");
}

namespace {

// fp32 for half types and fp32 itself; fp64 stays fp64 (tests).
at::ScalarType kd_type(const at::Tensor& x) {
  return at::promote_types(x.scalar_type(), at::kFloat);
}

// Row-wise log-sum-exp over vocab chunks. x [N, V] -> [N] (kd_type)
at::Tensor chunked_lse(const at::Tensor& x, int64_t chunk) {
  const int64_t V = x.size(1);
  at::Tensor lse;
  for (int64_t c0 = 0; c0 < V; c0 += chunk) {
    at::Tensor part = at::logsumexp(x.narrow(1, c0, std::min(chunk, V - c0)).to(kd_type(x)), 1);
    lse = lse.defined() ? at::logaddexp(lse, part) : part;
  }
  return lse;
}

struct KdFunction : public torch::autograd::Function<KdFunction> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& s,
                            const at::Tensor& t, const at::Tensor& w, int64_t dir, int64_t chunk) {
    at::Tensor lse_s = chunked_lse(s, chunk), lse_t = chunked_lse(t, chunk);  // [N]
    const int64_t V = s.size(1);
    at::Tensor kl = at::zeros_like(lse_s);
    for (int64_t c0 = 0; c0 < V; c0 += chunk) {
      const int64_t n = std::min(chunk, V - c0);
      at::Tensor ls = s.narrow(1, c0, n).to(kd_type(s)) - lse_s.unsqueeze(1);
      at::Tensor lt = t.narrow(1, c0, n).to(kd_type(s)) - lse_t.unsqueeze(1);
      kl += dir == 0 ? (ls.exp() * (ls - lt)).sum(1) : (lt.exp() * (lt - ls)).sum(1);
    }
    ctx->save_for_backward({s, t, w, lse_s, lse_t, kl});
    ctx->saved_data["dir"] = dir;
    ctx->saved_data["chunk"] = chunk;
    return (kl * w.to(kl.scalar_type())).sum();
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_out) {
    auto saved = ctx->get_saved_variables();
    const at::Tensor &s = saved[0], &t = saved[1], &w = saved[2];
    const at::Tensor &lse_s = saved[3], &lse_t = saved[4], &kl = saved[5];
    const int64_t dir = ctx->saved_data["dir"].toInt(), chunk = ctx->saved_data["chunk"].toInt();
    const int64_t V = s.size(1);
    at::Tensor scale = (w.to(kl.scalar_type()) * grad_out[0].to(kl.scalar_type())).unsqueeze(1);
    at::Tensor grad = at::empty_like(s);
    for (int64_t c0 = 0; c0 < V; c0 += chunk) {
      const int64_t n = std::min(chunk, V - c0);
      at::Tensor ls = s.narrow(1, c0, n).to(kl.scalar_type()) - lse_s.unsqueeze(1);
      at::Tensor lt = t.narrow(1, c0, n).to(kl.scalar_type()) - lse_t.unsqueeze(1);
      at::Tensor ps = ls.exp();
      // d/ds_k KL(ps||pt) = ps_k (ls_k - lt_k - KL); d/ds_k KL(pt||ps) = ps_k - pt_k
      at::Tensor g = dir == 0 ? ps * (ls - lt - kl.unsqueeze(1)) : ps - lt.exp();
      grad.narrow(1, c0, n).copy_(g * scale);
    }
    return {grad, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

}  // namespace

at::Tensor kd_loss_sum(const at::Tensor& student, const at::Tensor& teacher,
                       const at::Tensor& weight, KdDirection dir, int64_t chunk) {
  return KdFunction::apply(student, teacher.detach(), weight.detach(),
                           int64_t(dir == KdDirection::student_teacher ? 0 : 1),
                           std::max<int64_t>(1, chunk));
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

std::pair<double, int64_t> next_token_nll(const at::Tensor& logits, const at::Tensor& tokens) {
  at::NoGradGuard no_grad;
  const int64_t T = logits.size(1), V = logits.size(2);
  if (T < 2) return {0.0, 0};
  at::Tensor lp = at::log_softmax(logits.narrow(1, 0, T - 1).to(at::kFloat), -1).reshape({-1, V});
  at::Tensor tgt = tokens.narrow(1, 1, T - 1).reshape({-1, 1});
  return {-lp.gather(1, tgt).sum().item<double>(), lp.size(0)};
}

}  // namespace dms
