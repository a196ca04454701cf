// What eviction policies read: the attention mass each cache entry receives from chosen
// queries (a second pass over the keys once each query's log-sum-exp is known) and the
// L2 norms of the keys. Batch-Max runs it after every prefill chunk (the chunk's last
// obs_window queries against up to budget + chunk keys), so it is tiled, see below.
#include <algorithm>
#include <climits>

#include "backend/cuda/cuda_common.cuh"

namespace batchmax::cuda {
namespace {

// Tiled: a CTA takes one (sequence, KV head, tile of kQT query vectors) work item (meta
// as for attention, attention_kernels.cu, tiles of kQT vectors) and one split of kKS
// keys (blockIdx.y), so a chunk's eviction spreads over many CTAs. The query tile and
// the key split sit in shared memory as floats; thread t scores query vector t % 32
// against keys t / 32 + 8 r: every warp reads one key row (a broadcast) and 32 padded
// query rows (no bank conflicts). Pass 1 writes each (vector, split)'s running max and
// sum (base 2); pass 2 combines them over the splits, recomputes the scores, and sums
// p / group over the tile's vectors with a warp reduction: one atomicAdd per key and CTA.
constexpr int kQT = 32;  // query vectors per CTA (a warp's lanes)
constexpr int kKS = 32;  // keys per CTA
constexpr int kSplitThreads = 256;
constexpr int kKPerThread = kKS / (kSplitThreads / 32);

template <class TQ, class TKV, bool kPass2>
__global__ void __launch_bounds__(kSplitThreads) scores_split_kernel(
    View<const TQ> q, const int32_t* __restrict__ meta, int seq_at, int n_seqs, int n_kv_heads,
    int group, int hd, float scale_log2, const TKV* __restrict__ pk,
    const int32_t* __restrict__ ppos, const int32_t* __restrict__ ptables, int block_tokens,
    float2* __restrict__ part,
    int n_splits, int item0, float* out, int64_t stride) {
  extern __shared__ float sm[];
  const int hp = hd + 1;  // padded rows
  float* qs = sm;                  // [kQT][hp]
  float* ks = qs + kQT * hp;       // [kKS][hp]
  __shared__ int kpos[kKS];
  __shared__ int qpos_s[kQT];
  __shared__ float2 fin[kQT];      // pass 2: (max, 1 / (group * sum)) per vector
  const int32_t* w = meta + 4 * (item0 + int(blockIdx.x));
  const int seq = w[0], kvh = w[1], v0 = w[2];
  const int32_t* smeta = meta + seq_at + 4 * seq;
  const int32_t* hm = meta + seq_at + 4 * n_seqs + 2 * (smeta[3] + kvh);
  const int32_t* blocks = head_block_ids(meta, ptables, hm[0]);
  const int entries = hm[1];
  const int k0 = blockIdx.y * kKS;
  const int n_vec = smeta[1] * group;
  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  float2* my_part = part + (int64_t(blockIdx.x) * n_splits + blockIdx.y) * kQT;
  if (k0 >= entries) {  // an empty split: nothing to see
    if (!kPass2 && tid < kQT) my_part[tid] = make_float2(-INFINITY, 0.f);
    return;
  }
  for (int i = tid; i < kQT * hd; i += kSplitThreads) {
    const int vi = i / hd, d = i % hd, v = v0 + vi;
    float x = 0;
    if (v < n_vec) {
      const int row = v / group, head = kvh * group + v % group;
      x = to_f(q.row(smeta[0] + row)[int64_t(head) * hd + d]) * scale_log2;
    }
    qs[vi * hp + d] = x;
  }
  for (int i = tid; i < kKS * hd; i += kSplitThreads) {
    const int j = i / hd, d = i % hd, e = k0 + j;
    float x = 0;
    if (e < entries) {
      const int64_t sl = int64_t(blocks[e / block_tokens]) * block_tokens + e % block_tokens;
      x = to_f(pk[sl * hd + d]);
    }
    ks[j * hp + d] = x;
  }
  if (tid < kKS) {
    const int e = k0 + tid;
    kpos[tid] = e < entries
                    ? ppos[int64_t(blocks[e / block_tokens]) * block_tokens + e % block_tokens]
                    : INT_MAX;
  }
  if (tid < kQT) {
    const int v = v0 + tid;
    qpos_s[tid] = v < n_vec ? meta[smeta[2] + v / group] : INT_MIN;
  }
  if (kPass2 && tid < kQT) {
    // Combine pass 1 over all splits of this vector.
    const float2* pv = part + int64_t(blockIdx.x) * n_splits * kQT + tid;
    float m = -INFINITY, l = 0;
    for (int sp = 0; sp < n_splits; ++sp) {
      const float2 x = pv[int64_t(sp) * kQT];
      const float mn = fmaxf(m, x.x);
      if (mn == -INFINITY) continue;
      l = l * exp2f(m - mn) + x.y * exp2f(x.x - mn);
      m = mn;
    }
    fin[tid] = make_float2(m, l > 0 ? 1.0f / (float(group) * l) : 0.f);
  }
  __syncthreads();

  const int qi = lane;
  const int qp = qpos_s[qi];
  float sc[kKPerThread];
#pragma unroll
  for (int r = 0; r < kKPerThread; ++r) {
    const int j = warp + r * (kSplitThreads / 32);
    const float* kr = ks + j * hp;
    const float* qr = qs + qi * hp;
    float acc = 0;
    for (int d = 0; d < hd; ++d) acc += qr[d] * kr[d];
    sc[r] = kpos[j] <= qp ? acc : -INFINITY;
  }
  if (!kPass2) {
    float m = -INFINITY, l = 0;
#pragma unroll
    for (int r = 0; r < kKPerThread; ++r) {
      const float mn = fmaxf(m, sc[r]);
      if (mn == -INFINITY) continue;
      l = l * exp2f(m - mn) + exp2f(sc[r] - mn);
      m = mn;
    }
    // Combine the 8 warps' partials of each vector through shared memory (reusing ks).
    __syncthreads();
    float2* red = reinterpret_cast<float2*>(ks);  // [8][kQT]
    red[warp * kQT + qi] = make_float2(m, l);
    __syncthreads();
    if (tid < kQT) {
      float M = -INFINITY, L = 0;
      for (int wi = 0; wi < kSplitThreads / 32; ++wi) {
        const float2 x = red[wi * kQT + tid];
        const float mn = fmaxf(M, x.x);
        if (mn == -INFINITY) continue;
        L = L * exp2f(M - mn) + x.y * exp2f(x.x - mn);
        M = mn;
      }
      my_part[tid] = make_float2(M, L);
    }
  } else {
    const float2 f = fin[qi];
    float* o = out + (int64_t(seq) * n_kv_heads + kvh) * stride;
#pragma unroll
    for (int r = 0; r < kKPerThread; ++r) {
      float p = (sc[r] == -INFINITY || f.y == 0.f) ? 0.f : exp2f(sc[r] - f.x) * f.y;
#pragma unroll
      for (int ofs = 16; ofs > 0; ofs >>= 1) p += __shfl_xor_sync(0xffffffffu, p, ofs);
      const int e = k0 + warp + r * (kSplitThreads / 32);
      if (lane == 0 && e < entries && p != 0.f) atomicAdd(o + e, p);
    }
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

int attention_scores_tile(GgmlType q, GgmlType pool, int head_dim) {
  return flash_attention_supported(q, pool, head_dim) ? flash_scores_tile() : kQT;
}
size_t attention_scores_scratch_bytes() { return size_t(8) << 20; }

bool attention_scores_fill_rows(const Tensor& q, const AttentionLaunch& a, const AttentionParams& p,
                                const KVPoolView& pool) {
  return flash_attention_supported(q.type, pool.type, p.head_dim) && flash_scores_fill_rows(a, p);
}

void launch_attention_scores(const Tensor& q, const AttentionLaunch& a, const AttentionParams& p,
                             const KVPoolView& pool, float* d_out, int64_t stride,
                             cudaStream_t s) {
  if (flash_attention_supported(q.type, pool.type, p.head_dim))
    return launch_flash_scores(q, a, p, pool, d_out, stride, s);
  if (a.n_small == 0) return;
  if (a.n_big != 0) throw Error("cuda attention_scores: one list of work items expected");
  if (a.fill_rows) throw Error("cuda attention_scores: the SIMT kernel adds to zeroed rows");
  const int n_splits = std::max(1, (a.max_small_entries + kKS - 1) / kKS);
  if (n_splits > 65535) throw Error("cuda attention_scores: too many entries");
  const float log2e = 1.4426950408889634f;
  // The partial sums go through a scratch of fixed size (reserved when the backend
  // starts, inside the memory budget): as many work items per launch as fit.
  const size_t per_item = size_t(n_splits) * kQT * sizeof(float2);
  const size_t cap = std::max(attention_scores_scratch_bytes(), per_item);
  const int per_launch = int(std::min<size_t>(size_t(a.n_small), cap / per_item));
  float2* part = static_cast<float2*>(a.scratch(size_t(per_launch) * per_item));
  const size_t smem = size_t(kQT + kKS) * (p.head_dim + 1) * sizeof(float);
  dispatch_act(q.type, "attention q", [&](auto tq) {
    using TQ = decltype(tq);
    dispatch_act(pool.type, "kv pool", [&](auto tk) {
      using TKV = decltype(tk);
      auto run = [&](auto kernel, int item0, int n) {
        if (smem > 48 * 1024)
          BMX_CUDA(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
        kernel<<<dim3(n, n_splits), kSplitThreads, smem, s>>>(
            view<const TQ>(q), a.meta, a.seq_at, a.n_seqs, p.n_kv_heads, p.n_heads / p.n_kv_heads,
            p.head_dim, p.scale * log2e, static_cast<const TKV*>(pool.k), pool.pos,
            pool.tables, pool.block_tokens, part, n_splits, item0, d_out, stride);
        BMX_LAUNCHED();
      };
      for (int i0 = 0; i0 < a.n_small; i0 += per_launch) {
        const int n = std::min(per_launch, a.n_small - i0);
        run(scores_split_kernel<TQ, TKV, false>, i0, n);
        run(scores_split_kernel<TQ, TKV, true>, i0, n);
      }
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
