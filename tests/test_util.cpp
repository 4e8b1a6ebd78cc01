#include "tests/test_util.h"

#include "checkpoints/load_model.h"

#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>

namespace fs = std::filesystem;

namespace dms::test {

std::string assets_dir() {
  if (const char* env = std::getenv("DMS_ASSETS"); env && *env) return env;
  return DMS_DEFAULT_ASSETS;
}

std::string asset(const std::string& relative) {
  const std::string p = assets_dir() + "/" + relative;
  if (!fs::exists(p)) throw std::runtime_error("missing test asset: " + p);
  return p;
}

nlohmann::json read_json(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw std::runtime_error("cannot read " + path);
  return nlohmann::json::parse(in);
}

at::Tensor json_tensor(const nlohmann::json& j) {
  std::vector<int64_t> shape;
  const nlohmann::json* cur = &j;
  while (cur->is_array()) {
    shape.push_back(int64_t(cur->size()));
    if (cur->empty()) break;
    cur = &(*cur)[0];
  }
  std::vector<float> flat;
  std::function<void(const nlohmann::json&)> walk = [&](const nlohmann::json& v) {
    if (v.is_array())
      for (const auto& x : v) walk(x);
    else
      flat.push_back(v.get<float>());
  };
  walk(j);
  return at::tensor(flat, at::kFloat).view(shape);
}

std::vector<int64_t> json_ids(const nlohmann::json& j) {
  return j.get<std::vector<int64_t>>();
}

TempDir::TempDir() {
  std::random_device rd;
  path = (fs::temp_directory_path() /
          ("dms_test_" + std::to_string(::getpid()) + "_" + std::to_string(rd())))
             .string();
  fs::create_directories(path);
}
TempDir::~TempDir() {
  std::error_code ec;
  fs::remove_all(path, ec);
}

static std::string slurp(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

CommandResult run_dms(const std::string& args, int limit_s) {
  TempDir tmp;
  const std::string limit =
      limit_s > 0 ? "timeout -s KILL " + std::to_string(limit_s) + " " : std::string();
  const std::string cmd = limit + DMS_BINARY + " " + args + " > " + tmp.file("out") + " 2> " +
                          tmp.file("err") + " < /dev/null";
  const int status = std::system(cmd.c_str());
  CommandResult r;
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  r.out = slurp(tmp.file("out"));
  r.err = slurp(tmp.file("err"));
  return r;
}

void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary);
  out.write(bytes.data(), std::streamsize(bytes.size()));
}

std::string read_bytes(const std::string& path) {
  return slurp(path);
}

double max_abs_diff(const at::Tensor& a, const at::Tensor& b) {
  return (a.to(at::kDouble) - b.to(at::kDouble)).abs().max().item<double>();
}

}  // namespace dms::test

namespace dms::test {

std::string safetensors_bytes(const std::string& header, const std::string& data) {
  std::string out(8, '\0');
  const uint64_t n = header.size();
  for (int i = 0; i < 8; ++i) out[size_t(i)] = char((n >> (8 * i)) & 0xff);
  return out + header + data;
}

std::vector<BadFile> bad_safetensors_files() {
  const std::string data16(16, '\x01');  // room for 4 floats
  auto one = [&](const std::string& dtype, const std::string& shape, const std::string& offs) {
    return R"({"w": {"dtype": ")" + dtype + R"(", "shape": )" + shape + R"(, "data_offsets": )" +
           offs + "}}";
  };
  std::string length_past_end = safetensors_bytes(one("F32", "[4]", "[0, 16]"), data16);
  length_past_end[0] = char(0xff);
  length_past_end[1] = char(0x7f);
  return {
      {"truncated.safetensors", std::string("\x10\x00\x00", 3), "truncated"},
      {"length_past_end.safetensors", length_past_end, "runs past the end of the file"},
      {"not_json.safetensors", safetensors_bytes("{this is not json", data16), "not valid JSON"},
      {"unknown_dtype.safetensors", safetensors_bytes(one("Q4_K", "[4]", "[0, 16]"), data16),
       "unsupported dtype 'Q4_K'"},
      {"size_mismatch.safetensors", safetensors_bytes(one("F32", "[3]", "[0, 16]"), data16),
       "shape x dtype is 12 bytes but data_offsets span 16"},
      {"out_of_range.safetensors", safetensors_bytes(one("F32", "[4]", "[8, 24]"), data16),
       "out of range"},
      {"overlap.safetensors",
       safetensors_bytes(R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},)"
                         R"( "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}})",
                         data16),
       "overlap"},
      {"negative_shape.safetensors", safetensors_bytes(one("F32", "[-4]", "[0, 16]"), data16),
       "negative dimension"},
  };
}

}  // namespace dms::test

#include <signal.h>

#include <chrono>
#include <thread>

namespace dms::test {

Background spawn_dms(const std::string& args, const std::string& env, const std::string& dir,
                     const std::string& name) {
  Background b;
  b.out_path = dir + "/" + name + ".out";
  b.err_path = dir + "/" + name + ".err";
  const std::string cmd = "exec env " + env + " " + std::string(DMS_BINARY) + " " + args + " > '" +
                          b.out_path + "' 2> '" + b.err_path + "' < /dev/null";
  pid_t pid = fork();
  if (pid == 0) {
    setpgid(0, 0);
    execl("/bin/sh", "sh", "-c", cmd.c_str(), static_cast<char*>(nullptr));
    _exit(127);
  }
  setpgid(pid, pid);
  b.pid = pid;
  return b;
}

int Background::wait(double timeout_s) {
  const auto end = std::chrono::steady_clock::now() + std::chrono::duration<double>(timeout_s);
  while (std::chrono::steady_clock::now() < end) {
    int status = 0;
    if (waitpid(pid, &status, WNOHANG) == pid)
      return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return -1;
}

std::string Background::err() const {
  return slurp(err_path);
}

void Background::kill_group(int sig) {
  ::kill(-pid, sig);
}

}  // namespace dms::test

namespace dms::test {

std::string quote(const std::string& s) {
  return "'" + s + "'";
}

Model stories_with_adapters(int64_t window, uint64_t seed, double std) {
  Model m = load_model(asset("stories260K/stories260K.bin"));
  DmsConfig d;
  d.window = window;
  attach_dms(m, d);
  auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  for (auto& w : m.layers) w.dms_proj.normal_(0.0, std, gen);
  return m;
}

const std::string& small_token_file() {
  static TempDir dir;
  static std::string path = [] {
    const std::string p = dir.file("d.h5");
    auto r = run_dms("data prepare --tokenizer " + quote(asset("stories260K/tok512.model")) +
                     " --input " + quote(asset("tinystories/tinystories_val_prefix.txt")) +
                     " --out " + quote(p) + " --seq-len 64 --val-fraction 0.03");
    if (r.exit_code != 0) throw std::runtime_error("data prepare failed: " + r.err);
    return p;
  }();
  return path;
}

}  // namespace dms::test
