#pragma once
// The small interface the model and the KV cache call. A backend owns its memory
// (host for CPU, device for CUDA) and runs the ops of a transformer step on it.
// Backends know nothing of policies or scheduling: they run the kernels asked of them.
#include <compare>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "backend/row_sampling.h"
#include "format/tensor_types.h"

namespace batchmax {

// A 2-D tensor in a backend's memory: `rows` rows of `cols` elements of `type`,
// row-major, consecutive rows `row_stride` bytes apart. A view: it owns nothing.
struct Tensor {
  void* data = nullptr;
  GgmlType type = GgmlType::F32;
  int64_t rows = 0;
  int64_t cols = 0;
  size_t row_stride = 0;

  float* f32() const { return static_cast<float*>(data); }
  float* row_f32(int64_t r) const {
    return reinterpret_cast<float*>(static_cast<char*>(data) + r * row_stride);
  }
  const void* row(int64_t r) const { return static_cast<const char*>(data) + r * row_stride; }
  size_t bytes() const { return rows * row_stride; }
  // Rows [begin, begin + n) of this tensor.
  Tensor slice_rows(int64_t begin, int64_t n) const {
    Tensor t = *this;
    t.data = static_cast<char*>(data) + begin * row_stride;
    t.rows = n;
    return t;
  }
};

// Rotary embedding parameters. `inv_freq` has head_dim/2 entries, frequency scaling
// (Llama-3 style) already applied by the model.
enum class RopeStyle { Interleaved /* pairs (2i, 2i+1): llama GGUF */, Neox /* (i, i+d/2) */ };
struct RopeParams {
  RopeStyle style = RopeStyle::Interleaved;
  int head_dim = 0;
  int rotary_dim = 0;  // leading dims rotated (== head_dim for llama/qwen2)
  std::vector<float> inv_freq;
};

// The KV pool: fixed-size blocks of `block_tokens` entries of one (layer, KV head) of one
// sequence. Slot s = block * block_tokens + offset. K and V of a slot are head_dim
// elements; `pos` holds each slot's true token position (keys are stored after RoPE).
struct KVPoolView {
  void* k = nullptr;
  void* v = nullptr;
  int32_t* pos = nullptr;
  // Per slot: the attention mass the entry has received so far (h2o on the backend), or
  // null when the pool was made without it. kv_store() zeroes it, moves carry it.
  float* mass = nullptr;
  // Block tables kept on the backend across steps (Backend::alloc_block_tables), or null:
  // an AttentionSeq head with a row r >= 0 has its block ids at tables[r...].
  int32_t* tables = nullptr;
  int64_t table_ints = 0;
  GgmlType type = GgmlType::F32;
  int block_tokens = 16;
  int head_dim = 0;
  int64_t n_blocks = 0;
};

// A kv_store() slot given by the pool's table space: the block at place `place` of
// KVPoolView::tables, entry `entry` in it. The host then need not read the block id (a
// cache miss a head, 4096 a layer at 512 sequences). Valid while place * block_tokens
// stays below 2^31 - 2 (table_slot_codes_fit).
inline int32_t table_slot_code(int64_t place, int64_t entry, int block_tokens) {
  return int32_t(-2 - (place * block_tokens + entry));
}
// The inverse: the place (an index into KVPoolView::tables) and the entry in its block.
struct TableSlot {
  int64_t place, entry;
};
inline TableSlot decode_table_slot(int32_t code, int block_tokens) {
  const int64_t u = -2 - int64_t(code);
  return {u / block_tokens, u % block_tokens};
}
inline bool table_slot_codes_fit(const KVPoolView& p) {
  return p.tables && p.table_ints <= (int64_t(INT32_MAX) - 2) / p.block_tokens;
}
// Throws Error naming `op` on a kv_store() slot outside the pool or its table space.
void check_kv_slot(const KVPoolView& p, int32_t slot, const char* op);

// The cache entries that one sequence's queries attend to in one layer: per KV head,
// the block table and the number of valid entries (entries are packed from slot 0).
struct AttentionSeq {
  int64_t q_begin = 0;   // first row of this sequence in the step's Q tensor
  int64_t n_q = 0;       // number of query rows
  const int32_t* q_pos = nullptr;  // positions of the queries (host memory, n_q)
  std::vector<std::span<const int32_t>> head_blocks;  // per KV head: block ids
  std::vector<int32_t> head_entries;                   // per KV head: entries in use
  // Per KV head, or empty: where the same block ids already lie in KVPoolView::tables
  // (-1: they do not, the backend takes head_blocks). A backend that keeps the tables
  // then sends no ids (at 512 sequences they were ~680 KB a layer to pack and copy).
  std::vector<int32_t> head_rows;
};

struct AttentionParams {
  int n_heads = 0;
  int n_kv_heads = 0;
  int head_dim = 0;
  float scale = 0;  // usually 1/sqrt(head_dim)
  // The caller vouches that each sequence's queries have their own keys as the last n_q
  // entries of every head's table, in query order, and that every earlier entry is older
  // than the first query (true right after the step's kv store, before any eviction).
  // The position mask is then the bottom-right causal mask, which lets a backend hand
  // the call to a library kernel (CUDA: cuDNN's SDPA). Backends may ignore it.
  bool queries_newest = false;
};

// Eviction done where the pool lives (Backend::evict): the policies whose scores need no
// state across steps. Each matches its host policy (src/kv/policies/) exactly.
enum class EvictScore : int32_t {
  Mass = 0,        // tova: the observed attention mass
  PooledMass = 1,  // snapkv: the mass max-pooled over `pool_kernel` neighbouring entries
  Recency = 2,     // window: the entry's position
  NegKeyNorm = 3,  // knorm: minus the L2 norm of the key
  Random = 4,      // random: a hash of (seed, position)
  Accumulated = 5, // h2o: the pool's per-slot mass (accumulate_mass), no mass row
};

// One (sequence, layer, KV head) to shrink from n_entries to `keep` entries by
// select_keep()'s rule (kv/eviction_policy.h): positions < sinks and the last `window`
// entries first, then the best scores (ties: the later entry); the kept entries are
// packed to the front of the head's blocks in their order.
struct EvictTask {
  std::span<const int32_t> blocks;
  int32_t n_entries = 0;
  int32_t keep = 0;
  EvictScore score = EvictScore::PooledMass;
  int32_t pool_kernel = 1;  // PooledMass: odd width
  int32_t sinks = 0;
  int32_t window = 0;
  uint64_t seed = 0;        // Random
  int64_t mass_row = -1;    // Mass/PooledMass: row of the mass tensor (n_entries values)
};

// Names a run of ops that a step repeats: the owner (a model), its workspace
// generation, which run of the step (a layer) and the step's rows.
struct ReplayKey {
  const void* owner = nullptr;
  int64_t generation = 0;
  int64_t part = 0;
  int64_t rows = 0;
  auto operator<=>(const ReplayKey&) const = default;
};

// What run_replayable() did so far: runs issued op by op, records made, records replayed.
struct ReplayCounts {
  int64_t eager = 0, recorded = 0, replayed = 0;
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual std::string name() const = 0;
  // Element type of activations (workspace tensors); logits are always F32.
  virtual GgmlType activation_type() const { return GgmlType::F32; }

  // Memory. Tensors from alloc() live until free() or the backend's end.
  virtual Tensor alloc(GgmlType type, int64_t rows, int64_t cols) = 0;
  virtual void free(Tensor& t) = 0;
  // A weight read from a mapped GGUF tensor of `rows` x `cols` (GGUF dims[0] == cols).
  // The CPU backend uses the mapped bytes in place; others copy or convert.
  virtual Tensor load_weight(GgmlType type, const void* data, int64_t rows, int64_t cols) = 0;
  virtual void upload(const void* host, Tensor& dst) = 0;        // dst.bytes() bytes
  virtual void download(const Tensor& src, void* host) = 0;      // src.bytes() bytes
  virtual void synchronize() {}
  // Bytes this backend holds now / at most: tensors, copied weights, KV pools, scratch.
  // (What the memory planner measures; weights used in place from a mapped file are
  // not included, see maps_weights().)
  virtual int64_t allocated_bytes() const = 0;
  virtual int64_t peak_allocated_bytes() const = 0;
  // True when load_weight() uses the mapped file's bytes in place (no copy).
  virtual bool maps_weights() const { return false; }
  // Fills a contiguous F32 or activation-type tensor with offset + scale * u, u uniform
  // in [-1, 1) from a hash of (seed, element index): the same values on every backend,
  // generated where the tensor lives (dummy weights; an 8B model never touches the host).
  virtual void fill_random(Tensor& t, uint64_t seed, float scale, float offset = 0) = 0;

  // Ops. Activations are F32 on the CPU backend; weights may be any dequantizable type.
  // out[r] = table[ids[r]] (ids in host memory)
  virtual void embed(const Tensor& table, std::span<const int32_t> ids, Tensor& out) = 0;
  // out = x / rms(x) * w, per row
  virtual void rms_norm(const Tensor& x, const Tensor& w, float eps, Tensor& out) = 0;
  // out[n, m] = x[n, k] . w[m, k]^T (+ bias[m]); bias may be null
  virtual void matmul(const Tensor& x, const Tensor& w, const Tensor* bias, Tensor& out) = 0;
  // In place on x[n, n_heads * head_dim], positions pos[n] (host memory)
  virtual void rope(Tensor& x, int n_heads, std::span<const int32_t> pos, const RopeParams& p) = 0;
  // out = silu(gate) * up
  virtual void swiglu(const Tensor& gate, const Tensor& up, Tensor& out) = 0;
  // The MLP's gate and up products and their swiglu: gate_up = x . w_gate_up^T, where
  // w_gate_up stacks the gate rows over the up rows and gate / up are gate_up's two column
  // halves (the stacked layout of prefers_stacked_projections), then out = swiglu(gate, up).
  // Backends may fuse it, leaving gate_up unwritten; out then holds the swiglu of the
  // unrounded products.
  virtual void gate_up_swiglu(const Tensor& x, const Tensor& w_gate_up, Tensor& gate_up,
                              const Tensor& gate, const Tensor& up, Tensor& out) {
    matmul(x, w_gate_up, nullptr, gate_up);
    swiglu(gate, up, out);
  }
  // x += y
  virtual void add(Tensor& x, const Tensor& y) = 0;
  // x += y, then out = x / rms(x) * w (the residual add and the next norm; out may be y).
  // Backends may fuse it; the result equals add() then rms_norm().
  virtual void add_rms_norm(Tensor& x, const Tensor& y, const Tensor& w, float eps, Tensor& out) {
    add(x, y);
    rms_norm(x, w, eps, out);
  }
  // x += a . w^T, then out = x / rms(x) * norm_w: a product into the residual and the
  // next norm (out must not alias a, w or x). Backends may fold the add into the
  // product, rounding once; the default rounds the product, then add_rms_norm().
  virtual void matmul_add_rms_norm(const Tensor& a, const Tensor& w, Tensor& x,
                                   const Tensor& norm_w, float eps, Tensor& out) {
    matmul(a, w, nullptr, out);
    add_rms_norm(x, out, norm_w, eps, out);
  }
  // out[i] = x[rows[i]]
  virtual void gather_rows(const Tensor& x, std::span<const int32_t> rows, Tensor& out) = 0;
  // out[r] (host memory) = index of the largest value of F32 row r, the first on ties
  // (greedy sampling without taking the logits to the host).
  virtual void argmax_rows(const Tensor& x, int32_t* out) = 0;
  // out[r] (host memory) = pick_row(row r, inv_temperature[r], uniform[r]) of
  // backend/row_sampling.h: the argmax where inv_temperature[r] <= 0, else a draw at that
  // temperature with the uniform the host drew. Sampled requests' logits stay where they
  // are; the token is the one the host's Sampler would pick from the same row.
  virtual void sample_rows(const Tensor& x, std::span<const float> inv_temperature,
                           std::span<const double> uniform, int32_t* out) = 0;
  // Picks kept on the backend, for steps in flight: sample_rows into the backend's pick
  // set `set` (0 or 1), rows [first, first + x.rows); a later step's embed_with_picks
  // reads them there and fetch_picks brings them to the host once they are done. A set
  // is rewritten only after its picks have been fetched. These defaults pick at once and
  // keep the picks on the host (a backend that runs ops in order on the host needs no
  // more); the CUDA backend keeps them on the GPU and copies them back asynchronously.
  virtual void sample_rows_kept(const Tensor& x, std::span<const float> inv_temperature,
                                std::span<const double> uniform, int set, int64_t first);
  // out[0, n) = picks [0, n) of `set`, waiting for them where they are still computed.
  virtual void fetch_picks(int set, int64_t n, int32_t* out);
  // embed(), where pick_index[r] >= 0 takes row r's token id from pick pick_index[r] of
  // `set` instead of ids[r].
  virtual void embed_with_picks(const Tensor& table, std::span<const int32_t> ids,
                                std::span<const int32_t> pick_index, int set, Tensor& out);
  // For top-k / top-p sampling: the k largest entries of each F32 row r, sorted by value
  // (descending) then index (ascending), to values/ids (host memory, k per row), and
  // whole_mass[r] = sum over the row of exp(double((x - max) * inv_temperature[r])) (0
  // where inv_temperature[r] <= 0). 1 <= k <= min(cols, kMaxTopCandidates).
  virtual void top_candidates(const Tensor& x, int k, std::span<const float> inv_temperature,
                              float* values, int32_t* ids, double* whole_mass) = 0;
  // For top-p rows whose best kMaxTopCandidates entries do not decide the draw (a wide
  // nucleus): the listed rows of the F32 logits x in top_candidates' order (value
  // descending, then index; -0 equals +0), the first n entries of each to values/ids
  // (host memory, n per listed row). 1 <= n <= cols.
  virtual void sorted_prefix(const Tensor& x, std::span<const int32_t> rows, int64_t n,
                             float* values, int32_t* ids) = 0;
  // Top-p rows whose nucleus is wider than such a prefix: each listed row sorted the same
  // way and drawn from whole by draw_sorted (backend/row_sampling.h) with draws[i]; the
  // token to out[i] (host memory). The sums may run in another order than the host's, which
  // can change a pick only where a cut falls within rounding of a boundary.
  virtual void draw_sorted_rows(const Tensor& x, std::span<const int32_t> rows,
                                std::span<const SortedDraw> draws, int32_t* out) = 0;
  // Called once with the vocabulary size while the workspace is planned, so that a
  // backend whose sorted_prefix needs scratch holds it inside the plan.
  virtual void reserve_row_sort(int64_t cols) {}

  // KV pool
  // slot_mass: also a float per slot (KVPoolView::mass) for policies that accumulate.
  virtual KVPoolView alloc_kv_pool(GgmlType type, int64_t n_blocks, int block_tokens,
                                   int head_dim, bool slot_mass = false) = 0;
  virtual void free_kv_pool(KVPoolView& pool) = 0;
  // Block tables that stay on the backend across steps (see AttentionSeq::head_rows).
  // keeps_block_tables(): whether attention reads them; alloc_block_tables() gives the
  // pool `n_ints` of table space (freed with the pool); write_block_tables() sets
  // tables[pairs[2i]] = pairs[2i + 1], ordered before every later op (host memory pairs).
  virtual bool keeps_block_tables() const { return false; }
  virtual void alloc_block_tables(KVPoolView& pool, int64_t n_ints) {}
  virtual void write_block_tables(std::span<const int32_t> pairs, KVPoolView& pool) {}
  // Writes k/v rows [n, n_kv_heads * head_dim] into the pool: row r, head h goes to
  // slot slots[r * n_kv_heads + h] with position pos[r]. slots and pos in host memory.
  // A slot of -1 is skipped; one <= -2 is table_slot_code()'s (pools with tables).
  virtual void kv_store(const Tensor& k, const Tensor& v, int n_kv_heads,
                        std::span<const int32_t> slots, std::span<const int32_t> pos,
                        KVPoolView& pool) = 0;
  // rope() of q's n_q_heads and of k's n_kv_heads at pos, then kv_store() of the rotated k
  // and of v: the rope of a layer's new queries and keys and their store in one op, which a
  // backend may fuse (one pass over q, k and v instead of three). Same results.
  virtual void rope_kv_store(Tensor& q, int n_q_heads, Tensor& k, const Tensor& v, int n_kv_heads,
                             std::span<const int32_t> slots, std::span<const int32_t> pos,
                             const RopeParams& rope, KVPoolView& pool);
  // Moves entries inside the pool: slot dst[i] <- slot src[i] (K, V and position).
  virtual void kv_move(std::span<const int32_t> src, std::span<const int32_t> dst,
                       KVPoolView& pool) = 0;
  // Causal attention (key visible iff key pos <= query pos) of q[n, n_heads*head_dim]
  // over each sequence's cache entries, out[n, n_heads*head_dim]. Query head h reads
  // KV head h / (n_heads / n_kv_heads).
  virtual void attention(const Tensor& q, std::span<const AttentionSeq> seqs,
                         const AttentionParams& p, const KVPoolView& pool, Tensor& out) = 0;
  // Attention mass for eviction policies: for each sequence, over its query rows
  // [q_begin, q_begin + n_q) (a subset of the step's queries), the softmax probability
  // each cache entry gets, averaged over the query heads of its KV head and summed over
  // the queries. out[i] (host memory) has n_kv_heads rows of `out_stride` floats; row h
  // holds head_entries[h] values.
  virtual void attention_scores(const Tensor& q, std::span<const AttentionSeq> seqs,
                                const AttentionParams& p, const KVPoolView& pool,
                                std::span<float* const> out, int64_t out_stride) = 0;
  // L2 norm of each entry's key: out (host) gets `n_entries` floats for the given blocks.
  virtual void key_norms(const KVPoolView& pool, std::span<const int32_t> blocks,
                         int64_t n_entries, float* out) = 0;
  // Positions of a head's first n_entries entries (host `out`).
  virtual void kv_positions(const KVPoolView& pool, std::span<const int32_t> blocks,
                            int64_t n_entries, int32_t* out) = 0;

  // Eviction without the host (DESIGN.md section 1, the CUDA issue's item 3):
  // attention_scores into a backend tensor of F32 rows [i * n_kv_heads + h] (cols >= the
  // entries; zeroed first), then evict() selects and compacts every task in place. The
  // caller learns nothing back: each task ends with exactly min(n_entries, keep) entries.
  virtual void attention_scores_to(const Tensor& q, std::span<const AttentionSeq> seqs,
                                   const AttentionParams& p, const KVPoolView& pool,
                                   Tensor& out) = 0;
  virtual void evict(std::span<const EvictTask> tasks, const Tensor* mass, KVPoolView& pool) = 0;
  // h2o without the host: adds the attention mass of each sequence's queries (as
  // attention_scores() computes it) to pool.mass at the slots of the entries.
  virtual void accumulate_mass(const Tensor& q, std::span<const AttentionSeq> seqs,
                               const AttentionParams& p, KVPoolView& pool) = 0;
  // Allocates now the scratch that steps of up to `max_rows` query rows with these
  // attention shapes use (attention partials, score partials, eviction keys), so the
  // memory planner measures it with the workspace; steps within the bounds reuse it.
  virtual void reserve_step_scratch(int64_t max_rows, const AttentionParams& p) {}
  // Copies src into dst (same shape and type; rows may be strided) on the backend.
  virtual void copy_rows(const Tensor& src, Tensor& dst) = 0;
  // True where one product with the Q, K and V (and gate, up) weights stacked beats
  // separate ones: the model then stacks them at load (wide GEMMs fill a GPU; launches
  // and small-N products cost more than the copy). Strided column views of the output
  // go to the ops, so every op must honour row_stride.
  virtual bool prefers_stacked_projections() const { return false; }
  // Bytes the planner leaves free for memory the runtime takes by itself after the plan
  // (the CUDA driver loads kernels and sizes per-launch local memory on first use).
  virtual int64_t runtime_reserve_bytes() const { return 0; }
  // Rows a step of `rows` rows should run its dense ops on (>= rows; the model fills the
  // rest with leftovers no real row reads): steps of nearby sizes then share a record.
  virtual int64_t padded_rows(int64_t rows) const { return rows; }
  // Tokens a forward step computes when the user does not say (EngineOptions::step_tokens
  // 0): large enough that the step's products run near the backend's peak and its fixed
  // costs (launches, small kernels, decode attention) are shared by many tokens.
  virtual int64_t preferred_step_tokens() const { return 512; }
  // Runs `ops`, which must only issue ops on backend tensors (no host spans read: the
  // positions of a rope() must be those of the step's previous rope()), and must issue
  // the same ops on the same tensors every time it runs under the same key. A backend
  // may record the run once and replay the record instead of calling `ops` (the CUDA
  // backend: a CUDA graph per key, so a decode step's dense ops cost one launch a layer).
  virtual void run_replayable(const ReplayKey& key, const std::function<void()>& ops) { ops(); }
  // Forgets the records of `owner` (its tensors are about to be freed or moved).
  virtual void drop_replays(const void* owner) {}
  virtual ReplayCounts replay_counts() const { return {}; }
  // True where evict() saves host round trips (the pool is not in host memory), so the
  // KV cache should prefer it to selecting on the host.
  virtual bool prefers_device_eviction() const { return false; }
  // True where the engine gains from launching a step before it reads the previous
  // step's tokens (EngineOptions::overlap_steps): ops queue on a device while the host
  // plans, and the host's per-step work then hides behind the device's.
  virtual bool prefers_overlapped_steps() const { return false; }

 private:
  std::vector<int32_t> kept_picks_[2];  // the defaults' pick sets
};

struct CpuBackendOptions {
  int n_threads = 0;       // 0: all hardware threads
  bool force_scalar = false;  // use the reference kernels (tests, debugging)
  // Decode matmuls (few rows) on Q8_0/Q4_0/Q4_1 weights quantise the activations to Q8
  // and use integer dot products, like llama.cpp: ~1.4x faster decode, ~1e-3 relative
  // error, and a request's tokens then depend on how many rows its step had. Off by
  // default so outputs match the float reference whatever the batch.
  bool q8_activations = false;
};
std::unique_ptr<Backend> make_cpu_backend(const CpuBackendOptions& opts = {});

}  // namespace batchmax
