#include "trainer/plan/device_memory.h"

#include <cstdlib>
#include <fstream>
#include <sstream>
#ifdef DMS_WITH_CUDA
#include <ATen/cuda/CUDAContext.h>
#endif

namespace dms {

namespace {

// "MemAvailable:  12345 kB" of /proc/meminfo in bytes; 0 when absent.
double mem_available_bytes() {
  std::ifstream f("/proc/meminfo");
  std::string line;
  while (std::getline(f, line)) {
    std::istringstream in(line);
    std::string key;
    double kib = 0;
    if (in >> key >> kib && key == "MemAvailable:") return kib * 1024.0;
  }
  return 0;
}

// Ranks started on this host (torchrun and `--nproc` set LOCAL_WORLD_SIZE), who share
// its memory.
int local_ranks() {
  const char* v = std::getenv("LOCAL_WORLD_SIZE");
  const int n = v ? std::atoi(v) : 1;
  return n >= 1 ? n : 1;
}

}  // namespace

DeviceMemory device_memory(const at::Device& device, double requested_gib) {
  if (requested_gib > 0) return {requested_gib * double(int64_t(1) << 30), "--device-memory"};
#ifdef DMS_WITH_CUDA
  if (device.is_cuda()) {
    const auto* prop = at::cuda::getDeviceProperties(device.index() < 0 ? 0 : device.index());
    return {double(prop->totalGlobalMem), device.str() + " total memory"};
  }
#endif
  if (!device.is_cpu()) return {};
  const int ranks = local_ranks();
  std::string src = "available host memory (MemAvailable";
  src += ranks > 1 ? " / " + std::to_string(ranks) + " local ranks)" : ")";
  return {mem_available_bytes() / ranks, src};
}

}  // namespace dms
