// The host's share of a decode step over many sequences, per layer: the KV cache's store
// and views, and the attention call's packing (AttentionWorkPacker, AttentionSumsMemo),
// with the backend's own work stubbed out. A GPU decode step over 512 sequences was
// bound by exactly this (bench/device/cuda_notes.md v20); it shows what the block tables
// kept on the backend save.
//   bench_decode_host [--seqs 512] [--layers 32] [--kv-heads 8] [--entries 576] [--steps 8]
#include <CLI/CLI.hpp>

#include <chrono>
#include <cstdio>
#include <vector>

#include "backend/attention_sums_memo.h"
#include "backend/attention_work.h"
#include "backend/cpu/cpu_backend.h"
#include "core/error.h"
#include "kv/paged_kv_cache.h"

using namespace batchmax;

namespace {

// Pool and tables in host memory; the stores themselves do nothing (the GPU's work).
class HostOnlyBackend : public CpuBackend {
 public:
  explicit HostOnlyBackend(bool tables) : CpuBackend(CpuBackendOptions{1}), tables_(tables) {}
  KVPoolView alloc_kv_pool(GgmlType type, int64_t n_blocks, int block_tokens, int head_dim,
                           bool) override {
    KVPoolView p;
    p.type = type;
    p.n_blocks = n_blocks;
    p.block_tokens = block_tokens;
    p.head_dim = head_dim;
    return p;
  }
  void free_kv_pool(KVPoolView& pool) override { pool = KVPoolView{}; }
  void kv_store(const Tensor&, const Tensor&, int, std::span<const int32_t>,
                std::span<const int32_t>, KVPoolView&) override {}
  void rope_kv_store(Tensor&, int, Tensor&, const Tensor&, int, std::span<const int32_t>,
                     std::span<const int32_t>, const RopeParams&, KVPoolView&) override {}
  bool keeps_block_tables() const override { return tables_; }
  void alloc_block_tables(KVPoolView& pool, int64_t n) override {
    table.assign(size_t(n), 0);
    pool.tables = table.data();
    pool.table_ints = n;
  }
  void write_block_tables(std::span<const int32_t> pairs, KVPoolView&) override {
    for (size_t i = 0; i < pairs.size(); i += 2) table[size_t(pairs[i])] = pairs[i + 1];
  }
  std::vector<int32_t> table;

 private:
  bool tables_;
};

using Clock = std::chrono::steady_clock;
double since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

void run(int n_seqs, int n_layer, int n_kv, int entries, int steps, bool tables) {
  HostOnlyBackend be(tables);
  KVCacheConfig cfg;
  cfg.n_layer = n_layer;
  cfg.n_kv_heads = n_kv;
  cfg.head_dim = 128;
  cfg.block_tokens = 16;
  cfg.block_tables = tables;
  const int64_t max_entries = entries + steps + 16;
  cfg.n_blocks = int64_t(n_seqs) * n_layer * n_kv * ((max_entries + 15) / 16);
  PagedKVCache kv(be, cfg);
  Tensor none;  // the stubbed stores read no tensor
  auto store_all = [&](std::span<const KVAppend> appends, int64_t rows) {
    none.rows = rows;
    for (int l = 0; l < n_layer; ++l) kv.store(l, appends, none, none);
  };
  std::vector<int32_t> pos(size_t(n_seqs) * entries);
  std::vector<KVAppend> appends;
  for (int s = 0; s < n_seqs; ++s) {
    if (!kv.add_sequence(s, max_entries)) throw Error("bench: the pool is too small");
    kv.prepare(s, entries);
    for (int i = 0; i < entries; ++i) pos[size_t(s) * entries + i] = i;
    appends.push_back({s, entries, std::span<const int32_t>(pos.data() + size_t(s) * entries, size_t(entries))});
  }
  store_all(appends, int64_t(n_seqs) * entries);
  for (int s = 0; s < n_seqs; ++s) kv.commit(s);

  AttentionParams ap{4 * n_kv, n_kv, 128, 0.088f};
  AttentionWorkPacker packer;
  AttentionSumsMemo memo;
  std::vector<AttentionSeq> seqs(static_cast<size_t>(n_seqs));
  std::vector<int32_t> qpos(static_cast<size_t>(n_seqs));
  double t_prepare = 0, t_store = 0, t_view = 0, t_pack = 0, t_memo = 0;
  size_t meta_ints = 0;
  int dummy = 0;
  for (int step = 0; step < steps; ++step) {
    auto t0 = Clock::now();
    appends.clear();
    for (int s = 0; s < n_seqs; ++s) {
      kv.prepare(s, 1, StepPhase::Decode);
      qpos[size_t(s)] = entries + step;
      appends.push_back({s, 1, std::span<const int32_t>(&qpos[size_t(s)], 1)});
      seqs[size_t(s)].q_begin = s;
      seqs[size_t(s)].n_q = 1;
      seqs[size_t(s)].q_pos = &qpos[size_t(s)];
    }
    t_prepare += since(t0);
    for (int l = 0; l < n_layer; ++l) {
      auto t = Clock::now();
      none.rows = n_seqs;
      kv.store(l, appends, none, none);
      t_store += since(t);
      t = Clock::now();
      for (int s = 0; s < n_seqs; ++s) kv.attention_view(l, s, seqs[size_t(s)]);
      t_view += since(t);
      t = Clock::now();
      packer.pack({n_seqs, int64_t(ap.n_heads) * 128, cfg.n_blocks, 16, 128, kv.pool().table_ints},
                   seqs, ap, 16, 64, 16);
      meta_ints = packer.meta().size();
      t_pack += since(t);
      t = Clock::now();
      memo.remember(&dummy, 256, seqs);
      t_memo += since(t);
    }
    for (int s = 0; s < n_seqs; ++s) kv.commit(s);
  }
  const double per = 1e6 / (double(steps) * n_layer);
  std::printf("%-6s seqs %4d entries %4d | us a layer: store %7.1f  views %7.1f  pack %7.1f  memo %6.1f"
              "  | metadata %7.1f KB a layer | prepare %6.2f ms a step\n",
              tables ? "tables" : "copy", n_seqs, entries, t_store * per, t_view * per, t_pack * per,
              t_memo * per, meta_ints * 4 / 1024.0, 1e3 * t_prepare / steps);
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"host share of a decode step over many sequences"};
  int seqs = 512, layers = 32, kv_heads = 8, entries = 576, steps = 8;
  app.add_option("--seqs", seqs);
  app.add_option("--layers", layers);
  app.add_option("--kv-heads", kv_heads);
  app.add_option("--entries", entries);
  app.add_option("--steps", steps);
  CLI11_PARSE(app, argc, argv);
  try {
    for (bool tables : {false, true}) run(seqs, layers, kv_heads, entries, steps, tables);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  return 0;
}
