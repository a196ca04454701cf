#pragma once
// Where tests find their data: the SmolLM2 model fetched by scripts/fetch_model.sh
// (override with BATCHMAX_MODEL) and the shared tokenizer vectors beside the repo.
#include <cstdlib>
#include <filesystem>
#include <string>

namespace batchmax::test {

inline std::string source_dir() { return BATCHMAX_SOURCE_DIR; }

inline std::string smollm2_path() {
  if (const char* p = std::getenv("BATCHMAX_MODEL")) return p;
  const char* home = std::getenv("HOME");
  return std::string(home ? home : "/root") + "/.cache/batchmax/SmolLM2-135M-Instruct.Q4_1.gguf";
}

inline bool have_smollm2() { return std::filesystem::exists(smollm2_path()); }

inline std::string shared_testdata() {
  if (const char* p = std::getenv("BATCHMAX_SHARED")) return std::string(p) + "/testdata";
  return source_dir() + "/../shared/testdata";
}

}  // namespace batchmax::test

// Skips (with the reason printed) when the real model has not been fetched.
#define BATCHMAX_REQUIRE_SMOLLM2()                                                   \
  do {                                                                              \
    if (!batchmax::test::have_smollm2())                                            \
      GTEST_SKIP() << "model not found at " << batchmax::test::smollm2_path()       \
                   << " (run scripts/fetch_model.sh)";                              \
  } while (0)

namespace batchmax::test {

// The backend the engine-level tests run on: BATCHMAX_TEST_BACKEND (cpu or cuda),
// default cpu. The device script sets cuda to run the golden tests on the GPU.
inline std::string engine_backend() {
  const char* b = std::getenv("BATCHMAX_TEST_BACKEND");
  return b && *b ? b : "cpu";
}

}  // namespace batchmax::test
