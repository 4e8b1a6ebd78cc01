// Fuzzes the chat-template interpreter (data/chat_template.h, a Jinja2 subset): the input
// is a template, as tokenizer_config.json's chat_template carries it. It is parsed and
// rendered over fixed conversations (plain, with a system prompt and tools, with the
// generation prompt) the way `dms data prepare --chat` renders them.
// Expected rejection: dms::InputError (syntax errors, constructs outside the subset,
// raise_exception, runtime type errors, exceeded limits). The interpreter's documented
// limits (nesting, sizes, evaluation budget) mean no template may run long or allocate
// without bound: a timeout or OOM here is a finding.
#include "data/chat_template.h"
#include "fuzz/fuzz_util.h"

namespace {

const std::vector<nlohmann::ordered_json>& contexts() {
  static const std::vector<nlohmann::ordered_json> cs = [] {
    using J = nlohmann::ordered_json;
    J user = {{"role", "user"}, {"content", "Hello! How are you?"}};
    J assistant = {{"role", "assistant"}, {"content", "Fine, thanks. <think>hm</think> You?"}};
    J system = {{"role", "system"}, {"content", "You are a helpful assistant."}};
    J tool_call = J::parse(R"({"role": "assistant", "content": "", "tool_calls": [
        {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]})");
    J tool = {{"role", "tool"}, {"content", "{\"temp\": 21}"}};
    J tools = J::parse(R"([{"type": "function", "function": {"name": "get_weather",
        "description": "Weather of a city", "parameters": {"type": "object",
        "properties": {"city": {"type": "string"}}}}}])");
    J a = {{"messages", J::array({user, assistant})},
           {"add_generation_prompt", false},
           {"bos_token", "<s>"},
           {"eos_token", "</s>"}};
    J b = {{"messages", J::array({system, user, tool_call, tool, assistant, user})},
           {"add_generation_prompt", true},
           {"tools", tools},
           {"bos_token", "<|begin_of_text|>"},
           {"eos_token", "<|eot_id|>"},
           {"date_string", "26 Jul 2024"}};
    return std::vector<J>{a, b};
  }();
  return cs;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string source(reinterpret_cast<const char*>(data), size);
  std::unique_ptr<dms::ChatTemplate> t;
  if (!fuzz::accepts([&] { t = std::make_unique<dms::ChatTemplate>(source, "fuzz"); })) return 0;
  for (const auto& c : contexts()) fuzz::accepts([&] { t->render(c); });
  return 0;
}
