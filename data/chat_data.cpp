#include "data/chat_data.h"

#include "common/error.h"
#include "data/chat_template.h"

namespace dms {

namespace {

// Removes <think>...</think> from assistant content, keeping what follows the last
// </think> without its leading newlines (the rule Qwen3's template applies).
std::string without_inline_reasoning(const std::string& content) {
  const size_t end = content.rfind("</think>");
  if (end == std::string::npos) return content;
  const size_t rest = content.find_first_not_of('\n', end + 8);
  return rest == std::string::npos ? "" : content.substr(rest);
}

nlohmann::ordered_json checked_messages(const nlohmann::ordered_json& record,
                                        const std::string& where, Reasoning reasoning) {
  require(record.is_object() && record.contains("messages"), where,
          "a chat record needs a \"messages\" list");
  nlohmann::ordered_json messages = record["messages"];
  require(messages.is_array() && !messages.empty(), where, "\"messages\" must be a non-empty list");
  for (size_t i = 0; i < messages.size(); ++i) {
    auto& m = messages[i];
    const std::string at = where + ": messages[" + std::to_string(i) + "]";
    require(m.is_object(), at, "expected an object with role and content");
    require(m.contains("role") && m["role"].is_string(), at, "no string \"role\"");
    require(!m.contains("content") || m["content"].is_string() || m["content"].is_null(), at,
            "\"content\" must be a string");
    require(!m.contains("reasoning_content") || m["reasoning_content"].is_string() ||
                m["reasoning_content"].is_null(),
            at, "\"reasoning_content\" must be a string");
    if (reasoning == Reasoning::Drop) {
      m.erase("reasoning_content");
      if (m["role"] == "assistant" && m.contains("content") && m["content"].is_string())
        m["content"] = without_inline_reasoning(m["content"].get<std::string>());
    }
  }
  return messages;
}

}  // namespace

ChatRenderer::ChatRenderer(const Tokenizer& tok, Reasoning reasoning,
                           const std::string& date_string)
    : reasoning_(reasoning) {
  const std::string where = tok.config_path.empty() ? tok.path : tok.config_path;
  require(!tok.chat_template().empty(), where,
          "no chat_template (needed by --chat; it is read from tokenizer_config.json or "
          "chat_template.jinja beside the tokenizer)");
  template_ = std::make_shared<const ChatTemplate>(tok.chat_template(), where);
  // What transformers passes besides the messages: the special-token strings.
  for (const char* k : {"bos_token", "eos_token", "unk_token", "pad_token"})
    if (!tok.special_string(k).empty()) context_[k] = tok.special_string(k);
  context_["add_generation_prompt"] = false;
  if (!date_string.empty()) context_["date_string"] = date_string;
}

ChatRenderer::~ChatRenderer() = default;

std::string ChatRenderer::render(const nlohmann::ordered_json& record,
                                 const std::string& where) const {
  nlohmann::ordered_json ctx = context_;
  ctx["messages"] = checked_messages(record, where, reasoning_);
  try {
    return template_->render(ctx);
  } catch (const InputError& e) {
    throw InputError(where + ": " + e.what());
  }
}

}  // namespace dms
