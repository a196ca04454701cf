#pragma once
// Eviction policies (DESIGN.md section 1): each scores the cache entries of one
// (sequence, layer, KV head); select_keep() then keeps the protected entries (the first
// `sinks` positions, the most recent `window` entries) plus the best-scored rest up to
// the budget. Scores of query heads that share a KV head arrive already combined (mean).
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

namespace batchmax {

// Which queries' attention probabilities a policy reads.
enum class ScoreNeed {
  None,        // knorm, window, random, full
  LastQuery,   // tova
  ObsWindow,   // snapkv: the last obs_window queries of the chunk
  AllQueries,  // h2o: every query of the step
};

struct EvictionParams {
  int64_t budget = 512;    // entries kept per head after eviction
  int64_t chunk = 512;     // prefill chunk (batchmax mode)
  int64_t slack = 64;      // decode: evict once entries exceed budget + slack
  int obs_window = 32;     // snapkv observation window
  int pool_kernel = 7;     // snapkv max-pooling width (odd)
  int64_t sinks = 4;       // first positions never evicted
  int64_t window = 32;     // most recent entries never evicted
  uint64_t seed = 0;       // random policy
};

// What a policy may read of one head's entries (all spans have n entries, in cache order
// which is position order).
struct HeadEntries {
  std::span<const int32_t> pos;
  std::span<const float> attn;      // attention mass from this step's queries (ScoreNeed)
  std::span<const float> key_norm;  // L2 norms of the keys (knorm)
  std::span<float> acc;             // the policy's own per-entry state (h2o), compacted along
};

class EvictionPolicy {
 public:
  virtual ~EvictionPolicy() = default;
  virtual std::string name() const = 0;
  virtual ScoreNeed score_need() const { return ScoreNeed::None; }
  virtual bool needs_key_norms() const { return false; }
  virtual bool keeps_state() const { return false; }  // uses HeadEntries::acc
  // Called once per step for every head whose queries were observed, before any
  // eviction decision, so stateful policies can accumulate.
  virtual void observe(HeadEntries& e) const {}
  // Higher is more worth keeping.
  virtual void score(const HeadEntries& e, std::span<float> out) const = 0;
};

// Throws batchmax::Error listing the known policies.
std::unique_ptr<EvictionPolicy> make_policy(const std::string& name, const EvictionParams& p);
const std::vector<std::string>& policy_names();

// Indices (ascending) of the entries to keep: protected ones first, then the highest
// scores (ties: the more recent entry) until `budget` entries are kept. When n <= budget
// every entry is kept.
std::vector<int32_t> select_keep(std::span<const int32_t> pos, std::span<const float> scores,
                                 const EvictionParams& p);

}  // namespace batchmax
