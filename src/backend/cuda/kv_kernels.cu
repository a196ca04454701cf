// Writes into the paged KV pool and moves entries inside it (compaction after eviction).
#include <algorithm>

#include "backend/cuda/cuda_common.cuh"

namespace batchmax::cuda {
namespace {

constexpr int kThreads = 256;
int blocks_for(int64_t work) {
  return int(std::min<int64_t>((work + kThreads - 1) / kThreads, int64_t(1) << 20));
}

// One thread per (row, head, element): k/v rows hold n_kv_heads heads of head_dim each.
template <class TI, class TP>
__global__ void kv_store_kernel(View<const TI> k, View<const TI> v, int n_kv_heads,
                                int head_dim, const int32_t* slots, const int32_t* pos,
                                int64_t rows, TP* pk, TP* pv, int32_t* ppos, float* pmass,
                                const int32_t* tables, int block_tokens) {
  pdl_begin();
  const int64_t per_row = int64_t(n_kv_heads) * head_dim;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < rows * per_row;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t r = i / per_row, c = i % per_row;
    const int h = int(c / head_dim), d = int(c % head_dim);
    const int64_t slot = resolve_slot(slots[r * n_kv_heads + h], tables, block_tokens);
    if (slot < 0) continue;  // padding row/head: skipped, as on the CPU
    pk[slot * head_dim + d] = from_f<TP>(to_f(k.row(r)[c]));
    pv[slot * head_dim + d] = from_f<TP>(to_f(v.row(r)[c]));
    if (d == 0) {
      ppos[slot] = pos[r];
      if (pmass) pmass[slot] = 0.0f;
    }
  }
}

// The same with 16-byte pieces (8 bf16 / 4 f32) when input and pool share the type:
// one thread per (row, head, piece).
template <class T>
__global__ void kv_store_vec_kernel(View<const T> k, View<const T> v, int n_kv_heads,
                                    int head_dim, const int32_t* slots, const int32_t* pos,
                                    int64_t rows, T* pk, T* pv, int32_t* ppos, float* pmass,
                                    const int32_t* tables, int block_tokens) {
  pdl_begin();
  constexpr int kPer = 16 / sizeof(T);
  const int pieces = head_dim / kPer;
  const int64_t per_row = int64_t(n_kv_heads) * pieces;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < rows * per_row;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t r = i / per_row;
    const int h = int((i % per_row) / pieces), c = int(i % pieces) * kPer;
    const int64_t slot = resolve_slot(slots[r * n_kv_heads + h], tables, block_tokens);
    if (slot < 0) continue;
    const int64_t col = int64_t(h) * head_dim + c;
    *reinterpret_cast<uint4*>(pk + slot * head_dim + c) = *reinterpret_cast<const uint4*>(k.row(r) + col);
    *reinterpret_cast<uint4*>(pv + slot * head_dim + c) = *reinterpret_cast<const uint4*>(v.row(r) + col);
    if (c == 0) {
      ppos[slot] = pos[r];
      if (pmass) pmass[slot] = 0.0f;
    }
  }
}

// Copies n entries (K, V, position) from slots `from` (or the packed scratch when from is
// null) to slots `to` (or the scratch when to is null). Elements are moved as raw words
// of W bytes: the move never changes the type.
template <class W>
__global__ void kv_copy_kernel(const int32_t* from, const int32_t* to, int64_t n, int words,
                               W* k, W* v, int32_t* pos, float* mass, W* sk, W* sv,
                               int32_t* spos, float* smass) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n * words;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t e = i / words;
    const int w = int(i % words);
    const int64_t src = from ? int64_t(from[e]) : e, dst = to ? int64_t(to[e]) : e;
    const W* ks = from ? k : sk;
    const W* vs = from ? v : sv;
    W* kd = to ? k : sk;
    W* vd = to ? v : sv;
    kd[dst * words + w] = ks[src * words + w];
    vd[dst * words + w] = vs[src * words + w];
    if (w == 0) {
      (to ? pos : spos)[dst] = (from ? pos : spos)[src];
      if (mass) (to ? mass : smass)[dst] = (from ? mass : smass)[src];
    }
  }
}

__global__ void fill_i32_kernel(int32_t* p, int64_t n, int32_t value) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x)
    p[i] = value;
}

// tables[pairs[2i]] = pairs[2i + 1]. After the kernels before it (they may still read
// what it overwrites: a table's tail freed by eviction and grown again).
__global__ void write_tables_kernel(const int32_t* __restrict__ pairs, int n, int32_t* tables) {
  pdl_begin();
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x)
    tables[pairs[2 * i]] = pairs[2 * i + 1];
}

size_t row_bytes_of(const KVPoolView& pool) { return size_t(pool.head_dim) * elem_bytes(pool.type); }

}  // namespace

void launch_kv_store(const Tensor& k, const Tensor& v, int n_kv_heads, const int32_t* d_slots,
                     const int32_t* d_pos, int64_t n_rows, KVPoolView& pool, cudaStream_t s) {
  if (k.type != v.type || k.rows != n_rows || v.rows != n_rows ||
      k.cols != int64_t(n_kv_heads) * pool.head_dim || v.cols != k.cols)
    throw Error("cuda kv_store: k/v shapes do not match the pool");
  const int64_t work = n_rows * k.cols;
  if (work == 0) return;
  const size_t eb = elem_bytes(k.type);
  if (k.type == pool.type && (pool.head_dim * eb) % 16 == 0 && vec8_ok(k) && vec8_ok(v)) {
    dispatch_act(k.type, "kv_store input", [&](auto t) {
      using T = decltype(t);
      launch_pdl(kv_store_vec_kernel<T>, blocks_for(work * eb / 16), kThreads, 0, s,
                 view<const T>(k), view<const T>(v), n_kv_heads, pool.head_dim, d_slots, d_pos,
                 n_rows, static_cast<T*>(pool.k), static_cast<T*>(pool.v), pool.pos, pool.mass,
                 pool.tables, pool.block_tokens);
      BMX_LAUNCHED();
    });
    return;
  }
  dispatch_act(k.type, "kv_store input", [&](auto ti) {
    using TI = decltype(ti);
    dispatch_act(pool.type, "kv pool", [&](auto tp) {
      using TP = decltype(tp);
      launch_pdl(kv_store_kernel<TI, TP>, blocks_for(work), kThreads, 0, s, view<const TI>(k),
                 view<const TI>(v), n_kv_heads, pool.head_dim, d_slots, d_pos, n_rows,
                 static_cast<TP*>(pool.k), static_cast<TP*>(pool.v), pool.pos, pool.mass,
                 pool.tables, pool.block_tokens);
      BMX_LAUNCHED();
    });
  });
}

// meta: per (sequence, KV head) row r: [blocks offset, entries]; the rows' mass is
// mass_rows[r * stride + e]. One CTA per row.
__global__ void add_mass_kernel(const int32_t* meta, const float* mass_rows, int64_t stride,
                                int bt, float* pmass) {
  const int32_t* rec = meta + 2 * blockIdx.x;
  const int32_t* blocks = meta + rec[0];
  const float* m = mass_rows + blockIdx.x * stride;
  for (int e = threadIdx.x; e < rec[1]; e += blockDim.x)
    pmass[int64_t(blocks[e / bt]) * bt + e % bt] += m[e];
}

void launch_add_mass(const int32_t* d_meta, int n_rows, const float* d_mass_rows, int64_t stride,
                     KVPoolView& pool, cudaStream_t s) {
  if (n_rows == 0) return;
  if (!pool.mass) throw Error("cuda accumulate_mass: the pool has no slot mass");
  add_mass_kernel<<<n_rows, kThreads, 0, s>>>(d_meta, d_mass_rows, stride, pool.block_tokens,
                                              pool.mass);
  BMX_LAUNCHED();
}

void launch_fill_i32(int32_t* p, int64_t n, int32_t value, cudaStream_t s) {
  if (n == 0) return;
  fill_i32_kernel<<<blocks_for(n), kThreads, 0, s>>>(p, n, value);
  BMX_LAUNCHED();
}

void launch_write_tables(const int32_t* d_pairs, int n, int32_t* tables, cudaStream_t s) {
  if (n == 0) return;
  launch_pdl(write_tables_kernel, dim3(unsigned(std::min<int64_t>(blocks_for(n), 1024))), dim3(kThreads), 0, s,
             d_pairs, n, tables);
}

size_t kv_move_scratch_bytes(const KVPoolView& pool, int64_t n) {
  return size_t(n) * (2 * row_bytes_of(pool) + sizeof(int32_t) + sizeof(float)) + 256;
}

void launch_kv_move(const int32_t* d_src, const int32_t* d_dst, int64_t n, void* scratch,
                    KVPoolView& pool, cudaStream_t s) {
  if (n == 0) return;
  const size_t rb = row_bytes_of(pool);
  char* base = static_cast<char*>(scratch);
  auto go = [&](auto w) {
    using W = decltype(w);
    const int words = int(rb / sizeof(W));
    W* sk = reinterpret_cast<W*>(base);
    W* sv = reinterpret_cast<W*>(base + n * rb);
    int32_t* sp = reinterpret_cast<int32_t*>(base + 2 * n * rb);
    float* sm = reinterpret_cast<float*>(sp + n);
    W* k = static_cast<W*>(pool.k);
    W* v = static_cast<W*>(pool.v);
    const int blocks = blocks_for(n * words);
    // Gather every source first, then scatter: overlapping moves stay correct.
    kv_copy_kernel<W><<<blocks, kThreads, 0, s>>>(d_src, nullptr, n, words, k, v, pool.pos,
                                                  pool.mass, sk, sv, sp, sm);
    BMX_LAUNCHED();
    kv_copy_kernel<W><<<blocks, kThreads, 0, s>>>(nullptr, d_dst, n, words, k, v, pool.pos,
                                                  pool.mass, sk, sv, sp, sm);
    BMX_LAUNCHED();
  };
  if (rb % 16 == 0) go(uint4{});
  else if (rb % 4 == 0) go(uint32_t{});
  else go(uint16_t{});
}

}  // namespace batchmax::cuda
