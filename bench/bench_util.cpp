#include "bench/bench_util.h"

#ifdef DMS_WITH_CUDA
#include <c10/cuda/CUDACachingAllocator.h>
#endif

#include <ATen/Parallel.h>
#include <malloc.h>
#include <torch/version.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iomanip>
#include <iostream>
#include <sstream>
#include <thread>

namespace dms::bench {

namespace {
std::string g_self;      // /proc/self/exe at start
int64_t g_base_rss = 0;  // RSS at region_begin

// A "VmRSS:" / "VmHWM:" line of /proc/self/status, in bytes.
int64_t status_bytes(const char* key) {
  std::ifstream f("/proc/self/status");
  std::string line;
  while (std::getline(f, line))
    if (line.rfind(key, 0) == 0) return std::stoll(line.substr(std::strlen(key))) * 1024;
  return -1;
}
}  // namespace

void init(int argc, char** argv) {
  char buf[4096];
  const ssize_t n = readlink("/proc/self/exe", buf, sizeof(buf) - 1);
  g_self = n > 0 ? std::string(buf, size_t(n)) : std::string(argv[0]);
  if (is_child(argc, argv)) {
    // Blocks above 64 KiB come from mmap and go back on free: the RSS then follows the
    // live tensors and its high-water mark is the region's peak.
    mallopt(M_MMAP_THRESHOLD, 64 * 1024);
  } else {
    // The trainer's settings (trainer/main.cpp): freed blocks stay in the heap.
    mallopt(M_MMAP_MAX, 0);
    mallopt(M_TRIM_THRESHOLD, -1);
  }
  if (!std::getenv("OMP_NUM_THREADS"))
    at::set_num_threads(int(std::max(1u, std::thread::hardware_concurrency())));
}

double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

double median(std::vector<double> v) {
  if (v.empty()) return 0.0;
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

double time_median(const std::function<void()>& f, int reps, int warmup) {
  for (int i = 0; i < warmup; ++i) f();
  std::vector<double> t;
  for (int i = 0; i < reps; ++i) {
    const double t0 = now_s();
    f();
    t.push_back(now_s() - t0);
  }
  return median(t);
}

void region_begin() {
  malloc_trim(0);
  std::ofstream("/proc/self/clear_refs") << "5";  // resets VmHWM to the current RSS
  g_base_rss = status_bytes("VmRSS:");
}

void region_end() {
  const int64_t hwm = status_bytes("VmHWM:");
  std::cout << "peak_bytes " << (hwm - g_base_rss) << std::endl;
}

bool is_child(int argc, char** argv) {
  for (int i = 1; i < argc; ++i)
    if (std::strcmp(argv[i], "--child") == 0) return true;
  return false;
}

std::vector<std::string> child_args(int argc, char** argv) {
  std::vector<std::string> out;
  bool after = false;
  for (int i = 1; i < argc; ++i) {
    if (after) out.emplace_back(argv[i]);
    if (std::strcmp(argv[i], "--child") == 0) after = true;
  }
  return out;
}

int64_t child_peak_bytes(const std::vector<std::string>& args) {
  std::string cmd = "'" + g_self + "' --child";
  for (const std::string& a : args) cmd += " '" + a + "'";
  cmd += " 2>/dev/null";
  FILE* p = popen(cmd.c_str(), "r");
  if (!p) return -1;
  int64_t bytes = -1;
  char line[512];
  while (std::fgets(line, sizeof(line), p)) {
    long long v;
    if (std::sscanf(line, "peak_bytes %lld", &v) == 1) bytes = v;
  }
  return pclose(p) == 0 ? bytes : -1;
}

double matmul_peak_flops(int64_t n, int reps, at::ScalarType dtype, const at::Device& device) {
  const auto o = at::TensorOptions().dtype(dtype).device(device);
  at::Tensor a = at::randn({n, n}, o), b = at::randn({n, n}, o), c = at::empty({n, n}, o);
  const double t = time_median(
      [&] {
        at::mm_out(c, a, b);
        sync(device);
      },
      reps, 2);
  return 2.0 * double(n) * double(n) * double(n) / t;
}

void sync(const at::Device& device) {
  // Reading a value back waits for everything queued before it on the stream.
  if (!device.is_cpu()) at::zeros({1}, at::TensorOptions().device(device)).item<float>();
}

void device_peak_reset([[maybe_unused]] const at::Device& device) {
#ifdef DMS_WITH_CUDA
  if (device.is_cuda()) {
    sync(device);
    c10::cuda::CUDACachingAllocator::resetPeakStats(device.has_index() ? device.index() : 0);
  }
#endif
}

int64_t device_peak_bytes([[maybe_unused]] const at::Device& device) {
#ifdef DMS_WITH_CUDA
  if (device.is_cuda()) {
    sync(device);
    const auto st =
        c10::cuda::CUDACachingAllocator::getDeviceStats(device.has_index() ? device.index() : 0);
    return st.allocated_bytes[0].peak;  // [0]: the aggregate over pools
  }
#endif
  return -1;
}

std::string fmt(double v, int precision) {
  std::ostringstream s;
  s << std::fixed << std::setprecision(precision) << v;
  return s.str();
}

std::string mib(int64_t bytes) {
  if (bytes < 0) return "-";
  return fmt(double(bytes) / (1024.0 * 1024.0), 1) + " MiB";
}

void print_table(const std::vector<std::string>& header,
                 const std::vector<std::vector<std::string>>& rows) {
  std::vector<size_t> w(header.size(), 0);
  for (size_t c = 0; c < header.size(); ++c) w[c] = header[c].size();
  for (const auto& r : rows)
    for (size_t c = 0; c < r.size() && c < w.size(); ++c) w[c] = std::max(w[c], r[c].size());
  auto line = [&](const std::vector<std::string>& r) {
    std::cout << "|";
    for (size_t c = 0; c < w.size(); ++c)
      std::cout << " " << std::setw(int(w[c])) << (c < r.size() ? r[c] : "") << " |";
    std::cout << "\n";
  };
  line(header);
  std::cout << "|";
  for (size_t c = 0; c < w.size(); ++c) std::cout << std::string(w[c] + 2, '-') << "|";
  std::cout << "\n";
  for (const auto& r : rows) line(r);
  std::cout << std::flush;
}

Model synthetic_15m() {
  ModelConfig c = llama_config(32000, 288, 768, 6, 6, 6, 32768);
  c.tied_embeddings = true;
  Model m = make_model(c);
  init_random(m, 15, 0.02);
  return m;
}

void write_json(const std::string& path, const nlohmann::json& j) {
  if (path.empty()) return;
  const std::string tmp = path + ".tmp";
  {
    std::ofstream f(tmp);
    f << j.dump(2) << "\n";
    if (!f) throw std::runtime_error(path + ": cannot write");
  }
  std::rename(tmp.c_str(), path.c_str());
  std::cout << "wrote " << path << "\n";
}

nlohmann::json machine_info() {
  return {{"hardware_threads", std::thread::hardware_concurrency()},
          {"aten_threads", at::get_num_threads()},
          {"torch", TORCH_VERSION}};
}

}  // namespace dms::bench
