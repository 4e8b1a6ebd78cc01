#!/usr/bin/env bash
# The main job end to end on the demo model (karpathy's stories260K), in minutes on 2 CPU cores:
#   data -> dms retrofit (CR annealed to the target, checkpoints kept on the way) -> dms export
#   -> dms eval --compare (held-out samples and text) -> dms eval --curve -> dms report
# Assets: $DMS_ASSETS, else ../shared/assets; without either the model and tokenizer are
# downloaded from their public source into runs/models/ and the training data is sampled
# from the model itself. Outputs go to $DMS_RUN_DIR (default runs/quickstart).
# Knobs (environment): STEPS, TARGET_CR, WINDOW, MICRO_BATCH, LR, TRAIN_MODE, KD (defaults: the
# recipe chosen in docs/results.md; the target CR is reached at 6/11 of the steps, 600 of
# 1100, and the rest trains at it).
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
MODEL="$MODEL_DIR/stories260K.bin"
TOK="$MODEL_DIR/tok512.model"
RUN=${DMS_RUN_DIR:-runs/quickstart}
STEPS=${STEPS:-1100}
TARGET_CR=${TARGET_CR:-12}
WINDOW=${WINDOW:-16}
MICRO_BATCH=${MICRO_BATCH:-4}
LR=${LR:-1e-4}
TRAIN_MODE=${TRAIN_MODE:-all}
KD=${KD:-teacher_student}
DMS=build/dms
# The curve's points: the checkpoints at which the schedule reaches CR 2, 4, 6, ... (and the
# target), each evaluated by `dms eval --curve`.
KEEP_AT_CR=$(awk -v t="$TARGET_CR" 'BEGIN { for (c = 2; c <= t; c += 2) s = s (s ? "," : "") c
  if (c - 2 != t) s = s (s ? "," : "") t; print s }')

# A fresh run each time: only the quickstart's own outputs are replaced.
rm -rf "$RUN/data" "$RUN/run" "$RUN/export" "$RUN/eval.json" "$RUN/eval_text.json" "$RUN/curve.json"
mkdir -p "$RUN/data"

echo "== 1/5 data"
TEXT="$ASSETS/tinystories/tinystories_val_prefix.txt"
if [ -f "$TEXT" ]; then
  $DMS data prepare --tokenizer "$TOK" --input "$TEXT" --out "$RUN/data/train.h5" \
    --seq-len 512 --val-fraction 0.05
else
  echo "no TinyStories text in $ASSETS: sampling training data from the model itself"
  $DMS data sample --model "$MODEL" --count 800 --length 512 --seed 1 --out "$RUN/data/train.h5"
fi
# Held-out sequences sampled from the unchanged model: on these the original model is the
# reference distribution, so perplexity and KL to the original rank policies the same way.
$DMS data sample --model "$MODEL" --count 32 --length 512 --seed 12345 --out "$RUN/data/heldout.h5"

echo "== 2/5 retrofit (target decision CR $TARGET_CR, window $WINDOW, $STEPS steps, trains: $TRAIN_MODE)"
$DMS retrofit --model "$MODEL" --data "$RUN/data/train.h5" --out "$RUN/run" \
  --window "$WINDOW" --target-cr "$TARGET_CR" --max-steps "$STEPS" \
  --final-step $((STEPS * 6 / 11)) --micro-batch "$MICRO_BATCH" --lr "$LR" \
  --train-mode "$TRAIN_MODE" --kd-direction "$KD" --keep-at-cr "$KEEP_AT_CR" --eval-every 100

echo "== 3/5 export"
$DMS export --run "$RUN/run" --out "$RUN/export"

# The original is the base model itself (--original): a full-weight retrofit changed the
# weights, so the export with eviction off is not the model we started from.
echo "== 4/5 eval: DMS vs window / H2O / TOVA at the same effective KV CR"
$DMS eval --model "$RUN/export" --original "$MODEL" --data "$RUN/data/heldout.h5" --compare \
  --rows 32 --json "$RUN/eval.json" | tee "$RUN/eval.txt"
if [ -f "$RUN/data/train.val.h5" ]; then
  echo
  echo "held-out TinyStories text (documents packed BOS-framed, as llama2.c trained; see docs/results.md):"
  $DMS eval --model "$RUN/export" --original "$MODEL" --data "$RUN/data/train.val.h5" --compare \
    --rows 32 --json "$RUN/eval_text.json" | tee "$RUN/eval_text.txt"
fi

echo "== 5/5 curve: quality vs KV memory, one point per kept checkpoint ($KEEP_AT_CR, last)"
$DMS eval --curve --model "$RUN/run" --data "$RUN/data/heldout.h5" --rows 32 \
  --json "$RUN/curve.json" | tee "$RUN/curve.txt"

$DMS report --run "$RUN/run" --out "$RUN/report.html"

echo
echo "run:     $RUN/run   (metrics.jsonl, TensorBoard events, checkpoints/, config.json)"
echo "report:  $RUN/report.html   (the curve is its last section; tensorboard --logdir $RUN/run works too)"
echo "export:  $RUN/export   (try: $DMS generate --model $RUN/export --prompt 'Once upon a time')"
echo "tables:  $RUN/eval.json, $RUN/eval_text.json, $RUN/curve.json"
echo
cat "$RUN/eval.txt"
