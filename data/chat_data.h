// Chat conversations as training text: a JSON record {"messages": [{"role", "content",
// optional "reasoning_content"}, ...]} rendered with the tokenizer's own chat template, as
// transformers' apply_chat_template(messages, tokenize=False) renders it.
#pragma once
#include <memory>
#include <nlohmann/json.hpp>
#include <string>

#include "data/tokenizer.h"

namespace dms {

class ChatTemplate;

enum class Reasoning {
  Keep,  // reasoning_content goes to the template, which decides where it appears
  Drop,  // reasoning_content and inline <think>...</think> are removed from every message
};

class ChatRenderer {
 public:
  // InputError naming the tokenizer when it has no chat template, or the template is
  // outside the supported Jinja subset. date_string: "" leaves it undefined (Llama 3's
  // template then prints its fallback, "26 Jul 2024": reproducible data).
  ChatRenderer(const Tokenizer& tok, Reasoning reasoning, const std::string& date_string);
  ~ChatRenderer();
  // The text of one record; InputError "<where>: ..." for a malformed record.
  std::string render(const nlohmann::ordered_json& record, const std::string& where) const;

 private:
  std::shared_ptr<const ChatTemplate> template_;
  nlohmann::ordered_json context_;  // special-token strings, add_generation_prompt, date
  Reasoning reasoning_;
};

}  // namespace dms
