#include "trainer/train/teacher.h"

#include "checkpoints/load_model.h"
#include "common/error.h"
#include "data/tokenizer.h"

namespace dms {

void require_same_tokenizer(const std::string& teacher_path, int64_t teacher_vocab,
                            const std::string& model_path, int64_t model_vocab) {
  require(teacher_vocab == model_vocab, "--teacher",
          teacher_path + " has a vocabulary of " + std::to_string(teacher_vocab) +
              " tokens, the model " + std::to_string(model_vocab));
  const std::string tt = find_tokenizer(teacher_path, teacher_vocab);
  const std::string tm = find_tokenizer(model_path, model_vocab);
  require(!tt.empty(), "--teacher",
          "no tokenizer beside " + teacher_path + " to check it against the model's");
  require(!tm.empty(), "--teacher",
          "no tokenizer beside " + model_path + " to check the teacher's against");
  const Tokenizer a = load_tokenizer(tt), b = load_tokenizer(tm);
  require(a.vocab_size() == b.vocab_size(), "--teacher",
          tt + " has " + std::to_string(a.vocab_size()) + " tokens, " + tm + " " +
              std::to_string(b.vocab_size()));
  for (int64_t id = 0; id < a.vocab_size(); ++id)
    require(a.piece(id) == b.piece(id), "--teacher",
            "a different tokenizer: id " + std::to_string(id) + " is '" + a.piece(id) + "' in " +
                tt + " but '" + b.piece(id) + "' in " + tm);
}

Model load_teacher(const std::string& teacher_path, const std::string& model_path,
                   const ModelConfig& student, at::ScalarType dtype) {
  const ModelConfig tc = read_model_config(teacher_path);
  require_same_tokenizer(teacher_path, tc.vocab_size, model_path, student.vocab_size);
  LoadOptions lo;
  lo.dtype = dtype;
  Model t = load_model(teacher_path, lo);
  require(!t.dms.enabled, "--teacher",
          teacher_path + " has DMS predictors (use an original model)");
  for (auto& [name, w] : named_weights(t)) w->requires_grad_(false);
  return t;
}

}  // namespace dms
