#!/usr/bin/env bash
# Installs the Debian packages dms-retrofit needs (only those missing), then
# configures and builds into build/. Idempotent: a second run does no apt work.
#   BUILD_DIR=build   CMAKE_ARGS="-DCMAKE_PREFIX_PATH=/path/to/libtorch"   JOBS=N
#   --reference   also create .venv/, the Python environment of the independent references
#                 the tests compare with (scripts/requirements-reference.txt, pinned). The
#                 toolkit itself never needs it; scripts/test.sh asks for it.
#   DMS_TORCH2=1  also build build-torch2/ against the .venv's PyTorch LibTorch 2.x with CUDA
#                 and -Werror (scripts/build_torch2.sh; implies --reference; needs nvcc, not
#                 a GPU). CI builds it and runs the core tests on it (scripts/test.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
REFERENCE=0
for arg in "$@"; do
  case "$arg" in
    --reference) REFERENCE=1 ;;
    *) echo "setup.sh: unknown option $arg" >&2; exit 2 ;;
  esac
done
TORCH2=${DMS_TORCH2:-0}
case "$TORCH2" in
  0 | "") TORCH2=0 ;;
  1) REFERENCE=1 ;;
  *) echo "setup.sh: DMS_TORCH2='$TORCH2' (1 builds build-torch2/, 0 or unset does not)" >&2; exit 2 ;;
esac

PACKAGES=(g++ make cmake pkg-config ccache libopenblas0-openmp protobuf-compiler libprotobuf-dev chromium librsvg2-bin
  libtorch-dev libgloo-dev
  libsentencepiece-dev sentencepiece libpcre2-dev libutf8proc-dev python3-venv
  libhdf5-dev libssl-dev libcli11-dev nlohmann-json3-dev libgtest-dev
  clang iproute2 jq)  # clang: the fuzz/ASan build; ip, jq: the two-host test

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "setup.sh: missing Debian packages: ${missing[*]}" >&2
    echo "setup.sh: run as root, or: sudo apt-get install -y ${missing[*]}" >&2
    exit 1
  fi
  echo "setup.sh: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if [ "$REFERENCE" = 1 ]; then
  # Recreated when the pinned list changes (its copy inside .venv/ says what was installed).
  if ! cmp -s scripts/requirements-reference.txt .venv/requirements-reference.txt 2>/dev/null; then
    echo "setup.sh: creating .venv (reference Python packages)"
    rm -rf .venv
    python3 -m venv .venv
    .venv/bin/pip install -q --disable-pip-version-check -r scripts/requirements-reference.txt
    cp scripts/requirements-reference.txt .venv/requirements-reference.txt
  fi
fi

BUILD_DIR=${BUILD_DIR:-build}
JOBS=${JOBS:-$(nproc)}
# shellcheck disable=SC2086
cmake -S . -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE=Release ${CMAKE_ARGS:-} >/dev/null
cmake --build "$BUILD_DIR" -j "$JOBS"
if [ "$TORCH2" = 1 ]; then
  JOBS=$JOBS scripts/build_torch2.sh
fi
