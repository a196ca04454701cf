#!/usr/bin/env bash
# On a GPU machine: an on/off switch of the CUDA backend (an environment variable read as
# 0 = off, 1 = on), off and on in one call, on Llama-3.1-8B dummy weights. Stages:
#   decode:  decode-bound (24 GiB, 64 x 512 in / 512 out, batchmax 512), off/on twice,
#            alternating;
#   wfull:   W-full batchmax 512 off and on, then `full` (switch on: the issue's ratio);
#   prefill: run_throughput.sh's P-only stage (prefill-only steps), full and batchmax 512.
# usage: bench/device/switch_ab.sh BIN_DIR VARIABLE LABEL   (batchmax and lib/ in BIN_DIR)
#        e.g. switch_ab.sh .devwork BATCHMAX_CUDA_SIDE_SCORES side; writes to $OUT.
# env: STAGES ("decode wfull prefill"), COMMIT.
set -uo pipefail
DEFAULT_OUT=${DEFAULT_OUT:-switch_ab_out}
source "$(dirname "$0")/ab_common.sh"
VAR=${2:?environment variable}
LABEL=${3:-$VAR}
for stage in ${STAGES:-decode wfull prefill}; do
  case $stage in
    decode)
      for rep in 1 2; do
        for on in 0 1; do
          tag=decode_${LABEL}${on}_r$rep
          env "$VAR=$on" "$DIR/batchmax" bench --backend cuda --dummy-weights llama3-8b \
            --warmup 2 --commit "$COMMIT" -n 64 --input-len 512 --output-len 512 --mem-budget 24GiB \
            --modes batchmax --kv-budgets 512 --chunk 512 --out "$OUT/$tag.json" > "$OUT/$tag.log" 2>&1
          summary "$OUT/$tag.json" "$tag"
        done
      done ;;
    wfull)
      for on in 0 1; do
        env "$VAR=$on" OUT=$OUT STAGES=full FULL_MODES=batchmax FULL_BUDGETS=512 \
          TAG=_$LABEL$on COMMIT=$COMMIT bench/device/run_throughput.sh "$DIR" > "$OUT/run_w_full_$LABEL$on.txt" 2>&1
        summary "$OUT/w_full_$LABEL$on.json" "w_full $LABEL$on" 2>/dev/null || tail -5 "$OUT/run_w_full_$LABEL$on.txt"
      done
      env "$VAR=1" OUT=$OUT STAGES=full FULL_MODES=full TAG=_full COMMIT=$COMMIT \
        bench/device/run_throughput.sh "$DIR" > "$OUT/run_w_full_full.txt" 2>&1
      summary "$OUT/w_full_full.json" "w_full full" 2>/dev/null || tail -5 "$OUT/run_w_full_full.txt" ;;
    prefill)
      env "$VAR=1" OUT=$OUT STAGES=prefill FULL_MODES=full,batchmax FULL_BUDGETS=512 COMMIT=$COMMIT \
        bench/device/run_throughput.sh "$DIR" > "$OUT/run_p_only.txt" 2>&1
      summary "$OUT/p_only.json" "P-only" 2>/dev/null || tail -5 "$OUT/run_p_only.txt" ;;
  esac
done
