#include "backend/sdpa_groups.h"

#include <algorithm>

namespace batchmax {

int64_t round_up_pow2(int64_t v, int64_t lo) {
  int64_t r = lo;
  while (r < v) r *= 2;
  return r;
}

size_t dense_kv_bytes(int64_t entries, int64_t s_kv, int head_dim) {
  return size_t(entries) * size_t(s_kv) * size_t(head_dim) * 2 * 2;  // K and V, bf16
}

std::vector<SdpaGroup> sdpa_dense_groups(std::span<const int32_t> kv_entries, int head_dim,
                                         size_t cap, bool paged) {
  const int n = int(kv_entries.size());
  if (n == 0) return {};
  int64_t largest = 0;
  for (int32_t e : kv_entries) largest = std::max<int64_t>(largest, e);
  if (paged || dense_kv_bytes(1, round_up_pow2(largest, 64), head_dim) > cap) return {{0, n, 0}};
  std::vector<SdpaGroup> out;
  SdpaGroup g{0, 0, 0};
  int64_t max_e = 0;  // of the group so far
  for (int b = 0; b < n; ++b) {
    const int64_t with = std::max<int64_t>(max_e, kv_entries[b]);
    if (g.end > g.begin && dense_kv_bytes(g.end - g.begin + 1, round_up_pow2(with, 64), head_dim) > cap) {
      g.s_kv = round_up_pow2(max_e, 64);
      out.push_back(g);
      g = SdpaGroup{b, b, 0};
      max_e = 0;
    }
    max_e = std::max<int64_t>(max_e, kv_entries[b]);
    g.end = b + 1;
  }
  g.s_kv = round_up_pow2(max_e, 64);
  out.push_back(g);
  return out;
}

}  // namespace batchmax
