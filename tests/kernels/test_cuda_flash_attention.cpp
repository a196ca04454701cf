// The tensor-core attention path (bf16 q and pool, head_dim 64/128) against the CPU
// reference: long caches over many shuffled blocks, every GQA group size 1..8, decode
// batches that take the split-KV path and ones that don't, causal prefill chunks over
// histories whose positions are out of order (the mask must read positions), and
// queries that see no key at all (zeros, as the reference writes).
//
// Bound: normalised error (||gpu - cpu|| / ||cpu|| over the step's rows) <= kAttnBound
// = 1e-2: q, K, V are bf16-exact on both sides, the GPU rounds P to bf16 for P.V and the
// output to bf16 (~2-4e-3 expected).
#include <numeric>

#include "kernels/cuda_test_util.h"

namespace batchmax::cudatest {
namespace {

struct SeqSpec {
  int n_q;           // query rows this step
  int hist;          // cache entries before the step
  bool store = true;        // the step's own K/V are appended (false: history only)
  bool shuffled = false;    // history positions in random order
  int first_pos = 0;        // first history position
  int q_shift = 0;          // queries start this far after the last history position
};

class CudaFlashAttention : public CudaFixture {
 protected:
  int block_tokens_ = 16;  // entries a block (the engine's); a test may take another size
  // newest: promise AttentionParams::queries_newest (every spec stores its rows), so
  // prefill rows may go to cuDNN's SDPA.
  void run(int n_heads, int n_kv, int hd, const std::vector<SeqSpec>& spec, const std::string& what,
           bool newest = false);
};

void CudaFlashAttention::run(int n_heads, int n_kv, int hd, const std::vector<SeqSpec>& spec,
                             const std::string& what, bool newest) {
  const int n_seq = int(spec.size());
  int64_t n_blocks = 4, rows = 0;
  for (const SeqSpec& s : spec) {
    n_blocks += int64_t(n_kv) * ((s.hist + s.n_q) / block_tokens_ + 2);
    rows += s.n_q;
  }
  std::vector<int32_t> free_ids(n_blocks);
  std::iota(free_ids.begin(), free_ids.end(), 0);
  std::shuffle(free_ids.begin(), free_ids.end(), rng);
  KVPoolView pc = cpu->alloc_kv_pool(GgmlType::F32, n_blocks, block_tokens_, hd);
  KVPoolView pg = gpu->alloc_kv_pool(GgmlType::BF16, n_blocks, block_tokens_, hd);

  std::vector<std::vector<std::vector<int32_t>>> tables(n_seq, std::vector<std::vector<int32_t>>(n_kv));
  std::vector<std::vector<int32_t>> entries(n_seq, std::vector<int32_t>(n_kv));
  std::vector<std::vector<int32_t>> q_pos(n_seq);
  auto slot = [&](int s, int h, int e) { return tables[s][h][e / block_tokens_] * block_tokens_ + e % block_tokens_; };
  for (int s = 0; s < n_seq; ++s) {
    const SeqSpec& sp = spec[s];
    int32_t last = sp.first_pos;
    for (int h = 0; h < n_kv; ++h) {
      const int e = sp.hist - (h && sp.hist > 20 ? randi(0, 17) : 0);  // heads differ (eviction)
      std::vector<int32_t> pos;
      int32_t p = sp.first_pos;
      for (int i = 0; i < e; ++i) pos.push_back(p += randi(1, 3));
      if (!pos.empty()) last = std::max(last, pos.back());
      if (sp.shuffled) std::shuffle(pos.begin(), pos.end(), rng);
      for (int b = 0; b < (e + sp.n_q) / block_tokens_ + 1; ++b) {
        tables[s][h].push_back(free_ids.back());
        free_ids.pop_back();
      }
      entries[s][h] = e;
      if (e == 0) continue;
      std::vector<int32_t> slots(e);
      for (int i = 0; i < e; ++i) slots[i] = slot(s, h, i);
      Pair k = make(e, hd, randv(size_t(e) * hd, -2, 2)), v = make(e, hd, randv(size_t(e) * hd, -2, 2));
      cpu->kv_store(k.c, v.c, 1, slots, pos, pc);
      gpu->kv_store(k.g, v.g, 1, slots, pos, pg);
    }
    for (int i = 0; i < sp.n_q; ++i) q_pos[s].push_back(last + 1 + sp.q_shift + i);
  }

  // The step's rows: K/V appended where the spec says so, all heads in one kv_store.
  const int64_t kv_cols = int64_t(n_kv) * hd;
  std::vector<int32_t> slots, pos;
  std::vector<AttentionSeq> seqs(n_seq);
  for (int s = 0, r = 0; s < n_seq; ++s) {
    seqs[s].q_begin = r;
    seqs[s].n_q = spec[s].n_q;
    seqs[s].q_pos = q_pos[s].data();
    for (int i = 0; i < spec[s].n_q; ++i, ++r) {
      for (int h = 0; h < n_kv; ++h)
        slots.push_back(spec[s].store ? slot(s, h, entries[s][h] + i) : -1);
      pos.push_back(q_pos[s][i]);
    }
    for (int h = 0; h < n_kv; ++h) {
      if (spec[s].store) entries[s][h] += spec[s].n_q;
      seqs[s].head_blocks.push_back(tables[s][h]);
      seqs[s].head_entries.push_back(entries[s][h]);
    }
  }
  Pair k = make(rows, kv_cols, randv(size_t(rows * kv_cols), -2, 2));
  Pair v = make(rows, kv_cols, randv(size_t(rows * kv_cols), -2, 2));
  cpu->kv_store(k.c, v.c, n_kv, slots, pos, pc);
  gpu->kv_store(k.g, v.g, n_kv, slots, pos, pg);

  const int64_t q_cols = int64_t(n_heads) * hd;
  Pair q = make(rows, q_cols, randv(size_t(rows * q_cols), -2, 2));
  Pair out = make_out(rows, q_cols);
  AttentionParams p{n_heads, n_kv, hd, float(1.0 / std::sqrt(double(hd)))};
  p.queries_newest = newest;
  cpu->attention(q.c, seqs, p, pc, out.c);
  gpu->attention(q.g, seqs, p, pg, out.g);
  const std::string tag = what + " H=" + std::to_string(n_heads) + " KV=" + std::to_string(n_kv) +
                          " hd=" + std::to_string(hd);
  expect_close("flash attention " + tag, down_gpu(out.g), down_cpu(out.c), kAttnBound);
  // Twice on the same inputs: a race shows as a different result.
  std::vector<float> first = down_gpu(out.g);
  poison(out.g);
  gpu->attention(q.g, seqs, p, pg, out.g);
  EXPECT_EQ(first, down_gpu(out.g)) << tag << ": two runs differ";
  cpu->free_kv_pool(pc);
  gpu->free_kv_pool(pg);
}

// Few sequences, long caches: the decode items are split over the keys and combined.
TEST_F(CudaFlashAttention, LongDecodeSplitKv) {
  run(32, 8, 128, {{1, 3000}, {1, 1500}, {1, 40}}, "decode split");
  run(9, 3, 64, {{1, 2500}, {2, 700}}, "decode split");
}

// A block size that is not a power of two: slots through a division, not a shift
// (cuda_common.cuh, table_slot), in decode (split and not) and prefill.
TEST_F(CudaFlashAttention, BlockSizeNotAPowerOfTwo) {
  block_tokens_ = 12;
  run(32, 8, 128, {{1, 3000}, {1, 40}}, "decode split, 12-entry blocks");
  std::vector<SeqSpec> spec;
  for (int i = 0; i < 40; ++i) spec.push_back({1, 100 + 41 * i});
  run(32, 8, 128, spec, "decode batch, 12-entry blocks");
  run(8, 2, 64, {{300, 0}, {130, 1500}}, "prefill, 12-entry blocks");
}

// Many decode rows: many items, few or no splits.
TEST_F(CudaFlashAttention, ManyDecodeRows) {
  std::vector<SeqSpec> spec;
  for (int i = 0; i < 48; ++i) spec.push_back({1, 100 + 37 * i});
  run(32, 8, 128, spec, "decode batch");
}

// Causal prefill chunks across many blocks: a first chunk, a later chunk over a long
// history, and a chunk over a history stored in random position order.
TEST_F(CudaFlashAttention, LongPrefillChunks) {
  for (int hd : {64, 128}) {
    run(8, 2, hd, {{300, 0}, {130, 1500}}, "prefill");
    SeqSpec shuffled{150, 800};
    shuffled.shuffled = true;
    run(8, 2, hd, {shuffled, {1, 900}}, "prefill shuffled history");
  }
}

// Prefill chunks that cuDNN's SDPA takes (>= 64 rows) when the build and machine have it,
// next to decode rows and short chunks on our kernel: first chunks, chunks over long and
// shuffled histories, the Llama-3-8B shape with 512-row chunks, and GQA group 3.
TEST_F(CudaFlashAttention, PrefillNewestKeysLast) {
  std::printf("[ info ] backend: %s\n", gpu->name().c_str());
  SeqSpec shuffled{150, 800};
  shuffled.shuffled = true;
  SeqSpec later{96, 300};
  later.q_shift = 5;
  for (int hd : {64, 128}) {
    run(32, 8, hd, {{512, 0}, {512, 700}, {1, 900}, {200, 1500}, {64, 33}, {5, 40}},
        "newest-last prefill", true);
    run(9, 3, hd, {shuffled, later, {100, 0}, {3, 50}, {1, 20}}, "newest-last prefill", true);
  }
}

// Every group size 1..8 (query heads per KV head), with prefill and decode in one step.
TEST_F(CudaFlashAttention, GroupSizes) {
  for (int g = 1; g <= 8; ++g) {
    const int hd = g % 2 ? 64 : 128;
    run(2 * g, 2, hd, {{67, 200}, {1, 1200}, {3, 500}, {9, 0}}, "group " + std::to_string(g));
  }
}

// Queries placed before every stored key see nothing: their rows must be zeros, and
// rows further on in the same chunk see a growing prefix.
TEST_F(CudaFlashAttention, QueriesWithNoVisibleKey) {
  SeqSpec partial{40, 300};  // history ~1000..1600; queries ~1300..1340 see a prefix
  partial.store = false;
  partial.first_pos = 1000;
  partial.q_shift = -300;
  SeqSpec none{20, 200};  // a whole prefill chunk before every key
  none.store = false;
  none.first_pos = 3000;
  none.q_shift = -2000;
  SeqSpec decode_none{1, 500};  // a decode row before every key (split-KV path)
  decode_none.store = false;
  decode_none.first_pos = 3000;
  decode_none.q_shift = -2500;
  for (int hd : {64, 128}) run(8, 2, hd, {partial, none, decode_none, {1, 64}}, "no visible key");
}

}  // namespace
}  // namespace batchmax::cudatest
