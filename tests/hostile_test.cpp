// Hostile inputs against build/dms, as a careless or malicious user would give them: bad
// options, special and malformed files (models, configs, token files, tokenizers, TOML),
// damaged checkpoints, a full disk, signals at random points, two runs on one directory.
// Every case asserts the promise of the README: no signal death, no hang, the exit code
// (2: bad input, one line "dms: error: <file or option>: <problem>"; 1: a runtime failure),
// and that nothing written before the command changed (no file lost, none left behind).
#include <fcntl.h>
#include <sys/file.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <random>
#include <thread>

#include "common/sha256.h"
#include "tests/test_util.h"

namespace fs = std::filesystem;

namespace dms::test {
namespace {

const std::string kDms = DMS_BINARY;

// ---------------------------------------------------------------------------------------
// Shared fixtures (a token file, a short run with two checkpoints, its export), made once
// for all test processes of this binary build: ctest runs every case in its own process.

std::string binary_stamp() {
  struct stat st {};
  ::stat(kDms.c_str(), &st);
  return std::to_string(st.st_size) + "-" + std::to_string(st.st_mtime);
}

// The directory `name` made by `make(dir)` under a cache keyed by the dms binary; creation
// is locked across processes and published by rename, so a reader never sees half of it.
std::string fixture(const std::string& name, const std::function<void(const std::string&)>& make) {
  const fs::path root = fs::temp_directory_path() / ("dms_hostile_" + binary_stamp());
  fs::create_directories(root);
  const fs::path dir = root / name;
  if (fs::exists(dir)) return dir.string();
  // One lock per fixture: making one fixture may need another (flock would self-deadlock).
  const int fd = ::open((root / (name + ".lock")).c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (fd < 0 || ::flock(fd, LOCK_EX) != 0) throw std::runtime_error("fixture lock");
  if (!fs::exists(dir)) {
    const fs::path tmp = root / (name + ".tmp." + std::to_string(::getpid()));
    fs::remove_all(tmp);
    fs::create_directories(tmp);
    make(tmp.string());
    fs::rename(tmp, dir);
  }
  ::close(fd);
  return dir.string();
}

std::string must(const CommandResult& r, const std::string& what) {
  if (r.exit_code != 0) throw std::runtime_error(what + " failed: " + r.err);
  return r.out;
}

std::string model_bin() {
  return asset("stories260K/stories260K.bin");
}

std::string tokens() {
  return fixture("tokens",
                 [](const std::string& d) {
                   must(run_dms("data prepare --tokenizer " +
                                quote(asset("stories260K/tok512.model")) + " --input " +
                                quote(asset("tinystories/tinystories_val_prefix.txt")) + " --out " +
                                quote(d + "/tokens.h5") + " --seq-len 64 --val-fraction 0.05"),
                        "data prepare");
                 }) +
         "/tokens.h5";
}

const char* kRunOptions = " --max-steps 4 --micro-batch 1 --threads 1 --window 8 --target-cr 2";

std::string run_dir() {
  return fixture("run",
                 [](const std::string& d) {
                   must(run_dms("retrofit --model " + quote(model_bin()) + " --data " +
                                quote(tokens()) + " --out " + quote(d + "/run") + kRunOptions +
                                " --checkpoint-every 2 --keep-checkpoints 0"),
                        "retrofit");
                 }) +
         "/run";
}

std::string export_dir() {
  return fixture(
             "export",
             [](const std::string& d) {
               must(run_dms("export --run " + quote(run_dir()) + " --out " + quote(d + "/export")),
                    "export");
             }) +
         "/export";
}

// ---------------------------------------------------------------------------------------
// One case: setup writes files into a fresh directory and returns dms's arguments.

struct Env {
  std::string dir;
  std::string file(const std::string& n) const { return dir + "/" + n; }
  std::string write(const std::string& n, const std::string& bytes) const {
    write_bytes(file(n), bytes);
    return file(n);
  }
  std::string fifo(const std::string& n) const {
    ::mkfifo(file(n).c_str(), 0644);
    return file(n);
  }
  // A copy of `src` (file or directory) under name n.
  std::string copy(const std::string& src, const std::string& n) const {
    fs::copy(src, file(n), fs::copy_options::recursive);
    return file(n);
  }
};

struct Case {
  std::string name;
  std::function<std::string(const Env&)> setup;
  std::string message;  // part of the one error line
  int code = 2;
  bool may_create = false;  // the command may add files (e.g. a run that starts)
};

void PrintTo(const Case& c, std::ostream* os) {
  *os << c.name;
}

// Path -> contents of every regular file under dir (FIFOs and devices are never opened).
std::map<std::string, std::string> snapshot(const std::string& dir) {
  std::map<std::string, std::string> out;
  for (const auto& e : fs::recursive_directory_iterator(dir)) {
    if (!fs::is_regular_file(fs::symlink_status(e.path()))) continue;
    out[e.path().string()] = sha256_file(e.path().string());
  }
  return out;
}

// build/dms with a hard time limit: a hang shows as exit 137 (SIGKILL from timeout).
CommandResult run_limited(const std::string& args) {
  return run_dms(args, 120);
}

// The lines of stderr that report the failure ("dms: ..."), warnings and progress aside.
std::vector<std::string> error_lines(const std::string& err) {
  std::vector<std::string> out;
  std::istringstream in(err);
  for (std::string line; std::getline(in, line);)
    if (line.rfind("dms: ", 0) == 0) out.push_back(line);
  return out;
}

void check_outcome(const Case& c, const CommandResult& r) {
  ASSERT_NE(r.exit_code, 137) << "hang (killed after the time limit)\n" << r.err;
  ASSERT_LT(r.exit_code, 128) << "signal death\n" << r.err;
  EXPECT_EQ(r.exit_code, c.code) << r.err;
  const auto lines = error_lines(r.err);
  ASSERT_EQ(lines.size(), 1u) << "want exactly one 'dms: ...' line:\n" << r.err;
  EXPECT_NE(lines[0].find(c.message), std::string::npos)
      << "the message should name '" << c.message << "':\n"
      << lines[0];
}

class Hostile : public ::testing::TestWithParam<Case> {};

TEST_P(Hostile, ExitsWithOneLineAndChangesNothing) {
  const Case& c = GetParam();
  TempDir tmp;
  Env env{tmp.path};
  const std::string args = c.setup(env);
  const auto before = snapshot(tmp.path);
  const CommandResult r = run_limited(args);
  check_outcome(c, r);
  const auto after = snapshot(tmp.path);
  for (const auto& [path, hash] : before) {
    auto it = after.find(path);
    ASSERT_NE(it, after.end()) << path << " was removed";
    EXPECT_EQ(it->second, hash) << path << " changed";
  }
  if (!c.may_create) {
    for (const auto& [path, hash] : after)
      EXPECT_TRUE(before.count(path)) << path << " was left behind";
  }
}

std::string case_name(const ::testing::TestParamInfo<Case>& info) {
  return info.param.name;
}

// ---------------------------------------------------------------------------------------
// Options: every numeric option out of range, not a number, NaN, infinite; every choice
// not among its choices. The message names the option.

struct BadOption {
  std::string option, value;
};

std::string retrofit_args(const Env& e) {
  return "retrofit --model " + quote(model_bin()) + " --data " + quote(tokens()) + " --out " +
         quote(e.file("out")) + kRunOptions;
}

std::vector<Case> option_cases() {
  const std::vector<BadOption> retrofit = {
      {"--max-steps", "0"},
      {"--max-steps", "-3"},
      {"--max-steps", "1e40"},
      {"--micro-batch", "0"},
      {"--micro-batch", "100000000"},
      {"--grad-accum", "0"},
      {"--lr", "-1"},
      {"--lr", "nan"},
      {"--lr", "inf"},
      {"--lr", "abc"},
      {"--beta1", "2"},
      {"--beta1", "-0.5"},
      {"--beta2", "1"},
      {"--tau", "-1"},
      {"--tau", "0"},
      {"--tau", "nan"},
      {"--scale", "0"},
      {"--offset", "1e300"},
      {"--window", "-1"},
      {"--target-cr", "0.5"},
      {"--target-cr", "nan"},
      {"--final-step", "-1"},
      {"--log-every", "0"},
      {"--eval-every", "0"},
      {"--checkpoint-every", "0"},
      {"--keep-checkpoints", "-1"},
      {"--threads", "100000"},
      {"--threads", "-1"},
      {"--seq-len", "-1"},
      {"--warmup-steps", "-1"},
      {"--min-lr-ratio", "2"},
      {"--weight-decay", "-1"},
      {"--clip", "-1"},
      {"--dms-weight", "-1"},
      {"--kd-chunk", "-1"},
      {"--attn-block-q", "0"},
      {"--attn-block-k", "0"},
      {"--eval-batches", "0"},
      {"--alert-kd-spike", "0"},
      {"--alert-grad", "-1"},
      {"--alert-cr-margin", "-1"},
      {"--alert-cr-evals", "0"},
      {"--nproc", "0"},
      {"--nproc", "100000"},
      {"--dist-timeout", "0"},
      {"--dist-timeout", "nan"},
      {"--checksum-every", "-1"},
      {"--device-memory", "-1"},
      {"--keep-at-cr", "0.5"},
      {"--keep-at-cr", "99"},
      {"--keep-at-cr", "x"},
      {"--predictor", "bogus"},
      {"--alpha-per", "bogus"},
      {"--train-mode", "bogus"},
      {"--lr-schedule", "bogus"},
      {"--kd-direction", "bogus"},
      {"--attention", "bogus"},
      {"--dtype", "f8"},
      {"--on-checkpoint-error", "x"},
      {"--stop-on-alert", "bogus"},
      {"--backend", "bogus"},
      {"--device", "tpu"},
      {"--seed", "-1"},
  };
  std::vector<Case> out;
  int i = 0;
  for (const auto& b : retrofit)
    out.push_back(
        {"retrofit_" + std::to_string(i++),
         [b](const Env& e) { return retrofit_args(e) + " " + b.option + " " + quote(b.value); },
         b.option});
  // Other commands: their options, on valid files.
  const std::vector<std::tuple<std::string, std::string, std::string>> other = {
      {"generate", "--steps", "0"},
      {"generate", "--steps", "9223372036854775807"},
      {"generate", "--temperature", "nan"},
      {"generate", "--temperature", "-1"},
      {"generate", "--top-p", "nan"},
      {"generate", "--top-p", "2"},
      {"generate", "--budget", "-1"},
      {"generate", "--sinks", "-1"},
      {"generate", "--policy", "bogus"},
      {"generate", "--threads", "100000"},
      {"generate", "--prompt-ids", "1,x"},
      {"generate", "--prompt-ids", "99999"},
      {"eval", "--rows", "-1"},
      {"eval", "--batch", "0"},
      {"eval", "--budget", "-1"},
      {"eval", "--policy", "bogus"},
      {"eval", "--prompt-len", "0"},
      {"eval", "--gen-tokens", "-1"},
      {"plan", "--seq-len", "-2"},
      {"plan", "--world-size", "0"},
      {"plan", "--micro-batch", "0"},
      {"plan", "--device-memory", "-1"},
      {"data sample", "--count", "0"},
      {"data sample", "--length", "1"},
      {"data sample", "--temperature", "0"},
      {"data sample", "--top-p", "nan"},
      {"data prepare", "--seq-len", "1"},
      {"data prepare", "--val-fraction", "2"},
      {"data prepare", "--reasoning", "bogus"},
      {"data prepare", "--threads", "0"},
      {"export", "--step", "-1"},
      {"export", "--dtype", "f8"},
      {"report", "--format", "gif"},
  };
  for (const auto& [cmd, opt, value] : other) {
    std::string n = cmd + "_" + std::to_string(i++);
    for (char& ch : n)
      if (ch == ' ') ch = '_';
    out.push_back(
        {n,
         [cmd = cmd, opt = opt, value = value](const Env& e) {
           std::string base;
           if (cmd == "generate") base = "generate --model " + quote(model_bin());
           if (cmd == "eval")
             base = "eval --model " + quote(model_bin()) + " --data " + quote(tokens());
           if (cmd == "plan") base = "plan --model " + quote(model_bin()) + " --seq-len 64";
           if (cmd == "data sample")
             base = "data sample --model " + quote(model_bin()) + " --out " + quote(e.file("s.h5"));
           if (cmd == "data prepare")
             base = "data prepare --tokenizer " + quote(asset("stories260K/tok512.model")) +
                    " --input " + quote(asset("tinystories/tinystories_val_prefix.txt")) +
                    " --out " + quote(e.file("p.h5"));
           if (cmd == "export")
             base = "export --run " + quote(run_dir()) + " --out " + quote(e.file("x"));
           if (cmd == "report")
             base = "report --run " + quote(run_dir()) + " --out " + quote(e.file("r"));
           return base + " " + opt + " " + quote(value);
         },
         opt});
  }
  return out;
}

INSTANTIATE_TEST_SUITE_P(Options, Hostile, ::testing::ValuesIn(option_cases()), case_name);

// ---------------------------------------------------------------------------------------
// Files where a file is meant: FIFOs (must not block), directories, missing files, empty
// files, for every input of every command.

std::vector<Case> special_file_cases() {
  struct Input {
    std::string name;
    std::function<std::string(const Env&, const std::string&)> args;  // with the bad path
  };
  const std::vector<Input> inputs = {
      {"model",
       [](const Env& e, const std::string& p) {
         return "retrofit --model " + quote(p) + " --data " + quote(tokens()) + " --out " +
                quote(e.file("out")) + kRunOptions;
       }},
      {"data",
       [](const Env& e, const std::string& p) {
         return "retrofit --model " + quote(model_bin()) + " --data " + quote(p) + " --out " +
                quote(e.file("out")) + kRunOptions;
       }},
      {"val_data",
       [](const Env& e, const std::string& p) {
         return retrofit_args(e) + " --val-data " + quote(p);
       }},
      {"teacher",
       [](const Env& e, const std::string& p) {
         return retrofit_args(e) + " --train-mode all --teacher " + quote(p);
       }},
      {"eval_data",
       [](const Env&, const std::string& p) {
         return "eval --model " + quote(model_bin()) + " --data " + quote(p);
       }},
      {"eval_original",
       [](const Env&, const std::string& p) {
         return "eval --model " + quote(model_bin()) + " --data " + quote(tokens()) +
                " --original " + quote(p);
       }},
      {"tokenizer",
       [](const Env&, const std::string& p) {
         return "generate --model " + quote(model_bin()) + " --tokenizer " + quote(p) +
                " --prompt hi --steps 2";
       }},
      {"prepare_input",
       [](const Env& e, const std::string& p) {
         return "data prepare --tokenizer " + quote(asset("stories260K/tok512.model")) +
                " --input " + quote(p) + " --out " + quote(e.file("p.h5"));
       }},
      {"prepare_tokenizer",
       [](const Env& e, const std::string& p) {
         return "data prepare --tokenizer " + quote(p) + " --input " +
                quote(asset("tinystories/tinystories_val_prefix.txt")) + " --out " +
                quote(e.file("p.h5"));
       }},
      {"inspect", [](const Env&, const std::string& p) { return "inspect " + quote(p); }},
      {"config_toml",
       [](const Env& e, const std::string& p) {
         return "--config " + quote(p) + " " + retrofit_args(e);
       }},
      {"plan_model",
       [](const Env&, const std::string& p) {
         return "plan --model " + quote(p) + " --seq-len 64";
       }},
  };
  struct Kind {
    std::string name;
    std::function<std::string(const Env&, const std::string&)> make;  // -> the path
    std::string message;
  };
  const std::vector<Kind> kinds = {
      {"fifo", [](const Env& e, const std::string& ext) { return e.fifo("f" + ext); }, "f"},
      {"missing", [](const Env& e, const std::string& ext) { return e.file("none" + ext); },
       "none"},
      {"empty", [](const Env& e, const std::string& ext) { return e.write("empty" + ext, ""); },
       "empty"},
      {"garbage",
       [](const Env& e, const std::string& ext) {
         return e.write("junk" + ext, std::string("\x89\x00garbage\xff\xfe", 12));
       },
       "junk"},
  };
  std::vector<Case> out;
  for (const auto& in : inputs)
    for (const auto& k : kinds) {
      // Extensions as a user would name the file, so the command takes it for that kind.
      std::string ext = ".h5";
      if (in.name == "model" || in.name == "teacher" || in.name == "eval_original" ||
          in.name == "plan_model")
        ext = ".bin";
      if (in.name == "tokenizer" || in.name == "prepare_tokenizer") ext = ".model";
      if (in.name == "prepare_input") ext = ".txt";
      if (in.name == "config_toml") ext = ".toml";
      if (in.name == "inspect") ext = ".safetensors";
      // An empty or binary text file is a valid (empty) input to prepare: refused as "no
      // documents"; TOML garbage is a parse error. All name the file.
      if (in.name == "config_toml" && k.name == "empty") continue;  // valid: no options
      auto in_args = in.args;
      auto make = k.make;
      // An empty text input holds no documents: refused as such, naming the output.
      const bool no_text = in.name == "prepare_input" && k.name == "empty";
      out.push_back({in.name + "_" + k.name,
                     [in_args, make, ext](const Env& e) { return in_args(e, make(e, ext)); },
                     no_text ? "fewer than one row" : k.message});
    }
  return out;
}

INSTANTIATE_TEST_SUITE_P(SpecialFiles, Hostile, ::testing::ValuesIn(special_file_cases()),
                         case_name);

// ---------------------------------------------------------------------------------------
// Model files: HF config.json fields out of range, weights that disagree with the config,
// and llama2.c headers. Each based on a real model from the assets.

std::string hf_model(const Env& e, const std::function<void(nlohmann::json&)>& edit) {
  const std::string dir = e.copy(asset("hf-tiny/llama"), "model");
  nlohmann::json c = read_json(dir + "/config.json");
  edit(c);
  write_bytes(dir + "/config.json", c.dump());
  return dir;
}

std::string generate_with(const std::string& model) {
  return "generate --model " + quote(model) + " --prompt-ids 1,2 --steps 2";
}

std::vector<Case> model_cases() {
  using J = nlohmann::json;
  const std::vector<std::tuple<std::string, std::string, J>> fields = {
      {"max_position_embeddings", "max_position_embeddings", 0},
      {"max_position_embeddings", "max_position_embeddings", -5},
      {"vocab_size", "vocab_size", 0},
      {"hidden_size", "hidden_size", -64},
      {"intermediate_size", "tensor", 16777215},
      {"num_hidden_layers", "num_hidden_layers", 0},
      {"num_hidden_layers", "tensor", 3},
      {"num_attention_heads", "num_attention_heads", 0},
      {"num_key_value_heads", "multiple of num_key_value_heads", 3},
      {"head_dim", "head_dim", 15},
      {"rms_norm_eps", "rms_norm_eps", -1},
      {"rms_norm_eps", "rms_norm_eps", 1e300},
      {"rope_theta", "rope_theta", 0},
      {"vocab_size", "not an integer", "256"},
      {"hidden_size", "not an integer", 64.5},
      {"bos_token_id", "not a token id", "<s>"},
      {"eos_token_id", "not a token id", J::array({"x"})},
      {"eos_token_id", "eos_token_id", -7},
      {"hidden_act", "hidden_act", "gelu"},
      {"architectures", "architecture", J::array({"GPT2LMHeadModel"})},
      {"rope_scaling", "rope_scaling", J{{"rope_type", "yarn"}, {"factor", 4}}},
      {"rope_scaling", "rope_scaling", J{{"rope_type", "llama3"}, {"factor", -1}}},
      {"tie_word_embeddings", "tie_word_embeddings", "yes"},
      {"dms_window_size", "dms_window_size", -1},
      {"dms_tau", "dms_tau", 0},
      {"dms_cr", "dms_cr", 0.5},
      {"dms_alpha_per", "dms_alpha_per", "token"},
  };
  std::vector<Case> out;
  int i = 0;
  for (const auto& [field, message, value] : fields)
    out.push_back({"config_" + std::to_string(i++) + "_" + field,
                   [field = field, value = value](const Env& e) {
                     return generate_with(hf_model(e, [&](J& c) {
                       c[field] = value;
                       if (field.rfind("dms_", 0) == 0 && field != "dms_window_size")
                         c["dms_window_size"] = 4;
                     }));
                   },
                   message});
  out.push_back({"config_not_object",
                 [](const Env& e) {
                   const std::string d = e.copy(asset("hf-tiny/llama"), "model");
                   write_bytes(d + "/config.json", "[1, 2, 3]");
                   return generate_with(d);
                 },
                 "config.json"});
  out.push_back({"config_truncated_json",
                 [](const Env& e) {
                   const std::string d = e.copy(asset("hf-tiny/llama"), "model");
                   write_bytes(d + "/config.json", read_bytes(d + "/config.json").substr(0, 40));
                   return generate_with(d);
                 },
                 "not valid JSON"});
  out.push_back({"config_deep_nesting",
                 [](const Env& e) {
                   const std::string d = e.copy(asset("hf-tiny/llama"), "model");
                   write_bytes(d + "/config.json",
                               std::string(100000, '[') + std::string(100000, ']'));
                   return generate_with(d);
                 },
                 "config.json"});
  // Weights that disagree with the config: dtype, duplicate names, shapes, missing.
  auto with_header = [](const std::function<void(nlohmann::json&)>& edit, bool duplicate) {
    return [edit, duplicate](const Env& e) {
      const std::string d = e.copy(asset("hf-tiny/llama"), "model");
      const std::string bytes = read_bytes(d + "/model.safetensors");
      uint64_t n = 0;
      for (int k = 0; k < 8; ++k) n |= uint64_t(uint8_t(bytes[size_t(k)])) << (8 * k);
      nlohmann::json h = nlohmann::json::parse(bytes.substr(8, n));
      edit(h);
      std::string hs = h.dump();
      if (duplicate) {  // the first tensor's entry once more, at the front
        const auto first = h.begin();
        hs = "{" + nlohmann::json(first.key()).dump() + ":" + first.value().dump() + "," +
             hs.substr(1);
      }
      write_bytes(d + "/model.safetensors", safetensors_bytes(hs, bytes.substr(8 + n)));
      return generate_with(d);
    };
  };
  out.push_back({"weights_int32",
                 with_header(
                     [](nlohmann::json& h) {
                       for (auto& [k, v] : h.items())
                         if (k != "__metadata__") v["dtype"] = "I32";
                     },
                     false),
                 "weights must be floating point"});
  out.push_back({"weights_bool",
                 with_header(
                     [](nlohmann::json& h) {
                       for (auto& [k, v] : h.items())
                         if (k == "model.norm.weight") {
                           v["dtype"] = "BOOL";
                           v["shape"] = {int64_t(v["data_offsets"][1]) -
                                         int64_t(v["data_offsets"][0])};
                         }
                     },
                     false),
                 "weights must be floating point"});
  out.push_back(
      {"weights_duplicate_name", with_header([](nlohmann::json&) {}, true), "appears twice"});
  out.push_back({"weights_missing_tensor",
                 with_header([](nlohmann::json& h) { h.erase("model.norm.weight"); }, false),
                 "missing tensor 'model.norm.weight'"});
  out.push_back({"weights_transposed",
                 with_header(
                     [](nlohmann::json& h) {
                       auto& s = h["model.layers.0.mlp.down_proj.weight"]["shape"];
                       std::swap(s[0], s[1]);
                     },
                     false),
                 "config implies"});
  for (const auto& bad : bad_safetensors_files())
    out.push_back({"safetensors_" + bad.name.substr(0, bad.name.find('.')),
                   [bad](const Env& e) { return "inspect " + quote(e.write(bad.name, bad.bytes)); },
                   bad.error});
  // llama2.c headers: 7 int32 (dim, hidden, layers, heads, kv heads, vocab, seq len).
  const std::vector<std::tuple<std::string, int, int32_t>> header = {
      {"dim_zero", 0, 0},     {"dim_huge", 0, 1 << 30},    {"layers_negative", 2, -1},
      {"heads_zero", 3, 0},   {"kv_heads_over", 4, 1000},  {"vocab_huge", 5, 1 << 30},
      {"seq_len_zero", 6, 0}, {"hidden_huge", 1, 1 << 30}, {"layers_huge", 2, 1 << 20},
  };
  for (const auto& [name, field, value] : header)
    out.push_back({"llama2c_" + name,
                   [field = field, value = value](const Env& e) {
                     std::string b = read_bytes(model_bin());
                     std::memcpy(b.data() + 4 * field, &value, 4);
                     return generate_with(e.write("m.bin", b));
                   },
                   "m.bin"});
  out.push_back({"llama2c_truncated",
                 [](const Env& e) {
                   return generate_with(e.write("m.bin", read_bytes(model_bin()).substr(0, 5000)));
                 },
                 "m.bin"});
  return out;
}

INSTANTIATE_TEST_SUITE_P(Models, Hostile, ::testing::ValuesIn(model_cases()), case_name);

// ---------------------------------------------------------------------------------------
// Token files: llm.c streams with lying headers, ids beyond the vocabulary, HDF5 files that
// point outside themselves or declare more than they hold (made with h5py from the .venv).

std::string python() {
  const fs::path venv = fs::path(DMS_SOURCE_DIR) / ".venv/bin/python";
  return fs::exists(venv) ? venv.string() : "python3";
}

std::string h5py_file(const Env& e, const std::string& name, const std::string& body) {
  const std::string script = e.write(name + ".py",
                                     "import h5py, numpy as np, sys\n"
                                     "path = sys.argv[1]\n" +
                                         body);
  const std::string cmd = python() + " " + quote(script) + " " + quote(e.file(name));
  if (std::system(cmd.c_str()) != 0) throw std::runtime_error("h5py failed: " + script);
  fs::remove(script);
  return e.file(name);
}

std::string llmc(const Env& e, int32_t magic, int32_t version, int32_t count, size_t ids) {
  std::string b(1024, '\0');
  std::memcpy(b.data(), &magic, 4);
  std::memcpy(b.data() + 4, &version, 4);
  std::memcpy(b.data() + 8, &count, 4);
  b += std::string(ids * 2, '\x01');
  return e.write("t.bin", b);
}

std::vector<Case> token_cases() {
  auto train_on = [](const std::function<std::string(const Env&)> make) {
    return [make](const Env& e) {
      return "retrofit --model " + quote(model_bin()) + " --data " + quote(make(e)) + " --out " +
             quote(e.file("out")) + kRunOptions + " --seq-len 16";
    };
  };
  // h5py's files carry no dms seal: trusted, they reach the checks made after HDF5 opens them.
  auto train_trusting = [train_on](const std::function<std::string(const Env&)> make) {
    return [run = train_on(make)](const Env& e) { return run(e) + " --trust-token-files"; };
  };
  // A token file of 'dms data prepare' with `edit` applied to its bytes.
  auto sealed = [](const std::function<void(std::string&)> edit) {
    return [edit](const Env& e) {
      std::string b = read_bytes(tokens());
      edit(b);
      return e.write("t.h5", b);
    };
  };
  const std::string h5_ones =
      "h5py.File(path, 'w').create_dataset('tokens', data=np.ones((4, 16), 'u4'))\n";
  std::vector<Case> out = {
      {"h5_unsealed", train_on([h5_ones](const Env& e) { return h5py_file(e, "t.h5", h5_ones); }),
       "no dms seal"},
      {"h5_unsealed_val",
       [h5_ones](const Env& e) {
         return "retrofit --model " + quote(model_bin()) + " --data " + quote(tokens()) +
                " --val-data " + quote(h5py_file(e, "v.h5", h5_ones)) + " --out " +
                quote(e.file("out")) + kRunOptions;
       },
       "v.h5: no dms seal"},
      {"h5_seal_byte_flipped", train_on(sealed([](std::string& b) { b[b.size() / 2] ^= 0x10; })),
       "do not match the sha256"},
      {"h5_seal_last_byte_flipped", train_on(sealed([](std::string& b) { b.back() ^= 1; })),
       "do not match the sha256"},
      {"h5_seal_truncated", train_on(sealed([](std::string& b) { b.resize(b.size() - 100); })),
       "truncated"},
      {"h5_seal_appended", train_on(sealed([](std::string& b) { b += "more"; })),
       "truncated or appended"},
      {"h5_seal_digest_edited", train_on(sealed([](std::string& b) { b[30] = 'Z'; })), "malformed"},
      {"h5_seal_count_edited", train_on(sealed([](std::string& b) {
         const size_t at = b.find(" bytes ") + 7;
         b.insert(at, "9");
         b.erase(511, 1);  // the block keeps its 512 bytes: one byte less of zero padding
       })),
       "which names"},
      {"h5_seal_block_zeroed",
       train_on(sealed([](std::string& b) { std::fill(b.begin(), b.begin() + 512, '\0'); })),
       "no dms seal"},
      {"eval_damaged_tokens",
       [sealed](const Env& e) {
         const std::string t = sealed([](std::string& b) { b[b.size() - 7] ^= 4; })(e);
         return "eval --model " + quote(export_dir()) + " --data " + quote(t);
       },
       "do not match the sha256"},
      {"inspect_damaged_tokens",
       [sealed](const Env& e) {
         return "inspect " + quote(sealed([](std::string& b) { b[600] ^= 4; })(e));
       },
       "do not match the sha256"},
      // 20,000 rows of 512 tokens in one batch: about 126 GB of logits and caches, refused
      // before anything is allocated (not killed by the kernel when memory runs out).
      {"eval_batch_beyond_memory",
       [](const Env& e) {
         const std::string big = h5py_file(
             e, "big.h5",
             "h5py.File(path, 'w').create_dataset('tokens', data=np.ones((20000, 512), 'u4'))\n");
         return "eval --model " + quote(export_dir()) + " --data " + quote(big) +
                " --trust-token-files --rows 0 --batch 65536";
       },
       "--batch 65536"},
      {"inspect_unsealed_tokens",
       [h5_ones](const Env& e) { return "inspect " + quote(h5py_file(e, "t.h5", h5_ones)); },
       "--trust-token-files"},
      {"llmc_negative_count", train_on([](const Env& e) { return llmc(e, 20240520, 1, -5, 64); }),
       "t.bin"},
      {"llmc_count_past_end",
       train_on([](const Env& e) { return llmc(e, 20240520, 1, 1 << 30, 64); }), "t.bin"},
      {"llmc_bad_version", train_on([](const Env& e) { return llmc(e, 20240520, 9, 64, 64); }),
       "t.bin"},
      {"bin_odd_bytes",
       train_on([](const Env& e) { return e.write("t.bin", std::string(33, '\x01')); }), "t.bin"},
      {"h5_no_tokens_dataset", train_trusting([](const Env& e) {
         return h5py_file(
             e, "t.h5",
             "h5py.File(path, 'w').create_dataset('other', data=np.zeros((4, 16), 'u4'))\n");
       }),
       "missing dataset 'tokens'"},
      {"h5_float_tokens", train_trusting([](const Env& e) {
         return h5py_file(
             e, "t.h5",
             "h5py.File(path, 'w').create_dataset('tokens', data=np.zeros((4, 16), 'f4'))\n");
       }),
       "not integer"},
      {"h5_ids_beyond_vocab", train_trusting([](const Env& e) {
         return h5py_file(
             e, "t.h5",
             "h5py.File(path, 'w').create_dataset('tokens', data=np.full((4, 16), 600, 'u4'))\n");
       }),
       "t.h5"},
      {"h5_negative_ids", train_trusting([](const Env& e) {
         return h5py_file(
             e, "t.h5",
             "h5py.File(path, 'w').create_dataset('tokens', data=np.full((4, 16), -1, 'i8'))\n");
       }),
       "t.h5"},
      {"h5_one_dimensional", train_trusting([](const Env& e) {
         return h5py_file(
             e, "t.h5", "h5py.File(path, 'w').create_dataset('tokens', data=np.zeros(64, 'u4'))\n");
       }),
       "2-D"},
      {"h5_external_storage", train_trusting([](const Env& e) {
         e.write("secret.raw", std::string(4 * 16 * 4, '\x01'));
         return h5py_file(e, "t.h5",
                          "import os\nraw = os.path.join(os.path.dirname(path), 'secret.raw')\n"
                          "h5py.File(path, 'w').create_dataset('tokens', (4, 16), 'u4', "
                          "external=[(raw, 0, 256)])\n");
       }),
       "external files"},
      {"h5_external_link", train_trusting([](const Env& e) {
         h5py_file(e, "other.h5",
                   "h5py.File(path, 'w').create_dataset('tokens', data=np.ones((4, 16), 'u4'))\n");
         return h5py_file(
             e, "t.h5",
             "f = h5py.File(path, 'w')\nf['tokens'] = h5py.ExternalLink('other.h5', '/tokens')\n");
       }),
       "link to elsewhere"},
      {"h5_soft_link", train_trusting([](const Env& e) {
         return h5py_file(
             e, "t.h5",
             "f = h5py.File(path, 'w')\nf.create_dataset('real', data=np.ones((4, 16), 'u4'))\n"
             "f['tokens'] = h5py.SoftLink('/real')\n");
       }),
       "link to elsewhere"},
      {"h5_virtual_dataset", train_trusting([](const Env& e) {
         h5py_file(e, "src.h5",
                   "h5py.File(path, 'w').create_dataset('d', data=np.ones((4, 16), 'u4'))\n");
         return h5py_file(e, "t.h5",
                          "import os\nl = h5py.VirtualLayout(shape=(4, 16), dtype='u4')\n"
                          "l[:] = h5py.VirtualSource(os.path.join(os.path.dirname(path), "
                          "'src.h5'), 'd', shape=(4, 16))\n"
                          "h5py.File(path, 'w').create_virtual_dataset('tokens', l)\n");
       }),
       "virtual dataset"},
      {"h5_declares_2_40_rows", train_trusting([](const Env& e) {
         return h5py_file(
             e, "t.h5",
             "h5py.File(path, 'w').create_dataset('tokens', (2**40, 16), 'u4', chunks=(1, 16))\n");
       }),
       "declares"},
      {"h5_bad_vocab_attribute", train_trusting([](const Env& e) {
         return h5py_file(
             e, "t.h5",
             "f = h5py.File(path, 'w')\nf.create_dataset('tokens', data=np.ones((4, 16), 'u4'))\n"
             "f.attrs['vocab_size'] = 'many'\n");
       }),
       "vocab_size"},
  };
  return out;
}

INSTANTIATE_TEST_SUITE_P(TokenFiles, Hostile, ::testing::ValuesIn(token_cases()), case_name);

// ---------------------------------------------------------------------------------------
// Tokenizer files and TOML option files.

std::vector<Case> tokenizer_and_toml_cases() {
  auto prepare_with = [](const std::function<std::string(const Env&)> make) {
    return [make](const Env& e) {
      return "data prepare --tokenizer " + quote(make(e)) + " --input " +
             quote(asset("tinystories/tinystories_val_prefix.txt")) + " --out " +
             quote(e.file("p.h5"));
    };
  };
  auto hf_tok = [](const std::function<void(nlohmann::json&)>& edit) {
    return [edit](const Env& e) {
      nlohmann::json j = read_json(asset("tokenizers/qwen2/tokenizer.json"));
      edit(j);
      return e.write("tokenizer.json", j.dump());
    };
  };
  std::vector<Case> out = {
      {"tokenizer_json_not_object",
       prepare_with([](const Env& e) { return e.write("tokenizer.json", "42"); }),
       "tokenizer.json"},
      {"tokenizer_json_no_model", prepare_with(hf_tok([](nlohmann::json& j) { j.erase("model"); })),
       "tokenizer.json"},
      {"tokenizer_json_unknown_model",
       prepare_with(hf_tok([](nlohmann::json& j) { j["model"]["type"] = "Unigram2"; })),
       "tokenizer.json"},
      {"tokenizer_json_vocab_not_object",
       prepare_with(hf_tok([](nlohmann::json& j) { j["model"]["vocab"] = 5; })), "tokenizer.json"},
      {"tokenizer_json_bad_merge",
       prepare_with(hf_tok([](nlohmann::json& j) { j["model"]["merges"][0] = 17; })),
       "tokenizer.json"},
      {"tokenizer_json_bad_regex", prepare_with(hf_tok([](nlohmann::json& j) {
         j["pre_tokenizer"] = {{"type", "Split"},
                               {"pattern", {{"Regex", "(unclosed"}}},
                               {"behavior", "Isolated"},
                               {"invert", false}};
       })),
       "tokenizer.json"},
      {"tokenizer_json_added_token_id_negative",
       prepare_with(hf_tok([](nlohmann::json& j) { j["added_tokens"][0]["id"] = -4; })),
       "tokenizer.json"},
      {"spm_model_truncated", prepare_with([](const Env& e) {
         return e.write("t.model", read_bytes(asset("stories260K/tok512.model")).substr(0, 100));
       }),
       "t.model"},
  };
  auto toml = [](const std::string& body) {
    return [body](const Env& e) {
      return "--config " + quote(e.write("run.toml", body)) + " " + retrofit_args(e);
    };
  };
  // Values that parse but are out of range are named by their option, the rest by the file.
  const std::vector<std::tuple<std::string, std::string, std::string>> tomls = {
      {"unknown_key", "[retrofit]\nmax_step = 1\n", "run.toml"},
      {"wrong_type", "[retrofit]\nclip = \"many\"\n", "--clip"},
      {"empty_array", "[retrofit]\nclip = []\n", "--clip"},
      {"out_of_range", "[retrofit]\nlr = -3\n", "--lr"},
      {"flag_not_boolean", "[retrofit]\nresume = \"maybe\"\n", "true/false"},
      {"unknown_section_key", "[retrofit.nested]\nx = 1\n", "run.toml"},
      {"not_toml", "this is = = not toml [[[\n", "run.toml"},
  };
  for (const auto& [name, body, message] : tomls)
    out.push_back({"toml_" + name, toml(body), message});
  out.push_back({"toml_huge_file",
                 [](const Env& e) {
                   return "--config " + quote(e.write("run.toml", std::string(2 << 20, '#'))) +
                          " " + retrofit_args(e);
                 },
                 "run.toml"});
  return out;
}

INSTANTIATE_TEST_SUITE_P(TokenizersAndToml, Hostile,
                         ::testing::ValuesIn(tokenizer_and_toml_cases()), case_name);

// ---------------------------------------------------------------------------------------
// Damaged checkpoints: the newest damaged with an older one intact falls back (resume and
// export succeed from the older one, inspect says "damaged"); every checkpoint damaged is
// exit 2 and nothing changes.

void flip(const std::string& path, uint64_t at, const std::string& bytes) {
  std::string b = read_bytes(path);
  for (size_t k = 0; k < bytes.size() && at + k < b.size(); ++k) b[at + k] = bytes[k];
  write_bytes(path, b);
}

std::string newest(const std::string& run) {
  return run + "/checkpoints/step-000004";
}
std::string older(const std::string& run) {
  return run + "/checkpoints/step-000002";
}

std::vector<Case> checkpoint_cases() {
  using Damage = std::function<void(const std::string& ckpt)>;
  const std::vector<std::pair<std::string, Damage>> damages = {
      {"zeroed_bytes",
       [](const std::string& c) { flip(c + "/state.h5", 2000, std::string(4, '\0')); }},
      {"superblock", [](const std::string& c) { flip(c + "/state.h5", 0, "XXXXXXXX"); }},
      {"truncated_state",
       [](const std::string& c) {
         write_bytes(c + "/state.h5", read_bytes(c + "/state.h5").substr(0, 999));
       }},
      {"optimizer_flipped",
       [](const std::string& c) {
         for (const auto& f : fs::directory_iterator(c))
           if (f.path().filename().string().rfind("optim", 0) == 0)
             flip(f.path().string(), 5000, "\x7f");
       }},
      {"manifest_not_json",
       [](const std::string& c) { write_bytes(c + "/manifest.json", "{\"files\": ["); }},
      {"manifest_missing", [](const std::string& c) { fs::remove(c + "/manifest.json"); }},
      {"manifest_step_negative",
       [](const std::string& c) {
         auto j = read_json(c + "/manifest.json");
         j["step"] = -4;
         write_bytes(c + "/manifest.json", j.dump());
       }},
      {"manifest_world_zero",
       [](const std::string& c) {
         auto j = read_json(c + "/manifest.json");
         j["world_size"] = 0;
         write_bytes(c + "/manifest.json", j.dump());
       }},
      {"manifest_numel_huge",
       [](const std::string& c) {
         auto j = read_json(c + "/manifest.json");
         j["numel"] = int64_t(1) << 50;
         write_bytes(c + "/manifest.json", j.dump());
       }},
      {"manifest_file_escapes",
       [](const std::string& c) {
         auto j = read_json(c + "/manifest.json");
         j["files"][0]["name"] = "../../../etc/passwd";
         write_bytes(c + "/manifest.json", j.dump());
       }},
      {"state_missing", [](const std::string& c) { fs::remove(c + "/state.h5"); }},
  };
  std::vector<Case> out;
  for (const auto& [name, damage] : damages) {
    // Every checkpoint damaged: resume, export and inspect refuse, nothing changes.
    out.push_back({"all_damaged_resume_" + name,
                   [damage = damage](const Env& e) {
                     const std::string run = e.copy(run_dir(), "run");
                     damage(newest(run));
                     damage(older(run));
                     return "retrofit --model " + quote(model_bin()) + " --data " +
                            quote(tokens()) + " --out " + quote(run) + kRunOptions +
                            " --max-steps 6 --resume";
                   },
                   "no usable checkpoint"});
    // Export reads the weights, not the optimizer state: a damaged optimizer shard is no
    // reason to refuse it (DamagedNewestFallsBack covers the rest).
    if (name != "optimizer_flipped")
      out.push_back({"all_damaged_export_" + name,
                     [damage = damage](const Env& e) {
                       const std::string run = e.copy(run_dir(), "run");
                       damage(newest(run));
                       damage(older(run));
                       return "export --run " + quote(run) + " --out " + quote(e.file("x"));
                     },
                     "run"});
    out.push_back({"inspect_damaged_" + name,
                   [damage = damage](const Env& e) {
                     const std::string run = e.copy(run_dir(), "run");
                     damage(newest(run));
                     return "inspect " + quote(newest(run));
                   },
                   "step-000004"});
  }
  return out;
}

INSTANTIATE_TEST_SUITE_P(Checkpoints, Hostile, ::testing::ValuesIn(checkpoint_cases()), case_name);

// Newest damaged, older intact: resume continues from the older one (and says so), export
// writes the older one; the damaged files are left as they were for a human to look at.
TEST(HostileCheckpoints, DamagedNewestFallsBackToTheOlderOne) {
  TempDir tmp;
  Env e{tmp.path};
  const std::string run = e.copy(run_dir(), "run");
  flip(newest(run) + "/state.h5", 2000, std::string(4, '\0'));
  const auto damaged = read_bytes(newest(run) + "/state.h5");
  const CommandResult x =
      run_limited("export --run " + quote(run) + " --out " + quote(e.file("x")));
  ASSERT_EQ(x.exit_code, 0) << x.err;
  EXPECT_NE(x.err.find("step-000004"), std::string::npos) << x.err;
  const auto report = read_json(e.file("x") + "/dms_report.json");
  EXPECT_NE(report.dump().find("step-000002"), std::string::npos);
  const CommandResult r =
      run_limited("retrofit --model " + quote(model_bin()) + " --data " + quote(tokens()) +
                  " --out " + quote(run) + kRunOptions + " --max-steps 6 --resume");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.err.find("resuming from " + older(run)), std::string::npos) << r.err;
  EXPECT_TRUE(fs::exists(run + "/checkpoints/step-000006/manifest.json"));
}

// ---------------------------------------------------------------------------------------
// Runs are never lost: a second retrofit on a run directory in use, --resume with nothing
// to resume, an export over a directory that is not ours.

TEST(HostileRuns, SecondRetrofitOnALockedRunDirectoryIsRefusedAndTheFirstFinishes) {
  TempDir tmp;
  Env e{tmp.path};
  Background first = spawn_dms(retrofit_args(e) + " --max-steps 1500", "", tmp.path, "first");
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  while (!fs::exists(e.file("out/metrics.jsonl")) && std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  for (const char* extra : {"", " --resume"}) {
    const CommandResult r = run_limited(retrofit_args(e) + extra);
    EXPECT_EQ(r.exit_code, 2) << r.err;
    ASSERT_EQ(error_lines(r.err).size(), 1u) << r.err;
    EXPECT_NE(r.err.find("in use by dms retrofit (pid " + std::to_string(first.pid)),
              std::string::npos)
        << r.err;
  }
  EXPECT_EQ(first.wait(280), 0) << first.err();
  EXPECT_TRUE(fs::exists(e.file("out/checkpoints/step-001500/manifest.json")));
}

TEST(HostileRuns, ResumeWithoutACheckpointChangesNothing) {
  TempDir tmp;
  Env e{tmp.path};
  e.write("keep.txt", "mine");
  const std::string not_a_run = e.dir;
  const CommandResult r =
      run_limited("retrofit --model " + quote(model_bin()) + " --data " + quote(tokens()) +
                  " --out " + quote(not_a_run) + kRunOptions + " --resume");
  EXPECT_EQ(r.exit_code, 2) << r.err;
  EXPECT_NE(r.err.find("no usable checkpoint"), std::string::npos) << r.err;
  EXPECT_EQ(read_bytes(e.file("keep.txt")), "mine");
  EXPECT_FALSE(fs::exists(e.file("metrics.jsonl")));
  EXPECT_FALSE(fs::exists(e.file("config.json")));
}

TEST(HostileRuns, ExportNeverReplacesADirectoryThatIsNotOurs) {
  TempDir tmp;
  Env e{tmp.path};
  fs::create_directories(e.file("x"));
  e.write("x/notes.txt", "mine");
  for (const char* force : {"", " --force"}) {
    const CommandResult r =
        run_limited("export --run " + quote(run_dir()) + " --out " + quote(e.file("x")) + force);
    EXPECT_EQ(r.exit_code, 2) << r.err;
    EXPECT_EQ(read_bytes(e.file("x/notes.txt")), "mine");
  }
}

// ---------------------------------------------------------------------------------------
// A full disk (a small tmpfs; CI runs as root): the command fails with its message (exit 1),
// no signal at exit (HDF5's cleanup), nothing half-written under a final name, and what was
// there before is intact.

// Fills the file system of `dir` up to `leave` free bytes.
void fill_disk(const std::string& dir, uint64_t leave) {
  const fs::space_info sp = fs::space(dir);
  if (sp.available > leave)
    write_bytes(dir + "/filler", std::string(size_t(sp.available - leave), 'x'));
}

struct SmallDisk {
  std::string path;
  explicit SmallDisk(const std::string& where, const std::string& size) : path(where) {
    fs::create_directories(path);
    if (::mount("tmpfs", path.c_str(), "tmpfs", 0, ("size=" + size).c_str()) != 0)
      throw std::runtime_error("cannot mount a tmpfs at " + path +
                               " (needs root): " + std::strerror(errno));
  }
  ~SmallDisk() { ::umount2(path.c_str(), MNT_DETACH); }
};

void expect_failed_cleanly(const CommandResult& r) {
  ASSERT_NE(r.exit_code, 137) << "hang\n" << r.err;
  ASSERT_LT(r.exit_code, 128) << "signal death\n" << r.err;
  EXPECT_EQ(r.exit_code, 1) << r.err;
  EXPECT_EQ(error_lines(r.err).size(), 1u) << r.err;
  EXPECT_EQ(r.err.find("finished"), std::string::npos) << r.err;
}

TEST(HostileDisk, DataPrepareOnAFullDisk) {
  TempDir tmp;
  SmallDisk disk(tmp.file("disk"), "48k");
  const CommandResult r =
      run_limited("data prepare --tokenizer " + quote(asset("stories260K/tok512.model")) +
                  " --input " + quote(asset("tinystories/tinystories_val_prefix.txt")) + " --out " +
                  quote(disk.path + "/p.h5") + " --seq-len 64");
  expect_failed_cleanly(r);
  EXPECT_FALSE(fs::exists(disk.path + "/p.h5"));
  for (const auto& f : fs::directory_iterator(disk.path))
    ADD_FAILURE() << "left behind: " << f.path();
}

TEST(HostileDisk, RetrofitCheckpointOnAFullDiskKeepsTheLastGoodOne) {
  TempDir tmp;
  SmallDisk disk(tmp.file("disk"), "9m");
  const std::string run = disk.path + "/run";
  fs::copy(run_dir(), run, fs::copy_options::recursive);
  const auto before = snapshot(run + "/checkpoints/step-000004");
  fill_disk(disk.path, 0);  // not a byte left for the next checkpoint
  const CommandResult r =
      run_limited("retrofit --model " + quote(model_bin()) + " --data " + quote(tokens()) +
                  " --out " + quote(run) + kRunOptions + " --max-steps 6 --resume");
  expect_failed_cleanly(r);
  EXPECT_EQ(snapshot(run + "/checkpoints/step-000004"), before);
  EXPECT_FALSE(fs::exists(run + "/checkpoints/step-000006/manifest.json"));
}

TEST(HostileDisk, ExportOnAFullDiskKeepsThePreviousExport) {
  TempDir tmp;
  SmallDisk disk(tmp.file("disk"), "3m");
  const std::string x = disk.path + "/x";
  fs::copy(export_dir(), x, fs::copy_options::recursive);
  const auto before = snapshot(x);
  fill_disk(disk.path, 64 << 10);  // less than one export is left
  const CommandResult r =
      run_limited("export --run " + quote(run_dir()) + " --out " + quote(x) + " --force");
  expect_failed_cleanly(r);
  EXPECT_EQ(snapshot(x), before);
}

// ---------------------------------------------------------------------------------------
// Signals at seeded random points of a retrofit (startup included): exit 128 + signal (not
// a signal death), every checkpoint written verifies, metrics.jsonl is whole lines, and
// --resume then finishes the run (or, with no checkpoint yet, is refused, changing nothing).

class HostileSignals : public ::testing::TestWithParam<int> {};

TEST_P(HostileSignals, StopAtARandomPointThenResume) {
  const int seed = GetParam();
  std::mt19937 rng{uint32_t(seed)};
  const int sig = rng() % 2 ? SIGTERM : SIGINT;
  const int delay_ms = 100 + int(rng() % 4000);
  std::cout << "seed " << seed << ": signal " << sig << " after " << delay_ms << " ms\n";
  TempDir tmp;
  Env e{tmp.path};
  const std::string args = retrofit_args(e) + " --max-steps 30 --checkpoint-every 3";
  Background bg = spawn_dms(args, "", tmp.path, "run");
  std::this_thread::sleep_for(std::chrono::milliseconds(delay_ms));
  ::kill(bg.pid, sig);
  const int code = bg.wait(120);
  if (code == -1) bg.kill_group(SIGKILL);
  ASSERT_NE(code, -1) << "hang after the signal\n" << bg.err();
  if (code == 0) return;  // finished before the signal arrived
  EXPECT_EQ(code, 128 + sig) << bg.err();
  const std::string ckpts = e.file("out/checkpoints");
  bool any = false;
  if (fs::exists(ckpts))
    for (const auto& c : fs::directory_iterator(ckpts)) {
      if (c.path().filename().string().rfind("step-", 0) != 0) continue;
      any = true;
      const CommandResult r = run_limited("inspect " + quote(c.path().string()));
      EXPECT_EQ(r.exit_code, 0) << c.path() << ": " << r.err;
    }
  if (fs::exists(e.file("out/metrics.jsonl"))) {
    std::ifstream in(e.file("out/metrics.jsonl"));
    for (std::string line; std::getline(in, line);)
      EXPECT_TRUE(nlohmann::json::accept(line)) << line;
  }
  const CommandResult r = run_limited(args + " --resume");
  if (any) {
    EXPECT_EQ(r.exit_code, 0) << r.err;
    EXPECT_TRUE(fs::exists(e.file("out/checkpoints/step-000030/manifest.json")));
  } else {
    EXPECT_EQ(r.exit_code, 2) << r.err;
  }
}

INSTANTIATE_TEST_SUITE_P(Seeds, HostileSignals, ::testing::Range(1, 7));

}  // namespace
}  // namespace dms::test
