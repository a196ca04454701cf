#pragma once
// Pieces shared by the subcommands: the engine flags, model loading, prompt building,
// terminal detection and number formatting.
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>

#include "batchmax/engine.h"
#include "tokenizer/chat_template.h"
#include "tokenizer/prompt_tokens.h"
#include "tokenizer/tokenizer.h"

namespace batchmax::cli {

// A mistake in how the program was called (exit status 2), found after parsing.
class UsageError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// A subcommand: its CLI11 app and what to run when it was chosen. run() returns the
// exit status; failures are thrown (batchmax::Error, UsageError).
struct Command {
  CLI::App* app = nullptr;
  std::function<int()> run;
};

Command add_generate(CLI::App& root);
Command add_run(CLI::App& root);
Command add_info(CLI::App& root);
Command add_tokenize(CLI::App& root);
Command add_eval(CLI::App& root);
Command add_plan(CLI::App& root);
Command add_bench(CLI::App& root);
Command add_serve(CLI::App& root);

// The program's arguments, quoted as a shell would need them (results record it).
void set_command_line(int argc, char** argv);
const std::string& command_line();

// --model alone (info, tokenize).
void add_model_flag(CLI::App& cmd, std::string& model);
// Throws batchmax::Error when the model file is missing or not a regular file.
void check_model_path(const std::string& path);

// Flags of the subcommands that load the engine.
struct EngineFlags {
  std::string model;
  std::string backend = "cpu";
  int threads = 0;
  int max_batch = 8;
  int ctx = 0;
  int step_tokens = 0;  // 0: the backend's (EngineOptions::step_tokens)
  bool scalar = false;
  bool q8 = false;
  std::string mem_budget;  // e.g. "24GiB"; empty: none
  std::string kv_mem = "2GiB";
  KVSettings kv;           // compression defaults (per-request fields override)
  bool kv_slot_mass = false;  // EngineOptions::kv_slot_mass
  int overlap_steps = -1;     // EngineOptions::overlap_steps
  std::string schedule = "auto";  // EngineOptions::schedule (serve: decode-first)
};
void add_engine_flags(CLI::App& cmd, EngineFlags& flags);
// The compression flags alone (--kv-mode, --kv-policy, --kv-budget, --chunk, ...).
void add_kv_flags(CLI::App& cmd, KVSettings& kv);
EngineOptions engine_options(const EngineFlags& flags);
// --schedule (EngineOptions::schedule), checked at parse time.
CLI::Option* add_schedule_flag(CLI::App& cmd, std::string& schedule);
// Loads the model; `load_s` receives the seconds it took.
std::unique_ptr<Engine> load_engine(const EngineFlags& flags, double* load_s = nullptr);

// Prompt building lives in tokenizer/prompt_tokens.h (the server uses it too).
using batchmax::tokenize_chat;
using batchmax::tokenize_text;

bool stdout_is_tty();
bool stderr_is_tty();

inline double now_s() {
  using namespace std::chrono;
  return duration<double>(steady_clock::now().time_since_epoch()).count();
}

std::string human_bytes(double bytes);    // "1.5 GiB"
std::string human_duration(double secs);  // "1h02m", "3m05s", "4.2s"
std::string read_file(const std::string& path);  // throws batchmax::Error

}  // namespace batchmax::cli
