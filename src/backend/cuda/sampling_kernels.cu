// Token picks where the logits are, one CTA a row.
// - argmax_rows: the largest value, the first on ties.
// - sample_rows: the argmax (inv_temperature <= 0) or a draw from
//   softmax(logits * inv_temperature) with the uniform the host drew, by the same inverse
//   distribution in vocabulary order as backend/row_sampling.cpp: the weights' difference
//   and product in float, the exponential and the sums in double. Only the sums' order
//   differs (segments and a scan instead of one running sum), so a token can differ from
//   the host's only where u * total falls within rounding of a boundary.
// - top_candidates: a row's best entries, sorted, and its mass (top-k / top-p sampling).
#include <cfloat>
#include <cstdint>

#include "backend/cuda/cuda_common.cuh"
#include "backend/row_sampling.h"

namespace batchmax::cuda {
namespace {

constexpr int kThreads = 512;
constexpr int kWarps = kThreads / 32;

__device__ __forceinline__ double weight(float x, float top, float inv_t) {
  return exp(double(__fmul_rn(__fsub_rn(x, top), inv_t)));
}

// Largest value, first index on ties, of the whole block; every thread gets it.
template <int kT>
__device__ void block_argmax(const float* row, int64_t cols, float& best, int64_t& bi) {
  constexpr int kW = kT / 32;
  best = -INFINITY;
  bi = INT64_MAX;
  // Each thread meets its entries in increasing index, so `>` keeps the first of equals.
  auto consider = [&](float v, int64_t i) {
    if (bi == INT64_MAX || v > best) best = v, bi = i;
  };
  if (cols % 4 == 0 && reinterpret_cast<uintptr_t>(row) % 16 == 0) {
    // 16-byte loads, four in flight a thread: a 128k-entry row was ~24 us with one
    // 4-byte load at a time, a latency chain per CTA rather than bandwidth.
    const float4* r4 = reinterpret_cast<const float4*>(row);
    const int64_t n4 = cols / 4;
    int64_t i = threadIdx.x;
    auto take = [&](const float4 v, int64_t j) {
      consider(v.x, 4 * j);
      consider(v.y, 4 * j + 1);
      consider(v.z, 4 * j + 2);
      consider(v.w, 4 * j + 3);
    };
    for (; i + 3 * kT < n4; i += 4 * kT) {
      float4 v[4];
#pragma unroll
      for (int u = 0; u < 4; ++u) v[u] = r4[i + u * kT];
#pragma unroll
      for (int u = 0; u < 4; ++u) take(v[u], i + u * kT);
    }
    for (; i < n4; i += kT) take(r4[i], i);
  } else {
    for (int64_t i = threadIdx.x; i < cols; i += kT) consider(row[i], i);
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
  __shared__ float wv[kW];
  __shared__ int64_t wi[kW];
  if (threadIdx.x % 32 == 0) wv[threadIdx.x / 32] = best, wi[threadIdx.x / 32] = bi;
  __syncthreads();
  best = wv[0];
  bi = wi[0];
  for (int w = 1; w < kW; ++w)
    if (better(wv[w], wi[w], best, bi)) best = wv[w], bi = wi[w];
  __syncthreads();
}

__global__ void __launch_bounds__(kThreads) argmax_kernel(View<const float> x, int64_t cols,
                                                          int32_t* out) {
  float best;
  int64_t bi;
  block_argmax<kThreads>(x.row(blockIdx.x), cols, best, bi);
  if (threadIdx.x == 0) out[blockIdx.x] = int32_t(bi == INT64_MAX ? 0 : bi);
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
  block_argmax<kThreads>(row, cols, top, arg);
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
  // entry (u near 1 over a peaked row): the argmax, as the host does when its running sum
  // never passes r. Never the segment's last entry, whose weight may be 0.
  if (lane == 0) out[blockIdx.x] = int32_t(arg);
}

// ---- top_candidates: radix select of the k-th largest, collection, bitonic sort ----

constexpr int kCandThreads = 1024;
constexpr int kCandWarps = kCandThreads / 32;

// Larger floats give larger keys; -0 is +0 (they compare equal, as on the host).
__device__ __forceinline__ uint32_t order_key(float v) {
  uint32_t b = __float_as_uint(v);
  if (b == 0x80000000u) b = 0;
  return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}

// a before b: larger value, then smaller index.
__device__ __forceinline__ bool cand_before(float va, int32_t ia, float vb, int32_t ib) {
  return va > vb || (va == vb && ia < ib);
}

__global__ void __launch_bounds__(kCandThreads) top_candidates_kernel(
    View<const float> x, int64_t cols, int k, const float* inv_temperature, float* out_v,
    int32_t* out_i, double* out_mass) {
  const float* row = x.row(blockIdx.x);
  __shared__ uint32_t hist[256];
  __shared__ uint32_t s_prefix, s_need, s_eq;
  __shared__ float cv[kMaxTopCandidates];
  __shared__ int32_t ci[kMaxTopCandidates];
  __shared__ int s_gt, s_taken;
  __shared__ int warp_count[kCandWarps];
  __shared__ double warp_sum[kCandWarps];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  if (threadIdx.x == 0) s_prefix = 0, s_need = uint32_t(k);
  // Four passes of 8 bits from the top: which byte the k-th largest key has, given the
  // bytes above it; s_need counts how many keys equal to the prefix are still to take.
  uint32_t mask = 0;
  for (int shift = 24; shift >= 0; shift -= 8) {
    for (int b = threadIdx.x; b < 256; b += kCandThreads) hist[b] = 0;
    __syncthreads();
    const uint32_t prefix = s_prefix;
    for (int64_t base = 0; base < cols; base += kCandThreads) {
      const int64_t i = base + threadIdx.x;
      const uint32_t key = i < cols ? order_key(row[i]) : 0;
      const bool in = i < cols && (key & mask) == prefix;
      const uint32_t bin = (key >> shift) & 255u;
      // Lanes with the same bin add once (logits crowd a few bins of the top byte).
      const unsigned active = __ballot_sync(0xffffffffu, in);
      if (in) {
        const unsigned same = __match_any_sync(active, bin);
        if (lane == __ffs(same) - 1) atomicAdd(&hist[bin], uint32_t(__popc(same)));
      }
    }
    __syncthreads();
    if (threadIdx.x == 0) {
      uint32_t need = s_need, cum = 0;
      int b = 255;
      for (; b > 0; --b) {
        if (cum + hist[b] >= need) break;
        cum += hist[b];
      }
      s_need = need - cum;
      s_prefix = prefix | (uint32_t(b) << shift);
      s_eq = hist[b];
    }
    mask |= 255u << shift;
    __syncthreads();
  }
  const uint32_t kth = s_prefix;
  const uint32_t need_eq = s_need, n_eq = s_eq;
  if (threadIdx.x == 0) s_gt = 0, s_taken = 0;
  __syncthreads();
  // Every key above the k-th goes in (k - need_eq of them), in any order...
  const int n_gt = k - int(need_eq);
  for (int64_t i = threadIdx.x; i < cols; i += kCandThreads) {
    const float v = row[i];
    const uint32_t key = order_key(v);
    if (key > kth) {
      const int p = atomicAdd(&s_gt, 1);
      cv[p] = v;
      ci[p] = int32_t(i);
    } else if (key == kth && n_eq == need_eq) {
      const int p = n_gt + atomicAdd(&s_taken, 1);
      cv[p] = v;
      ci[p] = int32_t(i);
    }
  }
  __syncthreads();
  // ...and of the keys equal to it, the first need_eq by index (when not all of them).
  if (n_eq != need_eq) {
    for (int64_t base = 0; base < cols; base += kCandThreads) {
      const int64_t i = base + threadIdx.x;
      const bool eq = i < cols && order_key(row[i]) == kth;
      const unsigned bal = __ballot_sync(0xffffffffu, eq);
      if (lane == 0) warp_count[warp] = __popc(bal);
      __syncthreads();
      int before = s_taken;
      for (int w = 0; w < warp; ++w) before += warp_count[w];
      before += __popc(bal & ((1u << lane) - 1u));
      if (eq && before < int(need_eq)) {
        cv[n_gt + before] = row[i];
        ci[n_gt + before] = int32_t(i);
      }
      __syncthreads();
      if (threadIdx.x == 0) {
        int total = 0;
        for (int w = 0; w < kCandWarps; ++w) total += warp_count[w];
        s_taken += total;
      }
      __syncthreads();
      if (s_taken >= int(need_eq)) break;
    }
  }
  // Bitonic sort of the k entries, padded to a power of two with entries that sort last.
  int p2 = 1;
  while (p2 < k) p2 <<= 1;
  for (int t = threadIdx.x; t < p2; t += kCandThreads)
    if (t >= k) cv[t] = -INFINITY, ci[t] = INT32_MAX;
  __syncthreads();
  for (int size = 2; size <= p2; size <<= 1)
    for (int stride = size >> 1; stride > 0; stride >>= 1) {
      for (int t = threadIdx.x; t < p2; t += kCandThreads) {
        const int o = t ^ stride;
        if (o > t) {
          const bool first_before = ((t & size) == 0);  // this run sorts best-first
          const bool swap = first_before ? cand_before(cv[o], ci[o], cv[t], ci[t])
                                         : cand_before(cv[t], ci[t], cv[o], ci[o]);
          if (swap) {
            const float fv = cv[t];
            const int32_t fi = ci[t];
            cv[t] = cv[o], ci[t] = ci[o];
            cv[o] = fv, ci[o] = fi;
          }
        }
      }
      __syncthreads();
    }
  for (int t = threadIdx.x; t < k; t += kCandThreads) {
    out_v[int64_t(blockIdx.x) * k + t] = cv[t];
    out_i[int64_t(blockIdx.x) * k + t] = ci[t];
  }
  // The row's mass at the temperature, against its largest value.
  const float inv_t = inv_temperature[blockIdx.x];
  if (!(inv_t > 0)) {
    if (threadIdx.x == 0) out_mass[blockIdx.x] = 0;
    return;
  }
  const float top = cv[0];
  double sum = 0;
  for (int64_t i = threadIdx.x; i < cols; i += kCandThreads) sum += weight(row[i], top, inv_t);
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, o);
  if (lane == 0) warp_sum[warp] = sum;
  __syncthreads();
  if (threadIdx.x == 0) {
    double total = 0;
    for (int w = 0; w < kCandWarps; ++w) total += warp_sum[w];
    out_mass[blockIdx.x] = total;
  }
}

}  // namespace

void launch_argmax_rows(const Tensor& x, int32_t* d_out, cudaStream_t s) {
  if (x.type != GgmlType::F32) throw Error("cuda argmax_rows: F32 rows expected");
  if (x.rows == 0) return;
  if (x.cols <= 0) throw Error("cuda argmax_rows: empty rows");
  argmax_kernel<<<unsigned(x.rows), kThreads, 0, s>>>(view<const float>(x), x.cols, d_out);
  BMX_LAUNCHED();
}

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

void launch_top_candidates(const Tensor& x, int k, const float* d_inv_temperature, float* d_values,
                           int32_t* d_ids, double* d_mass, cudaStream_t s) {
  if (x.type != GgmlType::F32) throw Error("cuda top_candidates: F32 rows expected");
  if (x.rows == 0) return;
  if (k < 1 || k > kMaxTopCandidates || k > x.cols)
    throw Error("cuda top_candidates: k must be in [1, min(cols, 1024)]");
  if (x.cols > INT32_MAX) throw Error("cuda top_candidates: rows wider than an int32 index");
  top_candidates_kernel<<<unsigned(x.rows), kCandThreads, 0, s>>>(
      view<const float>(x), x.cols, k, d_inv_temperature, d_values, d_ids, d_mass);
  BMX_LAUNCHED();
}

}  // namespace batchmax::cuda
