#!/usr/bin/env bash
# Installs what is missing, builds, and runs every test (ctest).
# Tests read ../shared/assets, or $DMS_ASSETS when set.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --reference
BUILD_DIR=${BUILD_DIR:-build}
cd "$BUILD_DIR"
ctest --output-on-failure -j "${JOBS:-2}" --timeout 300
