#include "backend/evict_work.h"

#include <climits>
#include <string>

#include "core/error.h"

namespace batchmax {

std::vector<size_t> evict_launch_ends(std::span<const EvictTask> tasks, int64_t keys_per_launch) {
  std::vector<size_t> ends;
  size_t end = 0;
  while (end < tasks.size()) {
    int64_t keys = 0;
    int count = 0;
    for (; end < tasks.size(); ++end) {
      const EvictTask& t = tasks[end];
      if (t.n_entries <= t.keep) continue;
      if (count > 0 && keys + t.n_entries > keys_per_launch) break;
      keys += t.n_entries;
      ++count;
    }
    if (count > 0) ends.push_back(end);
  }
  return ends;
}

EvictWork EvictWorkPacker::pack(std::span<const EvictTask> tasks, const KVPoolView& pool,
                                const Tensor* mass) {
  EvictWork w;
  for (const EvictTask& t : tasks) w.n_tasks += t.n_entries > t.keep;
  std::vector<int32_t>& m = meta_;
  m.clear();
  if (w.n_tasks == 0) return w;
  m.resize(size_t(w.n_tasks) * kEvictTaskInts);
  int i = 0;
  for (const EvictTask& t : tasks) {
    if (t.n_entries <= t.keep) continue;
    if (t.keep < 0 || int64_t(t.sinks) + t.window > t.keep || t.sinks < 0 || t.window < 0)
      throw Error("evict: keep must cover sinks + window");
    if (int64_t(t.n_entries) > int64_t(t.blocks.size()) * pool.block_tokens)
      throw Error("evict: more entries than the blocks hold");
    for (int32_t b : t.blocks)
      if (b < 0 || b >= pool.n_blocks)
        throw Error("evict: block " + std::to_string(b) + " is out of range [0, " +
                    std::to_string(pool.n_blocks) + ")");
    const bool needs_mass = t.score == EvictScore::Mass || t.score == EvictScore::PooledMass;
    if (int(t.score) < 0 || int(t.score) > 5) throw Error("evict: unknown score");
    if (t.score == EvictScore::Accumulated && !pool.mass)
      throw Error("evict: h2o needs a pool with slot mass");
    if (needs_mass && (!mass || mass->type != GgmlType::F32 || t.mass_row < 0 ||
                       t.mass_row >= mass->rows || t.n_entries > mass->cols ||
                       mass->row_stride % 4))
      throw Error("evict: the policy needs a mass row of the entries");
    if (needs_mass && (t.pool_kernel <= 0 || t.pool_kernel % 2 == 0))
      throw Error("evict: pool kernel must be odd");
    int32_t* r = m.data() + size_t(i++) * kEvictTaskInts;
    r[0] = int32_t(m.size());
    r[1] = t.n_entries;
    r[2] = t.keep;
    r[3] = needs_mass ? int32_t(t.mass_row) : -1;
    r[4] = int32_t(t.score);
    r[5] = t.pool_kernel / 2;
    r[6] = t.sinks;
    r[7] = t.window;
    r[8] = int32_t(uint32_t(t.seed));
    r[9] = int32_t(uint32_t(t.seed >> 32));
    r[10] = int32_t(w.keys);
    r[11] = 0;
    w.keys += t.n_entries;
    m.insert(m.end(), t.blocks.begin(), t.blocks.end());
  }
  if (m.size() > size_t(INT32_MAX) || w.keys > INT32_MAX) throw Error("evict: too many entries");
  return w;
}

}  // namespace batchmax
