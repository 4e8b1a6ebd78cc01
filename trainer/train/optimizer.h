// AdamW (PyTorch's update rule, bit for bit) and global-norm clipping over the
// trained tensors. Hand-written over ATen so that its state is plain tensors we can
// checkpoint in HDF5 and restore exactly with any LibTorch version (the
// torch::optim state map changed its key type between 1.x and 2.x).
#pragma once
#include <ATen/ATen.h>

#include <string>
#include <vector>

namespace dms {

struct AdamWOptions {
  double beta1 = 0.9, beta2 = 0.95, eps = 1e-8, weight_decay = 0.0;
};

struct AdamW {
  AdamWOptions opts;
  std::vector<at::Tensor> params;  // trained tensors (requires_grad)
  std::vector<at::Tensor> m, v;    // first/second moments, same shapes
  int64_t steps = 0;               // updates applied (bias correction)

  AdamW(std::vector<at::Tensor> p, const AdamWOptions& o);
  void step(double lr);
  void zero_grad();
};

// Scales gradients so their global L2 norm is at most max_norm (no-op when <= 0);
// returns the norm before clipping.
double clip_grad_norm(const std::vector<at::Tensor>& params, double max_norm);

}  // namespace dms
