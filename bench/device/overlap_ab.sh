#!/usr/bin/env bash
# On a GPU machine: steps in flight (EngineOptions::overlap_steps) off and on, in one
# call, on Llama-3.1-8B dummy weights: a decode-bound run (24 GiB, 64 x 512 in / 512 out,
# batchmax 512; twice each, alternating), then W-full (whole GPU, 512 x 4096 in / 256
# out): full and batchmax 512 with steps in flight, batchmax 512 without.
# usage: bench/device/overlap_ab.sh BIN_DIR   (batchmax and lib/ there); writes to $OUT.
# env: STAGES ("decode wfull"), COMMIT.
set -uo pipefail
DEFAULT_OUT=overlap_out
source "$(dirname "$0")/ab_common.sh"
for stage in ${STAGES:-decode wfull}; do
  case $stage in
    decode)
      for rep in 1 2; do
        for ov in 0 1; do
          tag=decode_ov${ov}_r$rep
          "$DIR/batchmax" bench --backend cuda --dummy-weights llama3-8b --warmup 2 --commit "$COMMIT" \
            --overlap-steps $ov -n 64 --input-len 512 --output-len 512 --mem-budget 24GiB \
            --modes batchmax --kv-budgets 512 --chunk 512 --out "$OUT/$tag.json" > "$OUT/$tag.log" 2>&1
          summary "$OUT/$tag.json" "$tag"
        done
      done ;;
    wfull)
      OUT=$OUT STAGES=full FULL_MODES=full,batchmax FULL_BUDGETS=512 TAG=_overlap COMMIT=$COMMIT \
        bench/device/run_throughput.sh "$DIR" > "$OUT/run_w_full_overlap.txt" 2>&1
      summary "$OUT/w_full_overlap.json" "w_full overlap" 2>/dev/null || ls "$OUT"
      OUT=$OUT STAGES=full FULL_MODES=batchmax FULL_BUDGETS=512 TAG=_no_overlap OVERLAP_STEPS=0 COMMIT=$COMMIT \
        bench/device/run_throughput.sh "$DIR" > "$OUT/run_w_full_no_overlap.txt" 2>&1
      summary "$OUT/w_full_no_overlap.json" "w_full no overlap" 2>/dev/null || ls "$OUT" ;;
  esac
done
