#pragma once
// One fuzz entry point per fuzz_<name>.cpp. Under libFuzzer (BATCHMAX_LIBFUZZER) the
// macro also defines LLVMFuzzerTestOneInput; otherwise the entry registers itself with
// the corpus replay driver (replay_main.cpp), so every target links into one binary that
// the sanitizer CI job runs over fuzz/corpus/<name>/.
//
// Contract of an entry: return 0; throwing batchmax::Error (or any std::exception from
// rejecting input) is handled inside; everything else (a crash, a sanitizer report, an
// abort from a violated invariant) is a finding.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>

namespace batchmax::fuzz {

using EntryFn = int (*)(const uint8_t* data, size_t size);

// Defined in replay_main.cpp (not linked into libFuzzer binaries).
bool register_target(const char* name, EntryFn fn);

// An invariant the code under test promises; failing it aborts so the fuzzer records it.
[[noreturn]] inline void invariant_failed(const char* what, const char* file, int line) {
  std::fprintf(stderr, "fuzz invariant violated at %s:%d: %s\n", file, line, what);
  std::abort();
}

}  // namespace batchmax::fuzz

#define FUZZ_CHECK(cond) \
  ((cond) ? (void)0 : ::batchmax::fuzz::invariant_failed(#cond, __FILE__, __LINE__))

// BATCHMAX_FUZZ_INIT(fn): libFuzzer calls fn() once before the first input, so slow
// set-up (loading vocabularies) is not timed as that input (-timeout); the replay driver
// leaves it to the entry's own lazy initialisation.
#ifdef BATCHMAX_LIBFUZZER
#define BATCHMAX_FUZZ_INIT(fn)                                                     \
  extern "C" int LLVMFuzzerInitialize(int*, char***) {                             \
    fn();                                                                          \
    return 0;                                                                      \
  }
#define BATCHMAX_FUZZ_TARGET(name)                                                 \
  static int batchmax_fuzz_##name(const uint8_t* data, size_t size);              \
  extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {        \
    return batchmax_fuzz_##name(data, size);                                       \
  }                                                                                \
  static int batchmax_fuzz_##name(const uint8_t* data, size_t size)
#else
#define BATCHMAX_FUZZ_INIT(fn)
#define BATCHMAX_FUZZ_TARGET(name)                                                 \
  static int batchmax_fuzz_##name(const uint8_t* data, size_t size);              \
  [[maybe_unused]] static const bool batchmax_fuzz_registered_##name =             \
      ::batchmax::fuzz::register_target(#name, &batchmax_fuzz_##name);             \
  static int batchmax_fuzz_##name(const uint8_t* data, size_t size)
#endif
