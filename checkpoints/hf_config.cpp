#include "checkpoints/hf_config.h"

#include <cmath>
#include <map>

#include "common/error.h"
#include "common/json_file.h"

namespace dms {

namespace {

const std::map<std::string, std::string> kFamilies = {
    {"LlamaForCausalLM", "llama"},
    {"Qwen2ForCausalLM", "qwen2"},
    {"Qwen3ForCausalLM", "qwen3"},
    {"MistralForCausalLM", "mistral"},
};

struct Reader {
  const nlohmann::json& j;
  const std::string& src;

  bool has(const char* key) const { return j.contains(key) && !j[key].is_null(); }
  int64_t integer(const char* key) const {
    require(has(key), src, std::string("missing required field '") + key + "'");
    require(j[key].is_number_integer(), src, std::string("field '") + key + "' is not an integer");
    return j[key].get<int64_t>();
  }
  int64_t integer_or(const char* key, int64_t fallback) const {
    return has(key) ? integer(key) : fallback;
  }
  double number_or(const char* key, double fallback) const {
    if (!has(key)) return fallback;
    require(j[key].is_number(), src, std::string("field '") + key + "' is not a number");
    return j[key].get<double>();
  }
  bool boolean_or(const char* key, bool fallback) const {
    if (!has(key)) return fallback;
    require(j[key].is_boolean(), src, std::string("field '") + key + "' is not true/false");
    return j[key].get<bool>();
  }
  // Token ids may be an int, null, or a list (Llama 3.1 lists several EOS ids).
  int64_t token_id(const char* key) const {
    if (!has(key)) return -1;
    const auto& v = j[key];
    if (v.is_array()) {
      if (v.empty()) return -1;
      require(v[0].is_number_integer(), src, std::string("field '") + key + "' is not a token id");
      return v[0].get<int64_t>();
    }
    require(v.is_number_integer(), src, std::string("field '") + key + "' is not a token id");
    return v.get<int64_t>();
  }
};

// The architecture name, from 'architectures' or else 'model_type'; sets architecture and family.
void read_architecture(const Reader& r, ModelConfig& c) {
  const nlohmann::json& j = r.j;
  const std::string& source = r.src;
  std::string arch;
  if (r.has("architectures")) {
    require(j["architectures"].is_array() && !j["architectures"].empty() &&
                j["architectures"][0].is_string(),
            source, "'architectures' must be a list of names");
    arch = j["architectures"][0].get<std::string>();
  }
  // Our exports name the remote-code class; the family is the model_type's.
  if ((arch.empty() || arch == "DmsForCausalLM") && r.has("model_type") &&
      j["model_type"].is_string()) {
    arch.clear();
    for (const auto& [a, fam] : kFamilies)
      if (fam == j["model_type"].get<std::string>()) arch = a;
    require(!arch.empty(), source,
            "unknown model_type '" + j["model_type"].get<std::string>() + "'");
  }
  require(!arch.empty(), source, "no 'architectures' or 'model_type' field");
  auto fam = kFamilies.find(arch);
  require(fam != kFamilies.end(), source,
          "unknown architecture '" + arch +
              "' (supported: LlamaForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM, "
              "MistralForCausalLM)");
  c.architecture = arch;
  c.family = fam->second;
}

// Sizes, norms, RoPE base, embeddings tying, special tokens and dtype.
void read_dimensions(const Reader& r, ModelConfig& c) {
  const nlohmann::json& j = r.j;
  c.vocab_size = r.integer("vocab_size");
  c.hidden_size = r.integer("hidden_size");
  c.intermediate_size = r.integer("intermediate_size");
  c.n_layers = r.integer("num_hidden_layers");
  c.n_heads = r.integer("num_attention_heads");
  c.n_kv_heads = r.integer_or("num_key_value_heads", c.n_heads);
  require(c.n_heads > 0, r.src, "num_attention_heads must be positive");
  c.head_dim = r.integer_or("head_dim", c.hidden_size / c.n_heads);
  c.max_position = r.integer_or("max_position_embeddings", 2048);
  c.rms_eps = r.number_or("rms_norm_eps", 1e-6);
  c.rope_theta = r.number_or("rope_theta", 10000.0);
  c.tied_embeddings = r.boolean_or("tie_word_embeddings", false);
  c.bos_id = r.token_id("bos_token_id");
  c.eos_id = r.token_id("eos_token_id");
  if (r.has("torch_dtype") && j["torch_dtype"].is_string()) c.dtype = j["torch_dtype"];
  if (r.has("dtype") && j["dtype"].is_string()) c.dtype = j["dtype"];
}

// What differs by family: the activation, the biases, QK norm and the sliding window.
void read_family_options(const Reader& r, ModelConfig& c) {
  const nlohmann::json& j = r.j;
  if (r.has("hidden_act")) {
    require(j["hidden_act"] == "silu", r.src,
            "unsupported hidden_act '" + j["hidden_act"].dump() + "' (only silu)");
  }
  const bool attention_bias = r.boolean_or("attention_bias", false);
  if (c.family == "llama") {
    c.qkv_bias = c.o_bias = attention_bias;
    c.mlp_bias = r.boolean_or("mlp_bias", false);
  } else if (c.family == "qwen2") {
    c.qkv_bias = true;
  } else if (c.family == "qwen3") {
    c.qkv_bias = c.o_bias = attention_bias;
    c.qk_norm = true;
  }

  if (c.family == "mistral") {
    c.sliding_window = r.integer_or("sliding_window", 0);
  } else if (c.family == "qwen2" || c.family == "qwen3") {
    require(!r.boolean_or("use_sliding_window", false), r.src,
            "use_sliding_window=true (per-layer sliding windows) is not supported");
  }
}

void read_rope_scaling(const Reader& r, ModelConfig& c) {
  if (!r.has("rope_scaling")) return;
  const std::string& source = r.src;
  const auto& s = r.j["rope_scaling"];
  require(s.is_object(), source, "rope_scaling must be an object or null");
  std::string type = s.value("rope_type", s.value("type", std::string()));
  if (type == "llama3") {
    c.rope_scaling.type = type;
    Reader sr{s, source};
    c.rope_scaling.factor = sr.number_or("factor", 8.0);
    c.rope_scaling.low_freq_factor = sr.number_or("low_freq_factor", 1.0);
    c.rope_scaling.high_freq_factor = sr.number_or("high_freq_factor", 4.0);
    c.rope_scaling.original_max_position = sr.integer_or("original_max_position_embeddings", 8192);
    require(c.rope_scaling.factor > 0 &&
                c.rope_scaling.high_freq_factor > c.rope_scaling.low_freq_factor,
            source, "rope_scaling factors are inconsistent");
  } else {
    require(type == "default" || type.empty(), source,
            "unsupported rope_scaling type '" + type + "' (supported: llama3)");
  }
}

}  // namespace

ModelConfig parse_hf_config(const nlohmann::json& j, const std::string& source) {
  require(j.is_object(), source, "config is not a JSON object");
  Reader r{j, source};
  ModelConfig c;
  read_architecture(r, c);
  read_dimensions(r, c);
  read_family_options(r, c);
  read_rope_scaling(r, c);
  validate_config(c, source);
  return c;
}

// The official configuration's defaults (its Qwen3ConfigDMS) apply to absent fields:
// alpha scale 100, offset 5, tau 0.1, dms_separate_alpha false (the query-neuron
// predictor), per head, dms_cr 8.
DmsConfig parse_dms_config(const nlohmann::json& j, const std::string& source) {
  DmsConfig d;
  if (!j.is_object() || !j.contains("dms_window_size")) return d;
  Reader r{j, source};
  d.enabled = true;
  d.window = r.integer("dms_window_size");
  d.scale = r.number_or("dms_alpha_scale", d.scale);
  d.offset = r.number_or("dms_initial_alpha_offset", d.offset);
  d.tau = r.number_or("dms_tau", d.tau);
  d.target_cr = r.number_or("dms_cr", d.target_cr);
  d.predictor = r.boolean_or("dms_separate_alpha", false) ? DmsPredictor::adapter
                                                          : DmsPredictor::query_neuron;
  require(!r.has("dms_alpha_per") || j["dms_alpha_per"].is_string(), source,
          "dms_alpha_per must be 'head' or 'layer'");
  const std::string per = r.has("dms_alpha_per") ? j["dms_alpha_per"].get<std::string>() : "head";
  require(per == "head" || per == "layer", source, "dms_alpha_per must be 'head' or 'layer'");
  d.per_layer = per == "layer";
  require(d.window >= 0 && d.window <= (int64_t(1) << 24), source,
          "dms_window_size must be 0 .. 16777216");
  require(std::isfinite(d.tau) && d.tau > 0, source, "dms_tau must be positive");
  require(std::isfinite(d.scale) && std::isfinite(d.offset), source,
          "dms_alpha_scale and dms_initial_alpha_offset must be finite numbers");
  require(std::isfinite(d.target_cr) && d.target_cr >= 1, source, "dms_cr must be at least 1");
  require(!r.boolean_or("dms_disable_eviction", false), source,
          "dms_disable_eviction is true: this export is meant to run as the plain base model "
          "(remove the dms_* fields to load it so)");
  return d;
}

// The official paged cache's block: its configuration requires 0 < block < window. The
// largest power of two below the window, at most the official default of 256.
int64_t paged_block_size(int64_t window) {
  int64_t b = 1;
  while (b * 2 < window && b * 2 <= 256) b *= 2;
  return b;
}

nlohmann::json dms_config_json(const DmsConfig& d) {
  const bool integral = d.target_cr == std::floor(d.target_cr) && d.target_cr < 1e9;
  return {{"dms_window_size", d.window},
          {"dms_alpha_scale", d.scale},
          {"dms_initial_alpha_offset", d.offset},
          {"dms_tau", d.tau},
          {"dms_separate_alpha", d.predictor == DmsPredictor::adapter},
          {"dms_alpha_per", d.per_layer ? "layer" : "head"},
          {"dms_cr", integral ? nlohmann::json(int64_t(d.target_cr)) : nlohmann::json(d.target_cr)},
          {"dms_paged_attention_block_size", paged_block_size(d.window)},
          {"dms_disable_eviction", false},
          {"dms_compile_limit", 72},
          {"dms_manual_inference_mode", false},
          {"dms_chunked_prefill", nullptr},
          {"dms_preallocate_for_tokens", 4096}};
}

ModelConfig read_hf_config(const std::string& path) {
  return parse_hf_config(read_json_file(path), path);
}

}  // namespace dms
