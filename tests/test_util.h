// Helpers for the tests: shared assets, JSON goldens, temp dirs, running build/dms.
#pragma once
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "model/transformer.h"

namespace dms::test {

// $DMS_ASSETS, else ../shared/assets next to the source tree.
std::string assets_dir();
// Path of an asset; throws (a test failure naming the path) when it is missing.
std::string asset(const std::string& relative);
nlohmann::json read_json(const std::string& path);

// Nested JSON number arrays -> float tensor of the nested shape.
at::Tensor json_tensor(const nlohmann::json& j);
std::vector<int64_t> json_ids(const nlohmann::json& j);

// s in single quotes, for command lines handed to the shell.
std::string quote(const std::string& s);

// TinyStories as rows of 64 tokens (+ a .val.h5 beside it), made once per test binary
// through `build/dms data prepare`.
const std::string& small_token_file();

// stories260K with DMS adapters (window `window`, per KV head) drawn N(0, std) from
// `seed`: decisions that evict a share of the keys.
Model stories_with_adapters(int64_t window, uint64_t seed, double std = 0.05);

// A fresh empty directory under the system temp dir, removed at destruction.
struct TempDir {
  std::string path;
  TempDir();
  ~TempDir();
  std::string file(const std::string& name) const { return path + "/" + name; }
};

struct CommandResult {
  int exit_code = -1;
  std::string out, err;
};
// Runs build/dms with `args` (shell-quoted by the caller where needed). limit_s > 0: killed
// (SIGKILL, exit code 137) after that many seconds, so a hang fails instead of blocking.
CommandResult run_dms(const std::string& args, int limit_s = 0);

void write_bytes(const std::string& path, const std::string& bytes);
std::string read_bytes(const std::string& path);

double max_abs_diff(const at::Tensor& a, const at::Tensor& b);

}  // namespace dms::test

namespace dms::test {

// Byte image of a safetensors file: u64 header length, header, data.
std::string safetensors_bytes(const std::string& header, const std::string& data);

// Malformed safetensors files, each with the phrase its error must contain.
struct BadFile {
  std::string name;  // file name to write it under
  std::string bytes;
  std::string error;  // expected part of the message
};
std::vector<BadFile> bad_safetensors_files();

}  // namespace dms::test

namespace dms::test {

// A `dms` process running in the background (its own process group), output to files.
struct Background {
  int pid = -1;
  std::string out_path, err_path;
  // Waits up to timeout_s; returns the exit code (128+signal), or -1 on timeout.
  int wait(double timeout_s);
  std::string err() const;
  void kill_group(int sig);  // the process and everything it spawned
};
// env: "NAME=value NAME2=value" prefix; dir: where the output files go.
Background spawn_dms(const std::string& args, const std::string& env, const std::string& dir,
                     const std::string& name);

}  // namespace dms::test
