#!/usr/bin/env bash
# From a fresh machine: install, build, fetch SmolLM2-135M-Instruct, then generate one
# chat answer and run the example batch file (one of its lines is invalid on purpose).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/build.sh
model=$(bash scripts/fetch_model.sh)
build/batchmax info --model "$model"
echo "== generate"
build/batchmax generate --model "$model" --chat --prompt "What is the capital of France?" \
  --max-tokens 64
echo
echo "== run examples/batch_example.jsonl -> build/batch_example.out.jsonl"
build/batchmax run --model "$model" --input examples/batch_example.jsonl \
  --output build/batch_example.out.jsonl
cat build/batch_example.out.jsonl
