#include "kv/block_pool.h"

#include <algorithm>
#include <string>

#include "core/error.h"

namespace batchmax {

BlockPool::BlockPool(int64_t n_blocks, int regions) : n_blocks_(n_blocks), n_free_(n_blocks) {
  if (n_blocks < 0 || n_blocks > INT32_MAX) throw Error("block pool: bad block count " + std::to_string(n_blocks));
  if (regions < 1) throw Error("block pool: bad region count " + std::to_string(regions));
  region_blocks_ = std::max<int64_t>(1, (n_blocks + regions - 1) / regions);
  free_.resize(size_t(regions));
  // Hand out low ids first: the pool's memory is touched from the start.
  for (int64_t i = n_blocks - 1; i >= 0; --i) free_[size_t(region_of(int32_t(i)))].push_back(int32_t(i));
  in_use_.assign(n_blocks, 0);
}

int BlockPool::region_of(int32_t block) const {
  return int(std::min<int64_t>(block / region_blocks_, int64_t(free_.size()) - 1));
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

int32_t BlockPool::take_reserved(int region) {
  if (reserved_ <= 0 || n_free_ <= 0) throw Error("block pool: take without a reservation");
  size_t r = size_t(region < 0 ? 0 : region) % free_.size();
  if (free_[r].empty())  // none left there: the region with the most free blocks
    for (size_t i = 0; i < free_.size(); ++i)
      if (free_[i].size() > free_[r].size()) r = i;
  --reserved_;
  --n_free_;
  const int32_t b = free_[r].back();
  free_[r].pop_back();
  in_use_[b] = 1;
  return b;
}

void BlockPool::release(int32_t block) {
  if (block < 0 || block >= n_blocks_ || !in_use_[block])
    throw Error("block pool: release of block " + std::to_string(block) + " that is not in use");
  in_use_[block] = 0;
  free_[size_t(region_of(block))].push_back(block);
  ++n_free_;
}

}  // namespace batchmax
