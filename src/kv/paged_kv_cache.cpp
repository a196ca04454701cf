#include "kv/paged_kv_cache.h"

#include <string>

#include "core/error.h"

namespace batchmax {

int64_t PagedKVCache::block_bytes(const KVCacheConfig& cfg) {
  const auto& tt = type_traits(cfg.type);
  return int64_t(cfg.block_tokens) * (2 * int64_t(cfg.head_dim) * int64_t(tt.block_bytes) /
                                          tt.block_size + int64_t(sizeof(int32_t)));
}

PagedKVCache::PagedKVCache(Backend& backend, const KVCacheConfig& cfg)
    : backend_(backend), cfg_(cfg), blocks_(cfg.n_blocks) {
  if (cfg.n_layer <= 0 || cfg.n_kv_heads <= 0 || cfg.head_dim <= 0 || cfg.block_tokens <= 0)
    throw Error("kv cache: bad configuration");
  pool_view_ = backend_.alloc_kv_pool(cfg.type, cfg.n_blocks, cfg.block_tokens, cfg.head_dim);
}

PagedKVCache::~PagedKVCache() { backend_.free_kv_pool(pool_view_); }

int64_t PagedKVCache::blocks_for_entries(int64_t entries) const {
  int64_t per_head = (entries + cfg_.block_tokens - 1) / cfg_.block_tokens;
  return per_head * cfg_.n_layer * cfg_.n_kv_heads;
}

PagedKVCache::Sequence& PagedKVCache::seq(int64_t id) {
  auto it = seqs_.find(id);
  if (it == seqs_.end()) throw Error("kv cache: unknown sequence " + std::to_string(id));
  return it->second;
}
const PagedKVCache::Sequence& PagedKVCache::seq(int64_t id) const {
  return const_cast<PagedKVCache*>(this)->seq(id);
}

bool PagedKVCache::add_sequence(int64_t seq_id, int64_t max_entries) {
  if (seqs_.count(seq_id)) throw Error("kv cache: sequence " + std::to_string(seq_id) + " exists");
  int64_t need = blocks_for_entries(max_entries);
  if (!blocks_.reserve(need)) return false;
  Sequence s;
  s.heads.resize(size_t(cfg_.n_layer) * cfg_.n_kv_heads);
  s.reserved = need;
  seqs_.emplace(seq_id, std::move(s));
  return true;
}

void PagedKVCache::remove_sequence(int64_t seq_id) {
  Sequence& s = seq(seq_id);
  for (auto& h : s.heads)
    for (int32_t b : h.blocks) blocks_.release(b);
  blocks_.unreserve(s.reserved);
  seqs_.erase(seq_id);
}

void PagedKVCache::prepare(int64_t seq_id, int64_t n_new) {
  Sequence& s = seq(seq_id);
  for (auto& h : s.heads) {
    int64_t need = (h.entries + n_new + cfg_.block_tokens - 1) / cfg_.block_tokens;
    while (int64_t(h.blocks.size()) < need) {
      if (s.reserved <= 0)
        throw Error("kv cache: sequence " + std::to_string(seq_id) + " grew past its reservation");
      h.blocks.push_back(blocks_.take_reserved());
      --s.reserved;
    }
  }
}

int64_t PagedKVCache::n_entries(int64_t seq_id, int layer, int head) const {
  return seq(seq_id).heads[size_t(layer) * cfg_.n_kv_heads + head].entries;
}

void PagedKVCache::store(int layer, std::span<const KVAppend> appends, const Tensor& k,
                         const Tensor& v) {
  const int nh = cfg_.n_kv_heads, bt = cfg_.block_tokens;
  slots_.clear();
  pos_.clear();
  for (const KVAppend& a : appends) {
    Sequence& s = seq(a.seq_id);
    HeadTable* heads = &s.heads[size_t(layer) * nh];
    for (int64_t i = 0; i < a.n_tokens; ++i) {
      for (int h = 0; h < nh; ++h) {
        int64_t e = heads[h].entries + i;
        size_t bi = size_t(e / bt);
        if (bi >= heads[h].blocks.size()) throw Error("kv cache: store without prepare");
        slots_.push_back(heads[h].blocks[bi] * bt + int32_t(e % bt));
      }
      pos_.push_back(a.pos[i]);
    }
    for (int h = 0; h < nh; ++h) heads[h].entries += a.n_tokens;
  }
  if (int64_t(pos_.size()) != k.rows) throw Error("kv cache: store rows do not match appends");
  backend_.kv_store(k, v, nh, slots_, pos_, pool_view_);
}

void PagedKVCache::attention_view(int layer, int64_t seq_id, AttentionSeq& out) const {
  const Sequence& s = seq(seq_id);
  const int nh = cfg_.n_kv_heads;
  out.head_blocks.resize(nh);
  out.head_entries.resize(nh);
  for (int h = 0; h < nh; ++h) {
    const HeadTable& t = s.heads[size_t(layer) * nh + h];
    out.head_blocks[h] = std::span<const int32_t>(t.blocks);
    out.head_entries[h] = int32_t(t.entries);
  }
}

}  // namespace batchmax
