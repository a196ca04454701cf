#!/usr/bin/env bash
# On a GPU machine: `batchmax serve` with Llama-3.1-8B-shaped dummy weights under a
# concurrent load (bench/server_load.py, token-id prompts), once with kv_mode full and
# once with kv_mode batchmax per request, against one server at one memory budget; plus
# the card's ceilings (bf16 GEMM TFLOP/s, copy GB/s) in the same call. Builds nothing:
# give the directory holding a batchmax built with -DBATCHMAX_CUDA=ON -DBATCHMAX_SERVER=ON
# and, if the machine lacks libcpp-httplib, a lib/ directory beside it with the .so files.
#
# usage: bench/device/run_server_load.sh [bin-dir]
# env:   REQUESTS (256), PROMPT_IDS (3000,4000), MAX_TOKENS (64,256), MEM_BUDGET (24GiB),
#        KV_BUDGET (512), CHUNK (512), COMMIT
set -uo pipefail
DIR=${1:-build-cuda}
BIN=$DIR/batchmax
OUT=${OUT:-server_load_out}
COMMIT=${COMMIT:-$(cat COMMIT 2>/dev/null || git rev-parse --short HEAD 2>/dev/null || echo unknown)}
mkdir -p "$OUT"
[ -d "$DIR/lib" ] && export LD_LIBRARY_PATH="$PWD/$DIR/lib:${LD_LIBRARY_PATH:-}"
ldd "$BIN" | grep -E "not found" && echo "missing libraries" >&2
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader

# Ceilings of this card, this call (batchmax bench measures them before its rows).
"$BIN" bench --backend cuda --dummy-weights llama3-8b --commit "$COMMIT" -n 4 --input-len 256 \
  --output-len 4 --modes full --out "$OUT/ceilings.json" > "$OUT/ceilings.log" 2>&1 || tail -5 "$OUT/ceilings.log"
python3 - "$OUT/ceilings.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))[0]
print("ceilings: gemm %.1f TFLOP/s, copy %.1f GB/s on %s" % (r["gemm_tflops_measured"], r["copy_gbps_measured"], r["gpu"]))
PY

python3 bench/server_load.py --spawn "$BIN" --requests "${REQUESTS:-256}" \
  --prompt-ids "${PROMPT_IDS:-3000,4000}" --vocab 128000 --max-tokens "${MAX_TOKENS:-64,256}" \
  --disconnect-fraction 0.05 --modes full,batchmax --timeout 500 \
  --server-args "--backend cuda --dummy-weights llama3-8b --mem-budget ${MEM_BUDGET:-24GiB} --max-batch 0 --kv-budget ${KV_BUDGET:-512} --chunk ${CHUNK:-512}" \
  --json-out "$OUT/server_load_gpu.json"
