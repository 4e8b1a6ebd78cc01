#!/usr/bin/env python3
"""Writes tests/data/tokenizer_corpus.txt: the text that the C++ tokenizer is checked on,
id for id, against Hugging Face `tokenizers` / `transformers` (scripts/reference_tokenizer.py).

Deterministic: a fixed seed, the standard library only, no network, the same bytes from any
Python 3.8+ (only `random.Random(int)` draws and `unicodedata.normalize` of characters whose
decompositions Unicode's stability policy freezes). Run it again after editing and commit
both this script and the corpus:

    python3 tests/data/make_tokenizer_corpus.py            # rewrite the corpus
    python3 tests/data/make_tokenizer_corpus.py --check    # exit 1 if the file is stale

The file is UTF-8 without BOM, lines end with '\\n' only (never '\\r'), and it must be split
on '\\n' alone: some lines hold U+000B, U+000C, U+001C..U+001E, U+0085, U+2028 and U+2029,
which Python's str.splitlines() (not std::getline) would also treat as line breaks. The
last line ends with '\\n'. No line contains U+0000.
"""

import argparse
import os
import random
import sys
import unicodedata

SEED = 20240726
MIN_LINES, MAX_LINES = 2200, 3000
MAX_BYTES = 400 * 1024
HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_OUT = os.path.join(HERE, "tokenizer_corpus.txt")

NBSP = "\u00a0"
EMSP = "\u2003"
IDSP = "\u3000"
ZWSP = "\u200b"
BOM = "\ufeff"
ZWJ = "\u200d"
ZWNJ = "\u200c"
VS16 = "\ufe0f"
VS15 = "\ufe0e"


# ----------------------------------------------------------------------------------------
# English prose with contractions
# ----------------------------------------------------------------------------------------

SUBJECTS = ["the model", "our tokenizer", "the reviewer", "Alice", "Bob", "the cache",
            "this function", "the old server", "my neighbour", "the committee", "Dr. Smith",
            "the kernel", "a stranger", "the compiler", "everyone", "the team lead"]
VERBS = ["reads", "rejects", "merges", "splits", "forgets", "returns", "prints", "ignores",
         "rewrites", "measures", "compares", "encodes", "decodes", "normalizes", "checks"]
OBJECTS = ["every byte", "the long word", "a broken line", "the config file", "two tokens",
           "the last merge", "their answer", "a unicode string", "the test corpus",
           "the special token", "nothing at all", "the whole paragraph", "an empty string"]
ADVERBS = ["quickly", "carefully", "twice", "again", "silently", "eventually", "at once",
           "without a warning", "in order", "by accident", "on purpose"]
CONTRACTION_CLAUSES = [
    "I'm sure it's fine", "you're right", "they've seen it", "we'll see", "he'd know",
    "she's done", "it's not what we'd expect", "don't panic", "can't stop", "won't work",
    "isn't it", "aren't they", "wasn't me", "weren't we", "hasn't changed", "haven't you",
    "hadn't they", "doesn't matter", "didn't compile", "shouldn't fail", "wouldn't you",
    "couldn't care less", "mustn't forget", "needn't worry", "let's go", "that'll do",
    "who's there", "what's up", "where'd it go", "how've you been", "there're two",
    "y'all'd've done it", "ma'am", "o'clock", "rock 'n' roll", "'tis the season",
    "the '90s were loud", "the dogs' bowls", "James's car", "Charles' book", "it'd've been",
    "I'd rather not", "you'd better", "we've got it", "they'll call", "she'll've left",
]
UPPER_CLAUSES = [
    "JOHN'S CAR", "WE'LL SEE", "I'M HERE", "DON'T DO IT", "THEY'RE LATE", "YOU'VE WON",
    "SHE'D KNOW", "IT'S OVER", "CAN'T STOP", "THAT'LL DO", "WHO'S NEXT", "I'D SAY SO",
    "Y'ALL'D'VE", "It'S mIxEd", "we'Ll sEe", "you'RE fine", "I'M", "'S", "'LL", "'T",
    "'RE", "'VE", "'M", "'D", "'s", "'ll", "'t", "'re", "'ve", "'m", "'d",
]
CURLY_CLAUSES = [
    "it\u2019s", "don\u2019t", "we\u2019ll", "they\u2019re", "I\u2019m", "you\u2019ve",
    "she\u2019d", "\u2018quoted\u2019", "\u201cdouble\u201d", "l\u2019homme", "c\u2019est",
    "it\u02bcs", "don\uff07t", "we`ll", "they\u00b4re",
]
PROSE_FIXED = [
    "The quick brown fox jumps over the lazy dog.",
    "Pack my box with five dozen liquor jugs!",
    "How vexingly quick daft zebras jump?",
    "I'm not sure what you're asking, but we'll figure it out; they've done it before.",
    "She said, \"It's fine,\" and then: 'No, it isn't.'",
    "'s",
    "'s'",
    "''s",
    "'''",
    "x's y't z're w've v'm u'll t'd",
    "X'S Y'T Z'RE W'VE V'M U'LL T'D",
    "12's 3'll 4'd 5'M",
    "' s ' t ' re ' ve ' m ' ll ' d",
    "don't  won't\tcan't",
    "It's 5 o'clock somewhere, isn't it?",
    "The cat's toy; the cats' toys; the children's toys.",
    "Ain't nobody got time for that, y'know?",
    "He'd've said so if he'd known.",
    "'Twas brillig, and the slithy toves did gyre and gimble in the wabe.",
    "We're 'testing' the \"quotes\" and the `backticks` here.",
    "Mr. O'Neil's dog isn't O'Brien's.",
    "rock'n'roll isn't dead, it's just resting.",
    "Don'T MiX CaSe'S LiKe ThI'S",
    "Hello world",
    " Hello world",
    "Hello  world",
    "hello",
    "HELLO",
    "Hello, World!",
    "a",
    "I",
    "A.",
    "e.g. i.e. etc. vs. Mr. Mrs. Dr. St.",
    "U.S.A. U.K. E.U. N.A.S.A.",
    "state-of-the-art, well-known, twenty-one, re-encode",
    "the end.",
]


def english_lines(rng):
    lines = list(PROSE_FIXED)
    for _ in range(150):
        parts = []
        for _ in range(rng.randint(1, 4)):
            kind = rng.randint(0, 9)
            if kind <= 4:
                s = "%s %s %s %s" % (rng.choice(SUBJECTS), rng.choice(VERBS),
                                     rng.choice(OBJECTS), rng.choice(ADVERBS))
                s = s[0].upper() + s[1:] + rng.choice([".", "!", "?", ";", "...", ":"])
            elif kind <= 6:
                s = rng.choice(CONTRACTION_CLAUSES)
                s = s[0].upper() + s[1:] + rng.choice([".", ",", "!", "?"])
            elif kind == 7:
                s = rng.choice(UPPER_CLAUSES) + rng.choice(["!", ".", "", "?!"])
            elif kind == 8:
                s = rng.choice(CURLY_CLAUSES) + rng.choice([" ok.", ",", ""])
            else:
                s = "%s, %s, and %s." % (rng.choice(CONTRACTION_CLAUSES),
                                         rng.choice(CONTRACTION_CLAUSES),
                                         rng.choice(UPPER_CLAUSES))
            parts.append(s)
        sep = rng.choice([" ", " ", " ", "  ", "\t", " \u00a0"])
        lines.append(sep.join(parts))
    return lines


# ----------------------------------------------------------------------------------------
# Code: Python, C++, JSON, shell, Makefile (tabs), YAML, SQL, HTML, JS, Rust, Go
# ----------------------------------------------------------------------------------------

PY_SNIPPET = r'''
#!/usr/bin/env python3
"""Module docstring with 'quotes' and "double quotes"."""
import os, sys
from typing import Dict, List, Optional


class TokenCache:
    def __init__(self, capacity: int = 10_000) -> None:
        self._capacity = capacity
        self._items: Dict[str, List[int]] = {}

    def get(self, word: str) -> Optional[List[int]]:
        # Return None when the word isn't cached.
        return self._items.get(word)

    def put(self, word: str, ids: List[int]) -> None:
        if len(self._items) >= self._capacity:
            self._items.clear()
        self._items[word] = list(ids)


def main(argv=None):
	# this body is indented with a tab
	args = argv or sys.argv[1:]
	for i, a in enumerate(args):
		print(f"{i:>4}: {a!r}")
	return 0 if args else 1

if __name__ == "__main__":
    sys.exit(main())
lambda x: x ** 2 + 3 * x - 1
result = [x for x in range(100) if x % 3 == 0 and x != 42]
d = {"key": [1, 2, 3], 'other': {"nested": None, "flag": True}}
s = 'it\'s' + "\"quoted\"" + r"\raw\n" + b"\x00\xff".hex()
x = a if b else c  # trailing comment   
    return   # trailing spaces follow   
'''

CPP_SNIPPET = r'''
#include <algorithm>
#include <cstdint>
#include <string>
#include <unordered_map>
#include <vector>

namespace dms {

template <typename T>
struct Pair {
  T first{};
  T second{};
};

// Applies BPE merges until none is left.
std::vector<int32_t> merge(const std::vector<int32_t>& ids,
                           const std::unordered_map<uint64_t, int32_t>& ranks) {
  std::vector<int32_t> out(ids.begin(), ids.end());
  for (size_t i = 0; i + 1 < out.size(); ++i) {
    const uint64_t key = (static_cast<uint64_t>(out[i]) << 32) | static_cast<uint32_t>(out[i + 1]);
    if (auto it = ranks.find(key); it != ranks.end()) {
      out[i] = it->second;
      out.erase(out.begin() + static_cast<std::ptrdiff_t>(i) + 1);
      i = (i == 0) ? static_cast<size_t>(-1) : i - 2;
    }
  }
  return out;  // NRVO
}

}  // namespace dms

int main(int argc, char** argv) {
	std::string s = "tab-indented\tline\n";
	if (argc > 1 && argv[1][0] == '-') { return 2; }
	auto lambda = [&](int x) -> int { return x << 1; };
	return lambda(argc) >= 0 ? 0 : 1;
}
#define MAX(a, b) ((a) > (b) ? (a) : (b))
/* block comment */ int x = 0x7fffffff; unsigned long long y = 18446744073709551615ULL;
std::cout << "Hello, " << name << "!" << std::endl;
'''

JSON_SNIPPET = r'''
{
  "name": "dms-retrofit",
  "version": "1.2.3",
  "vocab_size": 151936,
  "rope_theta": 1000000.0,
  "eps": 1e-06,
  "layers": [0, 1, 2, 3, 28, 29, 30, 31],
  "nested": {"a": {"b": {"c": [true, false, null]}}},
  "escaped": "line1\nline2\ttab \"quote\" \\ backslash \u00e9 \ud83d\ude00",
  "unicode": "héllo wörld – 你好 – 😀",
  "empty": "",
  "spaces": "   ",
  "float": -0.000123,
  "big": 123456789012345678901234567890
}
[{"id":1,"text":"a"},{"id":2,"text":"b"},{"id":3,"text":"c"}]
{"messages": [{"role": "user", "content": "Hi!"}, {"role": "assistant", "content": "Hello."}]}
'''

SHELL_SNIPPET = r'''
#!/usr/bin/env bash
set -euo pipefail
cd "$(dirname "$0")/.."
for f in data/*.txt; do
    if [[ -s "$f" ]]; then
        wc -l "$f" | awk '{print $1}' >> /tmp/counts.txt
    fi
done
export PATH="$HOME/.local/bin:$PATH"
echo "done: ${#files[@]} files, exit=$?" 2>&1 | tee -a log.txt
grep -rn --include='*.cpp' 'TODO\|FIXME' src/ || true
find . -name '*.o' -print0 | xargs -0 rm -f
python3 -c 'import sys; print(sys.version)'
case "$1" in
	start) run_server --port 8080 & ;;
	stop)  kill "$(cat server.pid)" ;;
	*)     echo "usage: $0 {start|stop}" >&2; exit 2 ;;
esac
curl -sSL https://example.com/install.sh | sh -s -- --prefix=/opt/tool
tar -xzf archive.tar.gz -C /tmp && ls -la /tmp | head -n 20
'''

MAKE_SNIPPET = "\n".join([
    "CXX ?= g++",
    "CXXFLAGS := -O2 -Wall -Wextra -std=c++17",
    "",
    "all: tokenizer_test",
    "",
    "tokenizer_test: tokenizer.o tokenizer_test.o",
    "\t$(CXX) $(CXXFLAGS) -o $@ $^",
    "",
    "%.o: %.cpp",
    "\t$(CXX) $(CXXFLAGS) -c $< -o $@",
    "",
    ".PHONY: clean",
    "clean:",
    "\trm -f *.o tokenizer_test",
    "\t\t# doubly tabbed comment",
    "\t    # tab then four spaces",
    "    \t# four spaces then a tab",
])

OTHER_CODE = r'''
model:
  name: qwen3-0.6b
  layers: 28
  dms:
    window: 256
    ratio: 8.0
  tags: [a, b, "c d"]
---
SELECT u.id, u.name, COUNT(*) AS n FROM users u JOIN orders o ON o.user_id = u.id WHERE u.created_at >= '2024-01-01' GROUP BY u.id HAVING n > 5 ORDER BY n DESC LIMIT 10;
<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Test &amp; more</title></head>
<body><p class="x">Hello&nbsp;world &lt;3 &#x1F600; &#128512;</p></body></html>
const f = async (x) => { const r = await fetch(`/api/${x}?q=${encodeURIComponent(q)}`); return r.json(); };
let re = /^(?:[a-z0-9!#$%&'*+/=?^_`{|}~-]+)@example\.com$/giu;
fn main() { let v: Vec<u32> = (0..10).map(|x| x * x).collect(); println!("{:?}", v); }
impl<'a, T: Clone + 'a> Iterator for Iter<'a, T> { type Item = &'a T; }
func main() { fmt.Printf("%d %s %v\n", 42, "go", []int{1, 2}) }
if (x != null && y !== undefined || z === 0) { x ??= y; a ||= b; c &&= d; }
i++; j--; k += 1; m -= 2; n *= 3; p /= 4; q %= 5; r <<= 1; s >>= 2; t >>>= 3; u ^= v; w |= x;
a->b->c; ::std::move(x); obj?.prop?.[key]; arr[i][j]; f(*args, **kwargs); x := 5
   leading three spaces then code();
	leading tab then code();
  	 	mixed leading whitespace then code();
'''


def code_lines(rng):
    lines = []
    for block in (PY_SNIPPET, CPP_SNIPPET, JSON_SNIPPET, SHELL_SNIPPET, MAKE_SNIPPET,
                  OTHER_CODE):
        lines.extend(block.strip("\n").split("\n"))
        lines.append("")
    # Variations: generated statements with random identifiers and indentation.
    idents = ["x", "y", "idx", "token_id", "mergeRank", "_private", "__dunder__", "CamelCase",
              "snake_case_name", "kMaxLen", "a1b2c3", "i", "j", "vocab", "bytes_", "ñandú",
              "переменная", "变量", "λ", "x\u0301"]
    indents = ["", "  ", "    ", "        ", "\t", "\t\t", "\t  ", "  \t", "            ",
               "\t\t\t\t"]
    for _ in range(110):
        ind = rng.choice(indents)
        a, b, c = rng.choice(idents), rng.choice(idents), rng.choice(idents)
        n = rng.randint(0, 10 ** rng.randint(1, 12))
        form = rng.randint(0, 11)
        if form == 0:
            s = "%s = %s + %d" % (a, b, n)
        elif form == 1:
            s = "if (%s[%d] == %s) { return %s; }" % (a, n % 100, b, c)
        elif form == 2:
            s = "def %s(%s, %s=%d):" % (a, b, c, n)
        elif form == 3:
            s = "for (int %s = 0; %s < %d; ++%s) {" % (a, a, n, a)
        elif form == 4:
            s = '"%s": %d,' % (a, n)
        elif form == 5:
            s = "%s.%s(%s)->%s;" % (a, b, c, a)
        elif form == 6:
            s = "# %s: %s'll be %d" % (a, b, n)
        elif form == 7:
            s = "// TODO(%s): don't forget %s" % (a, b)
        elif form == 8:
            s = "%s=$((%s * %d)) && echo \"$%s\"" % (a, b, n, a)
        elif form == 9:
            s = "return %s %s %s;" % (a, rng.choice(["<=", ">=", "==", "!=", "&&", "||",
                                                    "<<", ">>", "->", "::", "**", "//"]), b)
        elif form == 10:
            s = "}" * rng.randint(1, 4) + rng.choice(["", ";", ")", "])", "});"])
        else:
            s = "%s: %s = field(default_factory=lambda: [%d])" % (a, b, n)
        trail = rng.choice(["", "", "", "", " ", "  ", "\t", " \t "])
        lines.append(ind + s + trail)
    return lines


# ----------------------------------------------------------------------------------------
# Numbers
# ----------------------------------------------------------------------------------------

def digits(rng, n):
    first = str(rng.randint(1, 9))
    return first + "".join(str(rng.randint(0, 9)) for _ in range(n - 1))


def group3(s, sep=","):
    out = []
    while len(s) > 3:
        out.insert(0, s[-3:])
        s = s[:-3]
    out.insert(0, s)
    return sep.join(out)


NUMBER_FIXED = [
    "0", "00", "000", "0000", "1", "12", "123", "1234", "12345", "123456", "1234567",
    "1,000,000", "1.000.000,50", "1 000 000", "1\u00a0000\u00a0000", "1\u202f000\u202f000",
    "12,34,56,789", "1'000'000", "1_000_000", "3.14159265358979323846264338327950288",
    "-42", "+42", "−42", "4.2e-10", "6.02214076E+23", "1e100", ".5", "5.", "0.0001",
    "+1 (555) 123-4567", "+44 20 7946 0958", "555.123.4567", "(030) 12345678",
    "+86 138 0013 8000", "+81-3-1234-5678", "911", "1-800-FLOWERS",
    "2024-07-26", "26/07/2024", "07/26/2024", "12:34:56.789", "2024-07-26T12:34:56+02:00",
    "192.168.0.1", "10.0.0.255:8080", "2001:db8::ff00:42:8329", "v1.2.3-rc.4+build.5",
    "0xDEADBEEF", "0x7fffffff", "0b101010", "0o755", "0755", "1.0.0.0.0.0.0.0",
    "550e8400-e29b-41d4-a716-446655440000", "4111 1111 1111 1111", "978-3-16-148410-0",
    "$1,234.56", "€99,99", "¥10000", "£5", "₹1,00,000", "₿0.00021", "50%", "99.9%",
    "1st 2nd 3rd 4th 11th 12th 13th 21st 22nd 23rd 101st",
    "3/4 1/2 22/7 355/113", "10–20 pages", "pp. 100-200", "x86_64 arm64 H2O CO2 mp3 3D",
    "abc123def456", "123abc", "a1b2c3d4e5f6", "9am 5pm 24h 7:30pm", "No. 7 #8 №9",
    "٠١٢٣٤٥٦٧٨٩", "۰۱۲۳۴۵۶۷۸۹", "०१२३४५६७८९", "০১২৩৪৫৬৭৮৯", "๐๑๒๓๔๕๖๗๘๙",
    "０１２３４５６７８９", "𝟎𝟏𝟐𝟑𝟒𝟓𝟔𝟕𝟖𝟗", "²³¹⁰⁴⁵", "₀₁₂₃", "½ ⅓ ¼ ⅛ ¾", "①②③④⑤",
    "ⅠⅡⅢⅣⅤⅫ ⅰⅱⅲ", "一二三四五六七八九十百千万亿", "壹贰叁", "〇", "12３4", "1٢3",
    "3.14.15.92.65", "1,2,3,4,5,6,7,8,9,10", "1 2 3 4 5 6 7 8 9 10", "1-2-3-4-5",
    "1.2.3.4.5", "11111111111111111111", "99999999999999999999999999999999999999999",
    "1" + "0" * 40, "0" * 40, "-0", "NaN inf -inf 1e-308 1.7976931348623157e308",
]


def number_lines(rng):
    lines = list(NUMBER_FIXED)
    for n in range(1, 41):              # every digit-run length 1..40
        lines.append(digits(rng, n))
    for n in range(1, 41, 3):
        d = digits(rng, n)
        lines.append("The value is %s, or %s, or %s.%s units." % (
            d, group3(d), d, digits(rng, rng.randint(1, 12))))
    for _ in range(90):
        form = rng.randint(0, 9)
        if form == 0:
            s = group3(digits(rng, rng.randint(4, 22)))
        elif form == 1:
            s = "%s.%s" % (digits(rng, rng.randint(1, 15)), digits(rng, rng.randint(1, 15)))
        elif form == 2:
            s = "+%d (%s) %s-%s" % (rng.randint(1, 99), digits(rng, 3), digits(rng, 3),
                                    digits(rng, 4))
        elif form == 3:
            s = "%s%s%s" % (digits(rng, rng.randint(1, 6)), rng.choice(
                ["abc", "px", "ms", "GB", "км", "元", "円", "번", "x", "e", "_", "-"]),
                digits(rng, rng.randint(1, 6)))
        elif form == 4:
            s = " ".join(digits(rng, rng.randint(1, 5)) for _ in range(rng.randint(2, 9)))
        elif form == 5:
            s = "Order #%s: %d × %s.%02d = %s.%02d USD" % (
                digits(rng, 8), rng.randint(1, 99), group3(digits(rng, rng.randint(1, 7))),
                rng.randint(0, 99), group3(digits(rng, rng.randint(1, 9))), rng.randint(0, 99))
        elif form == 6:
            s = "%s%% of %s is %s" % (rng.randint(0, 100), digits(rng, rng.randint(1, 9)),
                                     digits(rng, rng.randint(1, 9)))
        elif form == 7:
            s = digits(rng, rng.randint(41, 120))
        elif form == 8:
            s = "%d-%02d-%02d %02d:%02d:%02d.%06d" % (
                rng.randint(1900, 2100), rng.randint(1, 12), rng.randint(1, 28),
                rng.randint(0, 23), rng.randint(0, 59), rng.randint(0, 59),
                rng.randint(0, 999999))
        else:
            s = "%s.%s.%s.%s" % tuple(str(rng.randint(0, 255)) for _ in range(4))
        lines.append(s)
    return lines


# ----------------------------------------------------------------------------------------
# Scripts: CJK, RTL, Devanagari, Thai, Cyrillic, Greek
# ----------------------------------------------------------------------------------------

LANG = {
    "zh": ["今天天气很好，我们去公园散步吧。", "机器学习是人工智能的一个分支。",
           "这个分词器必须与参考实现完全一致。", "你好，世界！", "我爱北京天安门。",
           "请把文件保存为UTF-8编码。", "他说：“没问题。”", "繁體中文與简体中文混合使用。",
           "数字123和English混在一起。", "《红楼梦》是中国古典小说。",
           "上下文长度为三万二千个词元。", "模型在推理时会压缩键值缓存。"],
    "ja": ["こんにちは、世界！", "東京は日本の首都です。", "カタカナとひらがなを混ぜたテキスト。",
           "ｶﾀｶﾅ ﾊﾝｶｸ", "私はコーヒーが好きです。", "「今日は」と彼女は言った。",
           "ー～〜・ヽヾゝゞ", "ぁぃぅぇぉっゃゅょ", "がぎぐげご ぱぴぷぺぽ", "ヴァイオリンとウィスキー",
           "日本語の文章には空白がありません。", "令和６年７月２６日"],
    "ko": ["안녕하세요, 세계!", "한국어 문장은 띄어쓰기를 사용합니다.", "저는 학생입니다.",
           "토크나이저 테스트 중입니다.", "값은 1,234원입니다.", "ㄱㄴㄷㄹㅁㅂㅅㅇㅈㅊㅋㅌㅍㅎ",
           "ㅏㅑㅓㅕㅗㅛㅜㅠㅡㅣ", "똠방각하 뷁 쀍 햏", "서울특별시 강남구", "ㅋㅋㅋㅋㅋ ㅎㅎ"],
    "ar": ["مرحبا بالعالم", "اللغة العربية تكتب من اليمين إلى اليسار.", "مُحَمَّدٌ رَسُولُ",
           "السلام عليكم ورحمة الله", "الرقم ١٢٣٤ والرقم 5678", "هذا نص عربي مع English.",
           "ﷺ ﷲ ﻻ", "كِتَابٌ جَدِيدٌ", "؟ ، ؛", "تـــطـــويـــل"],
    "he": ["שלום עולם", "עברית נכתבת מימין לשמאל.", "שָׁלוֹם", "בְּרֵאשִׁית בָּרָא אֱלֹהִים",
           "מספר 42 ועוד English", "״ציטוט״ ו־מקף", "ﬠﬡﬢ", "תל אביב-יפו"],
    "hi": ["नमस्ते दुनिया", "हिन्दी भाषा देवनागरी लिपि में लिखी जाती है।", "क्षत्रिय ज्ञान श्री",
           "संख्या १२३ और 456", "ॐ नमः शिवाय॥", "क़ ख़ ग़ ज़ ड़ ढ़ फ़ य़", "अँ अं अः ऋ ॠ ऌ",
           "मैंने कहा, \"ठीक है।\""],
    "th": ["สวัสดีชาวโลก", "ภาษาไทยไม่มีการเว้นวรรคระหว่างคำ", "กรุงเทพมหานคร",
           "ผู้ใหญ่หาผ้าใหม่ให้สะใภ้ใช้คล้องคอ", "๑๒๓ และ 456", "น้ำ ไม้ ก็ ค่ำ",
           "ฯลฯ ๆ ฿100"],
    "ru": ["Привет, мир!", "Съешь же ещё этих мягких французских булок, да выпей чаю.",
           "ЁЛКА ёлка Ёлка", "Я не знаю, что ты имеешь в виду.", "Україна, Беларусь, Србија",
           "й и\u0306 ё е\u0308", "ПРОПИСНЫЕ и строчные", "Щёлкнуть — значит нажать."],
    "el": ["Γειά σου Κόσμε", "Ξεσκεπάζω την ψυχοφθόρα βδελυγμία.", "ἐν ἀρχῇ ἦν ὁ λόγος",
           "ΑΒΓΔΕΖΗΘΙΚΛΜΝΞΟΠΡΣΤΥΦΧΨΩ", "αβγδεζηθικλμνξοπρστυφχψω ς", "ά έ ή ί ό ύ ώ ΐ ΰ",
           "Ὀδυσσεύς; ;", "π ≈ 3.14159"],
    "misc": ["Tiếng Việt có dấu: Đây là một câu.", "Zażółć gęślą jaźń.", "Ça va? Très bien!",
             "Größe, Straße, Maß, ẞ", "Ærø Ørsted Åse", "İstanbul ıi İI", "Čeština šťávě",
             "Ἀθῆναι", "ქართული ენა", "Հայերեն", "አማርኛ", "ᐃᓄᒃᑎᑐᑦ", "ᚠᚢᚦᚨᚱᚲ", "𐌰𐌱𐌲",
             "ꦗꦮ", "தமிழ் மொழி", "ਪੰਜਾਬੀ", "বাংলা ভাষা", "ગુજરાતી", "ಕನ್ನಡ", "മലയാളം",
             "සිංහල", "ພາສາລາວ", "ភាសាខ្មែរ", "မြန်မာဘာသာ", "བོད་ཡིག", "ᠮᠣᠩᠭᠣᠯ",
             "𠀀𠀁𠀂 𪚥 𩸽", "Ꙁ ꙁ"],
}


def script_lines(rng):
    lines = []
    keys = sorted(LANG)
    for k in keys:
        lines.extend(LANG[k])
    for _ in range(120):
        k1, k2 = rng.choice(keys), rng.choice(keys)
        a, b = rng.choice(LANG[k1]), rng.choice(LANG[k2])
        form = rng.randint(0, 5)
        if form == 0:
            s = a + " " + b
        elif form == 1:
            s = a + b
        elif form == 2:
            s = a + " " + rng.choice(SUBJECTS) + " " + b
        elif form == 3:
            s = "\u200f" + a + "\u200e " + b          # RLM / LRM marks
        elif form == 4:
            s = " ".join(rng.choice(LANG[k1]) for _ in range(rng.randint(2, 5)))
        else:
            s = a + str(rng.randint(0, 10 ** 6)) + b
        lines.append(s)
    lines += ["\u202eRTL override\u202c back to normal", "\u2067isolate\u2069 \u2066ltr\u2069",
              "abc \u05d0\u05d1\u05d2 def \u0627\u0628\u062a 123",
              "Arabic with tatweel: عـــربـــي and digits ٣٫١٤"]
    return lines


# ----------------------------------------------------------------------------------------
# Emoji
# ----------------------------------------------------------------------------------------

EMOJI = ["😀", "😂", "🥲", "😍", "🤔", "🙃", "🫠", "🤖", "👍", "👎", "🙏", "🔥", "✨", "🎉",
         "❤️", "❤", "♥️", "☺️", "☺︎", "✔️", "⚠️", "©️", "®️", "™️", "↔️", "🚀", "🌍", "🍕",
         "🐍", "🦀", "🧠", "💾", "📈", "🔑", "⌛", "⏰", "🕰️", "🀄", "🃏", "🆗", "🈯", "🅰️"]
ZWJ_SEQ = ["👨\u200d👩\u200d👧\u200d👦", "🏳️\u200d🌈", "🏳️\u200d⚧️", "👩\u200d💻",
           "🧑\u200d🚀", "👨\u200d❤️\u200d💋\u200d👨", "🐻\u200d❄️", "🐈\u200d⬛",
           "👁️\u200d🗨️", "🧑🏽\u200d🤝\u200d🧑🏿", "👩🏾\u200d🔬", "❤️\u200d🔥",
           "🏴\u200d☠️", "👨\u200d👨\u200d👧"]
SKIN = ["\U0001F3FB", "\U0001F3FC", "\U0001F3FD", "\U0001F3FE", "\U0001F3FF"]
SKIN_BASE = ["👋", "👍", "🙌", "👏", "🤝", "✌️", "🤞", "👶", "🧑", "💪", "🖐"]
FLAGS = ["🇺🇸", "🇬🇧", "🇩🇪", "🇯🇵", "🇨🇳", "🇰🇷", "🇮🇳", "🇧🇷", "🇮🇱", "🇸🇦", "🇺🇦", "🇪🇺",
         "🇺🇳", "🏴\U000E0067\U000E0062\U000E0065\U000E006E\U000E0067\U000E007F",
         "🏴\U000E0067\U000E0062\U000E0073\U000E0063\U000E0074\U000E007F"]
KEYCAPS = ["1\ufe0f\u20e3", "#\ufe0f\u20e3", "*\ufe0f\u20e3", "0\u20e3", "🔟"]


def emoji_lines(rng):
    lines = [" ".join(EMOJI), "".join(EMOJI), " ".join(ZWJ_SEQ), "".join(ZWJ_SEQ),
             " ".join(FLAGS), "".join(FLAGS), " ".join(KEYCAPS),
             " ".join(b + t for b in SKIN_BASE[:3] for t in SKIN),
             "\U0001F1FA", "\U0001F1FA\U0001F1F8\U0001F1FA", "🇦🇧🇨",
             "\u2764\ufe0f \u2764\ufe0e \u2764", "A\ufe0f B\ufe0e 1\ufe0f", "\ufe0f\ufe0f\ufe0f",
             "\u200d", "a\u200db", "👨\u200d", "\u200d👩", "👨\u200d\u200d👩",
             "葛\U000E0100 葛\U000E0101 邊\U000E0103", "😀" * 30, "👨‍👩‍👧‍👦" * 5,
             "I 💜 unicode 🦄 and can't stop 😅!", "🎉🎉🎉 We'll ship it 🚢 🔥🔥"]
    for _ in range(95):
        parts = []
        for _ in range(rng.randint(1, 6)):
            form = rng.randint(0, 5)
            if form == 0:
                parts.append(rng.choice(EMOJI))
            elif form == 1:
                parts.append(rng.choice(ZWJ_SEQ))
            elif form == 2:
                parts.append(rng.choice(SKIN_BASE) + rng.choice(SKIN))
            elif form == 3:
                parts.append(rng.choice(FLAGS))
            elif form == 4:
                parts.append(rng.choice(KEYCAPS))
            else:
                parts.append(rng.choice(OBJECTS))
        sep = rng.choice(["", " ", " ", ", ", "\u200b", "  "])
        lines.append(sep.join(parts))
    return lines


# ----------------------------------------------------------------------------------------
# Unicode normalization: NFC / NFD, singletons, exclusions, Hangul, compatibility forms
# ----------------------------------------------------------------------------------------

NORM_FIXED = [
    "caf\u00e9 vs cafe\u0301", "\u00e9", "e\u0301", "E\u0301", "\u00c9",
    "\u212b Angstrom sign vs \u00c5 vs A\u030a", "\u212b", "A\u030a", "\u00c5",
    "\u2126 ohm vs \u03a9 omega", "\u212a kelvin vs K", "\u2000\u2001 singleton spaces",
    "\ufb01 ligature: \ufb01le \ufb02ow \ufb00 \ufb03 \ufb04", "\uff21\uff22\uff23\uff11\uff12\uff13 full-width",
    "\uff48\uff45\uff4c\uff4c\uff4f\u3000\uff57\uff4f\uff52\uff4c\uff44", "\uff01\uff1f\uff08\uff09\uff3b\uff3d",
    "\u1100\u1161\u11a8", "\u1100\u1161", "\u1112\u1161\u11ab\u1100\u1173\u11af",
    "\uac00\u11a8", "\uac01", "\u1100\u1161\u11a8\u1100\u1161", "\u3131\u314f", "\u1100\u1100\u1161",
    "\u1161\u11a8", "\u11a8", "\uac00\u1161", "\u1159\u1176",
    "a\u0323\u0301 vs a\u0301\u0323", "\u1ea1\u0301", "q\u0307\u0323", "\u1e0b\u0323", "\u1e0d\u0307",
    "o\u0308\u0304", "\u022b", "\u01d5 \u01d6", "u\u0308\u0304",
    "\u0958 \u0915\u093c", "\u095f", "\u0929 \u0928\u093c", "\u0931",
    "\U0001D15E \U0001D157\U0001D165", "\u0344", "\u0340\u0341", "\u0374 \u037e \u0387",
    "\uf900 \uf901 \uf902 CJK compatibility ideographs", "\u2f00 \u2f01 Kangxi radicals",
    "\u0f73 \u0f71\u0f72", "\u0f77", "\u1e9b\u0323", "\u1e69", "s\u0323\u0307", "s\u0307\u0323",
    "Ti\u1ebfng Vi\u1ec7t", "Tie\u0302\u0301ng Vie\u0323\u0302t",
    "Z\u0335\u0321\u0322a\u0337\u0328\u031bl\u0338\u0327g\u0334o\u0336\u0328 \u0336t\u0337e\u0334x\u0338t",
    "a" + "\u0301" * 20, "\u0301 leading combining mark", " \u0301", "\u0301\u0301",
    "1\u0301 2\u0308 _\u0303 .\u0300", "\u05d0\u05b7\u05bc", "\u05e9\u05c1\u05bc", "\u05e9\u05bc\u05c1",
    "\u0627\u0653 \u0622", "\u0648\u0654 \u0624", "\u0e01\u0e4a\u0e33",
    "\u00bd \u2155 \u00b2 \u2460 \u2168 \u33a1 \u2122 \u2116",
    "\u01c4 \u01c5 \u01c6 \u01f1 \u0132 \u0133 \u013f \u0149", "\u00df \u1e9e SS",
    "\u03d2\u0301 \u03d3", "\u0130 i\u0307", "\u2260 =\u0338", "\u226f >\u0338", "\u2204 \u2203\u0338",
    "\u00c7 C\u0327", "\u0107\u0327 \u1e09", "\u0113\u0300 \u1e15",
    "\u3099\u309a \u304b\u3099 \u304c \u30cf\u309a \u30d1", "\uff76\uff9e \u30ac",
    "\u2126\u212a\u212b\u2000\u2001\u1fee\u1fef\u1ffd",
]


def normalization_lines(rng):
    lines = list(NORM_FIXED)
    sources = (LANG["misc"][:8] + LANG["ko"][:5] + LANG["el"][:3] + LANG["he"][2:4]
               + LANG["ar"][2:3] + LANG["ja"][4:10] + ["na\u00efve r\u00e9sum\u00e9 co\u00f6perate",
                                                       "\u00e0\u00e1\u00e2\u00e3\u00e4\u00e5\u00e6\u00e7\u00e8"])
    for s in sources:                     # the NFD form of text that has precomposed chars
        d = unicodedata.normalize("NFD", s)
        if d != s:
            lines.append(d)
            lines.append(s + " | " + d)
    marks = [chr(c) for c in range(0x300, 0x370)] + ["\u0323", "\u0327", "\u0328", "\u031b"]
    bases = list("aeiouAEIOUcnsyzgkhwxCNSZ") + ["\u03b1", "\u0438", "\u05d0", "\u0915",
                                              "\u1100", "\uac00", "1", " ", "-"]
    for _ in range(70):
        out = []
        for _ in range(rng.randint(3, 12)):
            out.append(rng.choice(bases))
            for _ in range(rng.choice([0, 0, 1, 1, 2, 3])):
                out.append(rng.choice(marks))
        lines.append("".join(out))
    jam_l = [chr(c) for c in range(0x1100, 0x1113)]
    jam_v = [chr(c) for c in range(0x1161, 0x1176)]
    jam_t = [chr(c) for c in range(0x11a8, 0x11c3)]
    for _ in range(30):
        out = []
        for _ in range(rng.randint(2, 6)):
            out.append(rng.choice(jam_l) + rng.choice(jam_v))
            if rng.randint(0, 1):
                out.append(rng.choice(jam_t))
            if rng.randint(0, 4) == 0:
                out.append(rng.choice([" ", "a", "\u3131", rng.choice(jam_v)]))
        lines.append("".join(out))
    return lines


# ----------------------------------------------------------------------------------------
# Special-token text (as plain text) and near misses
# ----------------------------------------------------------------------------------------

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>",
            "<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>", "<|start_header_id|>",
            "<|end_header_id|>", "<|eom_id|>", "<|python_tag|>", "<|finetune_right_pad_id|>",
            "<|reserved_special_token_0|>", "<|reserved_special_token_247|>", "[INST]", "[/INST]",
            "<s>", "</s>", "<unk>", "[TOOL_CALLS]", "[AVAILABLE_TOOLS]", "[/AVAILABLE_TOOLS]",
            "[TOOL_RESULTS]", "[control_8]", "<tool_call>", "</tool_call>", "<tool_response>",
            "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>", "<|repo_name|>",
            "<|file_sep|>", "<|vision_start|>", "<|vision_pad|>", "<|image_pad|>", "<|box_start|>",
            "<|quad_end|>", "<|object_ref_start|>"]
NEAR_MISSES = ["<|im_start", "im_start|>", "<|endoftext|>>", "<<|endoftext|>", "<|endoftext|",
               "|endoftext|>", "<|im_end |>", "< |im_end|>", "<|IM_END|>", "<|Im_Start|>",
               "<think", "think>", "</ think>", "<Think>", "<think >", "<|begin_of_text>",
               "<begin_of_text|>", "<|eot_id", "<|eot_id|", "[INST", "INST]", "[ INST]", "[inst]",
               "[/INST", "/INST]", "<s", "s>", "< s>", "<s >", "<S>", "</s", "<unk", "unk>",
               "<UNK>", "<|reserved_special_token_9999|>", "<|>", "<||>", "<|", "|>", "[]", "<>",
               "<|endoftext\u200b|>", "<\uff5cendoftext\uff5c>", "\uff1cthink\uff1e",
               "<|im_start|\u200d>", "<|endoftext|\u0301>"]


def special_lines(rng):
    lines = []
    for s in SPECIALS:
        lines.append(s)
        lines.append("Before %s after" % s)
        lines.append("x%sy" % s)
    lines += [
        "<|im_start|>user\tHello!<|im_end|> <|im_start|>assistant",
        "<|im_start|><|im_end|><|endoftext|><|endoftext|>",
        "<|endoftext|><|endoftext|><|endoftext|>",
        "<think> I'm thinking </think> the answer is 42.",
        "<think></think>", "<think> </think>", "</think><think>",
        "<|begin_of_text|><|start_header_id|>user<|end_header_id|>  Hi<|eot_id|>",
        "<s>[INST] What's 2+2? [/INST] 4</s>", "<s> [INST]hi[/INST]</s> <s>",
        "  <s>  leading and trailing  </s>  ", " <unk> <unk><unk> ",
        "text<|endoftext|>>more", "<<|im_start|>>", "<|im_start|im_end|>",
        "<|im_start<|im_end|>", "<|endoftext|><|endoftext", "[INST][/INST][INST]",
        "<s><s><s></s></s>", "&lt;|im_start|&gt; escaped", "\\<|im_end|\\>",
        "`<|endoftext|>` in backticks", "\"<think>\" in quotes", "'</s>' in single quotes",
        "<|im_start|>\u3000\u00a0<|im_end|>", "😀<|im_end|>😀", "你好<think>世界</think>",
        "123<|eot_id|>456", "'s<|im_end|>'ll", "\t<|endoftext|>\t", "<|endoftext|> " * 8,
    ]
    for _ in range(85):
        parts = []
        for _ in range(rng.randint(2, 7)):
            r = rng.randint(0, 4)
            if r <= 1:
                parts.append(rng.choice(SPECIALS))
            elif r == 2:
                parts.append(rng.choice(NEAR_MISSES))
            elif r == 3:
                parts.append(rng.choice(CONTRACTION_CLAUSES))
            else:
                parts.append(rng.choice(["", " ", "  ", "\t", "\u00a0", "1", "a", "😀", "你",
                                         "'s", "é", "e\u0301", "\u200b"]))
        lines.append(rng.choice(["", " ", "", "\t"]).join(parts))
    for m in NEAR_MISSES:
        lines.append("near miss: " + m + " ok")
    return lines


# ----------------------------------------------------------------------------------------
# Whitespace, invisible characters and control characters
# ----------------------------------------------------------------------------------------

UNICODE_SPACES = ["\u00a0", "\u1680", "\u2000", "\u2001", "\u2002", "\u2003", "\u2004",
                  "\u2005", "\u2006", "\u2007", "\u2008", "\u2009", "\u200a", "\u202f",
                  "\u205f", "\u3000", "\u0085", "\u2028", "\u2029", "\u000b", "\u000c",
                  "\u001c", "\u001d", "\u001e", "\u001f"]
INVISIBLE = ["\u200b", "\u200c", "\u200d", "\u200e", "\u200f", "\u2060", "\u2061", "\u2062",
             "\u2063", "\u2064", "\ufeff", "\u00ad", "\u034f", "\u061c", "\u180e", "\u115f",
             "\u1160", "\u3164", "\uffa0"]


def whitespace_lines(rng):
    lines = [" ", "  ", "   ", "    ", " " * 8, " " * 16, " " * 33, "\t", "\t\t", "\t\t\t\t",
             " \t", "\t ", " \t \t ", "\t  \t", "\u00a0", "\u3000", "\u2003", "\u00a0 \u00a0",
             " " * 100, "\t" * 40, "", "", "",
             "   leading spaces", "\tleading tab", " \t leading mixed", "trailing spaces   ",
             "trailing tab\t", "trailing mixed \t ", "middle    four spaces", "middle\t\ttabs",
             "middle \t \t mixed", "a b  c   d    e     f      g       h",
             "  both sides  ", "\t both \t", "word\u00a0word", "word\u00a0\u00a0word",
             "word \u00a0word", "word\u00a0 word", "100\u00a0km", "Mr.\u00a0Smith",
             "word\u2003word\u3000word", "\u3000\u3000indented with ideographic spaces",
             "\u00a0leading nbsp", "trailing nbsp\u00a0", "zero\u200bwidth\u200bspace",
             "\ufeffBOM at the start of this line", "BOM\ufeffin the middle", "end BOM\ufeff",
             "\u200b", "\u200b\u200b\u200b", "\ufeff", " \u200b ", "a\u00adb soft hyphen",
             "  \n-less line with two leading spaces".replace("\n", ""),
             "x" + " " * 50 + "y", "x" + "\t" * 10 + "y", "end with space ", "end with two  ",
             "\u0085NEL at start", "line\u2028separator", "para\u2029separator",
             "vertical\u000btab", "form\u000cfeed", "file\u001csep group\u001dsep rec\u001esep unit\u001fsep",
             "!" + " " * 7 + "!", "." + "\t" * 3 + ".", "a \u00a0 b \u2003 c \u3000 d",
             ]
    for _ in range(85):
        out = []
        for _ in range(rng.randint(1, 8)):
            r = rng.randint(0, 6)
            if r <= 2:
                out.append(rng.choice([" ", "  ", "   ", "\t", " \t", "\t ", " " * rng.randint(4, 12)]))
            elif r == 3:
                out.append(rng.choice(UNICODE_SPACES))
            elif r == 4:
                out.append(rng.choice(INVISIBLE))
            else:
                out.append(rng.choice(["word", "x", "42", "你好", "'s", "é", "😀", "<|im_end|>",
                                       "don't", "-", "...", "\u0301"]))
        lines.append("".join(out))
    for _ in range(20):                   # whitespace-only lines of random mixes
        lines.append("".join(rng.choice([" ", "\t", "\u00a0", "\u3000", "\u2003", " "])
                             for _ in range(rng.randint(1, 20))))
    return lines


def control_lines(rng):
    ctrls = [chr(c) for c in range(1, 32) if c not in (10, 13)] + ["\u007f"]
    c1 = [chr(c) for c in range(0x80, 0xa0)]
    lines = ["".join(ctrls), " ".join(ctrls), "".join(c1)]
    for ch in ctrls:
        lines.append("ctrl%s%02x%sx" % (ch, ord(ch), ch))
    lines += ["bell\u0007bell", "\u001b[31mred\u001b[0m ANSI colour", "back\u0008space",
              "esc\u001b]0;title\u0007", "del\u007f\u007fdel", "\u0001start", "end\u0002",
              "\u0080\u0081\u0085\u009f C1 controls"]
    for _ in range(30):
        lines.append("".join(rng.choice(ctrls + c1 + ["a", " ", "1", "é", "\u200b"])
                             for _ in range(rng.randint(1, 16))))
    return lines


# ----------------------------------------------------------------------------------------
# Punctuation, URLs, e-mail, Markdown, LaTeX, math
# ----------------------------------------------------------------------------------------

PUNCT = ["“smart quotes”", "‘single smart’", "«guillemets»", "„German“", "‹single›",
         "— em dash —", "– en dash –", "…ellipsis…", "‽ interrobang", "⸮ irony", "¡Hola!",
         "¿Qué?", "·middle dot·", "• bullet", "※ reference", "〜wave〜", "、。「」『』【】〔〕",
         "﹏﹋", "‐‑‒―", "′ ″ ‴", "§ ¶ † ‡", "© ® ™ ℠", "° ± × ÷", "‰ ‱", "¦ ¬ ¯ ´ ¸",
         "!!!", "???", "?!", "!?", "...", "....", ",,,", ";;", "::", "--", "---", "''", "\"\"",
         "((()))", "[[[]]]", "{{{}}}", "<<<>>>", "@#$%^&*", "~`|\\", "/\\/\\", "_-_-_",
         "a-b_c.d:e;f,g!h?i", "(parenthetical)", "[bracketed]", "{braced}", "‹›«»",
         "؟،؛", "।॥", "๏ ๚ ๛", "\u3001\u3002\uff0c\uff0e", "⁇ ⁈ ⁉", "⁂ ⁑", "¨ ˆ ˜",
         "♠♣♥♦", "★☆", "→ ← ↑ ↓ ↔ ⇒ ⇐ ⇔", "✓ ✗ ✘", "■□▪▫", "▲△▼▽", "◆◇○●", "☐☑☒",
         "©2024", "™️", "#hashtag", "@mention", "$var", "%20", "&amp;", "\\n\\t\\r (escaped)",
         "\\u00e9 \\x41 \\0", "\"\"\"triple\"\"\"", "'''triple'''", "```", "~~~", "<!-- -->",
         "-->", "<--", "=>", "->", "::=", "|>", "<|", "||", "&&", "!=", "===", "!==", "**=",
         "... --- ...", "?.", "?:", "??", "#!", "/*", "*/", "//", "#", ";", "\\\\"]


def punct_lines(rng):
    lines = list(PUNCT)
    for _ in range(60):
        lines.append(rng.choice(["", " "]).join(rng.choice(PUNCT) for _ in range(rng.randint(2, 6))))
    return lines


def url_lines(rng):
    lines = ["https://example.com", "http://www.example.co.uk/path/to/page.html?x=1&y=2#frag",
             "https://github.com/huggingface/tokenizers/blob/main/tokenizers/src/lib.rs#L42-L57",
             "https://zh.wikipedia.org/wiki/中文", "https://xn--fsqu00a.xn--0zwm56d/",
             "https://例え.テスト/パス?クエリ=値", "ftp://user:pa%24%24@ftp.example.org:21/file.tar.gz",
             "file:///home/user/My%20Documents/report.pdf", "mailto:someone@example.com?subject=Hi",
             "user.name+tag@example.co.uk", "first_last@sub.domain.example", "\"quoted\"@example.com",
             "用户@例子.广告", "admin@[192.168.0.1]", "https://example.com/a_b-c.d~e!$&'()*+,;=:@",
             "www.example.com", "example.com/path", "localhost:8080/api/v1/users/42",
             "<https://example.com>", "[link](https://example.com \"title\")",
             "https://example.com/" + "a" * 150, "ssh://git@github.com:22/org/repo.git",
             "git@github.com:org/repo.git", "s3://bucket/key/with spaces/and%20escapes",
             "https://www.google.com/search?q=tokenizer+bpe&oq=tokenizer&sourceid=chrome&ie=UTF-8",
             "data:text/plain;base64,SGVsbG8sIFdvcmxkIQ==", "C:\\Users\\Admin\\Desktop\\file.txt",
             "/usr/local/lib/python3.11/site-packages/tokenizers/__init__.py", "~/.cache/huggingface/hub",
             "../../relative/path/./file", "\\\\server\\share\\folder"]
    hosts = ["example.com", "test.org", "api.dev.internal", "ünïcödé.de", "a.b.c.d.e.f.example"]
    for _ in range(40):
        user = rng.choice(["john.doe", "j", "x_y-z", "test+1", "müller", "ALICE"])
        host = rng.choice(hosts)
        path = "/".join(rng.choice(["api", "v2", "users", str(rng.randint(1, 99999)), "ünï", "a%20b",
                                    "search", "index.html"]) for _ in range(rng.randint(0, 5)))
        q = "&".join("%s=%s" % (rng.choice(["q", "id", "lang", "page"]),
                                rng.choice(["1", "en", "日本", "a+b", "%E2%9C%93", ""]))
                     for _ in range(rng.randint(0, 3)))
        url = "https://%s/%s%s" % (host, path, ("?" + q) if q else "")
        form = rng.choice(["See %s for details.", "%s", "(%s)", "<%s>", "Mail {mail} or visit %s"])
        lines.append(form.replace("{mail}", user + "@" + host) % url)
    return lines


MARKDOWN = r'''
# Heading 1
## Heading 2 with `code`
### Heading 3 — with dash
#### H4 ####
Setext heading
==============
Another one
-----------
* bullet one
* bullet two with **bold** and _italic_ and ***both***
  * nested bullet
    * deeper bullet
- dash item
+ plus item
1. first
2. second
10. tenth
- [ ] todo
- [x] done
> blockquote line
> > nested quote
```python
def f(x):
    return x  # code in markdown
```
~~~
tilde fence
~~~
    indented code block
| col A | col B | col C |
|:------|:-----:|------:|
| 1     | two   | 3.0   |
| ä     | 你好   | 😀    |
![alt text](image.png "Title")
[ref link][1]
[1]: https://example.com
***
___
Line with trailing two spaces for a break  
Line with a backslash break\
<details><summary>Click</summary>hidden</details>
Term
: Definition
Footnote[^1].
[^1]: The footnote text.
~~strikethrough~~ ==highlight== H~2~O x^2^
\*not italic\* \_not\_ \# not heading
'''

LATEX = r'''
$E = mc^2$
$$\int_0^\infty e^{-x^2}\,dx = \frac{\sqrt{\pi}}{2}$$
\begin{equation}\label{eq:softmax}
  \mathrm{softmax}(z)_i = \frac{e^{z_i}}{\sum_{j=1}^{K} e^{z_j}}
\end{equation}
\[ \mathbf{A}\vec{x} = \lambda \vec{x}, \quad \det(\mathbf{A} - \lambda I) = 0 \]
\documentclass[11pt]{article}
\usepackage{amsmath,amssymb}
\section*{Introduction}\label{sec:intro}
\textbf{bold} \emph{emph} \texttt{mono} \cite{vaswani2017} \ref{fig:1} ~ \\ \% \& \# \_ \{ \}
\sum_{i=1}^{n} i = \frac{n(n+1)}{2}
\lim_{n \to \infty} \left(1 + \frac{1}{n}\right)^n = e
\begin{pmatrix} a & b \\ c & d \end{pmatrix}
\alpha\beta\gamma\delta\epsilon\varepsilon\zeta\eta\theta
x_{i,j}^{(t+1)} = x_{i,j}^{(t)} - \eta \nabla_{x} \mathcal{L}
'''

MATH = ["∀x∈ℝ: x²≥0", "∃n∈ℕ, n>0", "∑ᵢ aᵢ = ∏ⱼ bⱼ", "√2 ≈ 1.41421356", "∞ ≠ ∅", "a ≤ b ≥ c",
        "A ⊂ B ⊆ C ⊄ D", "x ∧ y ∨ ¬z", "f: X → Y", "∂f/∂x", "∫∮∯", "∇·E = ρ/ε₀", "ℏω", "ℵ₀ ℶ",
        "𝐀𝐁𝐂 𝐚𝐛𝐜", "𝔸𝔹ℂ 𝕏𝕐ℤ", "𝒜ℬ𝒞", "𝓐𝓑𝓒", "𝖆𝖇𝖈", "𝙰𝙱𝙲", "𝛼𝛽𝛾", "⟨ψ|φ⟩", "‖v‖₂",
        "⌊x⌋ ⌈y⌉", "±∓", "∝", "≡ ≢ ≅ ≈", "⊕ ⊗ ⊙", "∴ ∵", "∠ ⊥ ∥", "ℵ ℶ ℷ ℸ", "π ≈ 3.14",
        "1 + 1 = 2", "2 × 3 = 6", "10 ÷ 2 = 5", "x⁻¹ x⁰ x¹ x² x³ xⁿ", "H₂O CO₂ C₆H₁₂O₆",
        "½ + ¼ = ¾", "e^{iπ} + 1 = 0", "(a+b)^2=a^2+2ab+b^2", "|x| < ε", "P(A|B) = P(B|A)P(A)/P(B)"]


def markup_lines(rng):
    lines = MARKDOWN.strip("\n").split("\n") + LATEX.strip("\n").split("\n") + list(MATH)
    for _ in range(60):
        lines.append(" ".join(rng.choice(MATH) for _ in range(rng.randint(2, 4))))
    return lines


# ----------------------------------------------------------------------------------------
# Long words and repeated characters
# ----------------------------------------------------------------------------------------

B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


def long_lines(rng):
    words = ["token", "izer", "merge", "byte", "pair", "encode", "super", "cali", "fragilistic",
             "expiali", "docious", "anti", "dis", "establish", "ment", "arian", "ism"]
    lines = [
        "Pneumonoultramicroscopicsilicovolcanoconiosis",
        "Supercalifragilisticexpialidocious",
        "Rindfleischetikettierungsüberwachungsaufgabenübertragungsgesetz",
        "Llanfairpwllgwyngyllgogerychwyrndrobwllllantysiliogogogoch",
        "Taumatawhakatangihangakoauauotamateaturipukakapikimaungahoronukupokaiwhenuakitanatahu",
        "methionylthreonylthreonylglutaminylarginyl" * 6,
        "a" * 300, "A" * 257, "ab" * 150, "abc" * 100, "x" * 1000,
        "0123456789" * 25, "9" * 500, "1" * 201,
        "".join(rng.choice("ACGT") for _ in range(400)),
        "".join(rng.choice("0123456789abcdef") for _ in range(256)),
        "".join(rng.choice(B64) for _ in range(344)) + "==",
        "%E4%BD%A0%E5%A5%BD" * 30,
        "你好世界" * 60, "한국어" * 80, "ありがとう" * 50, "привет" * 40, "مرحبا" * 50,
        "é" * 200, "e\u0301" * 200, "😀" * 120, "👨‍👩‍👧‍👦" * 25, "🇺🇸" * 100,
        "_" * 220, "-" * 300, "." * 400, "=" * 256, "#" * 210, "*" * 200, "/" * 200,
        "'s" * 120, "'S'LL" * 60, "a'" * 150,
        "\u200b".join(["word"] * 60),
        "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaab",
    ]
    for _ in range(24):
        lines.append("".join(rng.choice(words) for _ in range(rng.randint(25, 80))))
    for _ in range(6):
        w = "".join(rng.choice(words + ["ü", "ß", "é", "ø", "ñ", "中", "😀", "1", "'s"])
                    for _ in range(rng.randint(40, 100)))
        lines.append(w)
    return lines


def repeat_lines(rng):
    chars = ["=", "-", "_", "*", "#", "~", ".", "!", "?", "a", "Z", "0", "9", " ", "\t", "/",
             "\\", "|", "+", "<", ">", "—", "…", "·", "•", "中", "あ", "한", "😀", "\u00a0",
             "\u3000", "'", "\"", "`", "^", "@", "$", "%", "&", "(", ")", "[", "]", "{", "}"]
    lines = []
    for ch in chars:
        lines.append(ch * rng.choice([2, 3, 4, 5, 7, 8, 10, 16, 31, 64, 80, 100, 129]))
    for _ in range(40):
        unit = "".join(rng.choice(chars) for _ in range(rng.randint(1, 3)))
        lines.append(unit * rng.randint(2, 60))
    return lines


# ----------------------------------------------------------------------------------------
# Random code points from long-assigned ranges (same answer under any Unicode version >= 6)
# ----------------------------------------------------------------------------------------

RANGES = [(0x20, 0x7e), (0xa0, 0x24f), (0x300, 0x36f), (0x391, 0x3a1), (0x3a3, 0x3ce),
          (0x400, 0x4ff), (0x5d0, 0x5ea), (0x621, 0x652), (0x660, 0x669), (0x905, 0x939),
          (0x93e, 0x94d), (0x966, 0x96f), (0xe01, 0xe3a), (0xe3f, 0xe5b), (0x1100, 0x1112),
          (0x1161, 0x1175), (0x11a8, 0x11c2), (0x1e00, 0x1eff), (0x2000, 0x2027),
          (0x202f, 0x205e), (0x2190, 0x22ff), (0x3000, 0x303f), (0x3041, 0x3096),
          (0x30a1, 0x30fa), (0x4e00, 0x9fa5), (0xac00, 0xd7a3), (0xff01, 0xff5e),
          (0xff61, 0xff9f), (0x1f600, 0x1f64f), (0x1f300, 0x1f320), (0x1d400, 0x1d454),
          (0x1d7ce, 0x1d7ff), (0x20000, 0x20fff)]


def random_codepoint_lines(rng):
    lines = []
    for _ in range(90):
        picks = [rng.choice(RANGES) for _ in range(rng.randint(1, 4))]
        out = []
        for _ in range(rng.randint(1, 40)):
            lo, hi = rng.choice(picks)
            out.append(chr(rng.randint(lo, hi)))
            if rng.randint(0, 5) == 0:
                out.append(rng.choice([" ", " ", "\t", "  ", "'s", "1", "\u0301"]))
        lines.append("".join(out))
    return lines


# ----------------------------------------------------------------------------------------
# Mixed lines: fragments of every kind glued together
# ----------------------------------------------------------------------------------------

def mixed_lines(rng, pools):
    lines = []
    seps = ["", " ", " ", " ", "  ", "\t", "\u00a0", "\u3000", "\u200b", ", ", "\u2003", "'s "]
    for _ in range(150):
        parts = []
        for _ in range(rng.randint(2, 6)):
            pool = rng.choice(pools)
            frag = rng.choice(pool)
            if len(frag) > 120:
                frag = frag[:120]
            parts.append(frag)
        lines.append(rng.choice(seps).join(parts))
    return lines


def build_lines():
    rng = random.Random(SEED)
    header = ["# dms-retrofit tokenizer corpus: generated by tests/data/make_tokenizer_corpus.py "
              "(seed %d); do not edit by hand." % SEED]
    sections = [
        english_lines(rng), code_lines(rng), number_lines(rng), script_lines(rng),
        emoji_lines(rng), normalization_lines(rng), special_lines(rng), whitespace_lines(rng),
        control_lines(rng), punct_lines(rng), url_lines(rng), markup_lines(rng),
        long_lines(rng), repeat_lines(rng), random_codepoint_lines(rng),
    ]
    pools = [s for s in sections if s]
    sections.append(mixed_lines(rng, pools))
    lines = list(header)
    fillers = ["", "", "", " ", "  ", "\t", " \t", "\u00a0", "\u3000", "    "]
    for sec in sections:
        for line in sec:
            lines.append(line)
            # Sprinkle empty and whitespace-only lines so that 8-line blocks see
            # "\n\n", " \n", "\t\n " and the like at many places.
            if rng.randint(0, 15) == 0:
                lines.append(rng.choice(fillers))
        lines.append("")
    return lines


def render(lines):
    for i, line in enumerate(lines):
        if "\n" in line or "\r" in line or "\x00" in line:
            raise ValueError("line %d holds \\n, \\r or NUL: %r" % (i + 1, line))
    text = "\n".join(lines) + "\n"
    data = text.encode("utf-8")       # raises on lone surrogates
    if data.startswith(b"\xef\xbb\xbf"):
        raise ValueError("the corpus must not start with a BOM")
    if not MIN_LINES <= len(lines) <= MAX_LINES:
        raise ValueError("%d lines, want %d..%d" % (len(lines), MIN_LINES, MAX_LINES))
    if len(data) >= MAX_BYTES:
        raise ValueError("%d bytes, want < %d" % (len(data), MAX_BYTES))
    return data


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=DEFAULT_OUT, help="where to write (default: %(default)s)")
    ap.add_argument("--check", action="store_true",
                    help="write nothing; exit 1 if --out differs from what would be written")
    args = ap.parse_args()
    data = render(build_lines())
    if args.check:
        try:
            with open(args.out, "rb") as f:
                same = f.read() == data
        except OSError:
            same = False
        print("%s: %s" % (args.out, "up to date" if same else "STALE"), file=sys.stderr)
        return 0 if same else 1
    with open(args.out, "wb") as f:
        f.write(data)
    print("wrote %s: %d lines, %d bytes" % (args.out, data.count(b"\n"), len(data)),
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
