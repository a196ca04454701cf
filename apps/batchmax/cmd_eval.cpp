// batchmax eval: accuracy under KV-cache compression. Runs a grid of tasks x context
// lengths x modes x policies x budgets and writes one JSON row per cell (and optionally
// Markdown tables); progress goes to stderr. The files are rewritten after every
// engine call, so an interrupted run keeps what it finished.
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>

#include "cli_common.h"
#include "core/error.h"
#include "eval/eval_report.h"
#include "eval/eval_runner.h"
#include "eval/eval_tasks.h"
#include "eval/eval_text.h"

namespace batchmax::cli {
namespace {

namespace fs = std::filesystem;

struct EvalArgs {
  EngineFlags engine;  // with the KV flags: --chunk, --sinks, --window, --obs-window, ...
  eval::GridSpec grid;
  std::string out, markdown, commit, text_dir;
  bool no_chat = false;
};

std::string git_commit() {
  FILE* p = popen("git rev-parse --short HEAD 2>/dev/null", "r");
  if (!p) return "unknown";
  char buf[64] = {0};
  std::string s = fgets(buf, sizeof buf, p) ? buf : "";
  pclose(p);
  while (!s.empty() && (s.back() == '\n' || s.back() == '\r')) s.pop_back();
  return s.empty() ? "unknown" : s;
}

// Written beside the target and renamed, so a reader never sees half a file.
void write_atomic(const std::string& path, const std::string& text) {
  fs::path p(path);
  if (p.has_parent_path()) fs::create_directories(p.parent_path());
  const std::string tmp = path + ".tmp";
  {
    std::ofstream f(tmp, std::ios::binary | std::ios::trunc);
    if (!f) throw Error("cannot write " + tmp);
    f << text;
    if (!f) throw Error("cannot write " + tmp);
  }
  fs::rename(tmp, path);
}

int run_eval(EvalArgs& a) {
  eval::GridSpec& g = a.grid;
  g.chat = !a.no_chat;
  g.backend = a.engine.backend;
  // The grid sets mode, policy and budget per cell; the rest comes from the KV flags.
  g.kv_base = a.engine.kv;
  g.chunk = a.engine.kv.chunk;
  g.commit = a.commit.empty() ? git_commit() : a.commit;
  g.model = fs::path(a.engine.model).filename().string();
  try {
    eval::validate_grid(g);  // usage problems before the model loads
  } catch (const Error& e) {
    throw UsageError(e.what());
  }

  std::unique_ptr<eval::TextCorpus> corpus;
  for (const auto& t : g.tasks)
    if (eval::task_needs_corpus(t)) {
      corpus = std::make_unique<eval::TextCorpus>(eval::TextCorpus::load(a.text_dir));
      std::fprintf(stderr, "eval: text %s (%zu sentences)\n", corpus->source().c_str(), corpus->size());
      break;
    }

  check_model_path(a.engine.model);
  EngineOptions opts = engine_options(a.engine);
  const double t0 = now_s();
  auto engine = Engine::create(opts);
  std::fprintf(stderr, "eval: loaded %s (%s) in %.1fs\n", g.model.c_str(), g.backend.c_str(), now_s() - t0);

  auto save = [&](const std::vector<eval::Row>& rows) {
    write_atomic(a.out, eval::rows_to_json_text(rows));
    if (!a.markdown.empty()) write_atomic(a.markdown, eval::rows_to_markdown(rows));
  };
  eval::RunCallbacks cb;
  cb.log = [](const std::string& s) { std::fprintf(stderr, "eval: %s\n", s.c_str()); };
  cb.rows_so_far = save;
  std::vector<eval::Row> rows = eval::run_grid(*engine, g, corpus.get(), cb);
  save(rows);
  std::fprintf(stderr, "eval: %zu rows in %s, wrote %s%s%s\n", rows.size(),
               human_duration(now_s() - t0).c_str(), a.out.c_str(),
               a.markdown.empty() ? "" : " and ", a.markdown.c_str());
  return 0;
}

}  // namespace

Command add_eval(CLI::App& root) {
  auto a = std::make_shared<EvalArgs>();
  eval::GridSpec& g = a->grid;
  g.tasks = {"passkey"};
  g.contexts = {2048};
  g.modes = {"full", "post-prefill", "batchmax"};
  g.policies = {"snapkv"};
  g.budgets = {256};
  CLI::App* cmd = root.add_subcommand("eval", "accuracy under KV-cache compression (task grid)");
  add_engine_flags(*cmd, a->engine);
  cmd->add_option("--tasks", g.tasks, "passkey, niah_single, niah_multikey, vartrack, ppl")
      ->delimiter(',')
      ->capture_default_str();
  cmd->add_option("--contexts", g.contexts, "context lengths in tokens (prompt + answer)")
      ->delimiter(',')
      ->capture_default_str();
  cmd->add_option("--modes", g.modes, "full, post-prefill, batchmax")
      ->delimiter(',')
      ->capture_default_str();
  cmd->add_option("--policies", g.policies, "eviction policies of the compressing modes")
      ->delimiter(',')
      ->capture_default_str();
  cmd->add_option("--budgets", g.budgets, "KV entries kept per (layer, KV head)")
      ->delimiter(',')
      ->capture_default_str();
  cmd->add_option("--samples", g.samples, "samples per task and context")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  cmd->add_option("--seed", g.seed, "sample generator seed")->capture_default_str();
  cmd->add_option("--requests-per-call", g.requests_per_call,
                  "requests grouped into one engine call (several cells)")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  cmd->add_option("--out", a->out, "JSON results (an array of rows)")->required();
  cmd->add_option("--markdown", a->markdown, "also write Markdown tables here");
  cmd->add_option("--commit", a->commit, "commit for the rows (default: git rev-parse --short HEAD)");
  cmd->add_option("--text-dir", a->text_dir,
                  std::string("English text: python3-doc's html/_sources (default: $") +
                      eval::kTextDirEnv + " or " + eval::kDefaultTextDir + ")");
  cmd->add_option("--dump", g.dump_path, "append every answer (JSON lines) to this file");
  cmd->add_flag("--no-chat", a->no_chat, "plain prompts even when the model has a chat template");
  return {cmd, [a] { return run_eval(*a); }};
}

}  // namespace batchmax::cli
