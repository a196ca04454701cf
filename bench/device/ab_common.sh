# Sourced by the A/B scripts here (overlap_ab.sh, rope_store_ab.sh): DIR (the binaries and
# lib/), OUT and COMMIT set up, and summary FILE LABEL, one line per row of a bench JSON.
DIR=${1:?bin dir}
OUT=${OUT:-${DEFAULT_OUT:-ab_out}}
mkdir -p "$OUT"
export LD_LIBRARY_PATH=$(cd "$DIR" && pwd)/lib:${LD_LIBRARY_PATH:-}
COMMIT=${COMMIT:-$(cat "$DIR/COMMIT" 2>/dev/null || echo unknown)}
summary() {  # file label
  python3 - "$1" "$2" <<'PY'
import json, sys
for r in json.load(open(sys.argv[1])):
    print(f"{sys.argv[2]:>22} {r['mode']:>9} {r['kv_budget']:>4}: out tok/s {r['output_tok_s']:8.1f}"
          f"  tot tok/s {r['total_tok_s']:9.1f}  batch {r['max_batch']:>3}"
          f"  overlapped {r.get('overlapped_steps', 0):>5}/{r['steps']:<5}"
          f"  prefill {100*r['prefill_peak_frac']:.1f}% of {r['gemm_tflops_measured']:.0f} TF/s"
          f"  decode b>=32 {100*r['decode_bw_frac_batch32']:.1f}% of {r['copy_gbps_measured']:.0f} GB/s")
PY
}
