// The rope of a layer's new queries and keys and the store of its keys and values into
// the pool, in one launch. Separately they are two launches (rope over Q and K, then
// kv_store) that each pass over the step's K; in a decode step of Llama-3.1-8B they took
// ~0.4 ms of ~9 ms, mostly the launches' ramps and tails rather than bytes.
// Same arithmetic as rope_vec_kernel and kv_store_vec_kernel, so the same bits.
#include <algorithm>

#include "backend/cuda/cuda_common.cuh"

namespace batchmax::cuda {
namespace {

constexpr int kThreads = 256;

// One thread per (row, head, chunk): heads [0, nq) are Q's, [nq, nq + nkv) K's and
// [nq + nkv, nq + 2 nkv) V's. A rotated head's chunk is kPairs rotation pairs (interleaved:
// 8 adjacent dims; neox: 8 dims of the first half and their partners); a V head's chunk is
// the same number of dims, copied.
template <class T, bool kNeox>
__global__ void rope_kv_store_kernel(View<T> q, View<T> k, View<const T> v, int nq, int nkv,
                                     int head_dim, const float2* cs, const int32_t* slots,
                                     const int32_t* pos, int64_t rows, T* pk, T* pv,
                                     int32_t* ppos, float* pmass, const int32_t* tables,
                                     int block_tokens) {
  pdl_begin();
  constexpr int kPairs = kNeox ? 8 : 4;
  const int half = head_dim / 2, chunks = half / kPairs;
  const int64_t per_row = int64_t(nq + 2 * nkv) * chunks;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < rows * per_row;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t r = i / per_row;
    const int h = int((i % per_row) / chunks), c = int(i % chunks);
    if (h >= nq + nkv) {  // V: copy 2 * kPairs dims
      const int hv = h - nq - nkv;
      // The slot and the values are loaded together (the values of a padding row are
      // still inside v): one memory round trip before the store, not two.
      const int64_t slot = resolve_slot(slots[r * nkv + hv], tables, block_tokens);
      const T* src = v.row(r) + int64_t(hv) * head_dim + c * 2 * kPairs;
      float a[2 * kPairs / 8][8];
#pragma unroll
      for (int j = 0; j < 2 * kPairs / 8; ++j) load8(src + 8 * j, a[j]);
      if (slot < 0) continue;  // padding row/head, as kv_store
      T* dst = pv + slot * head_dim + c * 2 * kPairs;
#pragma unroll
      for (int j = 0; j < 2 * kPairs / 8; ++j) store8(dst + 8 * j, a[j]);
      continue;
    }
    const bool is_k = h >= nq;
    const int hh = is_k ? h - nq : h;
    const int64_t slot = is_k ? resolve_slot(slots[r * nkv + hh], tables, block_tokens) : -1;
    T* x = (is_k ? k.row(r) : q.row(r)) + int64_t(hh) * head_dim;
    const int k0 = c * kPairs;
    const float2* t = cs + r * half + k0;
    // Rotated pieces: offsets in the head of the one or two 8-dim pieces.
    float a[8], b[8];
    int oa, ob = 0;
    if constexpr (kNeox) {
      oa = k0;
      ob = k0 + half;
      load8(x + oa, a);
      load8(x + ob, b);
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        const float2 cj = t[j];
        const float x0 = a[j], x1 = b[j];
        a[j] = x0 * cj.x - x1 * cj.y;
        b[j] = x0 * cj.y + x1 * cj.x;
      }
      store8(x + oa, a);
      store8(x + ob, b);
    } else {
      oa = 2 * k0;
      load8(x + oa, a);
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const float2 cj = t[j];
        const float x0 = a[2 * j], x1 = a[2 * j + 1];
        a[2 * j] = x0 * cj.x - x1 * cj.y;
        a[2 * j + 1] = x0 * cj.y + x1 * cj.x;
      }
      store8(x + oa, a);
    }
    if (slot < 0) continue;  // a query head, or a padding row/head
    // The pool gets what the workspace now holds (rounded to T), as kv_store would copy.
    store8(pk + slot * head_dim + oa, a);
    if constexpr (kNeox) store8(pk + slot * head_dim + ob, b);
    if (c == 0) {
      ppos[slot] = pos[r];
      if (pmass) pmass[slot] = 0.0f;
    }
  }
}

}  // namespace

bool rope_kv_store_fusable(const Tensor& q, int n_q_heads, const Tensor& k, const Tensor& v,
                           int n_kv_heads, const RopeParams& p, const KVPoolView& pool) {
  const int per = p.style == RopeStyle::Neox ? 8 : 4;
  return q.type == k.type && k.type == v.type && k.type == pool.type &&
         (k.type == GgmlType::BF16 || k.type == GgmlType::F32) && p.rotary_dim == pool.head_dim &&
         pool.head_dim % 16 == 0 && (pool.head_dim / 2) % per == 0 && vec8_ok(q) && vec8_ok(k) &&
         vec8_ok(v) && q.cols >= int64_t(n_q_heads) * pool.head_dim &&
         k.cols == int64_t(n_kv_heads) * pool.head_dim && v.cols == k.cols && q.rows == k.rows &&
         v.rows == k.rows;
}

void launch_rope_kv_store(Tensor& q, int n_q_heads, Tensor& k, const Tensor& v, int n_kv_heads,
                          const float2* d_table, const RopeParams& p, const int32_t* d_slots,
                          const int32_t* d_pos, KVPoolView& pool, cudaStream_t s) {
  if (!rope_kv_store_fusable(q, n_q_heads, k, v, n_kv_heads, p, pool))
    throw Error("cuda rope_kv_store: shapes or types that the fused kernel does not take");
  const bool neox = p.style == RopeStyle::Neox;
  const int chunks = pool.head_dim / 2 / (neox ? 8 : 4);
  const int64_t work = k.rows * int64_t(n_q_heads + 2 * n_kv_heads) * chunks;
  if (work == 0) return;
  const int blocks = int(std::min<int64_t>((work + kThreads - 1) / kThreads, 1 << 20));
  dispatch_act(k.type, "rope_kv_store input", [&](auto tx) {
    using T = decltype(tx);
    auto* kernel = neox ? rope_kv_store_kernel<T, true> : rope_kv_store_kernel<T, false>;
    launch_pdl(kernel, blocks, kThreads, 0, s, view<T>(q), view<T>(k), view<const T>(v), n_q_heads,
               n_kv_heads, pool.head_dim, d_table, d_slots, d_pos, k.rows, static_cast<T*>(pool.k),
               static_cast<T*>(pool.v), pool.pos, pool.mass, pool.tables, pool.block_tokens);
    BMX_LAUNCHED();
  });
}

}  // namespace batchmax::cuda
