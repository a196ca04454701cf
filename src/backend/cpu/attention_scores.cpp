#include "backend/cpu/attention_scores.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "core/error.h"

namespace batchmax::cpu {
namespace {

// Copies an entry's K (or V) row to floats whatever the pool's storage type.
void load_row(const KVPoolView& pool, const void* base, int64_t slot, float* dst) {
  const int hd = pool.head_dim;
  if (pool.type == GgmlType::F32) {
    const float* src = static_cast<const float*>(base) + slot * hd;
    std::copy(src, src + hd, dst);
  } else if (pool.type == GgmlType::F16) {
    const uint16_t* src = static_cast<const uint16_t*>(base) + slot * hd;
    for (int d = 0; d < hd; ++d) dst[d] = fp16_to_fp32(src[d]);
  } else {
    throw Error("cpu backend: KV pool type " + type_name(pool.type) + " is not supported");
  }
}

int64_t slot_of(std::span<const int32_t> blocks, int bt, int64_t e) {
  return int64_t(blocks[e / bt]) * bt + e % bt;
}

}  // namespace

void attention_scores_seq(const Tensor& q, const AttentionSeq& s, const AttentionParams& p,
                          const KVPoolView& pool, int g0, int g1, float* out, int64_t stride) {
  const int hd = p.head_dim, group = p.n_heads / p.n_kv_heads, bt = pool.block_tokens;
  std::vector<float> keys, logits;
  for (int g = g0; g < g1; ++g) {
    const int64_t n = s.head_entries[g];
    float* row_out = out + g * stride;
    std::fill(row_out, row_out + n, 0.0f);
    if (n == 0) continue;
    // Keys of this head once, reused by every observed query of the group.
    keys.resize(size_t(n) * hd);
    std::vector<int32_t> kpos(n);
    for (int64_t e = 0; e < n; ++e) {
      int64_t slot = slot_of(s.head_blocks[g], bt, e);
      load_row(pool, pool.k, slot, &keys[size_t(e) * hd]);
      kpos[e] = pool.pos[slot];
    }
    logits.resize(n);
    for (int64_t r = 0; r < s.n_q; ++r) {
      const int32_t qp = s.q_pos[r];
      for (int hh = 0; hh < group; ++hh) {
        const float* qv = q.row_f32(s.q_begin + r) + size_t(g * group + hh) * hd;
        float mx = -INFINITY;
        for (int64_t e = 0; e < n; ++e) {
          if (kpos[e] > qp) { logits[e] = -INFINITY; continue; }
          float dot = 0;
          for (int d = 0; d < hd; ++d) dot += qv[d] * keys[size_t(e) * hd + d];
          logits[e] = dot * p.scale;
          mx = std::max(mx, logits[e]);
        }
        if (mx == -INFINITY) continue;
        double sum = 0;
        for (int64_t e = 0; e < n; ++e) sum += logits[e] == -INFINITY ? 0.0 : std::exp(double(logits[e] - mx));
        const double lse = double(mx) + std::log(sum);
        for (int64_t e = 0; e < n; ++e)
          if (logits[e] != -INFINITY) row_out[e] += float(std::exp(double(logits[e]) - lse) / group);
      }
    }
  }
}

void key_norms(const KVPoolView& pool, std::span<const int32_t> blocks, int64_t n_entries,
               float* out) {
  std::vector<float> k(pool.head_dim);
  for (int64_t e = 0; e < n_entries; ++e) {
    load_row(pool, pool.k, slot_of(blocks, pool.block_tokens, e), k.data());
    double s = 0;
    for (float x : k) s += double(x) * x;
    out[e] = float(std::sqrt(s));
  }
}

}  // namespace batchmax::cpu
