#!/usr/bin/env bash
# Installs the Debian packages dms-retrofit needs (only those missing), then
# configures and builds into build/. Idempotent: a second run does no apt work.
#   BUILD_DIR=build   CMAKE_ARGS="-DCMAKE_PREFIX_PATH=/path/to/libtorch"   JOBS=N
set -euo pipefail
cd "$(dirname "$0")/.."

PACKAGES=(g++ make cmake pkg-config ccache libopenblas0-openmp protobuf-compiler libprotobuf-dev chromium librsvg2-bin
  libtorch-dev libgloo-dev
  libsentencepiece-dev sentencepiece
  libhdf5-dev libssl-dev libcli11-dev nlohmann-json3-dev libgtest-dev)

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

BUILD_DIR=${BUILD_DIR:-build}
JOBS=${JOBS:-$(nproc)}
# shellcheck disable=SC2086
cmake -S . -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE=Release ${CMAKE_ARGS:-} >/dev/null
cmake --build "$BUILD_DIR" -j "$JOBS"
