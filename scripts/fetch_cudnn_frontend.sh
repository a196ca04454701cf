#!/usr/bin/env bash
# Fetches the cuDNN frontend (NVIDIA's header-only C++ graph API over cuDNN) from its PyPI
# wheel into a cache outside the repo and prints its include directory. Only the CUDA
# build uses it (prefill attention through cuDNN's SDPA); cuDNN itself is loaded at run
# time if the machine has it. Idempotent.
set -euo pipefail
version=1.32.0
cache="${BATCHMAX_CACHE:-$HOME/.cache/batchmax}"
dir="$cache/cudnn-frontend-$version"
if [ -s "$dir/include/cudnn_frontend.h" ]; then echo "$dir/include"; exit 0; fi
mkdir -p "$cache"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# Any wheel of this version carries the same headers; pick one for a fixed platform.
python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.11 \
  --platform manylinux_2_28_x86_64 "nvidia-cudnn-frontend==$version" -d "$tmp" >&2
python3 - "$tmp" "$dir.part" <<'PY'
import glob, sys, zipfile
wheel = glob.glob(sys.argv[1] + "/nvidia_cudnn_frontend-*.whl")[0]
with zipfile.ZipFile(wheel) as z:
    for n in z.namelist():
        if n.startswith("include/"):
            z.extract(n, sys.argv[2])
PY
rm -rf "$dir" && mv "$dir.part" "$dir"
echo "$dir/include"
