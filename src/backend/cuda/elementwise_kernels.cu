// Row-wise gathers and element-wise ops. Each thread handles 8 consecutive elements of
// a row (16-byte accesses) when every tensor allows it, else one element.
#include <algorithm>

#include "backend/cuda/cuda_common.cuh"

namespace batchmax::cuda {
namespace {

constexpr int kThreads = 256;

int blocks_for(int64_t work) {
  return int(std::min<int64_t>((work + kThreads - 1) / kThreads, int64_t(1) << 20));
}

// out[r] = src[idx[r]], converting the element type.
template <class TS, class TO, bool VEC>
__global__ void gather_kernel(View<const TS> src, const int32_t* idx, View<TO> out,
                              int64_t rows, int64_t cols) {
  const int64_t chunks = VEC ? cols / 8 : cols;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < rows * chunks;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t r = i / chunks, c = i % chunks;
    const TS* s = src.row(idx[r]);
    TO* o = out.row(r);
    if constexpr (VEC) {
      float v[8];
      load8(s + 8 * c, v);
      store8(o + 8 * c, v);
    } else {
      o[c] = from_f<TO>(to_f(s[c]));
    }
  }
}

struct SwigluOp {
  __device__ float operator()(float g, float u) const { return swiglu_f(g, u); }
};
struct AddOp {
  __device__ float operator()(float a, float b) const { return a + b; }
};

// o[r] = op(a[r], b[r]); b may have stride 0 (a broadcast row). o may alias a.
template <class T, class TB, class Op, bool VEC>
__global__ void binary_kernel(View<const T> a, View<const TB> b, View<T> o, int64_t rows,
                              int64_t cols, Op op) {
  pdl_begin();
  const int64_t chunks = VEC ? cols / 8 : cols;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < rows * chunks;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t r = i / chunks, c = i % chunks;
    if constexpr (VEC) {
      float x[8], y[8];
      load8(a.row(r) + 8 * c, x);
      load8(b.row(r) + 8 * c, y);
#pragma unroll
      for (int j = 0; j < 8; ++j) x[j] = op(x[j], y[j]);
      store8(o.row(r) + 8 * c, x);
    } else {
      o.row(r)[c] = from_f<T>(op(to_f(a.row(r)[c]), to_f(b.row(r)[c])));
    }
  }
}

template <class T>
__global__ void fill_random_kernel(T* p, int64_t n, uint64_t seed, float scale, float offset) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    uint64_t z = seed + uint64_t(i) * 0x9E3779B97F4A7C15ull;  // splitmix64
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    p[i] = from_f<T>(offset + scale * (float(z >> 40) * (2.0f / 16777216.0f) - 1.0f));
  }
}

void check_same_shape(const Tensor& a, const Tensor& b, const char* what) {
  if (a.rows != b.rows || a.cols != b.cols)
    throw Error(std::string("cuda ") + what + ": shapes differ");
}

void gather(const Tensor& src, const int32_t* d_idx, Tensor& out, cudaStream_t s,
            const char* what) {
  if (src.cols != out.cols) throw Error(std::string("cuda ") + what + ": columns differ");
  if (out.rows == 0) return;
  const bool vec = vec8_ok(src) && vec8_ok(out);
  dispatch_act(src.type, what, [&](auto ts) {
    using TS = decltype(ts);
    dispatch_act(out.type, what, [&](auto to) {
      using TO = decltype(to);
      const int64_t work = out.rows * (vec ? out.cols / 8 : out.cols);
      if (vec)
        gather_kernel<TS, TO, true><<<blocks_for(work), kThreads, 0, s>>>(
            view<const TS>(src), d_idx, view<TO>(out), out.rows, out.cols);
      else
        gather_kernel<TS, TO, false><<<blocks_for(work), kThreads, 0, s>>>(
            view<const TS>(src), d_idx, view<TO>(out), out.rows, out.cols);
      BMX_LAUNCHED();
    });
  });
}

template <class Op>
void binary(const Tensor& a, const Tensor& b, bool b_broadcast, Tensor& o, Op op,
            cudaStream_t s, const char* what) {
  if (o.rows == 0) return;
  if (a.type != o.type) throw Error(std::string("cuda ") + what + ": types differ");
  const bool vec = vec8_ok(a) && vec8_ok(b) && vec8_ok(o);
  const int64_t work = o.rows * (vec ? o.cols / 8 : o.cols);
  dispatch_act(o.type, what, [&](auto t) {
    using T = decltype(t);
    dispatch_act(b.type, what, [&](auto tb) {
      using TB = decltype(tb);
      View<const TB> bv = view<const TB>(b);
      if (b_broadcast) bv.stride = 0;
      if (vec)
        launch_pdl(binary_kernel<T, TB, Op, true>, blocks_for(work), kThreads, 0, s,
                   view<const T>(a), bv, view<T>(o), o.rows, o.cols, op);
      else
        launch_pdl(binary_kernel<T, TB, Op, false>, blocks_for(work), kThreads, 0, s,
                   view<const T>(a), bv, view<T>(o), o.rows, o.cols, op);
      BMX_LAUNCHED();
    });
  });
}

}  // namespace

void launch_embed(const Tensor& table, const int32_t* d_ids, Tensor& out, cudaStream_t s) {
  gather(table, d_ids, out, s, "embed");
}

void launch_gather_rows(const Tensor& x, const int32_t* d_rows, Tensor& out, cudaStream_t s) {
  if (x.type != out.type) throw Error("cuda gather_rows: types differ");
  gather(x, d_rows, out, s, "gather_rows");
}

void launch_swiglu(const Tensor& gate, const Tensor& up, Tensor& out, cudaStream_t s) {
  check_same_shape(gate, out, "swiglu");
  check_same_shape(up, out, "swiglu");
  if (up.type != out.type) throw Error("cuda swiglu: types differ");
  binary(gate, up, false, out, SwigluOp{}, s, "swiglu");
}

void launch_add(Tensor& x, const Tensor& y, cudaStream_t s) {
  check_same_shape(x, y, "add");
  binary(x, y, false, x, AddOp{}, s, "add");
}

void launch_add_bias(Tensor& out, const Tensor& bias, cudaStream_t s) {
  if (bias.cols != out.cols || bias.rows != 1) throw Error("cuda matmul: bias must be [1, m]");
  binary(out, bias, true, out, AddOp{}, s, "bias");
}

void launch_fill_random(void* p, GgmlType t, int64_t n, uint64_t seed, cudaStream_t s,
                        float scale, float offset) {
  dispatch_act(t, "fill_random", [&](auto tt) {
    using T = decltype(tt);
    fill_random_kernel<T><<<blocks_for(n), kThreads, 0, s>>>(static_cast<T*>(p), n, seed, scale,
                                                              offset);
    BMX_LAUNCHED();
  });
}

}  // namespace batchmax::cuda
