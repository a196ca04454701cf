#!/usr/bin/env bash
# On a GPU machine: variants of the backend's decode path, each a set of environment
# assignments, in one call. Each variant
#   tests:  against the CPU reference (CudaAttention.*, DummyWeights*: tests/batchmax_tests),
#   bench:  alone in the attention bench (batchmax_cuda_bench, attention cases only),
#   decode: end to end on a decode-bound run (24 GiB, 64 x 512 in / DECODE_OUT out, batchmax
#           512), REPS times, the variants alternating. At the default 512 out a run has
#           ~5 s of decode and moves by ~1 point run to run; 2048 runs four times as long.
# usage: bench/device/decode_variants_ab.sh BIN_DIR   (batchmax, tests/batchmax_tests,
#        batchmax_cuda_bench and lib/ in BIN_DIR); writes to $OUT.
# env: VARIANTS (space-separated; each is comma-joined VAR=value assignments, e.g.
#      "BATCHMAX_CUDA_DECODE_TILE=64x2,BATCHMAX_CUDA_DECODE_SPLITS=1"), PARTS ("tests bench
#      decode"), REPS (1), DECODE_OUT (512).
set -uo pipefail
DEFAULT_OUT=decode_variants_out
source "$(dirname "$0")/ab_common.sh"
VARIANTS=${VARIANTS:?VARIANTS: e.g. BATCHMAX_CUDA_DECODE_TILE=32x2,BATCHMAX_CUDA_DECODE_SPLITS=2}
label() { echo "$1" | sed -E 's/BATCHMAX_CUDA_//g; s/[^A-Za-z0-9=,]+/_/g'; }
rc=0
for part in ${PARTS:-tests bench decode}; do
  reps=1
  [ "$part" = decode ] && reps=${REPS:-1}
  for rep in $(seq 1 "$reps"); do
    for v in $VARIANTS; do
      IFS=, read -r -a assign <<< "$v"
      tag=$(label "$v")
      case $part in
        tests)
          env "${assign[@]}" "$DIR/tests/batchmax_tests" --gtest_filter='CudaAttention.*:DummyWeights*' \
            > "$OUT/tests_$tag.log" 2>&1 || rc=1
          echo "tests $tag: $(grep -E '^\[  (PASSED|FAILED)' "$OUT/tests_$tag.log" | tr '\n' ' ')" ;;
        bench)
          [ -x "$DIR/batchmax_cuda_bench" ] || { echo "no batchmax_cuda_bench" >&2; rc=1; continue; }
          env "${assign[@]}" BMX_BENCH_ATTENTION_ONLY=1 "$DIR/batchmax_cuda_bench" \
            "$OUT/attention_$tag.json" > "$OUT/attention_$tag.txt" 2>&1 || rc=1
          echo "== $tag"; grep -E "^device|attention decode" "$OUT/attention_$tag.txt" ;;
        decode)
          env "${assign[@]}" "$DIR/batchmax" bench --backend cuda --dummy-weights llama3-8b \
            --warmup 2 --commit "$COMMIT" -n 64 --input-len 512 --output-len "${DECODE_OUT:-512}" --mem-budget 24GiB \
            --modes batchmax --kv-budgets 512 --chunk 512 --out "$OUT/decode_${tag}_r$rep.json" \
            > "$OUT/decode_${tag}_r$rep.log" 2>&1 || rc=1
          summary "$OUT/decode_${tag}_r$rep.json" "$tag r$rep" ;;
      esac
    done
  done
done
exit $rc
