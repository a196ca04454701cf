// Backend::evict (eviction without the host) against the host policies and select_keep()
// on fresh random pools: the kept entries (K, V, position) must be exactly those of the
// host selection, packed in order, and no other head may change. Runs on the CPU
// backend (the reference path) always, on CUDA where a device is present; with
// argmax_rows, kv_positions and attention_scores_to, the other ops device eviction uses.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <random>

#include "kernels/cuda_test_util.h"
#include "kv/eviction_policy.h"

namespace batchmax::cudatest {
namespace {

constexpr int kHeadDim = 128, kBlockTokens = 16;

struct Head {
  std::vector<int32_t> blocks;
  std::vector<int32_t> pos;
};

const char* policy_of(EvictScore s) {
  switch (s) {
    case EvictScore::Mass: return "tova";
    case EvictScore::PooledMass: return "snapkv";
    case EvictScore::Recency: return "window";
    case EvictScore::NegKeyNorm: return "knorm";
    case EvictScore::Random: return "random";
    case EvictScore::Accumulated: return "h2o";
  }
  return "?";
}

// The pool's slot mass as a tensor view (upload/download go through the backend).
Tensor slot_mass_view(const KVPoolView& pool) {
  Tensor t;
  t.data = pool.mass;
  t.type = GgmlType::F32;
  t.rows = 1;
  t.cols = pool.n_blocks * pool.block_tokens;
  t.row_stride = size_t(t.cols) * 4;
  return t;
}

// Two sequences of n_q queries each (rows [s * n_q, (s + 1) * n_q)) over two KV heads'
// block tables and entry counts.
std::vector<AttentionSeq> two_sequences(const std::vector<int32_t> (&blocks)[2][2],
                                        const int32_t (&entries)[2][2], int n_q,
                                        const std::vector<int32_t>& qpos) {
  std::vector<AttentionSeq> seqs(2);
  for (int s = 0; s < 2; ++s) {
    seqs[s].q_begin = s * n_q;
    seqs[s].n_q = n_q;
    seqs[s].q_pos = qpos.data();
    for (int h = 0; h < 2; ++h) {
      seqs[s].head_blocks.push_back(blocks[s][h]);
      seqs[s].head_entries.push_back(entries[s][h]);
    }
  }
  return seqs;
}

// Every entry of two_sequences()'s heads in order (sequence, head, entry): its pool slot,
// and its index as the position.
void two_sequences_slots(const std::vector<int32_t> (&blocks)[2][2], const int32_t (&entries)[2][2],
                         std::vector<int32_t>& slots, std::vector<int32_t>& pos) {
  for (int s = 0; s < 2; ++s)
    for (int h = 0; h < 2; ++h)
      for (int e = 0; e < entries[s][h]; ++e) {
        slots.push_back(blocks[s][h][e / kBlockTokens] * kBlockTokens + e % kBlockTokens);
        pos.push_back(e);
      }
}

// Raw slot rows of a pool (K or V), as bytes.
std::vector<uint8_t> pool_bytes(Backend& b, const KVPoolView& pool, void* base) {
  const size_t eb = pool.type == GgmlType::F32 ? 4 : 2;
  Tensor t;
  t.data = base;
  t.type = pool.type;
  t.rows = pool.n_blocks * pool.block_tokens;
  t.cols = pool.head_dim;
  t.row_stride = size_t(pool.head_dim) * eb;
  std::vector<uint8_t> out(t.bytes());
  b.download(t, out.data());
  return out;
}

void check_evict(Backend& b, GgmlType pool_type, std::mt19937& rng) {
  auto randi = [&](int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng); };
  // Heads of various sizes; every score kind on several of them.
  const std::vector<int> sizes = {17, 100, 600, 1040, 2100, 700, 577, 64, 1500, 333};
  int64_t n_blocks = 0;
  for (int n : sizes) n_blocks += (n + kBlockTokens - 1) / kBlockTokens;
  n_blocks = n_blocks * 6 + 8;  // six kinds, a few spare blocks
  KVPoolView pool = b.alloc_kv_pool(pool_type, n_blocks, kBlockTokens, kHeadDim, /*slot_mass=*/true);
  // Blocks handed out in a shuffled order, as a used pool does.
  std::vector<int32_t> free_blocks(n_blocks);
  for (int64_t i = 0; i < n_blocks; ++i) free_blocks[i] = int32_t(i);
  std::shuffle(free_blocks.begin(), free_blocks.end(), rng);

  std::vector<Head> heads;
  std::vector<EvictTask> tasks;
  std::vector<std::vector<float>> mass_rows;
  const EvictScore kinds[] = {EvictScore::Mass, EvictScore::PooledMass, EvictScore::Recency,
                              EvictScore::NegKeyNorm, EvictScore::Random, EvictScore::Accumulated};
  for (EvictScore kind : kinds)
    for (int n : sizes) {
      Head h;
      for (int i = 0; i < (n + kBlockTokens - 1) / kBlockTokens; ++i) {
        h.blocks.push_back(free_blocks.back());
        free_blocks.pop_back();
      }
      // Increasing positions with gaps (earlier evictions), sometimes from 0 (sinks).
      int32_t p = randi(0, 1) ? 0 : randi(0, 9);
      for (int i = 0; i < n; ++i) {
        h.pos.push_back(p);
        p += randi(0, 3) ? 1 : randi(2, 40);
      }
      heads.push_back(h);
      EvictTask t;
      t.n_entries = n;
      t.keep = std::min(n + randi(-1, 1) * 3, std::vector<int>{8, 64, 256, 512}[randi(0, 3)] + randi(0, 40));
      t.keep = std::max(t.keep, 40);
      t.score = kind;
      t.pool_kernel = 2 * randi(0, 4) + 1;
      t.sinks = randi(0, 8);
      t.window = randi(0, 32);
      t.seed = (uint64_t(rng()) << 32) | rng();
      // Mass: continuous, or a few levels (many ties), or mostly zero.
      std::vector<float> m(static_cast<size_t>(n));
      const int style = randi(0, 2);
      for (float& x : m) {
        const float u = std::uniform_real_distribution<float>(0, 1)(rng);
        x = style == 0 ? u : style == 1 ? std::floor(u * 4) / 4 : (u < 0.9f ? 0.0f : u);
      }
      // h2o reads the pool's slot mass (set below to the same values), not a mass row.
      t.mass_row = kind == EvictScore::Accumulated ? -1 : int64_t(mass_rows.size());
      mass_rows.push_back(std::move(m));
      tasks.push_back(t);
    }
  for (size_t i = 0; i < tasks.size(); ++i) tasks[i].blocks = heads[i].blocks;

  // Fill every head's entries with random K/V through kv_store (one KV head per row).
  int64_t rows = 0;
  for (const Head& h : heads) rows += int64_t(h.pos.size());
  std::vector<int32_t> slots, pos;
  for (const Head& h : heads)
    for (size_t e = 0; e < h.pos.size(); ++e) {
      slots.push_back(h.blocks[e / kBlockTokens] * kBlockTokens + int32_t(e % kBlockTokens));
      pos.push_back(h.pos[e]);
    }
  const GgmlType act = b.activation_type();
  Tensor k = b.alloc(act, rows, kHeadDim), v = b.alloc(act, rows, kHeadDim);
  for (Tensor* t : {&k, &v}) {
    std::vector<float> x(size_t(rows * kHeadDim));
    for (float& f : x) f = bf16_round(std::uniform_real_distribution<float>(-2, 2)(rng));
    if (act == GgmlType::F32) {
      b.upload(x.data(), *t);
    } else {
      std::vector<uint16_t> hx(x.size());
      for (size_t i = 0; i < x.size(); ++i) hx[i] = fp32_to_bf16(x[i]);
      b.upload(hx.data(), *t);
    }
  }
  b.kv_store(k, v, 1, slots, pos, pool);
  // Every entry's slot mass: its head's mass row (kv_store zeroed them first).
  std::vector<float> slot_mass(size_t(n_blocks * kBlockTokens), -1.0f);
  {
    Tensor mv = slot_mass_view(pool);
    std::vector<float> zeroed(slot_mass.size());
    b.download(mv, zeroed.data());
    for (size_t i = 0; i < tasks.size(); ++i)
      for (size_t e = 0; e < heads[i].pos.size(); ++e) {
        const size_t sl = size_t(heads[i].blocks[e / kBlockTokens] * kBlockTokens + int32_t(e % kBlockTokens));
        ASSERT_EQ(zeroed[sl], 0.0f) << "kv_store leaves slot mass zero";
        slot_mass[sl] = mass_rows[i][e];
      }
    b.upload(slot_mass.data(), mv);
  }
  int64_t stride = 0;
  for (const auto& m : mass_rows) stride = std::max<int64_t>(stride, int64_t(m.size()));
  Tensor mass = b.alloc(GgmlType::F32, int64_t(mass_rows.size()), stride);
  {
    std::vector<float> flat(size_t(mass.rows * stride), 0.0f);
    for (size_t r = 0; r < mass_rows.size(); ++r)
      std::copy(mass_rows[r].begin(), mass_rows[r].end(), flat.begin() + r * stride);
    b.upload(flat.data(), mass);
  }

  // What the host would keep.
  const size_t rb = size_t(kHeadDim) * (pool_type == GgmlType::F32 ? 4 : 2);
  const std::vector<uint8_t> k0 = pool_bytes(b, pool, pool.k), v0 = pool_bytes(b, pool, pool.v);
  std::vector<std::vector<int32_t>> keep(tasks.size());
  for (size_t i = 0; i < tasks.size(); ++i) {
    const EvictTask& t = tasks[i];
    std::vector<int32_t> got_pos(t.n_entries);
    b.kv_positions(pool, t.blocks, t.n_entries, got_pos.data());
    ASSERT_EQ(got_pos, heads[i].pos) << "kv_positions, task " << i;
    EvictionParams ep;
    ep.budget = t.keep;
    ep.sinks = t.sinks;
    ep.window = t.window;
    ep.pool_kernel = t.pool_kernel;
    ep.seed = t.seed;
    auto policy = make_policy(policy_of(t.score), ep);
    std::vector<float> norms(size_t(t.n_entries));
    b.key_norms(pool, t.blocks, t.n_entries, norms.data());
    std::vector<float> scores(size_t(t.n_entries));
    policy->score(HeadEntries{heads[i].pos, mass_rows[i], norms, mass_rows[i]}, scores);
    keep[i] = select_keep(heads[i].pos, scores, ep);
  }

  b.evict(tasks, &mass, pool);
  const std::vector<uint8_t> k1 = pool_bytes(b, pool, pool.k), v1 = pool_bytes(b, pool, pool.v);
  std::vector<float> mass1(slot_mass.size());
  b.download(slot_mass_view(pool), mass1.data());
  for (size_t i = 0; i < tasks.size(); ++i) {
    const EvictTask& t = tasks[i];
    const std::string what = std::string(policy_of(t.score)) + " n=" + std::to_string(t.n_entries) +
                             " keep=" + std::to_string(t.keep) + " sinks=" + std::to_string(t.sinks) +
                             " window=" + std::to_string(t.window) + " on " + b.name();
    const int64_t kept = std::min<int64_t>(t.n_entries, t.keep);
    ASSERT_EQ(int64_t(keep[i].size()), kept) << what;
    std::vector<int32_t> got(static_cast<size_t>(kept));
    b.kv_positions(pool, t.blocks, kept, got.data());
    std::vector<int32_t> want;
    for (int32_t j : keep[i]) want.push_back(heads[i].pos[j]);
    EXPECT_EQ(got, want) << what;
    int bad = 0;
    for (int64_t j = 0; j < kept; ++j) {
      const int32_t src = keep[i][j];
      const size_t from = size_t(t.blocks[src / kBlockTokens] * kBlockTokens + src % kBlockTokens) * rb;
      const size_t to = size_t(t.blocks[j / kBlockTokens] * kBlockTokens + j % kBlockTokens) * rb;
      bad += std::memcmp(&k1[to], &k0[from], rb) != 0 || std::memcmp(&v1[to], &v0[from], rb) != 0;
    }
    EXPECT_EQ(bad, 0) << what << ": kept rows differ from their sources";
    int bad_mass = 0;
    for (int64_t j = 0; j < kept; ++j)
      bad_mass += mass1[size_t(t.blocks[j / kBlockTokens] * kBlockTokens + j % kBlockTokens)] !=
                  mass_rows[i][size_t(keep[i][j])];
    EXPECT_EQ(bad_mass, 0) << what << ": slot mass did not move with its entries";
  }
  b.free(k);
  b.free(v);
  b.free(mass);
  b.free_kv_pool(pool);
}

// accumulate_mass twice = twice attention_scores, at each entry's slot; slots of other
// heads keep their mass.
void check_accumulate(Backend& b, std::mt19937& rng, double bound) {
  auto randv = [&](size_t n) {
    std::vector<float> v(n);
    for (float& x : v) x = bf16_round(std::uniform_real_distribution<float>(-1, 1)(rng));
    return v;
  };
  const GgmlType act = b.activation_type();
  auto make = [&](int64_t rows, int64_t cols) {
    Tensor t = b.alloc(act, rows, cols);
    const std::vector<float> x = randv(size_t(rows * cols));
    if (act == GgmlType::F32) {
      b.upload(x.data(), t);
    } else {
      std::vector<uint16_t> hx(x.size());
      for (size_t i = 0; i < x.size(); ++i) hx[i] = fp32_to_bf16(x[i]);
      b.upload(hx.data(), t);
    }
    return t;
  };
  const int nkv = 2, group = 2, n_heads = nkv * group, n_q = 5;
  KVPoolView pool = b.alloc_kv_pool(act, 64, kBlockTokens, kHeadDim, /*slot_mass=*/true);
  std::vector<int32_t> blocks[2][2] = {{{7, 1, 2}, {3, 4}}, {{5, 6, 0, 8}, {9}}};
  const int32_t entries[2][2] = {{40, 20}, {60, 9}};
  std::vector<int32_t> slots, pos;
  two_sequences_slots(blocks, entries, slots, pos);
  Tensor k = make(int64_t(slots.size()), kHeadDim), v = make(int64_t(slots.size()), kHeadDim);
  b.kv_store(k, v, 1, slots, pos, pool);
  // A slot outside every table keeps what it holds.
  const int64_t other = 10 * kBlockTokens + 3;
  std::vector<float> mass0(size_t(64 * kBlockTokens), 0.0f);
  mass0[size_t(other)] = 7.5f;
  Tensor mass_view = slot_mass_view(pool);
  b.upload(mass0.data(), mass_view);
  Tensor q = make(2 * n_q, int64_t(n_heads) * kHeadDim);
  std::vector<int32_t> qpos = {100, 101, 102, 103, 104};
  const std::vector<AttentionSeq> seqs = two_sequences(blocks, entries, n_q, qpos);
  AttentionParams ap{n_heads, nkv, kHeadDim, 1.0f / std::sqrt(float(kHeadDim))};
  const int64_t stride = 64;
  std::vector<std::vector<float>> host(2, std::vector<float>(size_t(nkv * stride), 0.0f));
  std::vector<float*> ptr = {host[0].data(), host[1].data()};
  b.attention_scores(q, seqs, ap, pool, ptr, stride);
  b.accumulate_mass(q, seqs, ap, pool);
  b.accumulate_mass(q, seqs, ap, pool);
  std::vector<float> got(mass0.size());
  b.download(slot_mass_view(pool), got.data());
  std::vector<float> g, want;
  for (int s = 0; s < 2; ++s)
    for (int h = 0; h < nkv; ++h)
      for (int e = 0; e < entries[s][h]; ++e) {
        g.push_back(got[size_t(blocks[s][h][e / kBlockTokens] * kBlockTokens + e % kBlockTokens)]);
        want.push_back(2 * host[size_t(s)][size_t(h * stride + e)]);
      }
  expect_close("accumulate_mass on " + b.name(), g, want, bound);
  EXPECT_EQ(got[size_t(other)], 7.5f) << "a slot of no table changed";
  b.free(k);
  b.free(v);
  b.free(q);
  b.free_kv_pool(pool);
}

TEST(Evict, CpuAccumulateMassAddsScoresAtSlots) {
  std::mt19937 rng(std::random_device{}());
  auto cpu = make_cpu_backend();
  check_accumulate(*cpu, rng, 0.0);
}

TEST(Evict, CpuBackendMatchesHostSelection) {
  std::mt19937 rng(std::random_device{}());
  auto cpu = make_cpu_backend();
  check_evict(*cpu, GgmlType::F32, rng);
}

class CudaEvict : public CudaFixture {
 protected:
  // Random K/V for every entry of two_sequences()'s heads, stored into the GPU pool (and
  // the same values into the CPU pool when given).
  void store_two_sequences(const std::vector<int32_t> (&blocks)[2][2], const int32_t (&entries)[2][2],
                           KVPoolView& pg, KVPoolView* pc = nullptr) {
    std::vector<int32_t> slots, pos;
    two_sequences_slots(blocks, entries, slots, pos);
    const int64_t rows = int64_t(slots.size());
    Pair k = make(rows, kHeadDim, randv(size_t(rows * kHeadDim)));
    Pair v = make(rows, kHeadDim, randv(size_t(rows * kHeadDim)));
    gpu->kv_store(k.g, v.g, 1, slots, pos, pg);
    if (pc) cpu->kv_store(k.c, v.c, 1, slots, pos, *pc);
  }

  // Rows right after their attention, whose sums the scoring pass reuses, into a poisoned
  // tensor: a column nobody wrote stays NaN. Decode rows are one work item per (sequence,
  // KV head) and the kernel stores whole rows (fill_rows); more vectors than a work item
  // holds take the zeroed path. Against the CPU backend. n_q queries a sequence at
  // positions first_pos.. (a window before the last entries masks those).
  void scores_to_after_attention(int n_q, int32_t first_pos) {
    const int nkv = 2, group = 4, n_heads = nkv * group;
    KVPoolView pg = gpu->alloc_kv_pool(GgmlType::BF16, 64, kBlockTokens, kHeadDim);
    KVPoolView pc = cpu->alloc_kv_pool(GgmlType::F32, 64, kBlockTokens, kHeadDim);
    // Entries past one scores split (128) and a row whose split 1 is empty; stride > entries.
    std::vector<int32_t> blocks[2][2] = {{{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11}, {12, 13}},
                                         {{14, 15, 16}, {17, 18, 19, 20, 21, 22, 23, 24, 25}}};
    const int32_t entries[2][2] = {{181, 30}, {40, 137}};
    store_two_sequences(blocks, entries, pg, &pc);
    Pair q = make(2 * n_q, int64_t(n_heads) * kHeadDim, randv(size_t(2 * n_q * n_heads * kHeadDim)));
    std::vector<int32_t> qpos(static_cast<size_t>(n_q));
    for (int i = 0; i < n_q; ++i) qpos[size_t(i)] = first_pos + i;
    const std::vector<AttentionSeq> seqs = two_sequences(blocks, entries, n_q, qpos);
    AttentionParams ap{n_heads, nkv, kHeadDim, 1.0f / std::sqrt(float(kHeadDim))};
    Pair o = make_out(2 * n_q, int64_t(n_heads) * kHeadDim);
    gpu->attention(q.g, seqs, ap, pg, o.g);
    const int64_t stride = 200;
    Tensor out = gpu->alloc(GgmlType::F32, 2 * nkv, stride);
    gpu_owned.push_back(out);
    poison(out);
    gpu->attention_scores_to(q.g, seqs, ap, pg, out);
    std::vector<std::vector<float>> host(2, std::vector<float>(size_t(nkv * stride), 0.0f));
    std::vector<float*> ptr = {host[0].data(), host[1].data()};
    cpu->attention_scores(q.c, seqs, ap, pc, ptr, stride);
    std::vector<float> want(host[0]);
    want.insert(want.end(), host[1].begin(), host[1].end());
    expect_close("attention_scores_to after attention, n_q " + std::to_string(n_q), down_gpu(out),
                 want, kScoresBound);
    gpu->free_kv_pool(pg);
    cpu->free_kv_pool(pc);
  }
};

TEST_F(CudaEvict, MatchesHostSelectionBf16AndF32Pools) {
  check_evict(*gpu, GgmlType::BF16, rng);
  check_evict(*gpu, GgmlType::F32, rng);
}

// A host compaction of many heads at once: more moves than one launch takes (the backend
// splits them), the same pool as the CPU's afterwards (K, V, positions, slot mass).
TEST_F(CudaEvict, KvMoveOfManyHeadsEqualsCpu) {
  const int64_t n_blocks = 2048, heads = 30, per_head = 1000;
  KVPoolView pc = cpu->alloc_kv_pool(GgmlType::F32, n_blocks, kBlockTokens, kHeadDim, true);
  KVPoolView pg = gpu->alloc_kv_pool(GgmlType::F32, n_blocks, kBlockTokens, kHeadDim, true);
  std::vector<int32_t> free_blocks(n_blocks);
  for (int64_t i = 0; i < n_blocks; ++i) free_blocks[i] = int32_t(i);
  std::shuffle(free_blocks.begin(), free_blocks.end(), rng);
  std::vector<int32_t> slots, pos, src, dst;
  for (int64_t h = 0; h < heads; ++h) {
    std::vector<int32_t> blocks;
    for (int64_t b = 0; b < (per_head + kBlockTokens - 1) / kBlockTokens; ++b) {
      blocks.push_back(free_blocks.back());
      free_blocks.pop_back();
    }
    auto slot = [&](int64_t e) { return blocks[e / kBlockTokens] * kBlockTokens + int32_t(e % kBlockTokens); };
    for (int64_t e = 0; e < per_head; ++e) {
      slots.push_back(slot(e));
      pos.push_back(int32_t(e));
    }
    int64_t j = 0;
    for (int64_t e = 0; e < per_head; ++e)
      if (randi(0, 1)) {
        if (e != j) {
          src.push_back(slot(e));
          dst.push_back(slot(j));
        }
        ++j;
      }
  }
  ASSERT_GT(src.size(), 3 * size_t(4096));
  const int64_t rows = int64_t(slots.size());
  Pair k = make(rows, kHeadDim, randv(size_t(rows * kHeadDim)), GgmlType::F32);
  Pair v = make(rows, kHeadDim, randv(size_t(rows * kHeadDim)), GgmlType::F32);
  cpu->kv_store(k.c, v.c, 1, slots, pos, pc);
  gpu->kv_store(k.g, v.g, 1, slots, pos, pg);
  std::vector<float> mass = randv(size_t(n_blocks * kBlockTokens));
  Tensor mc = slot_mass_view(pc), mg = slot_mass_view(pg);
  cpu->upload(mass.data(), mc);
  gpu->upload(mass.data(), mg);
  cpu->kv_move(src, dst, pc);
  gpu->kv_move(src, dst, pg);
  EXPECT_EQ(pool_bytes(*gpu, pg, pg.k), pool_bytes(*cpu, pc, pc.k));
  EXPECT_EQ(pool_bytes(*gpu, pg, pg.v), pool_bytes(*cpu, pc, pc.v));
  std::vector<float> got(mass.size()), want(mass.size());
  gpu->download(mg, got.data());
  cpu->download(mc, want.data());
  EXPECT_EQ(got, want);
  std::vector<int32_t> all(static_cast<size_t>(n_blocks), 0);
  for (int64_t b = 0; b < n_blocks; ++b) all[size_t(b)] = int32_t(b);
  std::vector<int32_t> pg_pos(size_t(n_blocks * kBlockTokens)), pc_pos(pg_pos.size());
  gpu->kv_positions(pg, all, n_blocks * kBlockTokens, pg_pos.data());
  cpu->kv_positions(pc, all, n_blocks * kBlockTokens, pc_pos.data());
  EXPECT_EQ(pg_pos, pc_pos);
  cpu->free_kv_pool(pc);
  gpu->free_kv_pool(pg);
}

TEST_F(CudaEvict, AccumulateMassAddsScoresAtSlots) { check_accumulate(*gpu, rng, 1e-5); }

TEST_F(CudaEvict, ArgmaxRowsMatchesCpuWithTies) {
  for (int64_t cols : {int64_t(1), int64_t(7), int64_t(50000), int64_t(128256)}) {
    const int64_t rows = 5;
    std::vector<float> x = randv(size_t(rows * cols), -4, 4);
    for (int64_t r = 0; r < rows && cols > 3; ++r) {  // a tie for the max: first one wins
      const int64_t a = randi(0, int(cols / 2)), b2 = randi(int(cols / 2) + 1, int(cols - 1));
      x[r * cols + a] = x[r * cols + b2] = 10.0f + float(r % 2);
    }
    Pair t = make(rows, cols, x, GgmlType::F32);
    std::vector<int32_t> want(rows), got(rows, -1);
    cpu->argmax_rows(t.c, want.data());
    gpu->argmax_rows(t.g, got.data());
    EXPECT_EQ(got, want) << "cols " << cols;
  }
}

TEST_F(CudaEvict, AttentionScoresToMatchesHostScores) {
  // The same kernel writing to a device tensor: zeroed, one row per (sequence, KV head).
  const int nkv = 2, group = 2, n_heads = nkv * group;
  KVPoolView pool = gpu->alloc_kv_pool(GgmlType::BF16, 64, kBlockTokens, kHeadDim);
  std::vector<int32_t> blocks[2][2] = {{{0, 1, 2}, {3, 4}}, {{5, 6, 7, 8}, {9}}};
  const int32_t entries[2][2] = {{40, 20}, {60, 9}};
  store_two_sequences(blocks, entries, pool);
  const int n_q = 3;
  Pair q = make(2 * n_q, int64_t(n_heads) * kHeadDim, randv(size_t(2 * n_q * n_heads * kHeadDim)));
  std::vector<int32_t> qpos = {100, 101, 102};
  const std::vector<AttentionSeq> seqs = two_sequences(blocks, entries, n_q, qpos);
  AttentionParams ap{n_heads, nkv, kHeadDim, 1.0f / std::sqrt(float(kHeadDim))};
  const int64_t stride = 64;
  std::vector<std::vector<float>> host(2, std::vector<float>(size_t(nkv * stride), 0.0f));
  std::vector<float*> ptr = {host[0].data(), host[1].data()};
  gpu->attention_scores(q.g, seqs, ap, pool, ptr, stride);
  Tensor out = gpu->alloc(GgmlType::F32, 2 * nkv, stride);
  gpu_owned.push_back(out);
  poison(out);
  gpu->attention_scores_to(q.g, seqs, ap, pool, out);
  std::vector<float> want(host[0]);
  want.insert(want.end(), host[1].begin(), host[1].end());
  expect_close("attention_scores_to", down_gpu(out), want, 1e-6);
  gpu->free_kv_pool(pool);
}

TEST_F(CudaEvict, AttentionScoresToAfterDecodeAttentionWritesWholeRows) {
  scores_to_after_attention(1, 500);  // one decode row a sequence
}

TEST_F(CudaEvict, AttentionScoresToAfterWindowAttentionMatchesCpu) {
  // snapkv's window on Llama 3 shapes: 32 queries x group 4 = 128 vectors a KV head, two
  // work items. Positions from 150 mask the tail of the 181-entry head.
  scores_to_after_attention(32, 150);
}

}  // namespace
}  // namespace batchmax::cudatest
