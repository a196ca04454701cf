// The host side of the GPU attention kernels: one int32 buffer per call that says which
// CTA takes which (sequence, KV head, query tile) and where each sequence's rows,
// positions and block tables are. Plain C++, so the CPU build tests it.
//
// Layout of meta() (read by src/backend/cuda/attention_kernels.cu, flash_attention.cu and
// the scoring kernels):
//   work  [n_small + n_big][4]: sequence, KV head, first query vector, 0
//   seqs  [n_seqs][4] (from seq_at): q_begin, n_q, offset of its q_pos, first head record
//   heads [n_seqs * n_kv_heads][2]: where the head's block ids are, entries in use
//   then the q_pos and block id arrays the offsets point into. A head's ids are at
//   meta + at for at >= 0, and at tables + (-1 - at) (KVPoolView::tables) for a head the
//   pool's table space holds (AttentionSeq::head_rows), whose ids are not copied.
// Query vector v of a (sequence, KV head) is row v / group, query head v % group.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "backend/backend.h"

namespace batchmax {

// What the packer checks the call against.
struct AttentionWorkShape {
  int64_t q_rows = 0, q_cols = 0;  // the step's Q tensor
  int64_t pool_blocks = 0;         // blocks in the KV pool
  int block_tokens = 0;            // entries a block
  int pool_head_dim = 0;
  int64_t table_ints = 0;          // the pool's table space (0: none, every id is copied)
};

struct AttentionWorkCounts {
  int n_small = 0, n_big = 0;  // work items (CTAs) of the two lists, small tiles first
  int n_seqs = 0;
  int seq_at = 0;              // where the per-sequence records start (0 when no work)
  int32_t max_small_entries = 0;  // most entries of any KV head in the small list
};

class AttentionWorkPacker {
 public:
  // Packs one call. (sequence, KV head) pairs with at most `small_max` query vectors get
  // work items of `small` vectors, the others items of `big` vectors; within a pair the
  // later tiles come first (in a causal chunk they see the most keys, and the longest
  // CTAs should start first, not form the tail). Sequences marked in `skip` get no work
  // items (another path runs them) but keep their records. Throws Error on a call the
  // kernels cannot take: heads that do not group, rows outside Q, a table per KV head
  // missing, more entries than a table holds, block ids outside the pool.
  AttentionWorkCounts pack(const AttentionWorkShape& shape, std::span<const AttentionSeq> seqs,
                           const AttentionParams& p, int small, int big, int64_t small_max,
                           const std::vector<char>* skip = nullptr);
  // The buffer of the last pack() (empty when it had no work).
  std::span<const int32_t> meta() const { return meta_; }

 private:
  std::vector<int32_t> meta_, big_items_;
};

}  // namespace batchmax
