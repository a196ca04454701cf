#!/usr/bin/env bash
# On the device machine: SmolLM2-135M-Instruct end to end on the GPU.
#   1. the engine-level golden tests with BATCHMAX_TEST_BACKEND=cuda (logits and greedy
#      tokens against the NumPy reference; Batch-Max identity, peak memory, admission),
#   2. CPU vs GPU greedy text for a few chat prompts,
#   3. the memory plan on the GPU.
# Usage: bench/device/smollm2_on_gpu.sh BUILD_DIR MODEL.gguf   (writes to $OUT)
# The model does not fit one device call (98 MB > 64 MiB carried), so it travels in two
# parts: see bench/device/README.md.
set -uo pipefail
build=$1
model=$2
out=${OUT:-/tmp/out}
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"

BATCHMAX_MODEL=$model BATCHMAX_TEST_BACKEND=cuda "$build/tests/batchmax_tests" \
  --gtest_filter='Batching*:KVCompression*' 2>&1 | tee "$out/gpu_golden_tests.log" | grep -E "^\[(golden|kv|admission)\]|FAILED|PASSED|Failure" 

for p in "What is the capital of France?" "Write a haiku about the sea." "What is 2+2?"; do
  for b in cpu cuda; do
    printf '%s %-5s ' "[gen]" "$b"
    "$build/batchmax" generate --backend "$b" --model "$model" --chat --prompt "$p" \
      --max-tokens 48 --json 2>/dev/null | python3 -c 'import json,sys; j=json.load(sys.stdin); print(j["token_ids"][:48], repr(j["text"][:80]))'
  done
done 2>&1 | tee "$out/gpu_generate.log"

"$build/batchmax" plan --backend cuda --model "$model" --mem-budget 2GiB --prompt-tokens 4096 \
  --max-tokens 256 --kv-budget 512 --chunk 512 2>&1 | tee "$out/gpu_plan.log"
