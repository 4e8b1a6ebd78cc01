#!/usr/bin/env bash
# Installs what is missing (Debian packages, the reference .venv), builds, and runs every
# test (ctest), printing each stage's time. Tests read ../shared/assets, or $DMS_ASSETS.
# With CI=true or DMS_TORCH2=1 it then also builds build-torch2/ (PyTorch's LibTorch 2.x
# with CUDA, -Werror; scripts/build_torch2.sh) and runs the core tests there (ctest -L core,
# on the CPU: no GPU needed). DMS_TORCH2=0 turns that off even in CI.
# With CI=true or DMS_SANITIZE=1 it also builds build-fuzz/ (clang, ASan + UBSan), runs every
# libFuzzer harness for 20 s (scripts/fuzz.sh) and the core tests sanitized
# (scripts/sanitize_tests.sh). DMS_SANITIZE=0 turns that off even in CI.
set -euo pipefail
cd "$(dirname "$0")/.."
TORCH2=${DMS_TORCH2:-}
if [ -z "$TORCH2" ]; then [ "${CI:-}" = true ] && TORCH2=1 || TORCH2=0; fi
SANITIZE=${DMS_SANITIZE:-}
if [ -z "$SANITIZE" ]; then [ "${CI:-}" = true ] && SANITIZE=1 || SANITIZE=0; fi
start=$SECONDS
DMS_TORCH2=0 scripts/setup.sh --reference
echo "== stage: install + build: $((SECONDS - start)) s"
BUILD_DIR=${BUILD_DIR:-build}
t=$SECONDS
(cd "$BUILD_DIR" && ctest --output-on-failure -j "${JOBS:-2}" --timeout 300)
echo "== stage: tests: $((SECONDS - t)) s (total $((SECONDS - start)) s)"
if [ "$TORCH2" = 1 ]; then
  t=$SECONDS
  JOBS=${JOBS:-2} scripts/build_torch2.sh
  echo "== stage: build-torch2 (LibTorch 2.x, CUDA, -Werror): $((SECONDS - t)) s"
  t=$SECONDS
  (cd build-torch2 && ctest -L core --output-on-failure -j "${JOBS:-2}" --timeout 300)
  echo "== stage: core tests on LibTorch 2.x: $((SECONDS - t)) s (total $((SECONDS - start)) s)"
fi
if [ "$SANITIZE" = 1 ]; then
  t=$SECONDS
  JOBS=${JOBS:-2} scripts/sanitize_tests.sh
  echo "== stage: ASan + UBSan core tests (build-fuzz, clang): $((SECONDS - t)) s (total $((SECONDS - start)) s)"
  t=$SECONDS
  DMS_FUZZ_PARALLEL=2 scripts/fuzz.sh 20
  echo "== stage: fuzz smoke (every harness 20 s): $((SECONDS - t)) s (total $((SECONDS - start)) s)"
fi
