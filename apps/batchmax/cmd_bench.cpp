// batchmax bench: offline throughput of a workload, swept over KV modes, policies, KV
// budgets and memory budgets. Prints a table, and writes JSON rows (--out) and an SVG
// plot (--plot) after every configuration, so a run cut short keeps what it measured.
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <optional>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "bench/bench_runner.h"
#include "bench/svg_plot.h"
#include "bench/workload.h"
#include "cli_common.h"
#include "core/error.h"
#include "core/format.h"
#include "format/gguf_reader.h"
#include "model/presets.h"
#ifdef BATCHMAX_HAVE_CUDA
#include "backend/cuda/cuda_backend.h"
#endif

namespace batchmax::cli {
namespace {

struct BenchArgs {
  std::string model, dummy, backend = "cpu";
  int threads = 0, step_tokens = 0, max_batch = 0, ctx = 0, overlap_steps = -1;
  std::string kv_mem = "2GiB";
  int64_t requests = 16;
  std::string input_len = "2048", output_len = "64", prompts = "random";
  std::string text_dir = "scripts/reference/texts", workload_name;
  uint64_t seed = 1;
  std::string modes = "full,post-prefill,batchmax", policies = "snapkv", kv_budgets = "512";
  std::string chunks = "512", mem_budgets;
  std::string mode_steps;  // --mode-step-tokens: MODE=N,...
  double mem_fraction = 0;
  KVSettings kv;  // slack, sinks, window, obs_window
  int warmup = 0;
  double time_limit = 0;
  float temperature = 0, top_p = 1;
  int top_k = 0;
  bool no_ceilings = false;
  std::string out, plot, commit;
  std::string schedule = "auto";  // EngineOptions::schedule (batch jobs: auto)
};

std::vector<std::string> split_list(const std::string& s) {
  std::vector<std::string> out;
  std::stringstream ss(s);
  for (std::string item; std::getline(ss, item, ',');)
    if (!item.empty()) out.push_back(item);
  return out;
}

std::vector<int64_t> int_list(const std::string& s, const char* what) {
  std::vector<int64_t> out;
  for (const std::string& x : split_list(s)) {
    try {
      out.push_back(std::stoll(x));
    } catch (const std::exception&) {
      throw UsageError(std::string(what) + ": '" + x + "' is not a number");
    }
    if (out.back() <= 0) throw UsageError(std::string(what) + " must be positive");
  }
  if (out.empty()) throw UsageError(std::string(what) + " is empty");
  return out;
}

std::string git_commit() {
  FILE* p = popen("git rev-parse --short HEAD 2>/dev/null", "r");
  if (!p) return "unknown";
  char buf[64] = {0};
  std::string s = std::fgets(buf, sizeof buf, p) ? buf : "";
  pclose(p);
  while (!s.empty() && (s.back() == '\n' || s.back() == '\r')) s.pop_back();
  return s.empty() ? "unknown" : s;
}

// Every .txt of the directory, sorted, tokenised one after another.
std::vector<int32_t> text_corpus(const Tokenizer& tok, const std::string& dir) {
  namespace fs = std::filesystem;
  std::vector<fs::path> files;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(dir, ec))
    if (e.path().extension() == ".txt") files.push_back(e.path());
  if (ec || files.empty()) throw Error("no .txt files in " + dir + " (see --text-dir)");
  std::sort(files.begin(), files.end());
  std::vector<int32_t> ids;
  for (const auto& f : files) {
    std::vector<int32_t> t = tok.encode(read_file(f.string()), false, false);
    ids.insert(ids.end(), t.begin(), t.end());
  }
  return ids;
}

// The KV settings of the sweep: full once; post-prefill per policy and budget;
// batchmax per policy, budget and chunk.
std::vector<KVSettings> sweep(const BenchArgs& a) {
  std::vector<KVSettings> out;
  const auto budgets = int_list(a.kv_budgets, "--kv-budgets");
  const auto chunks = int_list(a.chunks, "--chunk");
  for (const std::string& mode : split_list(a.modes)) {
    if (mode != "full" && mode != "post-prefill" && mode != "batchmax")
      throw UsageError("--modes: '" + mode + "' is not full, post-prefill or batchmax");
    KVSettings kv = a.kv;
    kv.mode = mode;
    if (mode == "full") {
      out.push_back(kv);
      continue;
    }
    for (const std::string& pol : split_list(a.policies))
      for (int64_t b : budgets)
        for (int64_t c : mode == "batchmax" ? chunks : std::vector<int64_t>{chunks[0]}) {
          kv.policy = pol;
          kv.budget = b;
          kv.chunk = c;
          out.push_back(kv);
        }
  }
  if (out.empty()) throw UsageError("--modes is empty");
  return out;
}

// --mode-step-tokens "batchmax=1024,full=512": a mode's tokens per step where it differs
// from --step-tokens (each mode at the step it runs fastest at: bench/results/step_tokens_*).
std::map<std::string, int> mode_step_tokens(const std::string& s) {
  std::map<std::string, int> out;
  for (const std::string& item : split_list(s)) {
    const size_t eq = item.find('=');
    const std::string mode = item.substr(0, eq);
    if (eq == std::string::npos || (mode != "full" && mode != "post-prefill" && mode != "batchmax"))
      throw UsageError("--mode-step-tokens: '" + item + "' is not MODE=N with MODE full, post-prefill or batchmax");
    const std::string n = item.substr(eq + 1);
    char* end = nullptr;
    const long v = std::strtol(n.c_str(), &end, 10);
    if (n.empty() || *end != '\0' || v <= 0 || v > (1 << 20))
      throw UsageError("--mode-step-tokens: '" + item + "' needs a positive token count");
    out[mode] = int(v);
  }
  return out;
}

int run_bench(const BenchArgs& a) {
  if (a.model.empty() == a.dummy.empty())
    throw UsageError("give exactly one of --model PATH and --dummy-weights PRESET");
  const std::vector<KVSettings> configs = sweep(a);
  const std::map<std::string, int> mode_steps = mode_step_tokens(a.mode_steps);
  bench::WorkloadSpec spec;
  spec.requests = a.requests;
  spec.input = bench::LengthDist::parse(a.input_len);
  spec.output = bench::LengthDist::parse(a.output_len);
  spec.prompts = a.prompts;
  spec.seed = a.seed;
  spec.name = a.workload_name;

  HParams hp;
  if (!a.dummy.empty()) {
    hp = preset_hparams(a.dummy);
  } else {
    check_model_path(a.model);
    hp = read_hparams(*gguf::File::open(a.model));
  }
  const bench::ModelCost cost = bench::ModelCost::from(hp);

  bench::Ceilings ceil;
  std::vector<int64_t> budgets;
  for (const std::string& b : split_list(a.mem_budgets)) budgets.push_back(parse_bytes(b));
#ifdef BATCHMAX_HAVE_CUDA
  if (a.backend == "cuda") {
    ceil.gpu = "cuda";
    if (!a.no_ceilings) {
      std::fprintf(stderr, "measuring the card's ceilings...\n");
      const CudaCeilings c = measure_ceilings(0);
      ceil = {c.device_name, c.bf16_gemm_tflops, c.copy_gbps};
      std::fprintf(stderr, "%s: bf16 GEMM %.1f TFLOP/s, copy %.0f GB/s\n", c.device_name.c_str(),
                   c.bf16_gemm_tflops, c.copy_gbps);
    }
    if (a.mem_fraction > 0) {
      const CudaMemoryInfo m = cuda_memory_info(0);
      budgets.push_back(int64_t(double(m.free_bytes) * a.mem_fraction));
      std::fprintf(stderr, "--mem-fraction %.2f of %s free: budget %s\n", a.mem_fraction,
                   format_bytes(m.free_bytes).c_str(), format_bytes(budgets.back()).c_str());
    }
  }
#endif
  if (a.mem_fraction > 0 && a.backend != "cuda")
    throw UsageError("--mem-fraction needs --backend cuda (use --mem-budgets on the CPU)");
  if (budgets.empty()) budgets.push_back(0);  // the KV pool from --kv-mem

  bench::BenchOptions bo;
  bo.model = a.dummy.empty() ? a.model : "dummy:" + a.dummy;
  bo.backend = a.backend;
  bo.commit = a.commit.empty() ? git_commit() : a.commit;
  bo.command = command_line();
  bo.time_limit_s = a.time_limit;
  bo.temperature = a.temperature;
  bo.top_k = a.top_k;
  bo.top_p = a.top_p;
  bo.overlap_steps = a.overlap_steps;

  EngineOptions eo;
  eo.model_path = a.model;
  eo.dummy_weights = a.dummy;
  eo.backend = a.backend;
  eo.n_threads = a.threads;
  eo.max_batch = a.max_batch;
  eo.step_tokens = a.step_tokens;
  eo.overlap_steps = a.overlap_steps;
  eo.schedule = a.schedule;
  bo.schedule = a.schedule;
  eo.max_context = a.ctx;
  eo.kv_mem_bytes = parse_bytes(a.kv_mem);
  // h2o rows evict on the GPU only in a pool with slot mass (see EngineOptions).
  for (const KVSettings& kv : configs)
    if (kv.policy == "h2o" && kv.mode != "full") eo.kv_slot_mass = true;

  std::optional<bench::Workload> work;
  std::vector<bench::BenchRow> rows;
  auto save = [&] {
    if (!a.out.empty()) {
      nlohmann::ordered_json j = nlohmann::ordered_json::array();
      for (const auto& r : rows) j.push_back(bench::to_json(r));
      std::ofstream f(a.out);
      f << j.dump(1) << "\n";
      if (!f) throw Error("cannot write " + a.out);
    }
    if (!a.plot.empty())
      bench::write_throughput_svg(rows, work->name + " | " + bo.model + " | " + ceil.gpu, a.plot);
  };

  for (int64_t budget : budgets) {
    eo.mem_budget_bytes = budget;
    bo.mem_budget_bytes = budget;
    std::unique_ptr<Engine> engine;
    for (size_t ci = 0; ci < configs.size(); ++ci) {
      // A mode with a step of its own gets an engine (and memory plan) of its own.
      const auto own = mode_steps.find(configs[ci].mode);
      const int step = own != mode_steps.end() ? own->second : a.step_tokens;
      if (engine && step != eo.step_tokens) engine.reset();
      eo.step_tokens = step;
      if (!engine) {
        engine = Engine::create(eo);
        const MemoryPlan& m = engine->memory_plan();
        std::fprintf(stderr,
                     "engine: %s, budget %s: weights %s, workspace %s (%lld-token steps), "
                     "KV pool %s\n",
                     m.backend.c_str(), budget ? format_bytes(budget).c_str() : "none",
                     format_bytes(m.weight_bytes).c_str(), format_bytes(m.workspace_bytes).c_str(),
                     static_cast<long long>(m.step_tokens),
                     format_bytes(m.kv_pool_bytes).c_str());
        if (!work) {
          for (const KVSettings& kv : configs) {  // a bad setting fails before any run
            try {
              engine->blocks_per_request(kv, 1, 1);
            } catch (const Error& e) {
              throw UsageError(std::string(e.what()));
            }
          }
          std::vector<int32_t> text;
          int32_t bos = -1;
          int64_t n_vocab = hp.n_vocab;
          if (!a.model.empty()) {
            n_vocab = std::min<int64_t>(n_vocab, engine->tokenizer().n_vocab());
            if (a.prompts == "text") {
              text = text_corpus(engine->tokenizer(), a.text_dir);
              bos = engine->tokenizer().bos_id();
            }
          }
          work = bench::make_workload(spec, n_vocab, text, bos);
          std::fprintf(stderr, "workload: %s (%lld prompt + %lld output tokens)\n",
                       work->name.c_str(), static_cast<long long>(work->input_tokens()),
                       static_cast<long long>(work->output_tokens()));
        }
        if (a.warmup > 0) {  // first-call costs (GEMM heuristics, allocations) off the clock
          bench::WorkloadSpec ws = spec;
          ws.requests = a.warmup;
          ws.input = bench::LengthDist::parse(std::to_string(std::min<int64_t>(spec.input.max(), 512)));
          ws.output = bench::LengthDist::parse("4");
          ws.prompts = "random";
          bench::BenchOptions wo = bo;
          wo.time_limit_s = 0;
          bench::run_config(*engine, bench::make_workload(ws, std::min<int64_t>(hp.n_vocab, 1000)),
                            configs[ci], cost, ceil, wo);
        }
      }
      const KVSettings& kv = configs[ci];
      std::fprintf(stderr, "running %s%s%s ...\n", kv.mode.c_str(),
                   kv.mode == "full" ? "" : (" " + kv.policy + " budget " + std::to_string(kv.budget)).c_str(),
                   kv.mode == "batchmax" ? (" chunk " + std::to_string(kv.chunk)).c_str() : "");
      bench::BenchRow row = bench::run_config(*engine, *work, kv, cost, ceil, bo);
      if (row.truncated) engine.reset();  // stopped mid-run: a fresh engine for the next
      rows.push_back(row);
      std::fputs(bench::format_table({row}).c_str(), stderr);
      std::fprintf(stderr,
                   "requests (schedule %s): first token %.2f s, done %.2f s on average (p90 "
                   "%.2f s); decode-only steps %.2f s\n",
                   row.schedule.c_str(), row.first_token_s_mean, row.request_s_mean,
                   row.request_s_p90, row.decode_only_s);
      save();
    }
  }
  std::string sampling;
  if (a.temperature > 0) {
    sampling = " | temperature " + std::to_string(a.temperature).substr(0, 4);
    if (a.top_k > 0) sampling += " top-k " + std::to_string(a.top_k);
    if (a.top_p < 1) sampling += " top-p " + std::to_string(a.top_p).substr(0, 4);
  }
  // "step 2048 tokens", or "steps full 512, batchmax 1024 tokens" where modes differ.
  std::vector<std::pair<std::string, int64_t>> mode_step;
  for (const bench::BenchRow& r : rows) {
    const auto ms = std::make_pair(r.mode, r.step_tokens);
    if (std::find(mode_step.begin(), mode_step.end(), ms) == mode_step.end()) mode_step.push_back(ms);
  }
  const int64_t first_step = rows.empty() ? a.step_tokens : rows.front().step_tokens;
  std::string steps = "step " + std::to_string(first_step) + " tokens";
  if (std::any_of(rows.begin(), rows.end(),
                  [&](const bench::BenchRow& r) { return r.step_tokens != first_step; })) {
    steps = "steps";
    for (size_t i = 0; i < mode_step.size(); ++i)
      steps += (i ? ", " : " ") + mode_step[i].first + " " + std::to_string(mode_step[i].second);
    steps += " tokens";
  }
  std::printf("workload: %s | model %s | backend %s (%s) | %s | schedule %s%s | commit %s\n",
              work->name.c_str(), bo.model.c_str(), a.backend.c_str(), ceil.gpu.c_str(),
              steps.c_str(), a.schedule.c_str(), sampling.c_str(), bo.commit.c_str());
  if (ceil.gemm_tflops > 0)
    std::printf("measured ceilings: bf16 GEMM %.1f TFLOP/s, copy %.0f GB/s\n", ceil.gemm_tflops,
                ceil.copy_gbps);
  std::fputs(bench::format_table(rows).c_str(), stdout);
  return 0;
}

}  // namespace

Command add_bench(CLI::App& root) {
  auto a = std::make_shared<BenchArgs>();
  CLI::App* cmd = root.add_subcommand(
      "bench", "offline throughput of a workload across KV modes, budgets and memory budgets");
  cmd->add_option("-m,--model", a->model, "GGUF model file");
  cmd->add_option("--dummy-weights", a->dummy,
                  "instead of --model: a model shape with generated weights (" +
                      [] {
                        std::string s;
                        for (const auto& n : preset_names()) s += (s.empty() ? "" : ", ") + n;
                        return s;
                      }() + ")");
  cmd->add_option("--backend", a->backend, "cpu or cuda")->capture_default_str();
  cmd->add_option("-t,--threads", a->threads, "CPU threads (0: all)")->check(CLI::NonNegativeNumber);
  cmd->add_option("--step-tokens", a->step_tokens,
                  "tokens per forward step (0: 2048 on CUDA, 512 on the CPU)")
      ->check(CLI::NonNegativeNumber)->capture_default_str();
  cmd->add_option("--mode-step-tokens", a->mode_steps,
                  "tokens per step for some modes, e.g. batchmax=1024 (the others: --step-tokens)");
  cmd->add_option("--overlap-steps", a->overlap_steps,
                  "launch each step before reading the last one's tokens: 1 on, 0 off, -1 the "
                  "backend's choice (on for CUDA)")
      ->check(CLI::Range(-1, 1))->capture_default_str();
  add_schedule_flag(*cmd, a->schedule);
  cmd->add_option("--max-batch", a->max_batch, "sequences at once (0: as many as the KV pool admits)")
      ->check(CLI::NonNegativeNumber)->capture_default_str();
  cmd->add_option("--ctx", a->ctx, "context length (0: the model's)")->check(CLI::NonNegativeNumber);
  cmd->add_option("--kv-mem", a->kv_mem, "KV pool when there is no memory budget")->capture_default_str();
  cmd->add_option("-n,--requests", a->requests, "requests in the workload")
      ->check(CLI::PositiveNumber)->capture_default_str();
  cmd->add_option("--input-len", a->input_len, "prompt length: N, uniform:MIN:MAX or normal:MEAN:STD")
      ->capture_default_str();
  cmd->add_option("--output-len", a->output_len, "output length, same forms")->capture_default_str();
  cmd->add_option("--prompts", a->prompts, "random (token ids) or text (tokenised prose, needs --model)")
      ->capture_default_str();
  cmd->add_option("--text-dir", a->text_dir, "directory of .txt files for --prompts text")
      ->capture_default_str();
  cmd->add_option("--workload-name", a->workload_name, "name in the results (default: from the flags)");
  cmd->add_option("--seed", a->seed, "workload seed")->capture_default_str();
  cmd->add_option("--modes", a->modes, "KV modes to sweep")->capture_default_str();
  cmd->add_option("--policies", a->policies, "eviction policies to sweep")->capture_default_str();
  cmd->add_option("--kv-budgets", a->kv_budgets, "KV budgets (entries per layer and head) to sweep")
      ->capture_default_str();
  cmd->add_option("--chunk", a->chunks, "batchmax prefill chunk(s)")->capture_default_str();
  cmd->add_option("--mem-budgets,--mem-budget", a->mem_budgets,
                  "memory budgets to sweep, e.g. 400MiB,1GiB (none: the KV pool is --kv-mem)");
  cmd->add_option("--mem-fraction", a->mem_fraction,
                  "CUDA: one more budget, this share of the free device memory (e.g. 0.9)")
      ->check(CLI::Range(0.0, 1.0));
  cmd->add_option("--slack", a->kv.slack, "decode: evict once budget + slack entries are held")
      ->capture_default_str();
  cmd->add_option("--sinks", a->kv.sinks, "first positions never evicted")->capture_default_str();
  cmd->add_option("--window", a->kv.window, "most recent entries never evicted")->capture_default_str();
  cmd->add_option("--obs-window", a->kv.obs_window, "snapkv observation window")->capture_default_str();
  cmd->add_option("--warmup", a->warmup, "short warm-up requests before each engine's first run")
      ->check(CLI::NonNegativeNumber)->capture_default_str();
  cmd->add_option("--temperature", a->temperature,
                  "sampling temperature of every request (0: greedy; request i is seeded with i)")
      ->check(CLI::Range(0.0, 100.0))->capture_default_str();
  cmd->add_option("--top-k", a->top_k, "with --temperature: sample among the k most likely (0: off)")
      ->check(CLI::NonNegativeNumber)->capture_default_str();
  cmd->add_option("--top-p", a->top_p, "with --temperature: nucleus sampling (1: off)")
      ->check(CLI::Range(0.0, 1.0))->capture_default_str();
  cmd->add_option("--time-limit", a->time_limit,
                  "seconds per configuration; a longer one stops and reports what it did (0: none)")
      ->check(CLI::NonNegativeNumber);
  cmd->add_flag("--no-ceilings", a->no_ceilings, "CUDA: skip measuring GEMM and copy ceilings");
  cmd->add_option("--out", a->out, "JSON file of result rows");
  cmd->add_option("--plot", a->plot, "SVG plot of output tokens/s against batch and memory budget");
  cmd->add_option("--commit", a->commit, "commit recorded in the rows (default: git rev-parse --short HEAD)");
  return {cmd, [a] { return run_bench(*a); }};
}

}  // namespace batchmax::cli
