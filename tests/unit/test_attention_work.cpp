// AttentionWorkPacker: the metadata the GPU attention kernels read. The tests walk the
// buffer the way the kernels do (attention_work.h's layout) and check that every query
// vector of every (sequence, KV head) is covered by exactly one work item, on random
// calls, and that bad calls are refused with a clear error.
#include <gtest/gtest.h>

#include <map>
#include <random>
#include <string>

#include "backend/attention_work.h"
#include "core/error.h"

namespace batchmax {
namespace {

struct Call {
  AttentionParams p;
  int block_tokens = 16;
  int64_t pool_blocks = 64;
  int64_t q_rows = 0;
  int pool_head_dim = -1;  // -1: the heads' (a mismatch is an error)
  int64_t q_cols = -1;     // -1: heads x head_dim
  std::vector<std::vector<int32_t>> pos;                  // per sequence
  std::vector<std::vector<std::vector<int32_t>>> blocks;  // per sequence, per KV head
  std::vector<AttentionSeq> seqs;
  std::vector<int32_t> tables;  // the pool's table space, where heads_in_tables() put ids

  AttentionWorkShape shape() const {
    return {q_rows, q_cols < 0 ? int64_t(p.n_heads) * p.head_dim : q_cols, pool_blocks, block_tokens,
            pool_head_dim < 0 ? p.head_dim : pool_head_dim, int64_t(tables.size())};
  }
  // After bind(): about half the heads get their ids copied into `tables` and a row.
  void heads_in_tables(std::mt19937& rng) {
    for (size_t s = 0; s < seqs.size(); ++s) {
      seqs[s].head_rows.assign(blocks[s].size(), -1);
      for (size_t h = 0; h < blocks[s].size(); ++h) {
        if (rng() % 2) continue;
        seqs[s].head_rows[h] = int32_t(tables.size() + rng() % 3);
        tables.resize(size_t(seqs[s].head_rows[h]), -5);
        tables.insert(tables.end(), blocks[s][h].begin(), blocks[s][h].end());
      }
    }
  }
  // Sequences of n_q rows each, one after the other in Q; every head holds `entries`.
  void add(int64_t n_q, std::vector<int32_t> entries, std::mt19937& rng) {
    AttentionSeq a;
    a.q_begin = q_rows;
    a.n_q = n_q;
    q_rows += n_q;
    pos.emplace_back();
    for (int64_t i = 0; i < n_q; ++i) pos.back().push_back(int32_t(rng() % 5000));
    blocks.emplace_back();
    for (int32_t e : entries) {
      std::vector<int32_t> b;
      for (int32_t i = 0; i < (e + block_tokens - 1) / block_tokens; ++i)
        b.push_back(int32_t(rng() % pool_blocks));
      blocks.back().push_back(b);
    }
    a.head_entries = entries;
    seqs.push_back(a);
  }
  // Spans into pos/blocks, taken once every sequence is added (vectors stop moving).
  void bind() {
    for (size_t s = 0; s < seqs.size(); ++s) {
      seqs[s].q_pos = pos[s].data();
      seqs[s].head_blocks.clear();
      for (const auto& b : blocks[s]) seqs[s].head_blocks.emplace_back(b);
    }
  }
};

AttentionParams params(int n_heads, int n_kv_heads, int head_dim) {
  AttentionParams p;
  p.n_heads = n_heads;
  p.n_kv_heads = n_kv_heads;
  p.head_dim = head_dim;
  p.scale = 1.0f;
  return p;
}

// Reads the buffer as the kernels do and checks it against the call: records, positions,
// block tables, and that the work items tile each (sequence, KV head) exactly once, later
// tiles first, small-list items before big ones.
void check_layout(const Call& c, const AttentionWorkCounts& n, std::span<const int32_t> m,
                  int small, int big, int64_t small_max, const std::vector<char>* skip) {
  const int nkv = c.p.n_kv_heads, group = c.p.n_heads / nkv, n_seqs = int(c.seqs.size());
  ASSERT_EQ(n.n_seqs, n_seqs);
  ASSERT_EQ(n.seq_at, 4 * (n.n_small + n.n_big));
  std::map<std::pair<int, int>, std::vector<int32_t>> starts;  // (seq, head) -> first vectors
  for (int w = 0; w < n.n_small + n.n_big; ++w) {
    const int32_t* it = m.data() + 4 * w;
    ASSERT_GE(it[0], 0);
    ASSERT_LT(it[0], n_seqs);
    ASSERT_GE(it[1], 0);
    ASSERT_LT(it[1], nkv);
    EXPECT_EQ(it[3], 0);
    const AttentionSeq& a = c.seqs[size_t(it[0])];
    const bool is_small = a.n_q * group <= small_max;
    EXPECT_EQ(is_small, w < n.n_small) << "item " << w << ": small items come first";
    EXPECT_EQ(it[2] % (is_small ? small : big), 0);
    starts[{it[0], it[1]}].push_back(it[2]);
  }
  int32_t max_small = 0;  // over the small list's sequences (scratch for split keys)
  for (size_t s = 0; s < c.seqs.size(); ++s)
    if (!(skip && (*skip)[s]) && c.seqs[s].n_q * group <= small_max)
      for (int32_t e : c.seqs[s].head_entries) max_small = std::max(max_small, e);
  EXPECT_EQ(n.max_small_entries, max_small);
  for (int s = 0; s < n_seqs; ++s) {
    const AttentionSeq& a = c.seqs[size_t(s)];
    const int64_t n_vec = a.n_q * group;
    const int tile = n_vec <= small_max ? small : big;
    for (int h = 0; h < nkv; ++h) {
      std::vector<int32_t> want;
      if (!(skip && (*skip)[size_t(s)]))
        for (int64_t v0 = n_vec > 0 ? (n_vec - 1) / tile * tile : -1; v0 >= 0; v0 -= tile)
          want.push_back(int32_t(v0));
      const auto it = starts.find({s, h});
      EXPECT_EQ(it == starts.end() ? std::vector<int32_t>{} : it->second, want)
          << "sequence " << s << " head " << h;
    }
    if (m.empty()) continue;
    const int32_t* rec = m.data() + n.seq_at + 4 * s;
    EXPECT_EQ(rec[0], a.q_begin);
    EXPECT_EQ(rec[1], a.n_q);
    ASSERT_LE(size_t(rec[2]) + size_t(a.n_q), m.size());
    EXPECT_TRUE(std::equal(a.q_pos, a.q_pos + a.n_q, m.data() + rec[2]));
    for (int h = 0; h < nkv; ++h) {
      const int32_t* hr = m.data() + n.seq_at + 4 * n_seqs + 2 * (rec[3] + h);
      EXPECT_EQ(hr[1], a.head_entries[size_t(h)]);
      const auto& b = a.head_blocks[size_t(h)];
      if (!a.head_rows.empty() && a.head_rows[size_t(h)] >= 0) {  // read from the table space
        EXPECT_EQ(hr[0], -1 - a.head_rows[size_t(h)]) << "sequence " << s << " head " << h;
        ASSERT_LE(size_t(a.head_rows[size_t(h)]) + b.size(), c.tables.size());
        EXPECT_TRUE(std::equal(b.begin(), b.end(), c.tables.data() + a.head_rows[size_t(h)]));
        continue;
      }
      ASSERT_GE(hr[0], 0);
      ASSERT_LE(size_t(hr[0]) + b.size(), m.size());
      EXPECT_TRUE(std::equal(b.begin(), b.end(), m.data() + hr[0]));
    }
  }
}

TEST(AttentionWork, DecodeAndPrefillRowsInTheirLists) {
  std::mt19937 rng(7);
  Call c;
  c.p = params(6, 2, 8);  // group 3
  c.add(1, {40, 33}, rng);  // decode: 3 vectors a head, small list
  c.add(5, {70, 70}, rng);  // prefill: 15 vectors a head, big list in tiles of 4
  c.bind();
  AttentionWorkPacker packer;
  const AttentionWorkCounts n = packer.pack(c.shape(), c.seqs, c.p, 4, 4, 4);
  EXPECT_EQ(n.n_small, 2);
  EXPECT_EQ(n.n_big, 2 * 4);
  EXPECT_EQ(n.max_small_entries, 40);
  const std::span<const int32_t> m = packer.meta();
  // The prefill sequence's first head: tiles 12, 8, 4, 0 (the later ones first).
  const std::vector<int32_t> first_big(m.begin() + 8, m.begin() + 8 + 16);
  EXPECT_EQ(first_big, (std::vector<int32_t>{1, 0, 12, 0, 1, 0, 8, 0, 1, 0, 4, 0, 1, 0, 0, 0}));
  check_layout(c, n, m, 4, 4, 4, nullptr);
}

TEST(AttentionWork, RandomCallsTileEveryVectorOnce) {
  std::mt19937 rng(1234);
  AttentionWorkPacker packer;  // reused: each pack starts clean
  for (int trial = 0; trial < 200; ++trial) {
    const int nkv = 1 + int(rng() % 4), group = 1 + int(rng() % 4);
    Call c;
    c.p = params(nkv * group, nkv, 8 * (1 + int(rng() % 4)));
    c.block_tokens = 1 << (rng() % 5);
    const int n_seqs = 1 + int(rng() % 6);
    for (int s = 0; s < n_seqs; ++s) {
      const int64_t n_q = rng() % 3 == 0 ? int64_t(rng() % 40) : 1;
      std::vector<int32_t> entries;
      for (int h = 0; h < nkv; ++h) entries.push_back(int32_t(rng() % 300));
      c.add(n_q, entries, rng);
    }
    c.bind();
    if (trial % 3 == 0) c.heads_in_tables(rng);
    const int small = 1 + int(rng() % 8), big = 1 + int(rng() % 32);
    const int64_t small_max = rng() % 2 ? small : INT64_MAX;
    std::vector<char> skip(static_cast<size_t>(n_seqs), 0);
    for (auto& f : skip) f = char(rng() % 4 == 0);
    const std::vector<char>* sk = trial % 2 ? &skip : nullptr;
    const AttentionWorkCounts n = packer.pack(c.shape(), c.seqs, c.p, small, big, small_max, sk);
    check_layout(c, n, packer.meta(), small, big, small_max, sk);
    if (HasFatalFailure() || HasFailure()) {
      ADD_FAILURE() << "trial " << trial;
      return;
    }
  }
}

TEST(AttentionWork, SkippedSequencesOnlyMeansNoWork) {
  std::mt19937 rng(3);
  Call c;
  c.p = params(4, 2, 16);
  c.add(8, {20, 20}, rng);
  c.bind();
  AttentionWorkPacker packer;
  const std::vector<char> all = {1};
  const AttentionWorkCounts n = packer.pack(c.shape(), c.seqs, c.p, 4, 16, 4, &all);
  EXPECT_EQ(n.n_small + n.n_big, 0);
  EXPECT_EQ(n.seq_at, 0);
  EXPECT_TRUE(packer.meta().empty());
}

// Heads the pool's table space holds send only their row: a 512-sequence decode call
// carries records, not ids. Without table space, the rows are ignored and ids copied.
TEST(AttentionWork, HeadsInTheTableSpaceSendNoIds) {
  std::mt19937 rng(11);
  Call c;
  c.p = params(32, 8, 128);
  for (int s = 0; s < 64; ++s) c.add(1, std::vector<int32_t>(8, 576), rng);
  c.bind();
  AttentionWorkPacker packer;
  const AttentionWorkCounts copied = packer.pack(c.shape(), c.seqs, c.p, 16, 16, 16);
  const size_t copied_ints = packer.meta().size();
  for (size_t s = 0; s < c.seqs.size(); ++s) {
    c.seqs[s].head_rows.clear();
    for (size_t h = 0; h < 8; ++h) {
      c.seqs[s].head_rows.push_back(int32_t(c.tables.size()));
      c.tables.insert(c.tables.end(), c.blocks[s][h].begin(), c.blocks[s][h].end());
    }
  }
  const AttentionWorkCounts n = packer.pack(c.shape(), c.seqs, c.p, 16, 16, 16);
  check_layout(c, n, packer.meta(), 16, 16, 16, nullptr);
  EXPECT_EQ(copied_ints - packer.meta().size(), size_t(64 * 8 * 36)) << "no block id copied";
  // No table space: the rows mean nothing, every id is copied.
  std::vector<int32_t> kept = std::move(c.tables);
  c.tables.clear();
  packer.pack(c.shape(), c.seqs, c.p, 16, 16, 16);
  EXPECT_EQ(packer.meta().size(), copied_ints);
  EXPECT_EQ(copied.n_small, n.n_small);
  // A row past the table space is refused, naming it.
  c.tables = kept;
  c.tables.resize(c.tables.size() - 1);
  try {
    packer.pack(c.shape(), c.seqs, c.p, 16, 16, 16);
    ADD_FAILURE() << "a row past the table space was packed";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("table space"), std::string::npos) << e.what();
  }
}

std::string pack_error(Call c, int small = 4, int big = 16, const std::vector<char>* skip = nullptr) {
  c.bind();
  AttentionWorkPacker packer;
  try {
    packer.pack(c.shape(), c.seqs, c.p, small, big, 4, skip);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

TEST(AttentionWork, BadCallsNameTheProblem) {
  std::mt19937 rng(5);
  Call good;
  good.p = params(4, 2, 16);
  good.pool_blocks = 8;
  good.add(3, {40, 40}, rng);
  EXPECT_EQ(pack_error(good), "");

  Call c = good;
  c.p.n_kv_heads = 3;  // 4 heads do not group into 3
  EXPECT_NE(pack_error(c).find("multiple of n_kv_heads"), std::string::npos);
  c = good;
  c.q_rows = 2;  // the sequence's 3 rows pass the end of Q
  EXPECT_NE(pack_error(c).find("rows outside q"), std::string::npos);
  c = good;
  c.blocks[0].pop_back();  // a KV head without its table
  EXPECT_NE(pack_error(c).find("one block table per KV head"), std::string::npos);
  c = good;
  c.seqs[0].head_entries[1] = 40 + c.block_tokens * 8;  // more entries than 3 blocks hold
  EXPECT_NE(pack_error(c).find("more entries than the block table holds"), std::string::npos);
  c = good;
  c.blocks[0][0][0] = 8;  // the pool has blocks 0..7
  EXPECT_NE(pack_error(c).find("block id out of range"), std::string::npos);
  c = good;
  c.blocks[0][1][0] = -1;
  EXPECT_NE(pack_error(c).find("block id out of range"), std::string::npos);
  c = good;
  c.pool_head_dim = 8;  // the pool holds other heads than Q's
  EXPECT_NE(pack_error(c).find("pool head_dim differs"), std::string::npos);
  c = good;
  c.q_cols = 4 * 16 + 1;
  EXPECT_NE(pack_error(c).find("q columns do not match"), std::string::npos);
  const std::vector<char> two = {0, 0};
  EXPECT_NE(pack_error(good, 4, 16, &two).find("one skip flag per sequence"), std::string::npos);
  EXPECT_NE(pack_error(good, 0, 16).find("tiles must be positive"), std::string::npos);
}

}  // namespace
}  // namespace batchmax
