#pragma once
// Products of few rows (decode steps): out[n, m] = x[n, k] . w[m, k]^T with n <= kMaxRows,
// bf16 operands, fp32 accumulation, bf16 or f32 output. AN EXPERIMENT, off by default
// (BATCHMAX_CUDA_SMALL_GEMM_ROWS=n turns it on for products of <= n rows).
//
// Such a product reads the weights once and does little math per byte, so its time is
// the time to stream w. In a decode step at batch 48 cuBLASLt read the small ones at
// 54-61% of copy bandwidth (QKV, output projection of Llama-3-8B), so a kernel that keeps
// every SM streaming looked worth having. Here the weight rows are A of mma.sync
// m16n8k16 (128 rows a CTA, 16 a warp), the x rows are B (8 a tile), K is split so that
// (row tiles x splits) fills the resident CTAs, and each CTA walks its units through one
// cp.async pipeline (small_m_gemm_kernel.cuh). Splits write fp32 partials; the last split
// of a tile to finish (an atomic counter per tile) adds them in split order, so the
// result is the same bits on every run.
//
// Measured on an H100 (bench/device/small_m_variants.cu, bench/results/
// small_m_gemm_2026-11-27/): slower than cuBLASLt on every Llama-3-8B decode product at
// 1-96 rows; TMA loads matched it only on the largest (gate/up, 91% of copy), and the
// split partials cost more than they gain on the small ones. In the W-limited run it
// took decode from 68% to 59% of copy.
#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

#include "backend/backend.h"

namespace batchmax::cuda {

class SmallMGemm {
 public:
  static constexpr int kMaxRows = 96;

  // partials: device scratch for split partials (shared with cuBLASLt's workspace: the
  // two never run at once on the stream); max_rows: the largest n this kernel takes (0:
  // none).
  SmallMGemm(void* partials, size_t partial_bytes, int max_rows);
  ~SmallMGemm();
  SmallMGemm(const SmallMGemm&) = delete;
  SmallMGemm& operator=(const SmallMGemm&) = delete;

  // Whether run() takes this product: bf16 x and w with 16-byte aligned rows, k a
  // multiple of 64, 1 <= n <= max_rows.
  bool accepts(const Tensor& x, const Tensor& w, const Tensor& out) const;
  void run(const Tensor& x, const Tensor& w, Tensor& out, cudaStream_t s);

  // How a product is split (exposed for tests and benchmarks).
  struct Split {
    int tiles, k_tiles, splits, grid;
  };
  Split plan(int64_t rows, int64_t m, int64_t k) const;

 private:
  float* partials_;
  size_t partial_bytes_;
  int max_rows_;
  int* counters_ = nullptr;  // one per row tile of w, zero between launches
  int sms_ = 0;
};

}  // namespace batchmax::cuda
