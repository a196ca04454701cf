#include "model/model.h"

#include <algorithm>
#include <cmath>
#include <numbers>
#include <optional>
#include <string>

#include "core/error.h"
#include "format/gguf_reader.h"
#include "backend/row_sampling.h"
#include "backend/step_profile.h"
#include "kv/kv_cache.h"

namespace batchmax {

struct LayerWeights {
  Tensor attn_norm, wq, wk, wv, wo, bq, bk, bv, ffn_norm, w_gate, w_up, w_down;
  bool has_bias = false;
  // Backend::prefers_stacked_projections(): wq/wk/wv (and w_gate/w_up) are row views of
  // one stacked matrix each, multiplied in one product.
  Tensor wqkv, w_gate_up;
};

struct ModelWeights {
  Tensor tok_embd, output_norm, lm_head;
  std::vector<LayerWeights> layers;
  int64_t bytes = 0;
  // Tensors the model allocated itself (converted vectors, dummy weights), freed with
  // it, also when a constructor throws half-way; weights from Backend::load_weight
  // belong to the backend.
  std::vector<Tensor> owned;
  Backend& backend;
  explicit ModelWeights(Backend& b) : backend(b) {}
  ~ModelWeights() {
    for (Tensor& t : owned) backend.free(t);
  }
};

struct Model::Workspace {
  int64_t capacity = 0;  // rows
  int64_t generation = 0;  // bumped when the tensors move (keys of replayable runs)
  Tensor x;  // the residual stream
  // Views of `arena`: the per-layer buffers, dead once the last layer has run. The
  // logits (F32, a vocabulary wide) then reuse that memory, logit_rows rows at a time:
  // a step's logits all at once would not fit (128k x thousands of rows), but a decode
  // step of a few hundred sequences should read the LM head once, not once per 64 rows.
  Tensor arena;
  Tensor h, q, k, v, attn, gate, up, act;
  Tensor qkv, gate_up;  // stacked products' outputs (q..up are then views of them)
  int64_t logit_rows = 0;
  Tensor last, normed, logits;  // logits: a view of the arena
  Tensor scores;  // eviction scratch: attention mass of the observed queries (KVCache)
  // Fewest logit rows at a time, even where the arena is smaller (the CPU's F32 steps).
  static constexpr int64_t kMinLogitRows = 64;
  void release(Backend& b) {
    for (Tensor* t : {&x, &arena, &last, &normed, &scores})
      if (t->data) b.free(*t);
    h = q = k = v = attn = gate = up = act = qkv = gate_up = logits = Tensor{};
    logit_rows = 0;
    capacity = 0;
  }
};

namespace {

std::string dims_str(const std::vector<int64_t>& d) {
  std::string s = "[";
  for (size_t i = 0; i < d.size(); ++i) s += (i ? ", " : "") + std::to_string(d[i]);
  return s + "]";
}

// Binds a GGUF tensor of shape [cols] (rows == 0) or [cols, rows] after checking it.
Tensor bind_weight(const gguf::File& f, Backend& b, const std::string& name, int64_t cols, int64_t rows,
            int64_t& bytes, bool must_be_f32 = false) {
  const gguf::TensorInfo& t = f.require_tensor(name);
  std::vector<int64_t> want = rows ? std::vector<int64_t>{cols, rows} : std::vector<int64_t>{cols};
  if (t.dims != want)
    throw Error(f.path() + ": tensor '" + name + "' has shape " + dims_str(t.dims) +
                ", expected " + dims_str(want));
  if (!type_traits(t.type).dequantizable)
    throw Error(f.path() + ": tensor '" + name + "' has type " + type_name(t.type) +
                ", which this build cannot compute with");
  if (must_be_f32 && t.type != GgmlType::F32)
    throw Error(f.path() + ": tensor '" + name + "' must be F32, is " + type_name(t.type));
  bytes += int64_t(t.n_bytes);
  return b.load_weight(t.type, t.data, rows ? rows : 1, cols);
}

// Norm and bias vectors may be stored in any float type; the ops want F32.
Tensor bind_vector(const gguf::File& f, Backend& b, const std::string& name, int64_t n,
                   int64_t& bytes, std::vector<Tensor>& owned) {
  const gguf::TensorInfo& t = f.require_tensor(name);
  if (t.dims != std::vector<int64_t>{n})
    throw Error(f.path() + ": tensor '" + name + "' has shape " + dims_str(t.dims) +
                ", expected [" + std::to_string(n) + "]");
  if (t.type == GgmlType::F32) {
    bytes += int64_t(t.n_bytes);
    return b.load_weight(t.type, t.data, 1, n);
  }
  if (!type_traits(t.type).dequantizable)
    throw Error(f.path() + ": tensor '" + name + "' has type " + type_name(t.type) +
                ", which this build cannot compute with");
  std::vector<float> tmp(n);
  dequantize_row(t.type, t.data, tmp.data(), n);
  Tensor out = b.alloc(GgmlType::F32, 1, n);
  owned.push_back(out);
  b.upload(tmp.data(), out);
  bytes += int64_t(t.n_bytes);
  return out;
}

// Columns [c0, c0 + n) of t, a strided view.
Tensor col_view(const Tensor& t, int64_t c0, int64_t n) {
  Tensor r = t;
  r.data = static_cast<char*>(t.data) + row_bytes(t.type, c0);
  r.cols = n;
  return r;
}

// Stacks `parts` (same type and columns) into one matrix the model owns; the parts are
// freed and become row views of it.
Tensor stack_rows(Backend& b, std::vector<Tensor*> parts, std::vector<Tensor>& owned) {
  int64_t rows = 0;
  for (Tensor* p : parts) rows += p->rows;
  Tensor all = b.alloc(parts[0]->type, rows, parts[0]->cols);
  owned.push_back(all);
  int64_t r0 = 0;
  for (Tensor* p : parts) {
    Tensor dst = all.slice_rows(r0, p->rows);
    b.copy_rows(*p, dst);
    auto it = std::find_if(owned.begin(), owned.end(),
                           [&](const Tensor& t) { return t.data == p->data; });
    if (it != owned.end()) owned.erase(it);
    b.synchronize();  // the copy has read the part
    b.free(*p);
    *p = dst;
    r0 += dst.rows;
  }
  return all;
}

// f: null for dummy weights (no precomputed rope_freqs tensor then).
RopeParams make_rope(const gguf::File* f, const HParams& hp) {
  RopeParams r;
  r.style = hp.arch == "qwen2" ? RopeStyle::Neox : RopeStyle::Interleaved;
  r.head_dim = int(hp.head_dim);
  r.rotary_dim = int(hp.rope_dim);
  const int half = r.rotary_dim / 2;
  r.inv_freq.resize(half);
  for (int i = 0; i < half; ++i)
    r.inv_freq[i] = float(std::pow(double(hp.rope_theta), -2.0 * i / r.rotary_dim));
  if (const gguf::TensorInfo* ff = f ? f->find_tensor("rope_freqs.weight") : nullptr) {
    // Precomputed Llama-3 factors: the frequency is divided by them.
    if (ff->type != GgmlType::F32 || ff->n_elements() != half)
      throw Error(f->path() + ": tensor 'rope_freqs.weight' must be F32 with " +
                  std::to_string(half) + " elements");
    const float* fac = reinterpret_cast<const float*>(ff->data);
    for (int i = 0; i < half; ++i) r.inv_freq[i] /= fac[i];
  } else if (hp.rope_scale_factor > 0) {
    const double lo_wl = hp.rope_orig_ctx / hp.rope_low_freq_factor;
    const double hi_wl = hp.rope_orig_ctx / hp.rope_high_freq_factor;
    for (int i = 0; i < half; ++i) {
      double wl = 2 * std::numbers::pi / r.inv_freq[i];
      if (wl > lo_wl) {
        r.inv_freq[i] /= hp.rope_scale_factor;
      } else if (wl >= hi_wl) {
        double smooth = (hp.rope_orig_ctx / wl - hp.rope_low_freq_factor) /
                        (hp.rope_high_freq_factor - hp.rope_low_freq_factor);
        r.inv_freq[i] = float((1 - smooth) * r.inv_freq[i] / hp.rope_scale_factor +
                              smooth * r.inv_freq[i]);
      }
    }
  }
  return r;
}

}  // namespace

Model::Model(std::shared_ptr<const gguf::File> file, Backend& backend)
    : file_(std::move(file)), backend_(backend), hp_(read_hparams(*file_)),
      w_(std::make_unique<ModelWeights>(backend)), ws_(std::make_unique<Workspace>()) {
  const gguf::File& f = *file_;
  const int64_t d = hp_.n_embd, hd = hp_.head_dim, nq = hp_.n_head * hd,
                nkv = hp_.n_head_kv * hd, ff = hp_.n_ff;
  int64_t& bytes = w_->bytes;
  rope_ = make_rope(&f, hp_);
  w_->tok_embd = bind_weight(f, backend_, "token_embd.weight", d, hp_.n_vocab, bytes);
  w_->output_norm = bind_vector(f, backend_, "output_norm.weight", d, bytes, w_->owned);
  w_->lm_head = hp_.tied_embeddings ? w_->tok_embd
                                    : bind_weight(f, backend_, "output.weight", d, hp_.n_vocab, bytes);
  w_->layers.resize(hp_.n_layer);
  for (int64_t l = 0; l < hp_.n_layer; ++l) {
    LayerWeights& L = w_->layers[l];
    const std::string p = "blk." + std::to_string(l) + ".";
    L.attn_norm = bind_vector(f, backend_, p + "attn_norm.weight", d, bytes, w_->owned);
    L.wq = bind_weight(f, backend_, p + "attn_q.weight", d, nq, bytes);
    L.wk = bind_weight(f, backend_, p + "attn_k.weight", d, nkv, bytes);
    L.wv = bind_weight(f, backend_, p + "attn_v.weight", d, nkv, bytes);
    L.wo = bind_weight(f, backend_, p + "attn_output.weight", nq, d, bytes);
    if (hp_.qkv_bias) {
      L.has_bias = true;
      L.bq = bind_vector(f, backend_, p + "attn_q.bias", nq, bytes, w_->owned);
      L.bk = bind_vector(f, backend_, p + "attn_k.bias", nkv, bytes, w_->owned);
      L.bv = bind_vector(f, backend_, p + "attn_v.bias", nkv, bytes, w_->owned);
    }
    L.ffn_norm = bind_vector(f, backend_, p + "ffn_norm.weight", d, bytes, w_->owned);
    L.w_gate = bind_weight(f, backend_, p + "ffn_gate.weight", d, ff, bytes);
    L.w_up = bind_weight(f, backend_, p + "ffn_up.weight", d, ff, bytes);
    L.w_down = bind_weight(f, backend_, p + "ffn_down.weight", ff, d, bytes);
    if (stacked()) {
      const bool same = L.wq.type == L.wk.type && L.wk.type == L.wv.type &&
                        L.w_gate.type == L.w_up.type;
      if (!same) throw Error(f.path() + ": layer " + std::to_string(l) +
                             ": the backend converted projections to different types");
      L.wqkv = stack_rows(backend_, {&L.wq, &L.wk, &L.wv}, w_->owned);
      L.w_gate_up = stack_rows(backend_, {&L.w_gate, &L.w_up}, w_->owned);
    }
  }
}

bool Model::stacked() const {
  return backend_.prefers_stacked_projections() && !hp_.qkv_bias;
}

Model::Model(const HParams& hp, Backend& backend, uint64_t seed)
    : backend_(backend), hp_(hp), w_(std::make_unique<ModelWeights>(backend)),
      ws_(std::make_unique<Workspace>()) {
  if (hp_.n_layer <= 0 || hp_.n_embd <= 0 || hp_.n_head <= 0 || hp_.n_head_kv <= 0 ||
      hp_.n_head % hp_.n_head_kv != 0 || hp_.head_dim <= 0 || hp_.n_ff <= 0 || hp_.n_vocab <= 0)
    throw Error("dummy model: inconsistent hyper-parameters for '" + hp_.name + "'");
  const int64_t d = hp_.n_embd, hd = hp_.head_dim, nq = hp_.n_head * hd,
                nkv = hp_.n_head_kv * hd, ff = hp_.n_ff;
  const GgmlType mt = backend_.activation_type();
  uint64_t n_made = 0;
  // Uniform in [-a, a) has standard deviation a / sqrt(3): a = sqrt(3 / fan_in) keeps
  // each product's output at the variance of its (normalised) input.
  auto make = [&](GgmlType type, int64_t rows, int64_t cols, float scale, float offset) {
    Tensor t = backend_.alloc(type, rows, cols);
    w_->owned.push_back(t);
    backend_.fill_random(t, seed + 0x1000193ull * ++n_made, scale, offset);
    w_->bytes += int64_t(t.bytes());
    return t;
  };
  auto matrix = [&](int64_t rows, int64_t fan_in) {
    return make(mt, rows, fan_in, float(std::sqrt(3.0 / double(fan_in))), 0);
  };
  // The same values as matrix() (same seed order), written into rows of a stacked matrix.
  auto matrix_into = [&](Tensor& all, int64_t& r0, int64_t rows, int64_t fan_in) {
    Tensor t = all.slice_rows(r0, rows);
    r0 += rows;
    backend_.fill_random(t, seed + 0x1000193ull * ++n_made, float(std::sqrt(3.0 / double(fan_in))), 0);
    w_->bytes += int64_t(t.bytes());
    return t;
  };
  auto stacked_matrix = [&](int64_t rows, int64_t cols) {
    Tensor t = backend_.alloc(mt, rows, cols);
    w_->owned.push_back(t);
    return t;
  };
  auto ones = [&](int64_t n) { return make(GgmlType::F32, 1, n, 0, 1); };
  auto bias = [&](int64_t n) { return make(GgmlType::F32, 1, n, 0.02f, 0); };
  rope_ = make_rope(nullptr, hp_);
  w_->tok_embd = make(mt, hp_.n_vocab, d, 1, 0);
  w_->output_norm = ones(d);
  w_->lm_head = hp_.tied_embeddings ? w_->tok_embd : matrix(hp_.n_vocab, d);
  w_->layers.resize(hp_.n_layer);
  for (LayerWeights& L : w_->layers) {
    L.attn_norm = ones(d);
    if (stacked()) {
      L.wqkv = stacked_matrix(nq + 2 * nkv, d);
      int64_t r0 = 0;
      L.wq = matrix_into(L.wqkv, r0, nq, d);
      L.wk = matrix_into(L.wqkv, r0, nkv, d);
      L.wv = matrix_into(L.wqkv, r0, nkv, d);
    } else {
      L.wq = matrix(nq, d);
      L.wk = matrix(nkv, d);
      L.wv = matrix(nkv, d);
    }
    L.wo = matrix(d, nq);
    if (hp_.qkv_bias) {
      L.has_bias = true;
      L.bq = bias(nq);
      L.bk = bias(nkv);
      L.bv = bias(nkv);
    }
    L.ffn_norm = ones(d);
    if (stacked()) {
      L.w_gate_up = stacked_matrix(2 * ff, d);
      int64_t r0 = 0;
      L.w_gate = matrix_into(L.w_gate_up, r0, ff, d);
      L.w_up = matrix_into(L.w_gate_up, r0, ff, d);
    } else {
      L.w_gate = matrix(ff, d);
      L.w_up = matrix(ff, d);
    }
    L.w_down = matrix(d, ff);
  }
  backend_.synchronize();
}

Model::~Model() {
  backend_.drop_replays(this);
  ws_->release(backend_);
}

void Model::reserve_workspace(int64_t T) {
  Workspace& ws = *ws_;
  if (T <= ws.capacity) return;
  backend_.drop_replays(this);  // their runs read the tensors freed here
  ws.release(backend_);
  ++ws.generation;
  const int64_t d = hp_.n_embd, nq = hp_.n_head * hp_.head_dim,
                nkv = hp_.n_head_kv * hp_.head_dim, ff = hp_.n_ff;
  const GgmlType at = backend_.activation_type();
  ws.x = backend_.alloc(at, T, d);
  // Lay the per-layer buffers out in one arena (offsets 256-byte aligned).
  struct Part {
    Tensor* t;
    int64_t cols;
    size_t offset = 0;
  };
  std::vector<Part> parts = {{&ws.h, d}, {&ws.attn, nq}, {&ws.act, ff}};
  if (stacked()) {
    parts.push_back({&ws.qkv, nq + 2 * nkv});
    parts.push_back({&ws.gate_up, 2 * ff});
  } else {
    for (auto [t, c] : {std::pair{&ws.q, nq}, {&ws.k, nkv}, {&ws.v, nkv}, {&ws.gate, ff}, {&ws.up, ff}})
      parts.push_back({t, c});
  }
  auto align = [](size_t n) { return (n + 255) / 256 * 256; };
  size_t layer_bytes = 0;
  for (Part& p : parts) {
    p.offset = layer_bytes;
    layer_bytes += align(size_t(T) * row_bytes(at, p.cols));
  }
  const size_t logit_row_bytes = row_bytes(GgmlType::F32, hp_.n_vocab);
  // Every sequence of a step has at least one row, so no step wants more than T.
  ws.logit_rows = std::min<int64_t>(
      T, std::max<int64_t>(Workspace::kMinLogitRows, int64_t(layer_bytes / logit_row_bytes)));
  const size_t arena_bytes = align(std::max(layer_bytes, size_t(ws.logit_rows) * logit_row_bytes));
  ws.arena = backend_.alloc(GgmlType::F32, 1, int64_t(arena_bytes / sizeof(float)));
  auto view = [&](size_t offset, GgmlType type, int64_t rows, int64_t cols) {
    Tensor t;
    t.data = static_cast<char*>(ws.arena.data) + offset;
    t.type = type;
    t.rows = rows;
    t.cols = cols;
    t.row_stride = row_bytes(type, cols);
    return t;
  };
  for (Part& p : parts) *p.t = view(p.offset, at, T, p.cols);
  if (stacked()) {
    ws.q = col_view(ws.qkv, 0, nq);
    ws.k = col_view(ws.qkv, nq, nkv);
    ws.v = col_view(ws.qkv, nq + nkv, nkv);
    ws.gate = col_view(ws.gate_up, 0, ff);
    ws.up = col_view(ws.gate_up, ff, ff);
  }
  ws.logits = view(0, GgmlType::F32, ws.logit_rows, hp_.n_vocab);
  ws.last = backend_.alloc(at, ws.logit_rows, d);
  ws.normed = backend_.alloc(at, ws.logit_rows, d);
  // 16 MiB: every layer's mass of a few sequences of budget + chunk entries (evicted in
  // one launch), and at least one layer of one sequence at full context (more are scored
  // in groups). Backends that select on the host need none.
  if (eviction_on_device(backend_))
    ws.scores = backend_.alloc(GgmlType::F32, 1,
                               std::max<int64_t>(int64_t(4) << 20, hp_.n_head_kv * hp_.n_ctx_train));
  ws.capacity = T;
  backend_.reserve_step_scratch(T, attention_params());
  backend_.reserve_row_sort(hp_.n_vocab);
}

int64_t Model::weight_bytes() const { return w_->bytes; }

AttentionParams Model::attention_params() const {
  AttentionParams ap;
  ap.n_heads = int(hp_.n_head);
  ap.n_kv_heads = int(hp_.n_head_kv);
  ap.head_dim = int(hp_.head_dim);
  ap.scale = float(1.0 / std::sqrt(double(hp_.head_dim)));
  return ap;
}

std::vector<float> Model::forward(std::span<const SeqBatch> batch, KVCache& kv,
                                  const StepPicks& picks) {
  // Flatten the step: token ids and positions of every row, in batch order.
  std::vector<int32_t> ids, pos, want_rows, pick_rows, pick_index;
  std::vector<float> pick_inv_t;
  std::vector<double> pick_u;
  std::vector<int32_t> cand_rows;
  std::vector<const SeqBatch*> cand_of;
  for (const SeqBatch& s : batch) {
    if (s.tokens.empty()) throw Error("forward: empty sequence chunk");
    if (s.pick_index >= 0 && (s.tokens.size() != 1 || picks.read_set < 0))
      throw Error("forward: a row fed by a pick must be one decode token, with a pick set to read");
    if (s.pick_index >= 0 || !pick_index.empty()) {  // from the first pick-fed row on
      pick_index.resize(ids.size() + s.tokens.size(), -1);
      pick_index.back() = s.pick_index;
    }
    for (size_t i = 0; i < s.tokens.size(); ++i) {
      int32_t t = s.tokens[i];
      if (t < 0 || t >= hp_.n_vocab)
        throw Error("token id " + std::to_string(t) + " is outside the vocabulary (0.." +
                    std::to_string(hp_.n_vocab - 1) + ")");
      ids.push_back(t);
      pos.push_back(int32_t(s.first_pos + int64_t(i)));
    }
    if (s.all_logits) {
      for (size_t i = 0; i < s.tokens.size(); ++i)
        want_rows.push_back(int32_t(ids.size() - s.tokens.size() + i));
    } else if (s.want_logits && s.token_only) {
      pick_rows.push_back(int32_t(ids.size() - 1));
      pick_inv_t.push_back(s.inv_temperature);
      pick_u.push_back(s.uniform);
    } else if (s.want_logits && s.top_candidates_k > 0) {
      cand_rows.push_back(int32_t(ids.size() - 1));
      cand_of.push_back(&s);
    } else if (s.want_logits) {
      want_rows.push_back(int32_t(ids.size() - 1));
    }
  }
  const int64_t T = int64_t(ids.size());
  if (T == 0) return {};
  if (prof::counting()) {
    bool dec = false, pre = false;
    for (const SeqBatch& s : batch) (s.tokens.size() == 1 && s.first_pos > 0 ? dec : pre) = true;
    prof::forward_begin();
    prof::set_step_kind(dec && pre ? prof::kMixed : (pre ? prof::kPrefill : prof::kDecode));
    prof::count_step();
  }
  struct EndMark {
    ~EndMark() { prof::forward_end(); }
  } end_mark;
  std::optional<prof::Scope> fwd_scope;
  if (prof::enabled()) fwd_scope.emplace(prof::kForward, backend_);

  Workspace& ws = *ws_;
  if (T > ws.capacity) reserve_workspace(T);
  // The dense ops (products, norms) run on Tp >= T rows, as the backend prefers (the CUDA
  // backend rounds small steps up so nearby batch sizes share one graph); rows past T hold
  // leftovers that no real row reads. The rope, KV cache and attention see T rows.
  const int64_t Tp = std::clamp(backend_.padded_rows(T), T, ws.capacity);
  Tensor x = ws.x.slice_rows(0, Tp), h = ws.h.slice_rows(0, Tp), q = ws.q.slice_rows(0, Tp),
         k = ws.k.slice_rows(0, Tp), v = ws.v.slice_rows(0, Tp), attn = ws.attn.slice_rows(0, Tp),
         gate = ws.gate.slice_rows(0, Tp), up = ws.up.slice_rows(0, Tp),
         act = ws.act.slice_rows(0, Tp);
  const Tensor q_rows = q.slice_rows(0, T), k_rows = k.slice_rows(0, T), v_rows = v.slice_rows(0, T);
  Tensor attn_rows = attn.slice_rows(0, T), x_rows = x.slice_rows(0, T);

  std::optional<prof::HostScope> inputs_scope;
  inputs_scope.emplace("inputs (embed, first qkv)");
  std::vector<KVAppend> appends;
  std::vector<AttentionSeq> seqs(batch.size());
  int64_t row = 0;
  for (size_t i = 0; i < batch.size(); ++i) {
    const int64_t n = int64_t(batch[i].tokens.size());
    std::span<const int32_t> p(pos.data() + row, size_t(n));
    appends.push_back({batch[i].seq_id, n, p});
    seqs[i].q_begin = row;
    seqs[i].n_q = n;
    seqs[i].q_pos = p.data();
    row += n;
  }
  AttentionParams ap = attention_params();
  ap.queries_newest = true;  // attention runs right after kv.store appends the step's keys

  std::vector<int64_t> seq_ids(batch.size());
  for (size_t i = 0; i < batch.size(); ++i) seq_ids[i] = batch[i].seq_id;

  // Q, K, V of layer l, not yet roped: the rope runs with the KV store (kv.store below),
  // which a backend may fuse into one pass.
  auto qkv = [&](int64_t l) {
    const LayerWeights& L = w_->layers[l];
    if (L.wqkv.data) {
      Tensor qkv_all = ws.qkv.slice_rows(0, Tp);
      backend_.matmul(h, L.wqkv, nullptr, qkv_all);
    } else {
      backend_.matmul(h, L.wq, L.has_bias ? &L.bq : nullptr, q);
      backend_.matmul(h, L.wk, L.has_bias ? &L.bk : nullptr, k);
      backend_.matmul(h, L.wv, L.has_bias ? &L.bv : nullptr, v);
    }
  };
  // Layer l after its attention: output projection, MLP, residuals; h ends as the next
  // layer's normed input.
  auto attn_out_mlp = [&](int64_t l) {
    const LayerWeights& L = w_->layers[l];
    backend_.matmul_add_rms_norm(attn, L.wo, x, L.ffn_norm, hp_.rms_eps, h);
    if (L.w_gate_up.data) {
      Tensor gu = ws.gate_up.slice_rows(0, Tp);
      backend_.gate_up_swiglu(h, L.w_gate_up, gu, gate, up, act);
    } else {
      backend_.matmul(h, L.w_gate, nullptr, gate);
      backend_.matmul(h, L.w_up, nullptr, up);
      backend_.swiglu(gate, up, act);
    }
    if (l + 1 < hp_.n_layer) {
      backend_.matmul_add_rms_norm(act, L.w_down, x, w_->layers[l + 1].attn_norm, hp_.rms_eps, h);
    } else {
      backend_.matmul(act, L.w_down, nullptr, h);
      backend_.add(x, h);
    }
  };

  if (pick_index.empty())
    backend_.embed(w_->tok_embd, ids, x_rows);
  else
    backend_.embed_with_picks(w_->tok_embd, ids, pick_index, picks.read_set, x_rows);
  // Each residual add is fused with the norm that follows it (matmul_add_rms_norm): h
  // holds the normed input of the next block when a block starts.
  backend_.rms_norm(x, w_->layers[0].attn_norm, hp_.rms_eps, h);
  qkv(0);
  const StoreRope store_rope{q_rows, int(hp_.n_head), &rope_};
  inputs_scope.reset();
  for (int64_t l = 0; l < hp_.n_layer; ++l) {
    // The KV cache's ops read this step's block tables and slots from the host...
    // (HostScope: BATCHMAX_PROFILE=host, the host's time in each part.)
    {
      prof::HostScope hs("kv store (+rope)");
      kv.store(int(l), appends, k_rows, v_rows, &store_rope);
    }
    {
      prof::HostScope hs("attention views");
      for (size_t i = 0; i < batch.size(); ++i) kv.attention_view(int(l), batch[i].seq_id, seqs[i]);
    }
    {
      prof::HostScope hs("attention");
      backend_.attention(q_rows, seqs, ap, kv.pool(), attn_rows);
    }
    {
      prof::HostScope hs("after attention (scores, evict)");
      kv.after_attention(int(l), q_rows, seq_ids, seqs, ap, ws.scores);
    }
    // ...what follows, up to the next layer's attention, reads only weights and the
    // workspace: the same ops every step of Tp rows, which a backend may replay (CUDA
    // graphs) instead of launching one by one.
    prof::HostScope hs("layer products (replayed)");
    backend_.run_replayable(ReplayKey{this, ws.generation, l, Tp}, [&] {
      attn_out_mlp(l);
      if (l + 1 < hp_.n_layer) qkv(l + 1);
    });
  }
  fwd_scope.reset();
  const bool kept = picks.write_set >= 0;
  if (kept && (!want_rows.empty() || !cand_rows.empty()))
    throw Error("forward: a step whose picks stay on the backend wants logits on the host");
  picked_.resize(kept ? 0 : pick_rows.size());
  candidates_.resize(cand_rows.size());
  if (kept && pick_rows.empty()) return {};
  if (want_rows.empty() && pick_rows.empty() && cand_rows.empty()) {
    backend_.synchronize();  // the step's time is spent here, not in the next step's
    return {};
  }
  prof::Scope logit_scope(prof::kLogits, backend_);
  prof::HostScope logit_host("logits and picks");
  const int64_t nw = int64_t(want_rows.size()), V = hp_.n_vocab;
  // The logits of `rows` [r0, r0 + n), n <= ws.logit_rows, in the workspace.
  auto logits_of = [&](const std::vector<int32_t>& rows, int64_t r0, int64_t n) {
    Tensor last = ws.last.slice_rows(0, n), normed = ws.normed.slice_rows(0, n),
           logits = ws.logits.slice_rows(0, n);
    backend_.gather_rows(x, std::span<const int32_t>(rows.data() + r0, size_t(n)), last);
    backend_.rms_norm(last, w_->output_norm, hp_.rms_eps, normed);
    backend_.matmul(normed, w_->lm_head, nullptr, logits);
    return logits;
  };
  std::vector<float> out(size_t(nw * V));
  for (int64_t r0 = 0; r0 < nw; r0 += ws.logit_rows) {
    const int64_t n = std::min(ws.logit_rows, nw - r0);
    backend_.download(logits_of(want_rows, r0, n), out.data() + r0 * V);
  }
  // Token-only rows: only the picked id leaves the backend.
  for (int64_t r0 = 0; r0 < int64_t(pick_rows.size()); r0 += ws.logit_rows) {
    const int64_t n = std::min(ws.logit_rows, int64_t(pick_rows.size()) - r0);
    const std::span<const float> inv_t(pick_inv_t.data() + r0, size_t(n));
    const std::span<const double> u(pick_u.data() + r0, size_t(n));
    if (kept)
      backend_.sample_rows_kept(logits_of(pick_rows, r0, n), inv_t, u, picks.write_set, r0);
    else
      backend_.sample_rows(logits_of(pick_rows, r0, n), inv_t, u, picked_.data() + r0);
  }
  // Top-k / top-p rows: their best entries leave the backend, and the whole row only
  // where those do not decide the draw.
  for (int64_t r0 = 0; r0 < int64_t(cand_rows.size()); r0 += ws.logit_rows) {
    const int64_t n = std::min(ws.logit_rows, int64_t(cand_rows.size()) - r0);
    const Tensor logits = logits_of(cand_rows, r0, n);
    int k = 1;  // one launch: the slice's largest ask
    std::vector<float> inv_t(static_cast<size_t>(n));
    for (int64_t j = 0; j < n; ++j) {
      const SeqBatch& b = *cand_of[size_t(r0 + j)];
      k = std::max(k, b.top_candidates_k);
      // Top-k draws need no mass of the whole row: 0 skips that pass.
      const bool top_k = b.sample_top_k > 0 && b.sample_top_k < V;
      inv_t[size_t(j)] = top_k ? 0.0f : b.inv_temperature;
    }
    k = int(std::min<int64_t>({int64_t(k), int64_t(kMaxTopCandidates), V}));
    std::vector<float> values(size_t(n * k));
    std::vector<int32_t> idx(size_t(n * k));
    std::vector<double> mass(static_cast<size_t>(n));
    backend_.top_candidates(logits, k, inv_t, values.data(), idx.data(), mass.data());
    std::vector<int32_t> wide;  // rows of this slice whose candidates do not decide
    auto decides = [&](int64_t j) {
      const SeqBatch& b = *cand_of[size_t(r0 + j)];
      const RowCandidates& rc = candidates_[size_t(r0 + j)];
      return candidates_decide(rc.values, rc.whole_mass, b.inv_temperature, b.sample_top_k,
                               b.sample_top_p, V);
    };
    for (int64_t j = 0; j < n; ++j) {
      RowCandidates& rc = candidates_[size_t(r0 + j)];
      rc.values.assign(values.begin() + j * k, values.begin() + (j + 1) * k);
      rc.ids.assign(idx.begin() + j * k, idx.begin() + (j + 1) * k);
      rc.whole_mass = mass[size_t(j)];
      rc.token = -1;
      if (!decides(j)) wide.push_back(int32_t(j));
    }
    // A top-p nucleus wider than the candidates: the backend sorts those rows and sends a
    // longer sorted prefix (the host draws from it, as from candidates)...
    if (!wide.empty() && kSortedPrefix < V) {
      const int64_t len = kSortedPrefix;
      const size_t need = wide.size() * size_t(len);
      if (prefix_values_.size() < need) {
        prefix_values_.resize(need);
        prefix_ids_.resize(need);
      }
      backend_.sorted_prefix(logits, wide, len, prefix_values_.data(), prefix_ids_.data());
      std::vector<int32_t> still;
      for (size_t w = 0; w < wide.size(); ++w) {
        RowCandidates& rc = candidates_[size_t(r0 + wide[w])];
        const auto at = ptrdiff_t(w * size_t(len));
        rc.values.assign(prefix_values_.begin() + at, prefix_values_.begin() + at + len);
        rc.ids.assign(prefix_ids_.begin() + at, prefix_ids_.begin() + at + len);
        if (!decides(wide[w])) still.push_back(wide[w]);
      }
      wide.swap(still);
    }
    // ...and draws where even that holds too little of the mass (flat rows): over the
    // whole sorted row, with the uniform the request's sampler drew for this token.
    if (!wide.empty()) {
      std::vector<SortedDraw> draws;
      for (int32_t j : wide) {
        const SeqBatch& b = *cand_of[size_t(r0 + j)];
        draws.push_back({mass[size_t(j)], b.uniform, b.inv_temperature, b.sample_top_p});
      }
      std::vector<int32_t> tok(wide.size());
      backend_.draw_sorted_rows(logits, wide, draws, tok.data());
      for (size_t w = 0; w < wide.size(); ++w) candidates_[size_t(r0 + wide[w])].token = tok[w];
    }
  }
  return out;
}

}  // namespace batchmax
