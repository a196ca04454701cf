#include "bench/bench_runner.h"

#include <algorithm>
#include <chrono>
#include <cstdio>

#include "backend/step_profile.h"
#include "core/format.h"

namespace batchmax::bench {

ModelCost ModelCost::from(const HParams& hp) {
  ModelCost c;
  c.n_layer = hp.n_layer;
  c.n_head = hp.n_head;
  c.head_dim = hp.head_dim;
  const int64_t d = hp.n_embd, nq = hp.n_head * hp.head_dim, nkv = hp.n_embd_kv();
  c.layer_params = d * (nq + 2 * nkv) + nq * d + 3 * d * hp.n_ff;
  c.lm_head_params = hp.n_vocab * d;
  c.embd_params = hp.n_vocab * d;
  c.tied = hp.tied_embeddings;
  return c;
}

double ModelCost::prefill_attention_flops(int64_t prompt, int64_t chunk, bool evict_per_chunk,
                                          int64_t budget) const {
  double per_head = 0;  // sum over chunks of c * (keys before the chunk + c / 2)
  for (int64_t start = 0; start < prompt; start += chunk) {
    const int64_t c = std::min(chunk, prompt - start);
    const int64_t before = evict_per_chunk ? std::min(start, budget) : start;
    per_head += double(c) * (double(before) + 0.5 * double(c));
  }
  return 4.0 * double(head_dim) * double(n_head) * double(n_layer) * per_head;
}

double ModelCost::decode_weight_fraction() const {
  const double read = double(matmul_params() + lm_head_params);
  const double held = read + (tied ? 0.0 : double(embd_params));
  return held > 0 ? read / held : 1.0;
}

namespace {

using Clock = std::chrono::steady_clock;

struct TimeLimit {};  // thrown from the progress callback to stop a configuration

}  // namespace

BenchRow run_config(Engine& engine, const Workload& w, const KVSettings& kv,
                    const ModelCost& cost, const Ceilings& ceil, const BenchOptions& opts) {
  BenchRow r;
  r.workload = w.name;
  r.model = opts.model;
  r.backend = opts.backend;
  r.gpu = ceil.gpu;
  r.mode = kv.mode;
  const bool evicts = kv.mode != "full" && kv.policy != "full";
  r.policy = evicts ? kv.policy : "-";
  r.kv_budget = evicts ? kv.budget : 0;
  r.chunk = kv.mode == "batchmax" ? kv.chunk : 0;
  r.mem_budget_bytes = opts.mem_budget_bytes;
  r.step_tokens = engine.memory_plan().step_tokens;  // resolved when opts leave it 0
  r.overlap_steps = opts.overlap_steps;
  r.schedule = opts.schedule;
  r.temperature = opts.temperature;
  r.top_k = opts.top_k;
  r.top_p = opts.top_p;
  r.commit = opts.commit;
  r.command = opts.command;
  r.requests = int64_t(w.prompts.size());
  r.input_len = w.input_len;
  r.output_len = w.output_len;
  r.gemm_tflops_measured = ceil.gemm_tflops;
  r.copy_gbps_measured = ceil.copy_gbps;
  const MemoryPlan& plan = engine.memory_plan();
  r.kv_pool_bytes = plan.kv_pool_bytes;
  r.weight_bytes = plan.weight_bytes;

  int64_t max_in = 0, max_out = 0;
  for (size_t i = 0; i < w.prompts.size(); ++i) {
    max_in = std::max<int64_t>(max_in, int64_t(w.prompts[i].size()));
    max_out = std::max(max_out, w.max_tokens[i]);
  }
  r.planned_max_batch = engine.max_concurrent(kv, max_in, max_out);

  std::vector<Request> reqs(w.prompts.size());
  for (size_t i = 0; i < reqs.size(); ++i) {
    reqs[i].id = std::to_string(i);
    reqs[i].prompt = w.prompts[i];
    reqs[i].sampling.max_tokens = int(w.max_tokens[i]);
    reqs[i].sampling.ignore_eos = true;  // every request generates its full length
    reqs[i].sampling.temperature = opts.temperature;
    reqs[i].sampling.top_k = opts.top_k;
    reqs[i].sampling.top_p = opts.top_p;
    reqs[i].sampling.seed = uint64_t(i);
    reqs[i].kv = kv;
  }

  // Per-step split of time between prefill and decode: a mixed step's time is shared
  // by token count. Pure decode steps give the bandwidth figure: each reads the
  // weights once and every running sequence's KV blocks.
  double decode_bytes = 0, large_bytes = 0, large_s = 0, large_floor_s = 0;
  const double weight_read = double(plan.weight_bytes) * cost.decode_weight_fraction();
  Progress last;
  auto on_progress = [&](const Progress& p) {
    const int64_t pt = p.step_prefill_tokens, dt = p.step_decode_tokens;
    if (p.steps == last.steps || pt + dt == 0) return;  // the final report repeats a step
    last = p;
    if (opts.time_limit_s > 0 && p.elapsed_s > opts.time_limit_s) throw TimeLimit{};
    r.prefill_s += p.step_s * double(pt) / double(pt + dt);
    r.decode_s += p.step_s * double(dt) / double(pt + dt);
    if (pt == 0) {
      ++r.decode_steps;
      r.decode_only_s += p.step_s;
      decode_bytes += weight_read + double(p.kv_bytes);
      if (dt >= BenchRow::kLargeDecodeBatch) {
        large_s += p.step_s;
        large_bytes += weight_read + double(p.kv_bytes);
        // The step's floor: the products at the slower of reading the weights and
        // computing (hundreds of rows are compute-bound), then the KV reads.
        if (ceil.copy_gbps > 0 && ceil.gemm_tflops > 0) {
          const double flops = 2.0 * double(cost.matmul_params() + cost.lm_head_params) * double(dt);
          large_floor_s += std::max(weight_read / (ceil.copy_gbps * 1e9), flops / (ceil.gemm_tflops * 1e12)) +
                           double(p.kv_bytes) / (ceil.copy_gbps * 1e9);
        }
      }
    }
  };
  prof::reset();
  const auto t0 = Clock::now();
  std::vector<Output> outs;
  try {
    outs = engine.generate(std::move(reqs), nullptr, on_progress);
  } catch (const TimeLimit&) {
    r.truncated = true;
  }
  r.wall_s = std::chrono::duration<double>(Clock::now() - t0).count();
  if (prof::counting())
    std::fprintf(stderr, "profile of %s %s budget %lld chunk %lld (wall %.2f s):\n%s", r.mode.c_str(),
                 r.policy.c_str(), static_cast<long long>(r.kv_budget),
                 static_cast<long long>(r.chunk), r.wall_s, prof::report().c_str());

  r.steps = last.steps;
  r.overlapped_steps = last.overlapped_steps;
  r.replayed_runs = last.replayed_runs;
  r.recorded_runs = last.recorded_runs;
  r.max_batch = last.max_running;
  r.peak_kv_bytes = last.kv_peak_bytes;
  r.peak_backend_bytes = engine.peak_backend_bytes();
  if (r.truncated) {  // what the steps computed so far; no request failed
    r.input_tokens = last.prompt_tokens;
    r.output_tokens = last.generated_tokens;
    r.completed = last.done;
  }
  std::vector<double> request_s;
  for (const Output& o : outs) {
    if (o.finish_reason == "error") {
      ++r.failed;
      if (r.error.empty()) r.error = o.error;
      continue;
    }
    r.input_tokens += o.prompt_tokens;
    r.output_tokens += int64_t(o.tokens.size());
    ++r.completed;
    r.first_token_s_mean += o.first_token_s;
    request_s.push_back(o.total_s);
  }
  if (!request_s.empty()) {
    r.first_token_s_mean /= double(request_s.size());
    for (double s : request_s) r.request_s_mean += s / double(request_s.size());
    std::sort(request_s.begin(), request_s.end());
    r.request_s_p90 = request_s[(request_s.size() * 9 + 9) / 10 - 1];  // nearest rank
  }
  const double wall = std::max(r.wall_s, 1e-9);
  r.requests_per_s = double(r.completed) / wall;
  r.output_tok_s = double(r.output_tokens) / wall;
  r.total_tok_s = double(r.input_tokens + r.output_tokens) / wall;
  if (r.prefill_s > 0) {
    r.prefill_tok_s = double(r.input_tokens) / r.prefill_s;
    double flops = 2.0 * double(cost.matmul_params()) * double(r.input_tokens);
    const int64_t chunk = kv.mode == "batchmax" && evicts ? kv.chunk : r.step_tokens;
    const bool per_chunk = kv.mode == "batchmax" && evicts;
    for (size_t i = 0; i < outs.size(); ++i)
      if (outs[i].finish_reason != "error")
        flops += cost.prefill_attention_flops(int64_t(w.prompts[i].size()), chunk, per_chunk,
                                              kv.budget);
    if (r.truncated && !w.prompts.empty()) {  // prompts only partly done: scale the mean
      const double per_token = cost.prefill_attention_flops(int64_t(w.prompts[0].size()), chunk,
                                                            per_chunk, kv.budget) /
                               double(w.prompts[0].size());
      flops += per_token * double(r.input_tokens);
    }
    r.prefill_tflops = flops / r.prefill_s / 1e12;
    if (ceil.gemm_tflops > 0) r.prefill_peak_frac = r.prefill_tflops / ceil.gemm_tflops;
  }
  if (r.decode_s > 0)  // each request's first token comes from its prefill
    r.decode_tok_s = double(r.output_tokens - r.completed) / r.decode_s;
  if (r.decode_only_s > 0) {
    r.decode_gbps = decode_bytes / r.decode_only_s / 1e9;
    if (ceil.copy_gbps > 0) r.decode_bw_frac = r.decode_gbps / ceil.copy_gbps;
  }
  if (large_s > 0) {
    r.decode_gbps_batch32 = large_bytes / large_s / 1e9;
    if (ceil.copy_gbps > 0) r.decode_bw_frac_batch32 = r.decode_gbps_batch32 / ceil.copy_gbps;
    r.decode_roofline_frac_batch32 = large_floor_s / large_s;
  }
  return r;
}

nlohmann::ordered_json to_json(const BenchRow& r) {
  nlohmann::ordered_json j = {
      {"workload", r.workload},
      {"model", r.model},
      {"backend", r.backend},
      {"gpu", r.gpu},
      {"mode", r.mode},
      {"policy", r.policy},
      {"kv_budget", r.kv_budget},
      {"chunk", r.chunk},
      {"mem_budget_bytes", r.mem_budget_bytes},
      {"step_tokens", r.step_tokens},
      {"overlap_steps", r.overlap_steps},
      {"overlapped_steps", r.overlapped_steps},
      {"schedule", r.schedule},
      {"temperature", r.temperature},
      {"top_k", r.top_k},
      {"top_p", r.top_p},
      {"input_len", r.input_len},
      {"output_len", r.output_len},
      {"requests", r.requests},
      {"completed", r.completed},
      {"failed", r.failed},
      {"input_tokens", r.input_tokens},
      {"output_tokens", r.output_tokens},
      {"max_batch", r.max_batch},
      {"planned_max_batch", r.planned_max_batch},
      {"wall_s", r.wall_s},
      {"requests_per_s", r.requests_per_s},
      {"output_tok_s", r.output_tok_s},
      {"total_tok_s", r.total_tok_s},
      {"prefill_tok_s", r.prefill_tok_s},
      {"decode_tok_s", r.decode_tok_s},
      {"prefill_s", r.prefill_s},
      {"decode_s", r.decode_s},
      {"steps", r.steps},
      {"decode_steps", r.decode_steps},
      {"decode_only_s", r.decode_only_s},
      {"first_token_s_mean", r.first_token_s_mean},
      {"request_s_mean", r.request_s_mean},
      {"request_s_p90", r.request_s_p90},
      {"replayed_runs", r.replayed_runs},
      {"recorded_runs", r.recorded_runs},
      {"peak_kv_bytes", r.peak_kv_bytes},
      {"kv_pool_bytes", r.kv_pool_bytes},
      {"weight_bytes", r.weight_bytes},
      {"peak_backend_bytes", r.peak_backend_bytes}};
  if (r.backend == "cuda") j["peak_gpu_bytes"] = r.peak_backend_bytes;
  j["gemm_tflops_measured"] = r.gemm_tflops_measured;
  j["copy_gbps_measured"] = r.copy_gbps_measured;
  j["prefill_tflops"] = r.prefill_tflops;
  j["prefill_peak_frac"] = r.prefill_peak_frac;
  j["decode_gbps"] = r.decode_gbps;
  j["decode_bw_frac"] = r.decode_bw_frac;
  j["decode_gbps_batch32"] = r.decode_gbps_batch32;
  j["decode_bw_frac_batch32"] = r.decode_bw_frac_batch32;
  j["decode_roofline_frac_batch32"] = r.decode_roofline_frac_batch32;
  j["commit"] = r.commit;
  j["command"] = r.command;
  if (r.truncated) j["truncated"] = true;
  if (!r.error.empty()) j["error"] = r.error;
  return j;
}

std::string format_table(const std::vector<BenchRow>& rows) {
  std::string out;
  char buf[512];
  std::snprintf(buf, sizeof buf, "%-12s %-7s %6s %5s %10s %9s %8s %9s %9s %9s %10s %10s %8s %14s %14s\n",
                "mode", "policy", "budget", "chunk", "mem", "batch", "req/s", "out tok/s",
                "tot tok/s", "pre tok/s", "peak KV", "peak mem", "wall", "prefill TF/s",
                "decode GB/s");
  out += buf;
  for (const BenchRow& r : rows) {
    auto frac = [](double v, double f, const char* unit) {
      char b[48];
      if (v <= 0) return std::string("-");
      if (f > 0) std::snprintf(b, sizeof b, "%.1f%s (%.0f%%)", v, unit, 100 * f);
      else std::snprintf(b, sizeof b, "%.2f%s", v, unit);
      return std::string(b);
    };
    const std::string batch = std::to_string(r.max_batch) + "/" + std::to_string(r.planned_max_batch);
    std::snprintf(buf, sizeof buf,
                  "%-12s %-7s %6s %5s %10s %9s %8.3f %9.1f %9.1f %9.1f %10s %10s %7.1fs %14s %14s\n",
                  r.mode.c_str(), r.policy.c_str(),
                  r.kv_budget ? std::to_string(r.kv_budget).c_str() : "-",
                  r.chunk ? std::to_string(r.chunk).c_str() : "-",
                  r.mem_budget_bytes ? format_bytes(r.mem_budget_bytes).c_str() : "-",
                  batch.c_str(), r.requests_per_s, r.output_tok_s, r.total_tok_s,
                  r.prefill_tok_s, format_bytes(r.peak_kv_bytes).c_str(),
                  format_bytes(r.peak_backend_bytes).c_str(), r.wall_s,
                  frac(r.prefill_tflops, r.prefill_peak_frac, "").c_str(),
                  frac(r.decode_gbps, r.decode_bw_frac, "").c_str());
    out += buf;
    if (r.truncated)
      out += "  stopped at the time limit: " + std::to_string(r.completed) + " of " +
             std::to_string(r.requests) +
             " requests finished, rates over the time run\n";
    if (r.failed)
      out += "  " + std::to_string(r.failed) + " of " + std::to_string(r.requests) +
             " requests failed: " + r.error + "\n";
  }
  out += "batch: largest reached / planned (Engine::max_concurrent); peak mem: what the backend "
         "held at most;\nprefill TF/s and decode GB/s in parentheses: share of the measured "
         "GEMM peak and copy bandwidth.\n";
  return out;
}

}  // namespace batchmax::bench
