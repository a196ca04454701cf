// The few-row product kernel (small_m_gemm.h) against the CPU reference and cuBLASLt,
// on fresh random inputs: split-K partials, the per-tile counters across launches,
// ragged edges (rows not a multiple of 8, weight rows not a multiple of 128) and the
// same bits on every run.
#include "kernels/cuda_test_util.h"

#ifdef BATCHMAX_HAVE_CUDA
#include <cuda_runtime_api.h>

#include "backend/cuda/small_m_gemm.h"
#endif

namespace batchmax::cudatest {
namespace {

using CudaSmallMGemm = CudaFixture;

struct Case {
  int64_t n, k, m;  // x rows, inner dimension, weight rows
};
// Llama-3-8B-like widths (many splits), SmolLM2's (576, 960 weight rows: a ragged last
// tile), one k tile (no split), and every row-tile count from 1 to 12.
const Case kCases[] = {{1, 4096, 1000}, {8, 1024, 256},  {13, 2048, 1000}, {24, 4096, 640},
                       {40, 576, 960},  {48, 4096, 512}, {57, 1536, 576},  {64, 2048, 384},
                       {72, 1536, 300}, {81, 1024, 200}, {96, 4096, 384},  {96, 64, 200},
                       {3, 64, 130}};

// The kernel is off by default: `gpu` of the fixture is replaced by a backend that routes
// products of <= 96 rows to it, `lt` keeps cuBLASLt.
TEST_F(CudaSmallMGemm, MatchesCpuAndCublasOnFreshInputs) {
  std::unique_ptr<Backend> lt = std::move(gpu);
  gpu = new_gpu(96);
  ASSERT_NE(lt, nullptr);
  for (const Case& c : kCases) {
    const std::vector<float> wv = randv(size_t(c.m * c.k)), xv = randv(size_t(c.n * c.k));
    std::vector<uint16_t> wraw(wv.size());
    for (size_t i = 0; i < wv.size(); ++i) wraw[i] = fp32_to_bf16(wv[i]);
    Tensor wc = cpu->load_weight(GgmlType::BF16, wraw.data(), c.m, c.k);
    Tensor wg = gpu->load_weight(GgmlType::BF16, wraw.data(), c.m, c.k);
    Tensor wl = lt->load_weight(GgmlType::BF16, wraw.data(), c.m, c.k);
    gpu_owned.push_back(wg);
    Pair x = make(c.n, c.k, xv);
    Tensor xl = lt->alloc(GgmlType::BF16, c.n, c.k);
    std::vector<uint16_t> xraw(xv.size());
    for (size_t i = 0; i < xv.size(); ++i) xraw[i] = fp32_to_bf16(xv[i]);
    lt->upload(xraw.data(), xl);
    for (GgmlType ot : {GgmlType::BF16, GgmlType::F32}) {
      const std::string name = "small-m matmul n=" + std::to_string(c.n) + " k=" +
                               std::to_string(c.k) + " m=" + std::to_string(c.m) + " out=" +
                               type_name(ot);
      Pair out = make_out(c.n, c.m, ot);
      cpu->matmul(x.c, wc, nullptr, out.c);
      gpu->matmul(x.g, wg, nullptr, out.g);
      const std::vector<float> got = down_gpu(out.g), want = down_cpu(out.c);
      expect_close(name, got, want, kBf16OpBound);
      // Against cuBLASLt: both accumulate in fp32; they differ by bf16 output rounding.
      Tensor ol = lt->alloc(ot, c.n, c.m);
      lt->matmul(xl, wl, nullptr, ol);
      std::vector<float> cub(size_t(c.n * c.m));
      if (ot == GgmlType::F32) {
        lt->download(ol, cub.data());
      } else {
        std::vector<uint16_t> h(cub.size());
        lt->download(ol, h.data());
        for (size_t i = 0; i < h.size(); ++i) cub[i] = bf16_to_fp32(h[i]);
      }
      lt->free(ol);
      expect_close(name + " vs cuBLASLt", got, cub, ot == GgmlType::F32 ? 1e-5 : kDequantBound);
      // The same bits again (split partials are added in a fixed order).
      poison(out.g);
      gpu->matmul(x.g, wg, nullptr, out.g);
      EXPECT_EQ(down_gpu(out.g), got) << name << ": a second run gave other bits";
    }
    lt->free(xl);
    lt->free(wl);
  }
}

TEST_F(CudaSmallMGemm, RowSlicesAndStridedOutput) {
  gpu = new_gpu(96);  // nothing allocated yet: SetUp allocates no tensors
  const int64_t k = 2048, m = 700;
  std::vector<float> wv = randv(size_t(m * k));
  std::vector<uint16_t> wraw(wv.size());
  for (size_t i = 0; i < wv.size(); ++i) wraw[i] = fp32_to_bf16(wv[i]);
  Tensor wc = cpu->load_weight(GgmlType::BF16, wraw.data(), m, k);
  Tensor wg = gpu->load_weight(GgmlType::BF16, wraw.data(), m, k);
  gpu_owned.push_back(wg);
  Pair x = make(20, k, randv(size_t(20 * k)));
  // Rows 3..10 of x into rows 2..9 of a wider output, its first 700 columns (a column
  // slice through row_stride, as the stacked QKV product's views are).
  Pair out = make_out(12, m + 36);
  Tensor xs_c = x.c.slice_rows(3, 8), xs_g = x.g.slice_rows(3, 8);
  Tensor os_c = out.c.slice_rows(2, 8), os_g = out.g.slice_rows(2, 8);
  os_c.cols = os_g.cols = m;
  cpu->matmul(xs_c, wc, nullptr, os_c);
  gpu->matmul(xs_g, wg, nullptr, os_g);
  std::vector<float> got = down_gpu(out.g), want = down_cpu(out.c);
  std::vector<float> g2, w2;
  for (int64_t r = 2; r < 10; ++r)
    for (int64_t c = 0; c < m; ++c) {
      g2.push_back(got[size_t(r * (m + 36) + c)]);
      w2.push_back(want[size_t(r * (m + 36) + c)]);
    }
  expect_close("small-m matmul slices", g2, w2, kBf16OpBound);
  // Nothing outside the slice was written: the poison is still there.
  for (int64_t r = 0; r < 12; ++r)
    for (int64_t c = 0; c < m + 36; ++c)
      if (r < 2 || r >= 10 || c >= m) {
        ASSERT_TRUE(std::isnan(got[size_t(r * (m + 36) + c)])) << "wrote (" << r << ", " << c << ")";
      }
}

TEST_F(CudaSmallMGemm, SplitsFillTheCardWithinTheScratch) {
#ifdef BATCHMAX_HAVE_CUDA
  void* scratch = nullptr;
  const size_t bytes = size_t(32) << 20;
  ASSERT_EQ(cudaMalloc(&scratch, bytes), cudaSuccess);
  {
    cuda::SmallMGemm g(scratch, bytes, 96);
    // Llama-3-8B's output projection at batch 48: 32 row tiles of 128 cannot fill the
    // card, so k is split; a unit keeps at least 2 k tiles of 64.
    const auto o = g.plan(48, 4096, 4096);
    EXPECT_EQ(o.tiles, 32);
    EXPECT_EQ(o.k_tiles, 64);
    EXPECT_GT(o.splits, 1);
    EXPECT_LE(o.splits, 32);
    EXPECT_GT(o.grid, 32);
    // The vocabulary product has tiles enough: no split, no partials.
    EXPECT_EQ(g.plan(48, 128256, 4096).splits, 1);
    // Partials never outgrow the scratch.
    for (int64_t rows : {1, 48, 96})
      for (int64_t m : {576, 4096, 6144, 28672}) {
        const auto p = g.plan(rows, m, 14336);
        if (p.splits > 1) {
          EXPECT_LE(size_t(p.tiles) * p.splits * ((rows + 7) / 8) * 256 * 16, bytes);
        }
      }
  }
  cudaFree(scratch);
#endif
}

}  // namespace
}  // namespace batchmax::cudatest
