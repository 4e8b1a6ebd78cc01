#!/usr/bin/env bash
# Configures and builds dms-retrofit against PyTorch's own LibTorch 2.x (the pip wheel, with
# CUDA) instead of Debian's LibTorch 1.13, with -Werror on this project's code. Needs nvcc
# (the CUDA toolkit) for Torch's CMake config, not a GPU. The configure step prints
#   -- dms: Torch 2.11.0 at <site-packages>/torch, CUDA: ON (toolkit 13.0, <nvcc>)
# Usage: scripts/build_torch2.sh   (environment, all optional:)
#   PYTHON=.venv/bin/python   the interpreter whose `import torch` gives the LibTorch
#   BUILD_DIR=build-torch2    TARGETS="all" (e.g. "core": dms + the core test binaries)
#   JOBS=N   DEPS_PREFIX=dir (extra prefix for the other libraries, scripts/gpu_check.sh)
#   CMAKE_ARGS="..."          more cmake options
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
BUILD_DIR=${BUILD_DIR:-build-torch2}
TARGETS=${TARGETS:-all}
JOBS=${JOBS:-$(nproc)}
if ! TORCH_PREFIX=$("$PYTHON" -c 'import torch; print(torch.utils.cmake_prefix_path)'); then
  echo "build_torch2.sh: '$PYTHON' cannot import torch (scripts/setup.sh --reference makes .venv)" >&2
  exit 1
fi
if ! command -v nvcc >/dev/null && [ ! -x "${CUDA_HOME:-/usr/local/cuda}/bin/nvcc" ]; then
  echo "build_torch2.sh: no nvcc on PATH nor in \$CUDA_HOME or /usr/local/cuda: Torch's CMake" \
    "config needs the CUDA toolkit (a GPU is not needed)" >&2
  exit 1
fi
PREFIX_PATH="$TORCH_PREFIX${DEPS_PREFIX:+;$DEPS_PREFIX}"
mkdir -p "$BUILD_DIR"
LOG="$BUILD_DIR/configure.log"
# shellcheck disable=SC2086
if ! cmake -S . -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE=Release -DDMS_WERROR=ON \
  -DCMAKE_PREFIX_PATH="$PREFIX_PATH" ${CMAKE_ARGS:-} >"$LOG" 2>&1; then
  cat "$LOG" >&2
  echo "build_torch2.sh: configuring $BUILD_DIR failed (above)" >&2
  exit 1
fi
grep -E '^-- dms:|^CMake Warning' "$LOG" || true
if ! grep -q '^DMS_WITH_CUDA:INTERNAL=ON' "$BUILD_DIR/CMakeCache.txt"; then
  echo "build_torch2.sh: $BUILD_DIR is not a CUDA build (see the '-- dms:' line; $LOG)" >&2
  exit 1
fi
for t in $TARGETS; do
  cmake --build "$BUILD_DIR" -j "$JOBS" --target "$t"
done
