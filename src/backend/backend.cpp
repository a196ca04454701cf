// Backend's defaults: pick sets made at once and kept on the host; rope and KV store as
// separate ops.
#include "backend/backend.h"

#include <algorithm>
#include <string>

#include "core/error.h"

namespace batchmax {
namespace {

std::vector<int32_t>& pick_set(std::vector<int32_t> (&sets)[2], int set) {
  if (set < 0 || set > 1) throw Error("backend: pick set " + std::to_string(set) + " is not 0 or 1");
  return sets[set];
}

}  // namespace

void Backend::sample_rows_kept(const Tensor& x, std::span<const float> inv_temperature,
                               std::span<const double> uniform, int set, int64_t first) {
  std::vector<int32_t>& p = pick_set(kept_picks_, set);
  if (first < 0) throw Error("backend: negative pick index");
  if (p.size() < size_t(first + x.rows)) p.resize(size_t(first + x.rows), -1);
  sample_rows(x, inv_temperature, uniform, p.data() + first);
}

void Backend::fetch_picks(int set, int64_t n, int32_t* out) {
  const std::vector<int32_t>& p = pick_set(kept_picks_, set);
  if (n < 0 || size_t(n) > p.size()) throw Error("backend: fetch of picks never made");
  std::copy(p.begin(), p.begin() + n, out);
}

void Backend::embed_with_picks(const Tensor& table, std::span<const int32_t> ids,
                               std::span<const int32_t> pick_index, int set, Tensor& out) {
  const std::vector<int32_t>& p = pick_set(kept_picks_, set);
  if (pick_index.size() != ids.size()) throw Error("backend: one pick index per id");
  std::vector<int32_t> resolved(ids.begin(), ids.end());
  for (size_t r = 0; r < ids.size(); ++r) {
    if (pick_index[r] < 0) continue;
    if (size_t(pick_index[r]) >= p.size()) throw Error("backend: embed of a pick never made");
    resolved[r] = p[size_t(pick_index[r])];
  }
  embed(table, resolved, out);
}

void check_kv_slot(const KVPoolView& p, int32_t slot, const char* op) {
  if (slot >= -1) {
    if (slot >= p.n_blocks * p.block_tokens)
      throw Error(std::string(op) + ": slot " + std::to_string(slot) + " is out of range");
    return;
  }
  if (!table_slot_codes_fit(p) || decode_table_slot(slot, p.block_tokens).place >= p.table_ints)
    throw Error(std::string(op) + ": slot code " + std::to_string(slot) +
                " names no place of the pool's table space");
}

void Backend::rope_kv_store(Tensor& q, int n_q_heads, Tensor& k, const Tensor& v, int n_kv_heads,
                            std::span<const int32_t> slots, std::span<const int32_t> pos,
                            const RopeParams& rope, KVPoolView& pool) {
  if (q.rows != k.rows || k.rows != int64_t(pos.size()))
    throw Error("backend: rope_kv_store: q, k and positions differ in rows");
  this->rope(q, n_q_heads, pos, rope);
  this->rope(k, n_kv_heads, pos, rope);
  kv_store(k, v, n_kv_heads, slots, pos, pool);
}

}  // namespace batchmax
