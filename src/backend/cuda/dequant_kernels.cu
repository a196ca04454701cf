// GGUF weight types to F32/BF16 on the GPU: the raw (quantised) bytes are uploaded and
// expanded here, so only the compact form crosses PCIe. One thread per output element
// (weights load once; clarity over speed). Layouts follow ggml's dequantize_row_*.
#include <algorithm>

#include "backend/cuda/cuda_common.cuh"
#include "format/tensor_types.h"

namespace batchmax::cuda {
namespace {

__device__ __forceinline__ float f16_at(const uint8_t* p) {
  return __half2float(__ushort_as_half(uint16_t(p[0] | (p[1] << 8))));
}

// Scale and min of sub-block j (0..7) of a Q4_K super-block (6-bit packed).
__device__ __forceinline__ void q4k_scale_min(int j, const uint8_t* q, int& sc, int& m) {
  if (j < 4) {
    sc = q[j] & 63;
    m = q[j + 4] & 63;
  } else {
    sc = (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4);
    m = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
  }
}

// Element j of the block starting at b.
template <GgmlType T>
__device__ __forceinline__ float dequant_one(const uint8_t* b, int j);

template <> __device__ __forceinline__ float dequant_one<GgmlType::F32>(const uint8_t* b, int) {
  return *reinterpret_cast<const float*>(b);
}
template <> __device__ __forceinline__ float dequant_one<GgmlType::F16>(const uint8_t* b, int) {
  return f16_at(b);
}
template <> __device__ __forceinline__ float dequant_one<GgmlType::BF16>(const uint8_t* b, int) {
  return __uint_as_float(uint32_t(b[0] | (b[1] << 8)) << 16);
}
template <> __device__ __forceinline__ float dequant_one<GgmlType::Q8_0>(const uint8_t* b, int j) {
  return f16_at(b) * float(int8_t(b[2 + j]));
}
template <> __device__ __forceinline__ float dequant_one<GgmlType::Q4_0>(const uint8_t* b, int j) {
  const uint8_t q = b[2 + (j & 15)];
  return f16_at(b) * float((j < 16 ? (q & 0xF) : (q >> 4)) - 8);
}
template <> __device__ __forceinline__ float dequant_one<GgmlType::Q4_1>(const uint8_t* b, int j) {
  const uint8_t q = b[4 + (j & 15)];
  return f16_at(b) * float(j < 16 ? (q & 0xF) : (q >> 4)) + f16_at(b + 2);
}
template <> __device__ __forceinline__ float dequant_one<GgmlType::Q4_K>(const uint8_t* b, int j) {
  // d, dmin, scales[12], qs[128]; 4 chunks of 64: low nibbles then high nibbles of 32 bytes.
  const int c = j / 64, w = j % 64, l = w % 32, is = 2 * c + (w >= 32);
  const uint8_t q = b[16 + c * 32 + l];
  int sc, m;
  q4k_scale_min(is, b + 4, sc, m);
  return f16_at(b) * float(sc) * float(w < 32 ? (q & 0xF) : (q >> 4)) -
         f16_at(b + 2) * float(m);
}
template <> __device__ __forceinline__ float dequant_one<GgmlType::Q6_K>(const uint8_t* b, int j) {
  // ql[128], qh[64], scales[16] (int8), d; two halves of 128, four quarters of 32 each.
  const uint8_t* ql = b + 64 * (j / 128);
  const uint8_t* qh = b + 128 + 32 * (j / 128);
  const int8_t* sc = reinterpret_cast<const int8_t*>(b + 192) + 8 * (j / 128);
  const int w = j % 128, quarter = w / 32, l = w % 32;
  const uint8_t lo = quarter & 1 ? ql[l + 32] : ql[l];
  const int q = ((quarter < 2 ? (lo & 0xF) : (lo >> 4)) | (((qh[l] >> (2 * quarter)) & 3) << 4)) - 32;
  return f16_at(b + 208) * float(sc[l / 16 + 2 * quarter]) * float(q);
}

template <GgmlType T, class TO>
__global__ void dequant_kernel(const uint8_t* src, int64_t rows, int64_t cols, int64_t bs,
                               int64_t block_bytes, View<TO> out) {
  const int64_t row_bytes = cols / bs * block_bytes;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < rows * cols;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t r = i / cols, c = i % cols;
    const uint8_t* b = src + r * row_bytes + (c / bs) * block_bytes;
    out.row(r)[c] = from_f<TO>(dequant_one<T>(b, int(c % bs)));
  }
}

template <GgmlType T>
void run(const void* d_src, int64_t rows, int64_t cols, const Tensor& out, int64_t row0,
         cudaStream_t s) {
  const TypeTraits& tt = type_traits(T);
  const int threads = 256;
  const int blocks = int(std::min<int64_t>((rows * cols + threads - 1) / threads, 1 << 20));
  dispatch_act(out.type, "dequant output", [&](auto to) {
    using TO = decltype(to);
    View<TO> v = view<TO>(out);
    v.p += row0 * v.stride;
    dequant_kernel<T, TO><<<blocks, threads, 0, s>>>(static_cast<const uint8_t*>(d_src), rows,
                                                     cols, tt.block_size,
                                                     int64_t(tt.block_bytes), v);
    BMX_LAUNCHED();
  });
}

}  // namespace

void launch_dequant(GgmlType t, const void* d_src, int64_t rows, int64_t cols, const Tensor& out,
                    int64_t row0, cudaStream_t s) {
  if (rows == 0 || cols == 0) return;
  switch (t) {
    case GgmlType::F32: return run<GgmlType::F32>(d_src, rows, cols, out, row0, s);
    case GgmlType::F16: return run<GgmlType::F16>(d_src, rows, cols, out, row0, s);
    case GgmlType::BF16: return run<GgmlType::BF16>(d_src, rows, cols, out, row0, s);
    case GgmlType::Q8_0: return run<GgmlType::Q8_0>(d_src, rows, cols, out, row0, s);
    case GgmlType::Q4_0: return run<GgmlType::Q4_0>(d_src, rows, cols, out, row0, s);
    case GgmlType::Q4_1: return run<GgmlType::Q4_1>(d_src, rows, cols, out, row0, s);
    case GgmlType::Q4_K: return run<GgmlType::Q4_K>(d_src, rows, cols, out, row0, s);
    case GgmlType::Q6_K: return run<GgmlType::Q6_K>(d_src, rows, cols, out, row0, s);
    default:
      throw Error("cuda backend: cannot load weights of type " + type_name(t));
  }
}

}  // namespace batchmax::cuda
