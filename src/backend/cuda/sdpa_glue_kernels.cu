// Small kernels around cuDNN's SDPA (cudnn_attention.h): its stats to our log2-sum-exp
// layout, and the gathered query/output layout used when direct (ragged) addressing of
// the step's rows is not available.
#include "backend/cuda/cuda_common.cuh"
#include "backend/cuda/cudnn_attention.h"

namespace batchmax::cuda {
namespace {

// Stats are cuDNN's natural-log sums of the scaled scores, [entry][group][S]; ours are
// log2 sums per (row, head).
__global__ void stats_to_lse_kernel(const float* stats, int group, int S, const int32_t* q_begin,
                                    const int32_t* n_q, const int32_t* kv_head, float* lse,
                                    int64_t lse_stride) {
  const int b = blockIdx.y, g = blockIdx.z;
  const int r = blockIdx.x * blockDim.x + threadIdx.x;
  if (r >= n_q[b]) return;
  const float v = stats[(int64_t(b) * group + g) * S + r];
  lse[(int64_t(q_begin[b]) + r) * lse_stride + kv_head[b] * group + g] = v * 1.4426950408889634f;
}

// One CTA per (entry, row): group * head_dim contiguous elements each way, 16 bytes a thread.
template <bool kGather>
__global__ void sdpa_copy_kernel(const uint4* src, uint4* dst, int64_t row_stride16, int group,
                                 int S, int chunk16, const int32_t* q_begin, const int32_t* n_q,
                                 const int32_t* kv_head) {
  const int b = blockIdx.y, r = blockIdx.x;
  if (r >= n_q[b]) return;
  const int64_t row = (int64_t(q_begin[b]) + r) * row_stride16 + int64_t(kv_head[b]) * chunk16;
  const int64_t packed = (int64_t(b) * S + r) * chunk16;
  for (int i = threadIdx.x; i < chunk16; i += blockDim.x) {
    if (kGather)
      dst[packed + i] = src[row + i];
    else
      dst[row + i] = src[packed + i];
  }
}

// One CTA per (entry, page of block_tokens rows of the dense layout): the entry's K and V
// rows from its pool blocks, zeros past its count. The zeros matter: padded keys are
// masked, but a P of 0 times a NaN left in a padded value row would still be NaN. K and V
// in one launch: one launch fewer on the chain before cuDNN, and twice the loads in flight.
__global__ void sdpa_gather_kv_kernel(const uint4* k_pool, const uint4* v_pool,
                                      const int32_t* pages, int T, const int32_t* entries,
                                      int block_tokens, int row16, int S_kv, uint4* k_dst,
                                      uint4* v_dst) {
  const int b = blockIdx.y, page = blockIdx.x;
  const int first = page * block_tokens;
  const int rows = min(block_tokens, S_kv - first);
  const int n = page < T ? max(0, min(rows, entries[b] - first)) : 0;
  const int64_t src = n > 0 ? int64_t(pages[int64_t(b) * T + page]) * block_tokens * row16 : 0;
  const int64_t out = (int64_t(b) * S_kv + first) * row16;
  for (int i = threadIdx.x; i < rows * row16; i += blockDim.x) {
    const bool in = i < n * row16;
    const uint4 k = in ? k_pool[src + i] : make_uint4(0, 0, 0, 0);
    const uint4 v = in ? v_pool[src + i] : make_uint4(0, 0, 0, 0);
    k_dst[out + i] = k;
    v_dst[out + i] = v;
  }
}

}  // namespace

void launch_sdpa_gather_kv(const void* k_pool, const void* v_pool, const int32_t* pages, int T,
                           const int32_t* entries, int n_entries, int block_tokens, int head_dim,
                           int S_kv, void* k_dst, void* v_dst, cudaStream_t s) {
  if (n_entries <= 0 || S_kv <= 0) return;
  const int grid_pages = (S_kv + block_tokens - 1) / block_tokens;
  sdpa_gather_kv_kernel<<<dim3(grid_pages, n_entries), 128, 0, s>>>(
      static_cast<const uint4*>(k_pool), static_cast<const uint4*>(v_pool), pages, T, entries,
      block_tokens, head_dim / 8, S_kv, static_cast<uint4*>(k_dst), static_cast<uint4*>(v_dst));
  BMX_LAUNCHED();
}

void launch_sdpa_stats_to_lse(const float* stats, int n_entries, int group, int S,
                              const int32_t* q_begin, const int32_t* n_q, const int32_t* kv_head,
                              float* lse, int64_t lse_stride, cudaStream_t s) {
  if (n_entries <= 0 || S <= 0) return;
  dim3 grid((S + 127) / 128, n_entries, group);
  stats_to_lse_kernel<<<grid, 128, 0, s>>>(stats, group, S, q_begin, n_q, kv_head, lse, lse_stride);
  BMX_LAUNCHED();
}

// head_dim * group bf16 is a multiple of 8 (16 bytes) for every head size we run (64, 128).
void launch_sdpa_gather(const void* rows, int64_t row_stride, int n_entries, int group, int S,
                        int head_dim, const int32_t* q_begin, const int32_t* n_q,
                        const int32_t* kv_head, void* gathered, cudaStream_t s) {
  if (n_entries <= 0 || S <= 0) return;
  const int chunk16 = group * head_dim / 8;
  sdpa_copy_kernel<true><<<dim3(S, n_entries), 128, 0, s>>>(
      static_cast<const uint4*>(rows), static_cast<uint4*>(gathered), row_stride / 8, group, S,
      chunk16, q_begin, n_q, kv_head);
  BMX_LAUNCHED();
}

void launch_sdpa_scatter(const void* gathered, int n_entries, int group, int S, int head_dim,
                         const int32_t* q_begin, const int32_t* n_q, const int32_t* kv_head,
                         void* rows, int64_t row_stride, cudaStream_t s) {
  if (n_entries <= 0 || S <= 0) return;
  const int chunk16 = group * head_dim / 8;
  sdpa_copy_kernel<false><<<dim3(S, n_entries), 128, 0, s>>>(
      static_cast<const uint4*>(gathered), static_cast<uint4*>(rows), row_stride / 8, group, S,
      chunk16, q_begin, n_q, kv_head);
  BMX_LAUNCHED();
}

}  // namespace batchmax::cuda
