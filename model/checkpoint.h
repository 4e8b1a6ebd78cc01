// Activation checkpointing: run a function of one tensor without keeping its
// intermediate activations, and run it again in backward to differentiate it. The
// forward keeps only the input; everything the function reads besides it (weights, RoPE
// tables, the DMS noise of the step) must be fixed for the duration of the step, so that
// the recomputation is bit for bit the forward (no random numbers drawn inside).
// Shapes: whatever `fn` takes and returns; the decoder uses x [B, T, D] ->
// {x_out [B, T, D], z [B, K, T], decisions [B, K, T]}.
#pragma once
#include <ATen/ATen.h>

#include <functional>
#include <vector>

namespace dms {

using CheckpointFn = std::function<std::vector<at::Tensor>(const at::Tensor&)>;

// fn(x) with autograd reaching x and `params` (the tensors fn reads that may require
// grad, e.g. a layer's weights) through a recomputation in backward. Every output of fn
// must be a defined floating tensor. With grad mode off, or nothing requiring grad, this
// is fn(x).
std::vector<at::Tensor> checkpointed(const CheckpointFn& fn, const at::Tensor& x,
                                     const std::vector<at::Tensor>& params);

}  // namespace dms
