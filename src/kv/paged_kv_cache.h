#pragma once
// The KV cache on a block pool: per sequence, per (layer, KV head), a block table, the
// entries' positions and the policy's state. Planning (add_sequence, prepare) and
// mutation (store, commit) are separate steps; eviction happens only in commit().
#include <cstdint>
#include <memory>
#include <unordered_map>
#include <vector>

#include "backend/backend.h"
#include "kv/block_pool.h"
#include "kv/kv_cache.h"
#include "kv/kv_compression.h"
#include "kv/table_arena.h"

namespace batchmax {

struct KVCacheConfig {
  int n_layer = 0;
  int n_kv_heads = 0;
  int head_dim = 0;
  int block_tokens = 16;
  int64_t n_blocks = 0;
  GgmlType type = GgmlType::F32;
  // A float per slot (KVPoolView::mass): h2o's accumulated mass, kept on the backend.
  bool slot_mass = false;
  // Tokens a step computes at most (0: unknown). The shared headroom lends room for as
  // many of a sequence's prefill chunks as a step holds (burst_blocks).
  int64_t step_tokens = 0;
  // Keep every head's block table on the backend too (Backend::keeps_block_tables()):
  // 2 ints of table space a block, counted in block_bytes().
  bool block_tables = false;
};

// What a step does to a sequence; decides whether the step ends with an eviction.
enum class StepPhase { Prefill, LastPrefill, Decode };

struct SequenceKVStats {
  int64_t peak_entries = 0;  // largest entry count of any (layer, head)
  int64_t peak_blocks = 0;   // most blocks held at once
  int64_t evictions = 0;     // eviction passes
  int64_t evicted = 0;       // entries evicted, all layers and heads
};

class PagedKVCache : public KVCache {
 public:
  PagedKVCache(Backend& backend, const KVCacheConfig& cfg);
  ~PagedKVCache() override;
  PagedKVCache(const PagedKVCache&) = delete;
  PagedKVCache& operator=(const PagedKVCache&) = delete;

  // Bytes of one block (K and V and positions).
  static int64_t block_bytes(const KVCacheConfig& cfg);
  // Blocks one sequence needs to hold `entries` entries in every (layer, head).
  int64_t blocks_for_entries(int64_t entries) const;
  // The shared headroom a sequence asks for (add_sequence): room for as many of its
  // prefill chunks (one needing `one` blocks past its reservation) as a step of
  // step_tokens holds, up to 16, as long as the chunks past the first take at most 1/16
  // of the pool (a small pool would rather admit more sequences).
  int64_t burst_blocks(int64_t one, const KVCompression& comp) const;

  // Admission: reserves the blocks for up to `max_entries` per (layer, head) for the
  // sequence's life. A sequence whose own prefill steps hold more for a step
  // (`peak_entries`, batchmax's budget + chunk) takes the difference from a headroom
  // shared by all sequences (reserve_growth), which admission keeps large enough for
  // the largest such difference, so one prefill chunk a step always fits. False, with
  // nothing changed, when the pool cannot promise the blocks.
  bool add_sequence(int64_t seq_id, int64_t max_entries, const KVCompression& comp = {},
                    int64_t peak_entries = 0);
  // Frees the sequence's blocks and what is left of its reservation.
  void remove_sequence(int64_t seq_id);
  // Before prepare() of a step that adds `n_new` entries: promises the blocks past the
  // sequence's reservation that the step needs, from the shared headroom and then from
  // unpromised blocks. False, with nothing changed, when they are not there (the step
  // leaves the chunk for a later one). commit() gives them back.
  bool reserve_growth(int64_t seq_id, int64_t n_new);
  // Blocks promised for prefill headroom (shared), and how many of them are lent now.
  int64_t headroom_blocks() const { return headroom_; }
  int64_t headroom_lent() const { return headroom_lent_; }
  bool has_sequence(int64_t seq_id) const { return seqs_.count(seq_id) != 0; }
  // Plans a step: makes room for `n_new` more entries in every (layer, head) and
  // decides whether the step ends with an eviction and which queries to observe.
  void prepare(int64_t seq_id, int64_t n_new, StepPhase phase = StepPhase::Prefill);
  // Ends the step: evicts down to the budget where prepare() planned it.
  void commit(int64_t seq_id);
  int64_t n_entries(int64_t seq_id, int layer, int head) const;
  std::vector<int32_t> positions(int64_t seq_id, int layer, int head) const;
  const SequenceKVStats& stats(int64_t seq_id) const;

  void store(int layer, std::span<const KVAppend> appends, const Tensor& k, const Tensor& v,
             const StoreRope* rope = nullptr) override;
  void attention_view(int layer, int64_t seq_id, AttentionSeq& out) const override;
  const KVPoolView& pool() const override { return pool_view_; }
  void after_attention(int layer, const Tensor& q, std::span<const int64_t> seq_ids,
                       std::span<const AttentionSeq> seqs, const AttentionParams& ap,
                       Tensor& scratch) override;
  // The step's last `score_queries` queries of the sequence are observed (0: none), and
  // observe_scores() hands their mass to the policy (host selection).
  int64_t score_queries(int64_t seq_id) const;
  void observe_scores(int layer, int64_t seq_id, const float* mass, int64_t stride);
  // Whether the sequence's eviction runs on the backend (Backend::evict): chosen at
  // add_sequence from Backend::prefers_device_eviction() and the policy (h2o keeps
  // per-entry state on the host); BATCHMAX_EVICTION=host or =device overrides.
  bool evicts_on_device(int64_t seq_id) const { return seq(seq_id).device; }

  const KVCacheConfig& config() const { return cfg_; }
  const BlockPool& blocks() const { return blocks_; }
  int64_t bytes_in_use() const { return blocks_.n_used() * block_bytes(cfg_); }
  int64_t n_sequences() const { return int64_t(seqs_.size()); }

 private:
  // What every step reads of a (layer, head): small, so that a layer's heads of a
  // sequence share a few cache lines (a 512-sequence step walks 4096 of them a layer).
  struct HeadTable {
    std::vector<int32_t> blocks;
    int64_t n = 0;              // entries
    // Of `blocks`, how many lie in the backend's copy of the table (Sequence::table_at),
    // or are queued to (pending table writes).
    int32_t synced = 0;
    int64_t entries() const { return n; }
  };
  // Host eviction's state of a (layer, head).
  struct HostMirror {
    std::vector<int32_t> pos;   // positions of the entries
    std::vector<float> acc;     // policy state (h2o)
    std::vector<float> attn;    // mass observed this step
  };
  struct Sequence {
    std::vector<HeadTable> heads;  // [layer * n_kv_heads + head]
    std::vector<HostMirror> host;  // the same, where eviction runs on the host (!device)
    int64_t reserved = 0;          // blocks promised but not yet taken
    int64_t held = 0;              // blocks taken
    int64_t base = 0;              // blocks promised for its life (held + reserved, between steps)
    int64_t burst = 0;             // blocks more that its prefill chunks of one step may need
    int64_t lent_headroom = 0;     // of reserved: lent from the shared headroom this step
    int64_t lent_pool = 0;         // of reserved: promised from free blocks this step
    KVCompression comp;
    std::unique_ptr<EvictionPolicy> policy;
    SequenceKVStats stats;
    bool evict_after = false;      // planned by prepare()
    int64_t observe = 0;           // queries to observe this step
    bool device = false;           // eviction by Backend::evict (no host mirror of pos)
    // prepare()'s shortcut: no head holds more than max_n entries and every head has room
    // for min_cap, so a step of up to min_cap - max_n entries needs no block (a loop over
    // every (layer, head) of hundreds of sequences cost ~1 ms a step). Valid while
    // fit_known; store() keeps max_n, eviction clears fit_known.
    int64_t max_n = 0, min_cap = 0;
    bool fit_known = false;
    // Its tables' place in the backend's table space: head (l, h) at table_at +
    // (l * n_kv_heads + h) * table_cap, room for table_cap ids (-1: no place).
    int64_t table_at = -1;
    int32_t table_cap = 0;
  };
  Sequence& seq(int64_t id);
  const Sequence& seq(int64_t id) const;
  void evict(Sequence& s);
  std::vector<int64_t> score_on_device(const Tensor& q, std::span<const int64_t> seq_ids,
                                       std::span<const AttentionSeq> seqs,
                                       std::span<const size_t> which, const AttentionParams& ap,
                                       Tensor& out);
  void evict_on_device(int l0, int l1, std::span<const int64_t> seq_ids,
                       std::span<const size_t> which, std::span<const int64_t> mass_row,
                       const Tensor* mass);
  // Drops a head's blocks past what its entries need; they stay promised to the sequence.
  void shrink_blocks(Sequence& s, HeadTable& t);
  // Gives back what reserve_growth() lent, as far as the sequence no longer needs it.
  void return_growth(Sequence& s);
  // Sets the shared headroom to the largest burst of the live sequences (between steps).
  void fit_headroom();

  // Queues the ids of the head's blocks past `synced` for the backend's table space;
  // store() sends what is queued before any attention of the step reads it.
  void queue_table_writes(const Sequence& s, size_t head, HeadTable& t);

  Backend& backend_;
  KVCacheConfig cfg_;
  BlockPool blocks_;
  TableArena tables_;
  std::vector<int32_t> table_writes_;  // queued (place, id) pairs
  // store() names slots by their table place (table_slot_code) where it can; off with
  // BATCHMAX_KV_SLOTS_FROM_HOST set, or where the codes would not fit.
  bool table_codes_ = false;
  KVPoolView pool_view_;
  std::unordered_map<int64_t, Sequence> seqs_;
  // Blocks promised to the pool for prefill bursts, not to a sequence (>= every live
  // sequence's burst), and how many of them reserve_growth() lent this step.
  int64_t headroom_ = 0, headroom_lent_ = 0;
  std::vector<int32_t> slots_, pos_;  // scratch for store()
  bool device_eviction_ = false;      // eviction_on_device() when the cache was made
  std::vector<EvictTask> tasks_;
  Tensor own_scratch_;  // when the caller's scratch cannot hold one sequence's mass
  bool dev_batched_ = false;       // this step scores every layer, then evicts all at once
  std::vector<int64_t> dev_rows_;  // their mass rows, per (layer, sequence)
};

}  // namespace batchmax
