#!/usr/bin/env bash
# ctest fixture: the pinned Hugging Face references (.venv, made by scripts/setup.sh
# --reference) run over the test corpus and conversations; tokenizer_tests compare with
# what this writes to OUT_DIR. Usage: reference_outputs.sh OUT_DIR
set -euo pipefail
src=$(cd "$(dirname "$0")/.." && pwd)
out=$1
assets=${DMS_ASSETS:-$src/../shared/assets}
tok=$assets/tokenizers
py=$src/.venv/bin/python
if [ ! -x "$py" ]; then
  echo "reference_outputs.sh: $py is missing: run scripts/setup.sh --reference" >&2
  exit 1
fi
[ -d "$tok" ] || { echo "reference_outputs.sh: $tok is missing" >&2; exit 1; }
mkdir -p "$out"
ref() { "$py" "$src/scripts/reference_tokenizer.py" "$@"; }
corpus=$src/tests/data/tokenizer_corpus.txt
convs=$src/tests/data/chat_conversations.jsonl
# In parallel: most of the time is Python start-up and file loading.
pids=()
for n in qwen3 qwen2 llama3 mistral; do
  ref encode --tokenizer "$tok/$n/tokenizer.json" --corpus "$corpus" --out "$out/$n.jsonl" &
  pids+=($!)
done
ref encode --tokenizer "$tok/qwen2.5" --corpus "$corpus" --out "$out/qwen2.5.jsonl" &
pids+=($!)
for p in "${pids[@]}"; do wait "$p"; done
pids=()
for n in qwen3 qwen2.5 llama3; do
  for r in keep drop; do
    ref chat --tokenizer-dir "$tok/$n" --conversations "$convs" --reasoning "$r" \
      --out "$out/chat_${n}_$r.jsonl" &
    pids+=($!)
  done
done
ref variants --assets "$tok" --out "$out/variants" --corpus "$corpus" --lines 300 &
pids+=($!)
for p in "${pids[@]}"; do wait "$p"; done
echo "reference outputs in $out"
