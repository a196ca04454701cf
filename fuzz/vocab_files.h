#pragma once
// Where the fuzz targets find the llama.cpp vocab-only GGUFs (shared/testdata/tokenizer
// beside the checkout): $BATCHMAX_TOKENIZER_DIR, else $BATCHMAX_SHARED/testdata/tokenizer,
// else the first shared/testdata/tokenizer above the source tree or the working directory.
#include <cstdlib>
#include <filesystem>
#include <string>

namespace batchmax::fuzz {

inline std::string tokenizer_dir() {
  namespace fs = std::filesystem;
  if (const char* d = std::getenv("BATCHMAX_TOKENIZER_DIR")) return d;
  if (const char* s = std::getenv("BATCHMAX_SHARED")) return std::string(s) + "/testdata/tokenizer";
  for (fs::path start : {fs::path(BATCHMAX_SOURCE_DIR), fs::current_path()}) {
    std::error_code ec;
    for (fs::path p = fs::absolute(start, ec); p.has_parent_path() && p != p.parent_path();
         p = p.parent_path())
      if (fs::exists(p / "shared/testdata/tokenizer", ec))
        return (p / "shared/testdata/tokenizer").string();
  }
  return {};
}

}  // namespace batchmax::fuzz
