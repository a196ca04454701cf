// Prefill attention through cuDNN's fused SDPA (flash attention on Hopper's wgmma/TMA).
// K and V are gathered from the KV pool's per-head block tables into dense rows (2x our
// kernel); a call whose dense K/V would pass a 32 MiB cap runs as several calls that fit.
// With BATCHMAX_CUDA_CUDNN_KV=paged, or one entry past the cap alone, cuDNN reads the pages
// itself (1.3x our kernel: cuDNN picks an sm80 kernel for pages). Our own flash kernel stays for decode rows, other types and when
// cuDNN is absent: libcudnn is opened at run time, so the program runs without it.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>

namespace batchmax::cuda {

// One (sequence, KV head) of a call: cuDNN's "batch" entry, with `group` query heads.
struct SdpaEntry {
  int32_t q_begin = 0;  // first query row of the sequence
  int32_t n_q = 0;      // its query rows
  int32_t kv_head = 0;
  int32_t entries = 0;  // the head's valid cache entries; the queries' own are the last n_q
  std::span<const int32_t> blocks;  // the head's block table
};

struct SdpaCall {
  const void* q = nullptr;  // bf16 rows of n_heads * head_dim
  int64_t q_row_stride = 0;  // elements
  void* out = nullptr;       // bf16, same shape as q
  int64_t out_row_stride = 0;
  const void* k_pool = nullptr;  // bf16 [n_blocks][block_tokens][head_dim]
  const void* v_pool = nullptr;
  int64_t n_blocks = 0;
  int block_tokens = 0;
  int n_heads = 0, n_kv_heads = 0, head_dim = 0;
  float scale = 0;
  float* lse = nullptr;  // optional: log2-sum-exp per (row, head), row stride lse_stride
  int64_t lse_stride = 0;
  std::span<const SdpaEntry> entries;
};

// Device copies of host ints (valid for the step) and scratch of at least n bytes.
using PutInts = std::function<const int32_t*(std::span<const int32_t>)>;
using Scratch = std::function<void*(size_t)>;

// Opens libcudnn once for the frontend (NV_CUDNN_FRONTEND_USE_DYNAMIC_LOADING); returns
// its version, or 0 with `why` saying what is missing.
int64_t load_cudnn(std::string& why);

class CudnnAttention {
 public:
  // Null when cuDNN cannot be used (no libcudnn.so.9, a version before 9.5, or
  // BATCHMAX_CUDA_CUDNN=0); `why` then says which.
  static std::unique_ptr<CudnnAttention> open(cudaStream_t stream, std::string& why);
  virtual ~CudnnAttention() = default;
  // False when cuDNN has no plan for this call's shape (the caller runs its own kernel).
  // The causal mask is bottom-right aligned: query r of an entry sees its first
  // entries - n_q + r + 1 keys, which is the position mask when the queries' own keys
  // are the table's last n_q entries in order and all earlier ones are older.
  virtual bool run(const SdpaCall& c, const PutInts& put, const Scratch& scratch) = 0;
  // Scratch bytes a call over `rows` query rows and `entries` entries may ask for.
  virtual size_t scratch_bound(int64_t rows, int64_t entries, int n_heads, int head_dim) const = 0;
  virtual std::string describe() const = 0;  // cuDNN version and layouts
};

// Glue kernels (sdpa_glue_kernels.cu). Entry arrays are device ints of length n_entries.
// q_begin/n_q/kv_head index rows and heads of the step's tensors; S is the padded length.
void launch_sdpa_stats_to_lse(const float* stats, int n_entries, int group, int S,
                              const int32_t* q_begin, const int32_t* n_q, const int32_t* kv_head,
                              float* lse, int64_t lse_stride, cudaStream_t s);
// Gathered layout: [entry][S][group][head_dim], rows past n_q left as they are.
void launch_sdpa_gather(const void* rows, int64_t row_stride, int n_entries, int group, int S,
                        int head_dim, const int32_t* q_begin, const int32_t* n_q,
                        const int32_t* kv_head, void* gathered, cudaStream_t s);
// Dense K and V for cuDNN: entry b's first entries[b] pool rows, through its page table
// [b][T], to k_dst and v_dst [b][S_kv][head_dim] (zeros past entries[b]).
void launch_sdpa_gather_kv(const void* k_pool, const void* v_pool, const int32_t* pages, int T,
                           const int32_t* entries, int n_entries, int block_tokens, int head_dim,
                           int S_kv, void* k_dst, void* v_dst, cudaStream_t s);
void launch_sdpa_scatter(const void* gathered, int n_entries, int group, int S, int head_dim,
                         const int32_t* q_begin, const int32_t* n_q, const int32_t* kv_head,
                         void* rows, int64_t row_stride, cudaStream_t s);

}  // namespace batchmax::cuda
