// Token sampling where the logits are: one CTA per row picks the argmax (inv_temperature
// <= 0) or draws from softmax(logits * inv_temperature) with the uniform the host drew,
// by the same inverse distribution in vocabulary order as backend/row_sampling.cpp: the
// weights' difference and product in float, the exponential and the sums in double. Only
// the sums' order differs (segments and a scan instead of one running sum), so a token
// can differ from the host's only where u * total falls within rounding of a boundary.
#include <cfloat>
#include <cstdint>

#include "backend/cuda/cuda_common.cuh"

namespace batchmax::cuda {
namespace {

constexpr int kThreads = 512;
constexpr int kWarps = kThreads / 32;

__device__ __forceinline__ double weight(float x, float top, float inv_t) {
  return exp(double(__fmul_rn(__fsub_rn(x, top), inv_t)));
}

// Largest value, first index on ties, of the whole block; every thread gets it.
__device__ void block_argmax(const float* row, int64_t cols, float& best, int64_t& bi) {
  best = -INFINITY;
  bi = INT64_MAX;
  for (int64_t i = threadIdx.x; i < cols; i += kThreads) {
    const float v = row[i];
    if (bi == INT64_MAX || v > best) best = v, bi = i;
  }
  auto better = [](float v2, int64_t i2, float v1, int64_t i1) {
    if (i2 == INT64_MAX) return false;
    if (i1 == INT64_MAX) return true;
    return v2 > v1 || (v2 == v1 && i2 < i1);
  };
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    const float v2 = __shfl_xor_sync(0xffffffffu, best, o);
    const int64_t i2 = __shfl_xor_sync(0xffffffffu, bi, o);
    if (better(v2, i2, best, bi)) best = v2, bi = i2;
  }
  __shared__ float wv[kWarps];
  __shared__ int64_t wi[kWarps];
  if (threadIdx.x % 32 == 0) wv[threadIdx.x / 32] = best, wi[threadIdx.x / 32] = bi;
  __syncthreads();
  best = wv[0];
  bi = wi[0];
  for (int w = 1; w < kWarps; ++w)
    if (better(wv[w], wi[w], best, bi)) best = wv[w], bi = wi[w];
  __syncthreads();
}

__device__ __forceinline__ double warp_inclusive_sum(double v) {
  const int lane = threadIdx.x % 32;
#pragma unroll
  for (int o = 1; o < 32; o <<= 1) {
    const double n = __shfl_up_sync(0xffffffffu, v, o);
    if (lane >= o) v += n;
  }
  return v;
}

__global__ void __launch_bounds__(kThreads) sample_rows_kernel(View<const float> x, int64_t cols,
                                                               const float* inv_temperature,
                                                               const double* uniform, int32_t* out) {
  const float* row = x.row(blockIdx.x);
  float top;
  int64_t arg;
  block_argmax(row, cols, top, arg);
  const float inv_t = inv_temperature[blockIdx.x];
  if (!(inv_t > 0)) {
    if (threadIdx.x == 0) out[blockIdx.x] = int32_t(arg);
    return;
  }
  // Each thread sums the weights of one contiguous segment; an exclusive scan of the
  // segment sums gives where each segment starts in the distribution.
  const int64_t seg = (cols + kThreads - 1) / kThreads;
  const int64_t begin = min(cols, int64_t(threadIdx.x) * seg), end = min(cols, begin + seg);
  double sum = 0;
  for (int64_t i = begin; i < end; ++i) sum += weight(row[i], top, inv_t);
  __shared__ double warp_total[kWarps];
  __shared__ double starts[kThreads + 1];
  const double incl = warp_inclusive_sum(sum);
  if (threadIdx.x % 32 == 31) warp_total[threadIdx.x / 32] = incl;
  __syncthreads();
  if (threadIdx.x < 32) {
    const double t = threadIdx.x < kWarps ? warp_total[threadIdx.x] : 0.0;
    const double s = warp_inclusive_sum(t);
    if (threadIdx.x < kWarps) warp_total[threadIdx.x] = s - t;  // exclusive, per warp
  }
  __syncthreads();
  const double excl = __shfl_up_sync(0xffffffffu, incl, 1);
  starts[threadIdx.x] = warp_total[threadIdx.x / 32] + (threadIdx.x % 32 ? excl : 0.0);
  if (threadIdx.x == kThreads - 1) starts[kThreads] = warp_total[kWarps - 1] + incl;
  __shared__ int owner;
  if (threadIdx.x == 0) owner = INT32_MAX;
  __syncthreads();
  const double r = uniform[blockIdx.x] * starts[kThreads];
  // The segment whose [start, next start) holds r (empty segments hold nothing; the
  // first, should rounding make two claim it).
  if (starts[threadIdx.x] <= r && r < starts[threadIdx.x + 1]) atomicMin(&owner, int(threadIdx.x));
  __syncthreads();
  if (owner == INT32_MAX) {  // r at or past the total by rounding: the argmax, as on the host
    if (threadIdx.x == 0) out[blockIdx.x] = int32_t(arg);
    return;
  }
  // The first warp walks the owner's segment 32 entries at a time: the first entry whose
  // running sum passes what is left of r.
  if (threadIdx.x >= 32) return;
  const int lane = threadIdx.x;
  const int64_t ob = int64_t(owner) * seg, oe = min(cols, ob + seg);
  double left = r - starts[owner];
  for (int64_t base = ob; base < oe; base += 32) {
    const int64_t i = base + lane;
    const double w = i < oe ? weight(row[i], top, inv_t) : 0.0;
    const double run = warp_inclusive_sum(w);
    const unsigned past = __ballot_sync(0xffffffffu, i < oe && left - run < 0);
    if (past) {
      if (lane == 0) out[blockIdx.x] = int32_t(base + __ffs(past) - 1);
      return;
    }
    left -= __shfl_sync(0xffffffffu, run, 31);
  }
  // Rounding between the scan and the walk left r in this segment but past its last
  // entry: its last entry.
  if (lane == 0) out[blockIdx.x] = int32_t(oe - 1);
}

}  // namespace

void launch_sample_rows(const Tensor& x, const float* d_inv_temperature, const double* d_uniform,
                        int32_t* d_out, cudaStream_t s) {
  if (x.type != GgmlType::F32) throw Error("cuda sample_rows: F32 rows expected");
  if (x.rows == 0) return;
  if (x.cols <= 0) throw Error("cuda sample_rows: empty rows");
  if (x.cols > INT32_MAX) throw Error("cuda sample_rows: rows wider than an int32 index");
  sample_rows_kernel<<<unsigned(x.rows), kThreads, 0, s>>>(view<const float>(x), x.cols,
                                                          d_inv_temperature, d_uniform, d_out);
  BMX_LAUNCHED();
}

}  // namespace batchmax::cuda
