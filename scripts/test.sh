#!/usr/bin/env bash
# Builds and runs every test (unit, golden, kernels, end-to-end). Assumes scripts/setup.sh
# has run; tests that need the model skip with a message when it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/build.sh
ctest --test-dir build --output-on-failure -j "${JOBS:-2}"
