#pragma once
// Runs one benchmark configuration (a workload under one KV setting on one engine) and
// reports what DESIGN.md section 5 asks of every run: requests/s, output, total and
// prefill tokens/s, peak memory, the largest batch reached against the planned one,
// and the achieved fraction of the measured ceilings (prefill TFLOP/s against the GEMM
// peak, decode GB/s against the copy bandwidth).
#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "batchmax/engine.h"
#include "bench/workload.h"
#include "model/hparams.h"

namespace batchmax::bench {

// The card's measured ceilings (zero on the CPU, where none are measured).
struct Ceilings {
  std::string gpu = "cpu";   // device name, or "cpu"
  double gemm_tflops = 0;    // bf16 GEMM
  double copy_gbps = 0;      // device-to-device copy, read + write bytes
};

// Work of a forward pass, from the model's shape: what the roofline numbers divide.
struct ModelCost {
  int64_t n_layer = 0, n_head = 0, head_dim = 0;
  int64_t layer_params = 0;   // matrix parameters of one layer
  int64_t lm_head_params = 0;
  int64_t embd_params = 0;
  bool tied = false;

  static ModelCost from(const HParams& hp);
  int64_t matmul_params() const { return n_layer * layer_params; }  // per token
  // Attention FLOPs (QK and PV, causal) of prefilling `prompt` tokens in chunks of
  // `chunk`, attending to every earlier token (full, post-prefill) or to at most
  // `budget` kept ones plus the chunk (batchmax).
  double prefill_attention_flops(int64_t prompt, int64_t chunk, bool evict_per_chunk,
                                 int64_t budget) const;
  // Share of the weight bytes a decode step reads (all but the embedding table when
  // the lm head is a separate matrix; the table is only gathered from).
  double decode_weight_fraction() const;
};

struct BenchOptions {
  std::string model;          // path or "dummy:<preset>"
  std::string backend;
  int64_t mem_budget_bytes = 0;
  std::string commit, command;
  // When > 0: stop the configuration after this many seconds and report what was done
  // by then (truncated). The engine is then mid-run and must not be used again.
  double time_limit_s = 0;
  float temperature = 0;  // every request's; 0: greedy
  int top_k = 0;          // with temperature: 0 off
  float top_p = 1;        // with temperature: 1 off
  int overlap_steps = -1;  // EngineOptions::overlap_steps the engine was made with (recorded)
  std::string schedule = "auto";  // EngineOptions::schedule the engine was made with (recorded)
};

struct BenchRow {
  std::string workload, model, backend, gpu, mode, policy, commit, command, error;
  std::string input_len, output_len;
  int64_t kv_budget = 0, chunk = 0, mem_budget_bytes = 0, step_tokens = 0;
  int64_t overlap_steps = -1;  // -1: the backend's choice (steps in flight on CUDA)
  int64_t overlapped_steps = 0;  // steps launched while the one before was in flight
  std::string schedule;          // EngineOptions::schedule
  double temperature = 0, top_p = 1;
  int64_t top_k = 0;
  int64_t requests = 0, completed = 0, failed = 0, input_tokens = 0, output_tokens = 0;
  int64_t max_batch = 0, planned_max_batch = 0;
  double wall_s = 0, requests_per_s = 0, output_tok_s = 0, total_tok_s = 0;
  double prefill_s = 0, prefill_tok_s = 0, decode_s = 0, decode_tok_s = 0;
  // Wall time of the steps without prefill rows (at the end: the last requests' decoding).
  double decode_only_s = 0;
  // Per completed request, from the run's start (all are submitted then): its first
  // token (mean) and its last (mean and 90th percentile). A schedule trades these for
  // throughput.
  double first_token_s_mean = 0, request_s_mean = 0, request_s_p90 = 0;
  int64_t peak_kv_bytes = 0, kv_pool_bytes = 0, weight_bytes = 0, peak_backend_bytes = 0;
  double gemm_tflops_measured = 0, copy_gbps_measured = 0;
  double prefill_tflops = 0, prefill_peak_frac = 0;  // vs gemm_tflops_measured
  double decode_gbps = 0, decode_bw_frac = 0;        // vs copy_gbps_measured
  // The same over decode-only steps of at least kLargeDecodeBatch sequences (the CUDA
  // issue states its decode target at batch >= 32; 0 when there was no such step).
  static constexpr int64_t kLargeDecodeBatch = 32;
  double decode_gbps_batch32 = 0, decode_bw_frac_batch32 = 0;
  // Those steps' floor over their time: per step, the products at the slower of the
  // weight reads (copy rate) and their FLOPs (GEMM peak), plus the KV reads. Unlike the
  // bandwidth share, it can reach 1 at batches large enough to be compute-bound.
  double decode_roofline_frac_batch32 = 0;
  int64_t decode_steps = 0, steps = 0;
  int64_t replayed_runs = 0, recorded_runs = 0;  // Progress: CUDA graph launches, graphs made
  bool truncated = false;  // stopped at BenchOptions::time_limit_s
};

// Runs `w` on `engine` with every request's KV setting `kv` (outputs forced to their
// full length: ignore_eos). Requests the engine rejects count as failed.
BenchRow run_config(Engine& engine, const Workload& w, const KVSettings& kv,
                    const ModelCost& cost, const Ceilings& ceil, const BenchOptions& opts);

nlohmann::ordered_json to_json(const BenchRow& r);
std::string format_table(const std::vector<BenchRow>& rows);

}  // namespace batchmax::bench
