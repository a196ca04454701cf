#pragma once
// The CPU backend: host memory, weights used in place from the mapped file, ops run by
// the AVX2 kernels when the CPU has them (else, or with force_scalar, by the reference
// kernels), split over a persistent thread pool.
#include "backend/backend.h"
#include "core/thread_pool.h"

namespace batchmax {

class CpuBackend : public Backend {
 public:
  explicit CpuBackend(const CpuBackendOptions& opts);

  std::string name() const override;
  int64_t allocated_bytes() const override { return allocated_; }
  int64_t peak_allocated_bytes() const override { return peak_; }
  bool maps_weights() const override { return true; }
  bool uses_avx2() const { return simd_; }
  int n_threads() const { return pool_.size(); }

  Tensor alloc(GgmlType type, int64_t rows, int64_t cols) override;
  void free(Tensor& t) override;
  Tensor load_weight(GgmlType type, const void* data, int64_t rows, int64_t cols) override;
  void upload(const void* host, Tensor& dst) override;
  void download(const Tensor& src, void* host) override;
  void fill_random(Tensor& t, uint64_t seed, float scale, float offset) override;

  void embed(const Tensor& table, std::span<const int32_t> ids, Tensor& out) override;
  void rms_norm(const Tensor& x, const Tensor& w, float eps, Tensor& out) override;
  void matmul(const Tensor& x, const Tensor& w, const Tensor* bias, Tensor& out) override;
  void rope(Tensor& x, int n_heads, std::span<const int32_t> pos, const RopeParams& p) override;
  void swiglu(const Tensor& gate, const Tensor& up, Tensor& out) override;
  void add(Tensor& x, const Tensor& y) override;
  void gather_rows(const Tensor& x, std::span<const int32_t> rows, Tensor& out) override;
  void copy_rows(const Tensor& src, Tensor& dst) override;
  void argmax_rows(const Tensor& x, int32_t* out) override;
  void sample_rows(const Tensor& x, std::span<const float> inv_temperature,
                   std::span<const double> uniform, int32_t* out) override;
  void top_candidates(const Tensor& x, int k, std::span<const float> inv_temperature,
                      float* values, int32_t* ids, double* whole_mass) override;
  void sorted_prefix(const Tensor& x, std::span<const int32_t> rows, int64_t n, float* values,
                     int32_t* ids) override;
  void draw_sorted_rows(const Tensor& x, std::span<const int32_t> rows,
                        std::span<const SortedDraw> draws, int32_t* out) override;

  // F32 or F16 storage. Unused slots hold position INT32_MAX (never visible).
  KVPoolView alloc_kv_pool(GgmlType type, int64_t n_blocks, int block_tokens, int head_dim,
                           bool slot_mass = false) override;
  void free_kv_pool(KVPoolView& pool) override;
  // A negative slot skips that row/head (padding rows).
  void kv_store(const Tensor& k, const Tensor& v, int n_kv_heads, std::span<const int32_t> slots,
                std::span<const int32_t> pos, KVPoolView& pool) override;
  void kv_move(std::span<const int32_t> src, std::span<const int32_t> dst, KVPoolView& pool) override;
  void attention(const Tensor& q, std::span<const AttentionSeq> seqs, const AttentionParams& p,
                 const KVPoolView& pool, Tensor& out) override;
  void attention_scores(const Tensor& q, std::span<const AttentionSeq> seqs,
                        const AttentionParams& p, const KVPoolView& pool,
                        std::span<float* const> out, int64_t out_stride) override;
  void key_norms(const KVPoolView& pool, std::span<const int32_t> blocks, int64_t n_entries,
                 float* out) override;
  void kv_positions(const KVPoolView& pool, std::span<const int32_t> blocks, int64_t n_entries,
                    int32_t* out) override;
  void attention_scores_to(const Tensor& q, std::span<const AttentionSeq> seqs,
                           const AttentionParams& p, const KVPoolView& pool, Tensor& out) override;
  // The host policies and select_keep() themselves: the reference for other backends.
  void evict(std::span<const EvictTask> tasks, const Tensor* mass, KVPoolView& pool) override;
  void accumulate_mass(const Tensor& q, std::span<const AttentionSeq> seqs,
                       const AttentionParams& p, KVPoolView& pool) override;

 private:
  void track(int64_t delta) {
    allocated_ += delta;
    if (allocated_ > peak_) peak_ = allocated_;
  }
  int64_t allocated_ = 0, peak_ = 0;
  bool simd_;
  bool q8_;  // integer-dot decode matmuls (CpuBackendOptions::q8_activations)
  ThreadPool pool_;
};

}  // namespace batchmax
