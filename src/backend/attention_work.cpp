#include "backend/attention_work.h"

#include <algorithm>
#include <climits>

#include "core/error.h"

namespace batchmax {

AttentionWorkCounts AttentionWorkPacker::pack(const AttentionWorkShape& shape,
                                              std::span<const AttentionSeq> seqs,
                                              const AttentionParams& p, int small, int big,
                                              int64_t small_max, const std::vector<char>* skip) {
  if (p.n_kv_heads <= 0 || p.n_heads % p.n_kv_heads)
    throw Error("attention: n_heads must be a multiple of n_kv_heads");
  if (shape.q_cols != int64_t(p.n_heads) * p.head_dim)
    throw Error("attention: q columns do not match the heads");
  if (shape.pool_head_dim != p.head_dim) throw Error("attention: pool head_dim differs");
  if (small <= 0 || big <= 0) throw Error("attention: query tiles must be positive");
  if (skip && skip->size() != seqs.size()) throw Error("attention: one skip flag per sequence");
  const int group = p.n_heads / p.n_kv_heads;
  const int n_seqs = int(seqs.size()), nkv = p.n_kv_heads;
  // Work items first: their count fixes where the per-sequence records start.
  std::vector<int32_t>& m = meta_;
  m.clear();
  big_items_.clear();
  int32_t max_small = 0;
  for (int s = 0; s < n_seqs; ++s) {
    const AttentionSeq& a = seqs[s];
    if (a.q_begin < 0 || a.n_q < 0 || a.q_begin + a.n_q > shape.q_rows)
      throw Error("attention: sequence rows outside q");
    if (int(a.head_blocks.size()) != nkv || int(a.head_entries.size()) != nkv ||
        (!a.head_rows.empty() && int(a.head_rows.size()) != nkv))
      throw Error("attention: one block table per KV head expected");
    if (skip && (*skip)[s]) continue;
    const int64_t n_vec = a.n_q * group;
    const bool is_small = n_vec <= small_max;
    const int tile = is_small ? small : big;
    if (is_small)
      for (int32_t e : a.head_entries) max_small = std::max(max_small, e);
    std::vector<int32_t>& list = is_small ? m : big_items_;
    const int64_t last = n_vec > 0 ? (n_vec - 1) / tile * tile : -1;
    for (int h = 0; h < nkv; ++h)
      for (int64_t v0 = last; v0 >= 0; v0 -= tile) list.insert(list.end(), {s, h, int32_t(v0), 0});
  }
  AttentionWorkCounts c;
  c.n_small = int(m.size() / 4);
  c.n_big = int(big_items_.size() / 4);
  c.n_seqs = n_seqs;
  c.max_small_entries = max_small;
  m.insert(m.end(), big_items_.begin(), big_items_.end());
  if (m.empty()) return c;
  const size_t seq_at = m.size(), head_at = seq_at + 4 * size_t(n_seqs);
  c.seq_at = int(seq_at);
  m.resize(head_at + 2 * size_t(n_seqs) * nkv);
  for (int s = 0; s < n_seqs; ++s) {
    const AttentionSeq& a = seqs[s];
    int32_t* rec = m.data() + seq_at + 4 * s;
    rec[0] = int32_t(a.q_begin);
    rec[1] = int32_t(a.n_q);
    rec[2] = int32_t(m.size());
    rec[3] = s * nkv;
    m.insert(m.end(), a.q_pos, a.q_pos + a.n_q);
    for (int h = 0; h < nkv; ++h) {
      const auto& blocks = a.head_blocks[h];
      if (a.head_entries[h] < 0 ||
          int64_t(a.head_entries[h]) > int64_t(blocks.size()) * shape.block_tokens)
        throw Error("attention: more entries than the block table holds");
      int32_t* hr = m.data() + head_at + 2 * (size_t(s) * nkv + h);
      hr[1] = a.head_entries[h];
      const int32_t row = shape.table_ints > 0 && !a.head_rows.empty() ? a.head_rows[h] : -1;
      if (row >= 0) {  // the pool's table space holds these ids (checked when written)
        if (int64_t(row) + int64_t(blocks.size()) > shape.table_ints)
          throw Error("attention: block table row outside the pool's table space");
        hr[0] = -1 - row;
        continue;
      }
      hr[0] = int32_t(m.size());
      for (int32_t b : blocks)
        if (b < 0 || b >= shape.pool_blocks) throw Error("attention: block id out of range");
      m.insert(m.end(), blocks.begin(), blocks.end());
    }
  }
  if (m.size() > size_t(INT32_MAX)) throw Error("attention: metadata too large");
  return c;
}

}  // namespace batchmax
