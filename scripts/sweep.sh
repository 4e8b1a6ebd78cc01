#!/usr/bin/env bash
# Recipe sweep for stories260K: one retrofit + export + eval (--compare, baselines at DMS's
# effective KV CR) per configuration, one table at the end (markdown, also TSV).
#   scripts/sweep.sh OUT_DIR "NAME: retrofit options" ["NAME: options" ...]
# e.g. scripts/sweep.sh runs/sweep "w16cr16: --window 16 --target-cr 16 --max-steps 400 --final-step 300"
# Needs build/dms (or $DMS: a copy keeps a long sweep apart from rebuilds) and the quickstart's
# data (runs/quickstart/data: train.h5, heldout.h5).
set -euo pipefail
cd "$(dirname "$0")/.."
ASSETS=${DMS_ASSETS:-../shared/assets}
MODEL=$ASSETS/stories260K/stories260K.bin
DATA=${SWEEP_DATA:-runs/quickstart/data}
DMS=${DMS:-build/dms}
OUT=$1
shift
if [ ! -f "$DATA/train.h5" ] || [ ! -f "$DATA/heldout.h5" ]; then
  echo "sweep: $DATA/train.h5 and heldout.h5 missing (run scripts/quickstart.sh first)" >&2
  exit 2
fi
mkdir -p "$OUT"
for spec in "$@"; do
  name=${spec%%:*}
  opts=${spec#*:}
  dir=$OUT/$name
  if [ -f "$dir/eval.json" ]; then echo "sweep: $name done already"; continue; fi
  rm -rf "$dir"
  mkdir -p "$dir"
  echo "== $name:$opts"
  start=$(date +%s)
  # shellcheck disable=SC2086
  "$DMS" retrofit --model "$MODEL" --data "$DATA/train.h5" --out "$dir/run" --eval-every 1000 $opts \
    >"$dir/retrofit.log" 2>&1
  "$DMS" export --run "$dir/run" --out "$dir/export" >"$dir/export.log" 2>&1
  "$DMS" eval --model "$dir/export" --original "$MODEL" --data "$DATA/heldout.h5" --compare --rows 32 \
    --json "$dir/eval.json" >"$dir/eval.txt" 2>&1
  if [ -f "$DATA/train.val.h5" ]; then
    "$DMS" eval --model "$dir/export" --original "$MODEL" --data "$DATA/train.val.h5" --compare --rows 32 \
      --json "$dir/eval_text.json" >"$dir/eval_text.txt" 2>&1
  fi
  echo "$opts" >"$dir/options"
  echo "$(($(date +%s) - start))" >"$dir/seconds"
done
python3 - "$OUT" <<'PY'
import json, os, sys
out = sys.argv[1]
rows = []
for name in sorted(os.listdir(out)):
    p = os.path.join(out, name, "eval.json")
    if not os.path.exists(p):
        continue
    r = {x["policy"]: x for x in json.load(open(p))["rows"]}
    o, d = r["none"], r["dms"]
    best = min((x for k, x in r.items() if k not in ("none", "dms")), key=lambda x: x["kl_original_model"])
    # Held-out text (if evaluated): DMS's perplexity and the best baseline's, both vs the original.
    text = "- | -"
    pt = os.path.join(out, name, "eval_text.json")
    if os.path.exists(pt):
        t = {x["policy"]: x for x in json.load(open(pt))["rows"]}
        tb = min((x for k, x in t.items() if k not in ("none", "dms")), key=lambda x: x["ppl"])
        rel = lambda x: 100 * (x["ppl"] / t["none"]["ppl"] - 1)
        text = f"{rel(t['dms']):+.1f}% | {tb['policy']} {rel(tb):+.1f}%"
    rows.append((name, open(os.path.join(out, name, "options")).read().strip(),
                 d["effective_kv_cr"], d["decision_cr"], 100 * (d["ppl"] / o["ppl"] - 1),
                 d["kl_original_model"], best["policy"], best["kl_original_model"], text,
                 int(open(os.path.join(out, name, "seconds")).read())))
hdr = ("| run | options | eff. KV CR | decision CR | ppl vs original | KL(orig‖DMS) | best baseline | its KL"
       " | text: DMS ppl | text: best baseline ppl | s |")
lines = [hdr, "|" + "---|" * 11]
for n, opts, e, dc, pp, kl, bp, bk, text, s in rows:
    lines.append(f"| {n} | `{opts}` | {e:.2f} | {dc:.2f} | {pp:+.1f}% | {kl:.4f} | {bp} | {bk:.4f} | {text} | {s} |")
table = "\n".join(lines)
open(os.path.join(out, "table.md"), "w").write(table + "\n")
print(table)
PY
