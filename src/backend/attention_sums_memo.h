// Which query rows the last attention call left log-sum-exp values for. The GPU's
// attention pass writes each query vector's sum; a scoring call right after it (what the
// eviction policies ask after each layer) over rows of the same sequences and the same
// cache entries can read those sums and run one pass over the keys instead of two.
// Plain C++, so the CPU build tests it.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "backend/backend.h"

namespace batchmax {

class AttentionSumsMemo {
 public:
  void clear();
  // The attention call over `seqs` (rows of the Q tensor at `q`) wrote its sums;
  // replaces what was remembered.
  void remember(const void* q, size_t q_row_stride, std::span<const AttentionSeq> seqs);
  // True when something is remembered for this Q tensor and every sequence of `seqs`
  // lies inside the rows of a remembered one that read the same number of entries from
  // the same first block in every KV head.
  bool covers(const void* q, size_t q_row_stride, std::span<const AttentionSeq> seqs) const;

 private:
  struct Seq {
    int64_t q_begin, n_q;
    size_t heads;  // its per-KV-head (entries, first block) pairs start at heads_[2 * heads]
    int n_heads;
  };
  bool matches(const Seq& r, const AttentionSeq& s) const;
  const void* q_ = nullptr;
  size_t q_row_stride_ = 0;
  // Flat and ordered by q_begin: a call over hundreds of sequences checks each in
  // O(log n) with no allocation (nested vectors and a scan cost ~0.1 ms a layer at 512).
  std::vector<Seq> seqs_;
  std::vector<int32_t> heads_;  // entries, first block (-1: none), per KV head
};

}  // namespace batchmax
