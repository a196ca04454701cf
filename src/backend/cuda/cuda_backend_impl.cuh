// CudaBackend, the Backend interface on one GPU (see cuda_backend.cu): the class, shared by
// the files that define its members (cuda_backend.cu: memory, dense and KV ops;
// cuda_backend_attention.cu: attention, cuDNN, scores, eviction; cuda_backend_sampling.cu:
// picks, candidates, sorted rows). Only CUDA sources include it.
#pragma once

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <unordered_set>
#include <vector>

#include "backend/attention_sums_memo.h"
#include "backend/attention_work.h"
#include "backend/cuda/cuda_backend.h"
#include "backend/cuda/cuda_common.cuh"
#include "backend/evict_work.h"
#include "backend/cuda/cudnn_attention.h"
#include "backend/cuda/cudnn_swiglu.h"
#include "backend/cuda/gate_up_swiglu.h"
#include "backend/cuda/gemm.h"
#include "backend/cuda/kept_picks.h"
#include "backend/cuda/op_timer.h"
#include "backend/cuda/replay_graphs.h"
#include "backend/cuda/row_sort.h"
#include "backend/cuda/staging.h"
#include "backend/step_profile.h"

namespace batchmax::cuda {

// BATCHMAX_CUDA_MEMLOG=1: every device allocation to stderr (what the planner missed).
inline bool memlog() {
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
  explicit CudaBackend(const CudaBackendOptions& o);

  ~CudaBackend() override;
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

  Tensor alloc(GgmlType type, int64_t rows, int64_t cols) override;
  void free(Tensor& t) override;
  Tensor load_weight(GgmlType type, const void* data, int64_t rows, int64_t cols) override;
  void upload(const void* host, Tensor& dst) override {
    BMX_CUDA(cudaMemcpyAsync(dst.data, host, dst.bytes(), cudaMemcpyHostToDevice, stream_));
  }
  void download(const Tensor& src, void* host) override;
  void synchronize() override {
    BMX_CUDA(cudaStreamSynchronize(stream_));
    op_timer_.drain();
  }
  void fill_random(Tensor& t, uint64_t seed, float scale, float offset) override {
    if (!is_act_type(t.type) || t.row_stride != size_t(t.cols) * elem_bytes(t.type))
      throw Error("cuda fill_random: contiguous F32 or BF16 tensors only");
    cuda::launch_fill_random(t.data, t.type, t.rows * t.cols, seed, stream_, scale, offset);
  }

  void embed(const Tensor& table, std::span<const int32_t> ids, Tensor& out) override;
  void rms_norm(const Tensor& x, const Tensor& w, float eps, Tensor& out) override {
    BMX_OP_TIME("rms_norm");
    cuda::launch_rms_norm(x, w, eps, out, stream_);
  }

  void matmul(const Tensor& x, const Tensor& w, const Tensor* bias, Tensor& out) override;
  void rope(Tensor& x, int n_heads, std::span<const int32_t> pos, const RopeParams& p) override;
  void add_rms_norm(Tensor& x, const Tensor& y, const Tensor& w, float eps, Tensor& out) override {
    BMX_OP_TIME("add_rms_norm");
    cuda::launch_add_rms_norm(x, y, w, eps, out, stream_);
  }

  void swiglu(const Tensor& gate, const Tensor& up, Tensor& out) override {
    BMX_OP_TIME("swiglu");
    cuda::launch_swiglu(gate, up, out, stream_);
  }
  void gate_up_swiglu(const Tensor& x, const Tensor& w_gate_up, Tensor& gate_up, const Tensor& gate,
                      const Tensor& up, Tensor& out) override {
    if (gate_up_->accepts(x, w_gate_up, out)) {
      BMX_OP_TIME("gate_up_swiglu");
      gate_up_->run(x, w_gate_up, out, stream_);
      return;
    }
    if (cudnn_swiglu_ && x.rows >= cudnn_swiglu_rows_ && fused_gate_swiglu(x, w_gate_up, gate_up, gate, up, out))
      return;
    Backend::gate_up_swiglu(x, w_gate_up, gate_up, gate, up, out);
  }
  void matmul_add_rms_norm(const Tensor& a, const Tensor& w, Tensor& x, const Tensor& norm_w,
                           float eps, Tensor& out) override;
  // gate_up_swiglu of many rows through cuDNN's fused gate product (cudnn_swiglu.h): the up
  // product into `up`, then out = silu(x . w_gate^T) * up. False: nothing ran.
  bool fused_gate_swiglu(const Tensor& x, const Tensor& w_gate_up, Tensor& gate_up, const Tensor& gate,
                         const Tensor& up, Tensor& out);
  void add(Tensor& x, const Tensor& y) override {
    BMX_OP_TIME("add");
    cuda::launch_add(x, y, stream_);
  }

  void gather_rows(const Tensor& x, std::span<const int32_t> rows, Tensor& out) override;
  void copy_rows(const Tensor& src, Tensor& dst) override;
  bool prefers_stacked_projections() const override { return true; }
  // Seen on the H100: peaks 4-20 MiB above the plan with no cudaMalloc after it
  // (BATCHMAX_CUDA_MEMLOG), i.e. the driver's lazy module loads and local memory.
  // Graphs (run_replayable) take device memory of their own as they are made.
  int64_t runtime_reserve_bytes() const override {
    return (int64_t(64) << 20) + (replay_->enabled() ? ReplayGraphs::kReserveBytes : 0);
  }

  KVPoolView alloc_kv_pool(GgmlType type, int64_t n_blocks, int block_tokens,
                           int head_dim, bool slot_mass) override;
  void free_kv_pool(KVPoolView& pool) override;
  // Block tables on the device (BATCHMAX_CUDA_BLOCK_TABLES=0: none, every attention call
  // copies its heads' ids, as before).
  bool keeps_block_tables() const override;
  void alloc_block_tables(KVPoolView& pool, int64_t n_ints) override;
  void write_block_tables(std::span<const int32_t> pairs, KVPoolView& pool) override;
  void kv_store(const Tensor& k, const Tensor& v, int n_kv_heads, std::span<const int32_t> slots,
                std::span<const int32_t> pos, KVPoolView& pool) override;
  void rope_kv_store(Tensor& q, int n_q_heads, Tensor& k, const Tensor& v, int n_kv_heads,
                     std::span<const int32_t> slots, std::span<const int32_t> pos,
                     const RopeParams& p, KVPoolView& pool) override;
  void kv_move(std::span<const int32_t> src, std::span<const int32_t> dst,
               KVPoolView& pool) override;
  void attention(const Tensor& q, std::span<const AttentionSeq> seqs, const AttentionParams& p,
                 const KVPoolView& pool, Tensor& out) override;

  // The sequences of a call that cuDNN's SDPA takes (null: none): bf16 prefill rows of
  // at least cudnn_min_rows_ queries, when the caller vouches for the bottom-right mask.
  const std::vector<char>* pick_cudnn(const Tensor& q, std::span<const AttentionSeq> seqs,
                                      const AttentionParams& p, const KVPoolView& pool,
                                      const Tensor& out);
  // Runs the picked sequences (pack_attention has checked their tables) through cuDNN.
  bool run_cudnn(const Tensor& q, std::span<const AttentionSeq> seqs, const AttentionParams& p,
                 const KVPoolView& pool, Tensor& out, float* lse);
  void attention_scores(const Tensor& q, std::span<const AttentionSeq> seqs,
                        const AttentionParams& p, const KVPoolView& pool,
                        std::span<float* const> out, int64_t out_stride) override;
  void argmax_rows(const Tensor& x, int32_t* out) override;
  void sample_rows(const Tensor& x, std::span<const float> inv_temperature,
                   std::span<const double> uniform, int32_t* out) override;

  // Steps in flight: the picks stay in a device set, a copy follows them to pinned host
  // memory, and nothing waits.
  void sample_rows_kept(const Tensor& x, std::span<const float> inv_temperature,
                        std::span<const double> uniform, int set, int64_t first) override;
  void fetch_picks(int set, int64_t n, int32_t* out) override;
  void embed_with_picks(const Tensor& table, std::span<const int32_t> ids,
                        std::span<const int32_t> pick_index, int set, Tensor& out) override;
  bool prefers_overlapped_steps() const override { return true; }

  void top_candidates(const Tensor& x, int k, std::span<const float> inv_temperature,
                      float* values, int32_t* ids, double* whole_mass) override;
  void reserve_row_sort(int64_t cols) override { sort_scratch_.get(cuda::row_sort_scratch_bytes(cols)); }
  void sorted_prefix(const Tensor& x, std::span<const int32_t> rows, int64_t n, float* values,
                     int32_t* ids) override;
  void draw_sorted_rows(const Tensor& x, std::span<const int32_t> rows,
                        std::span<const SortedDraw> draws, int32_t* out) override;
  void kv_positions(const KVPoolView& pool, std::span<const int32_t> blocks, int64_t n_entries,
                    int32_t* out) override;
  void attention_scores_to(const Tensor& q, std::span<const AttentionSeq> seqs,
                           const AttentionParams& p, const KVPoolView& pool, Tensor& out) override;
  bool prefers_device_eviction() const override { return true; }
  static constexpr size_t kMovesPerLaunch = 4096;

  void accumulate_mass(const Tensor& q, std::span<const AttentionSeq> seqs,
                       const AttentionParams& p, KVPoolView& pool) override;

  // Steps of more rows are long enough that launches cost nothing next to them, and
  // their row counts rarely repeat.
  static constexpr int64_t kMaxReplayRows = 256;
  void run_replayable(const ReplayKey& key, const std::function<void()>& ops) override;
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

  void reserve_step_scratch(int64_t max_rows, const AttentionParams& p) override;
  void evict(std::span<const EvictTask> tasks, const Tensor* mass, KVPoolView& pool) override;
  void key_norms(const KVPoolView& pool, std::span<const int32_t> blocks, int64_t n_entries,
                 float* out) override;

 private:
  void* device_alloc(size_t n);
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
  static void check_ids(std::span<const int32_t> ids, int64_t n, const char* what);
  // sample_rows' picks to d (device), stream-ordered: argmax where no row has a temperature.
  void pick_rows_to(const Tensor& x, std::span<const float> inv_temperature,
                    std::span<const double> uniform, int32_t* d);
  // Concatenates host spans into one staging put; returns the device copy.
  const int32_t* put_ints(std::initializer_list<std::span<const int32_t>> parts);
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
  static bool scores_two_pass();
  // The last attention() call left each query vector's log2-sum-exp in lse_ (flash path);
  // a scoring call that lse_memo_ says covers the same rows and entries reads them.
  void use_lse(const Tensor& q, std::span<const AttentionSeq> seqs, const AttentionParams& p,
               cuda::AttentionLaunch& a);

  // The (cos, sin) table of these positions: every layer of a step rotates the same
  // positions, so it is computed when the positions (or frequencies) change, not per call.
  const float2* rope_table(std::span<const int32_t> pos, const RopeParams& p);
  // inv_freq is uploaded once per distinct RopeParams content.
  const float* inv_freq(const RopeParams& p);
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
  std::unique_ptr<GateUpSwiglu> gate_up_;
  std::unique_ptr<Staging> staging_;
  std::unique_ptr<ReplayGraphs> replay_;
  std::unordered_set<void*> owned_;
  std::vector<RopeEntry> ropes_;
  // Packs the call's metadata (AttentionWorkPacker) for put_attention_work(); the launch gets
  // its counts.
  cuda::AttentionLaunch pack_attention(const Tensor& q, std::span<const AttentionSeq> seqs,
                                       const AttentionParams& p, const KVPoolView& pool,
                                       int small, int big, int64_t small_max,
                                       const std::vector<char>* skip = nullptr);
  AttentionWorkPacker packer_;
  EvictWorkPacker evict_packer_;

  std::vector<int32_t> rope_pos_;
  const float* rope_inv_ = nullptr;
  int rope_half_ = 0;
  const float2* rope_table_at_ = nullptr;
  DeviceBuffer rope_table_, lse_;
  AttentionSumsMemo lse_memo_;
  std::unique_ptr<cuda::CudnnAttention> cudnn_;  // null: prefill attention on our kernel
  std::unique_ptr<cuda::CudnnSwiglu> cudnn_swiglu_;  // null: the stacked product, then swiglu
  int64_t cudnn_swiglu_rows_ = 1024;  // from this many rows (BATCHMAX_CUDA_CUDNN_SWIGLU_ROWS)
  cudaStream_t cudnn_stream_ = nullptr;
  cudaEvent_t cudnn_fork_ = nullptr, cudnn_join_ = nullptr;
  int cudnn_min_rows_ = 64;
  bool fuse_rope_store_ = true;
  // matmul_add_rms_norm adds into the residual inside the product from this many rows.
  int64_t residual_gemm_rows_ = 1024;
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

}  // namespace batchmax::cuda
