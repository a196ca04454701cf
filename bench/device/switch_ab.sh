#!/usr/bin/env bash
# On a GPU machine: a switch of the CUDA backend (an environment variable; by default its
# values 0 = off and 1 = on, or AB_VALUES), each value in one call, on Llama-3.1-8B dummy
# weights. Stages:
#   decode:  decode-bound (24 GiB, 64 x 512 in / 512 out, batchmax 512), off/on twice,
#            alternating;
#   wfull:   W-full batchmax 512 off and on, then `full` (the last value: the issue's ratio);
#   limited: W-limited batchmax 512 (run_throughput.sh's step: 1024) for each value;
#   prefill: run_throughput.sh's P-only stage (prefill-only steps), full and batchmax 512.
# usage: bench/device/switch_ab.sh BIN_DIR VARIABLE LABEL   (batchmax and lib/ in BIN_DIR)
#        e.g. switch_ab.sh .devwork BATCHMAX_CUDA_FUSE_ROPE_STORE fuse; writes to $OUT.
# env: STAGES ("decode wfull prefill"), COMMIT, AB_VALUES ("0 1": the values, in order),
#      AB_BASELINE (1; 0 skips wfull's `full` run where the switch cannot change it).
set -uo pipefail
DEFAULT_OUT=${DEFAULT_OUT:-switch_ab_out}
source "$(dirname "$0")/ab_common.sh"
VAR=${2:?environment variable}
LABEL=${3:-$VAR}
VALUES=${AB_VALUES:-0 1}
LAST=${VALUES##* }
for stage in ${STAGES:-decode wfull prefill}; do
  case $stage in
    decode)
      for rep in 1 2; do
        for on in $VALUES; do
          tag=decode_${LABEL}${on}_r$rep
          env "$VAR=$on" "$DIR/batchmax" bench --backend cuda --dummy-weights llama3-8b \
            --warmup 2 --commit "$COMMIT" -n 64 --input-len 512 --output-len 512 --mem-budget 24GiB \
            --modes batchmax --kv-budgets 512 --chunk 512 --out "$OUT/$tag.json" > "$OUT/$tag.log" 2>&1
          summary "$OUT/$tag.json" "$tag"
        done
      done ;;
    wfull)
      for on in $VALUES; do
        env "$VAR=$on" OUT=$OUT STAGES=full FULL_MODES=batchmax FULL_BUDGETS=512 \
          TAG=_$LABEL$on COMMIT=$COMMIT bench/device/run_throughput.sh "$DIR" > "$OUT/run_w_full_$LABEL$on.txt" 2>&1
        summary "$OUT/w_full_$LABEL$on.json" "w_full $LABEL$on" 2>/dev/null || tail -5 "$OUT/run_w_full_$LABEL$on.txt"
      done
      [ "${AB_BASELINE:-1}" = 1 ] || continue
      env "$VAR=$LAST" OUT=$OUT STAGES=full FULL_MODES=full TAG=_full COMMIT=$COMMIT \
        bench/device/run_throughput.sh "$DIR" > "$OUT/run_w_full_full.txt" 2>&1
      summary "$OUT/w_full_full.json" "w_full full" 2>/dev/null || tail -5 "$OUT/run_w_full_full.txt" ;;
    limited)
      for on in $VALUES; do
        env "$VAR=$on" OUT=$OUT STAGES=limited LIMITED_MODES=batchmax LIMITED_BUDGETS=512 \
          TAG=_$LABEL$on COMMIT=$COMMIT bench/device/run_throughput.sh "$DIR" > "$OUT/run_w_limited_$LABEL$on.txt" 2>&1
        summary "$OUT/w_limited_$LABEL$on.json" "w_limited $LABEL$on" 2>/dev/null || tail -5 "$OUT/run_w_limited_$LABEL$on.txt"
      done ;;
    prefill)
      env "$VAR=$LAST" OUT=$OUT STAGES=prefill FULL_MODES=full,batchmax FULL_BUDGETS=512 COMMIT=$COMMIT \
        bench/device/run_throughput.sh "$DIR" > "$OUT/run_p_only.txt" 2>&1
      summary "$OUT/p_only.json" "P-only" 2>/dev/null || tail -5 "$OUT/run_p_only.txt" ;;
  esac
done
