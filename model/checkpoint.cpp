#include "model/checkpoint.h"

#include <ATen/core/grad_mode.h>
#include <torch/csrc/autograd/autograd.h>
#include <torch/csrc/autograd/custom_function.h>

namespace dms {

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// The function travels to backward inside the autograd context (which stores IValues).
struct Recompute : torch::CustomClassHolder {
  explicit Recompute(CheckpointFn f) : fn(std::move(f)) {}
  CheckpointFn fn;
};

struct CheckpointFunction : public torch::autograd::Function<CheckpointFunction> {
  // x, params (flattened into the inputs), the function -> fn(x)
  static variable_list forward(AutogradContext* ctx, const at::Tensor& x, at::TensorList params,
                               c10::intrusive_ptr<Recompute> recompute) {
    variable_list keep{x};
    keep.insert(keep.end(), params.begin(), params.end());
    ctx->save_for_backward(keep);
    variable_list out = recompute->fn(x);  // grad mode is off here: nothing is recorded
    ctx->saved_data["fn"] = at::IValue::make_capsule(std::move(recompute));
    return out;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const variable_list saved = ctx->get_saved_variables();  // x, params...
    auto recompute = c10::static_intrusive_pointer_cast<Recompute>(
        ctx->saved_data["fn"].toCapsule());
    at::AutoGradMode on(true);
    const bool want_x = ctx->needs_input_grad(0);
    at::Tensor x = saved[0].detach().requires_grad_(want_x);
    const variable_list outs = recompute->fn(x);
    variable_list outputs, grad_outputs, inputs;
    for (size_t i = 0; i < outs.size(); ++i)
      if (grads[i].defined() && outs[i].requires_grad()) {
        outputs.push_back(outs[i]);
        grad_outputs.push_back(grads[i]);
      }
    std::vector<size_t> slot;  // position of each differentiated input in the result
    if (want_x) {
      inputs.push_back(x);
      slot.push_back(0);
    }
    for (size_t i = 1; i < saved.size(); ++i)
      if (ctx->needs_input_grad(i) && saved[i].requires_grad()) {
        inputs.push_back(saved[i]);
        slot.push_back(i);
      }
    variable_list result(saved.size() + 1);  // + the function argument
    if (outputs.empty() || inputs.empty()) return result;
    const variable_list g = torch::autograd::grad(outputs, inputs, grad_outputs,
                                                  /*retain_graph=*/false, /*create_graph=*/false,
                                                  /*allow_unused=*/true);
    for (size_t k = 0; k < slot.size(); ++k) result[slot[k]] = g[k];
    return result;
  }
};

}  // namespace

std::vector<at::Tensor> checkpointed(const CheckpointFn& fn, const at::Tensor& x,
                                     const std::vector<at::Tensor>& params) {
  bool any = x.requires_grad();
  for (const auto& p : params) any = any || p.requires_grad();
  if (!at::GradMode::is_enabled() || !any) return fn(x);
  return CheckpointFunction::apply(x, at::TensorList(params), c10::make_intrusive<Recompute>(fn));
}

}  // namespace dms
