// RMS norm (one CTA per row, fp32 sums) and rotary embedding (in place).
#include <algorithm>

#include "backend/cuda/cuda_common.cuh"

namespace batchmax::cuda {
namespace {

constexpr int kNormThreads = 256;

__device__ __forceinline__ float block_sum(float v, float* red) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) red[warp] = v;
  __syncthreads();
  float t = 0;
  for (int i = 0; i < int(blockDim.x / 32); ++i) t += red[i];
  return t;
}

// out = x * inv * w over a row (each thread its own elements, so out may alias x).
template <bool VEC, class TX, class TW, class TO>
__device__ __forceinline__ void scale_row(const TX* xr, const TW* w, TO* o, int64_t cols,
                                          float inv) {
  if constexpr (VEC) {
    for (int64_t c = threadIdx.x * 8; c < cols; c += blockDim.x * 8) {
      float v[8], g[8];
      load8(xr + c, v);
      load8(w + c, g);
#pragma unroll
      for (int j = 0; j < 8; ++j) v[j] = v[j] * inv * g[j];
      store8(o + c, v);
    }
  } else {
    for (int64_t c = threadIdx.x; c < cols; c += blockDim.x)
      o[c] = from_f<TO>(to_f(xr[c]) * inv * to_f(w[c]));
  }
}

template <class TX, class TW, class TO, bool VEC>
__global__ void __launch_bounds__(kNormThreads) rms_norm_kernel(View<const TX> x, const TW* w,
                                                                View<TO> out, int64_t cols,
                                                                float eps) {
  pdl_begin();
  __shared__ float red[kNormThreads / 32];
  const TX* xr = x.row(blockIdx.x);
  TO* o = out.row(blockIdx.x);
  float ss = 0;
  if constexpr (VEC) {
    for (int64_t c = threadIdx.x * 8; c < cols; c += blockDim.x * 8) {
      float v[8];
      load8(xr + c, v);
#pragma unroll
      for (int j = 0; j < 8; ++j) ss += v[j] * v[j];
    }
  } else {
    for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) ss += to_f(xr[c]) * to_f(xr[c]);
  }
  const float inv = rsqrtf(block_sum(ss, red) / float(cols) + eps);
  // Second pass re-reads the row (L1/L2 hits).
  scale_row<VEC>(xr, w, o, cols, inv);
}

// Rows of up to kRegChunks * 8 * kNormThreads columns (8192: every model we load), in
// launches of up to kRegMaxRows rows, go through the kernels below with the row in
// registers: one round trip to memory before the reduction instead of a loop of them,
// and the norm weight (constant for the whole forward pass) is read before the wait for
// the kernel before, under its tail. These kernels are ~3.5 us latency chains in a
// decode step, two a layer. Same arithmetic in the same order as the loop versions, so
// the same bits.
constexpr int kRegChunks = 4;
// Rows held in registers cost occupancy (~126 registers a thread, 2 CTAs an SM): worth it
// where a launch is a latency chain (decode steps), not where it streams thousands of
// rows (prefill steps), which keep the loop kernels.
constexpr int64_t kRegMaxRows = 256;

__device__ __forceinline__ float round_to(float v, float) { return v; }
__device__ __forceinline__ float round_to(float v, bf16) { return __bfloat162float(__float2bfloat16(v)); }

// The weight chunks of this thread: chunk i covers columns 8 * (tid + i * kNormThreads) on.
template <class TW>
__device__ __forceinline__ void load_weight_chunks(const TW* w, int64_t cols, float (&g)[kRegChunks][8]) {
#pragma unroll
  for (int i = 0; i < kRegChunks; ++i) {
    const int64_t c = 8 * (threadIdx.x + int64_t(i) * kNormThreads);
    if (c < cols) load8(w + c, g[i]);
  }
}

// The end of both kernels below: the row's sum of squares (this thread's share in ss)
// over the CTA, then o = v / rms * g for this thread's chunks.
template <class TO>
__device__ __forceinline__ void scale_chunks(float (&v)[kRegChunks][8], const float (&g)[kRegChunks][8],
                                             float ss, float* red, int64_t cols, float eps, TO* o) {
  const float inv = rsqrtf(block_sum(ss, red) / float(cols) + eps);
#pragma unroll
  for (int i = 0; i < kRegChunks; ++i) {
    const int64_t c = 8 * (threadIdx.x + int64_t(i) * kNormThreads);
    if (c >= cols) continue;
#pragma unroll
    for (int j = 0; j < 8; ++j) v[i][j] = v[i][j] * inv * g[i][j];
    store8(o + c, v[i]);
  }
}

template <class TX, class TW, class TO>
__global__ void __launch_bounds__(kNormThreads) rms_norm_reg_kernel(View<const TX> x, const TW* w,
                                                                    View<TO> out, int64_t cols,
                                                                    float eps) {
  float g[kRegChunks][8], v[kRegChunks][8];
  load_weight_chunks(w, cols, g);  // weights: not written by the kernel before
  pdl_begin();
  __shared__ float red[kNormThreads / 32];
  const TX* xr = x.row(blockIdx.x);
  TO* o = out.row(blockIdx.x);
#pragma unroll
  for (int i = 0; i < kRegChunks; ++i) {
    const int64_t c = 8 * (threadIdx.x + int64_t(i) * kNormThreads);
    if (c < cols) load8(xr + c, v[i]);
  }
  float ss = 0;
#pragma unroll
  for (int i = 0; i < kRegChunks; ++i)
    if (8 * (threadIdx.x + int64_t(i) * kNormThreads) < cols)
#pragma unroll
      for (int j = 0; j < 8; ++j) ss += v[i][j] * v[i][j];
  scale_chunks(v, g, ss, red, cols, eps, o);
}

// x += y, then out = x / rms(x) * w, with the row in registers (out may alias y or x:
// every load comes before the reduction's barrier, every store of out after it).
template <class T, class TW>
__global__ void __launch_bounds__(kNormThreads) add_rms_norm_reg_kernel(View<T> x, View<const T> y,
                                                                        const TW* w, View<T> out,
                                                                        int64_t cols, float eps) {
  float g[kRegChunks][8], a[kRegChunks][8];
  load_weight_chunks(w, cols, g);  // weights: not written by the kernel before
  pdl_begin();
  __shared__ float red[kNormThreads / 32];
  T* xr = x.row(blockIdx.x);
  const T* yr = y.row(blockIdx.x);
  T* o = out.row(blockIdx.x);
  {
    float b[kRegChunks][8];
#pragma unroll
    for (int i = 0; i < kRegChunks; ++i) {
      const int64_t c = 8 * (threadIdx.x + int64_t(i) * kNormThreads);
      if (c < cols) {
        load8(xr + c, a[i]);
        load8(yr + c, b[i]);
      }
    }
#pragma unroll
    for (int i = 0; i < kRegChunks; ++i)
#pragma unroll
      for (int j = 0; j < 8; ++j) a[i][j] = round_to(a[i][j] + b[i][j], T{});  // what x now holds
  }
  float ss = 0;
#pragma unroll
  for (int i = 0; i < kRegChunks; ++i) {
    const int64_t c = 8 * (threadIdx.x + int64_t(i) * kNormThreads);
    if (c >= cols) continue;
    store8(xr + c, a[i]);
#pragma unroll
    for (int j = 0; j < 8; ++j) ss += a[i][j] * a[i][j];
  }
  scale_chunks(a, g, ss, red, cols, eps, o);
}

// Fused residual add and norm: x += y, then out = x / rms(x) * w. One CTA per row; the
// row's sum stays in registers between the two halves, so out may alias y (each thread
// reads its y elements before the barrier that precedes any write of out).
template <class T, class TW, bool VEC>
__global__ void __launch_bounds__(kNormThreads) add_rms_norm_kernel(View<T> x, View<const T> y,
                                                                    const TW* w, View<T> out,
                                                                    int64_t cols, float eps) {
  pdl_begin();
  __shared__ float red[kNormThreads / 32];
  T* xr = x.row(blockIdx.x);
  const T* yr = y.row(blockIdx.x);
  T* o = out.row(blockIdx.x);
  float ss = 0;
  if constexpr (VEC) {
    for (int64_t c = threadIdx.x * 8; c < cols; c += blockDim.x * 8) {
      float a[8], b[8];
      load8(xr + c, a);
      load8(yr + c, b);
#pragma unroll
      for (int j = 0; j < 8; ++j) a[j] += b[j];
      store8(xr + c, a);
      // Sum the stored (rounded) values: what a separate norm of x would read.
      load8(xr + c, a);
#pragma unroll
      for (int j = 0; j < 8; ++j) ss += a[j] * a[j];
    }
  } else {
    for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) {
      const T v = from_f<T>(to_f(xr[c]) + to_f(yr[c]));
      xr[c] = v;
      ss += to_f(v) * to_f(v);
    }
  }
  const float inv = rsqrtf(block_sum(ss, red) / float(cols) + eps);
  scale_row<VEC>(static_cast<const T*>(xr), w, o, cols, inv);
}

// (cos, sin) of every (row, frequency) of a step, computed once and read by every layer.
// The angle in double and reduced to [0, 2pi) first: positions reach 1e5+, where a float
// product alone loses ~1e-2 rad.
__global__ void rope_table_kernel(const int32_t* pos, const float* inv_freq, int half,
                                  int64_t rows, float2* cs) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < rows * half;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t r = i / half;
    const int k = int(i % half);
    double th = double(pos[r]) * double(inv_freq[k]);
    th -= 6.283185307179586 * floor(th * 0.15915494309189535);
    float sn, c;
    sincosf(float(th), &sn, &c);
    cs[i] = make_float2(c, sn);
  }
}

template <class T>
__global__ void rope_kernel(View<T> x, int n_heads, int head_dim, int half, bool neox,
                            const float2* cs, int64_t rows) {
  pdl_begin();
  const int64_t per_row = int64_t(n_heads) * half;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < rows * per_row;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t r = i / per_row;
    const int h = int((i % per_row) / half), k = int(i % half);
    const float2 t = cs[r * half + k];
    T* v = x.row(r) + int64_t(h) * head_dim;
    const int a = neox ? k : 2 * k, b = neox ? k + half : 2 * k + 1;
    const float x0 = to_f(v[a]), x1 = to_f(v[b]);
    v[a] = from_f<T>(x0 * t.x - x1 * t.y);
    v[b] = from_f<T>(x0 * t.y + x1 * t.x);
  }
}

// The same with 16-byte pieces: interleaved, 4 pairs (8 adjacent dims) per thread;
// neox, 8 dims of the first half and their 8 partners.
template <class T, bool kNeox>
__global__ void rope_vec_kernel(View<T> x, int n_heads, int head_dim, int half, const float2* cs,
                                int64_t rows) {
  pdl_begin();
  constexpr int kPairs = kNeox ? 8 : 4;
  const int chunks = half / kPairs;
  const int64_t per_row = int64_t(n_heads) * chunks;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < rows * per_row;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t r = i / per_row;
    const int h = int((i % per_row) / chunks), k0 = int(i % chunks) * kPairs;
    T* v = x.row(r) + int64_t(h) * head_dim;
    const float2* t = cs + r * half + k0;
    if constexpr (kNeox) {
      float a[8], b[8];
      load8(v + k0, a);
      load8(v + k0 + half, b);
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        const float2 c = t[j];
        const float x0 = a[j], x1 = b[j];
        a[j] = x0 * c.x - x1 * c.y;
        b[j] = x0 * c.y + x1 * c.x;
      }
      store8(v + k0, a);
      store8(v + k0 + half, b);
    } else {
      float a[8];
      load8(v + 2 * k0, a);
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const float2 c = t[j];
        const float x0 = a[2 * j], x1 = a[2 * j + 1];
        a[2 * j] = x0 * c.x - x1 * c.y;
        a[2 * j + 1] = x0 * c.y + x1 * c.x;
      }
      store8(v + 2 * k0, a);
    }
  }
}

}  // namespace

void launch_rms_norm(const Tensor& x, const Tensor& w, float eps, Tensor& out, cudaStream_t s) {
  if (x.rows != out.rows || x.cols != out.cols || w.cols != x.cols)
    throw Error("cuda rms_norm: shapes differ");
  if (x.rows == 0) return;
  if (x.rows > INT32_MAX) throw Error("cuda rms_norm: too many rows");
  const bool vec = vec8_ok(x) && vec8_ok(w) && vec8_ok(out);
  dispatch_act(x.type, "rms_norm input", [&](auto tx) {
    using TX = decltype(tx);
    dispatch_act(w.type, "rms_norm weight", [&](auto tw) {
      using TW = decltype(tw);
      dispatch_act(out.type, "rms_norm output", [&](auto to) {
        using TO = decltype(to);
        const TW* wp = static_cast<const TW*>(w.data);
        if (vec && x.cols <= kRegChunks * 8 * kNormThreads && x.rows <= kRegMaxRows)
          launch_pdl(rms_norm_reg_kernel<TX, TW, TO>, unsigned(x.rows), kNormThreads, 0, s,
                     view<const TX>(x), wp, view<TO>(out), x.cols, eps);
        else if (vec)
          launch_pdl(rms_norm_kernel<TX, TW, TO, true>, unsigned(x.rows), kNormThreads, 0, s,
                     view<const TX>(x), wp, view<TO>(out), x.cols, eps);
        else
          launch_pdl(rms_norm_kernel<TX, TW, TO, false>, unsigned(x.rows), kNormThreads, 0, s,
                     view<const TX>(x), wp, view<TO>(out), x.cols, eps);
        BMX_LAUNCHED();
      });
    });
  });
}

void launch_add_rms_norm(Tensor& x, const Tensor& y, const Tensor& w, float eps, Tensor& out,
                         cudaStream_t s) {
  if (x.rows != y.rows || x.cols != y.cols || x.rows != out.rows || x.cols != out.cols ||
      w.cols != x.cols)
    throw Error("cuda add_rms_norm: shapes differ");
  if (x.type != y.type || x.type != out.type) throw Error("cuda add_rms_norm: types differ");
  if (x.rows == 0) return;
  if (x.rows > INT32_MAX) throw Error("cuda add_rms_norm: too many rows");
  const bool vec = vec8_ok(x) && vec8_ok(y) && vec8_ok(w) && vec8_ok(out);
  dispatch_act(x.type, "add_rms_norm input", [&](auto tx) {
    using T = decltype(tx);
    dispatch_act(w.type, "add_rms_norm weight", [&](auto tw) {
      using TW = decltype(tw);
      const TW* wp = static_cast<const TW*>(w.data);
      if (vec && x.cols <= kRegChunks * 8 * kNormThreads && x.rows <= kRegMaxRows)
        launch_pdl(add_rms_norm_reg_kernel<T, TW>, unsigned(x.rows), kNormThreads, 0, s,
                   view<T>(x), view<const T>(y), wp, view<T>(out), x.cols, eps);
      else if (vec)
        launch_pdl(add_rms_norm_kernel<T, TW, true>, unsigned(x.rows), kNormThreads, 0, s,
                   view<T>(x), view<const T>(y), wp, view<T>(out), x.cols, eps);
      else
        launch_pdl(add_rms_norm_kernel<T, TW, false>, unsigned(x.rows), kNormThreads, 0, s,
                   view<T>(x), view<const T>(y), wp, view<T>(out), x.cols, eps);
      BMX_LAUNCHED();
    });
  });
}

void launch_rope_table(const int32_t* d_pos, int64_t rows, const float* d_inv_freq, int half,
                       float2* d_table, cudaStream_t s) {
  const int64_t work = rows * half;
  if (work == 0) return;
  rope_table_kernel<<<int(std::min<int64_t>((work + 255) / 256, 1 << 20)), 256, 0, s>>>(
      d_pos, d_inv_freq, half, rows, d_table);
  BMX_LAUNCHED();
}

void launch_rope(Tensor& x, int n_heads, const float2* d_table, const RopeParams& p,
                 cudaStream_t s) {
  if (p.rotary_dim > p.head_dim || p.rotary_dim % 2 || int64_t(n_heads) * p.head_dim > x.cols)
    throw Error("cuda rope: bad shape");
  const int half = p.rotary_dim / 2;
  const int64_t work = x.rows * n_heads * half;
  if (work == 0) return;
  const int threads = 256;
  const int blocks = int(std::min<int64_t>((work + threads - 1) / threads, 1 << 20));
  const bool neox = p.style == RopeStyle::Neox;
  const int per = neox ? 8 : 4;
  const bool vec = vec8_ok(x) && p.head_dim % 8 == 0 && half % per == 0;
  dispatch_act(x.type, "rope input", [&](auto tx) {
    using T = decltype(tx);
    if (vec) {
      const int64_t vwork = x.rows * n_heads * (half / per);
      const int vblocks = int(std::min<int64_t>((vwork + threads - 1) / threads, 1 << 20));
      if (neox)
        launch_pdl(rope_vec_kernel<T, true>, vblocks, threads, 0, s, view<T>(x), n_heads,
                   p.head_dim, half, d_table, x.rows);
      else
        launch_pdl(rope_vec_kernel<T, false>, vblocks, threads, 0, s, view<T>(x), n_heads,
                   p.head_dim, half, d_table, x.rows);
    } else {
      launch_pdl(rope_kernel<T>, blocks, threads, 0, s, view<T>(x), n_heads, p.head_dim, half,
                 neox, d_table, x.rows);
    }
    BMX_LAUNCHED();
  });
}

}  // namespace batchmax::cuda
