#include "kv/paged_kv_cache.h"

#include <algorithm>
#include <climits>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>

#include "backend/step_profile.h"
#include "core/error.h"

namespace batchmax {
namespace {

// Table space a pool block: a sequence's place holds its largest step (batchmax: the
// budget plus a chunk, at most twice its lifelong promise), so twice the pool fits all.
constexpr int64_t kTableIntsPerBlock = 2;

// The sequence's attention restricted to its last `cnt` queries (the ones a policy scores).
AttentionSeq last_queries(const AttentionSeq& s, int64_t cnt) {
  AttentionSeq a = s;
  a.q_begin += a.n_q - cnt;
  a.q_pos += a.n_q - cnt;
  a.n_q = cnt;
  return a;
}

}  // namespace

int64_t PagedKVCache::block_bytes(const KVCacheConfig& cfg) {
  const auto& tt = type_traits(cfg.type);
  return int64_t(cfg.block_tokens) * (2 * int64_t(cfg.head_dim) * int64_t(tt.block_bytes) /
                                          tt.block_size + int64_t(sizeof(int32_t)) +
                                      (cfg.slot_mass ? int64_t(sizeof(float)) : 0)) +
         (cfg.block_tables ? kTableIntsPerBlock * int64_t(sizeof(int32_t)) : 0);
}

PagedKVCache::PagedKVCache(Backend& backend, const KVCacheConfig& cfg)
    : backend_(backend), cfg_(cfg), blocks_(cfg.n_blocks) {
  if (cfg.n_layer <= 0 || cfg.n_kv_heads <= 0 || cfg.head_dim <= 0 || cfg.block_tokens <= 0 ||
      cfg.step_tokens < 0)
    throw Error("kv cache: bad configuration");
  pool_view_ = backend_.alloc_kv_pool(cfg.type, cfg.n_blocks, cfg.block_tokens, cfg.head_dim,
                                      cfg.slot_mass);
  if (cfg.block_tables && backend_.keeps_block_tables() && cfg.n_blocks > 0) {
    const int64_t n = kTableIntsPerBlock * cfg.n_blocks;
    if (n > INT32_MAX) throw Error("kv cache: the pool's block tables exceed 2^31 ids");
    backend_.alloc_block_tables(pool_view_, n);
    tables_ = TableArena(pool_view_.tables ? n : 0);
    table_codes_ = table_slot_codes_fit(pool_view_) && !std::getenv("BATCHMAX_KV_SLOTS_FROM_HOST");
  }
  device_eviction_ = eviction_on_device(backend_);
}

bool eviction_on_device(const Backend& backend) {
  if (const char* e = std::getenv("BATCHMAX_EVICTION")) {
    if (!std::strcmp(e, "host")) return false;
    if (!std::strcmp(e, "device")) return true;
    if (*e) throw Error(std::string("BATCHMAX_EVICTION must be 'host' or 'device', not '") + e + "'");
  }
  return backend.prefers_device_eviction();
}

PagedKVCache::~PagedKVCache() {
  if (own_scratch_.data) backend_.free(own_scratch_);
  backend_.free_kv_pool(pool_view_);
}

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

int64_t PagedKVCache::burst_blocks(int64_t one, const KVCompression& comp) const {
  const int64_t chunk = comp.mode == KVMode::BatchMax ? comp.params.chunk : 0;
  if (one <= 0 || cfg_.step_tokens <= 0 || chunk <= 0) return std::max<int64_t>(one, 0);
  const int64_t per_step = std::clamp<int64_t>(cfg_.step_tokens / chunk, 1, 16);
  const int64_t affordable = 1 + cfg_.n_blocks / 16 / one;
  return one * std::min(per_step, affordable);
}

bool PagedKVCache::add_sequence(int64_t seq_id, int64_t max_entries, const KVCompression& comp,
                                int64_t peak_entries) {
  if (seqs_.count(seq_id)) throw Error("kv cache: sequence " + std::to_string(seq_id) + " exists");
  comp.validate();
  const int64_t need = blocks_for_entries(max_entries);
  // The headroom covers the largest burst.
  const int64_t burst = burst_blocks(std::max<int64_t>(0, blocks_for_entries(peak_entries) - need), comp);
  const int64_t grow = std::max<int64_t>(0, burst - headroom_);
  if (!blocks_.reserve(need + grow)) return false;
  headroom_ += grow;
  Sequence s;
  s.heads.resize(size_t(cfg_.n_layer) * cfg_.n_kv_heads);
  s.reserved = need;
  s.base = need;
  s.burst = burst;
  s.comp = comp;
  if (comp.evicts()) s.policy = make_policy(comp.policy, comp.params);
  // A policy with per-entry state (h2o) keeps it in the pool's slot mass, if it has one.
  if (s.policy && (!s.policy->keeps_state() || pool_view_.mass))
    s.device = device_eviction_;
  if (!s.device) s.host.resize(s.heads.size());
  if (tables_.capacity() > 0) {
    // Room for the most a head holds in a step; a head that outgrows it (several chunks
    // in one step) sends its ids with each call until eviction brings it back.
    const int64_t cap = (std::max(max_entries, peak_entries) + cfg_.block_tokens - 1) / cfg_.block_tokens;
    const int64_t n = std::max<int64_t>(cap, 1) * int64_t(s.heads.size());
    if (cap < INT32_MAX && (s.table_at = tables_.allocate(n)) >= 0) s.table_cap = int32_t(std::max<int64_t>(cap, 1));
  }
  seqs_.emplace(seq_id, std::move(s));
  return true;
}

void PagedKVCache::remove_sequence(int64_t seq_id) {
  Sequence& s = seq(seq_id);
  for (auto& h : s.heads)
    for (int32_t b : h.blocks) blocks_.release(b);
  // Ops already queued still read its tables; the backend orders later writes after them.
  if (s.table_at >= 0) tables_.release(s.table_at, int64_t(s.table_cap) * int64_t(s.heads.size()));
  // Its promise leaves the pool, except what it had from the headroom: that goes back to
  // the headroom (promised in the pool, to no sequence). Its held blocks are free by now,
  // so promising them again cannot fail.
  const int64_t back = s.lent_headroom - s.reserved;
  if (back > 0 && !blocks_.reserve(back)) throw Error("kv cache: lost the prefill headroom");
  if (back < 0) blocks_.unreserve(-back);
  headroom_lent_ -= s.lent_headroom;
  seqs_.erase(seq_id);
  fit_headroom();
}

bool PagedKVCache::reserve_growth(int64_t seq_id, int64_t n_new) {
  Sequence& s = seq(seq_id);
  int64_t need = 0;
  for (const auto& h : s.heads)
    need += std::max<int64_t>(0, (h.entries() + n_new + cfg_.block_tokens - 1) / cfg_.block_tokens -
                                     int64_t(h.blocks.size()));
  const int64_t extra = need - s.reserved;
  if (extra <= 0) return true;
  const int64_t from_headroom = std::min(extra, headroom_ - headroom_lent_);
  const int64_t from_pool = extra - from_headroom;
  if (from_pool > 0 && !blocks_.reserve(from_pool)) return false;
  headroom_lent_ += from_headroom;
  s.lent_headroom += from_headroom;
  s.lent_pool += from_pool;
  s.reserved += extra;
  return true;
}

void PagedKVCache::return_growth(Sequence& s) {
  // What it holds and is promised past its life's reservation, as far as not taken.
  const int64_t give = std::min({s.lent_headroom + s.lent_pool, s.held + s.reserved - s.base, s.reserved});
  if (give <= 0) return;
  const int64_t to_headroom = std::min(give, s.lent_headroom);
  s.lent_headroom -= to_headroom;
  headroom_lent_ -= to_headroom;
  s.lent_pool -= give - to_headroom;
  blocks_.unreserve(give - to_headroom);
  s.reserved -= give;
}

void PagedKVCache::fit_headroom() {
  if (headroom_lent_ > 0) return;  // mid-step: shrink at a later removal
  int64_t most = 0;
  for (const auto& [id, s] : seqs_) most = std::max(most, s.burst);
  if (most >= headroom_) return;
  blocks_.unreserve(headroom_ - most);
  headroom_ = most;
}

void PagedKVCache::prepare(int64_t seq_id, int64_t n_new, StepPhase phase) {
  Sequence& s = seq(seq_id);
  if (!s.fit_known || s.max_n + n_new > s.min_cap) {
    const int64_t bt = cfg_.block_tokens;
    s.max_n = 0;
    s.min_cap = INT64_MAX;
    for (size_t i = 0; i < s.heads.size(); ++i) {
      HeadTable& h = s.heads[i];
      const int64_t need = (h.entries() + n_new + bt - 1) / bt;
      while (int64_t(h.blocks.size()) < need) {
        if (s.reserved <= 0)
          throw Error("kv cache: sequence " + std::to_string(seq_id) + " grew past its reservation");
        h.blocks.push_back(blocks_.take_reserved());
        --s.reserved;
        ++s.held;
      }
      if (s.table_at >= 0) queue_table_writes(s, i, h);
      s.max_n = std::max(s.max_n, h.entries());
      s.min_cap = std::min(s.min_cap, int64_t(h.blocks.size()) * bt);
    }
    s.fit_known = true;
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
    const size_t at = size_t(layer) * cfg_.n_kv_heads + h;
    const HeadTable& t = s.heads[at];
    HostMirror& m = s.host.at(at);
    const float* row = mass + h * stride;
    m.attn.assign(row, row + t.entries());
    if (s.policy->keeps_state()) {
      HeadEntries e{m.pos, m.attn, {}, m.acc};
      s.policy->observe(e);
    }
  }
}

void PagedKVCache::commit(int64_t seq_id) {
  Sequence& s = seq(seq_id);
  if (s.evict_after && s.device) {
    ++s.stats.evictions;  // the layers were evicted in after_attention()
  } else if (s.evict_after) {
    prof::Scope sc(prof::kCommit, backend_);
    evict(s);
  }
  s.evict_after = false;
  s.observe = 0;
  return_growth(s);
}

// Keeps the budget's worth of entries per (layer, head), packs them to the front of the
// head's blocks (order preserved, so positions stay sorted) and returns emptied blocks
// to the sequence's reservation.
void PagedKVCache::evict(Sequence& s) {
  s.fit_known = false;
  const EvictionParams& p = s.comp.params;
  const int bt = cfg_.block_tokens;
  std::vector<int32_t> src, dst;
  std::vector<float> scores, norms;
  for (size_t at = 0; at < s.heads.size(); ++at) {
    HeadTable& t = s.heads[at];
    HostMirror& m = s.host.at(at);
    const int64_t n = t.entries();
    if (n <= p.budget) continue;
    if (s.policy->needs_key_norms()) {
      norms.resize(n);
      backend_.key_norms(pool_view_, t.blocks, n, norms.data());
    }
    if (m.attn.size() != size_t(n)) m.attn.assign(n, 0.0f);
    HeadEntries e{m.pos, m.attn, s.policy->needs_key_norms() ? std::span<const float>(norms)
                                                             : std::span<const float>(),
                  m.acc};
    scores.resize(n);
    s.policy->score(e, scores);
    std::vector<int32_t> keep = select_keep(m.pos, scores, p);
    for (size_t j = 0; j < keep.size(); ++j) {
      const int64_t i = keep[j];
      if (i != int64_t(j)) {
        src.push_back(t.blocks[i / bt] * bt + int32_t(i % bt));
        dst.push_back(t.blocks[j / bt] * bt + int32_t(j % bt));
      }
      m.pos[j] = m.pos[i];
      if (!m.acc.empty()) m.acc[j] = m.acc[i];
    }
    s.stats.evicted += n - int64_t(keep.size());
    m.pos.resize(keep.size());
    t.n = int64_t(keep.size());
    if (!m.acc.empty()) m.acc.resize(keep.size());
    m.attn.clear();
    shrink_blocks(s, t);
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
  const Sequence& s = seq(seq_id);
  const size_t at = size_t(layer) * cfg_.n_kv_heads + head;
  const HeadTable& t = s.heads[at];
  if (!s.device) return s.host.at(at).pos;
  std::vector<int32_t> out(size_t(t.n));
  if (t.n) backend_.kv_positions(pool_view_, t.blocks, t.n, out.data());
  return out;
}

void PagedKVCache::shrink_blocks(Sequence& s, HeadTable& t) {
  s.fit_known = false;
  const size_t need = size_t((t.n + cfg_.block_tokens - 1) / cfg_.block_tokens);
  while (t.blocks.size() > need) {
    blocks_.release(t.blocks.back());
    t.blocks.pop_back();
    t.synced = std::min(t.synced, int32_t(t.blocks.size()));
    --s.held;
    // The block stays promised to this sequence: it will grow again.
    if (!blocks_.reserve(1)) throw Error("kv cache: lost a block while compacting");
    ++s.reserved;
  }
}

void PagedKVCache::after_attention(int layer, const Tensor& q, std::span<const int64_t> seq_ids,
                                   std::span<const AttentionSeq> seqs, const AttentionParams& ap,
                                   Tensor& scratch) {
  if (seq_ids.size() != seqs.size()) throw Error("kv cache: after_attention: ids and sequences differ");
  // Host selection: each sequence's last `score_queries` queries, their mass to the host.
  std::vector<size_t> scored, device;
  std::vector<AttentionSeq> score_seqs, accumulate;
  for (size_t i = 0; i < seqs.size(); ++i) {
    const Sequence& s = seq(seq_ids[i]);
    if (!s.policy) continue;
    if (s.device) {
      // h2o: every observed query's mass goes into the pool's slot mass, every step.
      const int64_t cnt = std::min<int64_t>(s.observe, seqs[i].n_q);
      if (s.policy->keeps_state() && cnt > 0) accumulate.push_back(last_queries(seqs[i], cnt));
      if (s.evict_after) device.push_back(i);
      continue;
    }
    const int64_t cnt = std::min<int64_t>(s.observe, seqs[i].n_q);
    if (cnt <= 0) continue;
    scored.push_back(i);
    score_seqs.push_back(last_queries(seqs[i], cnt));
  }
  if (!scored.empty()) {
    prof::Scope sc(prof::kScores, backend_);
    int64_t stride = 0;
    for (const AttentionSeq& a : score_seqs)
      for (int32_t e : a.head_entries) stride = std::max<int64_t>(stride, e);
    std::vector<std::vector<float>> mass(scored.size());
    std::vector<float*> mass_ptr(scored.size());
    for (size_t j = 0; j < scored.size(); ++j) {
      mass[j].assign(size_t(stride * ap.n_kv_heads), 0.0f);
      mass_ptr[j] = mass[j].data();
    }
    backend_.attention_scores(q, score_seqs, ap, pool_view_, mass_ptr, stride);
    for (size_t j = 0; j < scored.size(); ++j)
      observe_scores(layer, seq_ids[scored[j]], mass[j].data(), stride);
  }
  if (!accumulate.empty()) {
    prof::Scope sc(prof::kScores, backend_);
    backend_.accumulate_mass(q, accumulate, ap, pool_view_);
  }
  if (device.empty()) return;
  const int nh = cfg_.n_kv_heads;
  // Entries are the same in every (layer, head) of a sequence at this point of a step.
  auto stride_of = [&](std::span<const size_t> which) {
    int64_t st = 1;
    for (size_t i : which)
      for (int32_t e : seqs[i].head_entries) st = std::max<int64_t>(st, e);
    return st;
  };
  const int64_t cap = scratch.data && scratch.type == GgmlType::F32 ? scratch.rows * scratch.cols : 0;
  if (layer == 0) {
    // All layers' mass fits the scratch: score each layer into its own region and evict
    // every layer in one launch after the last (a launch of n_layer x more CTAs; the
    // layers are not read again in this step). Otherwise layer by layer, in groups.
    dev_batched_ = int64_t(cfg_.n_layer) * int64_t(device.size()) * nh * stride_of(device) <= cap;
    dev_rows_.clear();
  }
  if (dev_batched_) {
    const int64_t stride = stride_of(device);
    const int64_t rows = int64_t(device.size()) * nh;
    Tensor region = scratch;
    region.data = scratch.f32() + int64_t(layer) * rows * stride;
    region.rows = rows;
    region.cols = stride;
    region.row_stride = size_t(stride) * sizeof(float);
    std::vector<int64_t> mass_row = score_on_device(q, seq_ids, seqs, device, ap, region);
    for (int64_t& r : mass_row)
      if (r >= 0) r += int64_t(layer) * rows;
    dev_rows_.insert(dev_rows_.end(), mass_row.begin(), mass_row.end());
    if (layer + 1 < cfg_.n_layer) return;
    Tensor mass = scratch;
    mass.rows = int64_t(cfg_.n_layer) * rows;
    mass.cols = stride;
    mass.row_stride = size_t(stride) * sizeof(float);
    evict_on_device(0, cfg_.n_layer, seq_ids, device, dev_rows_, &mass);
    return;
  }
  // Layer by layer, in groups whose mass fits the scratch; one larger than it gets a
  // scratch of its own (outside the planned workspace: the model sizes its scratch so
  // this stays rare).
  int64_t need_one = 1;
  for (size_t i : device) need_one = std::max<int64_t>(need_one, stride_of({&i, 1}) * nh);
  Tensor* use = &scratch;
  if (cap < need_one) {
    if (!own_scratch_.data || own_scratch_.cols < need_one) {
      const int64_t n = std::max(need_one, 2 * own_scratch_.cols);
      if (own_scratch_.data) backend_.free(own_scratch_);
      own_scratch_ = backend_.alloc(GgmlType::F32, 1, n);
    }
    use = &own_scratch_;
  }
  const int64_t use_cap = use->rows * use->cols;
  for (size_t g0 = 0; g0 < device.size();) {
    size_t g1 = g0 + 1;
    while (g1 < device.size() &&
           int64_t(g1 - g0 + 1) * nh *
                   stride_of(std::span<const size_t>(device.data() + g0, g1 - g0 + 1)) <= use_cap)
      ++g1;
    const std::span<const size_t> group(device.data() + g0, g1 - g0);
    const int64_t stride = stride_of(group);
    Tensor region = *use;
    region.rows = int64_t(group.size()) * nh;
    region.cols = stride;
    region.row_stride = size_t(stride) * sizeof(float);
    const std::vector<int64_t> mass_row = score_on_device(q, seq_ids, seqs, group, ap, region);
    evict_on_device(layer, layer + 1, seq_ids, group, mass_row, &region);
    g0 = g1;
  }
}

// Attention mass of the observed queries of the `which` sequences into `out` (rows
// j * n_kv_heads + h, cols >= their entries); returns each one's first row, or -1 where
// its policy reads no mass.
std::vector<int64_t> PagedKVCache::score_on_device(const Tensor& q, std::span<const int64_t> seq_ids,
                                                   std::span<const AttentionSeq> seqs,
                                                   std::span<const size_t> which,
                                                   const AttentionParams& ap, Tensor& out) {
  prof::Scope sc(prof::kScores, backend_);
  const int nh = cfg_.n_kv_heads;
  std::vector<AttentionSeq> score_seqs;
  std::vector<int64_t> mass_row(which.size(), -1);
  for (size_t j = 0; j < which.size(); ++j) {
    const size_t i = which[j];
    const Sequence& s = seq(seq_ids[i]);
    const int64_t cnt = std::min<int64_t>(s.observe, seqs[i].n_q);
    if (cnt <= 0 || s.policy->keeps_state()) continue;  // h2o reads the slot mass instead
    mass_row[j] = int64_t(score_seqs.size()) * nh;
    score_seqs.push_back(last_queries(seqs[i], cnt));
  }
  if (!score_seqs.empty()) {
    Tensor t = out;
    t.rows = int64_t(score_seqs.size()) * nh;
    backend_.attention_scores_to(q, score_seqs, ap, pool_view_, t);
  }
  return mass_row;
}

// Selection and compaction stay on the backend (Backend::evict) for layers [l0, l1) of
// the `which` sequences, mass row of (layer, j) at mass_row[(layer - l0) * which.size()
// + j] + head; the host only sets the counts it knows in advance (min(entries, budget)).
void PagedKVCache::evict_on_device(int l0, int l1, std::span<const int64_t> seq_ids,
                                   std::span<const size_t> which,
                                   std::span<const int64_t> mass_row, const Tensor* mass) {
  prof::Scope sc(prof::kEvictLayer, backend_);
  const int nh = cfg_.n_kv_heads;
  tasks_.clear();
  for (int l = l0; l < l1; ++l)
    for (size_t j = 0; j < which.size(); ++j) {
      Sequence& s = seq(seq_ids[which[j]]);
      const EvictionParams& p = s.comp.params;
      EvictScore kind;
      const std::string& pol = s.comp.policy;
      if (pol == "snapkv") kind = EvictScore::PooledMass;
      else if (pol == "tova") kind = EvictScore::Mass;
      else if (pol == "window") kind = EvictScore::Recency;
      else if (pol == "knorm") kind = EvictScore::NegKeyNorm;
      else if (pol == "random") kind = EvictScore::Random;
      else if (pol == "h2o") kind = EvictScore::Accumulated;
      else throw Error("kv cache: policy " + pol + " cannot evict on the device");
      const int64_t row = mass_row[size_t(l - l0) * which.size() + j];
      for (int h = 0; h < nh; ++h) {
        HeadTable& t = s.heads[size_t(l) * nh + h];
        if (t.n <= p.budget) continue;
        EvictTask task;
        task.blocks = t.blocks;
        task.n_entries = int32_t(t.n);
        task.keep = int32_t(p.budget);
        task.score = kind;
        task.pool_kernel = p.pool_kernel;
        task.sinks = int32_t(p.sinks);
        task.window = int32_t(p.window);
        task.seed = p.seed;
        task.mass_row = row < 0 ? -1 : row + h;
        tasks_.push_back(task);
      }
    }
  if (tasks_.empty()) return;
  backend_.evict(tasks_, mass, pool_view_);
  // Blocks are returned only after the launch: the tasks' spans point into the tables.
  for (int l = l0; l < l1; ++l)
    for (size_t j = 0; j < which.size(); ++j) {
      Sequence& s = seq(seq_ids[which[j]]);
      const int64_t budget = s.comp.params.budget;
      for (int h = 0; h < nh; ++h) {
        HeadTable& t = s.heads[size_t(l) * nh + h];
        if (t.n <= budget) continue;
        s.stats.evicted += t.n - budget;
        t.n = budget;
        s.fit_known = false;
        shrink_blocks(s, t);
      }
    }
}

const SequenceKVStats& PagedKVCache::stats(int64_t seq_id) const { return seq(seq_id).stats; }

void PagedKVCache::store(int layer, std::span<const KVAppend> appends, const Tensor& k,
                         const Tensor& v, const StoreRope* rope) {
  const int nh = cfg_.n_kv_heads, bt = cfg_.block_tokens;
  slots_.clear();
  pos_.clear();
  const bool codes = table_codes_;
  for (const KVAppend& a : appends) {
    Sequence& s = seq(a.seq_id);
    const size_t first = size_t(layer) * nh;
    HeadTable* heads = &s.heads[first];
    // Blocks the backend's table space holds are named by their place there: the block
    // ids are then not read here (a cache miss a head).
    const int64_t row0 = codes && s.table_at >= 0 ? s.table_at + int64_t(first) * s.table_cap : -1;
    for (int64_t i = 0; i < a.n_tokens; ++i) {
      for (int h = 0; h < nh; ++h) {
        const HeadTable& t = heads[h];
        const int64_t e = t.entries() + i, bi = e / bt;
        if (row0 >= 0 && bi < t.synced) {
          slots_.push_back(table_slot_code(row0 + int64_t(h) * s.table_cap + bi, e % bt, bt));
          continue;
        }
        if (size_t(bi) >= t.blocks.size()) throw Error("kv cache: store without prepare");
        slots_.push_back(t.blocks[size_t(bi)] * bt + int32_t(e % bt));
      }
      pos_.push_back(a.pos[i]);
    }
    const bool acc = !s.device && s.policy && s.policy->keeps_state();
    for (int h = 0; h < nh; ++h) {
      HeadTable& t = heads[h];
      t.n += a.n_tokens;
      s.max_n = std::max(s.max_n, t.n);
      s.stats.peak_entries = std::max(s.stats.peak_entries, t.entries());
      if (s.device) continue;
      HostMirror& m = s.host[first + size_t(h)];
      m.pos.insert(m.pos.end(), a.pos.begin(), a.pos.begin() + a.n_tokens);
      if (acc) m.acc.resize(m.pos.size(), 0.0f);
    }
  }
  if (int64_t(pos_.size()) != k.rows) throw Error("kv cache: store rows do not match appends");
  // The step's new block ids reach the backend's tables before its first attention.
  if (!table_writes_.empty()) {
    backend_.write_block_tables(table_writes_, pool_view_);
    table_writes_.clear();
  }
  if (!rope) {
    backend_.kv_store(k, v, nh, slots_, pos_, pool_view_);
    return;
  }
  if (!rope->params || rope->q.rows != k.rows) throw Error("kv cache: store's rope does not match its rows");
  Tensor q = rope->q, k_rotated = k;  // views: their rows are rotated in place
  backend_.rope_kv_store(q, rope->n_q_heads, k_rotated, v, nh, slots_, pos_, *rope->params, pool_view_);
}

void PagedKVCache::queue_table_writes(const Sequence& s, size_t head, HeadTable& t) {
  const int32_t n = int32_t(std::min<size_t>(t.blocks.size(), size_t(s.table_cap)));
  const int64_t row = s.table_at + int64_t(head) * s.table_cap;
  for (int32_t i = t.synced; i < n; ++i) table_writes_.insert(table_writes_.end(), {int32_t(row + i), t.blocks[i]});
  t.synced = std::max(t.synced, n);
}

void PagedKVCache::attention_view(int layer, int64_t seq_id, AttentionSeq& out) const {
  const Sequence& s = seq(seq_id);
  const int nh = cfg_.n_kv_heads;
  out.head_blocks.resize(nh);
  out.head_entries.resize(nh);
  // Rows only once the backend holds what was queued (a view before the step's first
  // store sends every id).
  const bool rows = s.table_at >= 0 && table_writes_.empty();
  if (rows)
    out.head_rows.resize(nh);
  else
    out.head_rows.clear();
  for (int h = 0; h < nh; ++h) {
    const size_t at = size_t(layer) * nh + h;
    const HeadTable& t = s.heads[at];
    out.head_blocks[h] = std::span<const int32_t>(t.blocks);
    out.head_entries[h] = int32_t(t.entries());
    // The backend's copy serves only when it holds every id (store() synced them).
    if (rows)
      out.head_rows[h] = size_t(t.synced) == t.blocks.size()
                             ? int32_t(s.table_at + int64_t(at) * s.table_cap)
                             : -1;
  }
}

}  // namespace batchmax
