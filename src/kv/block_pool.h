#pragma once
// A pool of fixed-size KV blocks (ids 0..n-1) with reservations: a sequence reserves
// its worst case on admission, then takes blocks from that reservation as it grows,
// so a running sequence can never run out of cache.
#include <cstdint>
#include <vector>

namespace batchmax {

class BlockPool {
 public:
  explicit BlockPool(int64_t n_blocks);

  int64_t n_blocks() const { return n_blocks_; }
  int64_t n_free() const { return int64_t(free_.size()); }
  int64_t n_used() const { return n_blocks_ - n_free(); }
  // Free blocks not promised to any reservation.
  int64_t n_unreserved() const { return n_free() - reserved_; }

  // Promises `n` blocks; false (and nothing changes) when fewer are unreserved.
  bool reserve(int64_t n);
  // Returns `n` promised-but-untaken blocks.
  void unreserve(int64_t n);
  // Takes one block out of a reservation.
  int32_t take_reserved();
  // Gives a block back to the free list (not to a reservation).
  void release(int32_t block);

 private:
  int64_t n_blocks_;
  int64_t reserved_ = 0;
  std::vector<int32_t> free_;
  std::vector<uint8_t> in_use_;  // catches double frees and foreign ids
};

}  // namespace batchmax
