#!/usr/bin/env bash
# The main job end to end on the demo model (karpathy's stories260K).
# Uses $DMS_ASSETS (or ../shared/assets) when present, otherwise downloads the
# model and tokenizer from their public source into runs/models/.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh

ASSETS=${DMS_ASSETS:-$(cd .. && pwd)/shared/assets}
MODEL_DIR="$ASSETS/stories260K"
if [ ! -f "$MODEL_DIR/stories260K.bin" ]; then
  MODEL_DIR=runs/models/stories260K
  if [ ! -f "$MODEL_DIR/stories260K.bin" ]; then
    echo "quickstart: no local stories260K; downloading it"
    mkdir -p "$MODEL_DIR"
    base=https://huggingface.co/karpathy/tinyllamas/resolve/main/stories260K
    for f in stories260K.bin tok512.model; do
      curl -fsSL -o "$MODEL_DIR/$f.part" "$base/$f" && mv "$MODEL_DIR/$f.part" "$MODEL_DIR/$f"
    done
  fi
fi

echo "== dms inspect $MODEL_DIR/stories260K.bin"
build/dms inspect "$MODEL_DIR/stories260K.bin"
echo
echo "== dms generate (greedy, 256 tokens)"
build/dms generate --model "$MODEL_DIR/stories260K.bin" --tokenizer "$MODEL_DIR/tok512.model" \
  --steps 256 --temperature 0
