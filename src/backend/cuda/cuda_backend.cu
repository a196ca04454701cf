// CudaBackend: the Backend interface on one GPU. Activations are BF16; weights are
// expanded to BF16 on the GPU at load (1-row vectors to F32); all work goes to one
// stream, so ops are ordered without host waits except download() and synchronize().
#include "backend/cuda/cuda_backend.h"
#include "backend/backend_registry.h"
#include "backend/cuda/cuda_backend_impl.cuh"

namespace batchmax {
namespace cuda {

void throw_cuda(cudaError_t e, const char* what, const char* file, int line) {
  throw Error(std::string("CUDA error ") + cudaGetErrorName(e) + " (" + cudaGetErrorString(e) +
              ") in " + what + " at " + file + ":" + std::to_string(line));
}

CudaBackend::CudaBackend(const CudaBackendOptions& o) : device_(o.device) {
  BMX_CUDA(cudaSetDevice(device_));
  BMX_CUDA(cudaFree(nullptr));  // creates the context, so the baseline includes it
  baseline_used_ = device_used();
  BMX_CUDA(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
  gemm_ = std::make_unique<Gemm>(o.gemm_workspace_bytes, o.small_m_max_rows);
  gate_up_ = std::make_unique<GateUpSwiglu>();
  replay_ = std::make_unique<ReplayGraphs>(graphs_enabled());
  staging_ = std::make_unique<Staging>();
  cudaDeviceProp prop{};
  BMX_CUDA(cudaGetDeviceProperties(&prop, device_));
  l2_bytes_ = size_t(prop.l2CacheSize);
  name_ = std::string("cuda:") + std::to_string(device_) + " (" + prop.name + ")";
  weight_stage_.name = "weight stage";
  move_scratch_.name = "kv_move scratch";
  scores_out_.name = "scores out";
  attn_scratch_.name = "attention split-KV";
  small_out_.name = "small out";
  rope_table_.name = "rope table";
  lse_.name = "attention lse";
  evict_keys_.name = "evict keys";
  scores_part_.name = "scores partials";
  cudnn_scratch_.name = "cuDNN attention";
  sort_scratch_.name = "row sort";
#if defined(BATCHMAX_HAVE_CUDNN)
  std::string why;
  // cuDNN's chain (gather, prefill attention, lse) is a step's longest path through the
  // attention; our decode-row kernel beside it fills the SMs it leaves. At the default
  // priority the kernel launched first took every SM and cuDNN's chain waited for its
  // tail. BATCHMAX_CUDA_CUDNN_PRIORITY=0 keeps the default priority (A/B).
  int least = 0, greatest = 0;
  BMX_CUDA(cudaDeviceGetStreamPriorityRange(&least, &greatest));
  const char* prio = std::getenv("BATCHMAX_CUDA_CUDNN_PRIORITY");
  BMX_CUDA(cudaStreamCreateWithPriority(&cudnn_stream_, cudaStreamNonBlocking,
                                        prio && *prio == '0' ? least : greatest));
  BMX_CUDA(cudaEventCreateWithFlags(&cudnn_fork_, cudaEventDisableTiming));
  BMX_CUDA(cudaEventCreateWithFlags(&cudnn_join_, cudaEventDisableTiming));
  cudnn_ = cuda::CudnnAttention::open(cudnn_stream_, why);
  name_ += cudnn_ ? ", prefill attention: " + cudnn_->describe()
                  : ", prefill attention: own kernel (" + why + ")";
  // Off by default (cudnn_swiglu.h says why); BATCHMAX_CUDA_CUDNN_SWIGLU=1 or =force.
  std::string why_swiglu;
  cudnn_swiglu_ = cuda::CudnnSwiglu::open(stream_, why_swiglu);
  if (cudnn_swiglu_) name_ += ", MLP gate: cuDNN fused";
  if (const char* e = std::getenv("BATCHMAX_CUDA_CUDNN_SWIGLU_ROWS"))
    cudnn_swiglu_rows_ = std::max<int64_t>(1, std::atoll(e));
#else
  name_ += ", prefill attention: own kernel (built without the cuDNN frontend)";
#endif
  if (const char* e = std::getenv("BATCHMAX_CUDA_CUDNN_MIN_ROWS"))
    cudnn_min_rows_ = std::max(1, std::atoi(e));
  // BATCHMAX_CUDA_FUSE_ROPE_STORE=0: rope and kv_store as two launches (A/B).
  if (const char* e = std::getenv("BATCHMAX_CUDA_FUSE_ROPE_STORE")) fuse_rope_store_ = *e != '0';
  // BATCHMAX_CUDA_RESIDUAL_GEMM_ROWS=n: matmul_add_rms_norm's threshold (0: never; A/B).
  if (const char* e = std::getenv("BATCHMAX_CUDA_RESIDUAL_GEMM_ROWS")) residual_gemm_rows_ = std::atoll(e);
}

CudaBackend::~CudaBackend() {
  cudaStreamSynchronize(stream_);
  for (void* p : owned_) cudaFree(p);
  for (auto& r : ropes_) cudaFree(r.dev);
  replay_.reset();
  if (cudnn_stream_) cudaStreamSynchronize(cudnn_stream_);
  cudnn_.reset();
  cudnn_swiglu_.reset();  // it synchronises stream_ on its way out
  if (cudnn_stream_) cudaStreamDestroy(cudnn_stream_);
  if (cudnn_fork_) cudaEventDestroy(cudnn_fork_);
  if (cudnn_join_) cudaEventDestroy(cudnn_join_);
  gemm_.reset();
  staging_.reset();
  cudaStreamDestroy(stream_);
}

Tensor CudaBackend::alloc(GgmlType type, int64_t rows, int64_t cols) {
  if (!is_act_type(type)) throw Error("cuda alloc: only F32 and BF16 tensors, not " + type_name(type));
  if (rows < 0 || cols < 0) throw Error("cuda alloc: negative shape");
  Tensor t;
  t.type = type;
  t.rows = rows;
  t.cols = cols;
  t.row_stride = size_t(cols) * elem_bytes(type);
  t.data = device_alloc(std::max<size_t>(t.bytes(), 16));
  return t;
}

void CudaBackend::free(Tensor& t) {
  if (!t.data) return;
  auto it = owned_.find(t.data);
  if (it == owned_.end()) throw Error("cuda free: tensor was not allocated by this backend");
  BMX_CUDA(cudaFree(t.data));
  owned_.erase(it);
  t = Tensor{};
}

Tensor CudaBackend::load_weight(GgmlType type, const void* data, int64_t rows, int64_t cols) {
  const TypeTraits& tt = type_traits(type);
  if (!tt.dequantizable) throw Error("cuda load_weight: type " + type_name(type) + " is not supported");
  const size_t rb = row_bytes(type, cols);
  // Vectors (norm weights, biases) stay F32; matrices become BF16 for cuBLASLt.
  Tensor out = alloc(rows == 1 ? GgmlType::F32 : GgmlType::BF16, rows, cols);
  // Raw bytes go up in chunks of ~64 MiB (whole rows) through one staging buffer.
  const int64_t chunk = std::max<int64_t>(1, int64_t((size_t(64) << 20) / std::max<size_t>(rb, 1)));
  void* stage = weight_stage_.get(size_t(std::min(chunk, rows)) * rb);
  for (int64_t r0 = 0; r0 < rows; r0 += chunk) {
    const int64_t n = std::min(chunk, rows - r0);
    BMX_CUDA(cudaMemcpyAsync(stage, static_cast<const char*>(data) + size_t(r0) * rb,
                             size_t(n) * rb, cudaMemcpyHostToDevice, stream_));
    cuda::launch_dequant(type, stage, n, cols, out, r0, stream_);
  }
  // The source may be unmapped after return; pageable copies are staged by then, but
  // wait anyway so load errors surface here.
  BMX_CUDA(cudaStreamSynchronize(stream_));
  return out;
}

void CudaBackend::download(const Tensor& src, void* host) {
  {
    BMX_OP_TIME("download");
    BMX_CUDA(cudaMemcpyAsync(host, src.data, src.bytes(), cudaMemcpyDeviceToHost, stream_));
  }
  BMX_CUDA(cudaStreamSynchronize(stream_));
  op_timer_.drain();
}

void CudaBackend::embed(const Tensor& table, std::span<const int32_t> ids, Tensor& out) {
  BMX_OP_TIME("embed");
  if (int64_t(ids.size()) != out.rows) throw Error("cuda embed: ids and output rows differ");
  check_ids(ids, table.rows, "embed: token id");
  if (ids.empty()) return;
  cuda::launch_embed(table, put_ints({ids}), out, stream_);
}

void CudaBackend::matmul(const Tensor& x, const Tensor& w, const Tensor* bias, Tensor& out) {
  BMX_OP_TIME(prof::ops_enabled() ? OpTimer::intern("matmul " + std::to_string(w.rows) + "x" +
                                                     std::to_string(w.cols))
                                  : "");
  gemm_->run(x, w, out, stream_);
  if (bias) cuda::launch_add_bias(out, *bias, stream_);
}

// From residual_gemm_rows_ rows the product adds into the residual (cuBLASLt's beta = 1,
// one rounding) and a plain norm follows: that pass reads x and writes out, where add + norm
// read x and the product and wrote both (2048 x 4096 bf16: 34 MB instead of 67 MB a call),
// while the product, compute-bound at these sizes, reads x in its epilogue. Fewer rows
// (decode steps: products bound by their weights' reads, and few-row kernels of our own)
// keep the product and the fused add + norm.
void CudaBackend::matmul_add_rms_norm(const Tensor& a, const Tensor& w, Tensor& x,
                                      const Tensor& norm_w, float eps, Tensor& out) {
  if (residual_gemm_rows_ <= 0 || a.rows < residual_gemm_rows_ || x.type != GgmlType::BF16 ||
      out.type != x.type || a.rows != x.rows || w.rows != x.cols)
    return Backend::matmul_add_rms_norm(a, w, x, norm_w, eps, out);
  {
    BMX_OP_TIME(prof::ops_enabled() ? OpTimer::intern("matmul+residual " + std::to_string(w.rows) +
                                                       "x" + std::to_string(w.cols))
                                    : "");
    gemm_->run(a, w, x, stream_, true);
  }
  BMX_OP_TIME("rms_norm");
  cuda::launch_rms_norm(x, norm_w, eps, out, stream_);
}

bool CudaBackend::fused_gate_swiglu(const Tensor& x, const Tensor& w_gate_up, Tensor& gate_up,
                                    const Tensor& gate, const Tensor& up, Tensor& out) {
  const int64_t ff = w_gate_up.rows / 2;
  if (w_gate_up.rows % 2 != 0 || up.cols != ff || up.data != static_cast<const char*>(gate_up.data) + ff * 2)
    return false;
  const Tensor w_gate = w_gate_up.slice_rows(0, ff), w_up = w_gate_up.slice_rows(ff, ff);
  Tensor up_out = up;
  BMX_OP_TIME("gate_up_swiglu cudnn");
  return cudnn_swiglu_->run(
      x, w_gate, up, out, [&] { gemm_->run(x, w_up, up_out, stream_); },
      [&] { Backend::gate_up_swiglu(x, w_gate_up, gate_up, gate, up, out); });
}

void CudaBackend::rope(Tensor& x, int n_heads, std::span<const int32_t> pos, const RopeParams& p) {
  if (int64_t(pos.size()) != x.rows) throw Error("cuda rope: positions and rows differ");
  if (int(p.inv_freq.size()) != p.rotary_dim / 2) throw Error("cuda rope: inv_freq size");
  BMX_OP_TIME("rope");
  if (pos.empty()) return;
  cuda::launch_rope(x, n_heads, rope_table(pos, p), p, stream_);
}

void CudaBackend::gather_rows(const Tensor& x, std::span<const int32_t> rows, Tensor& out) {
  if (int64_t(rows.size()) != out.rows) throw Error("cuda gather_rows: rows and output differ");
  check_ids(rows, x.rows, "gather_rows: row");
  BMX_OP_TIME("gather_rows");
  if (rows.empty()) return;
  cuda::launch_gather_rows(x, put_ints({rows}), out, stream_);
}

void CudaBackend::copy_rows(const Tensor& src, Tensor& dst) {
  if (src.type != dst.type || src.rows != dst.rows || src.cols != dst.cols)
    throw Error("cuda copy_rows: shapes or types differ");
  if (src.rows == 0) return;
  BMX_OP_TIME("copy_rows");
  BMX_CUDA(cudaMemcpy2DAsync(dst.data, dst.row_stride, src.data, src.row_stride,
                             row_bytes(src.type, src.cols), size_t(src.rows),
                             cudaMemcpyDeviceToDevice, stream_));
}

KVPoolView CudaBackend::alloc_kv_pool(GgmlType type, int64_t n_blocks, int block_tokens,
                                      int head_dim, bool slot_mass) {
  if (!is_act_type(type)) throw Error("cuda kv pool: only BF16 and F32 entries, not " + type_name(type));
  KVPoolView p;
  p.type = type;
  p.block_tokens = block_tokens;
  p.head_dim = head_dim;
  p.n_blocks = n_blocks;
  const size_t slots = size_t(n_blocks) * block_tokens;
  p.k = device_alloc(std::max<size_t>(slots * head_dim * elem_bytes(type), 16));
  p.v = device_alloc(std::max<size_t>(slots * head_dim * elem_bytes(type), 16));
  p.pos = static_cast<int32_t*>(device_alloc(std::max<size_t>(slots * 4, 16)));
  // Zeros in never-written slots: cuDNN's paged reads take whole blocks, and a masked
  // key's P of 0 times a NaN value would still be NaN. (Once, ~3 TB/s.)
  BMX_CUDA(cudaMemsetAsync(p.k, 0, slots * head_dim * elem_bytes(type), stream_));
  BMX_CUDA(cudaMemsetAsync(p.v, 0, slots * head_dim * elem_bytes(type), stream_));
  // As on the CPU: unused slots hold INT32_MAX, a position no query sees.
  cuda::launch_fill_i32(p.pos, int64_t(slots), INT32_MAX, stream_);
  if (slot_mass) {
    p.mass = static_cast<float*>(device_alloc(std::max<size_t>(slots * 4, 16)));
    BMX_CUDA(cudaMemsetAsync(p.mass, 0, slots * 4, stream_));
  }
  // GEMM tuning flushes L2 by reading the pool's keys (no memory of its own).
  const size_t k_bytes = slots * head_dim * elem_bytes(type);
  if (k_bytes >= 2 * l2_bytes_ && !flush_pool_) {
    gemm_->set_l2_flush(p.k, std::min(k_bytes, 4 * l2_bytes_) / 16 * 16);
    flush_pool_ = p.k;
  }
  return p;
}

void CudaBackend::free_kv_pool(KVPoolView& pool) {
  if (pool.k && pool.k == flush_pool_) {
    gemm_->set_l2_flush(nullptr, 0);
    flush_pool_ = nullptr;
  }
  for (void* p : {pool.k, pool.v, static_cast<void*>(pool.pos), static_cast<void*>(pool.mass),
                  static_cast<void*>(pool.tables)}) {
    if (!p) continue;
    owned_.erase(p);
    BMX_CUDA(cudaFree(p));
  }
  pool = KVPoolView{};
}

bool CudaBackend::keeps_block_tables() const {
  static const bool on = [] {
    const char* e = std::getenv("BATCHMAX_CUDA_BLOCK_TABLES");
    return !(e && *e == '0');
  }();
  return on;
}

void CudaBackend::alloc_block_tables(KVPoolView& pool, int64_t n_ints) {
  if (pool.tables) throw Error("cuda block tables: the pool has them already");
  if (n_ints <= 0 || n_ints > INT32_MAX) throw Error("cuda block tables: bad size");
  pool.tables = static_cast<int32_t*>(device_alloc(size_t(n_ints) * 4));
  pool.table_ints = n_ints;
  cuda::launch_fill_i32(pool.tables, n_ints, -1, stream_);  // never read before written
}

void CudaBackend::write_block_tables(std::span<const int32_t> pairs, KVPoolView& pool) {
  if (pairs.size() % 2) throw Error("cuda write_block_tables: (place, id) pairs expected");
  if (!pool.tables) throw Error("cuda write_block_tables: the pool has no block tables");
  const int64_t n = int64_t(pairs.size() / 2);
  if (n == 0) return;
  if (n > INT32_MAX) throw Error("cuda write_block_tables: too many writes");
  for (int64_t i = 0; i < n; ++i)
    if (pairs[2 * i] < 0 || pairs[2 * i] >= pool.table_ints || pairs[2 * i + 1] < 0 ||
        pairs[2 * i + 1] >= pool.n_blocks)
      throw Error("cuda write_block_tables: place or block id out of range");
  BMX_OP_TIME("write_block_tables");
  cuda::launch_write_tables(put_ints({pairs}), int(n), pool.tables, stream_);
}

void CudaBackend::kv_store(const Tensor& k, const Tensor& v, int n_kv_heads,
                           std::span<const int32_t> slots, std::span<const int32_t> pos,
                           KVPoolView& pool) {
  const int64_t n = int64_t(pos.size());
  if (int64_t(slots.size()) != n * n_kv_heads) throw Error("cuda kv_store: slots size");
  BMX_OP_TIME("kv_store");
  for (int32_t sl : slots) check_kv_slot(pool, sl, "cuda kv_store");  // -1: padding, skipped
  if (n == 0) return;
  const int32_t* d = put_ints({slots, pos});
  cuda::launch_kv_store(k, v, n_kv_heads, d, d + slots.size(), n, pool, stream_);
}

void CudaBackend::rope_kv_store(Tensor& q, int n_q_heads, Tensor& k, const Tensor& v,
                                int n_kv_heads, std::span<const int32_t> slots,
                                std::span<const int32_t> pos, const RopeParams& p,
                                KVPoolView& pool) {
  if (!fuse_rope_store_ || !cuda::rope_kv_store_fusable(q, n_q_heads, k, v, n_kv_heads, p, pool))
    return Backend::rope_kv_store(q, n_q_heads, k, v, n_kv_heads, slots, pos, p, pool);
  const int64_t n = int64_t(pos.size());
  if (k.rows != n) throw Error("cuda rope_kv_store: positions and rows differ");
  if (int64_t(slots.size()) != n * n_kv_heads) throw Error("cuda rope_kv_store: slots size");
  if (int(p.inv_freq.size()) != p.rotary_dim / 2) throw Error("cuda rope_kv_store: inv_freq size");
  for (int32_t sl : slots) check_kv_slot(pool, sl, "cuda rope_kv_store");  // -1: padding, skipped
  if (n == 0) return;
  const float2* table = rope_table(pos, p);
  BMX_OP_TIME("rope_kv_store");
  const int32_t* d = put_ints({slots, pos});
  cuda::launch_rope_kv_store(q, n_q_heads, k, v, n_kv_heads, table, p, d, d + slots.size(), pool,
                             stream_);
}

void CudaBackend::kv_move(std::span<const int32_t> src, std::span<const int32_t> dst,
                          KVPoolView& pool) {
  if (src.size() != dst.size()) throw Error("cuda kv_move: src and dst sizes differ");
  check_ids(src, n_slots(pool), "kv_move: source slot");
  check_ids(dst, n_slots(pool), "kv_move: destination slot");
  BMX_OP_TIME("kv_move");
  if (src.empty()) return;
  // In launches of at most kMovesPerLaunch moves, through a scratch reserved with the
  // step's (reserve_step_scratch): a host compaction of every layer of a sequence can
  // move ~100k entries, whose scratch (~70 MB) would land outside the memory plan
  // (seen: a host-eviction run 50 MB over its budget).
  // Compaction moves each entry towards the front at most once, so launches in order
  // give what one launch would.
  for (size_t i0 = 0; i0 < src.size(); i0 += kMovesPerLaunch) {
    const size_t n = std::min(kMovesPerLaunch, src.size() - i0);
    const int32_t* d = put_ints({src.subspan(i0, n), dst.subspan(i0, n)});
    void* scratch = move_scratch_.get(cuda::kv_move_scratch_bytes(pool, int64_t(n)));
    cuda::launch_kv_move(d, d + n, int64_t(n), scratch, pool, stream_);
  }
}

void CudaBackend::run_replayable(const ReplayKey& key, const std::function<void()>& ops) {
  // Profiles time each op with events, which a graph would not replay.
  if (key.rows > kMaxReplayRows || prof::enabled() || prof::ops_enabled()) {
    ops();
    return;
  }
  // Tag 0: the replayed ops read only weights and the model's workspace (whose generation
  // is in the key); the rope, whose table is the backend's own, runs with the KV store.
  replay_->run(key, 0, ops, stream_);
}

void CudaBackend::reserve_step_scratch(int64_t max_rows, const AttentionParams& p) {
  if (cuda::flash_attention_supported(GgmlType::BF16, GgmlType::BF16, p.head_dim))
    attn_scratch_.get(cuda::flash_decode_scratch_bound(p.head_dim, max_rows * p.n_kv_heads));
  scores_part_.get(cuda::attention_scores_scratch_bytes());
  evict_keys_.get(size_t(cuda::kEvictKeysPerLaunch) * sizeof(uint32_t));
  KVPoolView f32_pool;  // the largest entries a pool of this head size has
  f32_pool.type = GgmlType::F32;
  f32_pool.head_dim = p.head_dim;
  move_scratch_.get(cuda::kv_move_scratch_bytes(f32_pool, int64_t(kMovesPerLaunch)));
  small_out_.get(size_t(1) << 20);
  for (int set = 0; set < 2; ++set) kept_picks_.device(set, std::max<int64_t>(max_rows, 1), stream_);
  rope_table_.get(size_t(std::max<int64_t>(max_rows, 1)) * std::max(p.head_dim / 2, 1) * sizeof(float2));
  lse_.get(size_t(std::max<int64_t>(max_rows, 1)) * std::max(p.n_heads, 1) * sizeof(float));
  if (cudnn_ && cudnn_min_rows_ > 0) {
    const int64_t entries = (max_rows / cudnn_min_rows_ + 1) * p.n_kv_heads;
    cudnn_scratch_.get(cudnn_->scratch_bound(max_rows, entries, p.n_heads, p.head_dim));
  }
}

void* CudaBackend::device_alloc(size_t n) {
  if (memlog()) std::fprintf(stderr, "[cuda mem] alloc %zu bytes\n", n);
  void* p = nullptr;
  BMX_CUDA(cudaMalloc(&p, n));
  owned_.insert(p);
  allocated_bytes();  // keeps the peak current
  return p;
}

void CudaBackend::check_ids(std::span<const int32_t> ids, int64_t n, const char* what) {
  for (int32_t i : ids)
    if (i < 0 || i >= n)
      throw Error(std::string("cuda ") + what + " " + std::to_string(i) + " is out of range [0, " +
                  std::to_string(n) + ")");
}

const int32_t* CudaBackend::put_ints(std::initializer_list<std::span<const int32_t>> parts) {
  host_ints_.clear();
  for (auto s : parts) host_ints_.insert(host_ints_.end(), s.begin(), s.end());
  return static_cast<const int32_t*>(
      staging_->put(host_ints_.data(), host_ints_.size() * sizeof(int32_t), stream_));
}

bool CudaBackend::scores_two_pass() {
  static const bool on = [] {
    const char* e = std::getenv("BATCHMAX_CUDA_SCORES_TWO_PASS");
    return e && *e && *e != '0';
  }();
  return on;
}

const float2* CudaBackend::rope_table(std::span<const int32_t> pos, const RopeParams& p) {
  const float* inv = inv_freq(p);
  const int half = p.rotary_dim / 2;
  const bool same = inv == rope_inv_ && half == rope_half_ && pos.size() == rope_pos_.size() &&
                    std::equal(pos.begin(), pos.end(), rope_pos_.begin());
  float2* table = static_cast<float2*>(rope_table_.get(std::max<size_t>(pos.size() * half, 1) * sizeof(float2)));
  if (!same || table != rope_table_at_) {
    if (replay_->capturing())
      throw NotReplayable("rope positions differ from the step's previous rope");
    cuda::launch_rope_table(put_ints({pos}), int64_t(pos.size()), inv, half, table, stream_);
    rope_pos_.assign(pos.begin(), pos.end());
    rope_inv_ = inv;
    rope_half_ = half;
    rope_table_at_ = table;
  }
  return table;
}

const float* CudaBackend::inv_freq(const RopeParams& p) {
  for (auto& r : ropes_)
    if (r.host == p.inv_freq) return r.dev;
  RopeEntry e{p.inv_freq, nullptr};
  BMX_CUDA(cudaMalloc(reinterpret_cast<void**>(&e.dev), std::max<size_t>(p.inv_freq.size(), 1) * 4));
  BMX_CUDA(cudaMemcpyAsync(e.dev, p.inv_freq.data(), p.inv_freq.size() * 4,
                           cudaMemcpyHostToDevice, stream_));
  BMX_CUDA(cudaStreamSynchronize(stream_));  // the host vector may change after return
  ropes_.push_back(std::move(e));
  return ropes_.back().dev;
}

cuda::AttentionLaunch CudaBackend::pack_attention(const Tensor& q,
                                                  std::span<const AttentionSeq> seqs,
                                                  const AttentionParams& p, const KVPoolView& pool,
                                                  int small, int big, int64_t small_max,
                                                  const std::vector<char>* skip) {
  const AttentionWorkCounts c =
      packer_.pack({q.rows, q.cols, pool.n_blocks, pool.block_tokens, pool.head_dim,
                    pool.tables ? pool.table_ints : 0}, seqs, p,
                   small, big, small_max, skip);
  return {nullptr, c.n_small, c.n_big, c.n_seqs, c.seq_at, c.max_small_entries, {}};
}

}  // namespace cuda

std::unique_ptr<Backend> make_cuda_backend(const CudaBackendOptions& opts) {
  int n = cuda_device_count();
  if (n == 0) throw Error("no CUDA device is available");
  if (opts.device < 0 || opts.device >= n)
    throw Error("CUDA device " + std::to_string(opts.device) + " does not exist (" +
                std::to_string(n) + " found)");
  return std::make_unique<cuda::CudaBackend>(opts);
}

int cuda_device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();  // clear the sticky-free error so later calls start clean
    return 0;
  }
  return n;
}

}  // namespace batchmax

namespace batchmax {

void register_cuda_backend() {
  register_backend("cuda", [](const BackendOptions& o) {
    CudaBackendOptions c;
    c.device = o.device;
    return make_cuda_backend(c);
  });
}

}  // namespace batchmax
