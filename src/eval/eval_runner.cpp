#include "eval/eval_runner.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <map>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "eval/eval_tasks.h"
#include "eval/eval_text.h"

namespace batchmax::eval {
namespace {

double now_s() {
  using namespace std::chrono;
  return duration<double>(steady_clock::now().time_since_epoch()).count();
}

std::string cell_name(const Cell& c) {
  std::string s = c.task + "@" + std::to_string(c.context) + " " + c.kv.mode;
  if (c.kv.mode != "full") s += "/" + c.kv.policy + "/" + std::to_string(c.kv.budget);
  return s;
}

// Scores one finished cell from its outputs.
Row score_cell(const GridSpec& spec, const Cell& c, const std::vector<Sample>& samples,
               const std::vector<Output>& outs, const std::string& text_source) {
  Row r;
  r.model = spec.model;
  r.task = c.task;
  r.context_tokens = c.context;
  r.mode = c.kv.mode;
  const bool full = c.kv.mode == "full";
  r.policy = full ? "-" : c.kv.policy;
  r.kv_budget = full ? -1 : c.kv.budget;
  r.chunk = spec.chunk;
  r.metric = task_metric(c.task);
  r.commit = spec.commit;
  r.backend = spec.backend;
  r.text_source = text_source;
  double acc = 0, prompt = 0;
  Nll nll;
  for (size_t i = 0; i < samples.size(); ++i) {
    prompt += double(samples[i].prompt.size());
    const Output& o = outs[i];
    if (o.finish_reason == "error") {
      ++r.errors;
      continue;
    }
    if (is_perplexity_task(c.task)) {
      if (o.prompt_logprobs.empty()) {
        ++r.errors;  // an engine without prompt log-probs
        continue;
      }
      Nll s = sample_nll(samples[i], o.prompt_logprobs);
      nll.sum += s.sum;
      nll.tokens += s.tokens;
    } else {
      acc += score_answer(samples[i], o.text);
    }
    ++r.n_samples;
  }
  r.prompt_tokens = samples.empty() ? 0 : prompt / double(samples.size());
  if (r.n_samples == 0) {
    r.score = NAN;
  } else if (is_perplexity_task(c.task)) {
    r.nll = nll.tokens > 0 ? nll.sum / double(nll.tokens) : NAN;
    r.score = std::exp(r.nll);
  } else {
    r.score = 100.0 * acc / double(r.n_samples);
  }
  return r;
}

// One JSON line per answer: what was asked, what came back, how it scored.
void dump_answers(const std::string& path, const Cell& c, const std::vector<Sample>& samples,
                  const std::vector<Output>& outs) {
  std::ofstream f(path, std::ios::app);
  if (!f) throw Error("cannot write " + path);
  for (size_t i = 0; i < samples.size(); ++i) {
    nlohmann::ordered_json j;
    j["task"] = c.task;
    j["context"] = c.context;
    j["mode"] = c.kv.mode;
    j["policy"] = c.kv.mode == "full" ? "-" : c.kv.policy;
    j["budget"] = c.kv.mode == "full" ? -1 : c.kv.budget;
    j["index"] = samples[i].index;
    j["depth"] = samples[i].depth;
    j["prompt_tokens"] = samples[i].prompt.size();
    j["answers"] = samples[i].answers;
    j["output"] = outs[i].text;
    j["error"] = outs[i].error;
    if (!is_perplexity_task(c.task)) j["score"] = score_answer(samples[i], outs[i].text);
    f << j.dump(-1, ' ', false, nlohmann::ordered_json::error_handler_t::replace) << "\n";
  }
}

}  // namespace

void validate_grid(const GridSpec& s) {
  if (s.tasks.empty()) throw Error("no eval tasks given");
  for (const auto& t : s.tasks)
    if (!is_task(t)) {
      std::string all;
      for (const auto& n : task_names()) all += (all.empty() ? "" : ", ") + n;
      throw Error("unknown eval task '" + t + "' (tasks: " + all + ")");
    }
  if (s.contexts.empty()) throw Error("no context lengths given");
  for (int64_t c : s.contexts)
    if (c < 64) throw Error("context length " + std::to_string(c) + " is too short (64 at least)");
  if (s.modes.empty()) throw Error("no modes given");
  bool compressing = false;
  for (const auto& m : s.modes) {
    if (m != "full" && m != "post-prefill" && m != "batchmax")
      throw Error("unknown mode '" + m + "' (modes: full, post-prefill, batchmax)");
    compressing = compressing || m != "full";
  }
  if (compressing && (s.policies.empty() || s.budgets.empty()))
    throw Error("post-prefill and batchmax modes need --policies and --budgets");
  for (int64_t b : s.budgets)
    if (b <= 0) throw Error("KV budgets must be positive");
  if (s.chunk <= 0) throw Error("chunk must be positive");
  if (s.samples <= 0) throw Error("samples must be positive");
}

std::vector<Cell> plan_cells(const GridSpec& spec) {
  std::vector<Cell> cells;
  for (const auto& task : spec.tasks) {
    for (int64_t ctx : spec.contexts) {
      if (std::find(spec.modes.begin(), spec.modes.end(), "full") != spec.modes.end()) {
        Cell c{task, ctx, spec.kv_base};
        c.kv.mode = "full";
        c.kv.chunk = spec.chunk;
        cells.push_back(c);
      }
      for (const auto& mode : spec.modes) {
        if (mode == "full") continue;
        if (mode == "post-prefill" && is_perplexity_task(task)) continue;
        for (const auto& pol : spec.policies) {
          for (int64_t b : spec.budgets) {
            if (b >= ctx) continue;  // the cache would hold the whole prompt
            Cell c{task, ctx, spec.kv_base};
            c.kv.mode = mode;
            c.kv.policy = pol;
            c.kv.budget = b;
            c.kv.chunk = spec.chunk;
            cells.push_back(c);
          }
        }
      }
    }
  }
  return cells;
}

std::vector<Row> run_grid(Engine& engine, const GridSpec& spec, const TextCorpus* corpus,
                          const RunCallbacks& cb) {
  validate_grid(spec);
  auto log = [&](const std::string& s) {
    if (cb.log) cb.log(s);
  };
  const std::vector<Cell> cells = plan_cells(spec);
  std::map<std::pair<std::string, int64_t>, std::vector<Sample>> samples;
  for (const auto& task : spec.tasks) {
    for (int64_t ctx : spec.contexts) {
      if (ctx >= engine.context_length())
        throw Error("context " + std::to_string(ctx) + " does not fit the model's " +
                    std::to_string(engine.context_length()) + "-token context");
      TaskSpec ts;
      ts.task = task;
      ts.context_tokens = ctx;
      ts.n_samples = spec.samples;
      ts.seed = spec.seed;
      ts.chat = spec.chat;
      const double t0 = now_s();
      samples[{task, ctx}] = make_samples(ts, engine.tokenizer(), engine.chat_template(), corpus);
      char buf[160];
      std::snprintf(buf, sizeof buf, "built %d %s samples at %lld tokens in %.1fs", spec.samples,
                    task.c_str(), static_cast<long long>(ctx), now_s() - t0);
      log(buf);
    }
  }
  int64_t total_requests = 0;
  for (const Cell& c : cells) total_requests += int64_t(samples[{c.task, c.context}].size());
  {
    char buf[160];
    std::snprintf(buf, sizeof buf, "%zu cells, %lld generations", cells.size(),
                  static_cast<long long>(total_requests));
    log(buf);
  }

  std::vector<Row> rows;
  const double start = now_s();
  int64_t done_requests = 0;
  for (size_t first = 0; first < cells.size();) {
    // Group cells until the call has enough requests to keep the batch full.
    size_t last = first;
    std::vector<Request> reqs;
    std::vector<size_t> offset;
    while (last < cells.size() && (reqs.empty() || int64_t(reqs.size()) < spec.requests_per_call)) {
      const Cell& c = cells[last];
      offset.push_back(reqs.size());
      for (const Sample& s : samples[{c.task, c.context}]) {
        Request q;
        q.id = std::to_string(last) + "/" + std::to_string(s.index);
        q.prompt = s.prompt;
        q.sampling.temperature = 0;
        q.sampling.max_tokens = s.max_tokens;
        q.kv = c.kv;
        q.prompt_logprobs = is_perplexity_task(c.task);
        reqs.push_back(std::move(q));
      }
      ++last;
    }
    offset.push_back(reqs.size());
    std::vector<int64_t> cell_tokens;
    int64_t call_tokens = 0;
    for (size_t k = first; k < last; ++k) {
      int64_t t = 0;
      for (size_t i = offset[k - first]; i < offset[k - first + 1]; ++i)
        t += int64_t(reqs[i].prompt.size()) + reqs[i].sampling.max_tokens;
      cell_tokens.push_back(t);
      call_tokens += t;
    }
    const int64_t n_call = int64_t(reqs.size());
    double last_log = now_s();
    const double t0 = now_s();
    std::vector<Output> outs = engine.generate(std::move(reqs), nullptr, [&](const Progress& p) {
      const double t = now_s();
      if (t - last_log < 15) return;
      last_log = t;
      char buf[200];
      std::snprintf(buf, sizeof buf, "  ... %lld/%lld of this call, %.0f prompt tok/s",
                    static_cast<long long>(p.done), static_cast<long long>(p.total),
                    p.elapsed_s > 0 ? double(p.prompt_tokens) / p.elapsed_s : 0.0);
      log(buf);
    });
    const double call_s = now_s() - t0;
    for (size_t k = first; k < last; ++k) {
      const Cell& c = cells[k];
      const auto& ss = samples[{c.task, c.context}];
      std::vector<Output> cell_outs(outs.begin() + std::ptrdiff_t(offset[k - first]),
                                    outs.begin() + std::ptrdiff_t(offset[k - first + 1]));
      Row r = score_cell(spec, c, ss, cell_outs,
                         task_needs_corpus(c.task) && corpus ? corpus->source() : "synthetic");
      // The call's time, shared in proportion to the tokens each cell processed.
      r.seconds = call_tokens > 0 ? call_s * double(cell_tokens[k - first]) / double(call_tokens) : 0;
      for (const Output& o : cell_outs)
        if (o.finish_reason == "error") {
          log("  error in " + cell_name(c) + ": " + o.error);
          break;
        }
      if (!spec.dump_path.empty()) dump_answers(spec.dump_path, c, ss, cell_outs);
      rows.push_back(r);
    }
    done_requests += n_call;
    const double elapsed = now_s() - start;
    const double eta = done_requests > 0 ? elapsed / double(done_requests) * double(total_requests - done_requests) : 0;
    char buf[256];
    std::snprintf(buf, sizeof buf, "[%lld/%lld] %s .. %s: %.1fs (%.2f s/sample), ETA %.0fs",
                  static_cast<long long>(done_requests), static_cast<long long>(total_requests),
                  cell_name(cells[first]).c_str(), cell_name(cells[last - 1]).c_str(), call_s,
                  n_call > 0 ? call_s / double(n_call) : 0.0, eta);
    log(buf);
    for (size_t k = rows.size() - (last - first); k < rows.size(); ++k) {
      char line[200];
      std::snprintf(line, sizeof line, "    %-36s score %.2f (%lld samples)", cell_name(cells[first + k - (rows.size() - (last - first))]).c_str(),
                    rows[k].score, static_cast<long long>(rows[k].n_samples));
      log(line);
    }
    if (cb.rows_so_far) cb.rows_so_far(rows);
    first = last;
  }
  return rows;
}

}  // namespace batchmax::eval
