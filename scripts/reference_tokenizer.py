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
