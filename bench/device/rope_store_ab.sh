#!/usr/bin/env bash
# On a GPU machine: the fused rope + KV store (Backend::rope_kv_store) off and on, in one
# call, on Llama-3.1-8B dummy weights (BATCHMAX_CUDA_FUSE_ROPE_STORE=0 runs rope and
# kv_store as two launches). Stages:
#   decode:  decode-bound (24 GiB, 64 x 512 in / 512 out, batchmax 512), off/on twice,
#            alternating;
#   wfull:   W-full batchmax 512 off and on, then `full` on (the issue's ratio);
#   prefill: run_throughput.sh's P-only stage (prefill-only steps), full and batchmax 512.
# usage: bench/device/rope_store_ab.sh BIN_DIR   (batchmax and lib/ there); writes to $OUT.
# env: STAGES ("decode wfull prefill"), COMMIT.
set -uo pipefail
DEFAULT_OUT=rope_store_out
source "$(dirname "$0")/ab_common.sh"
for stage in ${STAGES:-decode wfull prefill}; do
  case $stage in
    decode)
      for rep in 1 2; do
        for fuse in 0 1; do
          tag=decode_fuse${fuse}_r$rep
          BATCHMAX_CUDA_FUSE_ROPE_STORE=$fuse "$DIR/batchmax" bench --backend cuda --dummy-weights llama3-8b \
            --warmup 2 --commit "$COMMIT" -n 64 --input-len 512 --output-len 512 --mem-budget 24GiB \
            --modes batchmax --kv-budgets 512 --chunk 512 --out "$OUT/$tag.json" > "$OUT/$tag.log" 2>&1
          summary "$OUT/$tag.json" "$tag"
        done
      done ;;
    wfull)
      for fuse in 0 1; do
        BATCHMAX_CUDA_FUSE_ROPE_STORE=$fuse OUT=$OUT STAGES=full FULL_MODES=batchmax FULL_BUDGETS=512 \
          TAG=_fuse$fuse COMMIT=$COMMIT bench/device/run_throughput.sh "$DIR" > "$OUT/run_w_full_fuse$fuse.txt" 2>&1
        summary "$OUT/w_full_fuse$fuse.json" "w_full fuse$fuse" 2>/dev/null || tail -5 "$OUT/run_w_full_fuse$fuse.txt"
      done
      OUT=$OUT STAGES=full FULL_MODES=full TAG=_full COMMIT=$COMMIT \
        bench/device/run_throughput.sh "$DIR" > "$OUT/run_w_full_full.txt" 2>&1
      summary "$OUT/w_full_full.json" "w_full full" 2>/dev/null || tail -5 "$OUT/run_w_full_full.txt" ;;
    prefill)
      OUT=$OUT STAGES=prefill FULL_MODES=full,batchmax FULL_BUDGETS=512 COMMIT=$COMMIT \
        bench/device/run_throughput.sh "$DIR" > "$OUT/run_p_only.txt" 2>&1
      summary "$OUT/p_only.json" "P-only" 2>/dev/null || tail -5 "$OUT/run_p_only.txt" ;;
  esac
done
