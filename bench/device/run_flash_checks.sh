#!/usr/bin/env bash
# On a GPU machine, one call: the CUDA tests (kernels vs the CPU reference, flash
# attention, the engine end to end), compute-sanitizer over the flash attention tests,
# then the kernel bench twice: tensor-core attention, and the SIMT kernel for the
# before/after (BATCHMAX_CUDA_SIMT_ATTENTION=1). Logs and JSON land in $OUT.
#
# usage: [MODE=ab] bench/device/run_flash_checks.sh BIN_DIR   (batchmax_tests, batchmax_cuda_bench)
# MODE=ab: the attention tests and the prefill kernel's 3- vs 2-CTA builds only.
set -uo pipefail
BIN=${1:?bin dir}
OUT=${OUT:-flash_checks_out}
mkdir -p "$OUT"
if ! ldconfig -p 2>/dev/null | grep -q libcublasLt.so.13; then
  for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib \
           $(python3 -c 'import nvidia.cublas, os; print(os.path.join(nvidia.cublas.__path__[0], "lib"))' 2>/dev/null); do
    [ -e "$d/libcublasLt.so.13" ] && export LD_LIBRARY_PATH="$d:${LD_LIBRARY_PATH:-}" && break
  done
fi
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv,noheader | tee "$OUT/card.txt"
step() { echo "== $1 ($(date +%T))"; }
if [ "${MODE:-full}" = ab ]; then  # short: attention tests, then prefill occupancy A/B
  step tests
  timeout 200 "$BIN/batchmax_tests" --gtest_filter='CudaFlash*:CudaAttention*:CudaEngine*' > "$OUT/tests.log" 2>&1
  echo "tests rc=$?"; grep -E "cuda-err|e2e|PASSED|FAILED" "$OUT/tests.log" | tail -40
  for c in 3 2; do  # (the knob was removed after this A/B: 2 won)
    step "bench prefill ctas=$c"
    BATCHMAX_FLASH_PREFILL_CTAS=$c BMX_BENCH_ATTENTION_ONLY=1 timeout 100 "$BIN/batchmax_cuda_bench" \
      "$OUT/bench_ctas$c.json" > "$OUT/bench_ctas$c.log" 2>&1; echo "rc=$?"; cat "$OUT/bench_ctas$c.log"
  done
  exit 0
fi
step tests
timeout 300 "$BIN/batchmax_tests" --gtest_filter='Cuda*' > "$OUT/tests.log" 2>&1; echo "tests rc=$?"
grep -E "cuda-err|e2e|FAILED|PASSED|SKIPPED|Failure|error" "$OUT/tests.log" | grep -v "^\[       OK" | tail -60
step memcheck
timeout 200 compute-sanitizer --tool memcheck --error-exitcode 9 "$BIN/batchmax_tests" \
  --gtest_filter='CudaFlashAttention.*:CudaAttention.GqaMixed*' > "$OUT/memcheck.log" 2>&1
echo "memcheck rc=$?"; grep -E "ERROR SUMMARY|PASSED|FAILED" "$OUT/memcheck.log" | tail -4
step racecheck
timeout 150 compute-sanitizer --tool racecheck --error-exitcode 9 "$BIN/batchmax_tests" \
  --gtest_filter='CudaFlashAttention.LongDecodeSplitKv:CudaFlashAttention.QueriesWithNoVisibleKey' > "$OUT/racecheck.log" 2>&1
echo "racecheck rc=$?"; grep -E "RACECHECK SUMMARY|ERROR SUMMARY|PASSED|FAILED" "$OUT/racecheck.log" | tail -4
step bench-flash
timeout 200 "$BIN/batchmax_cuda_bench" "$OUT/bench_flash.json" > "$OUT/bench_flash.log" 2>&1; echo "bench rc=$?"
step bench-simt
BATCHMAX_CUDA_SIMT_ATTENTION=1 BMX_BENCH_ATTENTION_ONLY=1 timeout 200 "$BIN/batchmax_cuda_bench" \
  "$OUT/bench_simt.json" > "$OUT/bench_simt.log" 2>&1; echo "bench simt rc=$?"
step done
echo "--- simt attention"; grep -E "^device|^attention" "$OUT/bench_simt.log"
echo "--- flash"; cat "$OUT/bench_flash.log"
