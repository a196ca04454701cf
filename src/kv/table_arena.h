#pragma once
// Where each sequence's block tables lie in the backend's table space
// (KVPoolView::tables): a first-fit allocator of int ranges with coalescing frees. Plain
// bookkeeping, no memory of its own; a sequence that finds no range keeps its tables on
// the host only (attention then sends their ids each call, as without the space).
#include <cstdint>
#include <map>

namespace batchmax {

class TableArena {
 public:
  explicit TableArena(int64_t capacity = 0);
  // The first free range of n ints, or -1 when none is that long.
  int64_t allocate(int64_t n);
  // Returns a range that allocate() gave (throws Error on one it did not).
  void release(int64_t at, int64_t n);
  int64_t capacity() const { return capacity_; }
  int64_t in_use() const { return in_use_; }

 private:
  int64_t capacity_ = 0, in_use_ = 0;
  std::map<int64_t, int64_t> free_;  // start -> length, disjoint and never adjacent
};

}  // namespace batchmax
