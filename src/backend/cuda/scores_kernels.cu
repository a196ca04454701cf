// What eviction policies read: the attention mass each cache entry receives from chosen
// queries (a second pass over the keys once each query's log-sum-exp is known) and the
// L2 norms of the keys. Off the hot path (policy queries only), so written plainly: one
// CTA per (sequence, KV head, query row, query head), threads over keys.
#include <climits>

#include "backend/cuda/cuda_common.cuh"

namespace batchmax::cuda {
namespace {

constexpr int kThreads = 128;

template <class TKV>
__device__ float dot_key(const float* qs, const TKV* k, int hd) {
  float s = 0;
  for (int d = 0; d < hd; d += 8) {
    float kv[8];
    load8(k + d, kv);
#pragma unroll
    for (int x = 0; x < 8; ++x) s += qs[d + x] * kv[x];
  }
  return s;
}

// meta: as for attention (attention_kernels.cu), one query vector per work item.
// out: [n_seqs][n_kv][stride] floats, zeroed; each CTA adds p / group per entry.
template <class TQ, class TKV>
__global__ void __launch_bounds__(kThreads) scores_kernel(
    View<const TQ> q, const int32_t* __restrict__ meta, int seq_at, int n_seqs, int n_kv_heads, int group,
    int hd, float scale_log2, const TKV* __restrict__ pk, const int32_t* __restrict__ ppos,
    int block_tokens, float* out, int64_t stride) {
  extern __shared__ float qs[];  // [hd]
  __shared__ float red_m[kThreads / 32], red_l[kThreads / 32];
  const int32_t* w = meta + 4 * blockIdx.x;
  const int seq = w[0], kvh = w[1], v = w[2];
  const int32_t* sm = meta + seq_at + 4 * seq;
  const int32_t* hm = meta + seq_at + 4 * n_seqs + 2 * (sm[3] + kvh);
  const int32_t* blocks = meta + hm[0];
  const int entries = hm[1];
  const int row = v / group, head = kvh * group + v % group;
  const int qpos = meta[sm[2] + row];
  for (int d = threadIdx.x; d < hd; d += kThreads)
    qs[d] = to_f(q.row(sm[0] + row)[int64_t(head) * hd + d]) * scale_log2;
  __syncthreads();

  auto slot_of = [&](int e) {
    return int64_t(blocks[e / block_tokens]) * block_tokens + e % block_tokens;
  };
  // Pass 1: running max and sum (base 2) over this thread's visible keys.
  float m = -INFINITY, l = 0;
  for (int e = threadIdx.x; e < entries; e += kThreads) {
    const int64_t sl = slot_of(e);
    if (ppos[sl] > qpos) continue;
    const float s = dot_key(qs, pk + sl * hd, hd);
    const float mn = fmaxf(m, s);
    l = l * exp2f(m - mn) + exp2f(s - mn);
    m = mn;
  }
  // Combine (m, l) across the CTA.
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    const float m2 = __shfl_xor_sync(0xffffffffu, m, o), l2 = __shfl_xor_sync(0xffffffffu, l, o);
    const float mn = fmaxf(m, m2);
    l = mn == -INFINITY ? 0.f : l * exp2f(m - mn) + l2 * exp2f(m2 - mn);
    m = mn;
  }
  if (lane == 0) {
    red_m[warp] = m;
    red_l[warp] = l;
  }
  __syncthreads();
  m = -INFINITY;
  l = 0;
  for (int i = 0; i < kThreads / 32; ++i) {
    const float mn = fmaxf(m, red_m[i]);
    if (mn == -INFINITY) continue;
    l = l * exp2f(m - mn) + red_l[i] * exp2f(red_m[i] - mn);
    m = mn;
  }
  if (l == 0) return;  // nothing visible: no mass
  // Pass 2: probabilities, averaged over the group's heads, summed over the queries.
  float* o = out + (int64_t(seq) * n_kv_heads + kvh) * stride;
  const float w_head = 1.0f / (float(group) * l);
  for (int e = threadIdx.x; e < entries; e += kThreads) {
    const int64_t sl = slot_of(e);
    if (ppos[sl] > qpos) continue;
    atomicAdd(o + e, exp2f(dot_key(qs, pk + sl * hd, hd) - m) * w_head);
  }
}

// One warp per entry.
template <class TKV>
__global__ void key_norms_kernel(const TKV* pk, const int32_t* blocks, int block_tokens, int hd,
                                 int64_t n, float* out) {
  const int64_t e = (blockIdx.x * int64_t(blockDim.x) + threadIdx.x) / 32;
  const int lane = threadIdx.x % 32;
  if (e >= n) return;
  const TKV* k = pk + (int64_t(blocks[e / block_tokens]) * block_tokens + e % block_tokens) * hd;
  float s = 0;
  for (int d = lane; d < hd; d += 32) s += to_f(k[d]) * to_f(k[d]);
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
  if (lane == 0) out[e] = sqrtf(s);
}

}  // namespace

void launch_attention_scores(const Tensor& q, const AttentionLaunch& a, const AttentionParams& p,
                             const KVPoolView& pool, float* d_out, int64_t stride,
                             cudaStream_t s) {
  if (a.n_small == 0) return;
  if (p.head_dim % 8) throw Error("cuda attention_scores: head_dim must be a multiple of 8");
  const float log2e = 1.4426950408889634f;
  dispatch_act(q.type, "attention q", [&](auto tq) {
    using TQ = decltype(tq);
    dispatch_act(pool.type, "kv pool", [&](auto tk) {
      using TKV = decltype(tk);
      scores_kernel<TQ, TKV><<<a.n_small, kThreads, p.head_dim * sizeof(float), s>>>(
          view<const TQ>(q), a.meta, a.seq_at, a.n_seqs, p.n_kv_heads, p.n_heads / p.n_kv_heads,
          p.head_dim, p.scale * log2e, static_cast<const TKV*>(pool.k), pool.pos,
          pool.block_tokens, d_out, stride);
      BMX_LAUNCHED();
    });
  });
}

void launch_key_norms(const KVPoolView& pool, const int32_t* d_blocks, int64_t n, float* d_out,
                      cudaStream_t s) {
  if (n == 0) return;
  const int threads = 256;
  const int64_t blocks = (n * 32 + threads - 1) / threads;
  dispatch_act(pool.type, "kv pool", [&](auto tk) {
    using TKV = decltype(tk);
    key_norms_kernel<TKV><<<unsigned(blocks), threads, 0, s>>>(
        static_cast<const TKV*>(pool.k), d_blocks, pool.block_tokens, pool.head_dim, n, d_out);
    BMX_LAUNCHED();
  });
}

}  // namespace batchmax::cuda
