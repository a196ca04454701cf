#include "kv/kv_compression.h"

#include <algorithm>

#include "core/error.h"

namespace batchmax {

KVMode parse_kv_mode(const std::string& s) {
  if (s == "full") return KVMode::Full;
  if (s == "post-prefill") return KVMode::PostPrefill;
  if (s == "batchmax") return KVMode::BatchMax;
  throw Error("unknown kv mode '" + s + "' (known: full, post-prefill, batchmax)");
}

std::string kv_mode_name(KVMode m) {
  switch (m) {
    case KVMode::Full: return "full";
    case KVMode::PostPrefill: return "post-prefill";
    case KVMode::BatchMax: return "batchmax";
  }
  return "?";
}

void KVCompression::validate() const {
  if (!evicts()) return;
  if (params.chunk <= 0) throw Error("chunk must be positive");
  if (params.slack < 0) throw Error("slack must be >= 0");
  if (params.obs_window <= 0) throw Error("obs_window must be positive");
  if (params.pool_kernel <= 0 || params.pool_kernel % 2 == 0)
    throw Error("snapkv pool kernel must be a positive odd number");
  make_policy(policy, params);  // checks the name, budget, sinks and window
}

int64_t worst_case_entries(const KVCompression& c, int64_t prompt, int64_t max_tokens) {
  const int64_t all = prompt + std::max<int64_t>(max_tokens - 1, 0);
  if (!c.evicts()) return all;
  const EvictionParams& p = c.params;
  const int64_t decode_cap = p.budget + std::max<int64_t>(p.slack, 1);
  const int64_t prefill_cap = c.mode == KVMode::BatchMax ? p.budget + p.chunk : prompt;
  return std::min(all, std::max(prefill_cap, decode_cap));
}

int64_t held_entries(const KVCompression& c, int64_t prompt, int64_t max_tokens) {
  const int64_t worst = worst_case_entries(c, prompt, max_tokens);
  if (!c.evicts() || c.mode != KVMode::BatchMax) return worst;
  // After each prefill step's eviction at most the budget stays (commit evicts whenever a
  // batchmax chunk leaves more), and a chunk that leaves fewer never exceeded it.
  const EvictionParams& p = c.params;
  const int64_t all = prompt + std::max<int64_t>(max_tokens - 1, 0);
  return std::min(worst, std::min(all, p.budget + std::max<int64_t>(p.slack, 1)));
}

}  // namespace batchmax
