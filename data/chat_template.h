// Hugging Face chat templates: an interpreter for the subset of Jinja2 they use, so that
// `dms data prepare --chat` renders conversations exactly as transformers' apply_chat_template.
//
// The environment mirrored is transformers 4.57's: jinja2 3.1 ImmutableSandboxedEnvironment with
// trim_blocks, lstrip_blocks and the loopcontrols extension, its own `tojson` filter (json.dumps,
// ensure_ascii=False) and the `raise_exception` global. `strftime_now` is deliberately absent, so
// templates take their documented fallback date (callers may put `date_string` in the context).
//
// Supported subset (outside it: tags, filters and tests are rejected, named, when the template is
// constructed; unknown functions and methods when they are called):
//  - Syntax: {{ }}, {% %}, {# #}, `-` and `+` whitespace control, trim_blocks, lstrip_blocks,
//    \r\n -> \n and the dropped final newline of the source, as jinja2 does.
//  - Tags: if/elif/else, for (one or several targets, `if` filter, else, loop.*, break, continue),
//    set (name, tuple of names, namespace attribute), generation (renders its body).
//    Rejected: macro, call, block, extends, include, import, from, filter, with, raw, set blocks,
//    recursive loops.
//  - Expressions: literals, lists, dicts, tuples, attribute/item access, slices, calls with
//    positional and keyword arguments, and/or/not, comparisons (chained), in/not in, is [not]
//    tests, ~, + - * / // % **, unary -, filters, conditional expressions, with jinja2's
//    precedence.
//  - Filters: abs capitalize count d default e escape first float indent int items join last
//    length list lower map reject rejectattr replace reverse round safe select selectattr sort
//    string title tojson trim unique upper.
//  - Tests: boolean callable defined divisibleby eq equalto even false float ge greaterthan gt in
//    integer iterable le lessthan lower lt mapping ne none number odd sameas sequence string true
//    undefined upper (and ==, !=, <, <=, >, >=).
//  - Methods: str startswith endswith split rsplit strip lstrip rstrip lower upper replace title
//    capitalize find rfind count join splitlines; dict items keys values get. Mutating methods
//    (list.append, dict.update, ...) fail as in the immutable sandbox.
//  - Globals: namespace, range (at most 100000 items, as the sandbox), dict, raise_exception.
// Values print as Python does (True, None, 1.0, ['a', 1], {'k': 'v'}). Known gaps, each an error
// rather than a different output unless noted: integers are 64-bit, dict keys must be strings,
// str % formatting, str.format and \N{...} escapes are unsupported; case mapping covers Latin-1,
// Latin Extended-A, Greek and Cyrillic (other scripts stay as they are); printing a method or a
// dict view (d.keys()) directly differs from Python's repr.
//
// Limits, since a template is untrusted input: expression and block nesting 256, values nested
// 512 deep, strings and the output 256 MiB, lists 4M items, and an evaluation budget (steps and
// bytes processed) so that no template runs for long or allocates without bound.
#pragma once
#include <memory>
#include <string>

#include <nlohmann/json.hpp>

namespace dms {

// A Hugging Face chat template (Jinja2 subset), parsed once, rendered per conversation.
// Renders as transformers does: jinja2 ImmutableSandboxedEnvironment(trim_blocks=True,
// lstrip_blocks=True, extensions=[loopcontrols]) with its tojson (json.dumps, ensure_ascii=False)
// and raise_exception.
class ChatTemplate {
 public:
  // InputError "<origin>: chat template: <problem> at line L" for syntax errors and for any
  // construct outside the supported subset (naming it, e.g. "unsupported tag 'macro'").
  ChatTemplate(const std::string& source, const std::string& origin);
  ~ChatTemplate();
  // context: a JSON object of top-level variables (messages, add_generation_prompt, bos_token,
  // eos_token, date_string, tools, ...). Keys absent from it are undefined.
  // InputError "<origin>: template raised: <msg>" from raise_exception(msg), and
  // "<origin>: chat template: <problem> at line L" for other runtime errors (wrong types, calling
  // an unknown function, using an undefined value in arithmetic, exceeding a limit, ...).
  std::string render(const nlohmann::ordered_json& context) const;

 private:
  struct Impl;
  std::shared_ptr<const Impl> impl_;
};

}  // namespace dms
