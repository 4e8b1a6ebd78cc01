// One entry point for every model source: an HF directory (config.json +
// model.safetensors or a sharded index), a bare config.json (config only), or a
// llama2.c .bin.
#pragma once
#include <map>
#include <string>

#include "model/transformer.h"

namespace dms {

struct LoadOptions {
  // Weights are converted to this dtype on load (BF16/F16 files upcast to fp32 by default).
  at::ScalarType dtype = at::kFloat;
  // Keep each file's own dtype instead (all weights must share it).
  bool keep_dtype = false;
};

enum class ModelSource { hf_directory, hf_config_only, llama2c };

// What a path holds, judged from its name and contents; InputError if nothing we read.
ModelSource detect_model_source(const std::string& path);

ModelConfig read_model_config(const std::string& path);
Model load_model(const std::string& path, const LoadOptions& opts = {});

// Tensor count per stored dtype ("F32" -> 201), read from headers only.
std::map<std::string, int64_t> stored_dtypes(const std::string& path);

// The tokenizer next to a model: tokenizer.json, tok<vocab>.model (llama2.c),
// tokenizer.model, or vocab.json (+ merges.txt) in its folder. Empty when none is found.
std::string find_tokenizer(const std::string& model_path, int64_t vocab_size);

}  // namespace dms
