#!/usr/bin/env bash
# On a GPU machine: weights prefetched into L2 ahead of few-row products
# (BATCHMAX_CUDA_L2_PREFETCH, src/backend/cuda/l2_prefetch.h) off and on, in one call.
# First the GPU tests with it on (it must change no value), then a decode-bound workload
# (Llama-3.1-8B dummy weights, 24 GiB, 64 x 512 in / 512 out, batchmax 512) for each
# setting, twice, alternating; the decode bandwidth of steps of >= 32 rows is the figure.
# usage: bench/device/l2_prefetch_ab.sh BIN_DIR   (batchmax, tests/batchmax_tests, lib/)
# env:   OUT (./l2_prefetch_out), SETTINGS ("0 rows:16 rows:24 rows:32 front:24"),
#        REPEATS (2), N (64), TESTS=0 skips the tests.
set -uo pipefail
DIR=${1:?bin dir}
OUT=${OUT:-l2_prefetch_out}
mkdir -p "$OUT"
export LD_LIBRARY_PATH=$PWD/$DIR/lib:${LD_LIBRARY_PATH:-}
SETTINGS=${SETTINGS:-0 rows:16 rows:24 rows:32 front:24}
if [ "${TESTS:-1}" != 0 ]; then
  BATCHMAX_CUDA_L2_PREFETCH=24 "$DIR/tests/batchmax_tests" \
    --gtest_filter='*Cuda*:DummyWeights*:*LogitRows*' > "$OUT/gpu_tests_prefetch24.log" 2>&1
  echo "gpu tests with prefetch: rc $?"; grep -E "^\[  (PASSED|FAILED) |FAILED|SKIPPED \]" "$OUT/gpu_tests_prefetch24.log" | tail -4
fi
for rep in $(seq "${REPEATS:-2}"); do
  for s in $SETTINGS; do
    mb=${s#*:}; pat=${s%%:*}; [ "$s" = 0 ] && mb=0 && pat=rows
    tag=${pat}_${mb}_r$rep
    BATCHMAX_CUDA_L2_PREFETCH=$mb BATCHMAX_CUDA_L2_PREFETCH_PATTERN=$pat \
      "$DIR/batchmax" bench --backend cuda --dummy-weights llama3-8b --warmup 2 \
      -n "${N:-64}" --input-len 512 --output-len 512 --mem-budget 24GiB --modes batchmax \
      --kv-budgets 512 --chunk 512 --commit "$(cat "$DIR/COMMIT" 2>/dev/null || echo wip)" \
      --out "$OUT/decode_$tag.json" > "$OUT/decode_$tag.log" 2>&1
    python3 - "$OUT/decode_$tag.json" "$tag" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))[0]
print(f"{sys.argv[2]:>14}: out tok/s {r['output_tok_s']:8.1f}  decode b>=32 {r['decode_gbps_batch32']:7.1f} GB/s ({100*r['decode_bw_frac_batch32']:.1f}% of {r['copy_gbps_measured']:.0f})  steps {r.get('decode_steps')}")
PY
  done
done
