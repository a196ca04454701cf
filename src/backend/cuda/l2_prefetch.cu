#include "backend/cuda/l2_prefetch.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <string>

#include "backend/cuda/cuda_common.cuh"

namespace batchmax::cuda {
namespace {

constexpr int kThreads = 256;

// One bulk prefetch per (row, piece): `piece` bytes (a multiple of 16) at row r's start.
__global__ void __launch_bounds__(kThreads) l2_prefetch_kernel(const char* base, int64_t rows,
                                                               size_t row_stride, uint32_t piece) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  // Nothing here reads what an earlier kernel wrote, nor is read by a later one: the
  // next kernel may start now (it still waits for this grid to end).
  asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");
  for (int64_t r = blockIdx.x * int64_t(kThreads) + threadIdx.x; r < rows;
       r += int64_t(gridDim.x) * kThreads) {
    const char* p = base + r * row_stride;
    asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;\n" ::"l"(p), "r"(piece) : "memory");
  }
#endif
}

}  // namespace

const L2PrefetchConfig& l2_prefetch_config() {
  static const L2PrefetchConfig cfg = [] {
    L2PrefetchConfig c;
    if (const char* e = std::getenv("BATCHMAX_CUDA_L2_PREFETCH"); e && *e)
      c.bytes = int64_t(std::max(0.0, std::atof(e)) * double(1 << 20));
    if (const char* e = std::getenv("BATCHMAX_CUDA_L2_PREFETCH_PATTERN"); e && *e)
      c.row_prefix = std::strcmp(e, "front") != 0;
    if (const char* e = std::getenv("BATCHMAX_CUDA_L2_PREFETCH_ROWS"); e && *e)
      c.max_rows = std::max<int64_t>(0, std::atoll(e));
    return c;
  }();
  return cfg;
}

void launch_l2_prefetch(const Tensor& w, const L2PrefetchConfig& cfg, cudaStream_t s) {
  if (cfg.bytes <= 0 || w.rows <= 0 || !w.data) return;
  const size_t row_bytes = size_t(w.cols) * elem_bytes(w.type);
  // cp.async.bulk wants 16-byte aligned addresses and sizes.
  if (w.row_stride % 16 || reinterpret_cast<uintptr_t>(w.data) % 16) return;
  const char* base = static_cast<const char*>(w.data);
  int64_t rows = 0;
  size_t stride = 0, piece = 0;
  if (cfg.row_prefix) {
    piece = std::min(row_bytes, size_t(cfg.bytes / w.rows)) / 16 * 16;
    rows = w.rows;
    stride = w.row_stride;
  } else {
    // The first bytes in 64 KiB pieces (only where rows are packed: then they are one run).
    if (w.row_stride != row_bytes) return;
    piece = size_t(64) << 10;
    const size_t total = std::min(size_t(cfg.bytes), w.bytes());
    rows = int64_t(total / piece);
    stride = piece;
  }
  if (piece == 0 || rows == 0) return;
  const int blocks = int(std::min<int64_t>((rows + kThreads - 1) / kThreads, 132));
  l2_prefetch_kernel<<<blocks, kThreads, 0, s>>>(base, rows, stride, uint32_t(piece));
  BMX_LAUNCHED();
}

}  // namespace batchmax::cuda
