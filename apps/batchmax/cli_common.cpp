#include "cli_common.h"

#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "core/error.h"
#include "core/format.h"

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
  cmd.add_option("--max-batch", f.max_batch,
                 "sequences running at once (0: as many as the KV pool admits)")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  cmd.add_option("--ctx", f.ctx, "context length (0: the model's)")
      ->check(CLI::NonNegativeNumber);
  cmd.add_flag("--scalar", f.scalar, "use the scalar reference kernels (slow; for checking)");
  cmd.add_flag("--q8", f.q8, "CPU: integer-dot decode matmuls (faster, ~1e-3 error)");
  cmd.add_option("--backend", f.backend, "cpu or cuda")->capture_default_str();
  cmd.add_option("--step-tokens", f.step_tokens,
                 "tokens per forward step, decode + prefill (0: 2048 on CUDA, 512 on the CPU)")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  cmd.add_option("--mem-budget", f.mem_budget,
                 "cap on everything the engine allocates (weights, workspace, KV), e.g. 24GiB");
  cmd.add_option("--kv-mem", f.kv_mem, "KV pool size when there is no --mem-budget")
      ->capture_default_str();
  cmd.add_option("--overlap-steps", f.overlap_steps,
                 "launch each step before reading the last one's tokens: 1 on, 0 off, -1 the "
                 "backend's choice (on for CUDA)")
      ->check(CLI::Range(-1, 1))
      ->capture_default_str();
  add_schedule_flag(cmd, f.schedule);
  add_kv_flags(cmd, f.kv);
  cmd.add_flag("--kv-slot-mass", f.kv_slot_mass,
               "keep h2o's attention mass per KV entry (4 bytes) so h2o requests evict on the "
               "GPU; implied by --kv-policy h2o");
}

CLI::Option* add_schedule_flag(CLI::App& cmd, std::string& schedule) {
  return cmd
      .add_option("--schedule", schedule,
                  "what a step takes first while prompts wait: decode-first (every decoder, "
                  "each step), prefill-first, or auto (prefill first once every request is "
                  "admitted)")
      ->check(CLI::IsMember({"decode-first", "prefill-first", "auto"}))
      ->capture_default_str();
}

void add_kv_flags(CLI::App& cmd, KVSettings& kv) {
  cmd.add_option("--kv-mode", kv.mode, "full, post-prefill or batchmax")->capture_default_str();
  cmd.add_option("--kv-policy", kv.policy, "window, h2o, tova, snapkv, knorm, random")
      ->capture_default_str();
  cmd.add_option("--kv-budget", kv.budget, "KV entries kept per layer and head")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  cmd.add_option("--chunk", kv.chunk, "prefill chunk in batchmax mode")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  cmd.add_option("--slack", kv.slack, "decode: evict once budget + slack entries are held")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  cmd.add_option("--obs-window", kv.obs_window, "snapkv observation window")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  cmd.add_option("--sinks", kv.sinks, "first positions never evicted")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  cmd.add_option("--window", kv.window, "most recent entries never evicted")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
}

EngineOptions engine_options(const EngineFlags& f) {
  EngineOptions opts;
  opts.schedule = f.schedule;
  opts.model_path = f.model;
  opts.backend = f.backend;
  opts.n_threads = f.threads;
  opts.max_batch = f.max_batch;
  opts.max_context = f.ctx;
  opts.step_tokens = f.step_tokens;
  opts.force_scalar = f.scalar;
  opts.q8_activations = f.q8;
  if (!f.mem_budget.empty()) opts.mem_budget_bytes = parse_bytes(f.mem_budget);
  opts.kv_mem_bytes = parse_bytes(f.kv_mem);
  opts.kv = f.kv;
  opts.kv_slot_mass = f.kv_slot_mass;
  opts.overlap_steps = f.overlap_steps;
  return opts;
}

std::unique_ptr<Engine> load_engine(const EngineFlags& f, double* load_s) {
  check_model_path(f.model);
  EngineOptions opts = engine_options(f);
  double t0 = now_s();
  auto engine = Engine::create(opts);
  if (load_s) *load_s = now_s() - t0;
  return engine;
}

namespace {
std::string& command_line_storage() {
  static std::string s;
  return s;
}
}  // namespace

void set_command_line(int argc, char** argv) {
  std::string& s = command_line_storage();
  s.clear();
  for (int i = 0; i < argc; ++i) {
    std::string a = argv[i];
    const bool plain = !a.empty() && a.find_first_not_of(
        "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_=./,:+@%") == std::string::npos;
    if (!plain) {
      std::string q = "'";
      for (char c : a) q += c == '\'' ? std::string("'\\''") : std::string(1, c);
      a = q + "'";
    }
    s += (i ? " " : "") + a;
  }
}

const std::string& command_line() { return command_line_storage(); }

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
