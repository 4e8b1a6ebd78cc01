// How much memory one device of this machine offers a rank, for the fit check.
#pragma once
#include <ATen/ATen.h>

#include <cstdint>
#include <string>

namespace dms {

struct DeviceMemory {
  double bytes = 0;    // > 0
  std::string source;  // what it was read from ("cuda:0 total", "MemAvailable / 2 ranks")
};

// requested_gib > 0: that many GiB (--device-memory). Else a CUDA device's total memory,
// or on the CPU the host's MemAvailable (/proc/meminfo) shared by the local ranks
// (LOCAL_WORLD_SIZE). bytes = 0 when nothing could be read (no check is possible).
DeviceMemory device_memory(const at::Device& device, double requested_gib);

}  // namespace dms
