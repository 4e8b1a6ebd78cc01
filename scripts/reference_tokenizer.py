#!/usr/bin/env python3
"""Reference outputs of Hugging Face `tokenizers` / `transformers`, which the C++ tokenizer
must reproduce id for id. Needs the pinned packages of scripts/requirements-reference.txt
(e.g. `.venv/bin/python scripts/reference_tokenizer.py ...`); nothing here is used by the
toolkit itself.

  encode  one JSON line per case: every corpus line alone (without its '\\n', empty lines
          included), then every block of 8 lines starting at line 0, 8, 16, ... joined
          with '\\n' plus a trailing '\\n', then the whole corpus as one text:
          {"ids", "ids_special", "decoded", "decoded_skip"}
  chat    one JSON line per conversation: {"text": apply_chat_template(tokenize=False),
          "ids": apply_chat_template(tokenize=True)}, checked against encoding the text
          without adding special tokens
  bench   single-threaded encode speed of a file's lines, one line at a time

The corpus is read as bytes, decoded as strict UTF-8 and split on '\\n' only (it holds
U+000B, U+000C, U+001C..U+001E, U+0085, U+2028, U+2029, which str.splitlines() would also
split on); a final '\\n' ends the last line instead of starting an empty one.
"""

import os

# Before `tokenizers` is imported: one Rayon thread (bench is single-threaded, and the
# machines this runs on are shared), no fork warnings, no PyTorch/TensorFlow notices.
os.environ["RAYON_NUM_THREADS"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

PINNED = {"tokenizers": "0.22.2", "transformers": "4.57.6", "jinja2": "3.1.6"}
DATE_STRING = "26 Jul 2024"
BLOCK_LINES = 8
HERE = os.path.dirname(os.path.abspath(__file__))



def drop_reasoning(message):
    """What `dms data prepare --chat --reasoning drop` does to a message: no
    reasoning_content, and assistant content without its inline <think>...</think> (what
    follows the last </think>, leading newlines stripped, as Qwen3's template does)."""
    m = {k: v for k, v in message.items() if k != "reasoning_content"}
    c = m.get("content")
    if m.get("role") == "assistant" and isinstance(c, str) and "</think>" in c:
        m["content"] = c.split("</think>")[-1].lstrip("\n")
    return m

def die(msg, code=2):
    print("reference_tokenizer.py: error: " + msg, file=sys.stderr)
    sys.exit(code)


def require(*names):
    """Imports the named packages, or exits with a message naming the fix."""
    mods = []
    for name in names:
        try:
            mods.append(__import__(name))
        except ImportError as e:
            die("cannot import %r (%s).\n  Use the reference environment, e.g.\n"
                "    python3 -m venv .venv && .venv/bin/pip install -r %s\n"
                "    .venv/bin/python scripts/reference_tokenizer.py ..."
                % (name, e, os.path.relpath(os.path.join(HERE, "requirements-reference.txt"))))
        version = getattr(mods[-1], "__version__", None)
        if name in PINNED and version != PINNED[name]:
            print("reference_tokenizer.py: warning: %s %s is not the pinned %s; outputs may "
                  "differ from the committed expectations" % (name, version, PINNED[name]),
                  file=sys.stderr)
    return mods if len(mods) > 1 else mods[0]


def read_text(path):
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        die("cannot read %s: %s" % (path, e.strerror))
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        die("%s is not valid UTF-8: %s" % (path, e))


def split_lines(text):
    lines = text.split("\n")
    if text.endswith("\n"):
        lines.pop()
    return lines


def encode_cases(text):
    lines = split_lines(text)
    cases = list(lines)
    for start in range(0, len(lines), BLOCK_LINES):
        cases.append("\n".join(lines[start:start + BLOCK_LINES]) + "\n")
    cases.append(text)
    return cases, len(lines)


class Backend:
    """One interface over `tokenizers.Tokenizer` (a tokenizer.json file) and a
    `transformers` fast tokenizer (a directory with vocab.json + merges.txt +
    tokenizer_config.json, or with tokenizer.json)."""

    def __init__(self, path):
        if os.path.isdir(path):
            transformers = require("transformers")
            self.kind = "transformers"
            try:
                self.tok = transformers.AutoTokenizer.from_pretrained(path, use_fast=True)
            except Exception as e:  # noqa: BLE001 - report any loader failure plainly
                die("transformers cannot load %s: %s" % (path, e))
            if not getattr(self.tok, "is_fast", False):
                die("%s did not give a fast tokenizer" % path)
            self.rust = self.tok.backend_tokenizer
        elif os.path.isfile(path):
            tokenizers = require("tokenizers")
            self.kind = "tokenizers"
            try:
                self.tok = tokenizers.Tokenizer.from_file(path)
            except Exception as e:  # noqa: BLE001
                die("tokenizers cannot load %s: %s" % (path, e))
            self.rust = self.tok
        else:
            die("%s is neither a tokenizer.json file nor a directory" % path)

    def encode(self, text, special):
        if self.kind == "tokenizers":
            return self.tok.encode(text, add_special_tokens=special).ids
        return self.tok(text, add_special_tokens=special)["input_ids"]

    def decode(self, ids, skip):
        return self.tok.decode(ids, skip_special_tokens=skip)


def cmd_encode(args):
    text = read_text(args.corpus)
    cases, n_lines = encode_cases(text)
    backend = Backend(args.tokenizer)
    n_tokens = n_roundtrip = 0
    t0 = time.perf_counter()
    with open(args.out, "w", encoding="utf-8", newline="\n") as out:
        for case in cases:
            ids = backend.encode(case, False)
            rec = {
                "ids": ids,
                "ids_special": backend.encode(case, True),
                "decoded": backend.decode(ids, False),
                "decoded_skip": backend.decode(ids, True),
            }
            n_tokens += len(ids)
            n_roundtrip += rec["decoded"] != case
            out.write(json.dumps(rec, ensure_ascii=False) + "\n")
    secs = time.perf_counter() - t0
    print("encode %s (%s): %d cases (%d lines, %d blocks, 1 whole), %d tokens, "
          "%d cases with decode(encode(x)) != x, %.2f s -> %s"
          % (args.tokenizer, backend.kind, len(cases), n_lines, len(cases) - n_lines - 1,
             n_tokens, n_roundtrip, secs, args.out), file=sys.stderr)
    return 0


def as_id_list(result):
    """apply_chat_template(tokenize=True) as a plain list of ints, whatever the wrapper."""
    if hasattr(result, "keys") and "input_ids" in result:
        result = result["input_ids"]
    if hasattr(result, "tolist"):
        result = result.tolist()
    result = list(result)
    if len(result) == 1 and isinstance(result[0], (list, tuple)):
        result = list(result[0])
    if not all(isinstance(i, int) for i in result):
        die("apply_chat_template returned %r, not a list of ints" % type(result[0]))
    return result


def load_conversations(path):
    convs = []
    for n, line in enumerate(split_lines(read_text(path)), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except ValueError as e:
            die("%s:%d: invalid JSON: %s" % (path, n, e))
        msgs = obj.get("messages") if isinstance(obj, dict) else None
        if not isinstance(msgs, list) or not all(
                isinstance(m, dict) and isinstance(m.get("role"), str)
                and isinstance(m.get("content"), str) for m in msgs):
            die("%s:%d: want {\"messages\": [{\"role\": str, \"content\": str, ...}, ...]}"
                % (path, n))
        convs.append(msgs)
    return convs


def cmd_chat(args):
    transformers = require("transformers")
    require("jinja2")
    if not os.path.isfile(os.path.join(args.tokenizer_dir, "tokenizer_config.json")):
        die("%s has no tokenizer_config.json" % args.tokenizer_dir)
    try:
        tok = transformers.AutoTokenizer.from_pretrained(args.tokenizer_dir, use_fast=True)
    except Exception as e:  # noqa: BLE001
        die("transformers cannot load %s: %s" % (args.tokenizer_dir, e))
    if not getattr(tok, "chat_template", None):
        die("%s has no chat_template" % args.tokenizer_dir)
    convs = load_conversations(args.conversations)
    mismatches = n_tokens = 0
    t0 = time.perf_counter()
    with open(args.out, "w", encoding="utf-8", newline="\n") as out:
        for n, msgs in enumerate(convs, 1):
            if args.reasoning == "drop":
                msgs = [drop_reasoning(m) for m in msgs]
            text = tok.apply_chat_template(msgs, tokenize=False, date_string=DATE_STRING)
            ids = as_id_list(tok.apply_chat_template(msgs, tokenize=True,
                                                     date_string=DATE_STRING))
            again = tok(text, add_special_tokens=False)["input_ids"]
            if ids != again:
                mismatches += 1
                print("reference_tokenizer.py: warning: conversation %d: template ids (%d) != "
                      "encode(text, add_special_tokens=False) (%d)" % (n, len(ids), len(again)),
                      file=sys.stderr)
            n_tokens += len(ids)
            out.write(json.dumps({"text": text, "ids": ids}, ensure_ascii=False) + "\n")
    print("chat %s (reasoning %s): %d conversations, %d tokens, %d mismatches, %.2f s -> %s"
          % (args.tokenizer_dir, args.reasoning, len(convs), n_tokens, mismatches,
             time.perf_counter() - t0, args.out), file=sys.stderr)
    return 1 if mismatches else 0


def cmd_bench(args):
    if args.repeat < 1:
        die("--repeat must be at least 1")
    text = read_text(args.text)
    lines = split_lines(text)
    n_bytes = sum(len(line.encode("utf-8")) for line in lines)
    rust = Backend(args.tokenizer).rust
    for _ in range(args.warmup):
        for line in lines:
            rust.encode(line, add_special_tokens=False)
    tokens = 0
    t0 = time.perf_counter()
    for _ in range(args.repeat):
        for line in lines:
            tokens += len(rust.encode(line, add_special_tokens=False).ids)
    secs = time.perf_counter() - t0
    print(json.dumps({"tokens": tokens, "seconds": round(secs, 6),
                      "tokens_per_s": round(tokens / secs, 1) if secs > 0 else None,
                      "bytes": n_bytes * args.repeat, "lines": len(lines),
                      "repeat": args.repeat}))
    return 0



# Components the five real tokenizers do not use, each a small edit of a real file: the
# C++ tokenizer must match `tokenizers` on them too.
def _added(content, **kw):
    t = {"id": None, "content": content, "single_word": False, "lstrip": False,
         "rstrip": False, "normalized": False, "special": True}
    t.update(kw)
    return t


def _byte_level(**kw):
    b = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False,
         "use_regex": False}
    b.update(kw)
    return b


def _split(pattern, behavior, invert=False):
    return {"type": "Split", "pattern": pattern, "behavior": behavior, "invert": invert}


VARIANTS = {
    # name: (base tokenizer.json, edit of its JSON)
    "added_strip_word": ("qwen2", lambda j: j["added_tokens"].extend([
        _added("<L>", lstrip=True), _added("<R>", rstrip=True),
        _added("cat", single_word=True, special=False),
        _added("Hello", normalized=True, special=False),
        _added("<LR>", lstrip=True, rstrip=True)])),
    "split_removed": ("qwen2", lambda j: j.update(pre_tokenizer={"type": "Sequence", "pretokenizers": [
        _split({"String": " "}, "Removed"), _byte_level()]})),
    "split_merged_prev": ("qwen2", lambda j: j.update(pre_tokenizer={"type": "Sequence", "pretokenizers": [
        _split({"Regex": "\\d+"}, "MergedWithPrevious"), _byte_level()]})),
    "split_merged_next": ("qwen2", lambda j: j.update(pre_tokenizer={"type": "Sequence", "pretokenizers": [
        _split({"Regex": "\\s+"}, "MergedWithNext"), _byte_level()]})),
    "split_contiguous_invert": ("qwen2", lambda j: j.update(pre_tokenizer={"type": "Sequence", "pretokenizers": [
        _split({"Regex": "\\p{L}"}, "Contiguous", invert=True), _byte_level()]})),
    "gpt2_byte_level": ("qwen2", lambda j: j.update(
        pre_tokenizer=_byte_level(add_prefix_space=True, use_regex=True), normalizer=None)),
    "nfkc_replace": ("qwen2", lambda j: j.update(normalizer={"type": "Sequence", "normalizers": [
        {"type": "NFKC"}, {"type": "Replace", "pattern": {"String": "ab"}, "content": "ba"}]})),
    "nfd_no_decoder": ("qwen2", lambda j: j.update(normalizer={"type": "NFD"}, decoder=None)),
    "metaspace_always_split": ("mistral", lambda j: j.update(pre_tokenizer={
        "type": "Metaspace", "replacement": "\u2581", "prepend_scheme": "always", "split": True})),
    "metaspace_never": ("mistral", lambda j: (j.update(pre_tokenizer={
        "type": "Metaspace", "replacement": "\u2581", "prepend_scheme": "never", "split": False}),
        j.update(decoder={"type": "Metaspace", "replacement": "\u2581", "prepend_scheme": "never",
                          "split": False}))),
    "unk_fused_no_fallback": ("mistral", lambda j: j["model"].update(byte_fallback=False, fuse_unk=True)),
    "unk_unfused": ("mistral", lambda j: j["model"].update(byte_fallback=False, fuse_unk=False)),
    "template_suffix": ("mistral", lambda j: j.update(post_processor={
        "type": "TemplateProcessing",
        "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                   {"SpecialToken": {"id": "</s>", "type_id": 0}}],
        "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
        "special_tokens": {"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]},
                           "</s>": {"id": "</s>", "ids": [2], "tokens": ["</s>"]}}})),
    "strip_decoder": ("qwen2", lambda j: j.update(decoder={"type": "Sequence", "decoders": [
        _byte_level(), {"type": "Strip", "content": " ", "start": 2, "stop": 0}]})),  # stop > 0 panics in tokenizers on an empty text
}

VARIANT_TEXTS = [
    "Hello world", " Hello  world ", "a <L> b <R> c", "x<L>y<R>z", "  <LR>  ", "cat concat cat_ cat.",
    "Hello, Hello! HelloHello", "\uff21\uff22\u2460 \ufb01 e\u0301 \u212b", "ab abab cab",
    "12 apples and 345 pears 6789", "tab\there\nnew  line", "\u4f60\u597d\uff0c\u4e16\u754c",
    "\U0001F468\u200D\U0001F469\u200D\U0001F467", "\u0645\u0631\u062d\u0628\u0627", "",
    "   leading", "trailing   ", "[INST] hi [/INST]</s>", "<s>x</s>", "\u2581already", "a\u2581b",
    "caf\u00e9 na\u00efve r\u00e9sum\u00e9", "\u0e2a\u0e27\u0e31\u0e2a\u0e14\u0e35", "x" * 300,
]


def cmd_variants(args):
    tokenizers = require("tokenizers")
    os.makedirs(args.out, exist_ok=True)
    corpus = split_lines(read_text(args.corpus))[:args.lines] if args.corpus else []
    texts = VARIANT_TEXTS + corpus
    names = []
    for name, (base, edit) in VARIANTS.items():
        with open(os.path.join(args.assets, base, "tokenizer.json"), encoding="utf-8") as f:
            j = json.load(f)
        edit(j)
        next_id = max(t["id"] for t in j["added_tokens"] if t["id"] is not None) + 1
        for t in j["added_tokens"]:
            if t["id"] is None:
                t["id"] = next_id
                next_id += 1
        path = os.path.join(args.out, name + ".json")
        with open(path, "w", encoding="utf-8") as f:
            json.dump(j, f, ensure_ascii=False)
        tok = tokenizers.Tokenizer.from_file(path)
        with open(os.path.join(args.out, name + ".jsonl"), "w", encoding="utf-8") as f:
            for text in texts:
                ids = tok.encode(text, add_special_tokens=False).ids
                f.write(json.dumps({"text": text, "ids": ids,
                                    "ids_special": tok.encode(text, add_special_tokens=True).ids,
                                    "decoded": tok.decode(ids, skip_special_tokens=False),
                                    "decoded_skip": tok.decode(ids, skip_special_tokens=True)},
                                   ensure_ascii=False) + "\n")
        names.append(name)
    with open(os.path.join(args.out, "manifest.json"), "w") as f:
        json.dump(names, f)
    print("variants: %d tokenizers x %d texts -> %s" % (len(names), len(texts), args.out),
          file=sys.stderr)
    return 0

def main(argv=None):
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0].replace("\n", " "),
        epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", metavar="{encode,chat,bench}")
    sub.required = True

    p = sub.add_parser("encode", help="ids and decodes of every corpus case")
    p.add_argument("--tokenizer", required=True, metavar="PATH",
                   help="a tokenizer.json file (tokenizers.Tokenizer.from_file), or a directory "
                        "with vocab.json + merges.txt + tokenizer_config.json "
                        "(transformers.AutoTokenizer, fast)")
    p.add_argument("--corpus", required=True, metavar="FILE", help="UTF-8 text, split on '\\n'")
    p.add_argument("--out", required=True, metavar="OUT.jsonl")
    p.set_defaults(func=cmd_encode)

    p = sub.add_parser("chat", help="chat-template text and ids of every conversation")
    p.add_argument("--tokenizer-dir", required=True, metavar="DIR",
                   help="tokenizer_config.json (with chat_template) and tokenizer.json or "
                        "vocab.json + merges.txt")
    p.add_argument("--conversations", required=True, metavar="FILE",
                   help='JSON lines, each {"messages": [{"role", "content", '
                        '["reasoning_content"]}, ...]}')
    p.add_argument("--out", required=True, metavar="OUT.jsonl")
    p.add_argument("--reasoning", choices=["keep", "drop"], default="keep",
                   help="drop: delete every reasoning_content key and the inline "
                   "<think>...</think> of assistant content first (default: %(default)s)")
    p.set_defaults(func=cmd_chat)

    p = sub.add_parser("variants", help="edited copies of real tokenizer.json files "
                       "exercising components the real ones do not use, with their outputs")
    p.add_argument("--assets", required=True, help="the tokenizers folder of the shared assets")
    p.add_argument("--out", required=True, help="folder for <name>.json, <name>.jsonl, manifest.json")
    p.add_argument("--corpus", help="also encode the first --lines lines of this file")
    p.add_argument("--lines", type=int, default=300)
    p.set_defaults(func=cmd_variants)

    p = sub.add_parser("bench", help="single-threaded encode speed, one line at a time")
    p.add_argument("--tokenizer", required=True, metavar="PATH",
                   help="a tokenizer.json file or a tokenizer directory, as for encode")
    p.add_argument("--text", required=True, metavar="FILE", help="UTF-8 text, split on '\\n'")
    p.add_argument("--repeat", type=int, default=1, metavar="N",
                   help="timed passes over all lines (default: %(default)s)")
    p.add_argument("--warmup", type=int, default=1, metavar="N",
                   help="untimed passes first (default: %(default)s)")
    p.set_defaults(func=cmd_bench)

    args = ap.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
