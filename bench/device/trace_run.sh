#!/usr/bin/env bash
# On a GPU machine: the kernel timeline of a workload's steady state, one mode per process,
# through the CUPTI tracer (kernel_trace.cpp: no replay, no added synchronisation), on
# Llama-3.1-8B dummy weights. Writes $OUT/trace_<workload>_<mode>$TAG.txt: per kernel name
# launches, total and share of a window, the GPU's idle time in it, and BMX_TRACE_DUMP
# records from the window's middle; and the run's own JSON and log beside it.
#
# usage: bench/device/trace_run.sh BIN_DIR WORKLOAD   (batchmax, lib/ with the CUDA
#        libraries and libbatchmax_kernel_trace.so, COMMIT in BIN_DIR)
#   wfull:   whole GPU, 512 x 4096 in / 256 out, 2048-token steps, 40 s; window 22 + 12 s
#   limited: 24 GiB, 512 x 4096 in / 512 out, STEP_TOKENS (512), 40 s; window 22 + 12 s
#   decode:  24 GiB, 64 x 512 in / 2048 out (decode steps of batch 64); window 8 + 8 s
# env:   MODES ("full batchmax"; batchmax at KV budget 512, chunk 512), TAG (file name
#        suffix), BMX_TRACE_SKIP_S / BMX_TRACE_LEN_S (the window), BMX_TRACE_DUMP (900),
#        EXTRA (more bench arguments), SCHEDULE (decode-first: the mixed steps' steady
#        state that the traces since v9 of cuda_notes.md show; auto would prefill every
#        W-full batchmax prompt first, so the window would hold prefill-only steps)
set -uo pipefail
DEFAULT_OUT=trace_out
source "$(dirname "$0")/ab_common.sh"
WORKLOAD=${2:?workload: wfull, limited or decode}
LIB=$(cd "$DIR" && pwd)/lib/libbatchmax_kernel_trace.so
[ -f "$LIB" ] || { echo "no $LIB" >&2; exit 2; }
case $WORKLOAD in
  wfull) args=(-n 512 --input-len 4096 --output-len 256 --step-tokens 2048 --mem-fraction 0.9 --time-limit 40)
         skip=22 len=12 ;;
  limited) args=(-n 512 --input-len 4096 --output-len 512 --step-tokens "${STEP_TOKENS:-512}"
                 --mem-budget 24GiB --time-limit 40)
           skip=22 len=12 ;;
  decode) args=(-n 64 --input-len 512 --output-len 2048 --mem-budget 24GiB --time-limit 30)
          skip=8 len=8 ;;
  *) echo "unknown workload $WORKLOAD" >&2; exit 2 ;;
esac
export BMX_TRACE_SKIP_S=${BMX_TRACE_SKIP_S:-$skip} BMX_TRACE_LEN_S=${BMX_TRACE_LEN_S:-$len}
export BMX_TRACE_DUMP=${BMX_TRACE_DUMP:-900}
rc=0
for mode in ${MODES:-full batchmax}; do
  name=${WORKLOAD}_$mode${TAG:-}
  LD_PRELOAD=$LIB BMX_TRACE_OUT="$OUT/trace_$name.txt" \
    "$DIR/batchmax" bench --backend cuda --dummy-weights llama3-8b --commit "$COMMIT" --warmup 2 \
    --no-ceilings "${args[@]}" --schedule "${SCHEDULE:-decode-first}" --modes "$mode" --kv-budgets 512 --chunk 512 ${EXTRA:-} \
    --out "$OUT/trace_run_$name.json" > "$OUT/trace_run_$name.log" 2>&1 || rc=1
  tail -n 3 "$OUT/trace_run_$name.log"
  head -n 24 "$OUT/trace_$name.txt"
done
exit $rc
