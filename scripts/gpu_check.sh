#!/usr/bin/env bash
# The GPU check. On a machine with an NVIDIA GPU, PyTorch (2.11, CUDA 13), CMake, nvcc and a
# C++ compiler, but no Debian -dev packages and no network: builds dms-retrofit against
# `import torch`'s LibTorch with the other libraries taken from gpu-deps/ (made beforehand on
# a Debian machine by scripts/gpu_bundle.sh; git-ignored, so a remote run must carry it), then
# runs timed stages, each within its own budget and all within --budget (300 s):
#   preflight   interpreter, torch with CUDA, nvcc, cmake, gpu-deps and its glibc
#   build       dms, the core test binaries and train_bench (-j every core, -Werror)
#   gpu         a CUDA device must be visible; without one the check stops here
#   core_cuda   (a) ctest -L core with the GPU visible (--device auto runs on it)
#   bf16_smoke  (b) dms retrofit --device cuda --dtype bf16, 50 steps of stories260K
#   llama_step  (c) timed training steps of Llama-3.2-1B's shape at T=4096 (bench/train_bench)
#   figures     (d) every figure gathered, one JSON file (also written after a failure)
# Any failure or overrun ends the check with "gpu_check: FAILED at <stage>: ..." and exit 1;
# nothing is skipped. Usage:
#   scripts/gpu_check.sh [--python PY] [--build DIR] [--deps DIR] [--json FILE] [--budget S]
#                        [--slow N]
# defaults: python3, build-cuda, gpu-deps, $OUT/gpu_check.json (else ./gpu_check.json), 300;
# --slow N multiplies every budget by N (a trial run on a small machine without a GPU).
set -euo pipefail
cd "$(dirname "$0")/.."
SELF="$PWD/scripts/gpu_check.sh"

# ---------------------------------------------------------------- helpers (every stage)

fail() {  # message: the stage's one-line verdict (also kept for the JSON file)
  echo "gpu_check: $*" >&2
  echo "$*" >"$GC_WORK/reason"
  exit 1
}

figure() {  # key value: one figure for the JSON file (value: a number or a JSON string)
  printf '%s\t%s\n' "$1" "$2" >>"$GC_FIGURES"
}

with_deps() {  # runs a command with gpu-deps' shared libraries and pkg-config files visible
  LD_LIBRARY_PATH="$GC_DEPS_LIB${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" \
    PKG_CONFIG="$GC_DEPS/usr/bin/pkgconf" \
    PKG_CONFIG_LIBDIR="$GC_DEPS_LIB/pkgconfig:$GC_DEPS/usr/share/pkgconfig" "$@"
}

# ---------------------------------------------------------------- stages

stage_preflight() {
  local info version cuda
  # One interpreter start (importing torch takes seconds): "version cuda-or-empty".
  info=$("$GC_PYTHON" -c 'import torch; print(torch.__version__, torch.version.cuda or "")' 2>/dev/null) ||
    fail "'$GC_PYTHON' cannot import torch"
  read -r version cuda <<<"$info"
  [ -n "$cuda" ] || fail "'$GC_PYTHON''s torch $version is a CPU build (torch.version.cuda is None)"
  figure torch "\"$version\""
  figure torch_cuda "\"$cuda\""
  command -v cmake >/dev/null || fail "no cmake on PATH"
  command -v nvcc >/dev/null || [ -x "${CUDA_HOME:-/usr/local/cuda}/bin/nvcc" ] ||
    fail "no nvcc on PATH nor in \$CUDA_HOME or /usr/local/cuda (Torch's CMake config needs it)"
  [ -f "$GC_DEPS/MANIFEST" ] ||
    fail "$GC_DEPS/MANIFEST missing: run scripts/gpu_bundle.sh on a Debian machine and bring $GC_DEPS along"
  local need have
  need=$(awk '$1 == "glibc_needed" {print $2}' "$GC_DEPS/MANIFEST")
  have=$(getconf GNU_LIBC_VERSION | awk '{print $2}')
  [ "$(printf '%s\n%s\n' "$need" "$have" | sort -V | head -1)" = "$need" ] ||
    fail "glibc $have here, but $GC_DEPS's libraries need $need"
  echo "gpu_check: torch $version, CUDA $cuda," \
    "glibc $have (bundle needs $need), $(nproc) cores"
}

stage_build() {
  local targets="core train_bench" log="$GC_BUILD.log"
  # HDF5_ROOT: Debian's layout (hdf5/serial/{include,lib}); it also keeps CMake from asking
  # an h5cc wrapper elsewhere on the machine.
  # scripts/build_torch2.sh configures (-Werror, DMS_WITH_CUDA checked) and builds targets.
  if ! with_deps env PYTHON="$GC_PYTHON" BUILD_DIR="$GC_BUILD" TARGETS="$targets" JOBS="$(nproc)" \
    DEPS_PREFIX="$GC_DEPS/usr" CMAKE_ARGS="-DHDF5_ROOT=$GC_DEPS_LIB/hdf5/serial -DOPENSSL_ROOT_DIR=$GC_DEPS/usr" \
    scripts/build_torch2.sh >"$log" 2>&1; then
    tail -40 "$log" >&2
    fail "building $targets in $GC_BUILD failed (tail above; all of it in $log)"
  fi
  grep -E '^-- dms:' "$log"
  # The NCCL process group must be compiled in (the #ifdef DMS_WITH_CUDA branch).
  # (Counted, not grep -q: with pipefail an early grep exit would fail nm's pipe.)
  [ "$(nm -C "$GC_BUILD/dms" | grep -c 'c10d::ProcessGroupNCCL::ProcessGroupNCCL')" -gt 0 ] ||
    fail "$GC_BUILD/dms has no ProcessGroupNCCL: the CUDA branch of trainer/dist/distributed.cpp was not compiled"
  figure build_dir "\"$GC_BUILD\""
}

stage_gpu() {
  local info
  info=$("$GC_PYTHON" -c 'import torch
if torch.cuda.is_available():
    print(torch.cuda.device_count(), torch.cuda.get_device_name(0))') ||
    fail "'$GC_PYTHON' failed asking torch for CUDA devices"
  [ -n "$info" ] ||
    fail "no CUDA device visible (torch.cuda.is_available() is False): the CUDA stages need a GPU"
  figure gpu_count "${info%% *}"
  figure gpu "\"${info#* }\""
  echo "gpu_check: ${info%% *} x ${info#* }"
}

# (a) The core tests with the GPU visible: retrofit runs with --device auto train on it.
stage_core_cuda() {
  local log="$GC_WORK/core_cuda.log" rc=0
  (cd "$GC_BUILD" && with_deps ctest -L core -j "$(nproc)" --timeout 120 --output-on-failure) \
    >"$log" 2>&1 || rc=$?
  grep -E 'tests passed|Failed|Timeout|Exception' "$log" | tail -20
  local passed total
  passed=$(sed -n 's/.* \([0-9]*\) tests failed out of \([0-9]*\).*/\2 \1/p' "$log" | awk '{print $1-$2}')
  total=$(sed -n 's/.* tests failed out of \([0-9]*\).*/\1/p' "$log")
  figure core_tests_total "${total:-0}"
  figure core_tests_passed "${passed:-0}"
  if [ "$rc" != 0 ] || [ -z "$total" ] || [ "$total" -eq 0 ]; then
    fail "core tests on CUDA: ${passed:-0} of ${total:-0} passed (log: $log)"
  fi
}

# (b) A short bf16 retrofit of stories260K on the GPU: it must train (finite losses) and
# report its speed and peak device memory.
stage_bf16_smoke() {
  local dms="$GC_BUILD/dms" r="$GC_WORK/bf16"
  grep -q -- '--dtype' <<<"$(with_deps "$dms" retrofit --help)" ||
    fail "dms retrofit has no --dtype option yet (bf16 training is being added)"
  mkdir -p "$r"
  with_deps "$dms" data prepare --tokenizer "$GC_ASSETS/stories260K/tok512.model" \
    --input "$GC_ASSETS/tinystories/tinystories_val_prefix.txt" --out "$r/d.h5" --seq-len 512 \
    >"$r/prepare.log" 2>&1 || { cat "$r/prepare.log" >&2; fail "dms data prepare failed"; }
  nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 200 >"$r/mem.txt" &
  local smi=$!
  local rc=0
  with_deps "$dms" retrofit --device cuda --dtype bf16 --model "$GC_ASSETS/stories260K/stories260K.bin" \
    --data "$r/d.h5" --out "$r/run" --window 32 --target-cr 8 --max-steps 50 --micro-batch 8 \
    --lr 3e-3 >"$r/retrofit.log" 2>&1 || rc=$?
  kill "$smi" 2>/dev/null || true
  [ "$rc" = 0 ] || { tail -20 "$r/retrofit.log" >&2; fail "bf16 retrofit exited $rc"; }
  "$GC_PYTHON" - "$r/run/metrics.jsonl" "$r/mem.txt" "$GC_FIGURES" <<'PY' || fail "bf16 retrofit: bad metrics"
import json, math, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if '"kd_loss"' in l]
if len(rows) < 40 or not all(math.isfinite(r["kd_loss"]) for r in rows):
    sys.exit(f"{len(rows)} training records, or a non-finite KD loss")
tps = sorted(r["tokens_per_s"] for r in rows)[len(rows) // 2]
mem = max([int(x) for x in open(sys.argv[2]).read().split() if x.isdigit()] or [0])
with open(sys.argv[3], "a") as f:
    f.write(f"bf16_smoke_tokens_per_s\t{tps:.1f}\nbf16_smoke_peak_gpu_mib\t{mem}\n")
    f.write(f"bf16_smoke_final_kd_loss\t{rows[-1]['kd_loss']}\n")
print(f"gpu_check: bf16 smoke: median {tps:.0f} tokens/s over {len(rows)} steps, peak {mem} MiB")
PY
}

# (c) Training steps of Llama-3.2-1B's shape (random weights from its config.json) at
# T=4096 on the GPU in bf16, timed by bench/train_bench: tokens/s, MFU against the GPU's
# bf16 matmul peak measured in the same run, the CUDA allocator's peak over a whole step
# and `dms plan`'s prediction of it.
stage_llama_step() {
  local bench="$GC_BUILD/bench/train_bench" cfg="$GC_ASSETS/hf-configs/Llama-3.2-1B"
  [ -f "$cfg/config.json" ] || fail "$cfg/config.json missing"
  with_deps "$bench" --hf-config "$cfg" --device cuda --dtype bf16 --batch 1 --seq 4096 \
    --attention blockwise --reps 3 --json "$GC_WORK/llama_step.json" ||
    fail "train_bench on Llama-3.2-1B failed"
  "$GC_PYTHON" - "$GC_WORK/llama_step.json" "$GC_FIGURES" <<'PY'
import json, sys
j = json.load(open(sys.argv[1]))
run = j["runs"][0]
measured, planned = run["whole_step_peak_bytes"], run["plan_whole_step_bytes"]
if measured <= 0:
    sys.exit("gpu_check: train_bench measured no GPU memory peak")
with open(sys.argv[2], "a") as f:
    f.write(f"llama_1b_t4096_bf16_matmul_peak_flops\t{j['matmul_peak_flops']}\n")
    for k in ("step_s", "tokens_per_s", "mfu", "whole_step_peak_bytes", "plan_whole_step_bytes"):
        f.write(f"llama_1b_t4096_{k}\t{run[k]}\n")
    f.write(f"llama_1b_t4096_plan_over_measured\t{planned / measured}\n")
print(f"gpu_check: Llama-1B T=4096 bf16: {run['tokens_per_s']:.0f} tokens/s, MFU {100 * run['mfu']:.1f}%, "
      f"peak {measured / 2**30:.2f} GiB, dms plan {planned / 2**30:.2f} GiB ({planned / measured:.3f}x)")
PY
}

# (d) Every figure, each stage's time and the verdict, in one JSON file.
stage_figures() {
  "$GC_PYTHON" - "$GC_FIGURES" "$GC_JSON" <<'PY'
import json, sys
out = {"check": "gpu_check"}
for line in open(sys.argv[1]):
    key, value = line.rstrip("\n").split("\t", 1)
    out[key] = json.loads(value)
with open(sys.argv[2], "w") as f:
    json.dump(out, f, indent=1)
print(f"gpu_check: {len(out) - 1} figures -> {sys.argv[2]}")
PY
}

# ---------------------------------------------------------------- driver

# A stage runs in its own process (so `timeout` can end it): this script, re-entered.
if [ "${1:-}" = __stage ]; then
  "stage_$2"
  exit 0
fi

GC_PYTHON=python3 GC_BUILD=build-cuda GC_DEPS=gpu-deps BUDGET=300 SLOW=1
GC_JSON=${OUT:-.}/gpu_check.json
while [ $# -gt 0 ]; do
  case "$1" in
    --python) GC_PYTHON=$2; shift 2 ;;
    --build) GC_BUILD=$2; shift 2 ;;
    --deps) GC_DEPS=$2; shift 2 ;;
    --json) GC_JSON=$2; shift 2 ;;
    --budget) BUDGET=$2; shift 2 ;;
    --slow) SLOW=$2; shift 2 ;;
    *) echo "gpu_check: unknown option $1" >&2; exit 2 ;;
  esac
done
[[ "$BUDGET$SLOW" =~ ^[0-9]+$ ]] || { echo "gpu_check: --budget and --slow take whole numbers" >&2; exit 2; }
BUDGET=$((BUDGET * SLOW))
GC_DEPS=$(realpath -m "$GC_DEPS")
GC_DEPS_LIB=$GC_DEPS/usr/lib/x86_64-linux-gnu
GC_WORK=$(mktemp -d /tmp/gpu_check.XXXXXX)
GC_FIGURES=$GC_WORK/figures.tsv
GC_ASSETS=${DMS_ASSETS:-$(cd .. && pwd)/shared/assets}
export GC_PYTHON GC_BUILD GC_DEPS GC_DEPS_LIB GC_WORK GC_FIGURES GC_ASSETS GC_JSON DMS_ASSETS="$GC_ASSETS"
: >"$GC_FIGURES"

START=$SECONDS
FAILED=""
run_stage() {  # name budget_s
  local name=$1 budget=$2 t0=$SECONDS rc=0
  local left=$((BUDGET - (SECONDS - START)))
  [ "$left" -lt "$budget" ] && budget=$left
  if [ "$budget" -le 0 ]; then
    FAILED="$name: the whole check's budget of $BUDGET s is spent"
    return 1
  fi
  echo "== gpu_check stage: $name (budget $budget s)"
  timeout -k 10 "$budget" "$SELF" __stage "$name" || rc=$?
  local took=$((SECONDS - t0))
  figure "stage_${name}_s" "$took"
  echo "== gpu_check stage: $name: $took s"
  case "$rc" in
    0) return 0 ;;
    124 | 137) FAILED="$name: over its budget of $budget s" ;;
    *) FAILED="$name: $(cat "$GC_WORK/reason" 2>/dev/null || echo "exit $rc")" ;;
  esac
  return 1
}

# Budgets (s) of a 16-core H200 machine; they add up to the whole check's 300.
for s in preflight:10 build:140 gpu:10 core_cuda:70 bf16_smoke:30 llama_step:40; do
  run_stage "${s%%:*}" "$((${s##*:} * SLOW))" || break
done
figure total_s "$((SECONDS - START))"
figure passed "$([ -z "$FAILED" ] && echo true || echo false)"
[ -z "$FAILED" ] || figure failed_stage "\"${FAILED//\"/\'}\""
mkdir -p "$(dirname "$GC_JSON")"
"$SELF" __stage figures || FAILED=${FAILED:-"figures (exit $?)"}
echo "== gpu_check: total $((SECONDS - START)) s (budget $BUDGET s)"
if [ -n "$FAILED" ]; then
  echo "gpu_check: FAILED at $FAILED" >&2
  exit 1
fi
echo "gpu_check: passed"
