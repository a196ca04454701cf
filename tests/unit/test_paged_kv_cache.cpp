#include "kv/paged_kv_cache.h"

#include <gtest/gtest.h>

#include <map>
#include <random>

#include "core/error.h"
#include "table_keeping_backend.h"

using namespace batchmax;

namespace {
KVCacheConfig small_config() {
  KVCacheConfig c;
  c.n_layer = 2;
  c.n_kv_heads = 2;
  c.head_dim = 4;
  c.block_tokens = 4;
  c.n_blocks = 24;
  return c;
}
}  // namespace

TEST(PagedKVCache, AdmissionReservesWorstCase) {
  auto be = make_cpu_backend();
  PagedKVCache kv(*be, small_config());
  // 10 entries -> 3 blocks per (layer, head) -> 12 blocks.
  EXPECT_EQ(kv.blocks_for_entries(10), 12);
  EXPECT_TRUE(kv.add_sequence(1, 10));
  EXPECT_TRUE(kv.add_sequence(2, 10));
  EXPECT_FALSE(kv.add_sequence(3, 1));  // all 24 promised
  EXPECT_EQ(kv.blocks().n_used(), 0);   // promised, not yet taken
  kv.remove_sequence(1);
  EXPECT_TRUE(kv.add_sequence(3, 1));
  kv.remove_sequence(2);
  kv.remove_sequence(3);
  EXPECT_EQ(kv.blocks().n_free(), 24);
  EXPECT_EQ(kv.blocks().n_unreserved(), 24);
}

TEST(PagedKVCache, StoreWritesEachHeadAndViewFindsIt) {
  auto be = make_cpu_backend();
  KVCacheConfig cfg = small_config();
  PagedKVCache kv(*be, cfg);
  ASSERT_TRUE(kv.add_sequence(7, 12));
  ASSERT_TRUE(kv.add_sequence(9, 12));
  std::mt19937 rng(1);
  std::uniform_real_distribution<float> u(-1, 1);
  const int nh = cfg.n_kv_heads, hd = cfg.head_dim;
  // Two steps: 6 tokens of seq 7 and 3 of seq 9, then 1 + 1.
  std::vector<std::vector<float>> all_k(2), all_v(2);  // per seq: [token][nh*hd]
  int64_t done[2] = {0, 0};
  for (auto step : {std::pair<int, int>{6, 3}, std::pair<int, int>{1, 1}}) {
    int n7 = step.first, n9 = step.second, n = n7 + n9;
    kv.prepare(7, n7);
    kv.prepare(9, n9);
    Tensor k = be->alloc(GgmlType::F32, n, nh * hd), v = be->alloc(GgmlType::F32, n, nh * hd);
    for (int64_t i = 0; i < n * nh * hd; ++i) { k.f32()[i] = u(rng); v.f32()[i] = u(rng); }
    std::vector<int32_t> pos;
    for (int i = 0; i < n7; ++i) pos.push_back(int32_t(done[0] + i));
    for (int i = 0; i < n9; ++i) pos.push_back(int32_t(done[1] + i));
    KVAppend a[2] = {{7, n7, std::span<const int32_t>(pos.data(), n7)},
                     {9, n9, std::span<const int32_t>(pos.data() + n7, n9)}};
    for (int layer = 0; layer < cfg.n_layer; ++layer) kv.store(layer, a, k, v);
    for (int r = 0; r < n; ++r) {
      int s = r < n7 ? 0 : 1;
      all_k[s].insert(all_k[s].end(), k.row_f32(r), k.row_f32(r) + nh * hd);
      all_v[s].insert(all_v[s].end(), v.row_f32(r), v.row_f32(r) + nh * hd);
    }
    done[0] += n7;
    done[1] += n9;
    be->free(k);
    be->free(v);
  }
  const KVPoolView& pool = kv.pool();
  for (int s = 0; s < 2; ++s) {
    int64_t id = s == 0 ? 7 : 9;
    for (int layer = 0; layer < cfg.n_layer; ++layer) {
      AttentionSeq view;
      kv.attention_view(layer, id, view);
      ASSERT_EQ(view.head_entries.size(), size_t(nh));
      for (int h = 0; h < nh; ++h) {
        ASSERT_EQ(view.head_entries[h], done[s]);
        for (int64_t e = 0; e < done[s]; ++e) {
          int64_t slot = int64_t(view.head_blocks[h][e / cfg.block_tokens]) * cfg.block_tokens +
                         e % cfg.block_tokens;
          EXPECT_EQ(pool.pos[slot], e);
          for (int d = 0; d < hd; ++d) {
            EXPECT_EQ(static_cast<float*>(pool.k)[slot * hd + d], all_k[s][e * nh * hd + h * hd + d]);
            EXPECT_EQ(static_cast<float*>(pool.v)[slot * hd + d], all_v[s][e * nh * hd + h * hd + d]);
          }
        }
      }
    }
  }
  // Seq 7: 7 entries -> 2 blocks per head; seq 9: 4 entries -> 1; 4 (layer, head) pairs.
  EXPECT_EQ(kv.blocks().n_used(), 12);
  EXPECT_EQ(kv.bytes_in_use(), 12 * PagedKVCache::block_bytes(cfg));
  kv.remove_sequence(7);
  kv.remove_sequence(9);
  EXPECT_EQ(kv.blocks().n_free(), cfg.n_blocks);
}

TEST(PagedKVCache, GrowingPastReservationIsAnError) {
  auto be = make_cpu_backend();
  PagedKVCache kv(*be, small_config());
  ASSERT_TRUE(kv.add_sequence(1, 4));  // one block per head
  kv.prepare(1, 4);
  EXPECT_THROW(kv.prepare(1, 5), Error);  // would need a second block per head
  EXPECT_THROW(kv.prepare(2, 1), Error);  // unknown sequence
  EXPECT_THROW(kv.add_sequence(1, 4), Error);  // duplicate
}

namespace {
KVCompression batchmax_window(int64_t budget, int64_t chunk, int64_t slack) {
  KVCompression c;
  c.mode = KVMode::BatchMax;
  c.policy = "window";
  c.params.budget = budget;
  c.params.chunk = chunk;
  c.params.slack = slack;
  c.params.sinks = 1;
  c.params.window = 2;
  return c;
}

// One step of the given (sequence, new entries) items: growth promised, stored, committed.
void run_items(Backend& be, PagedKVCache& kv, const std::vector<std::pair<int64_t, int64_t>>& items,
               std::map<int64_t, int64_t>& done, int64_t prompt) {
  const KVCacheConfig& cfg = kv.config();
  int64_t n = 0;
  for (auto [id, k] : items) {
    kv.prepare(id, k, done[id] + k < prompt ? StepPhase::Prefill
                                            : (done[id] < prompt ? StepPhase::LastPrefill
                                                                 : StepPhase::Decode));
    n += k;
  }
  Tensor k = be.alloc(GgmlType::F32, n, int64_t(cfg.n_kv_heads) * cfg.head_dim);
  Tensor v = be.alloc(GgmlType::F32, n, int64_t(cfg.n_kv_heads) * cfg.head_dim);
  std::vector<int32_t> pos;
  std::vector<KVAppend> appends;
  for (auto [id, m] : items)
    for (int64_t i = 0; i < m; ++i) pos.push_back(int32_t(done[id] + i));
  size_t at = 0;
  for (auto [id, m] : items) {
    appends.push_back({id, m, std::span<const int32_t>(pos.data() + at, size_t(m))});
    at += size_t(m);
  }
  for (int layer = 0; layer < cfg.n_layer; ++layer) kv.store(layer, appends, k, v);
  for (auto [id, m] : items) {
    kv.commit(id);
    done[id] += m;
  }
  be.free(k);
  be.free(v);
}
}  // namespace

// batchmax reserves budget + slack per sequence for its life; a prefill chunk's extra
// (budget + chunk until the step's eviction) is lent from a shared headroom and returned.
TEST(PagedKVCache, PrefillHeadroomIsSharedAndReturned) {
  auto be = make_cpu_backend();
  KVCacheConfig cfg = small_config();  // 2 layers x 2 heads, 4-entry blocks
  cfg.n_blocks = 40;
  PagedKVCache kv(*be, cfg);
  const KVCompression c = batchmax_window(8, 8, 4);
  const int64_t prompt = 40;
  EXPECT_EQ(held_entries(c, prompt, 20), 12);        // budget + slack: 3 blocks a head
  EXPECT_EQ(worst_case_entries(c, prompt, 20), 16);  // budget + chunk: 4 blocks a head
  // Per sequence 12 blocks for its life, and 4 more of headroom once: three fit in 40
  // (with the worst case reserved per sequence, 16 each, only two would).
  for (int64_t id : {1, 2, 3}) ASSERT_TRUE(kv.add_sequence(id, 12, c, 16)) << id;
  EXPECT_EQ(kv.headroom_blocks(), 4);
  EXPECT_FALSE(kv.add_sequence(4, 12, c, 16));
  std::map<int64_t, int64_t> done;
  // First chunks (8 entries: 2 blocks a head) fit each reservation: nothing is lent.
  for (int64_t id : {1, 2, 3}) EXPECT_TRUE(kv.reserve_growth(id, 8));
  EXPECT_EQ(kv.headroom_lent(), 0);
  run_items(*be, kv, {{1, 8}, {2, 8}, {3, 8}}, done, prompt);
  // Second chunks (16 entries until the eviction): one borrows the headroom, a second
  // finds no free block, a third is not asked (the scheduler stops at the second).
  EXPECT_TRUE(kv.reserve_growth(1, 8));
  EXPECT_EQ(kv.headroom_lent(), 4);
  EXPECT_FALSE(kv.reserve_growth(2, 8));
  EXPECT_EQ(kv.headroom_lent(), 4);  // nothing changed by the refusal
  run_items(*be, kv, {{1, 8}}, done, prompt);
  EXPECT_EQ(kv.headroom_lent(), 0);  // evicted to the budget, lent blocks back
  EXPECT_EQ(kv.n_entries(1, 0, 0), 8);
  EXPECT_EQ(kv.blocks().n_unreserved(), 0);
  // Every chunk of every sequence gets through one at a time, then decode past the
  // slack, and the pool never grows past what it promised.
  while (done[1] < prompt || done[2] < prompt || done[3] < prompt) {
    std::vector<std::pair<int64_t, int64_t>> items;
    for (int64_t id : {1, 2, 3}) {
      if (done[id] >= prompt) continue;
      if (!kv.reserve_growth(id, 8)) break;
      items.push_back({id, 8});
    }
    ASSERT_FALSE(items.empty());
    run_items(*be, kv, items, done, prompt);
    EXPECT_EQ(kv.headroom_lent(), 0);
  }
  for (int step = 0; step < 12; ++step) {
    for (int64_t id : {1, 2, 3}) ASSERT_TRUE(kv.reserve_growth(id, 1));  // within the reservation
    EXPECT_EQ(kv.headroom_lent(), 0);
    run_items(*be, kv, {{1, 1}, {2, 1}, {3, 1}}, done, prompt);
    EXPECT_LE(kv.n_entries(2, 1, 1), 12);
  }
  for (int64_t id : {1, 2, 3}) kv.remove_sequence(id);
  EXPECT_EQ(kv.headroom_blocks(), 0);
  EXPECT_EQ(kv.blocks().n_free(), cfg.n_blocks);
  EXPECT_EQ(kv.blocks().n_unreserved(), cfg.n_blocks);
}

// With the step size known, the headroom lends room for as many chunks as a step holds,
// as long as those past the first take at most 1/16 of the pool.
TEST(PagedKVCache, PrefillHeadroomCoversTheChunksOfAStep) {
  auto be = make_cpu_backend();
  const KVCompression c = batchmax_window(8, 8, 4);  // a chunk needs 4 blocks past 12
  KVCacheConfig cfg = small_config();
  cfg.n_blocks = 64;
  cfg.step_tokens = 16;  // two chunks of 8
  {
    PagedKVCache kv(*be, cfg);
    EXPECT_EQ(kv.burst_blocks(4, c), 8);
    EXPECT_EQ(kv.burst_blocks(4, KVCompression{}), 4);  // not batchmax: one burst
    for (int64_t id : {1, 2, 3, 4}) ASSERT_TRUE(kv.add_sequence(id, 12, c, 16)) << id;
    EXPECT_EQ(kv.headroom_blocks(), 8);
    std::map<int64_t, int64_t> done;
    for (int64_t id : {1, 2}) EXPECT_TRUE(kv.reserve_growth(id, 8));
    run_items(*be, kv, {{1, 8}, {2, 8}}, done, 40);
    // Second chunks of two sequences in one step: both from the headroom.
    for (int64_t id : {1, 2}) EXPECT_TRUE(kv.reserve_growth(id, 8)) << id;
    EXPECT_EQ(kv.headroom_lent(), 8);
    run_items(*be, kv, {{1, 8}, {2, 8}}, done, 40);
    EXPECT_EQ(kv.headroom_lent(), 0);
    for (int64_t id : {1, 2, 3, 4}) kv.remove_sequence(id);
    EXPECT_EQ(kv.headroom_blocks(), 0);
    EXPECT_EQ(kv.blocks().n_unreserved(), cfg.n_blocks);
  }
  cfg.step_tokens = 64;  // eight chunks, but 64 / 16 blocks afford one past the first
  EXPECT_EQ(PagedKVCache(*be, cfg).burst_blocks(4, c), 8);
  cfg.n_blocks = 40;  // affords none past the first
  EXPECT_EQ(PagedKVCache(*be, cfg).burst_blocks(4, c), 4);
}

// A sequence removed while it holds lent headroom (a failed step) gives it back to the
// headroom, not to the pool, and the headroom shrinks with its last borrower.
TEST(PagedKVCache, RemovingABorrowerRestoresTheHeadroom) {
  auto be = make_cpu_backend();
  KVCacheConfig cfg = small_config();
  cfg.n_blocks = 44;
  PagedKVCache kv(*be, cfg);
  const KVCompression c = batchmax_window(8, 8, 4);
  ASSERT_TRUE(kv.add_sequence(1, 12, c, 16));
  ASSERT_TRUE(kv.add_sequence(2, 4));  // full mode, no burst
  std::map<int64_t, int64_t> done;
  run_items(*be, kv, {{1, 8}}, done, 40);
  ASSERT_TRUE(kv.reserve_growth(1, 8));
  kv.prepare(1, 8);
  EXPECT_EQ(kv.headroom_lent(), 4);
  kv.remove_sequence(1);  // without commit
  EXPECT_EQ(kv.headroom_lent(), 0);
  EXPECT_EQ(kv.headroom_blocks(), 0);  // no sequence with a burst is left
  EXPECT_EQ(kv.blocks().n_unreserved(), cfg.n_blocks - 4);
  kv.remove_sequence(2);
  EXPECT_EQ(kv.blocks().n_unreserved(), cfg.n_blocks);
}

namespace {
// Every head a view names a row for holds exactly its block ids there; returns how
// many heads had one.
int64_t check_rows(const TableKeepingBackend& be, const PagedKVCache& kv, std::span<const int64_t> ids) {
  int64_t resident = 0;
  for (int64_t id : ids)
    for (int l = 0; l < kv.config().n_layer; ++l) {
      AttentionSeq a;
      kv.attention_view(l, id, a);
      if (a.head_rows.empty()) continue;
      EXPECT_EQ(int(a.head_rows.size()), kv.config().n_kv_heads);
      for (int h = 0; h < kv.config().n_kv_heads; ++h) {
        if (a.head_rows[h] < 0) continue;
        ++resident;
        for (size_t i = 0; i < a.head_blocks[h].size(); ++i)
          EXPECT_EQ(be.tables[size_t(a.head_rows[h]) + i], a.head_blocks[h][i])
              << "sequence " << id << " layer " << l << " head " << h << " block " << i;
      }
    }
  return resident;
}
}  // namespace

// The block tables the backend keeps follow each head through growth, eviction and
// removal; a head past its place's room (two chunks in one step) falls back to sending
// its ids and returns once evicted; a sequence admitted later reuses freed places.
TEST(PagedKVCache, BlockTablesOnTheBackendFollowEveryHead) {
  TableKeepingBackend be;
  KVCacheConfig cfg = small_config();
  cfg.n_blocks = 64;
  cfg.step_tokens = 16;
  cfg.block_tables = true;
  EXPECT_EQ(PagedKVCache::block_bytes(cfg), PagedKVCache::block_bytes(small_config()) + 8)
      << "2 ints of table space a block, in the memory plan";
  PagedKVCache kv(be, cfg);
  ASSERT_EQ(int64_t(be.tables.size()), 2 * cfg.n_blocks);
  const KVCompression c = batchmax_window(8, 8, 4);
  const int64_t prompt = 40;
  for (int64_t id : {1, 2, 3}) ASSERT_TRUE(kv.add_sequence(id, 12, c, 16)) << id;
  std::map<int64_t, int64_t> done;
  const std::vector<int64_t> live = {1, 2, 3};
  // One chunk each: 8 entries, in every head's room; then two chunks of sequence 1 in
  // one step: 24 entries before the step's eviction, past its room for 16.
  for (int64_t id : live) ASSERT_TRUE(kv.reserve_growth(id, 8));
  run_items(be, kv, {{1, 8}, {2, 8}, {3, 8}}, done, prompt);
  EXPECT_EQ(check_rows(be, kv, live), 3 * 4);
  ASSERT_TRUE(kv.reserve_growth(1, 16));
  kv.prepare(1, 16, StepPhase::Prefill);
  Tensor k = be.alloc(GgmlType::F32, 16, int64_t(cfg.n_kv_heads) * cfg.head_dim);
  Tensor v = be.alloc(GgmlType::F32, 16, int64_t(cfg.n_kv_heads) * cfg.head_dim);
  std::vector<int32_t> pos(16);
  for (int i = 0; i < 16; ++i) pos[i] = int32_t(done[1] + i);
  const std::vector<KVAppend> appends = {{1, 16, pos}};
  for (int layer = 0; layer < cfg.n_layer; ++layer) kv.store(layer, appends, k, v);
  for (int l = 0; l < cfg.n_layer; ++l) {
    AttentionSeq a;
    kv.attention_view(l, 1, a);
    ASSERT_EQ(a.head_rows.size(), 2u);
    for (int h = 0; h < 2; ++h) {
      EXPECT_EQ(a.head_blocks[h].size(), 6u);
      EXPECT_EQ(a.head_rows[h], -1) << "6 blocks do not fit a place for 4: the ids travel";
    }
  }
  kv.commit(1);
  done[1] += 16;
  be.free(k);
  be.free(v);
  EXPECT_EQ(check_rows(be, kv, live), 3 * 4) << "evicted to 8 entries: back in its place";
  while (done[1] < prompt || done[2] < prompt || done[3] < prompt) {
    std::vector<std::pair<int64_t, int64_t>> items;
    for (int64_t id : live) {
      if (done[id] >= prompt || !kv.reserve_growth(id, 8)) continue;
      items.push_back({id, 8});
    }
    ASSERT_FALSE(items.empty());
    run_items(be, kv, items, done, prompt);
    EXPECT_EQ(check_rows(be, kv, live), 3 * 4) << "every head of every sequence, after eviction";
  }
  const int64_t writes_before_decode = be.writes;
  for (int step = 0; step < 9; ++step) {
    for (int64_t id : live) ASSERT_TRUE(kv.reserve_growth(id, 1));
    run_items(be, kv, {{1, 1}, {2, 1}, {3, 1}}, done, prompt);
    EXPECT_EQ(check_rows(be, kv, live), 3 * 4);
  }
  // Decode adds a block a head every 4 entries at most: few writes, not whole tables.
  EXPECT_LE(be.writes - writes_before_decode, 3 * 4 * 3);
  kv.remove_sequence(2);
  ASSERT_TRUE(kv.add_sequence(4, 12, c, 16));
  done[4] = 0;
  ASSERT_TRUE(kv.reserve_growth(4, 8));
  run_items(be, kv, {{4, 8}}, done, prompt);
  const std::vector<int64_t> now = {1, 3, 4};
  EXPECT_EQ(check_rows(be, kv, now), 3 * 4);
  for (int64_t id : now) kv.remove_sequence(id);
  EXPECT_EQ(kv.blocks().n_free(), cfg.n_blocks);
}
