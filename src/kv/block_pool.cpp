#include "kv/block_pool.h"

#include <string>

#include "core/error.h"

namespace batchmax {

BlockPool::BlockPool(int64_t n_blocks) : n_blocks_(n_blocks) {
  if (n_blocks < 0 || n_blocks > INT32_MAX) throw Error("block pool: bad block count " + std::to_string(n_blocks));
  free_.reserve(n_blocks);
  // Hand out low ids first: the pool's memory is touched from the start.
  for (int64_t i = n_blocks - 1; i >= 0; --i) free_.push_back(int32_t(i));
  in_use_.assign(n_blocks, 0);
}

bool BlockPool::reserve(int64_t n) {
  if (n < 0 || n > n_unreserved()) return false;
  reserved_ += n;
  return true;
}

void BlockPool::unreserve(int64_t n) {
  if (n < 0 || n > reserved_) throw Error("block pool: unreserve of more blocks than reserved");
  reserved_ -= n;
}

int32_t BlockPool::take_reserved() {
  if (reserved_ <= 0 || free_.empty()) throw Error("block pool: take without a reservation");
  --reserved_;
  int32_t b = free_.back();
  free_.pop_back();
  in_use_[b] = 1;
  return b;
}

void BlockPool::release(int32_t block) {
  if (block < 0 || block >= n_blocks_ || !in_use_[block])
    throw Error("block pool: release of block " + std::to_string(block) + " that is not in use");
  in_use_[block] = 0;
  free_.push_back(block);
}

}  // namespace batchmax
