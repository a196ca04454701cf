#include "cli_common.h"

#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "core/error.h"

namespace batchmax::cli {

void add_model_flag(CLI::App& cmd, std::string& model) {
  cmd.add_option("-m,--model", model, "GGUF model file")->required();
}

void check_model_path(const std::string& path) {
  std::error_code ec;
  auto st = std::filesystem::status(path, ec);
  if (ec || !std::filesystem::exists(st))
    throw Error("model file not found: " + path);
  if (!std::filesystem::is_regular_file(st))
    throw Error("model path is not a regular file: " + path);
}

void add_engine_flags(CLI::App& cmd, EngineFlags& f) {
  add_model_flag(cmd, f.model);
  cmd.add_option("-t,--threads", f.threads, "CPU threads (0: all hardware threads)")
      ->check(CLI::NonNegativeNumber);
  cmd.add_option("--max-batch", f.max_batch, "sequences running at once")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  cmd.add_option("--ctx", f.ctx, "context length (0: the model's)")
      ->check(CLI::NonNegativeNumber);
  cmd.add_flag("--scalar", f.scalar, "use the scalar reference kernels (slow; for checking)");
}

std::unique_ptr<Engine> load_engine(const EngineFlags& f, double* load_s) {
  check_model_path(f.model);
  EngineOptions opts;
  opts.model_path = f.model;
  opts.n_threads = f.threads;
  opts.max_batch = f.max_batch;
  opts.max_context = f.ctx;
  opts.force_scalar = f.scalar;
  double t0 = now_s();
  auto engine = Engine::create(opts);
  if (load_s) *load_s = now_s() - t0;
  return engine;
}

std::vector<int32_t> tokenize_chat(const Tokenizer& tok, const ChatTemplate& tmpl,
                                   const std::vector<ChatMessage>& messages) {
  std::vector<int32_t> ids = tok.encode(tmpl.render(messages, true), true, true);
  int32_t bos = tok.bos_id();
  if (bos >= 0 && ids.size() >= 2 && ids[0] == bos && ids[1] == bos) ids.erase(ids.begin());
  return ids;
}

std::vector<int32_t> tokenize_text(const Tokenizer& tok, const std::string& text) {
  return tok.encode(text, true, false);
}

bool stdout_is_tty() { return isatty(fileno(stdout)) != 0; }
bool stderr_is_tty() { return isatty(fileno(stderr)) != 0; }

std::string human_bytes(double bytes) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  int u = 0;
  while (bytes >= 1024 && u < 4) {
    bytes /= 1024;
    ++u;
  }
  char buf[32];
  std::snprintf(buf, sizeof buf, u == 0 ? "%.0f %s" : "%.2f %s", bytes, units[u]);
  return buf;
}

std::string human_duration(double secs) {
  char buf[32];
  if (!(secs >= 0) || secs > 1e8) return "?";
  long s = static_cast<long>(secs + 0.5);
  if (secs < 60)
    std::snprintf(buf, sizeof buf, "%.1fs", secs);
  else if (s < 3600)
    std::snprintf(buf, sizeof buf, "%ldm%02lds", s / 60, s % 60);
  else
    std::snprintf(buf, sizeof buf, "%ldh%02ldm", s / 3600, (s % 3600) / 60);
  return buf;
}

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error("cannot open " + path);
  std::ostringstream ss;
  ss << in.rdbuf();
  if (in.bad()) throw Error("cannot read " + path);
  return ss.str();
}

}  // namespace batchmax::cli
