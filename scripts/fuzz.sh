#!/usr/bin/env bash
# Fuzzes the parsers of untrusted files with libFuzzer (harnesses: fuzz/*.cpp).
#
#   scripts/fuzz.sh [SECONDS] [HARNESS...]     # default: 60 s each, every harness
#   scripts/fuzz.sh 20                          # CI: every harness 20 s
#   scripts/fuzz.sh 300 safetensors hf_config   # names with or without the fuzz_ prefix
#
# Builds build-fuzz/ first if needed (clang, -DDMS_FUZZ=ON: ASan + UBSan + coverage over the
# whole build; only the harnesses and the libraries they use), seeds each corpus from
# $DMS_ASSETS (default ../shared/assets), then runs each harness for SECONDS and prints,
# per harness, executions, exec/s, new corpus units and crashes found. Exits 1 when any
# harness found a crash (sanitizer report, uncaught exception, abort, timeout, OOM, leak);
# the reproducers are under build-fuzz/artifacts/<harness>/ (re-run one with
# `build-fuzz/fuzz/<harness> FILE`).
#
# Environment: DMS_FUZZ_JOBS (build jobs, 2), DMS_FUZZ_PARALLEL (harnesses run at once, 1),
# DMS_FUZZ_RSS_MB (-rss_limit_mb, 2048), DMS_FUZZ_TIMEOUT (-timeout per input, s, 10),
# DMS_FUZZ_BUILD (build dir, build-fuzz), DMS_FUZZ_ARGS (more libFuzzer flags).
# Corpora grow across runs in build-fuzz/corpus/<harness>/ (delete it to start over).
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
build="${DMS_FUZZ_BUILD:-$root/build-fuzz}"
assets="${DMS_ASSETS:-$root/../shared/assets}"
jobs="${DMS_FUZZ_JOBS:-2}"
parallel="${DMS_FUZZ_PARALLEL:-1}"
rss_mb="${DMS_FUZZ_RSS_MB:-2048}"
timeout_s="${DMS_FUZZ_TIMEOUT:-10}"
all=(safetensors hf_config llama2c token_file checkpoint_manifest hf_tokenizer chat_template
     spm_model toml_config)

seconds=60
if [[ $# -gt 0 && "$1" =~ ^[0-9]+$ ]]; then
  seconds="$1"
  shift
elif [[ $# -gt 0 && ( "$1" == -h || "$1" == --help ) ]]; then
  sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
  exit 0
fi
harnesses=()
for h in "${@:-${all[@]}}"; do
  h="${h#fuzz_}"
  if [[ ! " ${all[*]} " == *" $h "* ]]; then
    echo "fuzz.sh: unknown harness '$h' (one of: ${all[*]})" >&2
    exit 2
  fi
  harnesses+=("fuzz_$h")
done

# --- build -------------------------------------------------------------------------------
command -v clang++ >/dev/null || { echo "fuzz.sh: clang++ not found (apt-get install clang)" >&2; exit 2; }
if [[ ! -f "$build/CMakeCache.txt" ]]; then
  echo "== configure $build"
  mkdir -p "$build"
  cmake -S "$root" -B "$build" -DDMS_FUZZ=ON -DCMAKE_BUILD_TYPE=Release \
    -DCMAKE_C_COMPILER=clang -DCMAKE_CXX_COMPILER=clang++ -DBUILD_TESTING=OFF \
    >"$build/configure.log" 2>&1 || { cat "$build/configure.log" >&2; exit 1; }
fi
echo "== build (-j$jobs)"
start=$(date +%s)
cmake --build "$build" --target dms_fuzz -j "$jobs" >"$build/build.log" 2>&1 \
  || { tail -50 "$build/build.log" >&2; echo "fuzz.sh: build failed (full log: $build/build.log)" >&2; exit 1; }
echo "   built in $(( $(date +%s) - start )) s"

# --- seeds -------------------------------------------------------------------------------
seeds="$build/seeds"
python3 "$root/fuzz/make_seeds.py" "$assets" "$seeds" >/dev/null
for h in fuzz_checkpoint_manifest fuzz_toml_config fuzz_token_file; do  # seeds they write
  mkdir -p "$seeds/$h"
  DMS_FUZZ_WRITE_SEEDS="$seeds/$h" "$build/fuzz/$h" -runs=0 >/dev/null 2>&1
done

# --- run ---------------------------------------------------------------------------------
export OMP_NUM_THREADS=1
export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=0}"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}"
logs="$build/logs"
mkdir -p "$logs"

run_one() {
  local h="$1" corpus="$build/corpus/$1" art="$build/artifacts/$1"
  mkdir -p "$corpus" "$art"
  local dict=()
  [[ -f "$root/fuzz/dicts/$h.dict" ]] && dict=(-dict="$root/fuzz/dicts/$h.dict")
  local extra=()
  case "$h" in
    fuzz_llama2c) extra=(-max_len=1100000) ;;  # stories260K.bin whole (1 MiB is the default)
  esac
  local seed_dirs=()
  [[ -d "$seeds/$h" ]] && seed_dirs=("$seeds/$h")
  # shellcheck disable=SC2086
  "$build/fuzz/$h" -max_total_time="$seconds" -rss_limit_mb="$rss_mb" -timeout="$timeout_s" \
    -print_final_stats=1 -artifact_prefix="$art/" "${dict[@]}" "${extra[@]}" ${DMS_FUZZ_ARGS:-} \
    "$corpus" "${seed_dirs[@]}" >"$logs/$h.log" 2>&1 || true
}

echo "== fuzzing ${#harnesses[@]} harness(es), ${seconds} s each, ${parallel} at a time (logs: $logs)"
running=0
for h in "${harnesses[@]}"; do
  # Findings of earlier runs stay in artifacts/ until removed; count only this run's.
  find "$build/artifacts/$h" -type f -delete 2>/dev/null || true
  run_one "$h" &
  running=$((running + 1))
  if (( running >= parallel )); then
    wait -n || true
    running=$((running - 1))
  fi
done
wait || true

failed=0
printf '%-26s %12s %9s %8s %8s  %s\n' harness executions exec/s new_units crashes reproducers
for h in "${harnesses[@]}"; do
  log="$logs/$h.log"
  stat() { sed -n "s/^stat::$1: *//p" "$log" | tail -1; }
  execs=$(stat number_of_executed_units)
  rate=$(stat average_exec_per_sec)
  units=$(stat new_units_added)
  mapfile -t found < <(find "$build/artifacts/$h" -type f \
    \( -name 'crash-*' -o -name 'leak-*' -o -name 'timeout-*' -o -name 'oom-*' \) | sort)
  n=${#found[@]}
  # A harness that died before printing its stats (start-up crash) is a failure too.
  if [[ -z "$execs" ]]; then
    n=$((n > 0 ? n : 1))
    found+=("(no stats: see $log)")
  fi
  (( n > 0 )) && failed=1
  printf '%-26s %12s %9s %8s %8s  %s\n' "$h" "${execs:--}" "${rate:--}" "${units:--}" "$n" "${found[*]:-}"
done
if (( failed )); then
  echo "fuzz.sh: crashes found; each log's end shows the report, re-run a reproducer with build-fuzz/fuzz/<harness> FILE" >&2
  exit 1
fi
