// Paged attention and the KV pool ops of the CUDA backend against the CPU reference
// (attention) and the test's own double-precision copy of the data (attention_scores,
// key_norms, which the reference need not provide). One step mixes prefill chunks (first
// and later chunks) and decode rows; KV heads differ in entry count (per-head eviction),
// positions have gaps, block tables are shuffled, non-contiguous and end in partial
// blocks, and one padding row (slot -1) is skipped. Then entries are compacted with
// kv_move, as eviction does, and everything is checked again.
#include <cstdlib>
#include <numeric>

#include "core/error.h"
#include "kernels/cuda_test_util.h"

namespace batchmax::cudatest {
namespace {

struct Config {
  int n_heads, n_kv_heads, head_dim;
  GgmlType pool_type;
};

struct HeadData {
  std::vector<int32_t> blocks, pos;  // pos per entry
  std::vector<float> k, v;           // entries x head_dim
};

class CudaAttention : public CudaFixture {
 protected:
  static constexpr int kBlockTokens = 16;

  // newest: the caller vouches that each step's keys are the tables' last entries
  // (AttentionParams::queries_newest), so prefill rows may go to cuDNN's SDPA.
  // long_decode: a decode row over more entries than the short-cache decode tile takes
  // (flash_attention.cu's kShortCache), so that launch runs the 64-key shape.
  void run(const Config& c, bool newest = false, bool long_decode = false);

  Config cfg{};
  bool newest_ = false;
  // The GPU pool keeps block tables (Backend::alloc_block_tables): every other head reads
  // its ids from there, the rest from the call's metadata.
  bool tables_ = false;
  std::vector<std::vector<HeadData>> heads;  // [seq][kv head]
  std::vector<std::vector<int32_t>> q_pos;   // [seq]
  std::vector<AttentionSeq> seqs;
  KVPoolView pc{}, pg{};

  int64_t slot(const HeadData& h, int64_t e) const {
    return int64_t(h.blocks[e / kBlockTokens]) * kBlockTokens + e % kBlockTokens;
  }
  void refresh_views() {
    std::vector<int32_t> pairs;
    int32_t row = 3;
    for (size_t s = 0; s < seqs.size(); ++s) {
      seqs[s].head_rows.assign(tables_ ? size_t(cfg.n_kv_heads) : 0, -1);
      for (int h = 0; h < cfg.n_kv_heads; ++h) {
        seqs[s].head_blocks[h] = heads[s][h].blocks;
        seqs[s].head_entries[h] = int32_t(heads[s][h].pos.size());
        if (!tables_ || (s + size_t(h)) % 2) continue;
        seqs[s].head_rows[h] = row;
        for (int32_t b : heads[s][h].blocks) pairs.insert(pairs.end(), {row++, b});
        row += 5;  // rows apart, as a sequence's place leaves room to grow
      }
    }
    if (tables_) {
      ASSERT_LE(row, pg.table_ints);
      gpu->write_block_tables(pairs, pg);
    }
  }
  void compare_attention(const std::string& what, Pair& q, int64_t rows);
  void compare_scores(const std::string& what, Pair& q);
  void compare_key_norms(const std::string& what, int s, int h);
  void compact(int s, int h);
};

void CudaAttention::compare_attention(const std::string& what, Pair& q, int64_t rows) {
  AttentionParams p{cfg.n_heads, cfg.n_kv_heads, cfg.head_dim,
                    float(1.0 / std::sqrt(double(cfg.head_dim)))};
  p.queries_newest = newest_;
  Pair out = make_out(q.c.rows, q.c.cols);
  cpu->attention(q.c, seqs, p, pc, out.c);
  gpu->attention(q.g, seqs, p, pg, out.g);
  std::vector<float> g = down_gpu(out.g), c = down_cpu(out.c);
  g.resize(size_t(rows * q.c.cols));  // the padding row is no sequence's: not written
  c.resize(g.size());
  expect_close(what, g, c, kAttnBound);
}

// Attention mass from the last rows of each sequence (as policies ask), against a
// double-precision softmax over the test's copy of the entries.
void CudaAttention::compare_scores(const std::string& what, Pair& q) {
  AttentionParams p{cfg.n_heads, cfg.n_kv_heads, cfg.head_dim,
                    float(1.0 / std::sqrt(double(cfg.head_dim)))};
  const int group = cfg.n_heads / cfg.n_kv_heads, hd = cfg.head_dim;
  std::vector<float> qh = down_cpu(q.c);
  std::vector<AttentionSeq> ss;
  int64_t stride = 0;
  for (const AttentionSeq& a : seqs) {
    AttentionSeq s = a;
    // Up to 20 rows: with group 4 that is two 64-vector work items of the tensor-core path.
    const int64_t cnt = std::min<int64_t>(20, s.n_q);
    s.q_begin += s.n_q - cnt;
    s.q_pos += s.n_q - cnt;
    s.n_q = cnt;
    ss.push_back(s);
    for (int32_t e : s.head_entries) stride = std::max<int64_t>(stride, e);
  }
  std::vector<std::vector<float>> got(ss.size(), std::vector<float>(stride * cfg.n_kv_heads, 0));
  std::vector<float*> ptr;
  for (auto& g : got) ptr.push_back(g.data());
  // Right after attention() over the same q: the tensor-core path reuses its sums.
  gpu->attention_scores(q.g, ss, p, pg, ptr, stride);
  // A copy of q that no attention call saw: both passes of the scoring kernel.
  std::vector<std::vector<float>> got2(ss.size(), std::vector<float>(stride * cfg.n_kv_heads, 0));
  {
    Tensor q2 = gpu->alloc(q.g.type, q.g.rows, q.g.cols);
    gpu_owned.push_back(q2);
    gpu->copy_rows(q.g, q2);
    std::vector<float*> ptr2;
    for (auto& g : got2) ptr2.push_back(g.data());
    gpu->attention_scores(q2, ss, p, pg, ptr2, stride);
  }
  std::vector<float> all_got, all_got2, all_want;
  for (size_t i = 0; i < ss.size(); ++i) {
    std::vector<double> want(stride * cfg.n_kv_heads, 0.0);
    for (int64_t r = 0; r < ss[i].n_q; ++r)
      for (int qh_i = 0; qh_i < cfg.n_heads; ++qh_i) {
        const int kvh = qh_i / group;
        const HeadData& h = heads[i][kvh];
        const float* qv = qh.data() + (ss[i].q_begin + r) * q.c.cols + int64_t(qh_i) * hd;
        std::vector<double> sc(h.pos.size(), -INFINITY);
        double mx = -INFINITY;
        for (size_t e = 0; e < h.pos.size(); ++e) {
          if (h.pos[e] > ss[i].q_pos[r]) continue;
          double d = 0;
          for (int x = 0; x < hd; ++x) d += double(qv[x]) * h.k[e * hd + x];
          sc[e] = d * p.scale;
          mx = std::max(mx, sc[e]);
        }
        double sum = 0;
        for (double& v : sc) sum += (v = std::exp(v - mx));
        for (size_t e = 0; e < h.pos.size(); ++e) want[kvh * stride + e] += sc[e] / sum / group;
      }
    all_got.insert(all_got.end(), got[i].begin(), got[i].end());
    all_got2.insert(all_got2.end(), got2[i].begin(), got2[i].end());
    all_want.insert(all_want.end(), want.begin(), want.end());
  }
  expect_close(what, all_got, all_want, kScoresBound);
  expect_close(what + " (two passes)", all_got2, all_want, kScoresBound);
}

void CudaAttention::compare_key_norms(const std::string& what, int s, int h) {
  const HeadData& d = heads[s][h];
  const int64_t n = int64_t(d.pos.size());
  std::vector<float> got(n, std::nanf("")), want(n);
  for (int64_t e = 0; e < n; ++e) {
    double ss = 0;
    for (int x = 0; x < cfg.head_dim; ++x) ss += double(d.k[e * cfg.head_dim + x]) * d.k[e * cfg.head_dim + x];
    want[e] = float(std::sqrt(ss));
  }
  gpu->key_norms(pg, d.blocks, n, got.data());
  expect_close(what, got, want, kScoresBound);
}

// Keeps a random sorted subset (always the newest 8 entries) packed to the front, as
// PagedKVCache::evict does, on both backends and in the test's copy.
void CudaAttention::compact(int s, int h) {
  HeadData& d = heads[s][h];
  const int64_t n = int64_t(d.pos.size());
  std::vector<int64_t> keep;
  for (int64_t e = 0; e < n; ++e)
    if (e >= n - 8 || randi(0, 2) > 0) keep.push_back(e);
  std::vector<int32_t> src, dst;
  HeadData nd;
  nd.blocks = d.blocks;
  for (size_t j = 0; j < keep.size(); ++j) {
    const int64_t i = keep[j];
    if (i != int64_t(j)) {
      src.push_back(int32_t(slot(d, i)));
      dst.push_back(int32_t(slot(d, int64_t(j))));
    }
    nd.pos.push_back(d.pos[i]);
    nd.k.insert(nd.k.end(), d.k.begin() + i * cfg.head_dim, d.k.begin() + (i + 1) * cfg.head_dim);
    nd.v.insert(nd.v.end(), d.v.begin() + i * cfg.head_dim, d.v.begin() + (i + 1) * cfg.head_dim);
  }
  cpu->kv_move(src, dst, pc);
  gpu->kv_move(src, dst, pg);
  d = std::move(nd);
}

void CudaAttention::run(const Config& c, bool newest, bool long_decode) {
  cfg = c;
  newest_ = newest;
  const int nkv = c.n_kv_heads, hd = c.head_dim, bt = kBlockTokens;
  // (queries, history entries): a later prefill chunk, decode rows, first chunks, and a
  // long decode spanning many key tiles. With `newest`, three chunks of >= 64 rows (the
  // cuDNN path's default minimum) next to rows that stay on our kernel.
  const std::vector<std::pair<int, int>> spec =
      long_decode ? std::vector<std::pair<int, int>>{{20, 50}, {1, 300}, {1, 2300}, {1, 0}, {3, 90}}
      : newest    ? std::vector<std::pair<int, int>>{{37, 50}, {1, 300}, {200, 0}, {1, 0}, {64, 1100}, {130, 20}}
                  : std::vector<std::pair<int, int>>{{37, 50}, {1, 300}, {5, 0}, {1, 0}, {1, 1100}, {70, 20}};
  const int n_seq = int(spec.size());
  heads.assign(n_seq, std::vector<HeadData>(nkv));
  q_pos.assign(n_seq, {});
  int64_t n_blocks = 8;
  for (auto [nq, hist] : spec) n_blocks += int64_t(nkv) * ((nq + hist) / bt + 2);
  std::vector<int32_t> free_ids(n_blocks);
  std::iota(free_ids.begin(), free_ids.end(), 0);
  std::shuffle(free_ids.begin(), free_ids.end(), rng);
  pc = cpu->alloc_kv_pool(GgmlType::F32, n_blocks, bt, hd);
  pg = gpu->alloc_kv_pool(c.pool_type, n_blocks, bt, hd);
  if (tables_) {
    ASSERT_TRUE(gpu->keeps_block_tables());
    gpu->alloc_block_tables(pg, 8 * n_blocks + 1024);
    EXPECT_THROW(gpu->write_block_tables(std::vector<int32_t>{0, int32_t(n_blocks)}, pg), Error)
        << "a block id past the pool";
  }

  // History: per head its own count and gapped positions, stored head by head.
  for (int s = 0; s < n_seq; ++s) {
    int32_t next = 0;
    for (int h = 0; h < nkv; ++h) {
      HeadData& d = heads[s][h];
      const int e = std::max(0, spec[s].second - (h ? randi(0, 17) : 0));
      int32_t p = randi(0, 3);
      for (int i = 0; i < e; ++i) d.pos.push_back(p += randi(1, 3));
      next = std::max(next, d.pos.empty() ? 0 : d.pos.back() + 1);
      const int need = (e + spec[s].first + bt - 1) / bt + (h % 2);  // some tables run long
      for (int b = 0; b < need; ++b) {
        d.blocks.push_back(free_ids.back());
        free_ids.pop_back();
      }
      d.k = randv(size_t(e) * hd, -2, 2);
      d.v = randv(size_t(e) * hd, -2, 2);
      if (e == 0) continue;
      std::vector<int32_t> slots(e);
      for (int i = 0; i < e; ++i) slots[i] = int32_t(slot(d, i));
      Pair k = make(e, hd, d.k), v = make(e, hd, d.v);
      cpu->kv_store(k.c, v.c, 1, slots, d.pos, pc);
      gpu->kv_store(k.g, v.g, 1, slots, d.pos, pg);
    }
    next += randi(0, 4);
    for (int i = 0; i < spec[s].first; ++i) q_pos[s].push_back(next + i);
  }

  // The step: every sequence's new rows in one kv_store (all heads), plus a padding row.
  int64_t rows = 0;
  for (auto [nq, hist] : spec) rows += nq;
  const int64_t cols = int64_t(nkv) * hd;
  std::vector<float> kv_k = randv(size_t((rows + 1) * cols), -2, 2);
  std::vector<float> kv_v = randv(size_t((rows + 1) * cols), -2, 2);
  std::vector<int32_t> slots, pos;
  seqs.assign(n_seq, {});
  int64_t r = 0;
  for (int s = 0; s < n_seq; ++s) {
    seqs[s].q_begin = r;
    seqs[s].n_q = spec[s].first;
    seqs[s].q_pos = q_pos[s].data();
    seqs[s].head_blocks.resize(nkv);
    seqs[s].head_entries.resize(nkv);
    for (int i = 0; i < spec[s].first; ++i, ++r) {
      for (int h = 0; h < nkv; ++h) {
        HeadData& d = heads[s][h];
        slots.push_back(int32_t(slot(d, int64_t(d.pos.size()))));
        d.pos.push_back(q_pos[s][i]);
        const float* kr = kv_k.data() + r * cols + int64_t(h) * hd;
        const float* vr = kv_v.data() + r * cols + int64_t(h) * hd;
        d.k.insert(d.k.end(), kr, kr + hd);
        d.v.insert(d.v.end(), vr, vr + hd);
      }
      pos.push_back(q_pos[s][i]);
    }
  }
  for (int h = 0; h < nkv; ++h) slots.push_back(-1);
  pos.push_back(0);
  Pair k = make(rows + 1, cols, kv_k), v = make(rows + 1, cols, kv_v);
  cpu->kv_store(k.c, v.c, nkv, slots, pos, pc);
  gpu->kv_store(k.g, v.g, nkv, slots, pos, pg);
  refresh_views();

  const std::string tag = "H=" + std::to_string(c.n_heads) + " KV=" + std::to_string(nkv) +
                          " hd=" + std::to_string(hd) + " pool=" + type_name(c.pool_type);
  Pair q = make(rows + 1, int64_t(c.n_heads) * hd, randv(size_t((rows + 1) * c.n_heads * hd), -2, 2));
  compare_attention("attention " + tag, q, rows);
  compare_scores("attention_scores " + tag, q);
  compare_key_norms("key_norms " + tag, 1, nkv - 1);

  // Eviction-style compaction in two sequences, then everything again. Compaction may
  // move the step's own keys, so the bottom-right promise no longer holds.
  newest_ = false;
  compact(1, 0);
  compact(0, nkv - 1);
  compact(4, nkv / 2);
  refresh_views();
  compare_attention("attention after kv_move " + tag, q, rows);
  compare_scores("attention_scores after kv_move " + tag, q);
  compare_key_norms("key_norms after kv_move " + tag, 1, 0);

  cpu->free_kv_pool(pc);
  gpu->free_kv_pool(pg);
}

TEST_F(CudaAttention, GqaMixedPrefillDecodeBf16Pool) {
  run({8, 2, 64, GgmlType::BF16});     // group 4
}
// Heads whose block ids lie in the pool's table space on the device, next to heads whose
// ids travel with the call, in every path: decode, prefill (ours and cuDNN's), scores.
TEST_F(CudaAttention, BlockTablesKeptOnTheDevice) {
  tables_ = true;
  run({32, 8, 128, GgmlType::BF16});
  run({32, 8, 128, GgmlType::BF16}, true);
  run({8, 2, 64, GgmlType::BF16}, false, true);
  run({28, 4, 128, GgmlType::F32});
}
TEST_F(CudaAttention, Llama3ShapesBf16Pool) {
  run({32, 8, 128, GgmlType::BF16});   // Llama-3-8B
}
// Prefill chunks through cuDNN's SDPA where this build and machine have it (the backend's
// name says which path ran), and the scores' one pass over its log-sum-exps.
TEST_F(CudaAttention, PrefillWithNewestKeysLastCudnn) {
  std::printf("[ info ] backend: %s\n", gpu->name().c_str());
  run({32, 8, 128, GgmlType::BF16}, true);
  run({9, 3, 64, GgmlType::BF16}, true);
  run({16, 1, 64, GgmlType::BF16}, true);
  run({28, 4, 128, GgmlType::F32}, true);  // F32 pool: our kernel, whatever the promise
}
// A cuDNN call whose dense K/V would pass the reserved cap runs as several calls (groups of
// entries) that each fit; a 1 MiB cap makes every step here several groups.
TEST_F(CudaAttention, PrefillCudnnSplitIntoGroupsUnderTheDenseCap) {
  setenv("BATCHMAX_CUDA_CUDNN_DENSE_CAP_MIB", "1", 1);
  struct Unset {
    ~Unset() { unsetenv("BATCHMAX_CUDA_CUDNN_DENSE_CAP_MIB"); }
  } unset;
  gpu = new_gpu();  // the cap is read when the backend opens cuDNN
  std::printf("[ info ] backend: %s\n", gpu->name().c_str());
  run({32, 8, 128, GgmlType::BF16}, true);
  run({9, 3, 64, GgmlType::BF16}, true);
}
// Decode rows over short caches run 32-key tiles; a launch with a cache past 2048 entries
// runs 64-key tiles (flash_attention.cu). The other tests cover the first.
TEST_F(CudaAttention, LongDecodeCacheTakesTheWideTile) {
  run({32, 8, 128, GgmlType::BF16}, false, true);
  run({9, 3, 64, GgmlType::BF16}, false, true);
}
TEST_F(CudaAttention, OddGroupsAndF32Pool) {
  run({9, 3, 64, GgmlType::BF16});     // SmolLM2-135M: group 3
  run({28, 4, 128, GgmlType::F32});    // Qwen2-7B: group 7, F32 pool
  run({4, 4, 128, GgmlType::BF16});    // no GQA
  run({16, 1, 64, GgmlType::BF16});    // MQA: group 16 = one whole query tile per row
}

// Backend::rope_kv_store: the fused kernel (bf16 q/k/v and pool, Q/K/V as column views of
// one product, as the model hands them) gives the bits of rope() on q, rope() on k, then
// kv_store(); and it is close to the CPU's. A padding row (slot -1) is roped, not stored.
TEST_F(CudaAttention, RopeKvStoreFusedEqualsRopeThenStore) {
  for (RopeStyle style : {RopeStyle::Interleaved, RopeStyle::Neox})
    for (auto [nq, nkv, hd] : {std::tuple{32, 8, 128}, {9, 3, 64}, {4, 4, 96}}) {
      const int bt = kBlockTokens;
      const int64_t rows = randi(2, 40), n_blocks = 8 + rows * nkv / bt + 2;
      const int64_t cols = int64_t(nq + 2 * nkv) * hd;
      RopeParams p;
      p.style = style;
      p.head_dim = hd;
      p.rotary_dim = hd;
      for (int i = 0; i < hd / 2; ++i) p.inv_freq.push_back(float(std::pow(500000.0, -2.0 * i / hd)));
      std::vector<int32_t> pos(static_cast<size_t>(rows)), slots;
      for (int32_t& x : pos) x = randi(0, 130000);
      std::vector<int32_t> free_slots(static_cast<size_t>(n_blocks * bt));
      std::iota(free_slots.begin(), free_slots.end(), 0);
      std::shuffle(free_slots.begin(), free_slots.end(), rng);
      for (int64_t r = 0; r < rows * nkv; ++r) slots.push_back(free_slots[size_t(r)]);
      // The last row pads (slot -1); rows >= 2, so at least one row is stored.
      for (int h = 0; h < nkv; ++h) slots[size_t((rows - 1) * nkv + h)] = -1;
      const std::vector<float> vals = randv(size_t(rows * cols), -2, 2);
      const std::string tag = std::string(style == RopeStyle::Neox ? "neox" : "interleaved") +
                              " H=" + std::to_string(nq) + " KV=" + std::to_string(nkv) +
                              " hd=" + std::to_string(hd) + " rows=" + std::to_string(rows);
      auto views = [&](const Tensor& all) {
        Tensor q = all, k = all, v = all;
        q.cols = int64_t(nq) * hd;
        k.cols = v.cols = int64_t(nkv) * hd;
        k.data = static_cast<char*>(all.data) + row_bytes(all.type, int64_t(nq) * hd);
        v.data = static_cast<char*>(all.data) + row_bytes(all.type, int64_t(nq + nkv) * hd);
        return std::tuple{q, k, v};
      };
      auto pool_contents = [&](KVPoolView& pool, Backend& b, bool gpu_side) {
        Tensor t;
        t.data = pool.k;
        t.type = pool.type;
        t.rows = pool.n_blocks * pool.block_tokens;
        t.cols = pool.head_dim;
        t.row_stride = row_bytes(pool.type, pool.head_dim);
        Tensor tv = t;
        tv.data = pool.v;
        std::vector<float> k = gpu_side ? down_gpu(t) : down_cpu(t), v = gpu_side ? down_gpu(tv) : down_cpu(tv);
        std::vector<int32_t> ps(size_t(t.rows));
        Tensor tp;
        tp.data = pool.pos;
        tp.type = GgmlType::F32;  // 4-byte elements: downloaded as raw bytes
        tp.rows = t.rows;
        tp.cols = 1;
        tp.row_stride = 4;
        b.download(tp, ps.data());
        return std::tuple{k, v, ps};
      };
      // Fused on the GPU, separate ops on the GPU, and the CPU reference.
      Pair fused = make(rows, cols, vals), separate = make(rows, cols, vals);
      KVPoolView pf = gpu->alloc_kv_pool(GgmlType::BF16, n_blocks, bt, hd);
      KVPoolView ps = gpu->alloc_kv_pool(GgmlType::BF16, n_blocks, bt, hd);
      KVPoolView pc = cpu->alloc_kv_pool(GgmlType::F32, n_blocks, bt, hd);
      for (KVPoolView* pool : {&pf, &ps}) {  // empty slots read as zeros on both
        std::vector<float> zeros(size_t(n_blocks * bt * hd), 0.0f);
        Tensor t{pool->k, GgmlType::BF16, n_blocks * bt, hd, row_bytes(GgmlType::BF16, hd)};
        upload_gpu(zeros, t);
        t.data = pool->v;
        upload_gpu(zeros, t);
      }
      {
        auto [q, k, v] = views(fused.g);
        gpu->rope_kv_store(q, nq, k, v, nkv, slots, pos, p, pf);
      }
      {
        auto [q, k, v] = views(separate.g);
        gpu->rope(q, nq, pos, p);
        gpu->rope(k, nkv, pos, p);
        gpu->kv_store(k, v, nkv, slots, pos, ps);
      }
      {
        auto [q, k, v] = views(fused.c);
        cpu->rope_kv_store(q, nq, k, v, nkv, slots, pos, p, pc);
      }
      expect_close("rope_kv_store q/k/v, fused vs separate " + tag, down_gpu(fused.g), down_gpu(separate.g), 0.0);
      expect_close("rope_kv_store q/k/v vs cpu " + tag, down_gpu(fused.g), down_cpu(fused.c), kBf16OpBound);
      // The written slots' rows (the CPU pool's other slots hold whatever it was made with).
      auto at_slots = [&](const std::vector<float>& all) {
        std::vector<float> out;
        for (int32_t sl : slots)
          if (sl >= 0) out.insert(out.end(), all.begin() + int64_t(sl) * hd, all.begin() + int64_t(sl + 1) * hd);
        return out;
      };
      auto [kf_all, vf, posf] = pool_contents(pf, *gpu, true);
      auto [ks, vs, poss] = pool_contents(ps, *gpu, true);
      auto [kc_all, vc_all, posc] = pool_contents(pc, *cpu, false);
      const std::vector<float> kf = at_slots(kf_all), kc = at_slots(kc_all), vc = at_slots(vc_all);
      expect_close("rope_kv_store pool k, fused vs separate " + tag, kf_all, ks, 0.0);
      expect_close("rope_kv_store pool v, fused vs separate " + tag, vf, vs, 0.0);
      expect_close("rope_kv_store pool k vs cpu " + tag, kf, kc, kBf16OpBound);
      expect_close("rope_kv_store pool v vs cpu " + tag, at_slots(vf), vc, kExactBound);
      for (size_t i = 0; i < slots.size(); ++i) {
        if (slots[i] < 0) continue;
        EXPECT_EQ(posf[size_t(slots[i])], pos[i / size_t(nkv)]) << tag << " slot " << slots[i];
        EXPECT_EQ(poss[size_t(slots[i])], pos[i / size_t(nkv)]) << tag << " slot " << slots[i];
        EXPECT_EQ(posc[size_t(slots[i])], pos[i / size_t(nkv)]) << tag << " slot " << slots[i];
      }
      double stored = 0;  // the check is not vacuous: the stored keys are not all zero
      for (float x : kf) stored += std::fabs(x);
      EXPECT_GT(stored, 0.0) << tag;
      gpu->free_kv_pool(pf);
      gpu->free_kv_pool(ps);
      cpu->free_kv_pool(pc);
    }
}

}  // namespace
}  // namespace batchmax::cudatest
