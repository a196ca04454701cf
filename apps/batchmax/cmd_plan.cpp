// batchmax plan: the memory planner's arithmetic for a workload, per compression mode:
// how the budget splits into weights, workspace and KV pool, and how many requests of
// the given shape run at once.
#include <cstdio>
#include <iostream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "cli_common.h"
#include "core/format.h"

namespace batchmax::cli {
namespace {

struct PlanArgs {
  EngineFlags engine;
  int64_t prompt_tokens = 4096;
  int64_t max_tokens = 512;
  std::string modes = "full,post-prefill,batchmax";
  bool json = false;
};

std::vector<std::string> split(const std::string& s) {
  std::vector<std::string> out;
  std::stringstream ss(s);
  for (std::string item; std::getline(ss, item, ',');)
    if (!item.empty()) out.push_back(item);
  return out;
}

int run_plan(const PlanArgs& a) {
  EngineFlags f = a.engine;
  f.max_batch = 0;  // the pool, not a batch cap, decides
  auto engine = load_engine(f);
  const MemoryPlan& m = engine->memory_plan();
  nlohmann::ordered_json rows = nlohmann::ordered_json::array();
  for (const std::string& mode : split(a.modes)) {
    KVSettings kv = f.kv;
    kv.mode = mode;
    const int64_t blocks = engine->blocks_per_request(kv, a.prompt_tokens, a.max_tokens);
    const int64_t entries = blocks / m.kv_heads_total * m.block_tokens;
    rows.push_back({{"mode", mode},
                    {"policy", mode == "full" ? "-" : kv.policy},
                    {"kv_budget", mode == "full" ? 0 : kv.budget},
                    {"chunk", mode == "batchmax" ? kv.chunk : 0},
                    {"entries_per_head", entries},
                    {"blocks_per_request", blocks},
                    {"bytes_per_request", blocks * m.kv_block_bytes},
                    {"prefill_headroom_blocks",
                     engine->prefill_headroom_blocks(kv, a.prompt_tokens, a.max_tokens)},
                    {"max_concurrent", engine->max_concurrent(kv, a.prompt_tokens, a.max_tokens)}});
  }
  if (a.json) {
    nlohmann::ordered_json j = {{"backend", m.backend},
                                {"mem_budget_bytes", m.mem_budget_bytes},
                                {"weight_bytes", m.weight_bytes},
                                {"workspace_bytes", m.workspace_bytes},
                                {"runtime_reserve_bytes", m.runtime_reserve_bytes},
                                {"step_tokens", m.step_tokens},
                                {"kv_pool_bytes", m.kv_pool_bytes},
                                {"kv_block_bytes", m.kv_block_bytes},
                                {"kv_blocks", m.kv_blocks},
                                {"block_tokens", m.block_tokens},
                                {"kv_heads_total", m.kv_heads_total},
                                {"kv_bytes_per_token", m.kv_bytes_per_token},
                                {"prompt_tokens", a.prompt_tokens},
                                {"max_tokens", a.max_tokens},
                                {"modes", rows}};
    std::cout << j.dump(2) << "\n";
    return 0;
  }
  auto line = [](const char* label, const std::string& v) { std::printf("%-22s %s\n", label, v.c_str()); };
  line("backend", m.backend);
  if (m.mem_budget_bytes > 0) {
    line("memory budget", format_bytes(m.mem_budget_bytes));
    line("  weights", format_bytes(m.weight_bytes));
    line("  workspace", format_bytes(m.workspace_bytes) + " (measured: a " +
                            std::to_string(m.step_tokens) + "-token step and its logits)");
    if (m.runtime_reserve_bytes > 0)
      line("  runtime reserve", format_bytes(m.runtime_reserve_bytes) +
                                   " (kept free: the driver loads kernels on first use; CUDA graphs)");
    line("  KV pool", format_bytes(m.kv_pool_bytes) + " = budget - weights - workspace" +
                          (m.runtime_reserve_bytes > 0 ? " - runtime reserve" : ""));
  } else {
    line("weights", format_bytes(m.weight_bytes));
    line("workspace", format_bytes(m.workspace_bytes) + " (measured)");
    line("KV pool", format_bytes(m.kv_pool_bytes) + " (--kv-mem; give --mem-budget to plan a budget)");
  }
  line("KV block", std::to_string(m.block_tokens) + " entries of one (layer, KV head) = " +
                       format_bytes(m.kv_block_bytes) + "; " + std::to_string(m.kv_blocks) +
                       " blocks in the pool");
  line("KV per token", format_bytes(m.kv_bytes_per_token) + " (" +
                           std::to_string(m.kv_heads_total) + " layer x KV-head pairs)");
  line("workload", std::to_string(a.prompt_tokens) + " prompt + " +
                       std::to_string(a.max_tokens) + " output tokens per request");
  std::printf("\n%-13s %-8s %7s %6s %14s %15s %14s %15s\n", "mode", "policy", "budget", "chunk",
              "entries/head", "blocks/request", "KV/request", "max concurrent");
  for (const auto& r : rows)
    std::printf("%-13s %-8s %7s %6s %14lld %15lld %14s %15lld\n",
                r["mode"].get<std::string>().c_str(), r["policy"].get<std::string>().c_str(),
                r["kv_budget"].get<int64_t>() ? std::to_string(r["kv_budget"].get<int64_t>()).c_str() : "-",
                r["chunk"].get<int64_t>() ? std::to_string(r["chunk"].get<int64_t>()).c_str() : "-",
                static_cast<long long>(r["entries_per_head"].get<int64_t>()),
                static_cast<long long>(r["blocks_per_request"].get<int64_t>()),
                format_bytes(r["bytes_per_request"].get<int64_t>()).c_str(),
                static_cast<long long>(r["max_concurrent"].get<int64_t>()));
  std::printf("\nentries/head: the KV entries a request reserves per (layer, head) for its life:\n"
              "prompt + output (full), the whole prompt (post-prefill), budget + slack (batchmax).\n");
  for (const auto& r : rows)
    if (const int64_t h = r["prefill_headroom_blocks"].get<int64_t>(); h > 0)
      std::printf("%s: a prefill step holds up to budget + chunk until its eviction; the %lld "
                  "blocks (%s) more come from a headroom the pool keeps once, not per request "
                  "(room for as many chunks at once as a step holds, up to 1/16 of the pool).\n",
                  r["mode"].get<std::string>().c_str(), static_cast<long long>(h),
                  format_bytes(h * m.kv_block_bytes).c_str());
  return 0;
}

}  // namespace

Command add_plan(CLI::App& root) {
  auto a = std::make_shared<PlanArgs>();
  CLI::App* cmd = root.add_subcommand("plan", "print the memory plan and the largest batch per KV mode");
  add_engine_flags(*cmd, a->engine);
  cmd->add_option("--prompt-tokens", a->prompt_tokens, "prompt length of the workload")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  cmd->add_option("--max-tokens", a->max_tokens, "output length of the workload")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  cmd->add_option("--modes", a->modes, "comma-separated KV modes to compare")->capture_default_str();
  cmd->add_flag("--json", a->json, "print JSON");
  return {cmd, [a] { return run_plan(*a); }};
}

}  // namespace batchmax::cli
