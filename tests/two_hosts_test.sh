#!/usr/bin/env bash
# Two hosts (issue 16, item 7): a 2-rank `dms retrofit` on Gloo across two network
# namespaces joined by a veth pair (10.77.0.1/24 = host A, rank 0 and the rendezvous
# store; 10.77.0.2/24 = host B, rank 1), launched with the torchrun variables
# (RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT).
#
#   1. interface: with each host's name resolving to loopback (the usual /etc/hosts),
#      GLOO_SOCKET_IFNAME names the veth Gloo has to use; a 2-step run must complete.
#   From here on without GLOO_SOCKET_IFNAME, the host name still resolving to loopback:
#   dms must bind Gloo to this host's address on the route to MASTER_ADDR by itself.
#   2. reference: an uninterrupted run.
#   3. cut: the same run; once a checkpoint exists, host B's link goes down. Both ranks
#      must exit non-zero (not by a signal) within --dist-timeout + margin, each naming
#      the other as the lost rank; every checkpoint must pass `dms inspect` (manifest and
#      sha256 of every file) and every metrics.jsonl line must be one JSON object.
#   4. resume: link up, both ranks again with --resume, to the end.
#   5. equal: resumed == reference as in tests/distributed_test.cpp (kill_and_resume):
#      the deterministic metrics of every step are identical, and so are the final
#      trained tensors (both final checkpoints exported; model.safetensors byte-equal).
#
# Usage: two_hosts_test.sh DMS_BINARY ASSETS_DIR   (root: it creates network namespaces)
# Exit 0 when every check holds, 1 when one fails (also when it cannot run: not root, no
# network namespaces; CI runs as root, so that is a failure, not a skip). The namespaces
# and the veth pair are removed on any exit;
# the work directory is removed on success and kept (path printed) on failure.
set -euo pipefail

if [[ $# -ne 2 ]]; then
  echo "usage: $0 DMS_BINARY ASSETS_DIR" >&2
  exit 2
fi
DMS=$(realpath "$1")
ASSETS=$(realpath "${DMS_ASSETS:-$2}")  # $DMS_ASSETS wins, as for every other test

# Run parameters.
STEPS=80               # steps of every run
FINAL_STEP=60          # the compression schedule's final step
CKPT_EVERY=4           # a checkpoint every 4 steps
CUT_AFTER_CKPT=8       # the link goes down once step 8's checkpoint is complete
DIST_TIMEOUT=8         # --dist-timeout (seconds)
MARGIN=5               # allowed beyond --dist-timeout between the cut and a rank's exit
USE_IFNAME=1           # check 1 names the interfaces; the rest rely on the default
IFNAME_TIMEOUT=5       # --dist-timeout of the short interface check
HARD_LIMIT=150         # no rank process outlives this (seconds; timeout(1) in the namespace)

# Unique per invocation: parallel runs do not collide (ports and addresses are per namespace).
NS_A="dms2h-a-$$"
NS_B="dms2h-b-$$"
VETH_A="d2h${$}a"      # interface names are limited to 15 characters
VETH_B="d2h${$}b"
ADDR_A=10.77.0.1
ADDR_B=10.77.0.2

FAILS=0
CHECKS=0
declare -a PIDS=()     # the running rank launchers (timeout(1), process group leaders)
WORK=""

log() { printf '[two-hosts %s] %s\n' "$(date +%H:%M:%S)" "$*"; }
pass() {
  CHECKS=$((CHECKS + 1))
  printf '  PASS: %s\n' "$*"
}
fail() {
  CHECKS=$((CHECKS + 1))
  FAILS=$((FAILS + 1))
  printf '  FAIL: %s\n' "$*"
}
now_ms() { date +%s%3N; }
# The last lines of a rank's log, without progress bars and C++ stack frames.
show_log() {
  printf '    --- %s (last lines)\n' "$1"
  [[ -f $1 ]] || { echo "    | (no such file)"; return 0; }
  tr '\r' '\n' <"$1" | grep -v -e '^frame #' -e '^[[:space:]]*$' -e '^retrofit [0-9]*/' |
    tail -n "${2:-8}" | sed 's/^/    | /' || true
}

# Stops process groups we started (each a timeout(1) wrapper and its dms): SIGTERM, and
# SIGKILL to what still runs 3 s later.
stop_groups() {
  local pid
  for pid in "$@"; do
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
  done
  for _ in $(seq 1 30); do
    any_alive "$@" || break
    sleep 0.1
  done
  for pid in "$@"; do
    kill -KILL -- "-$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
}

any_alive() {
  local pid
  for pid in "$@"; do
    alive "$pid" && return 0
  done
  return 1
}

# True while pid runs (a zombie does not count).
alive() {
  local stat
  [[ -r /proc/$1/stat ]] || return 1
  read -r stat <"/proc/$1/stat" 2>/dev/null || return 1
  stat=${stat##*) }
  [[ ${stat:0:1} != Z ]]
}

# shellcheck disable=SC2317  # called by the EXIT trap
cleanup() {
  local rc=$?
  set +e
  local -a running=()
  for pid in "${PIDS[@]}"; do
    [[ -n $pid ]] && running+=("$pid")
  done
  ((${#running[@]} == 0)) || stop_groups "${running[@]}"
  ip netns del "$NS_A" 2>/dev/null   # takes its end of the veth pair, and so the pair
  ip netns del "$NS_B" 2>/dev/null
  ip link del "$VETH_A" 2>/dev/null  # only there when setup stopped before moving it
  if [[ -n $WORK && -d $WORK ]]; then
    if [[ $rc == 0 ]]; then rm -rf "$WORK"; else echo "work directory kept: $WORK"; fi
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------------------------------
# Preconditions.
if [[ $EUID -ne 0 ]]; then
  echo "FAIL: network namespaces need root (run as root, as CI does)"
  exit 1
fi
for tool in ip jq sha256sum timeout realpath; do
  command -v "$tool" >/dev/null || { echo "FAIL: '$tool' is not installed"; exit 1; }
done
[[ -x $DMS ]] || { echo "FAIL: $DMS is not an executable"; exit 1; }
MODEL="$ASSETS/stories260K/stories260K.bin"
for f in "$MODEL" "$ASSETS/stories260K/tok512.model" "$ASSETS/tinystories/tinystories_val_prefix.txt"; do
  [[ -f $f ]] || { echo "FAIL: missing asset $f"; exit 1; }
done

T0=$(now_ms)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/dms-two-hosts.XXXXXX")
log "work directory $WORK; dms $DMS"

log "token data: dms data prepare (stories260K tokenizer, seq-len 64)"
"$DMS" data prepare --tokenizer "$ASSETS/stories260K/tok512.model" \
  --input "$ASSETS/tinystories/tinystories_val_prefix.txt" --out "$WORK/data.h5" \
  --seq-len 64 --val-fraction 0.03 >"$WORK/prepare.log" 2>&1 ||
  { show_log "$WORK/prepare.log"; echo "FAIL: data prepare"; exit 1; }

log "network: namespaces $NS_A ($ADDR_A on $VETH_A) and $NS_B ($ADDR_B on $VETH_B), one veth pair"
if ! ip netns add "$NS_A" 2>"$WORK/netns.err"; then
  echo "FAIL: cannot create a network namespace: $(cat "$WORK/netns.err")"
  exit 1
fi
ip netns add "$NS_B"
ip link add "$VETH_A" type veth peer name "$VETH_B"
ip link set "$VETH_A" netns "$NS_A"
ip link set "$VETH_B" netns "$NS_B"
ip -n "$NS_A" addr add "$ADDR_A/24" dev "$VETH_A"
ip -n "$NS_B" addr add "$ADDR_B/24" dev "$VETH_B"
for ns in "$NS_A" "$NS_B"; do ip -n "$ns" link set lo up; done
ip -n "$NS_A" link set "$VETH_A" up
ip -n "$NS_B" link set "$VETH_B" up

# ---------------------------------------------------------------------------------------
# Ranks.
retrofit_args() {  # OUT STEPS DIST_TIMEOUT
  printf '%s\n' retrofit --model "$MODEL" --data "$WORK/data.h5" --out "$1" \
    --window 8 --target-cr 4 --max-steps "$2" --final-step "$FINAL_STEP" --lr 1e-2 \
    --eval-every 1000 --checkpoint-every "$CKPT_EVERY" --keep-checkpoints 0 --threads 1 \
    --checksum-every 4 --micro-batch 2 --seed 0 --backend gloo --device cpu \
    --dist-timeout "$3"
}

# start_rank RANK PORT LOG ARGS...: one rank on its host, torchrun-style environment.
start_rank() {
  local rank=$1 port=$2 logf=$3 ns ifname
  shift 3
  if [[ $rank == 0 ]]; then ns=$NS_A ifname=$VETH_A; else ns=$NS_B ifname=$VETH_B; fi
  [[ $USE_IFNAME == 1 ]] || ifname=""
  ip netns exec "$ns" env RANK="$rank" WORLD_SIZE=2 LOCAL_RANK=0 LOCAL_WORLD_SIZE=1 \
    MASTER_ADDR="$ADDR_A" MASTER_PORT="$port" ${ifname:+GLOO_SOCKET_IFNAME="$ifname"} \
    timeout -k 5 "$HARD_LIMIT" "$DMS" "$@" >"$logf" 2>&1 &
  PIDS[rank]=$!
}

# start_pair NAME PORT ARGS...: both ranks, logs NAME.r0.log and NAME.r1.log.
start_pair() {
  local name=$1 port=$2
  shift 2
  start_rank 0 "$port" "$WORK/$name.r0.log" "$@"
  start_rank 1 "$port" "$WORK/$name.r1.log" "$@"
}

# wait_pair SINCE_MS DEADLINE_MS: waits for both ranks until DEADLINE_MS (epoch ms), kills
# what still runs then. Sets RC[r] (exit status; -1 when it had to be killed) and
# AFTER_MS[r] (exit time - SINCE_MS).
declare -a RC=(0 0) AFTER_MS=(0 0)
wait_pair() {
  local since=$1 deadline=$2 r rc
  local -a fin=(0 0)
  RC=(-1 -1)
  AFTER_MS=(-1 -1)
  while [[ ${fin[0]} == 0 || ${fin[1]} == 0 ]]; do
    for r in 0 1; do
      if [[ ${fin[r]} == 0 ]] && ! alive "${PIDS[r]}"; then
        rc=0
        wait "${PIDS[r]}" || rc=$?
        RC[r]=$rc
        AFTER_MS[r]=$(($(now_ms) - since))
        PIDS[r]=""
        fin[r]=1
      fi
    done
    if (($(now_ms) > deadline)); then
      for r in 0 1; do
        if [[ ${fin[r]} == 0 ]]; then
          log "rank $r still running $(((deadline - since) / 1000)) s after the start of the wait: killing it"
          stop_groups "${PIDS[r]}"
          PIDS[r]=""
          fin[r]=1
        fi
      done
    fi
    sleep 0.1
  done
}

# Train records (those with kd_loss) of a run's metrics.jsonl, valid lines only.
train_steps() {
  [[ -f $1/metrics.jsonl ]] || { echo 0; return; }
  jq -R -c 'fromjson? | select(type == "object" and has("kd_loss")) | .step' "$1/metrics.jsonl" | wc -l
}
# The deterministic fields of every train record (timings excluded), one line per step.
deterministic_metrics() {
  jq -R -c 'fromjson? | select(type == "object" and has("kd_loss")) |
    [.step, .tokens, .kd_loss, .dms_loss, .lm_loss, .target_cr, .decision_cr,
     .effective_kv_cr, .lr, .grad_norm]' "$1/metrics.jsonl"
}

check_pair_ok() {  # NAME: both ranks exited 0
  local name=$1 r ok=1
  for r in 0 1; do
    if [[ ${RC[r]} == -1 ]]; then
      ok=0
      fail "$name: rank $r did not exit in time (hung; killed)"
      show_log "$WORK/$name.r$r.log" 12
    elif [[ ${RC[r]} != 0 ]]; then
      ok=0
      fail "$name: rank $r exited with ${RC[r]}"
      show_log "$WORK/$name.r$r.log" 12
    fi
  done
  [[ $ok == 1 ]] && pass "$name: both ranks exited 0 (rank 0 after $((AFTER_MS[0] / 1000)) s)"
  [[ $ok == 1 ]]
}

# ---------------------------------------------------------------------------------------
resolved=$(ip netns exec "$NS_A" getent ahostsv4 "$(hostname)" | awk 'NR == 1 { print $1 }' || true)
log "check 1 (interface): host name $(hostname) resolves to '${resolved:-nothing}' on A (the machine's /etc/hosts); GLOO_SOCKET_IFNAME=$VETH_A / $VETH_B; 2 steps, --dist-timeout $IFNAME_TIMEOUT"
mapfile -t ARGS < <(retrofit_args "$WORK/ifname" 2 "$IFNAME_TIMEOUT")
t=$(now_ms)
start_pair ifname 29501 "${ARGS[@]}"
wait_pair "$t" $((t + (IFNAME_TIMEOUT + MARGIN + 3) * 1000))
if ! check_pair_ok ifname; then
  echo "    (as when Gloo binds to the address the host name resolves to, or to loopback,"
  echo "     instead of the interface GLOO_SOCKET_IFNAME names)"
fi

# From here on no GLOO_SOCKET_IFNAME: with the host name still resolving to loopback, dms
# must advertise its address on the route to MASTER_ADDR by itself.
USE_IFNAME=0

# ---------------------------------------------------------------------------------------
log "check 2 (reference): uninterrupted 2-rank run, $STEPS steps, checkpoint every $CKPT_EVERY"
mapfile -t ARGS < <(retrofit_args "$WORK/ref" "$STEPS" "$DIST_TIMEOUT")
t=$(now_ms)
start_pair ref 29502 "${ARGS[@]}"
wait_pair "$t" $((t + HARD_LIMIT * 1000))
REF_OK=0
if check_pair_ok ref; then
  n=$(train_steps "$WORK/ref")
  if [[ $n == "$STEPS" ]]; then
    pass "ref: $n train records"
    REF_OK=1
  else
    fail "ref: $n train records, expected $STEPS"
  fi
fi

# ---------------------------------------------------------------------------------------
log "check 3 (cut): same run; host B's link goes down after step $CUT_AFTER_CKPT's checkpoint; --dist-timeout $DIST_TIMEOUT, margin $MARGIN s"
CUT="$WORK/cut"
mapfile -t ARGS < <(retrofit_args "$CUT" "$STEPS" "$DIST_TIMEOUT")
start_pair cut 29503 "${ARGS[@]}"
CKPT=$(printf '%s/checkpoints/step-%06d/manifest.json' "$CUT" "$CUT_AFTER_CKPT")
deadline=$(($(now_ms) + 120000))
while [[ ! -f $CKPT ]] && alive "${PIDS[0]}" && alive "${PIDS[1]}" && (($(now_ms) < deadline)); do
  sleep 0.05
done
CUT_DONE=0
if [[ -f $CKPT ]]; then
  ip -n "$NS_B" link set "$VETH_B" down
  t_cut=$(now_ms)
  CUT_DONE=1
  log "link $VETH_B down in $NS_B at train record $(train_steps "$CUT") of $STEPS"
  wait_pair "$t_cut" $((t_cut + (2 * DIST_TIMEOUT + MARGIN + 5) * 1000))
  limit_ms=$(((DIST_TIMEOUT + MARGIN) * 1000))
  for r in 0 1; do
    peer=$((1 - r))
    rc=${RC[r]}
    secs=$(awk -v ms="${AFTER_MS[r]}" 'BEGIN { printf "%.1f", ms / 1000 }')
    if [[ $rc == -1 ]]; then
      fail "cut: rank $r still running $((2 * DIST_TIMEOUT + MARGIN + 5)) s after the cut (killed)"
    elif [[ $rc == 0 ]]; then
      fail "cut: rank $r exited 0 (the cut came too late, or the failure went unnoticed)"
    elif ((rc >= 124)); then
      fail "cut: rank $r ended with $rc (a signal or timeout(1), not an error exit)"
    else
      pass "cut: rank $r exited with $rc"
    fi
    if ((AFTER_MS[r] >= 0 && AFTER_MS[r] <= limit_ms)); then
      pass "cut: rank $r exited ${secs} s after the cut (limit $((DIST_TIMEOUT + MARGIN)) s)"
    elif ((AFTER_MS[r] >= 0)); then
      fail "cut: rank $r exited ${secs} s after the cut, over --dist-timeout $DIST_TIMEOUT + $MARGIN s"
    fi
    msg=$(tr '\r' '\n' <"$WORK/cut.r$r.log" | grep -m1 -e 'lost rank' -e 'failure' -e 'error' || true)
    if grep -q "lost rank $peer" "$WORK/cut.r$r.log"; then
      pass "cut: rank $r names the lost peer: ${msg:0:160}"
    else
      fail "cut: rank $r's message does not say 'lost rank $peer'"
      show_log "$WORK/cut.r$r.log" 12
    fi
  done
  n=$(train_steps "$CUT")
  if ((n < STEPS)); then pass "cut: the run stopped mid-way ($n of $STEPS train records)"; else
    fail "cut: the run finished ($n train records) before the cut took effect"; fi
else
  fail "cut: no checkpoint at step $CUT_AFTER_CKPT appeared (ranks alive: $(alive "${PIDS[0]}" && echo 0) $(alive "${PIDS[1]}" && echo 1))"
  show_log "$WORK/cut.r0.log"
  show_log "$WORK/cut.r1.log"
  wait_pair "$(now_ms)" $(($(now_ms) + 1000))
fi

log "check 3 (cut): nothing written is damaged"
shopt -s nullglob
ckpts=("$CUT"/checkpoints/step-*)
if ((${#ckpts[@]} == 0)); then fail "cut: no checkpoint was written"; fi
bad=0
for ck in "${ckpts[@]}"; do
  if ! "$DMS" inspect "$ck" >"$WORK/inspect.out" 2>&1 || ! grep -q 'every checksum ok' "$WORK/inspect.out"; then
    bad=$((bad + 1))
    fail "cut: dms inspect $ck: $(grep -m1 -e DAMAGED -e error "$WORK/inspect.out" || true)"
  fi
done
((${#ckpts[@]} > 0 && bad == 0)) && pass "cut: all ${#ckpts[@]} checkpoints ($(basename "${ckpts[0]}") .. $(basename "${ckpts[-1]}")) pass dms inspect (every checksum ok)"
tmps=("$CUT"/checkpoints/.*.tmp)
((${#tmps[@]} > 0)) && log "note: temporary checkpoint directories left by the cut: ${tmps[*]##*/}"
shopt -u nullglob
if [[ -f $CUT/metrics.jsonl ]]; then
  lines=$(wc -l <"$CUT/metrics.jsonl")
  invalid=$(jq -R -r 'try (fromjson | if type == "object" then empty else "not an object" end) catch "invalid"' \
    "$CUT/metrics.jsonl" | wc -l)
  if [[ $invalid == 0 && -z $(tail -c1 "$CUT/metrics.jsonl") ]]; then
    pass "cut: metrics.jsonl: all $lines lines are JSON objects, the last one complete"
  else
    fail "cut: metrics.jsonl: $invalid of $lines lines are not JSON objects (or the last line is unfinished)"
  fi
else
  fail "cut: no metrics.jsonl"
fi

# ---------------------------------------------------------------------------------------
log "check 4 (resume): link up, both ranks again with --resume, to step $STEPS"
ip -n "$NS_B" link set "$VETH_B" up
mapfile -t ARGS < <(retrofit_args "$CUT" "$STEPS" "$DIST_TIMEOUT")
t=$(now_ms)
start_pair resume 29504 "${ARGS[@]}" --resume
wait_pair "$t" $((t + HARD_LIMIT * 1000))
RESUME_OK=0
if check_pair_ok resume; then
  from=$(tr '\r' '\n' <"$WORK/resume.r0.log" | grep -m1 'resuming from' || true)
  if [[ -n $from ]]; then pass "resume: ${from#"${from%%[![:space:]]*}"}"; RESUME_OK=1; else
    fail "resume: rank 0 does not say 'resuming from'"; show_log "$WORK/resume.r0.log"; fi
fi

# ---------------------------------------------------------------------------------------
log "check 5 (equal): resumed run == uninterrupted run"
if [[ $REF_OK == 1 && $RESUME_OK == 1 && $CUT_DONE == 1 ]]; then
  deterministic_metrics "$WORK/ref" >"$WORK/ref.metrics"
  deterministic_metrics "$CUT" >"$WORK/cut.metrics"
  if [[ $(wc -l <"$WORK/cut.metrics") == "$STEPS" ]] && cmp -s "$WORK/ref.metrics" "$WORK/cut.metrics"; then
    pass "equal: the deterministic metrics of all $STEPS steps are identical"
  else
    fail "equal: the metrics differ ($(wc -l <"$WORK/cut.metrics") vs $(wc -l <"$WORK/ref.metrics") steps); first difference:"
    diff "$WORK/ref.metrics" "$WORK/cut.metrics" | head -n 4 | sed 's/^/    | /' || true
  fi
  last=$(printf 'step-%06d' "$STEPS")
  if [[ -f $WORK/ref/checkpoints/$last/manifest.json && -f $CUT/checkpoints/$last/manifest.json ]]; then
    if "$DMS" export --run "$WORK/ref" --out "$WORK/ref.export" >"$WORK/ref.export.log" 2>&1 &&
      "$DMS" export --run "$CUT" --out "$WORK/cut.export" >"$WORK/cut.export.log" 2>&1; then
      a=$(sha256sum <"$WORK/ref.export/model.safetensors" | cut -c1-64)
      b=$(sha256sum <"$WORK/cut.export/model.safetensors" | cut -c1-64)
      if [[ $a == "$b" ]]; then
        pass "equal: final weights ($last exported) identical, model.safetensors sha256 ${a:0:16}..."
      else
        fail "equal: final weights differ: model.safetensors sha256 ${a:0:16}... (reference) vs ${b:0:16}... (resumed)"
      fi
    else
      fail "equal: dms export failed"
      show_log "$WORK/ref.export.log"
      show_log "$WORK/cut.export.log"
    fi
  else
    fail "equal: $last missing in the reference or the resumed run"
  fi
else
  fail "equal: not compared (the reference, the cut or the resume did not complete)"
fi

# ---------------------------------------------------------------------------------------
T1=$(now_ms)
if ((FAILS == 0)); then
  log "all $CHECKS checks hold ($(((T1 - T0) / 1000)) s)"
  exit 0
fi
log "$FAILS of $CHECKS checks FAILED ($(((T1 - T0) / 1000)) s)"
exit 1
