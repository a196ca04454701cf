#pragma once
// Device helpers of the tensor-core kernels (flash_attention.cu, flash_scores.cu):
// cp.async copies, ldmatrix loads and the bf16 mma.sync m16n8k16 with fp32 accumulators.
#include <cstdint>

#include "backend/cuda/cuda_common.cuh"

namespace batchmax::cuda {

__device__ __forceinline__ uint32_t smem_u32(const void* p) {
  return uint32_t(__cvta_generic_to_shared(p));
}
// 16 bytes global -> shared; zeros when !valid (src is then not read).
__device__ __forceinline__ void cp_async16(void* dst, const void* src, bool valid) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_u32(dst)), "l"(src),
               "r"(valid ? 16 : 0)
               : "memory");
}
__device__ __forceinline__ void cp_async4(void* dst, const void* src, bool valid) {
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(smem_u32(dst)), "l"(src),
               "r"(valid ? 4 : 0)
               : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}
__device__ __forceinline__ void ldsm_x4(uint32_t (&r)[4], const bf16* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_u32(p))
               : "memory");
}
__device__ __forceinline__ void ldsm_x4_t(uint32_t (&r)[4], const bf16* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_u32(p))
               : "memory");
}
// c += a (16x16, row) * b (16x8, col)
__device__ __forceinline__ void mma(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
      "{%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi) {
  __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);  // lo in the low half: lower k index
  return *reinterpret_cast<uint32_t*>(&h);
}
__device__ __forceinline__ uint32_t ld32(const bf16* p) { return *reinterpret_cast<const uint32_t*>(p); }

// One work item of the paged-attention metadata (layout in attention_kernels.cu): the
// sequence, KV head and first query vector a CTA takes, the sequence's rows and query
// positions, and the head's block table. Vector v is row v / group, head kvh * group +
// v % group.
struct WorkItem {
  int seq, kvh, v0;
  int64_t q_begin;
  int n_vec;
  const int32_t* qpos;
  const int32_t* blocks;
  int entries;
};
__device__ __forceinline__ WorkItem read_work_item(const int32_t* work, const int32_t* meta,
                                                   const int32_t* tables, int seq_at, int n_seqs,
                                                   int group) {
  WorkItem w;
  w.seq = work[0];
  w.kvh = work[1];
  w.v0 = work[2];
  const int32_t* sm = meta + seq_at + 4 * w.seq;
  w.q_begin = sm[0];
  w.n_vec = sm[1] * group;
  w.qpos = meta + sm[2];
  const int32_t* hm = meta + seq_at + 4 * n_seqs + 2 * (sm[3] + w.kvh);
  w.blocks = head_block_ids(meta, tables, hm[0]);
  w.entries = hm[1];
  return w;
}

// The A fragments (mma m16n8k16, row major) of a warp's 16 query vectors, this lane's
// rows va and vb = va + 8; vectors past the item's last are zeros.
template <int HD>
__device__ __forceinline__ void load_q_fragments(uint32_t (&qf)[HD / 16][4], const bf16* q,
                                                 int64_t q_stride, const WorkItem& w, int group,
                                                 int va, int vb, int lane) {
  auto q_row = [&](int v) {
    return q + (w.q_begin + v / group) * q_stride + int64_t(w.kvh * group + v % group) * HD;
  };
  const int c = 2 * (lane & 3);
  const bf16* qa = va < w.n_vec ? q_row(va) : nullptr;
  const bf16* qb = vb < w.n_vec ? q_row(vb) : nullptr;
#pragma unroll
  for (int kc = 0; kc < HD / 16; ++kc) {
    qf[kc][0] = qa ? ld32(qa + 16 * kc + c) : 0u;
    qf[kc][1] = qb ? ld32(qb + 16 * kc + c) : 0u;
    qf[kc][2] = qa ? ld32(qa + 16 * kc + 8 + c) : 0u;
    qf[kc][3] = qb ? ld32(qb + 16 * kc + 8 + c) : 0u;
  }
}

// S = Q K^T for a warp's 16 query vectors (qf) and kN keys of a shared-memory tile (rows
// of `stride` bf16): s[n / 8] holds keys n..n+7 in the mma accumulator layout.
template <int HD, int kN>
__device__ __forceinline__ void qk_tile(float (&s)[kN / 8][4], const uint32_t (&qf)[HD / 16][4],
                                        const bf16* kt, int stride, int lane) {
#pragma unroll
  for (int i = 0; i < kN / 8; ++i) s[i][0] = s[i][1] = s[i][2] = s[i][3] = 0.f;
#pragma unroll
  for (int kc = 0; kc < HD / 16; ++kc)
#pragma unroll
    for (int jj = 0; jj < kN / 16; ++jj) {
      uint32_t b[4];
      ldsm_x4(b, kt + (16 * jj + (lane & 7) + 8 * (lane >> 4)) * stride + 16 * kc +
                     8 * ((lane >> 3) & 1));
      mma(s[2 * jj], qf[kc], b[0], b[1]);
      mma(s[2 * jj + 1], qf[kc], b[2], b[3]);
    }
}

}  // namespace batchmax::cuda
