#!/usr/bin/env bash
# Installs what is missing (Debian packages, the reference .venv), builds, and runs every
# test (ctest), printing each stage's time. Tests read ../shared/assets, or $DMS_ASSETS.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$SECONDS
scripts/setup.sh --reference
echo "== stage: install + build: $((SECONDS - start)) s"
BUILD_DIR=${BUILD_DIR:-build}
cd "$BUILD_DIR"
t=$SECONDS
ctest --output-on-failure -j "${JOBS:-2}" --timeout 300
echo "== stage: tests: $((SECONDS - t)) s (total $((SECONDS - start)) s)"
