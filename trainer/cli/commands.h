// The typed configs of the other commands (eval, generate, data prepare/sample, export),
// each declared once in its field table (options.h): command line, TOML and checks.
#pragma once
#include <string>
#include <vector>

#include "data/prepare.h"
#include "model/kv_cache.h"
#include "trainer/config/options.h"
#include "trainer/config/retrofit_config.h"
#include "trainer/eval/evaluate.h"
#include "trainer/eval/export_run.h"

namespace dms {

struct EvalConfig {
  std::string model, original, data, json;
  std::string dump_logits;  // safetensors of tokens, logits (and DMS decisions) per position
  CachePolicy policy = CachePolicy::dms;
  int64_t budget = 0;
  bool match_budget = false, compare = false;
  bool curve = false;  // --model is a retrofit run: its kept checkpoints (trainer/eval/curve.h)
  EvalOptions opts;
  int64_t threads = 0;
  bool trust_token_files = false;  // read --data without its seal (data/token_file.h)
};
const std::vector<Field<EvalConfig>>& eval_fields();

struct GenerateConfig {
  std::string model, tokenizer, prompt, prompt_ids;
  int64_t steps = 256;
  double temperature = 0.0, top_p = 0.9;
  uint64_t seed = 42;
  int64_t threads = 0;
  std::string policy;  // "": dms for a DMS model, none otherwise
  int64_t budget = 0, sinks = 4;
};
const std::vector<Field<GenerateConfig>>& generate_fields();

// --input (a list of files) is registered beside the table.
const std::vector<Field<PrepareOptions>>& prepare_fields();

struct SampleConfig {
  std::string model;
  SampleOptions opts;
};
const std::vector<Field<SampleConfig>>& sample_fields();

const std::vector<Field<ExportRequest>>& export_fields();

// dms plan: a model (or its config.json) and the options of `dms retrofit` that decide a
// step's memory, taken from its table (nested fields: the same names, values and checks).
struct PlanConfig {
  std::string model;
  int64_t seq_len = 0;
  int64_t world_size = 1;
  std::string json;
  RetrofitConfig retrofit;  // only the rows plan_fields() takes are set
};
const std::vector<Field<PlanConfig>>& plan_fields();

}  // namespace dms
