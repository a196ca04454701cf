#!/usr/bin/env bash
# On a GPU machine: the CUDA kernel tests (per-op normalised errors against the CPU
# reference), then the card's ceilings and per-op timings. Everything lands in $OUT
# (default ./cuda_checks_out): cuda_tests.log, cuda_bench.log, cuda_kernels.json.
#
# usage: bench/device/run_cuda_checks.sh [build-dir]   (build with -DBATCHMAX_CUDA=ON)
set -uo pipefail
BUILD=${1:-build-cuda}
OUT=${OUT:-cuda_checks_out}
mkdir -p "$OUT"

# cuBLASLt is linked dynamically: find it in the toolkit or in pip's nvidia-cublas.
if ! ldconfig -p 2>/dev/null | grep -q libcublasLt.so.13; then
  for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib \
           $(python3 -c 'import nvidia.cublas, os; print(os.path.join(nvidia.cublas.__path__[0], "lib"))' 2>/dev/null); do
    [ -e "$d/libcublasLt.so.13" ] && export LD_LIBRARY_PATH="$d:${LD_LIBRARY_PATH:-}" && break
  done
fi
ldd "$BUILD/tests/batchmax_tests" | grep -E "not found|cublas|cudart" || true

CARD=$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null | head -1)
echo "card: $CARD"
"$BUILD/tests/batchmax_tests" --gtest_filter='Cuda*' 2>&1 | tee "$OUT/cuda_tests.log"
TESTS_RC=${PIPESTATUS[0]}
"$BUILD/batchmax_cuda_bench" "$OUT/bench.json" 2>&1 | tee "$OUT/cuda_bench.log"
BENCH_RC=${PIPESTATUS[0]}

# One JSON: card, commit, command, test verdict and errors, ceilings and timings.
python3 - "$OUT" "$CARD" "$TESTS_RC" "$BENCH_RC" "${COMMIT:-unknown}" <<'PY'
import json, re, sys, os
out, card, trc, brc, commit = sys.argv[1:6]
errs = []
for line in open(os.path.join(out, "cuda_tests.log")):
    m = re.match(r"\[ cuda-err \] (.*) err=(\S+) bound=(\S+)(.*)", line)
    if m:
        errs.append({"op": m[1], "err": float(m[2]), "bound": float(m[3]),
                     "ok": float(m[2]) <= float(m[3]) and "NON-FINITE" not in m[4]})
log = open(os.path.join(out, "cuda_tests.log")).read()
summary = re.findall(r"\[  (PASSED|FAILED|SKIPPED) *\] (\d+) test", log)
bench = {}
try:
    bench = json.load(open(os.path.join(out, "bench.json")))
except Exception as e:
    bench = {"error": str(e)}
res = {"card": card, "commit": commit,
       "command": "bench/device/run_cuda_checks.sh (gtest --gtest_filter='Cuda*' + batchmax_cuda_bench)",
       "tests_rc": int(trc), "bench_rc": int(brc), "tests_summary": summary,
       "max_err_by_op": {}, "errors": errs, "bench": bench}
for e in errs:
    k = e["op"].split()[0]
    res["max_err_by_op"][k] = max(res["max_err_by_op"].get(k, 0), e["err"])
json.dump(res, open(os.path.join(out, "cuda_kernels.json"), "w"), indent=2)
print("max normalised error by op:")
for k, v in sorted(res["max_err_by_op"].items()):
    print(f"  {k:20s} {v:.3e}")
print("tests rc", trc, "bench rc", brc, summary)
PY
