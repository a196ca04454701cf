#pragma once
// Shared by the CUDA sources: error checks, element access for the two activation
// types (F32, BF16), and the launch functions each kernel file exports.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <cstdlib>
#include <functional>
#include <string>
#include <utility>

#include "backend/backend.h"
#include "core/error.h"

namespace batchmax::cuda {

[[noreturn]] void throw_cuda(cudaError_t e, const char* what, const char* file, int line);

#define BMX_CUDA(call)                                                           \
  do {                                                                           \
    cudaError_t e_ = (call);                                                     \
    if (e_ != cudaSuccess) ::batchmax::cuda::throw_cuda(e_, #call, __FILE__, __LINE__); \
  } while (0)
// After every launch: a bad configuration shows here, not at some later call.
#define BMX_LAUNCHED() BMX_CUDA(cudaGetLastError())

using bf16 = __nv_bfloat16;

__device__ __forceinline__ float to_f(float x) { return x; }
__device__ __forceinline__ float to_f(bf16 x) { return __bfloat162float(x); }
// silu(g) * u: the swiglu kernel's op and the fused gate/up kernel's epilogue.
__device__ __forceinline__ float swiglu_f(float g, float u) { return g / (1.0f + __expf(-g)) * u; }
template <class T> __device__ __forceinline__ T from_f(float x);
template <> __device__ __forceinline__ float from_f<float>(float x) { return x; }
template <> __device__ __forceinline__ bf16 from_f<bf16>(float x) { return __float2bfloat16(x); }

// 8 consecutive elements as floats; p must be 16-byte aligned (bf16) or 32-byte (f32).
__device__ __forceinline__ void load8(const bf16* p, float (&v)[8]) {
  uint4 u = *reinterpret_cast<const uint4*>(p);
  const __nv_bfloat162* h = reinterpret_cast<const __nv_bfloat162*>(&u);
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    float2 f = __bfloat1622float2(h[i]);
    v[2 * i] = f.x;
    v[2 * i + 1] = f.y;
  }
}
__device__ __forceinline__ void load8(const float* p, float (&v)[8]) {
  float4 a = reinterpret_cast<const float4*>(p)[0], b = reinterpret_cast<const float4*>(p)[1];
  v[0] = a.x; v[1] = a.y; v[2] = a.z; v[3] = a.w;
  v[4] = b.x; v[5] = b.y; v[6] = b.z; v[7] = b.w;
}
__device__ __forceinline__ void store8(bf16* p, const float (&v)[8]) {
  uint4 u;
  __nv_bfloat162* h = reinterpret_cast<__nv_bfloat162*>(&u);
#pragma unroll
  for (int i = 0; i < 4; ++i) h[i] = __floats2bfloat162_rn(v[2 * i], v[2 * i + 1]);
  *reinterpret_cast<uint4*>(p) = u;
}
__device__ __forceinline__ void store8(float* p, const float (&v)[8]) {
  reinterpret_cast<float4*>(p)[0] = make_float4(v[0], v[1], v[2], v[3]);
  reinterpret_cast<float4*>(p)[1] = make_float4(v[4], v[5], v[6], v[7]);
}

// Programmatic dependent launch (sm_90): a kernel launched by launch_pdl may be scheduled
// while the previous kernel on the stream is still finishing, so its launch and CTA
// set-up overlap that kernel's tail instead of following it. Such a kernel starts with
// pdl_begin(): it waits until the previous kernel has finished and its writes are
// visible (a no-op when launched without the attribute, or before sm_90), then lets
// the next kernel launch. BATCHMAX_CUDA_PDL=0 launches them as usual.
inline bool pdl_enabled() {
  static const bool on = [] {
    const char* e = std::getenv("BATCHMAX_CUDA_PDL");
    return !(e && *e == '0');
  }();
  return on;
}
__device__ __forceinline__ void pdl_begin() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;\n" ::: "memory");
  asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");
#endif
}
template <class... P, class... A>
void launch_pdl(void (*kernel)(P...), dim3 grid, dim3 block, size_t smem, cudaStream_t s,
                A&&... args) {
  cudaLaunchAttribute attr{};
  attr.id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr.val.programmaticStreamSerializationAllowed = 1;
  cudaLaunchConfig_t cfg{};
  cfg.gridDim = grid;
  cfg.blockDim = block;
  cfg.dynamicSmemBytes = smem;
  cfg.stream = s;
  cfg.attrs = &attr;
  cfg.numAttrs = pdl_enabled() ? 1 : 0;
  BMX_CUDA(cudaLaunchKernelEx(&cfg, kernel, std::forward<A>(args)...));
}

// Row-major 2-D view passed to kernels; stride in elements.
template <class T>
struct View {
  T* p;
  int64_t stride;
  __device__ __forceinline__ T* row(int64_t r) const { return p + r * stride; }
};

inline bool is_act_type(GgmlType t) { return t == GgmlType::F32 || t == GgmlType::BF16; }
inline size_t elem_bytes(GgmlType t) {
  switch (t) {
    case GgmlType::F32: case GgmlType::I32: return 4;
    case GgmlType::BF16: case GgmlType::F16: return 2;
    default: throw Error("cuda backend: " + std::string("no plain element size for this type"));
  }
}
template <class T>
View<T> view(const Tensor& t) {
  return {static_cast<T*>(t.data), int64_t(t.row_stride / sizeof(T))};
}

// Entry e's pool slot through a block table of bt entries a block. Attention loops call
// this for every entry of a tile; a division by a runtime bt is ~20 instructions (ncu: a
// decode CTA issued ~740 instructions a tile), so a power of two (the engine's 16) goes by
// shift and mask: bt_shift = block_shift(bt), -1 for other sizes.
__device__ __forceinline__ int64_t table_slot(const int32_t* blocks, int e, int bt, int bt_shift) {
  if (bt_shift >= 0) return (int64_t(blocks[e >> bt_shift]) << bt_shift) | (e & (bt - 1));
  return int64_t(blocks[e / bt]) * bt + e % bt;
}
inline int block_shift(int bt) { return bt > 0 && (bt & (bt - 1)) == 0 ? __builtin_ctz(unsigned(bt)) : -1; }

// Whether every row start of t is 16-byte aligned and cols a multiple of 8: the
// vectorised paths' condition.
inline bool vec8_ok(const Tensor& t) {
  const size_t eb = elem_bytes(t.type);
  return t.cols % 8 == 0 && (reinterpret_cast<uintptr_t>(t.data) % (8 * eb)) == 0 &&
         t.row_stride % (8 * eb) == 0;
}

// Calls f(T{}) with T = float or bf16 by the tensor type.
template <class F>
void dispatch_act(GgmlType t, const char* what, F&& f) {
  if (t == GgmlType::F32) f(float{});
  else if (t == GgmlType::BF16) f(bf16{});
  else throw Error(std::string("cuda backend: ") + what + " must be F32 or BF16");
}

// ---- launch functions (one file per concept) ----
// elementwise_kernels.cu
void launch_embed(const Tensor& table, const int32_t* d_ids, Tensor& out, cudaStream_t s);
void launch_gather_rows(const Tensor& x, const int32_t* d_rows, Tensor& out, cudaStream_t s);
void launch_swiglu(const Tensor& gate, const Tensor& up, Tensor& out, cudaStream_t s);
void launch_add(Tensor& x, const Tensor& y, cudaStream_t s);
void launch_add_bias(Tensor& out, const Tensor& bias, cudaStream_t s);
// p[i] = offset + scale * u(seed, i), u uniform in [-1, 1) (same hash as the CPU backend).
void launch_fill_random(void* p, GgmlType t, int64_t n, uint64_t seed, cudaStream_t s,
                        float scale = 1.0f, float offset = 0.0f);
// norm_rope_kernels.cu
void launch_rms_norm(const Tensor& x, const Tensor& w, float eps, Tensor& out, cudaStream_t s);
// rope: (cos, sin) per (row, frequency) of a step's positions, then the rotation from it.
void launch_rope_table(const int32_t* d_pos, int64_t rows, const float* d_inv_freq, int half,
                       float2* d_table, cudaStream_t s);
void launch_rope(Tensor& x, int n_heads, const float2* d_table, const RopeParams& p,
                 cudaStream_t s);
void launch_add_rms_norm(Tensor& x, const Tensor& y, const Tensor& w, float eps, Tensor& out,
                         cudaStream_t s);
// dequant_kernels.cu: rows of `src_type` (contiguous, GGUF layout) to F32 or BF16 rows.
void launch_dequant(GgmlType src_type, const void* d_src, int64_t rows, int64_t cols,
                    const Tensor& out, int64_t out_row0, cudaStream_t s);
// kv_kernels.cu
void launch_kv_store(const Tensor& k, const Tensor& v, int n_kv_heads, const int32_t* d_slots,
                     const int32_t* d_pos, int64_t n_rows, KVPoolView& pool, cudaStream_t s);
// rope_kv_store.cu: rope of q and k (table of launch_rope_table) and the store of k and v,
// fused; only where rope_kv_store_fusable() (else rope and kv_store run separately).
bool rope_kv_store_fusable(const Tensor& q, int n_q_heads, const Tensor& k, const Tensor& v,
                           int n_kv_heads, const RopeParams& p, const KVPoolView& pool);
void launch_rope_kv_store(Tensor& q, int n_q_heads, Tensor& k, const Tensor& v, int n_kv_heads,
                          const float2* d_table, const RopeParams& p, const int32_t* d_slots,
                          const int32_t* d_pos, KVPoolView& pool, cudaStream_t s);
// Parallel assignment: every source is read (into `scratch`) before any slot is written.
// pool.mass[slot of entry e of row r] += mass_rows[r * stride + e] (meta: see kv_kernels.cu).
void launch_add_mass(const int32_t* d_meta, int n_rows, const float* d_mass_rows, int64_t stride,
                     KVPoolView& pool, cudaStream_t s);
void launch_kv_move(const int32_t* d_src, const int32_t* d_dst, int64_t n, void* scratch,
                    KVPoolView& pool, cudaStream_t s);
size_t kv_move_scratch_bytes(const KVPoolView& pool, int64_t n);
void launch_fill_i32(int32_t* p, int64_t n, int32_t value, cudaStream_t s);
// Backend::write_block_tables: n (place, block id) pairs (device copy).
void launch_write_tables(const int32_t* d_pairs, int n, int32_t* tables, cudaStream_t s);
// A kv_store slot (Backend::kv_store): >= -1 itself, <= -2 a place of the pool's table
// space and an entry of the block there (table_slot_code; decode_table_slot on the host).
__device__ __forceinline__ int64_t resolve_slot(int32_t s, const int32_t* tables, int block_tokens) {
  if (s >= -1) return s;
  const int32_t u = -2 - s;
  return int64_t(tables[u / block_tokens]) * block_tokens + u % block_tokens;
}
// Where a work item's block ids lie: at >= 0 in the call's metadata, else in the pool's
// table space at -1 - at (AttentionSeq::head_rows).
__device__ __forceinline__ const int32_t* head_block_ids(const int32_t* meta, const int32_t* tables,
                                                         int32_t at) {
  return at >= 0 ? meta + at : tables + (-1 - int64_t(at));
}
// attention_kernels.cu
struct AttentionLaunch {
  const int32_t* meta;  // device copy of the packed metadata (see attention_kernels.cu)
  int n_small, n_big;   // work items (CTAs) of the two lists, small tiles first
  int n_seqs;
  int seq_at;           // where the per-sequence records start: 4 * (n_small + n_big)
  int max_small_entries = 0;  // most entries of any KV head in the small list
  std::function<void*(size_t)> scratch;  // device scratch of n bytes (split-KV partials)
  // Flash path only. launch_attention: when set, writes each query vector's log2-sum-exp
  // (scaled scores, base 2; -inf when it sees no key) at lse[row * lse_stride + head].
  // launch_attention_scores: when set, reads them and skips its first pass.
  float* lse = nullptr;
  int64_t lse_stride = 0;
  // launch_attention_scores: out was not zeroed, the kernel writes every element of each
  // (sequence, KV head) row; only where attention_scores_fill_rows() allows it.
  bool fill_rows = false;
};
// Query vectors per CTA: `small` for (sequence, KV head) pairs with at most that many
// vectors (decode rows), `big` otherwise. They depend on the path the types select.
struct AttentionTiles { int small, big; };
AttentionTiles attention_tiles(const AttentionParams& p, GgmlType q, GgmlType pool);
void launch_attention(const Tensor& q, const AttentionLaunch& a, const AttentionParams& p,
                      const KVPoolView& pool, Tensor& out, cudaStream_t s);
// flash_attention.cu: the tensor-core path (bf16 q and pool; head_dim 64, 96, 128).
bool flash_attention_supported(GgmlType q, GgmlType pool, int head_dim);
AttentionTiles flash_attention_tiles();
// The most split-KV scratch a decode launch of up to `max_items` work items can ask for.
size_t flash_decode_scratch_bound(int head_dim, int64_t max_items);
void launch_flash_attention(const Tensor& q, const AttentionLaunch& a, const AttentionParams& p,
                            const KVPoolView& pool, Tensor& out, cudaStream_t s);
// scores_kernels.cu: attention mass. a: all work items in the small list; d_out
// [n_seqs][n_kv][stride], zeroed. Query vectors per work item that launch_attention_scores
// expects for these types (pack with this tile); a.scratch must be set (per-split partial
// sums). bf16 q and pool go to the tensor-core kernel of flash_scores.cu.
int attention_scores_tile(GgmlType q, GgmlType pool, int head_dim);
int flash_scores_tile();
void launch_flash_scores(const Tensor& q, const AttentionLaunch& a, const AttentionParams& p,
                         const KVPoolView& pool, float* d_out, int64_t stride, cudaStream_t s);
size_t attention_scores_scratch_bytes();  // what one launch's partial sums may take
// True when launch_attention_scores can take `a` with fill_rows (no zeroed out needed):
// the tensor-core kernel, sums from the attention pass, and one work item per (sequence,
// KV head), so one CTA holds a key range's whole mass. Decode rows are such calls.
bool attention_scores_fill_rows(const Tensor& q, const AttentionLaunch& a, const AttentionParams& p,
                                const KVPoolView& pool);
bool flash_scores_fill_rows(const AttentionLaunch& a, const AttentionParams& p);
void launch_attention_scores(const Tensor& q, const AttentionLaunch& a, const AttentionParams& p,
                             const KVPoolView& pool, float* d_out, int64_t stride,
                             cudaStream_t s);
void launch_key_norms(const KVPoolView& pool, const int32_t* d_blocks, int64_t n, float* d_out,
                      cudaStream_t s);

// evict_kernels.cu. d_meta: as EvictWorkPacker packs it (backend/evict_work.h); d_keys:
// one uint32 per entry of every task (keys offsets in meta).
constexpr int64_t kEvictKeysPerLaunch = int64_t(1) << 20;  // entries of all tasks of a launch
void launch_evict(const int32_t* d_meta, int n_tasks, const float* d_mass, int64_t mass_stride,
                  uint32_t* d_keys, KVPoolView& pool, cudaStream_t s);
// sampling_kernels.cu: Backend::argmax_rows and sample_rows on F32 rows (device inputs,
// one per row).
void launch_argmax_rows(const Tensor& x, int32_t* d_out, cudaStream_t s);
void launch_sample_rows(const Tensor& x, const float* d_inv_temperature, const double* d_uniform,
                        int32_t* d_out, cudaStream_t s);
// Backend::top_candidates: k per row to d_values/d_ids, each row's mass to d_mass.
void launch_top_candidates(const Tensor& x, int k, const float* d_inv_temperature, float* d_values,
                           int32_t* d_ids, double* d_mass, cudaStream_t s);
void launch_kv_positions(const KVPoolView& pool, const int32_t* d_blocks, int64_t n,
                         int32_t* d_out, cudaStream_t s);

}  // namespace batchmax::cuda
