#include "backend/cuda/small_m_gemm.h"

#include <algorithm>
#include <array>
#include <string>
#include <utility>

#include "backend/cuda/cuda_common.cuh"
#include "backend/cuda/small_m_gemm_kernel.cuh"

namespace batchmax::cuda {
namespace {

using small_m::Args;
using small_m::kThreads;
// The pipeline the backend uses: per-thread cp.async, 64 columns a stage, 4 stages, 2
// CTAs an SM (the variants bench times the others).
constexpr int kBK = 64;
constexpr int kStages = 4;
constexpr int kTileCount = SmallMGemm::kMaxRows / 8;
constexpr int kMaxCounters = 8192;

using KernelFn = void (*)(Args, CUtensorMap, CUtensorMap);
template <int NT>
KernelFn kernel_for(bool f32_out) {
  using small_m::Load;
  return f32_out ? small_m::gemm_kernel<NT, kBK, kStages, Load::CpAsync, 2, float>
                 : small_m::gemm_kernel<NT, kBK, kStages, Load::CpAsync, 2, bf16>;
}
template <size_t... I>
KernelFn pick(int nt, bool f32_out, std::index_sequence<I...>) {
  KernelFn f = nullptr;
  ((nt == int(I) + 1 ? (f = kernel_for<int(I) + 1>(f32_out), 0) : 0), ...);
  return f;
}
template <size_t... I>
size_t smem_of(int nt, std::index_sequence<I...>) {
  size_t b = 0;
  ((nt == int(I) + 1 ? (b = small_m::Shape<int(I) + 1, kBK, kStages>::kSmem, 0) : 0), ...);
  return b;
}
using Tiles = std::make_index_sequence<kTileCount>;

// CTAs an SM holds for each tile count (same for both output types: set at startup).
std::array<int, kTileCount + 1> g_occupancy{};

}  // namespace

SmallMGemm::SmallMGemm(void* partials, size_t partial_bytes, int max_rows)
    : partials_(static_cast<float*>(partials)),
      partial_bytes_(partial_bytes),
      max_rows_(std::clamp(max_rows, 0, kMaxRows)) {
  int dev = 0;
  BMX_CUDA(cudaGetDevice(&dev));
  BMX_CUDA(cudaDeviceGetAttribute(&sms_, cudaDevAttrMultiProcessorCount, dev));
  BMX_CUDA(cudaMalloc(&counters_, kMaxCounters * sizeof(int)));
  BMX_CUDA(cudaMemset(counters_, 0, kMaxCounters * sizeof(int)));
  for (int nt = 1; nt <= kTileCount; ++nt) {
    const size_t smem = smem_of(nt, Tiles{});
    for (bool f32 : {false, true})
      BMX_CUDA(cudaFuncSetAttribute(pick(nt, f32, Tiles{}),
                                    cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
    int occ = 0;
    BMX_CUDA(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&occ, pick(nt, false, Tiles{}),
                                                           kThreads, smem));
    g_occupancy[nt] = std::max(occ, 1);
  }
}

SmallMGemm::~SmallMGemm() {
  if (counters_) cudaFree(counters_);
}

bool SmallMGemm::accepts(const Tensor& x, const Tensor& w, const Tensor& out) const {
  auto aligned = [](const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; };
  return x.rows >= 1 && x.rows <= max_rows_ && x.type == GgmlType::BF16 &&
         w.type == GgmlType::BF16 && x.cols % kBK == 0 && aligned(x.data) && aligned(w.data) &&
         x.row_stride % 16 == 0 && w.row_stride % 16 == 0 &&
         (out.type == GgmlType::BF16 || out.type == GgmlType::F32);
}

SmallMGemm::Split SmallMGemm::plan(int64_t rows, int64_t m, int64_t k) const {
  const int nt = int((rows + 7) / 8);
  const small_m::Split p = small_m::choose_split(rows, m, k, kBK, int64_t(g_occupancy[nt]) * sms_,
                                                 partial_bytes_, kMaxCounters);
  return {p.tiles, p.k_tiles, p.splits, p.grid};
}

void SmallMGemm::run(const Tensor& x, const Tensor& w, Tensor& out, cudaStream_t s) {
  if (!accepts(x, w, out)) throw Error("small-m gemm: product not supported (see accepts())");
  const int nt = int((x.rows + 7) / 8);
  const Split sp = plan(x.rows, w.rows, x.cols);
  const size_t eo = out.type == GgmlType::F32 ? 4 : 2;
  Args a{static_cast<const bf16*>(x.data),
         static_cast<const bf16*>(w.data),
         out.data,
         partials_,
         counters_,
         int(x.rows),
         int(w.rows),
         sp.k_tiles,
         sp.splits,
         sp.tiles * sp.splits,
         int64_t(x.row_stride / 2),
         int64_t(w.row_stride / 2),
         int64_t(out.row_stride / eo)};
  pick(nt, out.type == GgmlType::F32, Tiles{})<<<sp.grid, kThreads, smem_of(nt, Tiles{}), s>>>(a, CUtensorMap{}, CUtensorMap{});
  BMX_LAUNCHED();
}

}  // namespace batchmax::cuda
