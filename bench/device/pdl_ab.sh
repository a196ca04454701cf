#!/usr/bin/env bash
# On a GPU machine: programmatic dependent launch off/on (BATCHMAX_CUDA_PDL), after the GPU
# tests. Llama-3.2-1B shapes twice each, alternating (launch-bound), then Llama-3.1-8B
# W-limited n=256 batchmax 512. Expects .devwork/new/batchmax, .devwork/batchmax_tests
# and .devwork/lib; writes to $OUT.
set -u
export LD_LIBRARY_PATH=$PWD/.devwork/lib
.devwork/batchmax_tests --gtest_filter='Cuda*:Evict*' > $OUT/gpu_tests.log 2>&1; echo tests rc $?; grep -E "^\[  (PASSED|FAILED) |FAILED" $OUT/gpu_tests.log | tail -5
for pdl in 0 1 0 1; do
  BATCHMAX_CUDA_PDL=$pdl .devwork/new/batchmax bench --backend cuda --no-ceilings --warmup 1 --dummy-weights llama3-1b -n 64 --input-len 2048 --output-len 256 --mem-budget 8GiB --modes full,batchmax --kv-budgets 512 --chunk 512 --out $OUT/l1b_pdl$pdl.json 2>&1 | grep -E "^(full|batchmax) " | sed "s/^/pdl=$pdl l1b /"
done
for pdl in 0 1; do
  BATCHMAX_CUDA_PDL=$pdl OUT=$OUT/ab REQ_LIMITED=256 STAGES=limited LIMITED_MODES=batchmax LIMITED_BUDGETS=512 TAG=_pdl$pdl COMMIT=wip-pdl bench/device/run_throughput.sh .devwork/new 2>&1 | grep -E "^batchmax " | head -1 | sed "s/^/pdl=$pdl 8b /"
done
