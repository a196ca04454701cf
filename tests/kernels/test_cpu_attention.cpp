// Paged attention and the KV pool ops: reference attention against a dense softmax built
// from the test's own copy of the data, and the backends against the reference, with
// GQA, several sequences, shuffled block tables, partial last blocks and position gaps.
#include <gtest/gtest.h>

#include <algorithm>
#include <numeric>

#include "backend/cpu/cpu_backend.h"
#include "backend/cpu/kernels_ref.h"
#include "core/error.h"
#include "kernel_test_util.h"

namespace batchmax::test {
namespace {

constexpr double kRefVsDenseBound = 1e-6;      // both accumulate in double
constexpr double kAttentionBound = 2e-5;       // float online softmax vs double reference
constexpr double kAttentionF16Bound = 2e-5;    // same data read through F16 storage

// The entries of one (sequence, KV head) as the test made them.
struct HeadData {
  std::vector<int32_t> blocks;
  std::vector<int32_t> pos;      // per entry
  std::vector<float> k, v;       // entries x head_dim
};

struct Case {
  int n_heads, n_kv_heads, head_dim, block_tokens;
  std::vector<std::vector<HeadData>> heads;  // [seq][kv head]
  std::vector<std::vector<int32_t>> q_pos;   // [seq]
  std::vector<AttentionSeq> seqs;
  HostTensor q;
  int64_t n_blocks;
};

// Sequences of the given entry counts and query counts. Blocks come from one shuffled
// list of all pool blocks, so each head's table is non-contiguous; positions grow with
// random gaps (as after eviction) and differ per KV head; the queries sit at positions
// among the last entries, so some keys are masked for the earlier queries.
Case make_case(Rng& rng, int n_heads, int n_kv_heads, int head_dim, int block_tokens,
               const std::vector<std::pair<int, int>>& entries_and_queries) {
  Case c{n_heads, n_kv_heads, head_dim, block_tokens, {}, {}, {}, {}, 0};
  int64_t need = 0;
  for (auto [e, qn] : entries_and_queries) need += int64_t(n_kv_heads) * ((e + 4 + block_tokens - 1) / block_tokens);
  c.n_blocks = need + 3;
  std::vector<int32_t> free_blocks(c.n_blocks);
  std::iota(free_blocks.begin(), free_blocks.end(), 0);
  std::shuffle(free_blocks.begin(), free_blocks.end(), rng.gen);
  int64_t total_q = 0;
  for (auto [e, qn] : entries_and_queries) total_q += qn;
  c.q = HostTensor::f32(total_q, int64_t(n_heads) * head_dim, rng, 0, -2, 2);
  int64_t q_row = 0;
  for (auto [entries, n_q] : entries_and_queries) {
    std::vector<HeadData> hs(n_kv_heads);
    int max_pos = 0;
    for (int h = 0; h < n_kv_heads; ++h) {
      const int e = std::max(0, entries - rng.uniform_int(0, 3));  // heads may differ in count
      HeadData& hd = hs[h];
      for (int b = 0; b < (e + block_tokens - 1) / block_tokens; ++b) {
        hd.blocks.push_back(free_blocks.back());
        free_blocks.pop_back();
      }
      int p = rng.uniform_int(0, 5);
      for (int i = 0; i < e; ++i) {
        hd.pos.push_back(p);
        p += rng.uniform_int(0, 9) < 7 ? 1 : rng.uniform_int(2, 20);
      }
      max_pos = std::max(max_pos, p);
      hd.k = rng.floats(size_t(e) * head_dim, -1.5f, 1.5f);
      hd.v = rng.floats(size_t(e) * head_dim);
    }
    std::vector<int32_t> qp(n_q);
    for (int i = 0; i < n_q; ++i) qp[i] = max_pos - n_q + i + rng.uniform_int(-3, 1);
    if (n_q > 1) qp[0] = -1;  // sees no key at all: the output must be zeros
    c.heads.push_back(std::move(hs));
    c.q_pos.push_back(std::move(qp));
    AttentionSeq s;
    s.q_begin = q_row;
    s.n_q = n_q;
    q_row += n_q;
    c.seqs.push_back(s);
  }
  for (size_t i = 0; i < c.seqs.size(); ++i) {
    c.seqs[i].q_pos = c.q_pos[i].data();
    for (const HeadData& hd : c.heads[i]) {
      c.seqs[i].head_blocks.emplace_back(hd.blocks);
      c.seqs[i].head_entries.push_back(int32_t(hd.pos.size()));
    }
  }
  return c;
}

// Writes the case's K/V through the block tables, straight into the pool's memory.
void fill_pool(const Case& c, KVPoolView& pool) {
  for (const auto& hs : c.heads)
    for (const HeadData& hd : hs)
      for (size_t e = 0; e < hd.pos.size(); ++e) {
        const int64_t slot = int64_t(hd.blocks[e / c.block_tokens]) * c.block_tokens + e % c.block_tokens;
        pool.pos[slot] = hd.pos[e];
        for (int i = 0; i < c.head_dim; ++i) {
          const float kv = hd.k[e * c.head_dim + i], vv = hd.v[e * c.head_dim + i];
          if (pool.type == GgmlType::F32) {
            static_cast<float*>(pool.k)[slot * c.head_dim + i] = kv;
            static_cast<float*>(pool.v)[slot * c.head_dim + i] = vv;
          } else {
            static_cast<uint16_t*>(pool.k)[slot * c.head_dim + i] = fp32_to_fp16(kv);
            static_cast<uint16_t*>(pool.v)[slot * c.head_dim + i] = fp32_to_fp16(vv);
          }
        }
      }
}

// Dense softmax over the test's own arrays (no block tables involved).
std::vector<float> dense_attention(const Case& c, float scale) {
  const int group = c.n_heads / c.n_kv_heads, hd = c.head_dim;
  std::vector<float> out(c.q.t.rows * c.q.t.cols, 0.0f);
  for (size_t si = 0; si < c.seqs.size(); ++si)
    for (int64_t r = 0; r < c.seqs[si].n_q; ++r)
      for (int h = 0; h < c.n_heads; ++h) {
        const HeadData& kv = c.heads[si][h / group];
        const float* qv = c.q.t.row_f32(c.seqs[si].q_begin + r) + h * hd;
        std::vector<double> w(kv.pos.size(), 0.0);
        double mx = -1e300;
        for (size_t e = 0; e < kv.pos.size(); ++e) {
          if (kv.pos[e] > c.q_pos[si][r]) continue;
          double d = 0;
          for (int i = 0; i < hd; ++i) d += double(qv[i]) * kv.k[e * hd + i];
          w[e] = d * scale;
          mx = std::max(mx, w[e]);
        }
        double sum = 0;
        for (size_t e = 0; e < kv.pos.size(); ++e)
          sum += (w[e] = kv.pos[e] > c.q_pos[si][r] ? 0.0 : std::exp(w[e] - mx));
        float* o = out.data() + (c.seqs[si].q_begin + r) * c.q.t.cols + h * hd;
        for (int i = 0; i < hd; ++i) {
          double a = 0;
          for (size_t e = 0; e < kv.pos.size(); ++e) a += w[e] * kv.v[e * hd + i];
          o[i] = sum > 0 ? float(a / sum) : 0.0f;
        }
      }
  return out;
}

struct Config {
  int n_heads, n_kv_heads, head_dim, block_tokens;
  std::vector<std::pair<int, int>> seqs;  // (entries, queries)
};

const Config kConfigs[] = {
    {9, 3, 64, 16, {{1, 1}, {37, 17}, {70, 5}, {16, 1}}},  // SmolLM2 heads, decode + prefill
    {4, 4, 32, 5, {{23, 3}, {5, 5}}},                      // MHA, odd block size
    {8, 1, 128, 16, {{100, 40}}},                          // MQA, long prefill
    {6, 2, 8, 3, {{0, 1}, {7, 2}}},                        // an empty sequence
    {2, 1, 12, 4, {{9, 4}}},                               // head_dim not a multiple of 8
};

TEST(CpuAttention, ReferenceMatchesDenseSoftmax) {
  const uint32_t seed = fresh_seed();
  SCOPED_TRACE("seed=" + std::to_string(seed));
  Rng rng(seed);
  auto be = make_cpu_backend({1, true});
  for (const Config& cfg : kConfigs) {
    Case c = make_case(rng, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, cfg.block_tokens, cfg.seqs);
    KVPoolView pool = be->alloc_kv_pool(GgmlType::F32, c.n_blocks, c.block_tokens, c.head_dim);
    fill_pool(c, pool);
    const AttentionParams p{c.n_heads, c.n_kv_heads, c.head_dim, 1.0f / std::sqrt(float(c.head_dim))};
    HostTensor out(GgmlType::F32, c.q.t.rows, c.q.t.cols);
    out.fill(NAN);
    cpu::ref::attention(c.q.t, c.seqs, p, pool, out.t);
    const std::vector<float> dense = dense_attention(c, p.scale);
    ASSERT_TRUE(all_finite(out.values()));
    EXPECT_LE(rel_err(out.values(), dense), kRefVsDenseBound) << "heads=" << c.n_heads << " hd=" << c.head_dim;
    be->free_kv_pool(pool);
  }
}

TEST(CpuAttention, BackendsMatchReference) {
  const uint32_t seed = fresh_seed();
  SCOPED_TRACE("seed=" + std::to_string(seed));
  Rng rng(seed);
  auto fast = make_cpu_backend({2, false});
  auto scalar = make_cpu_backend({2, true});
  for (GgmlType type : {GgmlType::F32, GgmlType::F16})
    for (const Config& cfg : kConfigs) {
      Case c = make_case(rng, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, cfg.block_tokens, cfg.seqs);
      KVPoolView pool = fast->alloc_kv_pool(type, c.n_blocks, c.block_tokens, c.head_dim);
      fill_pool(c, pool);
      const AttentionParams p{c.n_heads, c.n_kv_heads, c.head_dim, 1.0f / std::sqrt(float(c.head_dim))};
      HostTensor ref(GgmlType::F32, c.q.t.rows, c.q.t.cols);
      cpu::ref::attention(c.q.t, c.seqs, p, pool, ref.t);
      for (Backend* be : {fast.get(), scalar.get()}) {
        HostTensor out(GgmlType::F32, c.q.t.rows, c.q.t.cols);
        out.fill(NAN);
        be->attention(c.q.t, c.seqs, p, pool, out.t);
        ASSERT_TRUE(all_finite(out.values())) << be->name();
        EXPECT_LE(rel_err(out.values(), ref.values()), type == GgmlType::F32 ? kAttentionBound : kAttentionF16Bound)
            << be->name() << " " << type_name(type) << " heads=" << c.n_heads << "/" << c.n_kv_heads
            << " hd=" << c.head_dim << " bt=" << c.block_tokens;
      }
      fast->free_kv_pool(pool);
    }
}

TEST(CpuAttention, KvStoreAndMove) {
  const uint32_t seed = fresh_seed();
  SCOPED_TRACE("seed=" + std::to_string(seed));
  Rng rng(seed);
  auto be = make_cpu_backend({2, false});
  const int n_kv = 2, hd = 8;
  for (GgmlType type : {GgmlType::F32, GgmlType::F16}) {
    KVPoolView pool = be->alloc_kv_pool(type, 4, 4, hd);
    HostTensor k = HostTensor::f32(3, n_kv * hd, rng), v = HostTensor::f32(3, n_kv * hd, rng);
    const std::vector<int32_t> slots = {5, 12, 0, -1, 15, 3}, pos = {10, 11, 12};
    be->kv_store(k.t, v.t, n_kv, slots, pos, pool);
    auto kval = [&](int slot, int i) { return cpu::ref::kv_load(pool.k, type, int64_t(slot) * hd + i); };
    auto vval = [&](int slot, int i) { return cpu::ref::kv_load(pool.v, type, int64_t(slot) * hd + i); };
    const float tol = type == GgmlType::F32 ? 0.0f : 1e-3f;
    for (int r = 0; r < 3; ++r)
      for (int h = 0; h < n_kv; ++h) {
        const int s = slots[r * n_kv + h];
        if (s < 0) continue;
        EXPECT_EQ(pool.pos[s], pos[r]);
        for (int i = 0; i < hd; ++i) {
          EXPECT_NEAR(kval(s, i), k.t.row_f32(r)[h * hd + i], tol);
          EXPECT_NEAR(vval(s, i), v.t.row_f32(r)[h * hd + i], tol);
        }
      }
    const float k12 = kval(12, 3), v15 = vval(15, 7);
    be->kv_move(std::vector<int32_t>{12, 15}, std::vector<int32_t>{1, 2}, pool);
    EXPECT_EQ(pool.pos[1], 10);
    EXPECT_EQ(pool.pos[2], 12);
    EXPECT_EQ(kval(1, 3), k12);
    EXPECT_EQ(vval(2, 7), v15);
    EXPECT_THROW(be->kv_move(std::vector<int32_t>{0}, std::vector<int32_t>{16}, pool), Error);
    EXPECT_THROW(be->kv_store(k.t, v.t, n_kv, std::vector<int32_t>{0, 1, 2, 3, 4, 99}, pos, pool), Error);
    be->free_kv_pool(pool);
  }
}

}  // namespace
}  // namespace batchmax::test

// GQA combination of the eviction scores: attention_scores gives, per KV head, the mean
// over its query heads of each head's softmax probabilities, summed over the observed
// queries. Checked against a dense softmax per query head computed here.
TEST(CpuAttentionScores, CombinesTheQueryHeadsOfAGroupByMean) {
  using namespace batchmax;
  auto be = make_cpu_backend();
  const int hd = 8, n_heads = 6, n_kv = 2, group = 3, bt = 4, n_entries = 11, n_q = 3;
  KVPoolView pool = be->alloc_kv_pool(GgmlType::F32, 16, bt, hd);
  std::mt19937 rng(7);
  std::uniform_real_distribution<float> u(-1, 1);
  std::vector<std::vector<int32_t>> blocks = {{5, 2, 9}, {1, 7, 3}};
  std::vector<int32_t> pos(n_entries);
  for (int e = 0; e < n_entries; ++e) pos[e] = 2 * e;  // gaps, as after eviction
  for (int g = 0; g < n_kv; ++g)
    for (int e = 0; e < n_entries; ++e) {
      int64_t slot = int64_t(blocks[g][e / bt]) * bt + e % bt;
      for (int d = 0; d < hd; ++d) static_cast<float*>(pool.k)[slot * hd + d] = u(rng);
      pool.pos[slot] = pos[e];
    }
  Tensor q = be->alloc(GgmlType::F32, n_q, n_heads * hd);
  for (int64_t i = 0; i < n_q * n_heads * hd; ++i) q.f32()[i] = u(rng);
  std::vector<int32_t> q_pos = {9, 15, 40};  // the first query sees only part of the cache
  AttentionSeq s;
  s.q_begin = 0;
  s.n_q = n_q;
  s.q_pos = q_pos.data();
  for (int g = 0; g < n_kv; ++g) {
    s.head_blocks.push_back(blocks[g]);
    s.head_entries.push_back(n_entries);
  }
  AttentionParams p{n_heads, n_kv, hd, 1.0f / std::sqrt(float(hd))};
  const int64_t stride = 16;
  std::vector<float> out(n_kv * stride, -1.0f);
  float* outs[1] = {out.data()};
  be->attention_scores(q, std::span<const AttentionSeq>(&s, 1), p, pool, outs, stride);
  for (int g = 0; g < n_kv; ++g) {
    std::vector<double> want(n_entries, 0.0);
    for (int r = 0; r < n_q; ++r)
      for (int hh = 0; hh < group; ++hh) {
        const float* qv = q.row_f32(r) + (g * group + hh) * hd;
        std::vector<double> logit(n_entries, -INFINITY);
        double mx = -INFINITY;
        for (int e = 0; e < n_entries; ++e) {
          if (pos[e] > q_pos[r]) continue;
          int64_t slot = int64_t(blocks[g][e / bt]) * bt + e % bt;
          double dot = 0;
          for (int d = 0; d < hd; ++d) dot += double(qv[d]) * static_cast<float*>(pool.k)[slot * hd + d];
          logit[e] = dot * p.scale;
          mx = std::max(mx, logit[e]);
        }
        double z = 0;
        for (int e = 0; e < n_entries; ++e) z += std::isinf(logit[e]) ? 0 : std::exp(logit[e] - mx);
        for (int e = 0; e < n_entries; ++e)
          if (!std::isinf(logit[e])) want[e] += std::exp(logit[e] - mx) / z / group;
      }
    double total = 0;
    for (int e = 0; e < n_entries; ++e) {
      EXPECT_NEAR(out[g * stride + e], want[e], 1e-5) << "kv head " << g << " entry " << e;
      total += out[g * stride + e];
    }
    EXPECT_NEAR(total, n_q, 1e-4);  // each query's mean distribution sums to 1
  }
  be->free(q);
  be->free_kv_pool(pool);
}
