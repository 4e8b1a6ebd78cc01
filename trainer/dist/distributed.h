// Data-parallel plumbing on PyTorch's own engine (c10d): rendezvous through a TCPStore,
// ProcessGroupGloo on CPU (ProcessGroupNCCL on CUDA builds), bucketed gradient all-reduce,
// the reduce-scatter / all-gather pair of a sharded optimizer, and naming the rank that
// was lost when a collective fails.
// Shapes: W = ranks, S = values per rank's chunk. On NCCL, CPU tensors travel through the
// rank's device (NCCL only moves device memory); every call blocks until it completed.
#pragma once
#include <ATen/ATen.h>

#include <chrono>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

namespace dms {

// Where this process sits, from the launcher's environment: torchrun (RANK, WORLD_SIZE,
// LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT), Slurm (SLURM_PROCID, SLURM_NTASKS,
// SLURM_LOCALID, SLURM_NTASKS_PER_NODE, first host of SLURM_JOB_NODELIST / MASTER_ADDR), or a
// single process. local_world: processes on this node (the world when the launcher does not
// say).
struct DistEnv {
  int rank = 0, world = 1, local_rank = 0, local_world = 1;
  std::string addr = "127.0.0.1";
  int port = 29500;
  std::string launcher = "single";  // torchrun | slurm | single
};
DistEnv detect_dist_env();

// A collective failed: a peer died, hung past the timeout, or disagreed.
struct DistError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

class Dist {
 public:
  // Joins the group described by env (world 1: no group, every call is local).
  // backend: "gloo" | "nccl" | "auto" (nccl when device is CUDA on a CUDA build, else gloo).
  // device: where training runs. NCCL reduces tensors on it (cuda:LOCAL_RANK), Gloo on
  // the CPU; tensors given elsewhere are copied there and back, so callers may pass CPU
  // scalars (flags, checksums) whatever the backend.
  static std::unique_ptr<Dist> join(const DistEnv& env, const std::string& backend,
                                    std::chrono::milliseconds timeout, const at::Device& device);
  ~Dist();
  int rank() const { return env_.rank; }
  int world() const { return env_.world; }
  const std::string& backend() const { return backend_; }

  // Sums tensors across ranks in place, packed into one buffer (one collective for all
  // gradients, not one per tensor).
  void all_reduce_sum(const std::vector<at::Tensor>& tensors);
  // flat [W*S] summed across ranks; returns this rank's chunk [S] of the sums (rank r:
  // values [r*S, (r+1)*S)). NCCL: its native reduce-scatter. Gloo has none (LibTorch 1.13
  // and 2.x throw "ProcessGroupGloo does not support reduce_scatter"), so `flat` is
  // all-reduced in place and the chunk is a view into it. `flat` is scratch afterwards.
  // World 1: `flat` itself.
  at::Tensor reduce_scatter_sum(at::Tensor& flat);
  // Every rank's mine [S] into out [W*S], in rank order (world 1: a copy).
  void all_gather(const at::Tensor& mine, at::Tensor& out);
  void broadcast(at::Tensor& t, int root);
  void barrier();
  // Records this rank's progress in the store, so a failure can name who stopped.
  void heartbeat(int64_t step);

 private:
  Dist() = default;
  [[noreturn]] void fail(const std::string& what, const std::exception& e);
  // t itself, or a copy on the device the backend communicates from (NCCL: this rank's
  // GPU); `back` copies a result into t when they differ.
  at::Tensor to_comm_device(const at::Tensor& t) const;
  static void back(const at::Tensor& comm, const at::Tensor& t);
  struct Impl;
  std::unique_ptr<Impl> impl_;
  DistEnv env_;
  std::string backend_ = "none";
};

// A free TCP port on the loopback interface (for the local launcher).
int free_local_port();

}  // namespace dms
