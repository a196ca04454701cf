#pragma once
// A pool of fixed-size KV blocks (ids 0..n-1) with reservations: a sequence reserves
// its worst case on admission, then takes blocks from that reservation as it grows,
// so a running sequence can never run out of cache.
//
// Ids are split into `regions` contiguous ranges, and a take names the region it wants
// (the KV cache: the block's layer). A layer's attention kernel then reads blocks from
// one slice of the pool instead of from all of it: with blocks taken for every layer in
// turn, each 2 MiB page of the pool held a few blocks of every layer, so one layer's
// decode kernel touched every page of the cache in use, more pages than the GPU's TLB
// maps at once (on an H100, decode attention over 512 sequences ran at ~47% of copy
// bandwidth: bench/results/block_regions_2026-11-28/).
#include <cstdint>
#include <vector>

namespace batchmax {

class BlockPool {
 public:
  explicit BlockPool(int64_t n_blocks, int regions = 1);

  int64_t n_blocks() const { return n_blocks_; }
  int64_t n_free() const { return n_free_; }
  int64_t n_used() const { return n_blocks_ - n_free(); }
  // Free blocks not promised to any reservation.
  int64_t n_unreserved() const { return n_free() - reserved_; }
  int regions() const { return int(free_.size()); }
  int region_of(int32_t block) const;

  // Promises `n` blocks; false (and nothing changes) when fewer are unreserved.
  bool reserve(int64_t n);
  // Returns `n` promised-but-untaken blocks.
  void unreserve(int64_t n);
  // Takes one block out of a reservation: from `region` (taken modulo regions()) while it
  // has free blocks, else from the region with the most free blocks.
  int32_t take_reserved(int region = 0);
  // Gives a block back to the free list of its region (not to a reservation).
  void release(int32_t block);

 private:
  int64_t n_blocks_;
  int64_t n_free_ = 0;
  int64_t reserved_ = 0;
  int64_t region_blocks_ = 0;                // ids per region (the last may hold fewer)
  std::vector<std::vector<int32_t>> free_;   // per region, low ids on top
  std::vector<uint8_t> in_use_;  // catches double frees and foreign ids
};

}  // namespace batchmax
