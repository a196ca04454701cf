// Replays the committed corpora through the fuzz entry points without libFuzzer, so any
// compiler's sanitizer build can run them (scripts/test_sanitize.sh does, under g++).
// Usage: batchmax_fuzz_replay [CORPUS_ROOT] [TARGET...]  (default root: fuzz/corpus of
// the source tree; default targets: all). Each target reads CORPUS_ROOT/<target>/*.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <string>
#include <memory>
#include <vector>

#include "fuzz_target.h"

namespace batchmax::fuzz {

static std::map<std::string, EntryFn>& registry() {
  static std::map<std::string, EntryFn> r;
  return r;
}

bool register_target(const char* name, EntryFn fn) {
  registry()[name] = fn;
  return true;
}

}  // namespace batchmax::fuzz

int main(int argc, char** argv) {
  namespace fs = std::filesystem;
  using batchmax::fuzz::registry;
  const fs::path root = argc > 1 ? fs::path(argv[1]) : fs::path(BATCHMAX_SOURCE_DIR) / "fuzz/corpus";
  std::vector<std::string> names;
  for (int i = 2; i < argc; ++i) names.push_back(argv[i]);
  if (names.empty())
    for (const auto& [name, fn] : registry()) names.push_back(name);

  int missing = 0;
  for (const std::string& name : names) {
    auto it = registry().find(name);
    if (it == registry().end()) {
      std::fprintf(stderr, "unknown target '%s'\n", name.c_str());
      return 2;
    }
    const fs::path dir = root / name;
    if (!fs::is_directory(dir)) {
      std::fprintf(stderr, "%s: no corpus directory %s\n", name.c_str(), dir.c_str());
      ++missing;
      continue;
    }
    std::vector<fs::path> files;
    for (const auto& e : fs::directory_iterator(dir))
      if (e.is_regular_file()) files.push_back(e.path());
    std::sort(files.begin(), files.end());  // a stable order makes failures reproducible
    const auto t0 = std::chrono::steady_clock::now();
    size_t bytes = 0;
    for (const fs::path& p : files) {
      std::ifstream in(p, std::ios::binary);
      std::vector<uint8_t> buf((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
      bytes += buf.size();
      // A copy of exactly the input's size, so ASan sees reads past its end.
      std::unique_ptr<uint8_t[]> exact(new uint8_t[buf.size() ? buf.size() : 1]);
      std::copy(buf.begin(), buf.end(), exact.get());
      if (std::getenv("BATCHMAX_REPLAY_VERBOSE")) std::fprintf(stderr, "%s\n", p.c_str());
      it->second(exact.get(), buf.size());
    }
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    std::printf("%-14s %5zu inputs %9zu bytes  %.2f s\n", name.c_str(), files.size(), bytes, s);
  }
  return missing ? 1 : 0;
}
