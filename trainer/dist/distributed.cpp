#include "trainer/dist/distributed.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <condition_variable>
#include <cstdlib>
#include <iostream>
#include <mutex>
#include <thread>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#ifdef DMS_WITH_CUDA
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif

#include <torch/version.h>

#include "common/error.h"

namespace dms {

// LibTorch 2.x split process groups into ProcessGroup (a dispatcher) and Backend (Gloo,
// NCCL, ...); the collectives we call exist on both with the same signatures.
#if TORCH_VERSION_MAJOR >= 2
using GroupPtr = c10::intrusive_ptr<c10d::Backend>;
#else
using GroupPtr = c10::intrusive_ptr<c10d::ProcessGroup>;
#endif

namespace {

int env_int(const char* name, int fallback) {
  const char* v = std::getenv(name);
  if (!v || !*v) return fallback;
  try {
    return std::stoi(v);
  } catch (const std::exception&) {
    throw InputError(std::string("environment: ") + name + "='" + v + "' is not an integer");
  }
}

std::string env_str(const char* name, const std::string& fallback) {
  const char* v = std::getenv(name);
  return v && *v ? v : fallback;
}

// First host of a Slurm node list such as "node[03-05,07],gpu1" -> "node03".
std::string first_slurm_host(const std::string& list) {
  const size_t comma = list.find(',');
  const size_t bracket = list.find('[');
  if (bracket == std::string::npos || (comma != std::string::npos && comma < bracket))
    return list.substr(0, comma);
  std::string prefix = list.substr(0, bracket);
  std::string inside = list.substr(bracket + 1);
  size_t end = inside.find_first_of("-,]");
  return prefix + inside.substr(0, end);
}

}  // namespace

DistEnv detect_dist_env() {
  DistEnv e;
  if (std::getenv("RANK") && std::getenv("WORLD_SIZE")) {
    e.launcher = "torchrun";
    e.rank = env_int("RANK", 0);
    e.world = env_int("WORLD_SIZE", 1);
    e.local_rank = env_int("LOCAL_RANK", 0);
    e.local_world = env_int("LOCAL_WORLD_SIZE", e.world);
    e.addr = env_str("MASTER_ADDR", "127.0.0.1");
    e.port = env_int("MASTER_PORT", 29500);
  } else if (std::getenv("SLURM_PROCID") && std::getenv("SLURM_NTASKS")) {
    e.launcher = "slurm";
    e.rank = env_int("SLURM_PROCID", 0);
    e.world = env_int("SLURM_NTASKS", 1);
    e.local_rank = env_int("SLURM_LOCALID", 0);
    e.local_world = env_int("SLURM_NTASKS_PER_NODE", e.world);
    e.addr = env_str("MASTER_ADDR", first_slurm_host(env_str("SLURM_JOB_NODELIST", "127.0.0.1")));
    e.port = env_int("MASTER_PORT", 29500);
  }
  require(e.world >= 1 && e.rank >= 0 && e.rank < e.world, "environment",
          "rank " + std::to_string(e.rank) + " is outside a world of " + std::to_string(e.world));
  return e;
}

struct Dist::Impl {
  c10::intrusive_ptr<c10d::Store> store;
  GroupPtr pg;
  std::chrono::milliseconds timeout{600000};
  at::Device comm_device{at::kCPU};  // where the backend's collectives take their tensors
};

Dist::~Dist() = default;

namespace {

c10::intrusive_ptr<c10d::Store> open_store(const DistEnv& env, std::chrono::milliseconds timeout) {
  c10d::TCPStoreOptions so;
  so.port = uint16_t(env.port);
  so.isServer = env.rank == 0;
  so.numWorkers = size_t(env.world);
  so.waitWorkers = true;
  so.timeout = timeout;
  try {
    return c10::make_intrusive<c10d::TCPStore>(env.addr, so);
  } catch (const std::exception& e) {
    throw DistError("rank " + std::to_string(env.rank) + ": cannot reach the rendezvous store at " +
                    env.addr + ":" + std::to_string(env.port) + ": " + e.what());
  }
}

// This host's address on the route to `host` (a UDP connect sends nothing; the kernel picks
// the source address it would use): Gloo must advertise an address the peers can reach, and
// the host name may resolve to loopback (Debian's 127.0.1.1). "" when it cannot be found.
std::string address_towards(const std::string& host, int port) {
  addrinfo hints{}, *res = nullptr;
  hints.ai_family = AF_INET;
  hints.ai_socktype = SOCK_DGRAM;
  if (getaddrinfo(host.c_str(), std::to_string(port).c_str(), &hints, &res) != 0 || !res) return "";
  std::string out;
  const int fd = ::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (fd >= 0 && ::connect(fd, res->ai_addr, res->ai_addrlen) == 0) {
    sockaddr_in local{};
    socklen_t len = sizeof local;
    char buf[INET_ADDRSTRLEN] = {0};
    if (::getsockname(fd, reinterpret_cast<sockaddr*>(&local), &len) == 0 &&
        inet_ntop(AF_INET, &local.sin_addr, buf, sizeof buf))
      out = buf;
  }
  if (fd >= 0) ::close(fd);
  freeaddrinfo(res);
  return out;
}

// Gloo's devices: the interfaces GLOO_SOCKET_IFNAME names (comma-separated, as PyTorch reads
// it), else loopback for a single-host rendezvous, else the address on the route to the
// rendezvous host.
std::vector<std::shared_ptr<gloo::transport::Device>> gloo_devices(const DistEnv& env) {
  std::vector<std::shared_ptr<gloo::transport::Device>> devices;
  const std::string ifnames = env_str("GLOO_SOCKET_IFNAME", "");
  for (size_t b = 0; b < ifnames.size();) {
    size_t e = ifnames.find(',', b);
    if (e == std::string::npos) e = ifnames.size();
    const std::string name = ifnames.substr(b, e - b);
    if (!name.empty()) {
      try {
        devices.push_back(c10d::ProcessGroupGloo::createDeviceForInterface(name));
      } catch (const std::exception& x) {
        throw InputError("environment: GLOO_SOCKET_IFNAME names '" + name +
                         "', which this host cannot use (" + x.what() + ")");
      }
    }
    b = e + 1;
  }
  if (!devices.empty()) return devices;
  const bool loopback = env.addr == "127.0.0.1" || env.addr == "localhost";
  const std::string local = loopback ? "127.0.0.1" : address_towards(env.addr, env.port);
  devices.push_back(local.empty() ? c10d::ProcessGroupGloo::createDefaultDevice()
                                  : c10d::ProcessGroupGloo::createDeviceForHostname(local));
  return devices;
}

GroupPtr gloo_group(const c10::intrusive_ptr<c10d::Store>& store, const DistEnv& env,
                    std::chrono::milliseconds timeout) {
  auto opts = c10d::ProcessGroupGloo::Options::create(timeout);
  opts->devices = gloo_devices(env);
  return c10::make_intrusive<c10d::ProcessGroupGloo>(store, env.rank, env.world, opts);
}

#ifdef DMS_WITH_CUDA
GroupPtr nccl_group(const c10::intrusive_ptr<c10d::Store>& store, const DistEnv& env,
                    std::chrono::milliseconds timeout) {
  auto opts = c10d::ProcessGroupNCCL::Options::create();
  opts->timeout = timeout;
  return c10::make_intrusive<c10d::ProcessGroupNCCL>(store, env.rank, env.world, opts);
}
#endif

// "auto" -> nccl when training runs on a GPU of a CUDA build, else gloo; NCCL moves only GPU
// tensors, so it needs a CUDA device.
std::string resolve_backend(const std::string& backend, const at::Device& device) {
  require(backend == "gloo" || backend == "nccl" || backend == "auto", "--backend",
          "'" + backend + "' (gloo, nccl or auto)");
#ifndef DMS_WITH_CUDA
  require(backend != "nccl", "--backend", "nccl needs a CUDA build of LibTorch");
#endif
  require(backend != "nccl" || device.is_cuda(), "--backend",
          "nccl reduces GPU tensors; it needs --device cuda (or auto on a machine with a GPU)");
  if (backend != "auto") return backend;
  return device.is_cuda() ? "nccl" : "gloo";
}

// Ends the process (exit 1, one line) unless disarmed within `limit`: Gloo's full-mesh
// connect at startup waits for a peer that never connects without honouring its timeout, and a
// rank must never hang.
class Watchdog {
 public:
  Watchdog(std::chrono::milliseconds limit, std::string message)
      : message_(std::move(message)), thread_([this, limit] {
          std::unique_lock<std::mutex> lock(mu_);
          if (!cv_.wait_for(lock, limit, [this] { return done_; })) {
            std::cerr << message_ << std::endl;
            std::_Exit(1);
          }
        }) {}
  ~Watchdog() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      done_ = true;
    }
    cv_.notify_all();
    thread_.join();
  }

 private:
  std::string message_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool done_ = false;
  std::thread thread_;
};

}  // namespace

std::unique_ptr<Dist> Dist::join(const DistEnv& env, const std::string& backend,
                                 std::chrono::milliseconds timeout, const at::Device& device) {
  std::unique_ptr<Dist> d(new Dist());
  d->env_ = env;
  d->impl_ = std::make_unique<Impl>();
  d->impl_->timeout = timeout;
  if (env.world == 1) return d;
  const std::string chosen = resolve_backend(backend, device);
  Watchdog watchdog(timeout + std::chrono::seconds(5),
                    "dms: distributed failure: rank " + std::to_string(env.rank) +
                        ": joining the " + std::to_string(env.world) +
                        " ranks did not finish within --dist-timeout; lost a peer at startup "
                        "(rendezvous " +
                        env.addr + ":" + std::to_string(env.port) + ")");
  d->impl_->store = open_store(env, timeout);
#ifdef DMS_WITH_CUDA
  if (chosen == "nccl") {
    d->impl_->pg = nccl_group(d->impl_->store, env, timeout);
    d->impl_->comm_device = device;
    d->backend_ = "nccl";
    return d;
  }
#endif
  d->impl_->pg = gloo_group(d->impl_->store, env, timeout);
  d->backend_ = "gloo";
  return d;
}

void Dist::fail(const std::string& what, const std::exception& e) {
  // Name the ranks whose heartbeat is behind (or the store host, when the store is gone).
  std::string lost;
  try {
    // A fresh client with a short timeout: the run's own connection waits up to the run's
    // timeout on every request (setTimeout does not shorten a request already blocked on a
    // dead host's socket), which would double the time to fail.
    c10d::TCPStoreOptions so;
    so.port = uint16_t(env_.port);
    so.isServer = false;
    so.waitWorkers = false;
    so.timeout = std::chrono::milliseconds(2000);
    auto probe = c10::make_intrusive<c10d::TCPStore>(env_.addr, so);
    int64_t newest = -1;
    std::vector<int64_t> steps(size_t(env_.world), -1);
    for (int r = 0; r < env_.world; ++r) {
      const std::string key = "hb/" + std::to_string(r);
      if (probe->check({key})) {
        auto v = probe->get(key);
        steps[size_t(r)] = std::stoll(std::string(v.begin(), v.end()));
      }
      newest = std::max(newest, steps[size_t(r)]);
    }
    for (int r = 0; r < env_.world; ++r)
      if (r != env_.rank && steps[size_t(r)] < newest)
        lost += (lost.empty() ? "" : ", ") + std::to_string(r);
    if (lost.empty() && env_.world == 2)  // a collective of two failed: the peer is the one
      lost = std::to_string(1 - env_.rank) + " (the only peer; both had reached step " +
             std::to_string(newest) + ")";
    if (lost.empty())
      lost = "unknown (every rank reached the same step; one hung or died inside it)";
  } catch (const std::exception&) {
    lost = "0 (the rendezvous store host is gone)";
  }
  throw DistError("rank " + std::to_string(env_.rank) + ": " + what + " failed; lost rank " + lost +
                  " (" + e.what() + ")");
}

at::Tensor Dist::to_comm_device(const at::Tensor& t) const {
  return t.device() == impl_->comm_device ? t : t.to(impl_->comm_device);
}

void Dist::back(const at::Tensor& comm, const at::Tensor& t) {
  if (!comm.is_same(t)) t.copy_(comm);
}

void Dist::all_reduce_sum(const std::vector<at::Tensor>& tensors) {
  if (env_.world == 1 || tensors.empty()) return;
  // One flat bucket; a single contiguous tensor where the backend wants it is its own
  // bucket (no copy of a whole gradient buffer).
  const at::Tensor& t0 = tensors[0];
  const bool in_place =
      tensors.size() == 1 && t0.is_contiguous() && t0.device() == impl_->comm_device;
  std::vector<at::Tensor> flat_parts;
  for (const auto& t : tensors) flat_parts.push_back(t.reshape({-1}));
  at::Tensor bucket = in_place ? flat_parts[0] : to_comm_device(at::cat(flat_parts));
  std::vector<at::Tensor> io{bucket};
  try {
    impl_->pg->allreduce(io)->wait(impl_->timeout);
  } catch (const std::exception& e) {
    fail("all-reduce", e);
  }
  if (in_place) return;
  int64_t off = 0;
  for (const auto& t : tensors) {
    const int64_t n = t.numel();
    t.copy_(bucket.narrow(0, off, n).view(t.sizes()));
    off += n;
  }
}

at::Tensor Dist::reduce_scatter_sum(at::Tensor& flat) {
  if (env_.world == 1) return flat;
  const int64_t S = flat.numel() / env_.world;
  if (flat.dim() != 1 || S * env_.world != flat.numel() || !flat.is_contiguous())
    throw std::logic_error("reduce-scatter: needs a contiguous [world x chunk] buffer");
  try {
    if (backend_ == "nccl") {  // the input is the gradient buffer, already on the device
      at::Tensor in = to_comm_device(flat), out = at::empty({S}, in.options());
      impl_->pg->_reduce_scatter_base(out, in)->wait(impl_->timeout);
      return out.to(flat.device());
    }
    std::vector<at::Tensor> io{flat};
    impl_->pg->allreduce(io)->wait(impl_->timeout);
  } catch (const std::exception& e) {
    fail("reduce-scatter", e);
  }
  return flat.narrow(0, int64_t(env_.rank) * S, S);
}

void Dist::all_gather(const at::Tensor& mine, at::Tensor& out) {
  const int64_t S = mine.numel();
  if (out.dim() != 1 || out.numel() != S * env_.world || !out.is_contiguous())
    throw std::logic_error("all-gather: needs a contiguous [world x chunk] output");
  if (env_.world == 1) {
    if (!out.is_same(mine)) out.copy_(mine.reshape({-1}));
    return;
  }
  at::Tensor in = to_comm_device(mine.reshape({-1}).contiguous()), res = to_comm_device(out);
  try {
    if (backend_ == "nccl") {
      impl_->pg->_allgather_base(res, in)->wait(impl_->timeout);
    } else {  // Gloo (1.13) has no _allgather_base; its list form fills the views
      std::vector<std::vector<at::Tensor>> outs(1);
      for (int r = 0; r < env_.world; ++r) outs[0].push_back(res.narrow(0, int64_t(r) * S, S));
      std::vector<at::Tensor> ins{in};
      impl_->pg->allgather(outs, ins)->wait(impl_->timeout);
    }
  } catch (const std::exception& e) {
    fail("all-gather", e);
  }
  back(res, out);
}

void Dist::broadcast(at::Tensor& t, int root) {
  if (env_.world == 1) return;
  at::Tensor c = to_comm_device(t);
  std::vector<at::Tensor> io{c};
  c10d::BroadcastOptions o;
  o.rootRank = root;
  try {
    impl_->pg->broadcast(io, o)->wait(impl_->timeout);
  } catch (const std::exception& e) {
    fail("broadcast", e);
  }
  back(c, t);
}

void Dist::barrier() {
  if (env_.world == 1) return;
  // An all-reduce of one value: a barrier that honours our timeout on every backend.
  at::Tensor one = at::ones({1});
  all_reduce_sum({one});
}

void Dist::heartbeat(int64_t step) {
  if (env_.world == 1) return;
  const std::string v = std::to_string(step);
  try {
    impl_->store->set("hb/" + std::to_string(env_.rank), std::vector<uint8_t>(v.begin(), v.end()));
  } catch (const std::exception& e) {
    fail("heartbeat", e);
  }
}

int free_local_port() {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = 0;
  socklen_t len = sizeof(a);
  if (fd < 0 || ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0 ||
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) != 0) {
    if (fd >= 0) ::close(fd);
    throw std::runtime_error("cannot find a free local port");
  }
  const int port = ntohs(a.sin_port);
  ::close(fd);
  return port;
}

}  // namespace dms
