// Attention mass for the eviction policies on tensor cores (bf16 q and pool; head_dim
// 64, 96, 128). Same contract and the same two passes as the SIMT kernel of
// scores_kernels.cu, which stays for other types: pass 1 writes each query vector's
// running (max, sum) per key split, pass 2 combines them over the splits, recomputes the
// scores and adds p / group of every vector to its key's mass.
//
// Why a second kernel: the SIMT one reads two shared-memory floats per multiply-add and
// took ~20% of a Batch-Max prefill step on the H100 (bench/results/logs_profile_*);
// here S = Q K^T is mma.sync m16n8k16 as in flash_attention.cu, and the column sums of P
// go through warp shuffles and shared-memory atomics.
//
// A CTA (4 warps, 16 query vectors each) takes one work item (sequence, KV head, 64
// vectors; metadata as in attention_kernels.cu) and one split of split_keys() entries
// (blockIdx.y).
#include <climits>
#include <cstdlib>

#include "backend/cuda/cuda_common.cuh"
#include "backend/cuda/mma_helpers.cuh"

namespace batchmax::cuda {
namespace {

constexpr int kThreads = 128;
constexpr int kRows = 64;       // query vectors per CTA
constexpr int kKeys = 64;       // entries per shared-memory tile

// Entries per CTA: BATCHMAX_CUDA_SCORES_SPLIT_KEYS (a multiple of kKeys; default 128).
int split_keys() {
  static const int n = [] {
    const char* e = std::getenv("BATCHMAX_CUDA_SCORES_SPLIT_KEYS");
    const int v = e ? std::atoi(e) : 0;
    return v > 0 && v % kKeys == 0 ? v : 128;
  }();
  return n;
}
constexpr int kPad = 8;         // bf16 per shared row: ldmatrix rows hit distinct banks

struct ScoresArgs {
  const bf16* q;
  int64_t q_stride;
  const int32_t* meta;
  const int32_t* tables;  // KVPoolView::tables
  int seq_at, n_seqs, n_kv_heads, group;
  float scale_log2;
  const bf16* pk;
  const int32_t* ppos;
  int block_tokens, bt_shift;  // bt_shift: block_shift(block_tokens)
  float2* part;  // [item of this launch][split][kRows]: (max, sum), log2 units
  int n_splits, item0;
  int split_keys;  // entries per split (blockIdx.y)
  float* out;
  int64_t out_stride;
  const float* lse;  // optional: each vector's log2-sum-exp from the attention pass
  int64_t lse_stride;
  int fill;  // 1: out is not zeroed; each CTA stores its keys' mass (scores_fill_rows())
};

template <int HD, bool kPass2>
__global__ void __launch_bounds__(kThreads) flash_scores_kernel(const ScoresArgs a) {
  pdl_begin();
  constexpr int kStride = HD + kPad;
  __shared__ __align__(16) bf16 Ks[kKeys * kStride];
  __shared__ int kpos_s[kKeys];
  __shared__ float colsum[kKeys];
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const WorkItem wi =
      read_work_item(a.meta + 4 * (a.item0 + int(blockIdx.x)), a.meta, a.tables, a.seq_at, a.n_seqs, a.group);
  const int seq = wi.seq, kvh = wi.kvh, v0 = wi.v0, n_vec = wi.n_vec, entries = wi.entries;
  const int64_t q_begin = wi.q_begin;
  const int32_t* qpos = wi.qpos;
  const int32_t* blocks = wi.blocks;
  const int bt = a.block_tokens;
  const int e_begin = int(blockIdx.y) * a.split_keys;
  const int e_end = min(entries, e_begin + a.split_keys);
  float2* part = a.part + int64_t(blockIdx.x) * a.n_splits * kRows;
  if (kPass2 && a.fill && blockIdx.y == 0)  // the row past the entries (no split covers it)
    for (int64_t c = entries + tid; c < a.out_stride; c += kThreads)
      a.out[(int64_t(seq) * a.n_kv_heads + kvh) * a.out_stride + c] = 0.f;
  // This thread's two rows of its warp's 16 (mma accumulator layout).
  const int ra = 16 * warp + (lane >> 2), rb = ra + 8;
  const int va = v0 + ra, vb = v0 + rb;
  if (e_begin >= entries) {  // an empty split (the CTA agrees): nothing to see
    if (!kPass2 && (lane & 3) == 0) {
      part[int64_t(blockIdx.y) * kRows + ra] = make_float2(-INFINITY, 0.f);
      part[int64_t(blockIdx.y) * kRows + rb] = make_float2(-INFINITY, 0.f);
    }
    return;
  }
  const int qpa = va < n_vec ? qpos[va / a.group] : INT_MIN;
  const int qpb = vb < n_vec ? qpos[vb / a.group] : INT_MIN;
  uint32_t qf[HD / 16][4];  // A fragments of the warp's 16 x HD queries
  load_q_fragments<HD>(qf, a.q, a.q_stride, wi, a.group, va, vb, lane);
  // Pass 2: each row's max over all keys and 1 / (group * sum) from pass 1's splits.
  float Ma = -INFINITY, Mb = -INFINITY, ia = 0.f, ib = 0.f;
  if (kPass2 && a.lse) {  // the attention pass left the sums: p = 2^(s - lse) / group
    auto at = [&](int v) {
      return a.lse[(q_begin + v / a.group) * a.lse_stride + kvh * a.group + v % a.group];
    };
    Ma = va < n_vec ? at(va) : -INFINITY;
    Mb = vb < n_vec ? at(vb) : -INFINITY;
    ia = Ma == -INFINITY ? 0.f : 1.f / float(a.group);
    ib = Mb == -INFINITY ? 0.f : 1.f / float(a.group);
    if (tid < kKeys) colsum[tid] = 0.f;
  } else if (kPass2) {
    float la = 0.f, lb = 0.f;
    for (int sp = 0; sp < a.n_splits; ++sp) {
      const float2 xa = part[int64_t(sp) * kRows + ra], xb = part[int64_t(sp) * kRows + rb];
      if (xa.x != -INFINITY) {
        const float mn = fmaxf(Ma, xa.x);
        la = la * exp2f(Ma - mn) + xa.y * exp2f(xa.x - mn);
        Ma = mn;
      }
      if (xb.x != -INFINITY) {
        const float mn = fmaxf(Mb, xb.x);
        lb = lb * exp2f(Mb - mn) + xb.y * exp2f(xb.x - mn);
        Mb = mn;
      }
    }
    ia = la > 0.f ? 1.f / (float(a.group) * la) : 0.f;
    ib = lb > 0.f ? 1.f / (float(a.group) * lb) : 0.f;
    if (tid < kKeys) colsum[tid] = 0.f;
  }
  const bool active = __any_sync(0xffffffffu, qpa != INT_MIN || qpb != INT_MIN);
  auto slot_of = [&](int e) { return table_slot(blocks, e, bt, a.bt_shift); };
  float ma = -INFINITY, mb = -INFINITY, la = 0.f, lb = 0.f;  // pass 1, log2 units
  float* out = a.out + (int64_t(seq) * a.n_kv_heads + kvh) * a.out_stride;

  for (int e0 = e_begin; e0 < e_end; e0 += kKeys) {
    __syncthreads();  // the previous tile (and its column sums) are done with
    constexpr int kChunks = HD / 8;
#pragma unroll
    for (int i = tid; i < kKeys * kChunks; i += kThreads) {
      const int j = i / kChunks, c = 8 * (i % kChunks), e = e0 + j;
      const bool ok = e < e_end;
      cp_async16(Ks + j * kStride + c, a.pk + (ok ? slot_of(e) : 0) * HD + c, ok);
    }
    if (tid < kKeys) kpos_s[tid] = e0 + tid < e_end ? a.ppos[slot_of(e0 + tid)] : INT_MAX;
    cp_async_commit();
    cp_async_wait<0>();
    __syncthreads();
    if (active) {
      float s[kKeys / 8][4];
      qk_tile<HD, kKeys>(s, qf, Ks, kStride, lane);
      // Scale to log2 units; a key is visible iff its position <= the query's.
#pragma unroll
      for (int nb = 0; nb < kKeys / 8; ++nb)
#pragma unroll
        for (int x = 0; x < 2; ++x) {
          const int kp = kpos_s[8 * nb + 2 * (lane & 3) + x];
          s[nb][x] = kp <= qpa ? s[nb][x] * a.scale_log2 : -INFINITY;
          s[nb][2 + x] = kp <= qpb ? s[nb][2 + x] * a.scale_log2 : -INFINITY;
        }
      if (!kPass2) {
        float mxa = -INFINITY, mxb = -INFINITY;
#pragma unroll
        for (int nb = 0; nb < kKeys / 8; ++nb) {
          mxa = fmaxf(mxa, fmaxf(s[nb][0], s[nb][1]));
          mxb = fmaxf(mxb, fmaxf(s[nb][2], s[nb][3]));
        }
#pragma unroll
        for (int off = 1; off < 4; off <<= 1) {  // the 4 lanes of a quad share the rows
          mxa = fmaxf(mxa, __shfl_xor_sync(0xffffffffu, mxa, off));
          mxb = fmaxf(mxb, __shfl_xor_sync(0xffffffffu, mxb, off));
        }
        const float mna = fmaxf(ma, mxa), mnb = fmaxf(mb, mxb);
        // A row with no visible key yet keeps max -inf: subtract 0 so exp2 gives 0.
        const float ska = mna == -INFINITY ? 0.f : mna, skb = mnb == -INFINITY ? 0.f : mnb;
        la *= exp2f(ma - ska);
        lb *= exp2f(mb - skb);
        ma = mna;
        mb = mnb;
#pragma unroll
        for (int nb = 0; nb < kKeys / 8; ++nb) {
          la += exp2f(s[nb][0] - ska) + exp2f(s[nb][1] - ska);
          lb += exp2f(s[nb][2] - skb) + exp2f(s[nb][3] - skb);
        }
      } else {
#pragma unroll
        for (int nb = 0; nb < kKeys / 8; ++nb)
#pragma unroll
          for (int x = 0; x < 2; ++x) {
            float p = (s[nb][x] == -INFINITY ? 0.f : exp2f(s[nb][x] - Ma) * ia) +
                      (s[nb][2 + x] == -INFINITY ? 0.f : exp2f(s[nb][2 + x] - Mb) * ib);
            // Sum over the warp's 16 rows: the lanes that share lane & 3 hold one column.
#pragma unroll
            for (int off = 4; off < 32; off <<= 1) p += __shfl_xor_sync(0xffffffffu, p, off);
            if (lane < 4 && p != 0.f) atomicAdd(&colsum[8 * nb + 2 * lane + x], p);
          }
      }
    }
    if (kPass2) {
      __syncthreads();
      if (tid < kKeys) {
        const float p = colsum[tid];
        if (a.fill) {  // this CTA holds every vector of the row: the key's whole mass
          if (e0 + tid < e_end) out[e0 + tid] = p;
        } else if (p != 0.f) {
          atomicAdd(out + e0 + tid, p);  // e0 + tid < e_end: others stay 0
        }
        colsum[tid] = 0.f;
      }
    }
  }
  if (!kPass2) {
#pragma unroll
    for (int off = 1; off < 4; off <<= 1) {
      la += __shfl_xor_sync(0xffffffffu, la, off);
      lb += __shfl_xor_sync(0xffffffffu, lb, off);
    }
    if ((lane & 3) == 0) {
      part[int64_t(blockIdx.y) * kRows + ra] = make_float2(ma, la);
      part[int64_t(blockIdx.y) * kRows + rb] = make_float2(mb, lb);
    }
  }
}

template <int HD>
void launch_hd(ScoresArgs a, int n_items, size_t part_cap, float2* part, cudaStream_t s) {
  const size_t per_item = size_t(a.n_splits) * kRows * sizeof(float2);
  const int per_launch = int(std::max<size_t>(1, std::min<size_t>(n_items, part_cap / per_item)));
  a.part = part;
  for (int i0 = 0; i0 < n_items; i0 += per_launch) {
    a.item0 = i0;
    const dim3 grid(unsigned(std::min(per_launch, n_items - i0)), unsigned(a.n_splits));
    if (!a.lse) {
      flash_scores_kernel<HD, false><<<grid, kThreads, 0, s>>>(a);
      BMX_LAUNCHED();
    }
    launch_pdl(flash_scores_kernel<HD, true>, grid, dim3(kThreads), 0, s, a);
  }
}

}  // namespace

int flash_scores_tile() { return kRows; }

bool flash_scores_fill_rows(const AttentionLaunch& L, const AttentionParams& p) {
  // One item per (sequence, KV head): every sequence has queries, at most kRows vectors.
  return L.lse && L.n_big == 0 && L.n_small > 0 && int64_t(L.n_small) == int64_t(L.n_seqs) * p.n_kv_heads;
}

void launch_flash_scores(const Tensor& q, const AttentionLaunch& L, const AttentionParams& p,
                         const KVPoolView& pool, float* d_out, int64_t stride, cudaStream_t s) {
  if (L.n_small == 0) return;
  if (L.n_big != 0) throw Error("cuda attention_scores: one list of work items expected");
  if (reinterpret_cast<uintptr_t>(q.data) % 4 || q.row_stride % 4)
    throw Error("cuda attention_scores: q rows must be 4-byte aligned");
  const int n_splits = std::max(1, (L.max_small_entries + split_keys() - 1) / split_keys());
  if (n_splits > 65535) throw Error("cuda attention_scores: too many entries");
  ScoresArgs a{};
  a.q = static_cast<const bf16*>(q.data);
  a.q_stride = int64_t(q.row_stride / sizeof(bf16));
  a.meta = L.meta;
  a.tables = pool.tables;
  a.seq_at = L.seq_at;
  a.n_seqs = L.n_seqs;
  a.n_kv_heads = p.n_kv_heads;
  a.group = p.n_heads / p.n_kv_heads;
  a.scale_log2 = p.scale * 1.4426950408889634f;
  a.pk = static_cast<const bf16*>(pool.k);
  a.ppos = pool.pos;
  a.block_tokens = pool.block_tokens;
  a.bt_shift = block_shift(pool.block_tokens);
  a.n_splits = n_splits;
  a.split_keys = split_keys();
  a.out = d_out;
  a.out_stride = stride;
  a.lse = L.lse;
  a.lse_stride = L.lse_stride;
  a.fill = L.fill_rows ? 1 : 0;
  if (L.fill_rows && !flash_scores_fill_rows(L, p))
    throw Error("cuda attention_scores: rows to fill, but not one work item per (sequence, KV head) with sums");
  // The partials go through the fixed scratch reserved at start (inside the budget).
  const size_t per_item = size_t(n_splits) * kRows * sizeof(float2);
  const size_t cap = std::max(attention_scores_scratch_bytes(), per_item);
  const int per_launch = int(std::min<size_t>(size_t(L.n_small), cap / per_item));
  float2* part = static_cast<float2*>(L.scratch(size_t(per_launch) * per_item));
  switch (p.head_dim) {
    case 64: return launch_hd<64>(a, L.n_small, cap, part, s);
    case 96: return launch_hd<96>(a, L.n_small, cap, part, s);
    case 128: return launch_hd<128>(a, L.n_small, cap, part, s);
    default: throw Error("cuda attention_scores: head_dim " + std::to_string(p.head_dim));
  }
}

}  // namespace batchmax::cuda
