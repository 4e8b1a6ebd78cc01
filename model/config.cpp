#include "model/config.h"

#include <cmath>
#include <sstream>
#include <utility>

#include "common/error.h"

namespace dms {

void validate_config(const ModelConfig& c, const std::string& source) {
  auto positive = [&](int64_t v, const char* name) {
    require(v > 0, source, std::string(name) + " must be positive, got " + std::to_string(v));
  };
  positive(c.vocab_size, "vocab_size");
  positive(c.hidden_size, "hidden_size");
  positive(c.intermediate_size, "intermediate_size");
  positive(c.n_layers, "num_hidden_layers");
  positive(c.n_heads, "num_attention_heads");
  positive(c.n_kv_heads, "num_key_value_heads");
  positive(c.head_dim, "head_dim");
  require(c.n_heads % c.n_kv_heads == 0, source,
          "num_attention_heads (" + std::to_string(c.n_heads) +
              ") is not a multiple of num_key_value_heads (" + std::to_string(c.n_kv_heads) + ")");
  require(c.head_dim % 2 == 0, source, "head_dim must be even for RoPE");
  positive(c.max_position, "max_position_embeddings");
  require(std::isfinite(c.rms_eps) && c.rms_eps > 0 && c.rms_eps < 1, source,
          "rms_norm_eps must be in (0, 1)");
  require(std::isfinite(c.rope_theta) && c.rope_theta > 0, source,
          "rope_theta must be a positive number");
  require(c.sliding_window >= 0, source, "sliding_window must not be negative");
  if (c.rope_scaling.type == "llama3") {
    const RopeScaling& r = c.rope_scaling;
    require(std::isfinite(r.factor) && std::isfinite(r.low_freq_factor) &&
                std::isfinite(r.high_freq_factor) && r.factor > 0 && r.low_freq_factor > 0 &&
                r.high_freq_factor > r.low_freq_factor && r.original_max_position > 0,
            source, "rope_scaling factors are inconsistent");
  }
  for (auto [id, name] : {std::pair{c.bos_id, "bos_token_id"}, std::pair{c.eos_id, "eos_token_id"}})
    require(id >= -1 && id < (int64_t(1) << 31), source,
            std::string(name) + " " + std::to_string(id) + " is not a token id");
  require(c.rope_scaling.type.empty() || c.rope_scaling.type == "llama3", source,
          "unsupported rope_scaling type '" + c.rope_scaling.type + "'");
  // Guard against absurd sizes in an untrusted config (overflow of products).
  const int64_t limit = int64_t(1) << 24;
  require(c.vocab_size < limit && c.hidden_size < limit && c.intermediate_size < limit &&
              c.n_layers < 4096 && c.n_heads < 4096 && c.head_dim < 65536 &&
              c.max_position <= limit && c.sliding_window <= limit,
          source, "implausibly large dimensions");
}

int64_t parameter_count(const ModelConfig& c) {
  const int64_t D = c.hidden_size, d = c.head_dim, H = c.n_heads, K = c.n_kv_heads;
  const int64_t I = c.intermediate_size;
  int64_t attn = D * H * d + 2 * D * K * d + H * d * D;
  if (c.qkv_bias) attn += H * d + 2 * K * d;
  if (c.o_bias) attn += D;
  if (c.qk_norm) attn += 2 * d;
  int64_t mlp = 3 * D * I + (c.mlp_bias ? 2 * I + D : 0);
  int64_t layer = attn + mlp + 2 * D;
  int64_t total = c.vocab_size * D + c.n_layers * layer + D;
  if (!c.tied_embeddings) total += c.vocab_size * D;
  return total;
}

static std::string with_commas(int64_t v) {
  std::string s = std::to_string(v);
  for (int i = int(s.size()) - 3; i > 0; i -= 3) s.insert(size_t(i), ",");
  return s;
}

std::string describe_config(const ModelConfig& c) {
  std::ostringstream o;
  o << "family:          " << c.family << " (" << c.architecture << ")\n"
    << "layers:          " << c.n_layers << "\n"
    << "heads:           " << c.n_heads << " query, " << c.n_kv_heads << " key/value (group "
    << c.n_heads / c.n_kv_heads << ")\n"
    << "head_dim:        " << c.head_dim << "\n"
    << "hidden:          " << c.hidden_size << " (MLP " << c.intermediate_size << ")\n"
    << "vocab:           " << c.vocab_size << "\n"
    << "parameters:      " << with_commas(parameter_count(c)) << "\n"
    << "tied lm_head:    " << (c.tied_embeddings ? "yes" : "no") << "\n"
    << "rope:            theta " << c.rope_theta;
  if (!c.rope_scaling.type.empty())
    o << ", scaling " << c.rope_scaling.type << " (factor " << c.rope_scaling.factor << ", low "
      << c.rope_scaling.low_freq_factor << ", high " << c.rope_scaling.high_freq_factor
      << ", original context " << c.rope_scaling.original_max_position << ")";
  o << "\n"
    << "context:         " << c.max_position << "\n"
    << "sliding window:  " << (c.sliding_window > 0 ? std::to_string(c.sliding_window) : "none")
    << "\n"
    << "attention bias:  " << (c.qkv_bias ? "q/k/v" : "none") << (c.o_bias ? " + o" : "") << "\n"
    << "q/k norm:        " << (c.qk_norm ? "yes" : "no") << "\n"
    << "rms eps:         " << c.rms_eps << "\n"
    << "bos/eos:         " << c.bos_id << " / " << c.eos_id << "\n";
  return o.str();
}

ModelConfig llama_config(int64_t vocab, int64_t hidden, int64_t intermediate, int64_t layers,
                         int64_t heads, int64_t kv_heads, int64_t max_position) {
  ModelConfig c;
  c.family = "llama";
  c.architecture = "LlamaForCausalLM";
  c.vocab_size = vocab;
  c.hidden_size = hidden;
  c.intermediate_size = intermediate;
  c.n_layers = layers;
  c.n_heads = heads;
  c.n_kv_heads = kv_heads;
  c.head_dim = hidden / heads;
  c.max_position = max_position;
  return c;
}

}  // namespace dms
