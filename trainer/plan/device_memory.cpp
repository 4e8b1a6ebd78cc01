#include "trainer/plan/device_memory.h"

#include "common/host.h"
#ifdef DMS_WITH_CUDA
#include <ATen/cuda/CUDAContext.h>
#endif

namespace dms {

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
