// Paged causal attention for prefill chunks and decode rows in one launch: the SIMT
// fallback (f32 q or pool, head dims the tensor-core path in flash_attention.cu lacks).
//
// Each CTA takes one (sequence, KV head, tile of M query vectors), where the query
// vectors of a (sequence, KV head) are its rows times the query heads of the GQA group
// (vector v = row * group + g): the group shares every K/V tile a CTA loads, and any
// group size fits. M is 16 for prefill chunks and 4 (8 for head_dim 80) for decode
// rows, so a decode row of a group-4 model wastes no work on empty vectors: the step's
// work items come in two lists and each list gets its own launch. Keys are read through the block table in tiles of 32 and folded into
// an fp32 online softmax (flash style); key e is visible to a query iff its position is
// <= the query's. Scores, probabilities and sums stay in fp32; exp2 with log2(e) folded
// into the query scale.
//
// Metadata, packed by the host into one int32 buffer per call:
//   work  [n_small + n_big][4]: seq, kv head, first query vector, unused
//   seqs  [n_seqs][4] (from seq_at): q_begin (row in q/out), n_q, offset of q_pos, head index
//   heads [n_seqs * n_kv][2]: offset of the block ids, entries in use
//   then the q_pos and block id arrays the offsets point into.
#include <climits>

#include "backend/cuda/cuda_common.cuh"

namespace batchmax::cuda {
namespace {

constexpr int kThreads = 128;
constexpr int kBigM = 16;  // query vectors per CTA for prefill chunks
constexpr int kKT = 32;    // keys per tile (one per lane in the softmax step)
constexpr int kKPad = 4;   // K rows padded by 16 bytes: float4 dots free of bank conflicts

constexpr int small_m(int hd) { return hd % 32 == 0 ? 4 : 8; }  // M * HD % 128 == 0

template <int HD, int kM>
constexpr size_t smem_bytes() {
  return sizeof(float) * (kM * HD + kKT * (HD + kKPad) + kKT * HD + kM * kKT + 3 * kM) +
         sizeof(int) * (kM + kKT + 1);
}

template <class TQ, class TKV, int HD, int kM>
__global__ void __launch_bounds__(kThreads) attention_kernel(
    View<const TQ> q, View<TQ> out, const int32_t* __restrict__ work,
    const int32_t* __restrict__ meta, int seq_at, int n_seqs, int group, float scale_log2,
    const TKV* __restrict__ pk, const TKV* __restrict__ pv, const int32_t* __restrict__ ppos,
    const int32_t* __restrict__ ptables, int block_tokens) {
  static_assert(HD % 8 == 0 && (kM * HD) % kThreads == 0 && kM % 4 == 0, "tile shape");
  constexpr int R = kM * HD / kThreads;  // outputs per thread
  extern __shared__ float4 smem_raw[];
  float* Qs = reinterpret_cast<float*>(smem_raw);  // [kM][HD], pre-scaled
  float* Vs = Qs + kM * HD;                        // [kKT][HD]
  float* Ks = Vs + kKT * HD;                       // [kKT][HD + kKPad]
  float* Ps = Ks + kKT * (HD + kKPad);             // [kM][kKT]
  float* m_s = Ps + kM * kKT;
  float* l_s = m_s + kM;
  float* alpha_s = l_s + kM;
  int* qpos_s = reinterpret_cast<int*>(alpha_s + kM);
  int* kpos_s = qpos_s + kM;
  int* maxq_s = kpos_s + kKT;

  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  const int32_t* w = work + 4 * blockIdx.x;
  const int seq = w[0], kvh = w[1], v0 = w[2];
  const int32_t* sm = meta + seq_at + 4 * seq;
  const int64_t q_begin = sm[0];
  const int n_vec = sm[1] * group;
  const int32_t* qpos = meta + sm[2];
  const int32_t* hm = meta + seq_at + 4 * n_seqs + 2 * (sm[3] + kvh);
  const int32_t* blocks = head_block_ids(meta, ptables, hm[0]);
  const int entries = hm[1];

  for (int i = tid; i < kM * HD; i += kThreads) {
    const int m = i / HD, d = i % HD, v = v0 + m;
    float x = 0;
    if (v < n_vec) x = to_f(q.row(q_begin + v / group)[(kvh * group + v % group) * HD + d]);
    Qs[i] = x * scale_log2;
  }
  if (tid < kM) {
    const int v = v0 + tid;
    qpos_s[tid] = v < n_vec ? qpos[v / group] : INT_MIN;
    m_s[tid] = -INFINITY;
    l_s[tid] = 0;
  }
  __syncthreads();
  if (tid == 0) {
    int mx = INT_MIN;
    for (int m = 0; m < kM; ++m) mx = max(mx, qpos_s[m]);
    *maxq_s = mx;
  }
  float acc[R];
#pragma unroll
  for (int r = 0; r < R; ++r) acc[r] = 0;

  for (int t0 = 0; t0 < entries; t0 += kKT) {
    __syncthreads();  // the previous tile's readers are done; maxq_s is written
    if (tid < kKT) {
      const int e = t0 + tid;
      kpos_s[tid] = e < entries
                        ? ppos[int64_t(blocks[e / block_tokens]) * block_tokens + e % block_tokens]
                        : INT_MAX;
    }
    for (int i = tid; i < kKT * HD / 8; i += kThreads) {
      const int j = i / (HD / 8), c = 8 * (i % (HD / 8)), e = t0 + j;
      float kv[8], vv[8];
      if (e < entries) {
        const int64_t slot = int64_t(blocks[e / block_tokens]) * block_tokens + e % block_tokens;
        load8(pk + slot * HD + c, kv);
        load8(pv + slot * HD + c, vv);
      } else {
#pragma unroll
        for (int x = 0; x < 8; ++x) kv[x] = vv[x] = 0;
      }
      reinterpret_cast<float4*>(Ks + j * (HD + kKPad) + c)[0] = make_float4(kv[0], kv[1], kv[2], kv[3]);
      reinterpret_cast<float4*>(Ks + j * (HD + kKPad) + c)[1] = make_float4(kv[4], kv[5], kv[6], kv[7]);
      reinterpret_cast<float4*>(Vs + j * HD + c)[0] = make_float4(vv[0], vv[1], vv[2], vv[3]);
      reinterpret_cast<float4*>(Vs + j * HD + c)[1] = make_float4(vv[4], vv[5], vv[6], vv[7]);
    }
    // Skip tiles no query of this CTA can see (causal prefill: later keys).
    if (!__syncthreads_or(tid < kKT && kpos_s[tid] <= *maxq_s)) continue;

    {  // Scores: thread owns key j = lane and rows warp, warp + 4, ...
      constexpr int RS = kM * kKT / kThreads;
      float s[RS];
#pragma unroll
      for (int r = 0; r < RS; ++r) s[r] = 0;
      const float* kr = Ks + lane * (HD + kKPad);
#pragma unroll 4
      for (int d = 0; d < HD; d += 4) {
        const float4 k4 = *reinterpret_cast<const float4*>(kr + d);
#pragma unroll
        for (int r = 0; r < RS; ++r) {
          const float4 q4 = *reinterpret_cast<const float4*>(Qs + (warp + 4 * r) * HD + d);
          s[r] += q4.x * k4.x + q4.y * k4.y + q4.z * k4.z + q4.w * k4.w;
        }
      }
#pragma unroll
      for (int r = 0; r < RS; ++r) {
        const int m = warp + 4 * r;
        Ps[m * kKT + lane] = kpos_s[lane] <= qpos_s[m] ? s[r] : -INFINITY;
      }
    }
    __syncthreads();
    // Online softmax: warp w updates rows w, w + 4, ...; lane = key.
    for (int m = warp; m < kM; m += kThreads / 32) {
      const float s = Ps[m * kKT + lane];
      float mx = s;
#pragma unroll
      for (int o = 16; o > 0; o >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
      const float m_old = m_s[m], m_new = fmaxf(m_old, mx);
      const float p = m_new == -INFINITY ? 0.f : exp2f(s - m_new);
      float sum = p;
#pragma unroll
      for (int o = 16; o > 0; o >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, o);
      Ps[m * kKT + lane] = p;
      __syncwarp();  // every lane has read m_s[m] before lane 0 replaces it
      if (lane == 0) {
        const float alpha = m_new == -INFINITY ? 1.f : exp2f(m_old - m_new);
        alpha_s[m] = alpha;
        l_s[m] = l_s[m] * alpha + sum;
        m_s[m] = m_new;
      }
    }
    __syncthreads();
    // acc[m][d] = acc * alpha[m] + sum_j P[m][j] V[j][d]; keys outer so a V element
    // loaded once serves every output of this thread in its column.
#pragma unroll
    for (int r = 0; r < R; ++r) acc[r] *= alpha_s[(tid + kThreads * r) / HD];
#pragma unroll 2
    for (int j = 0; j < kKT; j += 4) {
#pragma unroll
      for (int r = 0; r < R; ++r) {
        const int idx = tid + kThreads * r, m = idx / HD, d = idx % HD;
        const float4 p4 = *reinterpret_cast<const float4*>(Ps + m * kKT + j);
        acc[r] += p4.x * Vs[j * HD + d] + p4.y * Vs[(j + 1) * HD + d] +
                  p4.z * Vs[(j + 2) * HD + d] + p4.w * Vs[(j + 3) * HD + d];
      }
    }
  }
  __syncthreads();
#pragma unroll
  for (int r = 0; r < R; ++r) {
    const int idx = tid + kThreads * r, m = idx / HD, d = idx % HD, v = v0 + m;
    if (v < n_vec) {
      const float l = l_s[m];
      // No visible key (cannot happen once a token's own entry is stored): zeros, as
      // the CPU reference writes.
      out.row(q_begin + v / group)[(kvh * group + v % group) * HD + d] =
          from_f<TQ>(l > 0 ? acc[r] / l : 0.f);
    }
  }
}

template <class TQ, class TKV, int HD, int kM>
void launch_list(const Tensor& q, const AttentionLaunch& a, const int32_t* work, int n,
                 const AttentionParams& p, const KVPoolView& pool, Tensor& out, cudaStream_t s) {
  if (n == 0) return;
  constexpr size_t smem = smem_bytes<HD, kM>();
  static bool attr_set = false;  // per instantiation; the attribute is per function
  if (!attr_set) {
    BMX_CUDA(cudaFuncSetAttribute(attention_kernel<TQ, TKV, HD, kM>,
                                  cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
    attr_set = true;
  }
  const float log2e = 1.4426950408889634f;
  attention_kernel<TQ, TKV, HD, kM><<<n, kThreads, smem, s>>>(
      view<const TQ>(q), view<TQ>(out), work, a.meta, a.seq_at, a.n_seqs,
      p.n_heads / p.n_kv_heads, p.scale * log2e, static_cast<const TKV*>(pool.k),
      static_cast<const TKV*>(pool.v), pool.pos, pool.tables, pool.block_tokens);
  BMX_LAUNCHED();
}

template <class TQ, class TKV, int HD>
void launch_typed(const Tensor& q, const AttentionLaunch& a, const AttentionParams& p,
                  const KVPoolView& pool, Tensor& out, cudaStream_t s) {
  launch_list<TQ, TKV, HD, small_m(HD)>(q, a, a.meta, a.n_small, p, pool, out, s);
  launch_list<TQ, TKV, HD, kBigM>(q, a, a.meta + 4 * a.n_small, a.n_big, p, pool, out, s);
}

template <class TQ, class TKV>
void launch_hd(const Tensor& q, const AttentionLaunch& a, const AttentionParams& p,
               const KVPoolView& pool, Tensor& out, cudaStream_t s) {
  switch (p.head_dim) {
    case 16: return launch_typed<TQ, TKV, 16>(q, a, p, pool, out, s);
    case 32: return launch_typed<TQ, TKV, 32>(q, a, p, pool, out, s);
    case 64: return launch_typed<TQ, TKV, 64>(q, a, p, pool, out, s);
    case 80: return launch_typed<TQ, TKV, 80>(q, a, p, pool, out, s);
    case 96: return launch_typed<TQ, TKV, 96>(q, a, p, pool, out, s);
    case 128: return launch_typed<TQ, TKV, 128>(q, a, p, pool, out, s);
    case 256: return launch_typed<TQ, TKV, 256>(q, a, p, pool, out, s);
    default:
      throw Error("cuda attention: head_dim " + std::to_string(p.head_dim) +
                  " is not built (16, 32, 64, 80, 96, 128, 256 are)");
  }
}

}  // namespace

AttentionTiles attention_tiles(const AttentionParams& p, GgmlType q, GgmlType pool) {
  if (flash_attention_supported(q, pool, p.head_dim)) return flash_attention_tiles();
  return {small_m(p.head_dim), kBigM};
}

void launch_attention(const Tensor& q, const AttentionLaunch& a, const AttentionParams& p,
                      const KVPoolView& pool, Tensor& out, cudaStream_t s) {
  if (a.n_small + a.n_big == 0) return;
  if (q.type != out.type) throw Error("cuda attention: q and out types differ");
  if (pool.head_dim != p.head_dim) throw Error("cuda attention: pool head_dim differs");
  if (flash_attention_supported(q.type, pool.type, p.head_dim))
    return launch_flash_attention(q, a, p, pool, out, s);
  dispatch_act(q.type, "attention q", [&](auto tq) {
    using TQ = decltype(tq);
    dispatch_act(pool.type, "kv pool", [&](auto tk) {
      using TKV = decltype(tk);
      launch_hd<TQ, TKV>(q, a, p, pool, out, s);
    });
  });
}

}  // namespace batchmax::cuda
