#include "checkpoints/llama2c.h"

#include <cstring>

#include "common/mapped_file.h"
#include "common/error.h"

namespace dms {

namespace {

constexpr uint64_t kHeaderBytes = 7 * 4;

struct Layout {
  ModelConfig config;
  uint64_t expected_bytes = 0;
};

// Parses the header and computes the exact file size it implies.
Layout parse_header(const MappedFile& f, const std::string& path) {
  require(f.size >= kHeaderBytes, path,
          "truncated: " + std::to_string(f.size) + " bytes, a llama2.c header needs 28");
  int32_t h[7];
  std::memcpy(h, f.data, sizeof(h));
  const int64_t dim = h[0], hidden = h[1], n_layers = h[2], n_heads = h[3], n_kv = h[4];
  const int64_t seq_len = h[6];
  const bool shared = h[5] > 0;
  const int64_t vocab = h[5] > 0 ? h[5] : -int64_t(h[5]);
  auto sane = [&](int64_t v, int64_t hi, const char* name) {
    require(v > 0 && v <= hi, path,
            std::string("header field ") + name + " = " + std::to_string(v) +
                " is not plausible (is this a llama2.c .bin?)");
  };
  sane(dim, 1 << 16, "dim");
  sane(hidden, 1 << 18, "hidden_dim");
  sane(n_layers, 1024, "n_layers");
  sane(n_heads, 1024, "n_heads");
  sane(n_kv, 1024, "n_kv_heads");
  sane(vocab, 1 << 22, "vocab_size");
  sane(seq_len, 1 << 22, "seq_len");
  require(dim % n_heads == 0 && n_heads % n_kv == 0, path,
          "header heads do not divide dim / each other");

  Layout out;
  out.config = llama_config(vocab, dim, hidden, n_layers, n_heads, n_kv, seq_len);
  ModelConfig& c = out.config;
  c.rms_eps = 1e-5;  // llama2.c's run.c
  c.rope_theta = 10000.0;
  c.tied_embeddings = shared;
  c.bos_id = 1;
  c.eos_id = 2;
  validate_config(c, path);

  const uint64_t D = uint64_t(dim), L = uint64_t(n_layers), kv = uint64_t(n_kv * c.head_dim);
  uint64_t floats = vocab * D                                    // token embedding
                    + L * D                                      // rms_att
                    + L * D * D                                  // wq
                    + 2 * L * kv * D                             // wk, wv
                    + L * D * D                                  // wo
                    + L * D                                      // rms_ffn
                    + 3 * L * D * uint64_t(hidden)               // w1, w2, w3
                    + D                                          // rms_final
                    + uint64_t(seq_len) * uint64_t(c.head_dim);  // freq_cis real + imag
  if (!shared) floats += vocab * D;
  out.expected_bytes = kHeaderBytes + 4 * floats;
  require(f.size == out.expected_bytes, path,
          "file is " + std::to_string(f.size) + " bytes but its header implies " +
              std::to_string(out.expected_bytes) + " (truncated or not a llama2.c v0 export)");
  return out;
}

// Interleaved pairs (2i, 2i+1) per head -> rotate-half (i, i + d/2).
// w [h*d, D] -> [h*d, D]
at::Tensor interleaved_to_rotate_half(const at::Tensor& w, int64_t heads, int64_t d) {
  const int64_t D = w.size(1);
  return w.view({heads, d / 2, 2, D}).transpose(1, 2).reshape({heads * d, D}).contiguous();
}

}  // namespace

ModelConfig read_llama2c_config(const std::string& path) {
  return parse_header(*map_file(path), path).config;
}

Model load_llama2c(const std::string& path) {
  auto f = map_file(path);
  Layout lay = parse_header(*f, path);
  const ModelConfig& c = lay.config;
  Model m = make_model(c);
  const float* p = reinterpret_cast<const float*>(f->data + kHeaderBytes);
  // Next `shape` floats of the file, copied (the mapping is unaligned-safe via memcpy).
  auto take = [&](at::IntArrayRef shape) {
    at::Tensor t = at::empty(shape, at::kFloat);
    std::memcpy(t.data_ptr<float>(), p, size_t(t.numel()) * 4);
    p += t.numel();
    return t;
  };
  const int64_t L = c.n_layers, D = c.hidden_size, I = c.intermediate_size;
  const int64_t d = c.head_dim, kv = c.n_kv_heads * d;
  m.embed = take({c.vocab_size, D});
  at::Tensor rms_att = take({L, D});
  at::Tensor wq = take({L, D, D});
  at::Tensor wk = take({L, kv, D});
  at::Tensor wv = take({L, kv, D});
  at::Tensor wo = take({L, D, D});
  at::Tensor rms_ffn = take({L, D});
  at::Tensor w1 = take({L, I, D});
  at::Tensor w2 = take({L, D, I});
  at::Tensor w3 = take({L, I, D});
  m.final_norm = take({D});
  p += c.max_position * d;  // freq_cis_real/imag: we compute RoPE ourselves
  m.lm_head = c.tied_embeddings ? m.embed : take({c.vocab_size, D});
  for (int64_t l = 0; l < L; ++l) {
    LayerWeights& w = m.layers[size_t(l)];
    w.attn_norm = rms_att[l].clone();
    w.wq = interleaved_to_rotate_half(wq[l], c.n_heads, d);
    w.wk = interleaved_to_rotate_half(wk[l], c.n_kv_heads, d);
    w.wv = wv[l].clone();
    w.wo = wo[l].clone();
    w.mlp_norm = rms_ffn[l].clone();
    w.w_gate = w1[l].clone();
    w.w_down = w2[l].clone();
    w.w_up = w3[l].clone();
  }
  return m;
}

}  // namespace dms
