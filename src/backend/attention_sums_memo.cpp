#include "backend/attention_sums_memo.h"

#include <algorithm>

namespace batchmax {

void AttentionSumsMemo::clear() {
  q_ = nullptr;
  q_row_stride_ = 0;
  seqs_.clear();
}

void AttentionSumsMemo::remember(const void* q, size_t q_row_stride,
                                 std::span<const AttentionSeq> seqs) {
  clear();
  q_ = q;
  q_row_stride_ = q_row_stride;
  for (const AttentionSeq& a : seqs) {
    Seq r{a.q_begin, a.n_q, a.head_entries, {}};
    for (const auto& b : a.head_blocks) r.first_block.push_back(b.empty() ? -1 : b[0]);
    seqs_.push_back(std::move(r));
  }
}

bool AttentionSumsMemo::covers(const void* q, size_t q_row_stride,
                               std::span<const AttentionSeq> seqs) const {
  if (seqs_.empty() || q != q_ || q_row_stride != q_row_stride_) return false;
  for (const AttentionSeq& s : seqs) {
    const bool seen = std::any_of(seqs_.begin(), seqs_.end(), [&](const Seq& r) {
      if (s.q_begin < r.q_begin || s.q_begin + s.n_q > r.q_begin + r.n_q) return false;
      if (s.head_entries != r.entries || s.head_blocks.size() != r.first_block.size()) return false;
      for (size_t h = 0; h < s.head_blocks.size(); ++h)
        if ((s.head_blocks[h].empty() ? -1 : s.head_blocks[h][0]) != r.first_block[h]) return false;
      return true;
    });
    if (!seen) return false;
  }
  return true;
}

}  // namespace batchmax
