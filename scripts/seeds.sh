#!/usr/bin/env bash
# The spread of a recipe's figures: the same retrofit + export + eval (scripts/sweep.sh) for
# several seeds and thread counts, then each figure as mean and min–max (OUT/spread.md).
#   scripts/seeds.sh OUT_DIR SEEDS THREADS "retrofit options"
# e.g. scripts/seeds.sh runs/seeds 3 "1 2" "--window 16 --target-cr 12 --max-steps 1100 ..."
# Seeds 0 .. SEEDS-1 (the data order and the decision noise); THREADS: a list of --threads.
# The hard eviction decisions amplify rounding differences (BLAS kernels, thread counts), so
# one run is one draw: quote the spread.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=$1
SEEDS=$2
THREADS=$3
OPTS=$4
specs=()
for ((s = 0; s < SEEDS; ++s)); do
  for t in $THREADS; do specs+=("seed$s-threads$t: $OPTS --seed $s --threads $t"); done
done
scripts/sweep.sh "$OUT" "${specs[@]}" >/dev/null
python3 - "$OUT" <<'PY'
import json, os, sys
out = sys.argv[1]
figs = {}  # (table, policy, figure) -> values
runs = []
for name in sorted(os.listdir(out)):
    for table in ("eval", "eval_text"):
        p = os.path.join(out, name, table + ".json")
        if not os.path.exists(p):
            continue
        if table == "eval":
            runs.append(name)
        for r in json.load(open(p))["rows"]:
            for k in ("effective_kv_cr", "ppl", "kl_original_model"):
                figs.setdefault((table, r["policy"], k), []).append(r[k])
lines = [f"{len(runs)} runs: {', '.join(runs)}", "",
         "| data | policy | effective KV CR | ppl | KL(original‖model) |", "|---|---|---|---|---|"]
def cell(v, prec):
    m = sum(v) / len(v)
    return f"{m:.{prec}f} ({min(v):.{prec}f}–{max(v):.{prec}f})"
for table, label in (("eval", "sampled"), ("eval_text", "text")):
    for pol in ("none", "dms", "window", "h2o", "tova"):
        if (table, pol, "ppl") not in figs:
            continue
        g = lambda k, p: cell(figs[(table, pol, k)], p)
        lines.append(f"| {label} | {pol} | {g('effective_kv_cr', 2)} | {g('ppl', 3)} | {g('kl_original_model', 4)} |")
# Does DMS beat every baseline in every run (lowest KL at its matched CR)?
wins = []
for name in runs:
    for table in ("eval", "eval_text"):
        p = os.path.join(out, name, table + ".json")
        if os.path.exists(p):
            r = {x["policy"]: x for x in json.load(open(p))["rows"]}
            best = min(r[k]["kl_original_model"] for k in ("window", "h2o", "tova"))
            wins.append((name, table, r["dms"]["kl_original_model"] < best))
lost = [f"{n} ({t})" for n, t, w in wins if not w]
lines += ["", "DMS has the lowest KL to the original in " + str(sum(w for *_, w in wins)) + " of "
          + str(len(wins)) + " tables" + (": not in " + ", ".join(lost) if lost else "")]
text = "\n".join(lines) + "\n"
open(os.path.join(out, "spread.md"), "w").write(text)
print(text)
PY
