#pragma once
// Compression settings of one request: the mode (when eviction happens), the policy
// (what is evicted) and its parameters, and the worst-case cache size they imply.
#include <cstdint>
#include <string>

#include "kv/eviction_policy.h"

namespace batchmax {

enum class KVMode {
  Full,         // no eviction: the cache grows to prompt + output
  PostPrefill,  // the whole prompt is cached, then compressed once to the budget
  BatchMax,     // eviction after every prefill chunk: at most budget + chunk entries
};

KVMode parse_kv_mode(const std::string& s);  // "full", "post-prefill", "batchmax"
std::string kv_mode_name(KVMode m);

struct KVCompression {
  KVMode mode = KVMode::Full;
  std::string policy = "snapkv";
  EvictionParams params;

  bool evicts() const { return mode != KVMode::Full && policy != "full"; }
  // Throws batchmax::Error naming a bad setting.
  void validate() const;
};

// The most entries any (layer, head) of a request can hold at once, inside one of its
// own prefill steps included. max_tokens is the number of tokens generated (the last is
// never stored).
int64_t worst_case_entries(const KVCompression& c, int64_t prompt, int64_t max_tokens);
// The most entries it holds between steps and in its decode steps: what admission
// reserves for the request's whole life. Equal to worst_case_entries except in
// batchmax, whose prefill steps hold up to budget + chunk for the length of a step and
// then evict to the budget, while decode grows only to budget + slack. The difference
// comes from a headroom the cache shares among the step's prefill chunks
// (PagedKVCache::reserve_growth), so each sequence need not reserve it for its life.
int64_t held_entries(const KVCompression& c, int64_t prompt, int64_t max_tokens);

}  // namespace batchmax
