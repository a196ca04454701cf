#include "kv/table_arena.h"

#include <iterator>

#include "core/error.h"

namespace batchmax {

TableArena::TableArena(int64_t capacity) : capacity_(capacity) {
  if (capacity < 0) throw Error("table arena: negative capacity");
  if (capacity > 0) free_[0] = capacity;
}

int64_t TableArena::allocate(int64_t n) {
  if (n <= 0) throw Error("table arena: a range must hold at least one int");
  for (auto it = free_.begin(); it != free_.end(); ++it) {
    if (it->second < n) continue;
    const int64_t at = it->first, left = it->second - n;
    free_.erase(it);
    if (left > 0) free_[at + n] = left;
    in_use_ += n;
    return at;
  }
  return -1;
}

void TableArena::release(int64_t at, int64_t n) {
  if (n <= 0 || at < 0 || at + n > capacity_) throw Error("table arena: release outside the space");
  const int64_t released = n;
  auto next = free_.lower_bound(at);
  if (next != free_.end() && next->first < at + n) throw Error("table arena: release of a free range");
  if (next != free_.begin()) {
    auto prev = std::prev(next);
    if (prev->first + prev->second > at) throw Error("table arena: release of a free range");
    if (prev->first + prev->second == at) {  // merge with the range before
      at = prev->first;
      n += prev->second;
      free_.erase(prev);
    }
  }
  if (next != free_.end() && next->first == at + n) {  // and with the one after
    n += next->second;
    free_.erase(next);
  }
  free_[at] = n;
  in_use_ -= released;
}

}  // namespace batchmax
