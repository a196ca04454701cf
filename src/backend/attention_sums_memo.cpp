#include "backend/attention_sums_memo.h"

#include <algorithm>

namespace batchmax {

void AttentionSumsMemo::clear() {
  q_ = nullptr;
  q_row_stride_ = 0;
  seqs_.clear();
  heads_.clear();
}

void AttentionSumsMemo::remember(const void* q, size_t q_row_stride,
                                 std::span<const AttentionSeq> seqs) {
  clear();
  q_ = q;
  q_row_stride_ = q_row_stride;
  for (const AttentionSeq& a : seqs) {
    seqs_.push_back({a.q_begin, a.n_q, heads_.size() / 2, int(a.head_blocks.size())});
    for (size_t h = 0; h < a.head_blocks.size(); ++h) {
      heads_.push_back(h < a.head_entries.size() ? a.head_entries[h] : -1);
      heads_.push_back(a.head_blocks[h].empty() ? -1 : a.head_blocks[h][0]);
    }
  }
  if (!std::is_sorted(seqs_.begin(), seqs_.end(),
                      [](const Seq& x, const Seq& y) { return x.q_begin < y.q_begin; }))
    std::stable_sort(seqs_.begin(), seqs_.end(),
                     [](const Seq& x, const Seq& y) { return x.q_begin < y.q_begin; });
}

bool AttentionSumsMemo::matches(const Seq& r, const AttentionSeq& s) const {
  if (s.q_begin < r.q_begin || s.q_begin + s.n_q > r.q_begin + r.n_q) return false;
  if (s.head_blocks.size() != size_t(r.n_heads) || s.head_entries.size() != size_t(r.n_heads))
    return false;
  const int32_t* h = heads_.data() + 2 * r.heads;
  for (int i = 0; i < r.n_heads; ++i)
    if (s.head_entries[i] != h[2 * i] ||
        (s.head_blocks[i].empty() ? -1 : s.head_blocks[i][0]) != h[2 * i + 1])
      return false;
  return true;
}

bool AttentionSumsMemo::covers(const void* q, size_t q_row_stride,
                               std::span<const AttentionSeq> seqs) const {
  if (seqs_.empty() || q != q_ || q_row_stride != q_row_stride_) return false;
  for (const AttentionSeq& s : seqs) {
    // The remembered sequence that starts last at or before s; rows of one call do not
    // overlap, so only it can hold s (empty rows on a boundary: scan them all).
    auto it = std::upper_bound(seqs_.begin(), seqs_.end(), s.q_begin,
                               [](int64_t b, const Seq& r) { return b < r.q_begin; });
    if (it != seqs_.begin() && matches(*std::prev(it), s)) continue;
    if (!std::any_of(seqs_.begin(), seqs_.end(), [&](const Seq& r) { return matches(r, s); }))
      return false;
  }
  return true;
}

}  // namespace batchmax
