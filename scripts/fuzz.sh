#!/usr/bin/env bash
# Builds the libFuzzer targets (clang, ASan + UBSan) into build-fuzz/ and runs each for a
# chosen time, at most --parallel at a time, at low priority (the machine is shared).
#   scripts/fuzz.sh [--time SECONDS] [--parallel N] [--no-build] [--merge] [--summary-only] [TARGET...]
# Targets: the fuzz/fuzz_<name>.cpp files (default: all). Each run starts from the
# committed seeds fuzz/corpus/<name>/ plus what earlier runs found (build-fuzz/corpus/,
# not committed) and writes crash inputs to fuzz/results/crashes/. Prints exec/s and
# coverage (cov/ft from libFuzzer's final line) per target and writes the table to
# fuzz/results/summary_<UTC time>.md. Exits non-zero when a target found a problem.
# --summary-only: no build, no run; the table from the logs of the last runs.
# --merge (no fuzzing): adds to fuzz/corpus/<name>/ as min_<sha1> the smallest set of
# build-fuzz/corpus/ inputs that reach coverage the committed corpus does not.
set -euo pipefail
cd "$(dirname "$0")/.."

TIME=60
PARALLEL=1
BUILD=1
MERGE=0
RUN=1
TARGETS=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --time) TIME="$2"; shift 2 ;;
    --parallel) PARALLEL="$2"; shift 2 ;;
    --no-build) BUILD=0; shift ;;
    --merge) MERGE=1; shift ;;
    --summary-only) RUN=0; BUILD=0; shift ;;
    -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
    -*) echo "unknown option $1" >&2; exit 2 ;;
    *) TARGETS+=("$1"); shift ;;
  esac
done
if [[ ${#TARGETS[@]} -eq 0 ]]; then
  for f in fuzz/fuzz_*.cpp; do n=$(basename "$f" .cpp); TARGETS+=("${n#fuzz_}"); done
fi

# Longest input per target: big enough for the seeds and their structure, small enough
# to keep executions fast (long pathological texts are the unit tests' job).
max_len() {
  case "$1" in
    gguf) echo 32768 ;;
    batch_line) echo 8192 ;;
    *) echo 4096 ;;
  esac
}

CXX_BIN="${FUZZ_CXX:-clang++-14}"
if [[ $BUILD -eq 1 ]] && ! command -v "$CXX_BIN" >/dev/null; then
  echo "fuzz.sh: $CXX_BIN not found: libFuzzer needs clang (apt-get install clang-14, or set FUZZ_CXX)" >&2
  exit 2
fi
if [[ $BUILD -eq 1 ]]; then
  cmake -S . -B build-fuzz -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DCMAKE_CXX_COMPILER="$CXX_BIN" -DBATCHMAX_FUZZ=ON -DBATCHMAX_TESTS=OFF -DBATCHMAX_BENCH=OFF >/dev/null
  nice -n 19 cmake --build build-fuzz -j "${JOBS:-2}" --target $(printf 'fuzz_%s ' "${TARGETS[@]}")
fi

mkdir -p fuzz/results/crashes build-fuzz/logs

if [[ $MERGE -eq 1 ]]; then
  for t in "${TARGETS[@]}"; do
    out="build-fuzz/merge/$t"
    rm -rf "$out" && mkdir -p "$out" && cp "fuzz/corpus/$t"/* "$out"/
    before=$(ls "$out" | wc -l)
    nice -n 19 "./build-fuzz/fuzz/fuzz_$t" -merge=1 -max_len="$(max_len "$t")" -timeout=20 \
      -rss_limit_mb=2048 -artifact_prefix="fuzz/results/crashes/$t-" "$out" "build-fuzz/corpus/$t" \
      >"build-fuzz/logs/$t.merge.log" 2>&1
    added=0
    for f in "$out"/*; do
      b=$(basename "$f")
      [[ -e "fuzz/corpus/$t/$b" ]] || { cp "$f" "fuzz/corpus/$t/min_$b"; added=$((added + 1)); }
    done
    echo "$t: $before committed inputs, $added added ($(du -sb "fuzz/corpus/$t" | cut -f1) bytes now)"
  done
  exit 0
fi
# Every single allocation over 512 MB from an input of at most 32 KB is a finding.
export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1:allocator_may_return_null=0}"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}"

run_one() {
  local t="$1" corpus="build-fuzz/corpus/$1" log="build-fuzz/logs/$1.log"
  mkdir -p "$corpus"
  local rc=0
  nice -n 19 "./build-fuzz/fuzz/fuzz_$t" "$corpus" "fuzz/corpus/$t" \
    -max_total_time="$TIME" -max_len="$(max_len "$t")" -timeout=20 -rss_limit_mb=2048 \
    -malloc_limit_mb=512 -print_final_stats=1 -artifact_prefix="fuzz/results/crashes/$t-" \
    >"$log" 2>&1 || rc=$?
  echo "$rc" >"build-fuzz/logs/$t.rc"
}

running=0
for t in "${TARGETS[@]}"; do
  [[ $RUN -eq 1 ]] || break
  [[ -x "build-fuzz/fuzz/fuzz_$t" ]] || { echo "no target fuzz_$t" >&2; exit 2; }
  run_one "$t" &
  running=$((running + 1))
  if [[ $running -ge $PARALLEL ]]; then wait -n || true; running=$((running - 1)); fi
done
wait || true

stamp=$(date -u +%Y%m%d_%H%M%S)
summary="fuzz/results/summary_${stamp}.md"
commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
{
  echo "# Fuzz run $stamp (commit $commit$(git diff --quiet 2>/dev/null || echo ', dirty'))"
  echo
  [[ $RUN -eq 0 ]] || echo "Command: \`scripts/fuzz.sh --time $TIME --parallel $PARALLEL ${TARGETS[*]}\` on $(nproc) cores, nice 19"
  echo
  echo "| target | time s | runs | exec/s | cov | ft | corpus files | corpus bytes | result |"
  echo "|---|---|---|---|---|---|---|---|---|"
} >"$summary"
status=0
for t in "${TARGETS[@]}"; do
  log="build-fuzz/logs/$t.log"
  rc=$(cat "build-fuzz/logs/$t.rc" 2>/dev/null || echo 1)
  last=$(grep -E '^#[0-9]+' "$log" | tail -1 || true)
  cov=$(sed -nE 's/.* cov: ([0-9]+).*/\1/p' <<<"$last")
  ft=$(sed -nE 's/.* ft: ([0-9]+).*/\1/p' <<<"$last")
  runs=$(sed -nE 's/^stat::number_of_executed_units: *([0-9]+)/\1/p' "$log")
  secs=$(sed -nE 's/^Done [0-9]+ runs in ([0-9]+) second.*/\1/p' "$log")
  eps=$(sed -nE 's/^stat::average_exec_per_sec: *([0-9]+)/\1/p' "$log")
  files=$(find "build-fuzz/corpus/$t" "fuzz/corpus/$t" -type f | wc -l)
  bytes=$(find "build-fuzz/corpus/$t" "fuzz/corpus/$t" -type f -printf '%s\n' | awk '{s+=$1} END {print s+0}')
  if [[ "$rc" == 0 ]]; then result=ok; else
    result="FAILED rc=$rc: $(grep -m1 -E 'ERROR: (libFuzzer|AddressSanitizer)|runtime error|invariant violated' "$log" | cut -c1-120)"
    status=1
  fi
  echo "| $t | ${secs:-?} | ${runs:-?} | ${eps:-?} | ${cov:-?} | ${ft:-?} | $files | $bytes | $result |" >>"$summary"
done
cat "$summary"
echo "(logs: build-fuzz/logs/, summary: $summary)"
exit $status
