// karpathy/llama2.c legacy checkpoints (.bin, "version 0"): a header of 7 int32
// (dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len; a negative
// vocab_size means a separate classifier follows), then fp32 weights in the order
// token_embedding, rms_att, wq, wk, wv, wo, rms_ffn, w1, w2, w3, rms_final,
// freq_cis_real, freq_cis_imag[, wcls].
#pragma once
#include <string>

#include "model/transformer.h"

namespace dms {

// Header only; InputError when it is implausible or the file size disagrees with it.
ModelConfig read_llama2c_config(const std::string& path);

// Weights, with wq/wk rows permuted from llama2.c's interleaved-pair RoPE layout
// to the rotate-half layout our (HF) RoPE uses, so logits are identical.
Model load_llama2c(const std::string& path);

}  // namespace dms
