// Shared by the benchmark programs: timing (medians), peak memory of one measured
// region (in a child process, so earlier work cannot hide it), the machine's matmul
// peak, and the printed table + JSON output every benchmark produces.
#pragma once
#include <ATen/ATen.h>

#include <functional>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "model/transformer.h"

namespace dms::bench {

// The process set-up every benchmark shares: the trainer's allocator settings and
// all cores for ATen (Debian's OpenMP LibTorch may start with one thread).
void init(int argc, char** argv);

double now_s();
double median(std::vector<double> v);
// Runs f warmup times, then reps times; -> the median seconds of the timed runs.
double time_median(const std::function<void()>& f, int reps, int warmup = 1);

// Peak memory of a region, measured in a fresh child process: the child (this program
// run again with `--child ARGS`) sets up its inputs, calls region_begin(), runs the
// region once, and region_end() prints the resident-set peak above the level at
// region_begin. Large blocks are mmap'd in the child so freed memory leaves the RSS.
void region_begin();
void region_end();
// Runs `this_program --child args...` and returns the bytes its region_end printed,
// or -1 when the child failed (e.g. ran out of memory).
int64_t child_peak_bytes(const std::vector<std::string>& args);
// True when argv holds --child (the program should run one region and exit).
bool is_child(int argc, char** argv);
// The arguments after --child.
std::vector<std::string> child_args(int argc, char** argv);

// Sustained GEMM rate of this machine through LibTorch: median of n x n x n matmuls in
// dtype on device (fp32 on the CPU by default; bf16 on a GPU for its MFU). -> FLOP/s
double matmul_peak_flops(int64_t n = 2048, int reps = 5, at::ScalarType dtype = at::kFloat,
                         const at::Device& device = at::kCPU);

// Waits for the work queued on device (a no-op on the CPU): timings of GPU work end here.
void sync(const at::Device& device);

// Peak bytes the CUDA caching allocator handed out since device_peak_reset() (the
// allocator's own statistics; -1 on the CPU or in a build without CUDA).
void device_peak_reset(const at::Device& device);
int64_t device_peak_bytes(const at::Device& device);

// A printed table: header then rows, columns padded.
void print_table(const std::vector<std::string>& header,
                 const std::vector<std::vector<std::string>>& rows);
std::string fmt(double v, int precision = 2);
std::string mib(int64_t bytes);  // "123.4 MiB", or "-" for a negative (not measured)

// llama2.c's stories15M shape (dim 288, 6 layers, 6 heads, hidden 768, vocab 32000,
// tied embeddings) with random weights (seeded): the "15M" model of the benchmarks.
Model synthetic_15m();

// Writes j to path (pretty-printed) when path is not empty.
void write_json(const std::string& path, const nlohmann::json& j);

// A short description of the machine for the JSON: cores, threads, LibTorch version.
nlohmann::json machine_info();

}  // namespace dms::bench
