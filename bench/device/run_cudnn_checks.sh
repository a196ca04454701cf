#!/usr/bin/env bash
# On a GPU machine, one call: prefill attention through cuDNN's SDPA against our own
# kernel. Finds libcudnn (toolkit, ld cache, or pip's nvidia-cudnn), runs the CUDA tests
# (cuDNN with dense K/V, then paged K/V and gathered rows), the attention bench and
# W-limited batchmax 512 end to end (REQ requests) for each variant.
#
# usage: bench/device/run_cudnn_checks.sh BIN_DIR   (batchmax, tests/batchmax_tests, batchmax_cuda_bench)
# env:   REQ (256), STAGES (default "tests bench e2e"), COMMIT,
#        VARIANTS (default "dense paged off"), E2E_VARIANTS (default "dense off"),
#        E2E_MODES (default batchmax)
set -uo pipefail
BIN=${1:?bin dir}
OUT=${OUT:-cudnn_checks_out}
REQ=${REQ:-256}
STAGES=${STAGES:-tests bench e2e}
VARIANTS=${VARIANTS:-dense paged off}
E2E_VARIANTS=${E2E_VARIANTS:-dense off}
mkdir -p "$OUT"
for lib in libcublasLt.so.13 libcudnn.so.9; do
  ldconfig -p 2>/dev/null | grep -q "$lib" && continue
  for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib \
           $(python3 -c 'import nvidia.cublas, os; print(os.path.join(nvidia.cublas.__path__[0], "lib"))' 2>/dev/null) \
           $(python3 -c 'import nvidia.cudnn, os; print(os.path.join(nvidia.cudnn.__path__[0], "lib"))' 2>/dev/null); do
    [ -e "$d/$lib" ] && export LD_LIBRARY_PATH="$d:${LD_LIBRARY_PATH:-}" && echo "$lib: $d" && break
  done
done
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
step() { echo "== $1 ($(date +%T))"; }
# variant -> environment
venv() {
  case $1 in
    dense) echo "BATCHMAX_CUDA_CUDNN_KV=dense" ;;
    paged) echo "BATCHMAX_CUDA_CUDNN_KV=paged" ;;
    gather) echo "BATCHMAX_CUDA_CUDNN_LAYOUT=gather" ;;
    off) echo "BATCHMAX_CUDA_CUDNN=0" ;;
  esac
}
for stage in $STAGES; do
  case $stage in
    tests)
      step "tests, cuDNN dense K/V, rows in place"
      BATCHMAX_CUDA_CUDNN_VERBOSE=1 timeout 300 "$BIN/tests/batchmax_tests" --gtest_filter='Cuda*' \
        > "$OUT/tests.log" 2>&1; echo "tests rc=$?"
      grep -E "backend:|\[cudnn\]|FAILED|PASSED|Failure|error" "$OUT/tests.log" | sort | uniq -c | sort -rn | head -30
      for v in paged gather; do
        step "tests, cuDNN $v"
        env $(venv $v) timeout 200 "$BIN/tests/batchmax_tests" \
          --gtest_filter='CudaFlashAttention.PrefillNewest*:CudaAttention.PrefillWithNewest*' > "$OUT/tests_$v.log" 2>&1
        echo "tests $v rc=$?"; grep -E "backend:|FAILED|PASSED|Failure" "$OUT/tests_$v.log" | sort -u | head -12
      done ;;
    bench)
      for v in $VARIANTS; do
        step "attention bench $v"
        env $(venv $v) BMX_BENCH_ATTENTION_ONLY=1 timeout 150 "$BIN/batchmax_cuda_bench" \
          "$OUT/bench_$v.json" > "$OUT/bench_$v.log" 2>&1; echo "rc=$?"
        grep -E "^device|^attention prefill" "$OUT/bench_$v.log"
      done ;;
    e2e)
      for v in $E2E_VARIANTS; do
        step "W-limited ${E2E_MODES:-batchmax} 512, n=$REQ, $v"
        env $(venv $v) OUT="$OUT/e2e_$v" REQ_LIMITED=$REQ STAGES=limited LIMITED_MODES=${E2E_MODES:-batchmax} \
          LIMITED_BUDGETS=512 bench/device/run_throughput.sh "$BIN" > "$OUT/e2e_$v.log" 2>&1; echo "rc=$?"
        grep -E "^engine|^(batchmax|full|post)" "$OUT/e2e_$v.log" | sort -u
      done ;;
  esac
done
step done
# Only a few files come back from a lent machine: everything in one archive.
tar czf "$OUT/../cudnn_checks.tgz" -C "$OUT" . && rm -rf "$OUT"/* && mv "$OUT/../cudnn_checks.tgz" "$OUT/"
