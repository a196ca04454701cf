#pragma once
// What the model sees of the KV cache: it stores each layer's new K/V and asks what
// a sequence's queries attend to. Allocation, admission and eviction are the engine's
// business through the concrete cache, never the model's.
#include <cstdint>
#include <span>

#include "backend/backend.h"

namespace batchmax {

// One sequence's new tokens in a step; their K/V rows are consecutive in the step.
struct KVAppend {
  int64_t seq_id = 0;
  int64_t n_tokens = 0;
  std::span<const int32_t> pos;  // true positions, n_tokens of them
};

// Whether eviction runs on the backend (Backend::evict) rather than selecting on the host:
// Backend::prefers_device_eviction(), unless BATCHMAX_EVICTION=host or =device says.
bool eviction_on_device(const Backend& backend);

// The rope that a store applies first: q's n_q_heads heads and k's heads are rotated in
// place at the appends' positions, and k is stored rotated (Backend::rope_kv_store, which
// a backend may fuse into one pass).
struct StoreRope {
  Tensor q;
  int n_q_heads = 0;
  const RopeParams* params = nullptr;
};

class KVCache {
 public:
  virtual ~KVCache() = default;
  // Writes this step's K and V rows of `layer` ([n, n_kv_heads * head_dim], appends in
  // row order) into slots the engine prepared beforehand; with `rope`, q and k are rotated
  // first (k is a view: its rows are rotated in place).
  virtual void store(int layer, std::span<const KVAppend> appends, const Tensor& k,
                     const Tensor& v, const StoreRope* rope = nullptr) = 0;
  // Fills `out.head_blocks` and `out.head_entries` for `seq_id` in `layer`; the spans
  // stay valid until the cache is next changed.
  virtual void attention_view(int layer, int64_t seq_id, AttentionSeq& out) const = 0;
  virtual const KVPoolView& pool() const = 0;

  // Called after each layer's attention with the step's queries (seqs[i] is sequence
  // seq_ids[i], as attention saw it): eviction policies read the attention mass here, and
  // a cache may already evict this layer, which the step does not read again. `scratch`
  // (contiguous F32, backend memory, from the model's workspace so the memory planner
  // counts it) may hold the mass.
  virtual void after_attention(int layer, const Tensor& q, std::span<const int64_t> seq_ids,
                               std::span<const AttentionSeq> seqs, const AttentionParams& ap,
                               Tensor& scratch) {}
};

}  // namespace batchmax
