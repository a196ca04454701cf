#!/usr/bin/env bash
# On a GPU machine: end-to-end throughput of the engine with Llama-3.1-8B-shaped dummy
# weights (no download), for the two workloads of the CUDA issue. Builds nothing: give
# the directory holding a batchmax built with -DBATCHMAX_CUDA=ON. Writes JSON + SVG +
# logs to $OUT (default ./throughput_out).
#
#   W-limited: --mem-budget 24GiB, 4096 in / 512 out, full, post-prefill, batchmax with
#              KV budgets 256/512/1024, chunk 512.
#   W-full:    the whole GPU (--mem-fraction 0.9 of free memory), 4096 in / 256 out.
#
# usage: bench/device/run_throughput.sh [bin-dir]
# env:   REQ_LIMITED (512), REQ_FULL (512): requests per workload; TIME_LIMIT (0): seconds
#        per configuration before it stops and reports what it did; COMMIT; SKIP_SMOKE=1;
#        STAGES (default "smoke limited full prefill"); LIMITED_MODES, LIMITED_BUDGETS, FULL_MODES,
#        FULL_BUDGETS (the defaults above); TAG (file name suffix); tokens per forward step:
#        LIMITED_STEP_TOKENS (512), FULL_STEP_TOKENS (2048, the engine's CUDA default),
#        STEP_TOKENS (sets both; the profile stage takes the W-limited one). Each is the
#        size that ran `full` fastest in its workload on an H100
#        (bench/results/step_tokens_2026-11-27/). W-limited runs batchmax at
#        LIMITED_BATCHMAX_STEP_TOKENS (1024, its fastest there: v11-v12 of
#        bench/device/cuda_notes.md) unless STEP_TOKENS or LIMITED_STEP_TOKENS is given;
#        every other mode of a workload gets the workload's step.
#        OVERLAP_STEPS (-1: the engine's choice, on for CUDA; 0 off; 1 on): steps in flight.
#        SCHEDULE (auto, the engine's default for batch jobs; decode-first, the server's;
#        prefill-first): what a step takes first while prompts wait
#        (EngineOptions::schedule). With auto, W-full's batchmax (every request admitted
#        at once) prefills all prompts before decoding.
#        TEMPERATURE (0: greedy), TOP_K (0), TOP_P (1): every request's sampling (picked
#        on the GPU; BATCHMAX_HOST_SAMPLING=1 sends the logits to the host instead).
#        BATCHMAX_PROFILE=1 adds
#        the per-step profile to the logs (and slows the run: it synchronises).
#   prefill:   prefill efficiency on steps that hold only prefill rows: the whole GPU,
#              4096 in / 1 out (the one token comes from the prefill), REQ_PREFILL (128)
#              requests, FULL_MODES at FULL_BUDGETS, FULL_STEP_TOKENS. In W-full a mixed
#              step's time is split by token count, so its decode rows' KV reads are
#              charged to prefill there; here there are none.
#   profile: stage of its own: GPU time op by op (BATCHMAX_PROFILE=ops, events only, no
#            added synchronisation), W-limited shapes, 4096 in / 256 out, REQ_PROFILE (48)
#            requests, LIMITED_MODES at KV budget 512.
#   profile-full: the same on the W-full shapes (whole GPU, FULL_STEP_TOKENS, FULL_MODES
#            at KV budget 512), REQ_FULL requests for TIME_LIMIT seconds (set one, e.g.
#            30: the steady state of mixed steps is what it is for).
set -uo pipefail
BIN=${1:-build-cuda}/batchmax
OUT=${OUT:-throughput_out}
REQ_LIMITED=${REQ_LIMITED:-512}
REQ_FULL=${REQ_FULL:-512}
TIME_LIMIT=${TIME_LIMIT:-0}
STAGES=${STAGES:-smoke limited full prefill}
LIMITED_MODES=${LIMITED_MODES:-full,post-prefill,batchmax}
LIMITED_BUDGETS=${LIMITED_BUDGETS:-256,512,1024}
FULL_MODES=${FULL_MODES:-full,batchmax}
FULL_BUDGETS=${FULL_BUDGETS:-512}
TAG=${TAG:-}
# The binaries' commit: BIN_DIR/COMMIT where the build was staged with one (the device's
# checkout may sit at an older HEAD than the binaries), else this checkout's HEAD.
COMMIT=${COMMIT:-$(cat "$(dirname "$BIN")/COMMIT" 2>/dev/null || cat COMMIT 2>/dev/null || git rev-parse --short HEAD 2>/dev/null || echo unknown)}
mkdir -p "$OUT"

# cuBLASLt is linked dynamically: find it in the toolkit or in pip's nvidia-cublas.
if ! ldconfig -p 2>/dev/null | grep -q libcublasLt.so; then
  for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib \
           $(python3 -c 'import nvidia.cublas, os; print(os.path.join(nvidia.cublas.__path__[0], "lib"))' 2>/dev/null); do
    ls "$d"/libcublasLt.so* >/dev/null 2>&1 && export LD_LIBRARY_PATH="$d:${LD_LIBRARY_PATH:-}" && break
  done
fi
ldd "$BIN" | grep -E "not found" && echo "missing libraries" >&2
nvidia-smi --query-gpu=name,driver_version,memory.total,memory.used --format=csv,noheader  # no file: OUT brings back 8 at most

common=(--backend cuda --dummy-weights llama3-8b --commit "$COMMIT" --warmup 2 --time-limit "$TIME_LIMIT"
        --temperature "${TEMPERATURE:-0}" --top-k "${TOP_K:-0}" --top-p "${TOP_P:-1}"
        --overlap-steps "${OVERLAP_STEPS:--1}" --schedule "${SCHEDULE:-auto}")
limited_mode_steps=()
[ -z "${STEP_TOKENS:-}${LIMITED_STEP_TOKENS:-}" ] &&
  limited_mode_steps=(--mode-step-tokens "batchmax=${LIMITED_BATCHMAX_STEP_TOKENS:-1024}")
LIMITED_STEP_TOKENS=${STEP_TOKENS:-${LIMITED_STEP_TOKENS:-512}}
FULL_STEP_TOKENS=${STEP_TOKENS:-${FULL_STEP_TOKENS:-2048}}
rc=0
for stage in $STAGES; do
  case $stage in
    profile)
      BATCHMAX_PROFILE=ops "$BIN" bench "${common[@]}" --no-ceilings -n "${REQ_PROFILE:-48}" \
        --step-tokens "$LIMITED_STEP_TOKENS" \
        --input-len 4096 --output-len 256 --mem-budget 24GiB --modes "$LIMITED_MODES" \
        --kv-budgets 512 --chunk 512 --out "$OUT/profile$TAG.json" > "$OUT/profile$TAG.log" 2>&1 || rc=1
      grep -E "^(profile|  |    )" "$OUT/profile$TAG.log" | head -n 150 ;;
    profile-full)
      BATCHMAX_PROFILE=ops "$BIN" bench "${common[@]}" --no-ceilings -n "$REQ_FULL" \
        --step-tokens "$FULL_STEP_TOKENS" --input-len 4096 --output-len 256 --mem-fraction 0.9 \
        --modes "$FULL_MODES" --kv-budgets 512 --chunk 512 \
        --out "$OUT/profile_full$TAG.json" > "$OUT/profile_full$TAG.log" 2>&1 || rc=1
      grep -E "^(profile|  |    )" "$OUT/profile_full$TAG.log" | head -n 150 ;;
    smoke)  # every mode end to end on short requests: shapes, budgets, no crash
      "$BIN" bench "${common[@]}" --no-ceilings -n 8 --input-len uniform:200:1500 --output-len 16 \
        --mem-budget 20GiB --kv-budgets 256 --chunk 256 --policies snapkv,h2o,knorm \
        --out "$OUT/smoke.json" 2>&1 | tee "$OUT/smoke.log" || rc=1 ;;
    limited)
      "$BIN" bench "${common[@]}" -n "$REQ_LIMITED" --input-len 4096 --output-len 512 \
        --step-tokens "$LIMITED_STEP_TOKENS" "${limited_mode_steps[@]}" \
        --mem-budget 24GiB --modes "$LIMITED_MODES" --kv-budgets "$LIMITED_BUDGETS" \
        --chunk 512 --workload-name "W-limited n=$REQ_LIMITED in=4096 out=512" \
        --out "$OUT/w_limited$TAG.json" --plot "$OUT/w_limited$TAG.svg" > "$OUT/w_limited$TAG.log" 2>&1 || rc=1
      tail -n 20 "$OUT/w_limited$TAG.log" ;;
    prefill)
      "$BIN" bench "${common[@]}" -n "${REQ_PREFILL:-128}" --input-len 4096 --output-len 1 \
        --step-tokens "$FULL_STEP_TOKENS" \
        --mem-fraction 0.9 --modes "$FULL_MODES" --kv-budgets "$FULL_BUDGETS" --chunk 512 \
        --workload-name "P-only n=${REQ_PREFILL:-128} in=4096 out=1" \
        --out "$OUT/p_only$TAG.json" > "$OUT/p_only$TAG.log" 2>&1 || rc=1
      tail -n 12 "$OUT/p_only$TAG.log" ;;
    full)
      "$BIN" bench "${common[@]}" -n "$REQ_FULL" --input-len 4096 --output-len 256 \
        --step-tokens "$FULL_STEP_TOKENS" \
        --mem-fraction 0.9 --modes "$FULL_MODES" --kv-budgets "$FULL_BUDGETS" --chunk 512 \
        --workload-name "W-full n=$REQ_FULL in=4096 out=256" \
        --out "$OUT/w_full$TAG.json" --plot "$OUT/w_full$TAG.svg" > "$OUT/w_full$TAG.log" 2>&1 || rc=1
      tail -n 20 "$OUT/w_full$TAG.log" ;;
  esac
done
exit $rc
