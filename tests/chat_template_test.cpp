// Unit tests of the chat-template interpreter (data/chat_template.h). Unless a comment says
// otherwise, every expected string was produced by the reference: jinja2 3.1.6 as transformers
// 4.57 configures it, i.e. _compile_jinja_template(T).render(**context).
#include "data/chat_template.h"

#include <gtest/gtest.h>

#include <string>

#include "common/error.h"

namespace dms {
namespace {

using Json = nlohmann::ordered_json;

std::string render(const std::string& tpl, const std::string& context = "{}") {
  return ChatTemplate(tpl, "test.jinja").render(Json::parse(context));
}

// The InputError message of parsing and rendering `tpl`, or "" when it succeeds.
std::string error_of(const std::string& tpl, const std::string& context = "{}") {
  try {
    render(tpl, context);
  } catch (const InputError& e) {
    return e.what();
  }
  return "";
}

TEST(ChatTemplate, TrimBlocksAndLstripBlocks) {
  EXPECT_EQ(render("<ul>\n  {% for x in xs %}\n  <li>{{ x }}</li>\n  {% endfor %}\n</ul>\n",
                   R"({"xs": ["a", "b"]})"),
            "<ul>\n  <li>a</li>\n  <li>b</li>\n</ul>");
  EXPECT_EQ(render("a\n  {# note #}\nb {#- tight -#} c"), "a\nbc");
  EXPECT_EQ(render("  {{ 'v' }}\n"), "  v");    // lstrip_blocks leaves {{ alone
  EXPECT_EQ(render("a\r\nb\rc\n"), "a\nb\nc");  // newlines normalised, last one dropped
}

TEST(ChatTemplate, ExplicitWhitespaceControl) {
  EXPECT_EQ(render("a  {{- ' b ' -}}  \n c {%- if true %} d{% endif -%}\n e"), "a b c de");
  EXPECT_EQ(render("  {%+ if true %}x{% endif +%}\ny"), "  x\ny");
}

TEST(ChatTemplate, SetInsideForDoesNotLeakButNamespaceDoes) {
  EXPECT_EQ(render("{% set n = 0 %}{% for i in [1, 2, 3] %}{% set n = n + i %}{% endfor %}{{ n }}"),
            "0");
  EXPECT_EQ(render("{% set ns = namespace(n=0) %}{% for i in [1, 2, 3] %}"
                   "{% set ns.n = ns.n + i %}{% endfor %}{{ ns.n }}"),
            "6");
  EXPECT_EQ(render("{% set x = 1 %}{% if true %}{% set x = 2 %}{% endif %}{{ x }}"), "2");
  // Each iteration starts again from the enclosing value.
  EXPECT_EQ(render("{% set x = 'out' %}{% for i in [1, 2] %}{{ x }},{% set x = i %}{% endfor %}"
                   "{{ x }}"),
            "out,out,out");
}

TEST(ChatTemplate, SlicingAndIndexing) {
  EXPECT_EQ(render("{{ xs[::-1] }} {{ xs[1:] }} {{ xs[-1] }} {{ 'h\u00e9llo'[1:3] }} "
                   "{{ 'abc'[::-1] }} {{ xs[5] }}",
                   R"({"xs": [1, 2, 3]})"),
            "[3, 2, 1] [2, 3] 3 \u00e9l cba ");
}

TEST(ChatTemplate, OperatorPrecedence) {
  // A filter binds tighter than +, ~ tighter than +, ** is left-associative in jinja2.
  EXPECT_EQ(render("{{ 'a' + ' b ' | trim }}|{{ -3 | abs }}|{{ 1 + 2 * 3 }}|{{ 2 ** 3 ** 2 }}|"
                   "{{ 7 // 2 }}{{ -7 // 2 }}{{ -7 % 3 }}|{{ 7 / 2 }}|{{ 'x' ~ 1 ~ none }}|"
                   "{{ not 1 == 2 }}|{{ 1 < 2 < 3 }}"),
            "ab|3|7|64|3-42|3.5|x1None|True|True");
  EXPECT_EQ(render("{{ 'y' if x else 'n' }}{{ 'z' if not x }}", R"({"x": 0})"), "nz");
}

TEST(ChatTemplate, Tests) {
  EXPECT_EQ(render("{{ u is defined }}{{ u is undefined }}{{ n is none }}{{ n is not none }}"
                   "{{ 's' is string }}{{ 1 is number }}{{ 1.5 is integer }}{{ {} is mapping }}"
                   "{{ [] is iterable }}{{ 0 is false }}{{ false is false }}{{ 3 is odd }}"
                   "{{ 'a' is in 'cat' }}",
                   R"({"n": null})"),
            "FalseTrueTrueFalseTrueTrueFalseTrueTrueFalseTrueTrueTrue");
}

TEST(ChatTemplate, PrintsValuesAsPython) {
  EXPECT_EQ(render("{{ true }} {{ none }} {{ 1.0 }} {{ 0.1 + 0.2 }} {{ 1e20 }} "
                   "{{ [1, 'a', none, true, (2,)] }} {{ {'k': \"it's\"} }}"),
            "True None 1.0 0.30000000000000004 1e+20 [1, 'a', None, True, (2,)] {'k': \"it's\"}");
}

TEST(ChatTemplate, ToJson) {
  EXPECT_EQ(render("{{ x | tojson }}", R"({"x": {"b": [1, 2.5, true, null], "a": "\u00e9\"\n<"}})"),
            "{\"b\": [1, 2.5, true, null], \"a\": \"\u00e9\\\"\\n<\"}");
  EXPECT_EQ(render("{{ x | tojson(sort_keys=true) }}", R"({"x": {"b": 1, "a": {}}})"),
            "{\"a\": {}, \"b\": 1}");
  EXPECT_EQ(render("{{ x | tojson(indent=4) }}",
                   R"({"x": {"name": "f", "params": {"props": {"u": {"enum": ["c", "\u00fc"]}},
                                                      "required": []}}})"),
            "{\n"
            "    \"name\": \"f\",\n"
            "    \"params\": {\n"
            "        \"props\": {\n"
            "            \"u\": {\n"
            "                \"enum\": [\n"
            "                    \"c\",\n"
            "                    \"\u00fc\"\n"
            "                ]\n"
            "            }\n"
            "        },\n"
            "        \"required\": []\n"
            "    }\n"
            "}");
}

TEST(ChatTemplate, LoopVariablesAndControl) {
  EXPECT_EQ(render("{% for x in 'abc' %}{{ loop.index }}{{ loop.index0 }}{{ loop.first }}"
                   "{{ loop.last }}{{ loop.length }}{{ loop.revindex }}{{ loop.revindex0 }}"
                   "{{ loop.previtem }}{{ loop.nextitem }};{% endfor %}"),
            "10TrueFalse332b;21FalseFalse321ac;32FalseTrue310b;");
  EXPECT_EQ(render("{% for x in range(6) %}{% if x is even %}{% continue %}{% endif %}"
                   "{% if x > 3 %}{% break %}{% endif %}{{ x }}{% endfor %}"),
            "13");
  EXPECT_EQ(render("{% for x in [] %}x{% else %}empty{% endfor %}|"
                   "{% for x in [1, 2, 3, 4] if x is odd %}{{ x }}/{{ loop.length }} {% endfor %}"),
            "empty|1/2 3/2 ");
  EXPECT_EQ(render("{% for k, v in d.items() %}{{ k }}={{ v }};{% endfor %}"
                   "{% for k in d %}{{ k }}{% endfor %}",
                   R"({"d": {"z": 1, "a": 2}})"),
            "z=1;a=2;za");
}

TEST(ChatTemplate, Undefined) {
  EXPECT_EQ(render("[{{ u }}][{{ d.missing }}][{{ d.missing is defined }}]"
                   "[{% for x in u %}x{% endfor %}][{{ u | length }}][{{ u ~ 'x' }}]"
                   "[{{ u | default('dflt') }}]",
                   R"({"d": {}})"),
            "[][][False][][0][x][dflt]");
  // Our contract, not transformers': strftime_now is not defined, so templates fall back.
  EXPECT_EQ(render("{% if strftime_now is defined %}now{% else %}fallback{% endif %}"), "fallback");
}

TEST(ChatTemplate, StringMethodsAndFilters) {
  EXPECT_EQ(render("{{ c.split('</think>')[0].rstrip('\\n').split('<think>')[-1].lstrip('\\n') }}|"
                   "{{ c.split('</think>')[-1].lstrip('\\n') }}|{{ c.startswith('<think>') }}|"
                   "{{ '  a b '.split() }}|{{ 'xxhixx'.strip('x') }}|{{ 'a-b-c'.split('-', 1) }}|"
                   "{{ 'ab'.upper() }}|{{ 'hello world'.title() }}",
                   R"({"c": "<think>\nplan\n</think>\n\nanswer"})"),
            "plan|answer|True|['a', 'b']|hi|['a', 'b-c']|AB|Hello World");
  EXPECT_EQ(render("{{ ' x ' | trim }}|{{ 'ab' | upper }}|{{ 'a b' | title }}|"
                   "{{ [3, 1, 2] | sort | list }}|{{ ['a', 'A', 'b'] | unique | list }}|"
                   "{{ [1, 2] | join(', ') }}|{{ 'aXa' | replace('a', 'b') }}|{{ '42' | int + 1 }}|"
                   "{{ 2.5 | round }}|{{ [1, 2] | first }}{{ [1, 2] | last }}|{{ 'abc' | list }}|"
                   "{{ {'a': 1} | items | list }}"),
            "x|AB|A B|[1, 2, 3]|['a', 'b']|1, 2|bXb|43|2.0|12|['a', 'b', 'c']|[('a', 1)]");
  EXPECT_EQ(render("{{ m.role }}{{ m['role'] }}{{ m.get('x', 'd') }}{{ m.get('x') }}"
                   "{{ 'role' in m }}{{ m.keys() | list }}",
                   R"({"m": {"role": "user"}})"),
            "useruserdNoneTrue['role']");
}

TEST(ChatTemplate, RendersRepeatedlyWithDifferentContexts) {
  ChatTemplate t("{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}", "t");
  EXPECT_EQ(t.render(Json::parse(R"({"messages": [{"role": "user", "content": "hi"}]})")),
            "<user>hi");
  EXPECT_EQ(t.render(Json::parse(R"({"messages": []})")), "");
}

// The errors below are our own messages (jinja2's differ); each must name the origin.

TEST(ChatTemplate, RejectsUnsupportedConstructs) {
  EXPECT_EQ(error_of("x\n{% macro m() %}{% endmacro %}"),
            "test.jinja: chat template: unsupported tag 'macro' at line 2");
  EXPECT_EQ(error_of("{% include 'other.jinja' %}"),
            "test.jinja: chat template: unsupported tag 'include' at line 1");
  EXPECT_EQ(error_of("{{ xs | batch(2) }}"),
            "test.jinja: chat template: unsupported filter 'batch' at line 1");
  EXPECT_EQ(error_of("{{ x is divisible }}"),
            "test.jinja: chat template: unsupported test 'divisible' at line 1");
  EXPECT_NE(error_of("{% set x %}body{% endset %}").find("unsupported tag 'set' block"),
            std::string::npos);
}

TEST(ChatTemplate, SyntaxErrors) {
  EXPECT_EQ(error_of("a\n{{ x"), "test.jinja: chat template: missing '}}' at line 2");
  EXPECT_EQ(error_of("{% if x"), "test.jinja: chat template: missing '%}' at line 1");
  EXPECT_EQ(error_of("{# never closed"),
            "test.jinja: chat template: missing end of comment tag at line 1");
  EXPECT_EQ(error_of("\n\n{% if x %}a"),
            "test.jinja: chat template: unclosed 'if' block (missing 'endif') at line 3");
  EXPECT_EQ(error_of("{% endfor %}"), "test.jinja: chat template: unexpected 'endfor' at line 1");
  EXPECT_EQ(error_of("{{ 'abc }}"),
            "test.jinja: chat template: unterminated string literal at line 1");
  EXPECT_EQ(error_of("{{ 1 + }}"), "test.jinja: chat template: unexpected '}}' at line 1");
  EXPECT_EQ(error_of("{% break %}"),
            "test.jinja: chat template: 'break' outside of a loop at line 1");
}

TEST(ChatTemplate, RuntimeErrors) {
  EXPECT_EQ(error_of("{{ raise_exception('Only user and assistant roles!') }}"),
            "test.jinja: template raised: Only user and assistant roles!");
  EXPECT_EQ(error_of("\n{{ u + 'x' }}"), "test.jinja: chat template: 'u' is undefined at line 2");
  EXPECT_EQ(error_of("{{ 'a' + 1 }}"),
            "test.jinja: chat template: can only concatenate str (not \"int\") to str at line 1");
  EXPECT_EQ(error_of("{{ strftime_now('%d') }}"),
            "test.jinja: chat template: 'strftime_now' is undefined at line 1");
  EXPECT_EQ(error_of("{{ d.a.b }}", R"({"d": {}})"),
            "test.jinja: chat template: 'dict object' has no attribute 'a' at line 1");
  EXPECT_EQ(error_of("{{ [1].append(2) }}"),
            "test.jinja: chat template: access to attribute 'append' of 'list' object is unsafe "
            "at line 1");
  EXPECT_EQ(error_of("{% set x = 1 %}{% set x.y = 2 %}"),
            "test.jinja: chat template: cannot assign attribute on non-namespace object at line 1");
  EXPECT_EQ(error_of("{% for x in 5 %}{% endfor %}"),
            "test.jinja: chat template: 'int' object is not iterable at line 1");
}

TEST(ChatTemplate, HostileTemplatesHitLimits) {
  std::string parens = "{{ " + std::string(5000, '(') + "1" + std::string(5000, ')') + " }}";
  EXPECT_NE(error_of(parens).find("nested too deeply"), std::string::npos);
  std::string sum = "{{ 1";
  for (int i = 0; i < 5000; ++i) sum += " + 1";
  EXPECT_NE(error_of(sum + " }}").find("nested too deeply"), std::string::npos);
  std::string blocks;
  for (int i = 0; i < 5000; ++i) blocks += "{% if 1 %}";
  EXPECT_NE(error_of(blocks).find("nested too deeply"), std::string::npos);
  std::string deep_json = std::string(5000, '[') + std::string(5000, ']');
  EXPECT_NE(error_of("{{ x }}", "{\"x\": " + deep_json + "}").find("nested too deeply"),
            std::string::npos);
  EXPECT_NE(error_of("{{ 'x' * 300000000 }}").find("256 MiB"), std::string::npos);
  EXPECT_NE(error_of("{{ range(100001) | length }}").find("range too big"), std::string::npos);
  EXPECT_NE(error_of("{% set ns = namespace(l=[]) %}{% for i in range(2000) %}"
                     "{% set ns.l = [ns.l] %}{% endfor %}")
                .find("nested too deeply"),
            std::string::npos);
  // Work without bound stops at the evaluation budget instead of running for hours.
  EXPECT_NE(error_of("{% set s = 'ab' * 10000000 %}{% for i in range(100000) %}"
                     "{% if 'zz' in s %}{% endif %}{% endfor %}")
                .find("evaluation exceeds"),
            std::string::npos);
}

}  // namespace
}  // namespace dms
