#include "backend/cpu/cpu_backend.h"
#include "backend/cpu/attention_scores.h"
#include "kv/eviction_policy.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <sys/mman.h>
#include <limits>
#include <vector>

#include "backend/cpu/kernels_avx2.h"
#include "backend/cpu/kernels_ref.h"
#include "backend/row_sampling.h"
#include "core/cpu_features.h"
#include "core/error.h"

namespace batchmax {

namespace {

void* aligned_bytes(size_t n) {
  const size_t rounded = (std::max<size_t>(n, 1) + 63) & ~size_t{63};
  void* p = std::aligned_alloc(64, rounded);
  if (!p) throw Error("CPU backend: out of memory allocating " + std::to_string(n) + " bytes");
  return p;
}

void* map_zeroed(size_t n) {
  void* p = mmap(nullptr, std::max<size_t>(n, 1), PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) throw Error("CPU backend: out of memory mapping " + std::to_string(n) + " bytes");
  return p;
}

int64_t kv_pool_bytes(const KVPoolView& p) {
  const int64_t slots = p.n_blocks * p.block_tokens;
  const int64_t elem = p.type == GgmlType::F32 ? 4 : 2;
  return slots * (2 * p.head_dim * elem + int64_t(sizeof(int32_t)) + (p.mass ? 4 : 0));
}

void require(bool ok, const char* what) {
  if (!ok) throw Error(std::string("CPU backend: ") + what);
}

void require_f32(const Tensor& t, const char* what) {
  require(t.type == GgmlType::F32 && t.data != nullptr, what);
}

// Columns [b, e) of an F32 tensor, as a view.
Tensor col_view(const Tensor& t, int64_t b, int64_t e) {
  Tensor v = t;
  v.data = t.f32() + b;
  v.cols = e - b;
  return v;
}

// Rows per parallel chunk for row-wise ops: enough work to be worth a hand-off.
int64_t row_grain(int64_t cols) { return std::max<int64_t>(1, 16384 / std::max<int64_t>(cols, 1)); }

// The CUDA fill_random_kernel's hash (splitmix64 of seed + i * golden ratio), so both
// backends generate the same dummy weights.
float uniform_pm1(uint64_t seed, uint64_t i) {
  uint64_t z = seed + i * 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  z ^= z >> 31;
  return float(z >> 40) * (2.0f / 16777216.0f) - 1.0f;
}

// Query rows per attention work unit.
constexpr int64_t kAttnRows = 16;

}  // namespace

CpuBackend::CpuBackend(const CpuBackendOptions& opts)
    : simd_(!opts.force_scalar && cpu_features().has_avx2_kernels()),
      q8_(simd_ && opts.q8_activations),
      pool_(opts.n_threads) {}

std::string CpuBackend::name() const {
  return std::string(simd_ ? "cpu-avx2" : "cpu-scalar") + " x" + std::to_string(pool_.size());
}

Tensor CpuBackend::alloc(GgmlType type, int64_t rows, int64_t cols) {
  require(rows >= 0 && cols >= 0, "negative tensor shape");
  Tensor t;
  t.type = type;
  t.rows = rows;
  t.cols = cols;
  t.row_stride = row_bytes(type, cols);
  t.data = aligned_bytes(t.bytes());
  std::memset(t.data, 0, t.bytes());
  track(int64_t(t.bytes()));
  return t;
}

void CpuBackend::free(Tensor& t) {
  if (t.data) track(-int64_t(t.bytes()));
  std::free(t.data);
  t = Tensor{};
}

Tensor CpuBackend::load_weight(GgmlType type, const void* data, int64_t rows, int64_t cols) {
  if (!type_traits(type).dequantizable)
    throw Error("CPU backend: weight type " + type_name(type) + " is not supported");
  Tensor t;
  t.data = const_cast<void*>(data);  // read only: weights are never written
  t.type = type;
  t.rows = rows;
  t.cols = cols;
  t.row_stride = row_bytes(type, cols);
  return t;
}

void CpuBackend::upload(const void* host, Tensor& dst) { std::memcpy(dst.data, host, dst.bytes()); }
void CpuBackend::download(const Tensor& src, void* host) { std::memcpy(host, src.data, src.bytes()); }

void CpuBackend::fill_random(Tensor& t, uint64_t seed, float scale, float offset) {
  require(t.type == GgmlType::F32 && t.row_stride == size_t(t.cols) * 4,
          "fill_random: contiguous F32 tensors only");
  float* p = t.f32();
  pool_.parallel_for(t.rows * t.cols, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) p[i] = offset + scale * uniform_pm1(seed, uint64_t(i));
  }, 1 << 16);
}

void CpuBackend::embed(const Tensor& table, std::span<const int32_t> ids, Tensor& out) {
  require_f32(out, "embed output must be F32");
  require(out.rows == int64_t(ids.size()) && out.cols == table.cols, "embed: shape mismatch");
  for (int32_t id : ids) require(id >= 0 && id < table.rows, "embed: token id out of range");
  pool_.parallel_for(out.rows, [&](int64_t b, int64_t e) {
    for (int64_t r = b; r < e; ++r) {
      if (simd_) cpu::avx2::dequantize_row(table.type, table.row(ids[r]), out.row_f32(r), table.cols);
      else dequantize_row(table.type, table.row(ids[r]), out.row_f32(r), table.cols);
    }
  }, row_grain(out.cols));
}

void CpuBackend::rms_norm(const Tensor& x, const Tensor& w, float eps, Tensor& out) {
  require_f32(x, "rms_norm input must be F32");
  require_f32(out, "rms_norm output must be F32");
  require(w.cols == x.cols && out.rows == x.rows && out.cols == x.cols, "rms_norm: shape mismatch");
  std::vector<float> wf;
  const float* wp = w.f32();
  if (w.type != GgmlType::F32) {
    wf.resize(w.cols);
    dequantize_row(w.type, w.data, wf.data(), w.cols);
    wp = wf.data();
  }
  pool_.parallel_for(x.rows, [&](int64_t b, int64_t e) {
    if (simd_) {
      cpu::avx2::rms_norm_rows(x, wp, eps, out, b, e);
    } else {
      Tensor o = out.slice_rows(b, e - b);
      cpu::ref::rms_norm(x.slice_rows(b, e - b), w, eps, o);
    }
  }, row_grain(x.cols));
}

void CpuBackend::matmul(const Tensor& x, const Tensor& w, const Tensor* bias, Tensor& out) {
  require_f32(x, "matmul input must be F32");
  require_f32(out, "matmul output must be F32");
  require(x.cols == w.cols && out.rows == x.rows && out.cols == w.rows, "matmul: shape mismatch");
  if (bias) require(bias->type == GgmlType::F32 && bias->rows * bias->cols >= w.rows, "matmul: bad bias");
  const int64_t m = w.rows;
  if (q8_ && cpu::avx2::matmul_q8_supported(w.type, x.rows)) {
    // Quantised once here; the workers read the caller's copy through a pointer (a
    // thread_local named in the lambda would be each worker's own, empty, copy).
    thread_local cpu::avx2::QuantizedRows tl_xq;
    const cpu::avx2::QuantizedRows* xq = &tl_xq;
    cpu::avx2::quantize_rows_q8(x, tl_xq);
    const int64_t grain = cpu::avx2::matmul_col_grain(x.rows, x.cols);
    pool_.parallel_for((m + grain - 1) / grain, [&](int64_t b, int64_t e) {
      cpu::avx2::matmul_q8_cols(*xq, w, bias, out, b * grain, std::min(m, e * grain));
    });
  } else if (simd_) {
    const int64_t grain = cpu::avx2::matmul_col_grain(x.rows, x.cols);
    pool_.parallel_for((m + grain - 1) / grain, [&](int64_t b, int64_t e) {
      cpu::avx2::matmul_cols(x, w, bias, out, b * grain, std::min(m, e * grain));
    });
  } else {
    pool_.parallel_for(m, [&](int64_t b, int64_t e) {
      Tensor o = col_view(out, b, e);
      Tensor bs;
      if (bias) bs = col_view(*bias, b, e);
      cpu::ref::matmul(x, w.slice_rows(b, e - b), bias ? &bs : nullptr, o);
    }, 16);
  }
}

void CpuBackend::rope(Tensor& x, int n_heads, std::span<const int32_t> pos, const RopeParams& p) {
  require_f32(x, "rope input must be F32");
  require(int64_t(pos.size()) == x.rows && int64_t(n_heads) * p.head_dim <= x.cols &&
              p.rotary_dim <= p.head_dim && p.rotary_dim % 2 == 0 &&
              int64_t(p.inv_freq.size()) >= p.rotary_dim / 2,
          "rope: shape mismatch");
  pool_.parallel_for(x.rows, [&](int64_t b, int64_t e) {
    if (simd_) {
      cpu::avx2::rope_rows(x, n_heads, pos.data(), p, b, e);
    } else {
      Tensor xs = x.slice_rows(b, e - b);
      cpu::ref::rope(xs, n_heads, pos.subspan(b, e - b), p);
    }
  }, row_grain(x.cols));
}

void CpuBackend::swiglu(const Tensor& gate, const Tensor& up, Tensor& out) {
  require_f32(gate, "swiglu gate must be F32");
  require_f32(up, "swiglu up must be F32");
  require_f32(out, "swiglu output must be F32");
  require(up.rows == gate.rows && up.cols == gate.cols && out.rows == gate.rows && out.cols == gate.cols,
          "swiglu: shape mismatch");
  pool_.parallel_for(gate.rows, [&](int64_t b, int64_t e) {
    if (simd_) {
      for (int64_t r = b; r < e; ++r) cpu::avx2::swiglu(gate.row_f32(r), up.row_f32(r), out.row_f32(r), gate.cols);
    } else {
      Tensor o = out.slice_rows(b, e - b);
      cpu::ref::swiglu(gate.slice_rows(b, e - b), up.slice_rows(b, e - b), o);
    }
  }, row_grain(gate.cols));
}

void CpuBackend::add(Tensor& x, const Tensor& y) {
  require_f32(x, "add: x must be F32");
  require_f32(y, "add: y must be F32");
  require(x.rows == y.rows && x.cols == y.cols, "add: shape mismatch");
  pool_.parallel_for(x.rows, [&](int64_t b, int64_t e) {
    if (simd_) {
      for (int64_t r = b; r < e; ++r) cpu::avx2::add(x.row_f32(r), y.row_f32(r), x.cols);
    } else {
      Tensor xs = x.slice_rows(b, e - b);
      cpu::ref::add(xs, y.slice_rows(b, e - b));
    }
  }, row_grain(x.cols));
}

void CpuBackend::gather_rows(const Tensor& x, std::span<const int32_t> rows, Tensor& out) {
  require(x.type == out.type && x.cols == out.cols && out.rows == int64_t(rows.size()),
          "gather_rows: shape mismatch");
  cpu::ref::gather_rows(x, rows, out);
}

void CpuBackend::copy_rows(const Tensor& src, Tensor& dst) {
  require(src.type == dst.type && src.rows == dst.rows && src.cols == dst.cols,
          "copy_rows: shape mismatch");
  const size_t rb = row_bytes(src.type, src.cols);
  for (int64_t r = 0; r < src.rows; ++r)
    std::memcpy(static_cast<char*>(dst.data) + r * dst.row_stride, src.row(r), rb);
}

KVPoolView CpuBackend::alloc_kv_pool(GgmlType type, int64_t n_blocks, int block_tokens, int head_dim,
                                     bool slot_mass) {
  require(type == GgmlType::F32 || type == GgmlType::F16, "KV pool type must be F32 or F16");
  require(n_blocks > 0 && block_tokens > 0 && head_dim > 0, "KV pool: bad shape");
  KVPoolView p;
  p.type = type;
  p.block_tokens = block_tokens;
  p.head_dim = head_dim;
  p.n_blocks = n_blocks;
  const int64_t slots = n_blocks * block_tokens;
  const size_t elem = type == GgmlType::F32 ? 4 : 2;
  // K and V come from the kernel zeroed and are touched only as blocks fill, so a large
  // pool costs memory only for what sequences use.
  p.k = map_zeroed(size_t(slots) * head_dim * elem);
  p.v = map_zeroed(size_t(slots) * head_dim * elem);
  p.pos = static_cast<int32_t*>(aligned_bytes(slots * sizeof(int32_t)));
  std::fill(p.pos, p.pos + slots, std::numeric_limits<int32_t>::max());
  if (slot_mass) {
    p.mass = static_cast<float*>(aligned_bytes(slots * sizeof(float)));
    std::fill(p.mass, p.mass + slots, 0.0f);
  }
  track(kv_pool_bytes(p));
  return p;
}

void CpuBackend::free_kv_pool(KVPoolView& pool) {
  if (!pool.k) return;
  track(-kv_pool_bytes(pool));
  const size_t kv = size_t(pool.n_blocks) * pool.block_tokens * pool.head_dim *
                    (pool.type == GgmlType::F32 ? 4 : 2);
  munmap(pool.k, std::max<size_t>(kv, 1));
  munmap(pool.v, std::max<size_t>(kv, 1));
  std::free(pool.pos);
  std::free(pool.mass);
  pool = KVPoolView{};
}

void CpuBackend::kv_store(const Tensor& k, const Tensor& v, int n_kv_heads, std::span<const int32_t> slots,
                          std::span<const int32_t> pos, KVPoolView& pool) {
  require_f32(k, "kv_store: k must be F32");
  require_f32(v, "kv_store: v must be F32");
  const int hd = pool.head_dim;
  require(k.rows == v.rows && k.cols == int64_t(n_kv_heads) * hd && v.cols == k.cols &&
              int64_t(slots.size()) == k.rows * n_kv_heads && int64_t(pos.size()) == k.rows,
          "kv_store: shape mismatch");
  const int64_t capacity = pool.n_blocks * pool.block_tokens;
  for (int64_t r = 0; r < k.rows; ++r)
    for (int h = 0; h < n_kv_heads; ++h) {
      int64_t s = slots[r * n_kv_heads + h];
      if (s <= -2) {  // the pool's table space names the block (tables in host memory here)
        check_kv_slot(pool, int32_t(s), "kv_store");
        const TableSlot t = decode_table_slot(int32_t(s), pool.block_tokens);
        s = int64_t(pool.tables[t.place]) * pool.block_tokens + t.entry;
      }
      if (s < 0) continue;
      require(s < capacity, "kv_store: slot out of range");
      const float* ks = k.row_f32(r) + int64_t(h) * hd;
      const float* vs = v.row_f32(r) + int64_t(h) * hd;
      if (pool.type == GgmlType::F32) {
        std::memcpy(static_cast<float*>(pool.k) + int64_t(s) * hd, ks, hd * sizeof(float));
        std::memcpy(static_cast<float*>(pool.v) + int64_t(s) * hd, vs, hd * sizeof(float));
      } else {
        uint16_t* kd = static_cast<uint16_t*>(pool.k) + int64_t(s) * hd;
        uint16_t* vd = static_cast<uint16_t*>(pool.v) + int64_t(s) * hd;
        for (int i = 0; i < hd; ++i) {
          kd[i] = fp32_to_fp16(ks[i]);
          vd[i] = fp32_to_fp16(vs[i]);
        }
      }
      pool.pos[s] = pos[r];
      if (pool.mass) pool.mass[s] = 0.0f;
    }
}

void CpuBackend::kv_move(std::span<const int32_t> src, std::span<const int32_t> dst, KVPoolView& pool) {
  require(src.size() == dst.size(), "kv_move: src and dst differ in length");
  const int64_t capacity = pool.n_blocks * pool.block_tokens;
  const size_t bytes = size_t(pool.head_dim) * (pool.type == GgmlType::F32 ? 4 : 2);
  char* kb = static_cast<char*>(pool.k);
  char* vb = static_cast<char*>(pool.v);
  // In order, so a compaction that moves entries down in one pass is well defined.
  for (size_t i = 0; i < src.size(); ++i) {
    require(src[i] >= 0 && src[i] < capacity && dst[i] >= 0 && dst[i] < capacity, "kv_move: slot out of range");
    if (src[i] == dst[i]) continue;
    std::memcpy(kb + dst[i] * bytes, kb + src[i] * bytes, bytes);
    std::memcpy(vb + dst[i] * bytes, vb + src[i] * bytes, bytes);
    pool.pos[dst[i]] = pool.pos[src[i]];
    if (pool.mass) pool.mass[dst[i]] = pool.mass[src[i]];
  }
}

void CpuBackend::attention(const Tensor& q, std::span<const AttentionSeq> seqs, const AttentionParams& p,
                           const KVPoolView& pool, Tensor& out) {
  require_f32(q, "attention: q must be F32");
  require_f32(out, "attention: output must be F32");
  require(p.n_kv_heads > 0 && p.n_heads % p.n_kv_heads == 0 && p.head_dim == pool.head_dim &&
              q.cols == int64_t(p.n_heads) * p.head_dim && out.cols == q.cols && out.rows == q.rows,
          "attention: shape mismatch");
  struct Unit {
    int32_t seq, kvh;
    int64_t r0, r1;
  };
  std::vector<Unit> units;
  for (size_t si = 0; si < seqs.size(); ++si) {
    const AttentionSeq& s = seqs[si];
    require(int(s.head_blocks.size()) == p.n_kv_heads && int(s.head_entries.size()) == p.n_kv_heads &&
                s.q_begin >= 0 && s.q_begin + s.n_q <= q.rows,
            "attention: sequence does not match the heads or the query rows");
    for (int h = 0; h < p.n_kv_heads; ++h) {
      require(s.head_entries[h] >= 0 &&
                  int64_t(s.head_entries[h]) <= int64_t(s.head_blocks[h].size()) * pool.block_tokens,
              "attention: more entries than blocks");
      for (int32_t b : s.head_blocks[h]) require(b >= 0 && b < pool.n_blocks, "attention: block id out of range");
      for (int64_t r = 0; r < s.n_q; r += kAttnRows)
        units.push_back({int32_t(si), h, r, std::min(s.n_q, r + kAttnRows)});
    }
  }
  const bool simd = simd_ && p.head_dim % 8 == 0;
  const int group = p.n_heads / p.n_kv_heads;
  pool_.parallel_for(int64_t(units.size()), [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      const Unit& u = units[i];
      if (simd)
        cpu::avx2::attention_part(q, seqs[u.seq], u.r0, u.r1, u.kvh, p, pool, out);
      else
        cpu::ref::attention_part(q, seqs[u.seq], u.r0, u.r1, u.kvh * group, (u.kvh + 1) * group, p, pool, out);
    }
  });
}

std::unique_ptr<Backend> make_cpu_backend(const CpuBackendOptions& opts) {
  return std::make_unique<CpuBackend>(opts);
}

}  // namespace batchmax

namespace batchmax {

void CpuBackend::attention_scores(const Tensor& q, std::span<const AttentionSeq> seqs,
                                  const AttentionParams& p, const KVPoolView& pool,
                                  std::span<float* const> out, int64_t out_stride) {
  require_f32(q, "attention_scores: q must be F32");
  require(out.size() == seqs.size(), "attention_scores: one output per sequence");
  for (const AttentionSeq& s : seqs)
    for (int h = 0; h < p.n_kv_heads; ++h)
      require(s.head_entries[h] <= out_stride, "attention_scores: output rows too short");
  // One unit per (sequence, KV head): each writes its own output row.
  const int64_t n_units = int64_t(seqs.size()) * p.n_kv_heads;
  pool_.parallel_for(n_units, [&](int64_t b, int64_t e) {
    for (int64_t u = b; u < e; ++u) {
      const size_t si = size_t(u / p.n_kv_heads);
      const int g = int(u % p.n_kv_heads);
      cpu::attention_scores_seq(q, seqs[si], p, pool, g, g + 1, out[si], out_stride);
    }
  });
}

void CpuBackend::key_norms(const KVPoolView& pool, std::span<const int32_t> blocks,
                           int64_t n_entries, float* out) {
  require(n_entries <= int64_t(blocks.size()) * pool.block_tokens, "key_norms: more entries than blocks");
  cpu::key_norms(pool, blocks, n_entries, out);
}

void CpuBackend::argmax_rows(const Tensor& x, int32_t* out) {
  require_f32(x, "argmax_rows: input must be F32");
  for (int64_t r = 0; r < x.rows; ++r)
    out[r] = argmax_row({static_cast<const float*>(x.row(r)), size_t(x.cols)});
}

void CpuBackend::sample_rows(const Tensor& x, std::span<const float> inv_temperature,
                             std::span<const double> uniform, int32_t* out) {
  require_f32(x, "sample_rows: input must be F32");
  require(int64_t(inv_temperature.size()) == x.rows && int64_t(uniform.size()) == x.rows,
          "sample_rows: one temperature and one uniform per row");
  for (int64_t r = 0; r < x.rows; ++r)
    out[r] = pick_row({static_cast<const float*>(x.row(r)), size_t(x.cols)},
                      inv_temperature[size_t(r)], uniform[size_t(r)]);
}

void CpuBackend::top_candidates(const Tensor& x, int k, std::span<const float> inv_temperature,
                                float* values, int32_t* ids, double* whole_mass) {
  require_f32(x, "top_candidates: input must be F32");
  require(int64_t(inv_temperature.size()) == x.rows, "top_candidates: one temperature per row");
  require(k >= 1 && k <= kMaxTopCandidates && k <= x.cols,
          "top_candidates: k must be in [1, min(cols, kMaxTopCandidates)]");
  std::vector<std::pair<float, int32_t>> cand;
  for (int64_t r = 0; r < x.rows; ++r) {
    const float* v = static_cast<const float*>(x.row(r));
    cand.clear();
    for (int64_t i = 0; i < x.cols; ++i) cand.push_back({v[i], int32_t(i)});
    std::partial_sort(cand.begin(), cand.begin() + k, cand.end(), candidate_before);
    for (int j = 0; j < k; ++j) {
      values[r * k + j] = cand[size_t(j)].first;
      ids[r * k + j] = cand[size_t(j)].second;
    }
    const float inv_t = inv_temperature[size_t(r)], top = cand[0].first;
    double mass = 0;
    if (inv_t > 0)
      for (int64_t i = 0; i < x.cols; ++i) mass += std::exp(double((v[i] - top) * inv_t));
    whole_mass[r] = mass;
  }
}

void CpuBackend::sorted_prefix(const Tensor& x, std::span<const int32_t> rows, int64_t n,
                               float* values, int32_t* ids) {
  require_f32(x, "sorted_prefix: input must be F32");
  require(n >= 1 && n <= x.cols, "sorted_prefix: n must be in [1, cols]");
  std::vector<std::pair<float, int32_t>> cand;
  for (size_t j = 0; j < rows.size(); ++j) {
    require(rows[j] >= 0 && rows[j] < x.rows, "sorted_prefix: row out of range");
    const float* v = static_cast<const float*>(x.row(rows[j]));
    cand.clear();
    for (int64_t i = 0; i < x.cols; ++i) cand.push_back({v[i], int32_t(i)});
    std::partial_sort(cand.begin(), cand.begin() + n, cand.end(), candidate_before);
    for (int64_t i = 0; i < n; ++i) {
      values[int64_t(j) * n + i] = cand[size_t(i)].first;
      ids[int64_t(j) * n + i] = cand[size_t(i)].second;
    }
  }
}

void CpuBackend::draw_sorted_rows(const Tensor& x, std::span<const int32_t> rows,
                                  std::span<const SortedDraw> draws, int32_t* out) {
  require_f32(x, "draw_sorted_rows: input must be F32");
  require(draws.size() == rows.size(), "draw_sorted_rows: one draw per row");
  std::vector<std::pair<float, int32_t>> cand;
  std::vector<double> prob;
  for (size_t j = 0; j < rows.size(); ++j) {
    require(rows[j] >= 0 && rows[j] < x.rows, "draw_sorted_rows: row out of range");
    const float* v = static_cast<const float*>(x.row(rows[j]));
    cand.clear();
    for (int64_t i = 0; i < x.cols; ++i) cand.push_back({v[i], int32_t(i)});
    std::sort(cand.begin(), cand.end(), candidate_before);
    const SortedDraw& d = draws[j];
    out[j] = draw_sorted(cand, d.inv_temperature, d.whole_mass, d.top_p, d.u, prob);
  }
}

void CpuBackend::kv_positions(const KVPoolView& pool, std::span<const int32_t> blocks,
                              int64_t n_entries, int32_t* out) {
  require(n_entries <= int64_t(blocks.size()) * pool.block_tokens, "kv_positions: more entries than blocks");
  for (int64_t e = 0; e < n_entries; ++e) {
    const int32_t b = blocks[size_t(e / pool.block_tokens)];
    require(b >= 0 && b < pool.n_blocks, "kv_positions: block id out of range");
    out[e] = pool.pos[int64_t(b) * pool.block_tokens + e % pool.block_tokens];
  }
}

void CpuBackend::attention_scores_to(const Tensor& q, std::span<const AttentionSeq> seqs,
                                     const AttentionParams& p, const KVPoolView& pool, Tensor& out) {
  require_f32(out, "attention_scores_to: output must be F32");
  require(out.rows >= int64_t(seqs.size()) * p.n_kv_heads, "attention_scores_to: too few output rows");
  require(out.row_stride == size_t(out.cols) * 4, "attention_scores_to: output must be contiguous");
  for (int64_t r = 0; r < int64_t(seqs.size()) * p.n_kv_heads; ++r)
    std::fill(out.row_f32(r), out.row_f32(r) + out.cols, 0.0f);
  std::vector<float*> rows(seqs.size());
  for (size_t i = 0; i < seqs.size(); ++i) rows[i] = out.row_f32(int64_t(i) * p.n_kv_heads);
  attention_scores(q, seqs, p, pool, rows, out.cols);
}

void CpuBackend::evict(std::span<const EvictTask> tasks, const Tensor* mass, KVPoolView& pool) {
  static const char* const names[] = {"tova", "snapkv", "window", "knorm", "random", "h2o"};
  std::vector<int32_t> pos, src, dst;
  std::vector<float> attn, norms, scores, acc;
  for (const EvictTask& t : tasks) {
    const int64_t n = t.n_entries;
    require(n <= int64_t(t.blocks.size()) * pool.block_tokens, "evict: more entries than blocks");
    require(int(t.score) >= 0 && int(t.score) <= 5, "evict: unknown score");
    require(t.score != EvictScore::Accumulated || pool.mass, "evict: h2o needs a pool with slot mass");
    if (n <= t.keep) continue;
    EvictionParams ep;
    ep.budget = t.keep;
    ep.sinks = t.sinks;
    ep.window = t.window;
    ep.pool_kernel = t.pool_kernel;
    ep.seed = t.seed;
    std::unique_ptr<EvictionPolicy> policy = make_policy(names[int(t.score)], ep);
    pos.resize(n);
    kv_positions(pool, t.blocks, n, pos.data());
    attn.assign(size_t(n), 0.0f);
    if (t.score == EvictScore::Mass || t.score == EvictScore::PooledMass) {
      require(mass && mass->type == GgmlType::F32 && t.mass_row >= 0 && t.mass_row < mass->rows &&
                  n <= mass->cols,
              "evict: the policy needs a mass row");
      std::copy(mass->row_f32(t.mass_row), mass->row_f32(t.mass_row) + n, attn.begin());
    }
    norms.assign(size_t(n), 0.0f);
    if (t.score == EvictScore::NegKeyNorm) key_norms(pool, t.blocks, n, norms.data());
    acc.assign(size_t(n), 0.0f);
    if (t.score == EvictScore::Accumulated)
      for (int64_t e = 0; e < n; ++e)
        acc[size_t(e)] = pool.mass[int64_t(t.blocks[size_t(e / pool.block_tokens)]) * pool.block_tokens +
                                   e % pool.block_tokens];
    scores.resize(size_t(n));
    policy->score(HeadEntries{pos, attn, norms, acc}, scores);
    const std::vector<int32_t> keep = select_keep(pos, scores, ep);
    src.clear();
    dst.clear();
    const int bt = pool.block_tokens;
    for (size_t j = 0; j < keep.size(); ++j)
      if (keep[j] != int32_t(j)) {
        src.push_back(t.blocks[keep[j] / bt] * bt + keep[j] % bt);
        dst.push_back(t.blocks[j / bt] * bt + int32_t(j % bt));
      }
    kv_move(src, dst, pool);  // in order: a destination never precedes its source
  }
}

void CpuBackend::accumulate_mass(const Tensor& q, std::span<const AttentionSeq> seqs,
                                 const AttentionParams& p, KVPoolView& pool) {
  require(pool.mass != nullptr, "accumulate_mass: the pool has no slot mass");
  int64_t stride = 1;
  for (const AttentionSeq& a : seqs)
    for (int32_t e : a.head_entries) stride = std::max<int64_t>(stride, e);
  std::vector<float> rows(seqs.size() * size_t(p.n_kv_heads) * size_t(stride), 0.0f);
  std::vector<float*> out(seqs.size());
  for (size_t i = 0; i < seqs.size(); ++i) out[i] = rows.data() + i * size_t(p.n_kv_heads) * stride;
  attention_scores(q, seqs, p, pool, out, stride);
  const int bt = pool.block_tokens;
  for (size_t i = 0; i < seqs.size(); ++i)
    for (int h = 0; h < p.n_kv_heads; ++h) {
      const float* m = out[i] + size_t(h) * stride;
      const auto& blocks = seqs[i].head_blocks[size_t(h)];
      for (int32_t e = 0; e < seqs[i].head_entries[size_t(h)]; ++e)
        pool.mass[int64_t(blocks[size_t(e / bt)]) * bt + e % bt] += m[e];
    }
}

}  // namespace batchmax
