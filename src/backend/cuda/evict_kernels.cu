// Eviction without the host (Backend::evict): per (sequence, layer, KV head) task, one
// CTA scores the entries, selects the keep set by select_keep()'s rule (radix select on
// the scores' bit patterns, ties to the later entry) and packs the kept entries to the
// front in order. Also reading a head's positions.
#include <algorithm>
#include <climits>

#include "backend/cuda/cuda_common.cuh"
#include "backend/evict_work.h"

namespace batchmax::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr uint32_t kProtected = 0xffffffffu;  // above every finite score's key

// Monotone map of floats to unsigned keys; -0 and +0 tie, as in the host comparison.
__device__ __forceinline__ uint32_t ordered_key(float f) {
  if (f == 0.0f) f = 0.0f;
  const uint32_t u = __float_as_uint(f);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

__device__ __forceinline__ uint64_t mix64(uint64_t x) {  // as policies/random_policy.cpp
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

// Exclusive prefix count of `f` over the CTA in thread order; `total` gets the sum.
// Every thread must call it (it synchronises).
__device__ __forceinline__ int block_scan(bool f, int* warp_tot, int& total) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const unsigned ballot = __ballot_sync(0xffffffffu, f);
  if (lane == 0) warp_tot[warp] = __popc(ballot);
  __syncthreads();
  int base = 0, tot = 0;
#pragma unroll
  for (int w = 0; w < kWarps; ++w) {
    base += w < warp ? warp_tot[w] : 0;
    tot += warp_tot[w];
  }
  __syncthreads();
  total = tot;
  return base + __popc(ballot & ((1u << lane) - 1u));
}

// Task records as backend/evict_work.h packs them (int32 x kEvictTaskInts): blocks offset
// in meta, n, keep, mass row, score kind, pool half-width, sinks, window, seed low, seed
// high, keys offset, unused.
constexpr int kTaskInts = kEvictTaskInts;

template <class TKV, class W>
__global__ void __launch_bounds__(kThreads) evict_kernel(
    const int32_t* __restrict__ meta, const float* __restrict__ mass, int64_t mass_stride,
    uint32_t* __restrict__ keys_all, const TKV* pk, W* kw, W* vw, int32_t* ppos, float* pmass,
    int bt, int hd, int words, int chunk) {
  extern __shared__ uint4 smem_raw[];
  W* buf_k = reinterpret_cast<W*>(smem_raw);
  W* buf_v = buf_k + size_t(chunk) * words;
  int32_t* buf_p = reinterpret_cast<int32_t*>(buf_v + size_t(chunk) * words);
  int32_t* move_src = buf_p + chunk;
  int32_t* move_dst = move_src + chunk;
  float* buf_m = reinterpret_cast<float*>(move_dst + chunk);
  __shared__ unsigned hist[256];
  __shared__ int warp_tot[kWarps];
  __shared__ int sh_int[4];

  const int32_t* t = meta + kTaskInts * blockIdx.x;
  const int32_t* blocks = meta + t[0];
  const int n = t[1], keep = t[2], kind = t[4], half = t[5], sinks = t[6], window = t[7];
  if (n <= keep) return;
  const float* mrow = t[3] >= 0 ? mass + int64_t(t[3]) * mass_stride : nullptr;
  const uint64_t seed = uint64_t(uint32_t(t[8])) | (uint64_t(uint32_t(t[9])) << 32);
  uint32_t* keys = keys_all + t[10];
  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  auto slot_of = [&](int e) { return int64_t(blocks[e / bt]) * bt + e % bt; };
  auto is_protected = [&](int e, int32_t pos) { return pos < sinks || e >= n - window; };

  // 1. One key per entry: the score's order, or kProtected.
  if (kind == int(EvictScore::NegKeyNorm)) {
    // A warp per entry, summed in key_norms_kernel's order (scores_kernels.cu), so the
    // host path on this backend sees the same norms.
    for (int e = warp; e < n; e += kWarps) {
      const int64_t sl = slot_of(e);
      const TKV* k = pk + sl * hd;
      float s = 0;
      for (int d = lane; d < hd; d += 32) s += to_f(k[d]) * to_f(k[d]);
#pragma unroll
      for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
      if (lane == 0) keys[e] = is_protected(e, ppos[sl]) ? kProtected : ordered_key(-sqrtf(s));
    }
  } else {
    for (int e = tid; e < n; e += kThreads) {
      const int32_t pos = ppos[slot_of(e)];
      float s;
      if (kind == int(EvictScore::Mass)) {
        s = mrow[e];
      } else if (kind == int(EvictScore::PooledMass)) {
        s = mrow[e];
        const int lo = max(0, e - half), hi = min(n - 1, e + half);
        for (int j = lo; j <= hi; ++j) s = fmaxf(s, mrow[j]);
      } else if (kind == int(EvictScore::Recency)) {
        s = float(pos);
      } else if (kind == int(EvictScore::Accumulated)) {
        s = pmass[slot_of(e)];
      } else {
        s = float(mix64(seed ^ uint64_t(uint32_t(pos))) >> 40);
      }
      keys[e] = is_protected(e, pos) ? kProtected : ordered_key(s);
    }
  }
  __syncthreads();

  // 2. The threshold: `room` unprotected entries are kept, those with key > T and the
  // last `need` (by index) of those with key == T.
  int n_prot = 0;
  for (int e = tid; e < n; e += kThreads) n_prot += keys[e] == kProtected;
  for (int o = 16; o > 0; o >>= 1) n_prot += __shfl_xor_sync(0xffffffffu, n_prot, o);
  if (lane == 0) warp_tot[warp] = n_prot;
  __syncthreads();
  n_prot = 0;
  for (int w = 0; w < kWarps; ++w) n_prot += warp_tot[w];
  __syncthreads();
  const int room = keep - n_prot;
  uint32_t T = kProtected;
  int cut = INT_MAX;
  if (room > 0) {
    uint32_t prefix = 0, mask = 0;
    int remaining = room;
    for (int shift = 24; shift >= 0; shift -= 8) {
      hist[tid] = 0;
      __syncthreads();
      // Scores of a head share a few exponents, so most keys of a pass fall in a handful
      // of bins: a warp adds each bin once (its lanes matched), not once per lane.
      for (int base = 0; base < n; base += kThreads) {
        const int e = base + tid;
        const uint32_t k = e < n ? keys[e] : kProtected;
        const bool counted = k != kProtected && (k & mask) == prefix;
        const uint32_t bin = counted ? (k >> shift) & 255u : 256u + lane;  // lanes not counted match none
        const unsigned peers = __match_any_sync(0xffffffffu, bin);
        if (counted && (__ffs(peers) - 1) == lane) atomicAdd(&hist[bin], unsigned(__popc(peers)));
      }
      __syncthreads();
      // The largest digit d >= 1 whose bins >= d hold `remaining` keys (else 0), and the
      // count above it. Warp 0: lane L walks bins 255 - 8L down to 248 - 8L.
      if (warp == 0) {
        int h[8], local = 0;
#pragma unroll
        for (int i = 0; i < 8; ++i) {
          h[i] = int(hist[255 - 8 * lane - i]);
          local += h[i];
        }
        int incl = local;
#pragma unroll
        for (int o = 1; o < 32; o <<= 1) {
          const int t = __shfl_up_sync(0xffffffffu, incl, o);
          if (lane >= o) incl += t;
        }
        int c = incl - local, found = -1, above = 0;
#pragma unroll
        for (int i = 0; i < 8; ++i) {
          const int d = 255 - 8 * lane - i;
          if (found < 0 && d >= 1 && c + h[i] >= remaining) {
            found = d;
            above = c;
          }
          c += h[i];
        }
        const unsigned hit = __ballot_sync(0xffffffffu, found >= 0);
        int d = 0, cum;
        if (hit) {
          const int src = __ffs(hit) - 1;
          d = __shfl_sync(0xffffffffu, found, src);
          cum = __shfl_sync(0xffffffffu, above, src);
        } else {
          cum = __shfl_sync(0xffffffffu, incl - h[7], 31);  // every bin but 0
        }
        if (lane == 0) {
          sh_int[0] = d;
          sh_int[1] = remaining - cum;
        }
      }
      __syncthreads();
      prefix |= uint32_t(sh_int[0]) << shift;
      mask |= 255u << shift;
      remaining = sh_int[1];
      __syncthreads();
    }
    T = prefix;
    // The remaining `need` ties: the highest indices among key == T.
    int need = remaining;
    if (tid == 0) sh_int[2] = -1;
    for (int top = n - 1; top >= 0; top -= kThreads) {
      const int e = top - tid;
      const bool f = e >= 0 && keys[e] == T;
      int total;
      const int incl = block_scan(f, warp_tot, total) + (f ? 1 : 0);
      if (f && incl == need) sh_int[2] = e;
      need -= total;
      __syncthreads();
      if (sh_int[2] >= 0 || need <= 0) break;
    }
    cut = sh_int[2];
  }

  // 3. Compaction in chunks: every source of a chunk is read before any of its
  // destinations is written; destinations never reach a later chunk's sources.
  int j0 = 0;
  for (int c0 = 0; c0 < n; c0 += chunk) {
    const int e = c0 + tid;
    bool f = false;
    if (tid < chunk && e < n) {
      const uint32_t k = keys[e];
      f = k == kProtected || (room > 0 && (k > T || (k == T && e >= cut)));
    }
    int tot;
    const int dst = j0 + block_scan(f, warp_tot, tot);
    const bool mv = f && dst != e;
    int n_mv;
    const int mi = block_scan(mv, warp_tot, n_mv);
    if (mv) {
      move_src[mi] = int32_t(slot_of(e));
      move_dst[mi] = int32_t(slot_of(dst));
    }
    __syncthreads();
    if (n_mv) {
      for (int i = tid; i < n_mv * words; i += kThreads) {
        const int r = i / words, w = i % words;
        buf_k[i] = kw[int64_t(move_src[r]) * words + w];
        buf_v[i] = vw[int64_t(move_src[r]) * words + w];
      }
      for (int i = tid; i < n_mv; i += kThreads) {
        buf_p[i] = ppos[move_src[i]];
        if (pmass) buf_m[i] = pmass[move_src[i]];
      }
      __syncthreads();
      for (int i = tid; i < n_mv * words; i += kThreads) {
        const int r = i / words, w = i % words;
        kw[int64_t(move_dst[r]) * words + w] = buf_k[i];
        vw[int64_t(move_dst[r]) * words + w] = buf_v[i];
      }
      for (int i = tid; i < n_mv; i += kThreads) {
        ppos[move_dst[i]] = buf_p[i];
        if (pmass) pmass[move_dst[i]] = buf_m[i];
      }
      __syncthreads();
    }
    j0 += tot;
  }
}

__global__ void positions_kernel(const int32_t* ppos, const int32_t* blocks, int bt, int64_t n,
                                 int32_t* out) {
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < n;
       e += int64_t(gridDim.x) * blockDim.x)
    out[e] = ppos[int64_t(blocks[e / bt]) * bt + e % bt];
}

}  // namespace

void launch_evict(const int32_t* d_meta, int n_tasks, const float* d_mass, int64_t mass_stride,
                  uint32_t* d_keys, KVPoolView& pool, cudaStream_t s) {
  if (n_tasks == 0) return;
  const size_t rb = size_t(pool.head_dim) * elem_bytes(pool.type);
  // K and V staging of one chunk: 32 KiB, so two CTAs fit an SM beside the histograms.
  const int chunk = int(std::max<size_t>(1, std::min<size_t>(kThreads, (size_t(16) << 10) / rb)));
  auto go = [&](auto w) {
    using W = decltype(w);
    const int words = int(rb / sizeof(W));
    const size_t smem = 2 * size_t(chunk) * rb + 4 * size_t(chunk) * sizeof(int32_t);
    dispatch_act(pool.type, "kv pool", [&](auto tk) {
      using TKV = decltype(tk);
      evict_kernel<TKV, W><<<n_tasks, kThreads, smem, s>>>(
          d_meta, d_mass, mass_stride, d_keys, static_cast<const TKV*>(pool.k),
          static_cast<W*>(pool.k), static_cast<W*>(pool.v), pool.pos, pool.mass, pool.block_tokens,
          pool.head_dim, words, chunk);
      BMX_LAUNCHED();
    });
  };
  if (rb % 16 == 0) go(uint4{});
  else if (rb % 4 == 0) go(uint32_t{});
  else go(uint16_t{});
}

void launch_kv_positions(const KVPoolView& pool, const int32_t* d_blocks, int64_t n,
                         int32_t* d_out, cudaStream_t s) {
  if (n == 0) return;
  const int blocks = int(std::min<int64_t>((n + kThreads - 1) / kThreads, 4096));
  positions_kernel<<<blocks, kThreads, 0, s>>>(pool.pos, d_blocks, pool.block_tokens, n, d_out);
  BMX_LAUNCHED();
}

}  // namespace batchmax::cuda
