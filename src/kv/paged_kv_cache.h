#pragma once
// The KV cache on a block pool: per sequence, per (layer, KV head), a block table and
// an entry count. Planning (reserve, prepare) and writing (store) are separate steps.
#include <cstdint>
#include <unordered_map>
#include <vector>

#include "backend/backend.h"
#include "kv/block_pool.h"
#include "kv/kv_cache.h"

namespace batchmax {

struct KVCacheConfig {
  int n_layer = 0;
  int n_kv_heads = 0;
  int head_dim = 0;
  int block_tokens = 16;
  int64_t n_blocks = 0;
  GgmlType type = GgmlType::F32;
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

  // Admission: reserves the blocks for up to `max_entries` per (layer, head). False,
  // with nothing changed, when the pool cannot promise them.
  bool add_sequence(int64_t seq_id, int64_t max_entries);
  // Frees the sequence's blocks and what is left of its reservation.
  void remove_sequence(int64_t seq_id);
  bool has_sequence(int64_t seq_id) const { return seqs_.count(seq_id) != 0; }
  // Makes room for `n_new` more entries in every (layer, head) of the sequence.
  void prepare(int64_t seq_id, int64_t n_new);
  int64_t n_entries(int64_t seq_id, int layer, int head) const;

  void store(int layer, std::span<const KVAppend> appends, const Tensor& k,
             const Tensor& v) override;
  void attention_view(int layer, int64_t seq_id, AttentionSeq& out) const override;
  const KVPoolView& pool() const override { return pool_view_; }

  const KVCacheConfig& config() const { return cfg_; }
  const BlockPool& blocks() const { return blocks_; }
  int64_t bytes_in_use() const { return blocks_.n_used() * block_bytes(cfg_); }
  int64_t n_sequences() const { return int64_t(seqs_.size()); }

 private:
  struct HeadTable {
    std::vector<int32_t> blocks;
    int64_t entries = 0;
  };
  struct Sequence {
    std::vector<HeadTable> heads;  // [layer * n_kv_heads + head]
    int64_t reserved = 0;          // blocks promised but not yet taken
  };
  Sequence& seq(int64_t id);
  const Sequence& seq(int64_t id) const;

  Backend& backend_;
  KVCacheConfig cfg_;
  BlockPool blocks_;
  KVPoolView pool_view_;
  std::unordered_map<int64_t, Sequence> seqs_;
  std::vector<int32_t> slots_, pos_;  // scratch for store()
};

}  // namespace batchmax
