#pragma once
// Runs an accuracy grid (tasks x contexts x modes x policies x budgets) through the
// Engine API. The samples of a (task, context) are generated once and shared by every
// compression setting, so settings are compared on the same prompts; the requests of
// several cells go into one generate() call so the engine batches them.
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "batchmax/engine.h"
#include "eval/eval_report.h"

namespace batchmax::eval {

class TextCorpus;

struct GridSpec {
  std::vector<std::string> tasks;
  std::vector<int64_t> contexts;
  std::vector<std::string> modes;     // full, post-prefill, batchmax
  std::vector<std::string> policies;  // used by the compressing modes
  std::vector<int64_t> budgets;
  int64_t chunk = 512;
  int samples = 20;
  uint64_t seed = 1;
  bool chat = true;
  KVSettings kv_base;  // sinks, window, obs_window, slack (mode/policy/budget/chunk set per cell)
  std::string model;   // for the rows
  std::string commit;
  std::string backend;
  int requests_per_call = 64;  // cells are grouped into generate() calls of at least this many
  std::string dump_path;       // when set: every answer appended here as JSON lines
};

// One compression setting of one (task, context).
struct Cell {
  std::string task;
  int64_t context = 0;
  KVSettings kv;  // kv.mode "full": policy and budget unused
};

// The cells the grid runs, in order: per (task, context) the full cache once, then
// every mode x policy x budget. Skipped: budgets that hold the whole prompt (nothing
// would be evicted) and post-prefill for ppl (its prompt log-probs are computed before
// the compression, so they are the full cache's by construction).
std::vector<Cell> plan_cells(const GridSpec& spec);

// Throws batchmax::Error on a bad spec (unknown task or mode, empty lists).
void validate_grid(const GridSpec& spec);

struct RunCallbacks {
  std::function<void(const std::string&)> log;               // progress lines
  std::function<void(const std::vector<Row>&)> rows_so_far;  // after every call
};

std::vector<Row> run_grid(Engine& engine, const GridSpec& spec, const TextCorpus* corpus,
                          const RunCallbacks& cb = {});

}  // namespace batchmax::eval
