// cuDNN SDPA over the KV pool (cudnn_attention.h). One cuDNN "batch" entry per
// (sequence, KV head): our block tables are per head, cuDNN's page table per batch entry.
// Queries and outputs are addressed in place through ragged offsets (one per entry); if
// this cuDNN has no plan for that, they are gathered into a padded buffer instead.
#include "backend/cuda/cudnn_attention.h"

#include <dlfcn.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <list>
#include <vector>

#include <cudnn_frontend.h>

#include "backend/sdpa_groups.h"
#include "core/error.h"

// The frontend reaches cuDNN through this handle (NV_CUDNN_FRONTEND_USE_DYNAMIC_LOADING).
namespace cudnn_frontend {
void* cudnn_dlhandle = nullptr;
}

namespace batchmax::cuda {
namespace {

namespace fe = cudnn_frontend;

enum Uid : int64_t { kQ = 1, kK, kV, kO, kStats, kSeqQ, kSeqKV, kPageK, kPageV, kOffQ, kOffO };

// Dimensions a plan is built for; calls round up to them (fewer plans, each a few ms to
// build).
struct PlanKey {
  int64_t entries, s_q, pages, group, head_dim, n_blocks, block_tokens, q_stride, o_stride;
  float scale;
  bool ragged;
  int64_t s_kv;  // > 0: K/V gathered to [entry][s_kv][head_dim]; 0: read through the pages
  bool operator==(const PlanKey&) const = default;
};

struct Plan {
  PlanKey key;
  std::shared_ptr<fe::graph::Graph> graph;  // null: cuDNN has no plan for this key
  int64_t workspace = 0;
};

bool env_off(const char* name) {
  const char* e = std::getenv(name);
  return e && std::strcmp(e, "0") == 0;
}

class CudnnAttentionImpl final : public CudnnAttention {
 public:
  CudnnAttentionImpl(cudnnHandle_t h, int64_t version, bool force_gather, bool paged_kv)
      : handle_(h), version_(version), ragged_ok_(!force_gather), paged_kv_(paged_kv) {}
  ~CudnnAttentionImpl() override { fe::detail::destroy_handle(handle_); }

  bool run(const SdpaCall& c, const PutInts& put, const Scratch& scratch) override {
    if (c.entries.empty()) return true;
    const std::vector<Group> groups = split(c);
    // Every group's plan before anything is launched: false (the caller's kernel takes the
    // call) only while nothing of it runs on cuDNN's stream.
    std::vector<Ready> ready(groups.size());
    for (size_t i = 0; i < groups.size(); ++i)
      if (!plan_for(c, groups[i], ready[i])) return false;
    // Every group's metadata in one put: the call's last put (see run_cudnn in
    // cuda_backend_attention.cu), so nothing recycles staging that cuDNN has yet to read.
    std::vector<int32_t>& m = meta_;
    m.clear();
    std::vector<size_t> at;
    for (const Group& g : groups) {
      at.push_back(m.size());
      if (!append_meta(c, g, m)) return false;
    }
    const int32_t* d_all = put(std::span<const int32_t>(m));
    for (size_t i = 0; i < groups.size(); ++i)
      run_group(c, groups[i], ready[i], d_all + at[i], scratch);
    return true;
  }

  size_t scratch_bound(int64_t rows, int64_t entries, int n_heads, int head_dim) const override {
    // Padding to a power of two at most doubles the rows; the gathered layout holds q and out.
    const size_t padded = size_t(2 * rows + 64 * entries) * size_t(n_heads);
    const size_t gathered_q = ragged_ok_ ? 0 : 2 * padded * size_t(head_dim) * 2;
    return padded * sizeof(float) + gathered_q + (paged_kv_ ? 0 : dense_kv_cap()) + max_workspace_ +
           (1 << 20);
  }

  std::string describe() const override {
    return "cuDNN " + std::to_string(version_) + " (" +
           (ragged_ok_ ? "rows in place" : "rows gathered") + ", " +
           (paged_kv_ ? "paged K/V" : "dense K/V") + ")";
  }

  void set_stream(cudaStream_t s) {
    stream_ = s;
    fe::detail::set_stream(handle_, s);
  }

 private:
  // Consecutive entries of a call that run as one cuDNN call: S (padded query rows) and T
  // (page-table width) over its entries; s_kv > 0 when K/V are gathered dense.
  struct Group {
    int begin = 0, end = 0;
    int64_t S = 0, T = 0, s_kv = 0;
  };

  // cuDNN reads dense K/V on its Hopper (wgmma) kernel and pages on an Ampere (wmma) one:
  // on an H100, 85 us for 1 x 512 queries over 4096 keys dense against 652 us for 4 x 512
  // paged (bench/results/rope_store_2026-11-27/ncu_attention_kernels.txt). So a call whose
  // dense K/V would pass the reserved cap runs as groups of entries that each fit it
  // (sdpa_groups.h); paged as one group only with BATCHMAX_CUDA_CUDNN_KV=paged, or when an
  // entry alone passes the cap.
  std::vector<Group> split(const SdpaCall& c) const {
    std::vector<int32_t> kv(c.entries.size());
    for (size_t b = 0; b < kv.size(); ++b) kv[b] = c.entries[b].entries;
    std::vector<Group> out;
    for (const SdpaGroup& sg : sdpa_dense_groups(kv, c.head_dim, dense_kv_cap(), paged_kv_)) {
      Group g{sg.begin, sg.end, 0, 0, sg.s_kv};
      int64_t max_q = 0, max_blocks = 1;
      for (int b = g.begin; b < g.end; ++b) {
        max_q = std::max<int64_t>(max_q, c.entries[b].n_q);
        max_blocks = std::max<int64_t>(max_blocks, int64_t(c.entries[b].blocks.size()));
      }
      g.S = round_up_pow2(max_q, 64);
      g.T = round_up_pow2(max_blocks, 16);
      out.push_back(g);
    }
    return out;
  }

  // Host metadata of a group, appended to m: seq_q, seq_kv, q_begin, kv_head, offsets q
  // (B+1), offsets o (B+1), then the page table [B][T] (unused pages repeat the first: any
  // valid block). False where an entry does not fit cuDNN's (or this layout's) limits.
  static bool append_meta(const SdpaCall& c, const Group& g, std::vector<int32_t>& m) {
    const int B = g.end - g.begin;
    const int64_t T = g.T;
    const int group = c.n_heads / c.n_kv_heads;
    const size_t base = m.size();
    m.resize(base + size_t(4 * B + 2 * (B + 1)) + size_t(B) * T, 0);
    int32_t *seq_q = m.data() + base, *seq_kv = seq_q + B, *q_begin = seq_kv + B, *kvh = q_begin + B;
    int32_t *off_q = kvh + B, *off_o = off_q + B + 1, *pages = off_o + B + 1;
    for (int b = 0; b < B; ++b) {
      const SdpaEntry& e = c.entries[g.begin + b];
      if (e.n_q <= 0 || e.entries < e.n_q || int64_t(e.entries) > int64_t(e.blocks.size()) * c.block_tokens)
        return false;
      seq_q[b] = e.n_q;
      seq_kv[b] = e.entries;
      q_begin[b] = e.q_begin;
      kvh[b] = e.kv_head;
      const int64_t col = int64_t(e.kv_head) * group * c.head_dim;
      const int64_t oq = int64_t(e.q_begin) * c.q_row_stride + col;
      const int64_t oo = int64_t(e.q_begin) * c.out_row_stride + col;
      if (oq > INT32_MAX || oo > INT32_MAX) return false;
      off_q[b] = int32_t(oq);
      off_o[b] = int32_t(oo);
      int32_t* row = pages + int64_t(b) * T;
      for (int64_t i = 0; i < T; ++i) row[i] = e.blocks[size_t(i < int64_t(e.blocks.size()) ? i : 0)];
    }
    off_q[B] = off_q[B - 1];
    off_o[B] = off_o[B - 1];
    return true;
  }

  // A group's plan, held for its launch (the cache may drop its entry meanwhile).
  struct Ready {
    PlanKey key{};
    std::shared_ptr<fe::graph::Graph> graph;
    int64_t workspace = 0;
  };
  // False when cuDNN has no plan for the group's shape.
  bool plan_for(const SdpaCall& c, const Group& g, Ready& r) {
    const bool dense = g.s_kv > 0;
    // Dense plans do not depend on the pool or the page count: zeros, so they are shared.
    PlanKey key{g.end - g.begin, g.S, dense ? 0 : g.T, c.n_heads / c.n_kv_heads, c.head_dim,
                dense ? 0 : c.n_blocks, dense ? 0 : c.block_tokens, c.q_row_stride,
                c.out_row_stride, c.scale, ragged_ok_, g.s_kv};
    const Plan* plan = find_or_build(key);
    if (!plan->graph && key.ragged) {  // no plan for in-place rows: gather them
      ragged_ok_ = false;
      key.ragged = false;
      plan = find_or_build(key);
    }
    if (!plan->graph) return false;
    r = Ready{key, plan->graph, plan->workspace};
    return true;
  }

  // One group through cuDNN; d: its metadata on the device (append_meta's layout).
  void run_group(const SdpaCall& c, const Group& g, const Ready& r, const int32_t* d,
                 const Scratch& scratch) {
    const int B = g.end - g.begin;
    const int64_t S = g.S, T = g.T;
    const int group = c.n_heads / c.n_kv_heads;
    const PlanKey& key = r.key;
    const int32_t *d_seq_q = d, *d_seq_kv = d + B, *d_q_begin = d + 2 * B, *d_kvh = d + 3 * B;
    const int32_t *d_off_q = d + 4 * B, *d_off_o = d_off_q + B + 1, *d_pages = d_off_o + B + 1;
    const size_t stats_bytes = size_t(B) * group * S * sizeof(float);
    const size_t packed_bytes = key.ragged ? 0 : size_t(B) * S * group * c.head_dim * 2;
    const size_t kv_bytes = key.s_kv ? dense_kv_bytes(B, key.s_kv, c.head_dim) / 2 : 0;
    const size_t kv_at = (stats_bytes + 2 * packed_bytes + 255) / 256 * 256;
    const size_t ws_at = kv_at + 2 * kv_bytes;
    char* base = static_cast<char*>(scratch(ws_at + size_t(r.workspace)));
    float* stats = reinterpret_cast<float*>(base);
    void* q_ptr = const_cast<void*>(c.q);
    void* o_ptr = c.out;
    if (!key.ragged) {
      q_ptr = base + stats_bytes;
      o_ptr = base + stats_bytes + packed_bytes;
      launch_sdpa_gather(c.q, c.q_row_stride, B, group, int(S), c.head_dim, d_q_begin, d_seq_q,
                         d_kvh, q_ptr, stream_);
    }
    void* k_ptr = const_cast<void*>(c.k_pool);
    void* v_ptr = const_cast<void*>(c.v_pool);
    if (key.s_kv) {
      k_ptr = base + kv_at;
      v_ptr = base + kv_at + kv_bytes;
      launch_sdpa_gather_kv(c.k_pool, c.v_pool, d_pages, int(T), d_seq_kv, B, c.block_tokens,
                            c.head_dim, int(key.s_kv), k_ptr, v_ptr, stream_);
    }
    std::unordered_map<int64_t, void*> pack = {
        {kQ, q_ptr},
        {kK, k_ptr},
        {kV, v_ptr},
        {kO, o_ptr},
        {kStats, stats},
        {kSeqQ, const_cast<int32_t*>(d_seq_q)},
        {kSeqKV, const_cast<int32_t*>(d_seq_kv)}};
    if (!key.s_kv) {
      pack[kPageK] = const_cast<int32_t*>(d_pages);
      pack[kPageV] = const_cast<int32_t*>(d_pages);
    }
    if (key.ragged) {
      pack[kOffQ] = const_cast<int32_t*>(d_off_q);
      pack[kOffO] = const_cast<int32_t*>(d_off_o);
    }
    auto st = r.graph->execute(handle_, pack, base + ws_at);
    if (st.is_bad()) throw Error("cuDNN SDPA failed to run: " + st.get_message());
    if (!key.ragged)
      launch_sdpa_scatter(o_ptr, B, group, int(S), c.head_dim, d_q_begin, d_seq_q, d_kvh, c.out,
                          c.out_row_stride, stream_);
    if (c.lse)
      launch_sdpa_stats_to_lse(stats, B, group, int(S), d_q_begin, d_seq_q, d_kvh, c.lse,
                               c.lse_stride, stream_);
  }

  const Plan* find_or_build(const PlanKey& k) {
    for (auto it = plans_.begin(); it != plans_.end(); ++it)
      if (it->key == k) {
        plans_.splice(plans_.begin(), plans_, it);  // most recent first
        return &plans_.front();
      }
    Plan p{k, build(k), 0};
    if (p.graph) {
      if (p.graph->get_workspace_size(p.workspace).is_bad()) p.graph.reset();
      max_workspace_ = std::max<size_t>(max_workspace_, size_t(p.workspace));
    }
    plans_.push_front(std::move(p));
    if (plans_.size() > kMaxPlans) plans_.pop_back();
    return &plans_.front();
  }

  std::shared_ptr<fe::graph::Graph> build(const PlanKey& k) {
    using TA = fe::graph::Tensor_attributes;
    auto g = std::make_shared<fe::graph::Graph>();
    g->set_io_data_type(fe::DataType_t::BFLOAT16)
        .set_intermediate_data_type(fe::DataType_t::FLOAT)
        .set_compute_data_type(fe::DataType_t::FLOAT);
    const int64_t B = k.entries, H = k.group, S = k.s_q, D = k.head_dim, T = k.pages;
    auto ints = [&](const char* name, int64_t uid, std::vector<int64_t> dim) {
      std::vector<int64_t> stride(4, 1);
      for (int i = 2; i >= 0; --i) stride[i] = stride[i + 1] * dim[i + 1];
      return g->tensor(TA().set_name(name).set_uid(uid).set_dim(dim).set_stride(stride)
                           .set_data_type(fe::DataType_t::INT32));
    };
    // Rows in place: entry b's (head g, row r) at offset[b] + g * D + r * row_stride.
    // Gathered: [b][r][g][d].
    const std::vector<int64_t> q_stride =
        k.ragged ? std::vector<int64_t>{S * k.q_stride, D, k.q_stride, 1}
                 : std::vector<int64_t>{S * H * D, D, H * D, 1};
    const std::vector<int64_t> o_stride =
        k.ragged ? std::vector<int64_t>{S * k.o_stride, D, k.o_stride, 1}
                 : std::vector<int64_t>{S * H * D, D, H * D, 1};
    auto Q = g->tensor(TA().set_name("Q").set_uid(kQ).set_dim({B, H, S, D}).set_stride(q_stride));
    const std::vector<int64_t> cache_dim{k.n_blocks, 1, k.block_tokens, D};
    const std::vector<int64_t> cache_stride{k.block_tokens * D, k.block_tokens * D, D, 1};
    const std::vector<int64_t> dense_dim{B, 1, k.s_kv, D};
    const std::vector<int64_t> dense_stride{k.s_kv * D, k.s_kv * D, D, 1};
    auto K = g->tensor(TA().set_name("K").set_uid(kK).set_dim(k.s_kv ? dense_dim : cache_dim)
                           .set_stride(k.s_kv ? dense_stride : cache_stride));
    auto V = g->tensor(TA().set_name("V").set_uid(kV).set_dim(k.s_kv ? dense_dim : cache_dim)
                           .set_stride(k.s_kv ? dense_stride : cache_stride));
    auto seq_q = ints("seq_q", kSeqQ, {B, 1, 1, 1});
    auto seq_kv = ints("seq_kv", kSeqKV, {B, 1, 1, 1});
    std::shared_ptr<TA> off_o;
    if (k.ragged) {
      Q->set_ragged_offset(ints("off_q", kOffQ, {B + 1, 1, 1, 1}));
      off_o = ints("off_o", kOffO, {B + 1, 1, 1, 1});
    }
    auto opts = fe::graph::SDPA_attributes()
                    .set_name("prefill")
                    .set_generate_stats(true)
                    .set_attn_scale(k.scale)
                    .set_causal_mask_bottom_right(true)
                    .set_padding_mask(true)
                    .set_seq_len_q(seq_q)
                    .set_seq_len_kv(seq_kv);
    if (!k.s_kv)
      opts.set_paged_attention_k_table(ints("page_k", kPageK, {B, 1, T, 1}))
          .set_paged_attention_v_table(ints("page_v", kPageV, {B, 1, T, 1}))
          .set_paged_attention_max_seq_len_kv(int(T * k.block_tokens));
    auto [O, stats] = g->sdpa(Q, K, V, opts);
    O->set_output(true).set_uid(kO).set_dim({B, H, S, D}).set_stride(o_stride);
    if (off_o) O->set_ragged_offset(off_o);
    stats->set_output(true).set_uid(kStats).set_data_type(fe::DataType_t::FLOAT)
        .set_dim({B, H, S, 1}).set_stride({H * S, S, 1, 1});
    fe::error_t st;
    try {
      st = g->build(handle_, {fe::HeurMode_t::A});
    } catch (const std::exception& e) {
      st = {fe::error_code_t::GRAPH_NOT_SUPPORTED, e.what()};
    }
    if (st.is_bad()) {
      if (std::getenv("BATCHMAX_CUDA_CUDNN_VERBOSE"))
        std::fprintf(stderr, "[cudnn] no plan (%s, B=%lld S=%lld T=%lld): %s\n",
                     k.ragged ? "rows in place" : "gathered", (long long)B, (long long)S,
                     (long long)T, st.get_message().c_str());
      return nullptr;
    }
    return g;
  }

  // Dense K/V of one cuDNN call at most this (scratch the plan reserves); larger calls are
  // split (split()). BATCHMAX_CUDA_CUDNN_DENSE_CAP_MIB=n lowers it (tests: many groups).
  static constexpr size_t kDenseKvCap = size_t(32) << 20;
  static size_t dense_cap_from_env() {
    const char* e = std::getenv("BATCHMAX_CUDA_CUDNN_DENSE_CAP_MIB");
    const long mib = e ? std::atol(e) : 0;
    return mib > 0 ? std::min(size_t(mib) << 20, kDenseKvCap) : kDenseKvCap;
  }
  size_t dense_kv_cap() const { return dense_cap_; }
  const size_t dense_cap_ = dense_cap_from_env();
  static constexpr size_t kMaxPlans = 64;
  cudnnHandle_t handle_;
  int64_t version_;
  bool ragged_ok_;
  bool paged_kv_;
  cudaStream_t stream_ = nullptr;
  size_t max_workspace_ = 0;
  std::list<Plan> plans_;
  std::vector<int32_t> meta_;
};

}  // namespace

int64_t load_cudnn(std::string& why) {
  if (!fe::cudnn_dlhandle) {
    for (const char* name : {"libcudnn.so.9", "libcudnn.so"})
      if ((fe::cudnn_dlhandle = dlopen(name, RTLD_NOW | RTLD_GLOBAL))) break;
    if (!fe::cudnn_dlhandle) {
      why = "libcudnn.so.9 not found";
      return 0;
    }
  }
  try {
    return fe::detail::get_backend_version();
  } catch (const std::exception& e) {
    why = std::string("cuDNN unusable: ") + e.what();
    return 0;
  }
}

std::unique_ptr<CudnnAttention> CudnnAttention::open(cudaStream_t stream, std::string& why) {
  if (env_off("BATCHMAX_CUDA_CUDNN")) {
    why = "BATCHMAX_CUDA_CUDNN=0";
    return nullptr;
  }
  const int64_t version = load_cudnn(why);
  if (version <= 0) return nullptr;
  if (version < 90500) {  // paged K/V in SDPA came with 9.5
    why = "cuDNN " + std::to_string(version) + " is older than 9.5";
    return nullptr;
  }
  cudnnHandle_t h = nullptr;
  if (fe::detail::create_handle(&h) != CUDNN_STATUS_SUCCESS) {
    why = "cudnnCreate failed";
    return nullptr;
  }
  const char* layout = std::getenv("BATCHMAX_CUDA_CUDNN_LAYOUT");
  const char* kv = std::getenv("BATCHMAX_CUDA_CUDNN_KV");  // "paged": no K/V gather
  auto impl = std::make_unique<CudnnAttentionImpl>(h, version, layout && std::strcmp(layout, "gather") == 0,
                                                   kv && std::strcmp(kv, "paged") == 0);
  impl->set_stream(stream);
  return impl;
}

}  // namespace batchmax::cuda
