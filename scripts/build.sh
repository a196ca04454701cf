#!/usr/bin/env bash
# Configures (Release, Ninja) into build/ and builds. Extra arguments go to cmake's
# configure step, e.g. -DBATCHMAX_SANITIZE=ON. JOBS sets the parallelism (default 2).
set -euo pipefail
cd "$(dirname "$0")/.."
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release "$@"
cmake --build build -j "${JOBS:-2}"
