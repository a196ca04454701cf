// AttentionSumsMemo: a scoring call may reuse the attention pass's sums only for rows of
// the same Q tensor that read the same entries of the same tables.
#include <gtest/gtest.h>

#include "backend/attention_sums_memo.h"

namespace batchmax {
namespace {

struct Seqs {
  std::vector<std::vector<int32_t>> blocks = {{4, 9}, {7}};  // per KV head
  std::vector<AttentionSeq> seqs;
  // One sequence per (q_begin, n_q), each reading 20 and 10 entries of `blocks`.
  explicit Seqs(std::vector<std::pair<int64_t, int64_t>> rows) {
    for (auto [b, n] : rows) {
      AttentionSeq a;
      a.q_begin = b;
      a.n_q = n;
      for (const auto& t : blocks) a.head_blocks.emplace_back(t);
      a.head_entries = {20, 10};
      seqs.push_back(a);
    }
  }
};

TEST(AttentionSumsMemo, CoversRowsInsideARememberedSequence) {
  int q = 0;  // any address: the memo only compares it
  AttentionSumsMemo memo;
  Seqs attended({{0, 1}, {1, 64}});
  EXPECT_FALSE(memo.covers(&q, 256, attended.seqs)) << "nothing remembered yet";
  memo.remember(&q, 256, attended.seqs);
  EXPECT_TRUE(memo.covers(&q, 256, attended.seqs));
  EXPECT_TRUE(memo.covers(&q, 256, Seqs({{33, 32}}).seqs)) << "the chunk's last rows (SnapKV's window)";
  EXPECT_TRUE(memo.covers(&q, 256, Seqs({{0, 1}, {60, 5}}).seqs));
  EXPECT_FALSE(memo.covers(&q, 256, Seqs({{60, 6}}).seqs)) << "row 65 was not attended";
  EXPECT_FALSE(memo.covers(&q, 256, Seqs({{0, 2}}).seqs)) << "rows of two sequences";
  int other = 0;
  EXPECT_FALSE(memo.covers(&other, 256, attended.seqs)) << "another Q tensor";
  EXPECT_FALSE(memo.covers(&q, 512, attended.seqs)) << "another row stride";
  memo.clear();
  EXPECT_FALSE(memo.covers(&q, 256, attended.seqs));
}

TEST(AttentionSumsMemo, OtherEntriesOrTablesAreNotCovered) {
  int q = 0;
  AttentionSumsMemo memo;
  Seqs attended({{0, 16}});
  memo.remember(&q, 128, attended.seqs);

  Seqs more({{0, 16}});
  more.seqs[0].head_entries[1] = 11;  // an entry appended since
  EXPECT_FALSE(memo.covers(&q, 128, more.seqs));

  Seqs moved({{0, 16}});
  moved.blocks[0][0] = 5;  // the head's table starts elsewhere (compacted, reallocated)
  moved.seqs[0].head_blocks[0] = moved.blocks[0];
  EXPECT_FALSE(memo.covers(&q, 128, moved.seqs));

  Seqs fewer_heads({{0, 16}});
  fewer_heads.seqs[0].head_blocks.pop_back();
  EXPECT_FALSE(memo.covers(&q, 128, fewer_heads.seqs));

  memo.remember(&q, 128, Seqs({{100, 4}}).seqs);  // a new call replaces the old one
  EXPECT_FALSE(memo.covers(&q, 128, attended.seqs));
  EXPECT_TRUE(memo.covers(&q, 128, Seqs({{101, 3}}).seqs));
}

// A decode call over hundreds of sequences, remembered in any row order: each of them
// (or its last rows) is found, and one changed head anywhere is not covered.
TEST(AttentionSumsMemo, FindsEachOfManySequences) {
  int q = 0;
  std::vector<std::pair<int64_t, int64_t>> rows;
  for (int64_t s = 511; s >= 0; --s) rows.push_back({2 * s, 2});  // reverse row order
  Seqs attended(rows);
  AttentionSumsMemo memo;
  memo.remember(&q, 64, attended.seqs);
  EXPECT_TRUE(memo.covers(&q, 64, attended.seqs));
  std::vector<std::pair<int64_t, int64_t>> last_rows;
  for (int64_t s = 0; s < 512; s += 7) last_rows.push_back({2 * s + 1, 1});
  EXPECT_TRUE(memo.covers(&q, 64, Seqs(last_rows).seqs));
  Seqs changed(last_rows);
  changed.seqs[40].head_entries[0] = 21;
  EXPECT_FALSE(memo.covers(&q, 64, changed.seqs));
  EXPECT_FALSE(memo.covers(&q, 64, Seqs({{1023, 2}}).seqs)) << "past the last row";
  // Empty rows on the boundary of two sequences: either one holds them.
  EXPECT_TRUE(memo.covers(&q, 64, Seqs({{2, 0}}).seqs));
}

}  // namespace
}  // namespace batchmax
