#include "backend/cuda/row_sort.h"

#include <cub/block/block_scan.cuh>
#include <cub/device/device_segmented_radix_sort.cuh>

#include <climits>
#include <string>

#include "backend/cuda/cuda_common.cuh"
#include "core/error.h"

namespace batchmax::cuda {
namespace {

// Row r of the launch: keys (with -0 as +0, which CUB's bit order would put below +0),
// column indices, and the segment offsets.
__global__ void gather_keys_kernel(const char* x, size_t row_stride, const int32_t* rows, int cols,
                                   float* keys, int32_t* ids, int* offsets, int n_rows) {
  const int r = int(blockIdx.y);
  const float* src = reinterpret_cast<const float*>(x + size_t(rows[r]) * row_stride);
  const int64_t base = int64_t(r) * cols;
  for (int c = int(blockIdx.x * blockDim.x + threadIdx.x); c < cols; c += int(gridDim.x * blockDim.x)) {
    const float v = src[c];
    keys[base + c] = v == 0.0f ? 0.0f : v;
    ids[base + c] = c;
  }
  if (blockIdx.x == 0 && threadIdx.x == 0) {
    offsets[r] = int(base);
    if (r == n_rows - 1) offsets[n_rows] = int(base + cols);
  }
}

constexpr int kDrawThreads = 1024;

__global__ void __launch_bounds__(kDrawThreads) draw_sorted_kernel(const float* keys,
                                                                  const int32_t* ids, int cols,
                                                                  const SortedDraw* draws,
                                                                  int32_t* out) {
  using Scan = cub::BlockScan<double, kDrawThreads>;
  __shared__ typename Scan::TempStorage scan;
  __shared__ double total_s, nucleus_s;
  __shared__ int keep_s, pick_s;
  const int r = int(blockIdx.x), t = int(threadIdx.x);
  const float* k = keys + int64_t(r) * cols;
  const SortedDraw d = draws[r];
  const float mx = k[0];
  const int seg = (cols + kDrawThreads - 1) / kDrawThreads;
  const int b = min(cols, t * seg), e = min(cols, b + seg);
  auto p = [&](int i) { return exp(double((k[i] - mx) * d.inv_temperature)); };
  double own = 0;
  for (int i = b; i < e; ++i) own += p(i);
  double before = 0;  // exclusive prefix of the segment sums
  Scan(scan).ExclusiveSum(own, before);
  if (t == kDrawThreads - 1) total_s = before + own;
  if (t == 0) {
    keep_s = cols;
    pick_s = -1;
  }
  __syncthreads();
  const double sum = d.whole_mass > 0 ? d.whole_mass : total_s;
  // The nucleus: the first i where the running sum over sum reaches top_p.
  if (d.top_p < 1.0f && e > b && (before + own) / sum >= d.top_p && !(before / sum >= d.top_p)) {
    double acc = before;
    for (int i = b; i < e; ++i) {
      acc += p(i);
      if (acc / sum >= d.top_p) {
        keep_s = i + 1;
        break;
      }
    }
  }
  __syncthreads();
  const int keep = keep_s;
  // Its mass: the segments before the one holding keep - 1, and that one up to keep.
  if (b <= keep - 1 && keep - 1 < e) {
    double acc = before;
    for (int i = b; i < keep; ++i) acc += p(i);
    nucleus_s = acc;
  }
  __syncthreads();
  const double target = d.u * nucleus_s;
  // The pick: the first i < keep whose running sum exceeds u * the nucleus's mass.
  if (b < keep && before <= target && target < before + own) {
    double acc = before;
    for (int i = b; i < min(e, keep); ++i) {
      acc += p(i);
      if (acc > target) {
        pick_s = i;
        break;
      }
    }
  }
  __syncthreads();
  if (t == 0) out[r] = ids[int64_t(r) * cols + (pick_s >= 0 ? pick_s : keep - 1)];
}

struct Layout {
  size_t keys_in, keys_out, ids_in, ids_out, offsets, temp, temp_bytes, total;
};

size_t cub_temp_bytes(int n_items, int n_rows) {
  size_t bytes = 0;
  BMX_CUDA(cub::DeviceSegmentedRadixSort::SortPairsDescending(
      nullptr, bytes, static_cast<const float*>(nullptr), static_cast<float*>(nullptr),
      static_cast<const int32_t*>(nullptr), static_cast<int32_t*>(nullptr), n_items, n_rows,
      static_cast<const int*>(nullptr), static_cast<const int*>(nullptr)));
  return bytes;
}

Layout layout(int64_t cols) {
  if (cols <= 0 || cols > INT_MAX / kRowsPerSort)
    throw Error("cuda sorted_prefix: rows of " + std::to_string(cols) + " entries cannot be sorted");
  auto align = [](size_t n) { return (n + 255) / 256 * 256; };
  const size_t n = size_t(kRowsPerSort) * size_t(cols);
  Layout l{};
  size_t at = 0;
  for (size_t* f : {&l.keys_in, &l.keys_out, &l.ids_in, &l.ids_out}) {
    *f = at;
    at += align(n * 4);
  }
  l.offsets = at;
  at += align((kRowsPerSort + 1) * sizeof(int));
  l.temp = at;
  l.temp_bytes = cub_temp_bytes(int(n), kRowsPerSort);
  l.total = at + align(l.temp_bytes);
  return l;
}

}  // namespace

size_t row_sort_scratch_bytes(int64_t cols) { return layout(cols).total; }

void launch_sort_rows(const Tensor& x, const int32_t* d_rows, int n_rows, void* scratch,
                      size_t scratch_bytes, const float** keys, const int32_t** ids, cudaStream_t s) {
  if (x.type != GgmlType::F32) throw Error("cuda sorted_prefix: F32 rows expected");
  if (n_rows <= 0 || n_rows > kRowsPerSort) throw Error("cuda sorted_prefix: bad row count");
  const Layout l = layout(x.cols);
  if (scratch_bytes < l.total) throw Error("cuda sorted_prefix: scratch too small");
  char* base = static_cast<char*>(scratch);
  float* k_in = reinterpret_cast<float*>(base + l.keys_in);
  float* k_out = reinterpret_cast<float*>(base + l.keys_out);
  int32_t* i_in = reinterpret_cast<int32_t*>(base + l.ids_in);
  int32_t* i_out = reinterpret_cast<int32_t*>(base + l.ids_out);
  int* offsets = reinterpret_cast<int*>(base + l.offsets);
  const int cols = int(x.cols);
  const dim3 grid(unsigned(std::min((cols + 255) / 256, 64)), unsigned(n_rows));
  gather_keys_kernel<<<grid, 256, 0, s>>>(static_cast<const char*>(x.data), x.row_stride, d_rows,
                                          cols, k_in, i_in, offsets, n_rows);
  BMX_CUDA(cudaGetLastError());
  const int n_items = n_rows * cols;
  size_t temp = cub_temp_bytes(n_items, n_rows);
  if (temp > l.temp_bytes) throw Error("cuda sorted_prefix: CUB asks for more scratch than planned");
  temp = l.temp_bytes;
  BMX_CUDA(cub::DeviceSegmentedRadixSort::SortPairsDescending(
      base + l.temp, temp, k_in, k_out, i_in, i_out, n_items, n_rows, offsets, offsets + 1, 0,
      int(sizeof(float) * 8), s));
  *keys = k_out;
  *ids = i_out;
}

void launch_draw_sorted(const float* keys, const int32_t* ids, int64_t cols, int n_rows,
                        const SortedDraw* d_draws, int32_t* d_out, cudaStream_t s) {
  if (n_rows <= 0) return;
  if (cols <= 0 || cols > INT_MAX) throw Error("cuda draw_sorted_rows: bad row width");
  draw_sorted_kernel<<<unsigned(n_rows), kDrawThreads, 0, s>>>(keys, ids, int(cols), d_draws, d_out);
  BMX_CUDA(cudaGetLastError());
}

}  // namespace batchmax::cuda
