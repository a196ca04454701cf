#!/usr/bin/env bash
# Builds the library and tests with AddressSanitizer + UndefinedBehaviorSanitizer (Debug)
# into build-asan/ and runs every test that does not run the whole model (those take
# minutes under ASan; the Release run of scripts/test.sh covers them): the GGUF reader's
# bad-file classes, dequantisation, tokenizers (peer vectors, SmolLM2 corpus), kernels,
# KV cache, policies, scheduler, sampler, steps in flight on the tiny dummy model
# (EngineBatchBothWays; OverlappedSteps runs SmolLM2: ~6 min a test under ASan), batch-file
# parsing, the server's protocol,
# metrics, keys and request streams (the server's end-to-end tests, Server*E2E*, run the
# whole model behind HTTP and are left to the Release run like the CLI tests). Then
# replays every committed fuzz corpus file (fuzz/corpus/<target>/: seeds and crash
# regressions) through the fuzz entry points, built with the same compiler and sanitizers
# (no libFuzzer needed).
set -euo pipefail
cd "$(dirname "$0")/.."
cmake -S . -B build-asan -G Ninja -DCMAKE_BUILD_TYPE=Debug -DBATCHMAX_SANITIZE=ON -DBATCHMAX_BENCH=OFF
cmake --build build-asan -j "${JOBS:-2}" --target batchmax_tests batchmax_server_tests batchmax_fuzz_replay
export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
./build-asan/tests/batchmax_tests \
  --gtest_filter='-Batching*:KVCompression*:ChunkedEviction*:TinyModel*:OverlappedSteps*:StepSchedule*:Cli*:*Pathological*:EvalCli*:BenchCli*'
./build-asan/tests/batchmax_server_tests --gtest_filter='-Server*E2E*'
./build-asan/fuzz/batchmax_fuzz_replay fuzz/corpus
