// ModelConfig: everything the transformer needs to know about an architecture.
// Filled by checkpoints/ from an HF config.json or a llama2.c header.
#pragma once
#include <cstdint>
#include <string>

namespace dms {

struct RopeScaling {
  std::string type;  // "" (none) or "llama3"
  double factor = 1.0;
  double low_freq_factor = 1.0;
  double high_freq_factor = 4.0;
  int64_t original_max_position = 8192;
};

struct ModelConfig {
  std::string family;        // llama | qwen2 | qwen3 | mistral
  std::string architecture;  // e.g. LlamaForCausalLM
  int64_t vocab_size = 0;
  int64_t hidden_size = 0;        // D
  int64_t intermediate_size = 0;  // MLP hidden
  int64_t n_layers = 0;           // L
  int64_t n_heads = 0;            // H (query heads)
  int64_t n_kv_heads = 0;         // K (key/value heads), H % K == 0
  int64_t head_dim = 0;           // d (may differ from D / H, e.g. Qwen3)
  int64_t max_position = 0;
  double rms_eps = 1e-6;
  double rope_theta = 10000.0;
  RopeScaling rope_scaling;
  bool tied_embeddings = false;  // lm_head shares the token embedding
  bool qkv_bias = false;         // Qwen2; Llama with attention_bias
  bool o_bias = false;           // Llama with attention_bias
  bool mlp_bias = false;         // Llama with mlp_bias
  bool qk_norm = false;          // Qwen3: per-head RMSNorm on q and k before RoPE
  int64_t sliding_window = 0;    // 0 = full attention; else keys with i - j < window
  int64_t bos_id = -1;
  int64_t eos_id = -1;
  std::string dtype = "float32";  // storage dtype the source declares
};

// A Llama config from its sizes (head_dim = hidden / heads, untied head), for the
// synthetic models of tests and benchmarks.
ModelConfig llama_config(int64_t vocab, int64_t hidden, int64_t intermediate, int64_t layers,
                         int64_t heads, int64_t kv_heads, int64_t max_position);

// Throws InputError("<source>: ...") when the numbers cannot describe a model.
void validate_config(const ModelConfig& c, const std::string& source);

// Parameter count implied by the config (embedding counted once when tied).
int64_t parameter_count(const ModelConfig& c);

// Multi-line human description used by `dms inspect`.
std::string describe_config(const ModelConfig& c);

}  // namespace dms
