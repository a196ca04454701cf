// CudaBackend: the Backend interface on one GPU. Activations are BF16; weights are
// expanded to BF16 on the GPU at load (1-row vectors to F32); all work goes to one
// stream, so ops are ordered without host waits except download() and synchronize().
#include "backend/cuda/cuda_backend.h"
#include "backend/backend_registry.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <unordered_set>
#include <vector>

#include "backend/cuda/cuda_common.cuh"
#include "backend/attention_sums_memo.h"
#include "backend/attention_work.h"
#include "backend/evict_work.h"
#include "backend/cuda/cudnn_attention.h"
#include "backend/cuda/gemm.h"
#include "backend/cuda/kept_picks.h"
#include "backend/cuda/op_timer.h"
#include "backend/cuda/replay_graphs.h"
#include "backend/cuda/row_sort.h"
#include "backend/cuda/staging.h"
#include "backend/step_profile.h"

namespace batchmax {
namespace cuda {

void throw_cuda(cudaError_t e, const char* what, const char* file, int line) {
  throw Error(std::string("CUDA error ") + cudaGetErrorName(e) + " (" + cudaGetErrorString(e) +
              ") in " + what + " at " + file + ":" + std::to_string(line));
}

namespace {

// BATCHMAX_CUDA_MEMLOG=1: every device allocation to stderr (what the planner missed).
bool memlog() {
  static const bool on = [] {
    const char* e = std::getenv("BATCHMAX_CUDA_MEMLOG");
    return e && *e && *e != '0';
  }();
  return on;
}

// Device memory that grows and never shrinks (reused scratch).
struct DeviceBuffer {
  const char* name = "scratch";
  void* p = nullptr;
  size_t cap = 0;
  void* get(size_t n) {
    if (n > cap) {
      if (memlog())
        std::fprintf(stderr, "[cuda mem] %s: %zu -> %zu bytes\n", name, cap, std::max(n, cap * 2));
      if (p) BMX_CUDA(cudaFree(p));  // cudaFree waits for work that may still read it
      p = nullptr;
      cap = std::max(n, cap * 2);
      BMX_CUDA(cudaMalloc(&p, cap));
    }
    return p;
  }
  ~DeviceBuffer() {
    if (p) cudaFree(p);
  }
};

class CudaBackend final : public Backend {
 public:
  explicit CudaBackend(const CudaBackendOptions& o) : device_(o.device) {
    BMX_CUDA(cudaSetDevice(device_));
    BMX_CUDA(cudaFree(nullptr));  // creates the context, so the baseline includes it
    baseline_used_ = device_used();
    BMX_CUDA(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
    gemm_ = std::make_unique<Gemm>(o.gemm_workspace_bytes, o.small_m_max_rows);
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
    BMX_CUDA(cudaStreamCreateWithFlags(&cudnn_stream_, cudaStreamNonBlocking));
    BMX_CUDA(cudaEventCreateWithFlags(&cudnn_fork_, cudaEventDisableTiming));
    BMX_CUDA(cudaEventCreateWithFlags(&cudnn_join_, cudaEventDisableTiming));
    cudnn_ = cuda::CudnnAttention::open(cudnn_stream_, why);
    name_ += cudnn_ ? ", prefill attention: " + cudnn_->describe()
                    : ", prefill attention: own kernel (" + why + ")";
#else
    name_ += ", prefill attention: own kernel (built without the cuDNN frontend)";
#endif
    if (const char* e = std::getenv("BATCHMAX_CUDA_CUDNN_MIN_ROWS"))
      cudnn_min_rows_ = std::max(1, std::atoi(e));
    // BATCHMAX_CUDA_FUSE_ROPE_STORE=0: rope and kv_store as two launches (A/B).
    if (const char* e = std::getenv("BATCHMAX_CUDA_FUSE_ROPE_STORE")) fuse_rope_store_ = *e != '0';
  }

  ~CudaBackend() override {
    cudaStreamSynchronize(stream_);
    for (void* p : owned_) cudaFree(p);
    for (auto& r : ropes_) cudaFree(r.dev);
    replay_.reset();
    if (cudnn_stream_) cudaStreamSynchronize(cudnn_stream_);
    cudnn_.reset();
    if (cudnn_stream_) cudaStreamDestroy(cudnn_stream_);
    if (cudnn_fork_) cudaEventDestroy(cudnn_fork_);
    if (cudnn_join_) cudaEventDestroy(cudnn_join_);
    gemm_.reset();
    staging_.reset();
    cudaStreamDestroy(stream_);
  }

  std::string name() const override { return name_; }
  // Measured on the device: everything allocated since the backend started (tensors,
  // weights, KV pool, cuBLASLt workspace, staging), whoever in this process asked.
  int64_t allocated_bytes() const override {
    const int64_t now = device_used() - baseline_used_;
    peak_ = std::max(peak_, now);
    return now;
  }
  int64_t peak_allocated_bytes() const override {
    allocated_bytes();
    return peak_;
  }
  GgmlType activation_type() const override { return GgmlType::BF16; }

  Tensor alloc(GgmlType type, int64_t rows, int64_t cols) override {
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

  void free(Tensor& t) override {
    if (!t.data) return;
    auto it = owned_.find(t.data);
    if (it == owned_.end()) throw Error("cuda free: tensor was not allocated by this backend");
    BMX_CUDA(cudaFree(t.data));
    owned_.erase(it);
    t = Tensor{};
  }

  Tensor load_weight(GgmlType type, const void* data, int64_t rows, int64_t cols) override {
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

  void upload(const void* host, Tensor& dst) override {
    BMX_CUDA(cudaMemcpyAsync(dst.data, host, dst.bytes(), cudaMemcpyHostToDevice, stream_));
  }
  void download(const Tensor& src, void* host) override {
    {
      BMX_OP_TIME("download");
      BMX_CUDA(cudaMemcpyAsync(host, src.data, src.bytes(), cudaMemcpyDeviceToHost, stream_));
    }
    BMX_CUDA(cudaStreamSynchronize(stream_));
    op_timer_.drain();
  }
  void synchronize() override {
    BMX_CUDA(cudaStreamSynchronize(stream_));
    op_timer_.drain();
  }
  void fill_random(Tensor& t, uint64_t seed, float scale, float offset) override {
    if (!is_act_type(t.type) || t.row_stride != size_t(t.cols) * elem_bytes(t.type))
      throw Error("cuda fill_random: contiguous F32 or BF16 tensors only");
    cuda::launch_fill_random(t.data, t.type, t.rows * t.cols, seed, stream_, scale, offset);
  }

  void embed(const Tensor& table, std::span<const int32_t> ids, Tensor& out) override {
    BMX_OP_TIME("embed");
    if (int64_t(ids.size()) != out.rows) throw Error("cuda embed: ids and output rows differ");
    check_ids(ids, table.rows, "embed: token id");
    if (ids.empty()) return;
    cuda::launch_embed(table, put_ints({ids}), out, stream_);
  }

  void rms_norm(const Tensor& x, const Tensor& w, float eps, Tensor& out) override {
    BMX_OP_TIME("rms_norm");
    cuda::launch_rms_norm(x, w, eps, out, stream_);
  }

  void matmul(const Tensor& x, const Tensor& w, const Tensor* bias, Tensor& out) override {
    BMX_OP_TIME(prof::ops_enabled() ? OpTimer::intern("matmul " + std::to_string(w.rows) + "x" +
                                                       std::to_string(w.cols))
                                    : "");
    gemm_->run(x, w, out, stream_);
    if (bias) cuda::launch_add_bias(out, *bias, stream_);
  }

  void rope(Tensor& x, int n_heads, std::span<const int32_t> pos, const RopeParams& p) override {
    if (int64_t(pos.size()) != x.rows) throw Error("cuda rope: positions and rows differ");
    if (int(p.inv_freq.size()) != p.rotary_dim / 2) throw Error("cuda rope: inv_freq size");
    BMX_OP_TIME("rope");
    if (pos.empty()) return;
    cuda::launch_rope(x, n_heads, rope_table(pos, p), p, stream_);
  }

  void add_rms_norm(Tensor& x, const Tensor& y, const Tensor& w, float eps, Tensor& out) override {
    BMX_OP_TIME("add_rms_norm");
    cuda::launch_add_rms_norm(x, y, w, eps, out, stream_);
  }

  void swiglu(const Tensor& gate, const Tensor& up, Tensor& out) override {
    BMX_OP_TIME("swiglu");
    cuda::launch_swiglu(gate, up, out, stream_);
  }
  void add(Tensor& x, const Tensor& y) override {
    BMX_OP_TIME("add");
    cuda::launch_add(x, y, stream_);
  }

  void gather_rows(const Tensor& x, std::span<const int32_t> rows, Tensor& out) override {
    if (int64_t(rows.size()) != out.rows) throw Error("cuda gather_rows: rows and output differ");
    check_ids(rows, x.rows, "gather_rows: row");
    BMX_OP_TIME("gather_rows");
    if (rows.empty()) return;
    cuda::launch_gather_rows(x, put_ints({rows}), out, stream_);
  }

  void copy_rows(const Tensor& src, Tensor& dst) override {
    if (src.type != dst.type || src.rows != dst.rows || src.cols != dst.cols)
      throw Error("cuda copy_rows: shapes or types differ");
    if (src.rows == 0) return;
    BMX_OP_TIME("copy_rows");
    BMX_CUDA(cudaMemcpy2DAsync(dst.data, dst.row_stride, src.data, src.row_stride,
                               row_bytes(src.type, src.cols), size_t(src.rows),
                               cudaMemcpyDeviceToDevice, stream_));
  }
  bool prefers_stacked_projections() const override { return true; }
  // Seen on the H100: peaks 4-20 MiB above the plan with no cudaMalloc after it
  // (BATCHMAX_CUDA_MEMLOG), i.e. the driver's lazy module loads and local memory.
  // Graphs (run_replayable) take device memory of their own as they are made.
  int64_t runtime_reserve_bytes() const override {
    return (int64_t(64) << 20) + (replay_->enabled() ? ReplayGraphs::kReserveBytes : 0);
  }

  KVPoolView alloc_kv_pool(GgmlType type, int64_t n_blocks, int block_tokens,
                           int head_dim, bool slot_mass) override {
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

  void free_kv_pool(KVPoolView& pool) override {
    if (pool.k && pool.k == flush_pool_) {
      gemm_->set_l2_flush(nullptr, 0);
      flush_pool_ = nullptr;
    }
    for (void* p : {pool.k, pool.v, static_cast<void*>(pool.pos), static_cast<void*>(pool.mass)}) {
      if (!p) continue;
      owned_.erase(p);
      BMX_CUDA(cudaFree(p));
    }
    pool = KVPoolView{};
  }

  void kv_store(const Tensor& k, const Tensor& v, int n_kv_heads, std::span<const int32_t> slots,
                std::span<const int32_t> pos, KVPoolView& pool) override {
    const int64_t n = int64_t(pos.size());
    if (int64_t(slots.size()) != n * n_kv_heads) throw Error("cuda kv_store: slots size");
    BMX_OP_TIME("kv_store");
    for (int32_t sl : slots)  // negative: a padding row/head, skipped
      if (sl >= n_slots(pool)) throw Error("cuda kv_store: slot " + std::to_string(sl) + " is out of range");
    if (n == 0) return;
    const int32_t* d = put_ints({slots, pos});
    cuda::launch_kv_store(k, v, n_kv_heads, d, d + slots.size(), n, pool, stream_);
  }

  void rope_kv_store(Tensor& q, int n_q_heads, Tensor& k, const Tensor& v, int n_kv_heads,
                     std::span<const int32_t> slots, std::span<const int32_t> pos,
                     const RopeParams& p, KVPoolView& pool) override {
    if (!fuse_rope_store_ || !cuda::rope_kv_store_fusable(q, n_q_heads, k, v, n_kv_heads, p, pool))
      return Backend::rope_kv_store(q, n_q_heads, k, v, n_kv_heads, slots, pos, p, pool);
    const int64_t n = int64_t(pos.size());
    if (k.rows != n) throw Error("cuda rope_kv_store: positions and rows differ");
    if (int64_t(slots.size()) != n * n_kv_heads) throw Error("cuda rope_kv_store: slots size");
    if (int(p.inv_freq.size()) != p.rotary_dim / 2) throw Error("cuda rope_kv_store: inv_freq size");
    for (int32_t sl : slots)  // negative: a padding row/head, skipped
      if (sl >= n_slots(pool)) throw Error("cuda rope_kv_store: slot " + std::to_string(sl) + " is out of range");
    if (n == 0) return;
    const float2* table = rope_table(pos, p);
    BMX_OP_TIME("rope_kv_store");
    const int32_t* d = put_ints({slots, pos});
    cuda::launch_rope_kv_store(q, n_q_heads, k, v, n_kv_heads, table, p, d, d + slots.size(), pool,
                               stream_);
  }

  void kv_move(std::span<const int32_t> src, std::span<const int32_t> dst,
               KVPoolView& pool) override {
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

  void attention(const Tensor& q, std::span<const AttentionSeq> seqs, const AttentionParams& p,
                 const KVPoolView& pool, Tensor& out) override {
    BMX_OP_TIME(attention_op_name(seqs));
    lse_memo_.clear();
    const cuda::AttentionTiles t = cuda::attention_tiles(p, q.type, pool.type);
    const bool flash = cuda::flash_attention_supported(q.type, pool.type, p.head_dim);
    float* lse = flash ? static_cast<float*>(lse_.get(size_t(q.rows) * p.n_heads * sizeof(float)))
                       : nullptr;
    const std::vector<char>* to_cudnn = pick_cudnn(q, seqs, p, pool, out);
    cuda::AttentionLaunch a = pack_attention(q, seqs, p, pool, t.small, t.big, t.small, to_cudnn);
    const bool ours = a.n_small + a.n_big > 0;
    if (ours) {
      if (q.type != out.type || out.rows != q.rows || out.cols != q.cols)
        throw Error("cuda attention: out must match q");
      a.meta = put_attention_work();  // before cuDNN's put: see run_cudnn
    }
    bool cudnn_ran = false;
    if (to_cudnn) {
      cudnn_ran = run_cudnn(q, seqs, p, pool, out, lse);
      if (!cudnn_ran) {  // no plan for this shape: our kernel takes every sequence
        a = pack_attention(q, seqs, p, pool, t.small, t.big, t.small, nullptr);
        a.meta = put_attention_work();
      }
    }
    if (a.n_small + a.n_big > 0) {
      a.scratch = [this](size_t n) { return attn_scratch_.get(n); };
      if (flash) {
        a.lse = lse;
        a.lse_stride = p.n_heads;
      }
      cuda::launch_attention(q, a, p, pool, out, stream_);
    }
    if (cudnn_ran) BMX_CUDA(cudaStreamWaitEvent(stream_, cudnn_join_, 0));
    if (flash && (cudnn_ran || a.n_small + a.n_big > 0))
      lse_memo_.remember(q.data, q.row_stride, seqs);
  }

  // The sequences of a call that cuDNN's SDPA takes (null: none): bf16 prefill rows of
  // at least cudnn_min_rows_ queries, when the caller vouches for the bottom-right mask.
  const std::vector<char>* pick_cudnn(const Tensor& q, std::span<const AttentionSeq> seqs,
                                      const AttentionParams& p, const KVPoolView& pool,
                                      const Tensor& out) {
    if (!cudnn_ || !p.queries_newest || q.type != GgmlType::BF16 || pool.type != GgmlType::BF16 ||
        out.type != GgmlType::BF16 || out.rows != q.rows || out.cols != q.cols ||
        p.head_dim % 8 != 0 || p.head_dim > 256 || p.n_kv_heads <= 0 || p.n_heads % p.n_kv_heads)
      return nullptr;
    to_cudnn_.assign(seqs.size(), 0);
    bool any = false;
    for (size_t i = 0; i < seqs.size(); ++i)
      if (seqs[i].n_q >= cudnn_min_rows_) to_cudnn_[i] = any = true;
    return any ? &to_cudnn_ : nullptr;
  }
  // Runs the picked sequences (pack_attention has checked their tables) through cuDNN.
  bool run_cudnn(const Tensor& q, std::span<const AttentionSeq> seqs, const AttentionParams& p,
                 const KVPoolView& pool, Tensor& out, float* lse) {
    sdpa_entries_.clear();
    for (size_t i = 0; i < seqs.size(); ++i) {
      if (!to_cudnn_[i]) continue;
      const AttentionSeq& s = seqs[i];
      for (int h = 0; h < p.n_kv_heads; ++h)
        sdpa_entries_.push_back({int32_t(s.q_begin), int32_t(s.n_q), h, s.head_entries[h],
                                 s.head_blocks[h]});
    }
    cuda::SdpaCall c;
    c.q = q.data;
    c.q_row_stride = int64_t(q.row_stride / 2);
    c.out = out.data;
    c.out_row_stride = int64_t(out.row_stride / 2);
    c.k_pool = pool.k;
    c.v_pool = pool.v;
    c.n_blocks = pool.n_blocks;
    c.block_tokens = pool.block_tokens;
    c.n_heads = p.n_heads;
    c.n_kv_heads = p.n_kv_heads;
    c.head_dim = p.head_dim;
    c.scale = p.scale;
    c.lse = lse;
    c.lse_stride = p.n_heads;
    c.entries = sdpa_entries_;
    // cuDNN runs on a side stream, next to our kernel's decode rows on stream_ (one after
    // the other, each leaves most SMs idle). Its metadata goes through staging on stream_
    // (so the fork follows the copy), and it is the call's last put: the join that
    // attention() queues next on stream_ then precedes any later put that could recycle
    // the staging half cuDNN reads.
    auto put = [this](std::span<const int32_t> v) {
      const void* d = staging_->put(v.data(), v.size() * sizeof(int32_t), stream_);
      BMX_CUDA(cudaEventRecord(cudnn_fork_, stream_));
      BMX_CUDA(cudaStreamWaitEvent(cudnn_stream_, cudnn_fork_, 0));
      return static_cast<const int32_t*>(d);
    };
    const bool ran = cudnn_->run(c, put, [this](size_t n) { return cudnn_scratch_.get(n); });
    if (ran) BMX_CUDA(cudaEventRecord(cudnn_join_, cudnn_stream_));
    return ran;
  }

  void attention_scores(const Tensor& q, std::span<const AttentionSeq> seqs,
                        const AttentionParams& p, const KVPoolView& pool,
                        std::span<float* const> out, int64_t out_stride) override {
    if (out.size() != seqs.size()) throw Error("cuda attention_scores: one output per sequence");
    for (const AttentionSeq& a : seqs)
      for (int32_t e : a.head_entries)
        if (e > out_stride) throw Error("cuda attention_scores: out_stride below the entries");
    // All work items in the first list.
    const int tile = cuda::attention_scores_tile(q.type, pool.type, p.head_dim);
    cuda::AttentionLaunch a = pack_attention(q, seqs, p, pool, tile, tile, INT64_MAX);
    if (a.n_small == 0) return;
    a.scratch = [this](size_t n) { return scores_part_.get(n); };
    const size_t per_seq = size_t(p.n_kv_heads) * out_stride;
    float* d_out = static_cast<float*>(scores_out_.get(std::max<size_t>(seqs.size() * per_seq, 1) * 4));
    BMX_CUDA(cudaMemsetAsync(d_out, 0, seqs.size() * per_seq * 4, stream_));
    a.meta = put_attention_work();
    use_lse(q, seqs, p, a);
    cuda::launch_attention_scores(q, a, p, pool, d_out, out_stride, stream_);
    host_scores_.resize(seqs.size() * per_seq);
    BMX_CUDA(cudaMemcpyAsync(host_scores_.data(), d_out, host_scores_.size() * 4,
                             cudaMemcpyDeviceToHost, stream_));
    BMX_CUDA(cudaStreamSynchronize(stream_));
    for (size_t i = 0; i < seqs.size(); ++i)
      for (int h = 0; h < p.n_kv_heads; ++h) {
        const float* src = host_scores_.data() + i * per_seq + size_t(h) * out_stride;
        std::copy(src, src + seqs[i].head_entries[h], out[i] + size_t(h) * out_stride);
      }
  }

  void argmax_rows(const Tensor& x, int32_t* out) override {
    if (x.rows == 0) return;
    int32_t* d = static_cast<int32_t*>(small_out_.get(size_t(x.rows) * 4));
    {
      BMX_OP_TIME("argmax_rows");
      cuda::launch_argmax_rows(x, d, stream_);
    }
    BMX_CUDA(cudaMemcpyAsync(out, d, size_t(x.rows) * 4, cudaMemcpyDeviceToHost, stream_));
    BMX_CUDA(cudaStreamSynchronize(stream_));
    op_timer_.drain();
  }

  void sample_rows(const Tensor& x, std::span<const float> inv_temperature,
                   std::span<const double> uniform, int32_t* out) override {
    if (x.rows == 0) return;
    int32_t* d = static_cast<int32_t*>(small_out_.get(size_t(x.rows) * 4));
    pick_rows_to(x, inv_temperature, uniform, d);
    BMX_CUDA(cudaMemcpyAsync(out, d, size_t(x.rows) * 4, cudaMemcpyDeviceToHost, stream_));
    BMX_CUDA(cudaStreamSynchronize(stream_));
    op_timer_.drain();
  }

  // Steps in flight: the picks stay in a device set, a copy follows them to pinned host
  // memory, and nothing waits.
  void sample_rows_kept(const Tensor& x, std::span<const float> inv_temperature,
                        std::span<const double> uniform, int set, int64_t first) override {
    if (x.rows == 0) return;
    if (first < 0) throw Error("cuda sample_rows_kept: negative first pick");
    int32_t* d = kept_picks_.device(set, first + x.rows, stream_) + first;
    pick_rows_to(x, inv_temperature, uniform, d);
    kept_picks_.copy_back(set, first, x.rows, stream_);
  }
  void fetch_picks(int set, int64_t n, int32_t* out) override {
    kept_picks_.fetch(set, n, out);
    op_timer_.drain();
  }
  void embed_with_picks(const Tensor& table, std::span<const int32_t> ids,
                        std::span<const int32_t> pick_index, int set, Tensor& out) override {
    BMX_OP_TIME("embed");
    if (int64_t(ids.size()) != out.rows || pick_index.size() != ids.size())
      throw Error("cuda embed_with_picks: ids, pick indices and output rows differ");
    check_ids(ids, table.rows, "embed: token id");
    if (ids.empty()) return;
    // The staged ids are this call's own: the picks are written over them in place.
    int32_t* d = const_cast<int32_t*>(put_ints({ids, pick_index}));
    kept_picks_.resolve(set, d, d + ids.size(), int64_t(ids.size()), stream_);
    cuda::launch_embed(table, d, out, stream_);
  }
  bool prefers_overlapped_steps() const override { return true; }

  void top_candidates(const Tensor& x, int k, std::span<const float> inv_temperature,
                      float* values, int32_t* ids, double* whole_mass) override {
    if (int64_t(inv_temperature.size()) != x.rows)
      throw Error("cuda top_candidates: one temperature per row");
    if (x.rows == 0) return;
    const size_t n = size_t(x.rows), nk = n * size_t(k);
    const float* d_t = static_cast<const float*>(staging_->put(inv_temperature.data(), n * sizeof(float), stream_));
    // One buffer, one copy back: the masses (8-byte aligned first), values, indices.
    const size_t bytes = n * sizeof(double) + nk * (sizeof(float) + sizeof(int32_t));
    char* d = static_cast<char*>(small_out_.get(bytes));
    {
      BMX_OP_TIME("top_candidates");
      cuda::launch_top_candidates(x, k, d_t, reinterpret_cast<float*>(d + n * sizeof(double)),
                                  reinterpret_cast<int32_t*>(d + n * sizeof(double) + nk * sizeof(float)),
                                  reinterpret_cast<double*>(d), stream_);
    }
    host_sample_.resize(bytes);
    BMX_CUDA(cudaMemcpyAsync(host_sample_.data(), d, bytes, cudaMemcpyDeviceToHost, stream_));
    BMX_CUDA(cudaStreamSynchronize(stream_));
    op_timer_.drain();
    std::memcpy(whole_mass, host_sample_.data(), n * sizeof(double));
    std::memcpy(values, host_sample_.data() + n * sizeof(double), nk * sizeof(float));
    std::memcpy(ids, host_sample_.data() + n * sizeof(double) + nk * sizeof(float), nk * sizeof(int32_t));
  }

  void reserve_row_sort(int64_t cols) override { sort_scratch_.get(cuda::row_sort_scratch_bytes(cols)); }
  void sorted_prefix(const Tensor& x, std::span<const int32_t> rows, int64_t n, float* values,
                     int32_t* ids) override {
    if (n < 1 || n > x.cols) throw Error("cuda sorted_prefix: n must be in [1, cols]");
    check_ids(rows, x.rows, "sorted_prefix: row");
    const size_t bytes = cuda::row_sort_scratch_bytes(x.cols);
    void* scratch = sort_scratch_.get(bytes);
    const size_t pitch = size_t(x.cols) * 4, width = size_t(n) * 4;
    for (size_t r0 = 0; r0 < rows.size(); r0 += cuda::kRowsPerSort) {
      const size_t m = std::min<size_t>(cuda::kRowsPerSort, rows.size() - r0);
      const int32_t* d_rows = put_ints({rows.subspan(r0, m)});
      const float* keys = nullptr;
      const int32_t* sorted = nullptr;
      {
        BMX_OP_TIME("sorted_prefix");
        cuda::launch_sort_rows(x, d_rows, int(m), scratch, bytes, &keys, &sorted, stream_);
      }
      BMX_CUDA(cudaMemcpy2DAsync(values + r0 * size_t(n), width, keys, pitch, width, m,
                                 cudaMemcpyDeviceToHost, stream_));
      BMX_CUDA(cudaMemcpy2DAsync(ids + r0 * size_t(n), width, sorted, pitch, width, m,
                                 cudaMemcpyDeviceToHost, stream_));
    }
    BMX_CUDA(cudaStreamSynchronize(stream_));
    op_timer_.drain();
  }

  void draw_sorted_rows(const Tensor& x, std::span<const int32_t> rows,
                        std::span<const SortedDraw> draws, int32_t* out) override {
    if (draws.size() != rows.size()) throw Error("cuda draw_sorted_rows: one draw per row");
    check_ids(rows, x.rows, "draw_sorted_rows: row");
    if (rows.empty()) return;
    const size_t bytes = cuda::row_sort_scratch_bytes(x.cols);
    void* scratch = sort_scratch_.get(bytes);
    int32_t* d_out = static_cast<int32_t*>(small_out_.get(rows.size() * sizeof(int32_t)));
    for (size_t r0 = 0; r0 < rows.size(); r0 += cuda::kRowsPerSort) {
      const size_t m = std::min<size_t>(cuda::kRowsPerSort, rows.size() - r0);
      // One put per launch: the draws (8-byte aligned) and then the row ids.
      host_sample_.resize(m * sizeof(SortedDraw) + m * sizeof(int32_t));
      std::memcpy(host_sample_.data(), draws.data() + r0, m * sizeof(SortedDraw));
      std::memcpy(host_sample_.data() + m * sizeof(SortedDraw), rows.data() + r0, m * sizeof(int32_t));
      const char* d = static_cast<const char*>(staging_->put(host_sample_.data(), host_sample_.size(), stream_));
      const float* keys = nullptr;
      const int32_t* sorted = nullptr;
      BMX_OP_TIME("draw_sorted_rows");
      cuda::launch_sort_rows(x, reinterpret_cast<const int32_t*>(d + m * sizeof(SortedDraw)), int(m),
                             scratch, bytes, &keys, &sorted, stream_);
      cuda::launch_draw_sorted(keys, sorted, x.cols, int(m), reinterpret_cast<const SortedDraw*>(d),
                               d_out + r0, stream_);
    }
    BMX_CUDA(cudaMemcpyAsync(out, d_out, rows.size() * sizeof(int32_t), cudaMemcpyDeviceToHost, stream_));
    BMX_CUDA(cudaStreamSynchronize(stream_));
    op_timer_.drain();
  }

  void kv_positions(const KVPoolView& pool, std::span<const int32_t> blocks, int64_t n_entries,
                    int32_t* out) override {
    if (n_entries > int64_t(blocks.size()) * pool.block_tokens)
      throw Error("cuda kv_positions: more entries than the blocks hold");
    check_ids(blocks, pool.n_blocks, "kv_positions: block");
    if (n_entries == 0) return;
    int32_t* d = static_cast<int32_t*>(small_out_.get(size_t(n_entries) * 4));
    cuda::launch_kv_positions(pool, put_ints({blocks}), n_entries, d, stream_);
    BMX_CUDA(cudaMemcpyAsync(out, d, size_t(n_entries) * 4, cudaMemcpyDeviceToHost, stream_));
    BMX_CUDA(cudaStreamSynchronize(stream_));
  }

  void attention_scores_to(const Tensor& q, std::span<const AttentionSeq> seqs,
                           const AttentionParams& p, const KVPoolView& pool, Tensor& out) override {
    const int64_t rows = int64_t(seqs.size()) * p.n_kv_heads;
    if (out.type != GgmlType::F32 || out.rows < rows || out.row_stride != size_t(out.cols) * 4)
      throw Error("cuda attention_scores_to: out must be contiguous F32 with a row per (sequence, KV head)");
    for (const AttentionSeq& a : seqs)
      for (int32_t e : a.head_entries)
        if (e > out.cols) throw Error("cuda attention_scores_to: out has fewer columns than entries");
    if (rows == 0) return;
    BMX_OP_TIME("attention_scores_to");
    BMX_CUDA(cudaMemsetAsync(out.data, 0, size_t(rows) * out.row_stride, stream_));
    const int tile = cuda::attention_scores_tile(q.type, pool.type, p.head_dim);
    cuda::AttentionLaunch a = pack_attention(q, seqs, p, pool, tile, tile, INT64_MAX);
    if (a.n_small == 0) return;
    a.scratch = [this](size_t n) { return scores_part_.get(n); };
    a.meta = put_attention_work();
    use_lse(q, seqs, p, a);
    cuda::launch_attention_scores(q, a, p, pool, out.f32(), out.cols, stream_);
  }

  bool prefers_device_eviction() const override { return true; }
  static constexpr size_t kMovesPerLaunch = 4096;

  void accumulate_mass(const Tensor& q, std::span<const AttentionSeq> seqs,
                       const AttentionParams& p, KVPoolView& pool) override {
    if (!pool.mass) throw Error("cuda accumulate_mass: the pool has no slot mass");
    int64_t stride = 1;
    for (const AttentionSeq& a : seqs)
      for (int32_t e : a.head_entries) stride = std::max<int64_t>(stride, e);
    const int64_t rows = int64_t(seqs.size()) * p.n_kv_heads;
    if (rows == 0) return;
    if (rows > INT32_MAX) throw Error("cuda accumulate_mass: too many sequences");
    Tensor mass;
    mass.type = GgmlType::F32;
    mass.rows = rows;
    mass.cols = stride;
    mass.row_stride = size_t(stride) * 4;
    mass.data = scores_out_.get(size_t(rows) * mass.row_stride);
    attention_scores_to(q, seqs, p, pool, mass);  // checks the tables; zeroes then scores
    BMX_OP_TIME("accumulate_mass");
    std::vector<int32_t>& m = host_ints_;
    m.assign(size_t(2 * rows), 0);
    for (size_t i = 0; i < seqs.size(); ++i)
      for (int h = 0; h < p.n_kv_heads; ++h) {
        int32_t* rec = m.data() + 2 * (i * size_t(p.n_kv_heads) + size_t(h));
        rec[0] = int32_t(m.size());
        rec[1] = seqs[i].head_entries[size_t(h)];
        const auto& b = seqs[i].head_blocks[size_t(h)];
        m.insert(m.end(), b.begin(), b.end());
      }
    if (m.size() > size_t(INT32_MAX)) throw Error("cuda accumulate_mass: metadata too large");
    cuda::launch_add_mass(put_packed(), int(rows), mass.f32(), stride, pool, stream_);
  }

  // Steps of more rows are long enough that launches cost nothing next to them, and
  // their row counts rarely repeat.
  static constexpr int64_t kMaxReplayRows = 256;
  void run_replayable(const ReplayKey& key, const std::function<void()>& ops) override {
    // Profiles time each op with events, which a graph would not replay.
    if (key.rows > kMaxReplayRows || prof::enabled() || prof::ops_enabled()) {
      ops();
      return;
    }
    replay_->run(key, reinterpret_cast<uintptr_t>(rope_table_.p), ops, stream_);
  }
  // Multiples of 8: ~9x fewer graphs over a run's batch sizes, for at most 7 rows of
  // products that cost nothing extra (decode products are bound by the weight reads).
  int64_t padded_rows(int64_t rows) const override {
    return rows <= kMaxReplayRows ? (rows + 7) / 8 * 8 : rows;
  }
  // 2048: at 512 a step's products (M ~ 512) and its fixed costs held prefill at 54-59% of
  // the GEMM peak; at 2048 Llama-3.1-8B W-full ran 9% (full) to 14% (batchmax) faster on
  // an H100, W-limited (24 GiB) 3-6% slower (bench/results/step_tokens_2026-11-27/).
  int64_t preferred_step_tokens() const override { return 2048; }
  void drop_replays(const void* owner) override { replay_->drop(owner); }
  ReplayCounts replay_counts() const override { return replay_->counts(); }

  void reserve_step_scratch(int64_t max_rows, const AttentionParams& p) override {
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

  void evict(std::span<const EvictTask> tasks, const Tensor* mass, KVPoolView& pool) override {
    // Launches of at most kEvictKeysPerLaunch entries (the reserved key scratch).
    size_t begin = 0;
    for (size_t end : evict_launch_ends(tasks, cuda::kEvictKeysPerLaunch)) {
      const EvictWork w = evict_packer_.pack(tasks.subspan(begin, end - begin), pool, mass);
      begin = end;
      uint32_t* keys = static_cast<uint32_t*>(evict_keys_.get(size_t(w.keys) * 4));
      const std::span<const int32_t> m = evict_packer_.meta();
      const int32_t* d = static_cast<const int32_t*>(
          staging_->put(m.data(), m.size() * sizeof(int32_t), stream_));
      BMX_OP_TIME("evict");
      cuda::launch_evict(d, w.n_tasks, mass ? mass->f32() : nullptr,
                         mass ? int64_t(mass->row_stride / 4) : 0, keys, pool, stream_);
    }
  }

  void key_norms(const KVPoolView& pool, std::span<const int32_t> blocks, int64_t n_entries,
                 float* out) override {
    if (n_entries > int64_t(blocks.size()) * pool.block_tokens)
      throw Error("cuda key_norms: more entries than the blocks hold");
    check_ids(blocks, pool.n_blocks, "key_norms: block");
    if (n_entries == 0) return;
    float* d_out = static_cast<float*>(scores_out_.get(size_t(n_entries) * 4));
    cuda::launch_key_norms(pool, put_ints({blocks}), n_entries, d_out, stream_);
    BMX_CUDA(cudaMemcpyAsync(out, d_out, size_t(n_entries) * 4, cudaMemcpyDeviceToHost, stream_));
    BMX_CUDA(cudaStreamSynchronize(stream_));
  }

 private:
  void* device_alloc(size_t n) {
    if (memlog()) std::fprintf(stderr, "[cuda mem] alloc %zu bytes\n", n);
    void* p = nullptr;
    BMX_CUDA(cudaMalloc(&p, n));
    owned_.insert(p);
    allocated_bytes();  // keeps the peak current
    return p;
  }
  static int64_t device_used() {
    size_t free_b = 0, total_b = 0;
    BMX_CUDA(cudaMemGetInfo(&free_b, &total_b));
    return int64_t(total_b) - int64_t(free_b);
  }
  // BATCHMAX_CUDA_GRAPHS=0: every op is launched on its own (A/B, debugging).
  static bool graphs_enabled() {
    const char* e = std::getenv("BATCHMAX_CUDA_GRAPHS");
    return !(e && *e == '0');
  }
  static int64_t n_slots(const KVPoolView& pool) { return pool.n_blocks * pool.block_tokens; }
  static void check_ids(std::span<const int32_t> ids, int64_t n, const char* what) {
    for (int32_t i : ids)
      if (i < 0 || i >= n)
        throw Error(std::string("cuda ") + what + " " + std::to_string(i) + " is out of range [0, " +
                    std::to_string(n) + ")");
  }
  // Concatenates host spans into one staging put; returns the device copy.
  // sample_rows' picks to d (device), stream-ordered: argmax where no row has a temperature.
  void pick_rows_to(const Tensor& x, std::span<const float> inv_temperature,
                    std::span<const double> uniform, int32_t* d) {
    if (int64_t(inv_temperature.size()) != x.rows || int64_t(uniform.size()) != x.rows)
      throw Error("cuda sample_rows: one temperature and one uniform per row");
    if (std::none_of(inv_temperature.begin(), inv_temperature.end(), [](float t) { return t > 0; })) {
      BMX_OP_TIME("argmax_rows");
      cuda::launch_argmax_rows(x, d, stream_);
      return;
    }
    // One staging put: the uniforms (8-byte aligned at its start), then the temperatures.
    const size_t n = size_t(x.rows);
    host_sample_.resize(n * (sizeof(double) + sizeof(float)));
    std::memcpy(host_sample_.data(), uniform.data(), n * sizeof(double));
    std::memcpy(host_sample_.data() + n * sizeof(double), inv_temperature.data(), n * sizeof(float));
    const char* d_in = static_cast<const char*>(staging_->put(host_sample_.data(), host_sample_.size(), stream_));
    BMX_OP_TIME("sample_rows");
    cuda::launch_sample_rows(x, reinterpret_cast<const float*>(d_in + n * sizeof(double)),
                             reinterpret_cast<const double*>(d_in), d, stream_);
  }

  const int32_t* put_ints(std::initializer_list<std::span<const int32_t>> parts) {
    host_ints_.clear();
    for (auto s : parts) host_ints_.insert(host_ints_.end(), s.begin(), s.end());
    return static_cast<const int32_t*>(
        staging_->put(host_ints_.data(), host_ints_.size() * sizeof(int32_t), stream_));
  }
  // host_ints_ as filled by the caller.
  const int32_t* put_packed() {
    return static_cast<const int32_t*>(
        staging_->put(host_ints_.data(), host_ints_.size() * sizeof(int32_t), stream_));
  }
  // The metadata of the last pack_attention().
  const int32_t* put_attention_work() {
    const std::span<const int32_t> m = packer_.meta();
    return static_cast<const int32_t*>(staging_->put(m.data(), m.size() * sizeof(int32_t), stream_));
  }
  // BATCHMAX_CUDA_SCORES_TWO_PASS=1: scoring ignores the attention pass's sums (A/B, tests).
  static bool scores_two_pass() {
    static const bool on = [] {
      const char* e = std::getenv("BATCHMAX_CUDA_SCORES_TWO_PASS");
      return e && *e && *e != '0';
    }();
    return on;
  }
  // The last attention() call left each query vector's log2-sum-exp in lse_ (flash path);
  // a scoring call that lse_memo_ says covers the same rows and entries reads them.
  void use_lse(const Tensor& q, std::span<const AttentionSeq> seqs, const AttentionParams& p,
               cuda::AttentionLaunch& a) {
    if (!cuda::flash_attention_supported(q.type, GgmlType::BF16, p.head_dim) || scores_two_pass() ||
        !lse_memo_.covers(q.data, q.row_stride, seqs))
      return;
    a.lse = static_cast<float*>(lse_.get(0));
    a.lse_stride = p.n_heads;
  }

  // The (cos, sin) table of these positions: every layer of a step rotates the same
  // positions, so it is computed when the positions (or frequencies) change, not per call.
  const float2* rope_table(std::span<const int32_t> pos, const RopeParams& p) {
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
  // inv_freq is uploaded once per distinct RopeParams content.
  const float* inv_freq(const RopeParams& p) {
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

  struct RopeEntry {
    std::vector<float> host;
    float* dev;
  };
  int device_;
  size_t l2_bytes_ = 0;
  const void* flush_pool_ = nullptr;  // the pool whose keys GEMM tuning reads
  int64_t baseline_used_ = 0;
  mutable int64_t peak_ = 0;
  std::string name_;
  cudaStream_t stream_ = nullptr;
  std::unique_ptr<Gemm> gemm_;
  std::unique_ptr<Staging> staging_;
  std::unique_ptr<ReplayGraphs> replay_;
  std::unordered_set<void*> owned_;
  std::vector<RopeEntry> ropes_;
  // Packs the call's metadata (AttentionWorkPacker) for put_attention_work(); the launch gets
  // its counts.
  cuda::AttentionLaunch pack_attention(const Tensor& q, std::span<const AttentionSeq> seqs,
                                       const AttentionParams& p, const KVPoolView& pool,
                                       int small, int big, int64_t small_max,
                                       const std::vector<char>* skip = nullptr) {
    const AttentionWorkCounts c =
        packer_.pack({q.rows, q.cols, pool.n_blocks, pool.block_tokens, pool.head_dim}, seqs, p,
                     small, big, small_max, skip);
    return {nullptr, c.n_small, c.n_big, c.n_seqs, c.seq_at, c.max_small_entries, {}};
  }
  AttentionWorkPacker packer_;
  EvictWorkPacker evict_packer_;

  std::vector<int32_t> rope_pos_;
  const float* rope_inv_ = nullptr;
  int rope_half_ = 0;
  const float2* rope_table_at_ = nullptr;
  DeviceBuffer rope_table_, lse_;
  AttentionSumsMemo lse_memo_;
  std::unique_ptr<cuda::CudnnAttention> cudnn_;  // null: prefill attention on our kernel
  cudaStream_t cudnn_stream_ = nullptr;
  cudaEvent_t cudnn_fork_ = nullptr, cudnn_join_ = nullptr;
  int cudnn_min_rows_ = 64;
  bool fuse_rope_store_ = true;
  std::vector<char> to_cudnn_;
  std::vector<cuda::SdpaEntry> sdpa_entries_;
  DeviceBuffer cudnn_scratch_;
  DeviceBuffer weight_stage_, move_scratch_, scores_out_, attn_scratch_, small_out_, evict_keys_, scores_part_;
  DeviceBuffer sort_scratch_;  // sorted_prefix, draw_sorted_rows (reserved with the workspace)
  cuda::KeptPicks kept_picks_;  // sample_rows_kept's pick sets
  std::vector<int32_t> host_ints_;
  std::vector<char> host_sample_;  // sample_rows', top_candidates' and draw_sorted_rows' host side
  std::vector<float> host_scores_;
  OpTimer op_timer_;  // its events outlive the stream (destroyed after the body): harmless

  // Attention steps are told apart by what they hold: decode rows only, prefill only, or both.
  static const char* attention_op_name(std::span<const AttentionSeq> seqs) {
    bool dec = false, pre = false;
    for (const AttentionSeq& a : seqs) (a.n_q == 1 ? dec : pre) = true;
    return dec && pre ? "attention mixed" : (pre ? "attention prefill" : "attention decode");
  }
};

}  // namespace
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
