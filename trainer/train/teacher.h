// The teacher of a full-weight retrofit: a frozen model run without autograd, by default
// the base model itself, or (--teacher) another model that speaks the same tokenizer.
#pragma once
#include <string>

#include "model/transformer.h"

namespace dms {

// Loads `teacher_path` as a frozen teacher for a student retrofitted from `model_path`:
// InputError (naming --teacher) unless both have the same vocabulary size and tokenizers
// that map every id to the same piece (both tokenizers must be found beside the models).
// The teacher may differ in every other respect (depth, width, family). Loaded in `dtype`
// (bf16 halves it), every weight without grad.
Model load_teacher(const std::string& teacher_path, const std::string& model_path,
                   const ModelConfig& student, at::ScalarType dtype);

// The same check on its own (what load_teacher runs before loading any weights).
void require_same_tokenizer(const std::string& teacher_path, int64_t teacher_vocab,
                            const std::string& model_path, int64_t model_vocab);

}  // namespace dms
