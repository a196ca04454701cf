#include "kv/paged_kv_cache.h"

#include <algorithm>
#include <string>

#include "backend/step_profile.h"
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

bool PagedKVCache::add_sequence(int64_t seq_id, int64_t max_entries, const KVCompression& comp) {
  if (seqs_.count(seq_id)) throw Error("kv cache: sequence " + std::to_string(seq_id) + " exists");
  comp.validate();
  int64_t need = blocks_for_entries(max_entries);
  if (!blocks_.reserve(need)) return false;
  Sequence s;
  s.heads.resize(size_t(cfg_.n_layer) * cfg_.n_kv_heads);
  s.reserved = need;
  s.comp = comp;
  if (comp.evicts()) s.policy = make_policy(comp.policy, comp.params);
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

void PagedKVCache::prepare(int64_t seq_id, int64_t n_new, StepPhase phase) {
  Sequence& s = seq(seq_id);
  for (auto& h : s.heads) {
    int64_t need = (h.entries() + n_new + cfg_.block_tokens - 1) / cfg_.block_tokens;
    while (int64_t(h.blocks.size()) < need) {
      if (s.reserved <= 0)
        throw Error("kv cache: sequence " + std::to_string(seq_id) + " grew past its reservation");
      h.blocks.push_back(blocks_.take_reserved());
      --s.reserved;
      ++s.held;
    }
  }
  s.stats.peak_blocks = std::max(s.stats.peak_blocks, s.held);
  s.evict_after = false;
  s.observe = 0;
  if (!s.policy) return;
  const EvictionParams& p = s.comp.params;
  const int64_t after = s.heads[0].entries() + n_new;
  switch (phase) {
    case StepPhase::Prefill:
      s.evict_after = s.comp.mode == KVMode::BatchMax && after > p.budget;
      break;
    case StepPhase::LastPrefill:
      s.evict_after = after > p.budget;
      break;
    case StepPhase::Decode:
      s.evict_after = after > p.budget && after >= p.budget + p.slack;
      break;
  }
  switch (s.policy->score_need()) {
    case ScoreNeed::None: break;
    case ScoreNeed::AllQueries: s.observe = n_new; break;
    case ScoreNeed::LastQuery: s.observe = s.evict_after ? 1 : 0; break;
    case ScoreNeed::ObsWindow:
      s.observe = s.evict_after ? std::min<int64_t>(p.obs_window, n_new) : 0;
      break;
  }
}

int64_t PagedKVCache::score_queries(int64_t seq_id) const { return seq(seq_id).observe; }

void PagedKVCache::observe_scores(int layer, int64_t seq_id, const float* mass, int64_t stride) {
  Sequence& s = seq(seq_id);
  if (!s.policy) return;
  for (int h = 0; h < cfg_.n_kv_heads; ++h) {
    HeadTable& t = s.heads[size_t(layer) * cfg_.n_kv_heads + h];
    const float* row = mass + h * stride;
    t.attn.assign(row, row + t.entries());
    if (s.policy->keeps_state()) {
      HeadEntries e{t.pos, t.attn, {}, t.acc};
      s.policy->observe(e);
    }
  }
}

void PagedKVCache::commit(int64_t seq_id) {
  Sequence& s = seq(seq_id);
  if (s.evict_after) {
    prof::Scope sc(prof::kCommit, backend_);
    evict(s);
  }
  s.evict_after = false;
  s.observe = 0;
}

// Keeps the budget's worth of entries per (layer, head), packs them to the front of the
// head's blocks (order preserved, so positions stay sorted) and returns emptied blocks
// to the sequence's reservation.
void PagedKVCache::evict(Sequence& s) {
  const EvictionParams& p = s.comp.params;
  const int bt = cfg_.block_tokens;
  std::vector<int32_t> src, dst;
  std::vector<float> scores, norms;
  for (auto& t : s.heads) {
    const int64_t n = t.entries();
    if (n <= p.budget) continue;
    if (s.policy->needs_key_norms()) {
      norms.resize(n);
      backend_.key_norms(pool_view_, t.blocks, n, norms.data());
    }
    if (t.attn.size() != size_t(n)) t.attn.assign(n, 0.0f);
    HeadEntries e{t.pos, t.attn, s.policy->needs_key_norms() ? std::span<const float>(norms)
                                                             : std::span<const float>(),
                  t.acc};
    scores.resize(n);
    s.policy->score(e, scores);
    std::vector<int32_t> keep = select_keep(t.pos, scores, p);
    for (size_t j = 0; j < keep.size(); ++j) {
      const int64_t i = keep[j];
      if (i != int64_t(j)) {
        src.push_back(t.blocks[i / bt] * bt + int32_t(i % bt));
        dst.push_back(t.blocks[j / bt] * bt + int32_t(j % bt));
      }
      t.pos[j] = t.pos[i];
      if (!t.acc.empty()) t.acc[j] = t.acc[i];
    }
    s.stats.evicted += n - int64_t(keep.size());
    t.pos.resize(keep.size());
    if (!t.acc.empty()) t.acc.resize(keep.size());
    t.attn.clear();
    const size_t need = (keep.size() + bt - 1) / bt;
    while (t.blocks.size() > need) {
      blocks_.release(t.blocks.back());
      t.blocks.pop_back();
      --s.held;
      // The block stays promised to this sequence: it will grow again.
      if (!blocks_.reserve(1)) throw Error("kv cache: lost a block while compacting");
      ++s.reserved;
    }
  }
  ++s.stats.evictions;
  // Moves are applied in order; a destination never precedes its source in the head.
  if (!src.empty()) {
    prof::Scope sc(prof::kMove, backend_);
    backend_.kv_move(src, dst, pool_view_);
  }
}

int64_t PagedKVCache::n_entries(int64_t seq_id, int layer, int head) const {
  return seq(seq_id).heads[size_t(layer) * cfg_.n_kv_heads + head].entries();
}

std::vector<int32_t> PagedKVCache::positions(int64_t seq_id, int layer, int head) const {
  return seq(seq_id).heads[size_t(layer) * cfg_.n_kv_heads + head].pos;
}

const SequenceKVStats& PagedKVCache::stats(int64_t seq_id) const { return seq(seq_id).stats; }

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
        int64_t e = heads[h].entries() + i;
        size_t bi = size_t(e / bt);
        if (bi >= heads[h].blocks.size()) throw Error("kv cache: store without prepare");
        slots_.push_back(heads[h].blocks[bi] * bt + int32_t(e % bt));
      }
      pos_.push_back(a.pos[i]);
    }
    for (int h = 0; h < nh; ++h) {
      HeadTable& t = heads[h];
      t.pos.insert(t.pos.end(), a.pos.begin(), a.pos.begin() + a.n_tokens);
      if (s.policy && s.policy->keeps_state()) t.acc.resize(t.pos.size(), 0.0f);
      s.stats.peak_entries = std::max(s.stats.peak_entries, t.entries());
    }
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
    out.head_entries[h] = int32_t(t.entries());
  }
}

}  // namespace batchmax
