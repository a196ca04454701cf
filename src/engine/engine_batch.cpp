// Continuous batching: requests wait, are admitted when the KV pool can promise their
// worst case, advance together one forward step at a time (decode tokens + prefill
// chunks) and leave as they finish, returning their blocks for the next admits.
#include <algorithm>
#include <cstdlib>
#include <chrono>
#include <cmath>
#include <deque>
#include <optional>
#include <string>
#include <thread>

#include "backend/step_profile.h"
#include "core/error.h"
#include "core/thread_pool.h"
#include "core/format.h"
#include "engine/llm_engine.h"
#include "engine/sampler.h"
#include "engine/scheduler.h"
#include "engine/stream_text.h"
#include "kv/paged_kv_cache.h"
#include "model/model.h"
#include "tokenizer/tokenizer.h"

namespace batchmax {
namespace {

// BATCHMAX_HOST_SAMPLING=1: sampled rows send their logits to the host's Sampler, as
// before Backend::sample_rows (A/B timing; the tokens are the same).
bool host_sampling() {
  static const bool on = [] {
    const char* e = std::getenv("BATCHMAX_HOST_SAMPLING");
    return e && *e && *e != '0';
  }();
  return on;
}

using Clock = std::chrono::steady_clock;

double seconds_between(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

// log p(token) for every token of interest, from one row of logits.
struct LogSoftmax {
  float max = 0;
  double log_sum = 0;
  explicit LogSoftmax(std::span<const float> logits) {
    max = *std::max_element(logits.begin(), logits.end());
    double sum = 0;
    for (float x : logits) sum += std::exp(double(x - max));
    log_sum = std::log(sum);
  }
  float operator()(float logit) const { return float(double(logit - max) - log_sum); }
};

struct Waiting {
  Engine::Batch::Handle handle = 0;
  Request request;
  Engine::Batch::Callbacks callbacks;
  Clock::time_point added;
  KVCompression comp;
  int64_t worst_entries = 0;  // inside its own prefill steps
  int64_t held_entries = 0;   // between steps: reserved for its life
};

struct Running {
  Engine::Batch::Handle handle = 0;
  Request request;
  Engine::Batch::Callbacks callbacks;
  Clock::time_point added;
  int64_t seq_id = 0;
  SeqProgress progress;
  std::optional<Sampler> sampler;
  int32_t last_token = -1;
  size_t streamed = 0;  // bytes of out.text handed to on_token
  Output out;
  // Steps in flight: whether its steps need the host in between (logits on the host, or
  // evictions selected there), its rows in the step in flight, and (>= 0) the pick of
  // that step its newest token is, not yet read.
  bool host_bound = false;
  int in_flight = 0;
  int32_t pending_pick = -1;
  bool finished = false;  // on_finish has run; it stays until its step in flight is read
};

// A launched step whose tokens have not been read yet.
struct InFlight {
  struct Row {
    int64_t seq_id = 0;
    int64_t n_tokens = 0;
    bool prefill = false;
    int32_t pick = -1;  // its token's pick (-1: no token from this row)
  };
  std::vector<Row> rows;
  int set = 0;          // the backend pick set its picks went to
  int64_t n_picks = 0;
  Clock::time_point launched;
};

class EngineBatch final : public Engine::Batch {
 public:
  explicit EngineBatch(LlmEngine& e) : e_(e), kv_(e.kv()) {
    if (e_.batch_open) throw Error("the engine already has an open batch");
    e_.batch_open = true;
    prog_.kv_pool_bytes = kv_.blocks().n_blocks() * PagedKVCache::block_bytes(kv_.config());
    const int ov = e_.options().overlap_steps;
    // A profile times each step's forward on its own, except the host profile, which adds
    // no synchronisation and is meant for the steps as they run (in flight).
    overlap_ = (ov < 0 ? e_.backend().prefers_overlapped_steps() : ov != 0) &&
               (!prof::counting() || prof::host_enabled());
  }

  ~EngineBatch() override {
    // A step in flight may still read the blocks given back below.
    if (inflight_) {
      try {
        e_.backend().synchronize();
      } catch (...) {
      }
    }
    // Requests still here never finish: give their blocks back.
    for (Running& s : running_) kv_.remove_sequence(s.seq_id);
    e_.batch_open = false;
  }

  Handle add(Request r, Callbacks cb) override {
    const Handle h = next_handle_++;
    ++prog_.total;
    Waiting w;
    w.handle = h;
    w.added = Clock::now();
    try {
      e_.validate(r);
      w.comp = to_compression(r.kv.value_or(e_.options().kv));
      w.worst_entries = worst_case_entries(w.comp, int64_t(r.prompt.size()), e_.effective_max_tokens(r));
      w.held_entries = held_entries(w.comp, int64_t(r.prompt.size()), e_.effective_max_tokens(r));
      check_fits_pool(w.comp, w.worst_entries);
    } catch (const Error& err) {
      Output o;
      o.id = r.id;
      o.finish_reason = "error";
      o.error = err.what();
      o.prompt_tokens = int64_t(r.prompt.size());
      finish(std::move(o), cb, w.added);
      return h;
    }
    w.request = std::move(r);
    w.callbacks = std::move(cb);
    waiting_.push_back(std::move(w));
    return h;
  }

  bool cancel(Handle h) override {
    for (auto it = waiting_.begin(); it != waiting_.end(); ++it) {
      if (it->handle != h) continue;
      Output o;
      o.id = it->request.id;
      o.finish_reason = "cancelled";
      o.prompt_tokens = int64_t(it->request.prompt.size());
      Waiting w = std::move(*it);
      waiting_.erase(it);
      finish(std::move(o), w.callbacks, w.added);
      return true;
    }
    for (size_t k = 0; k < running_.size(); ++k) {
      if (running_[k].handle != h) continue;
      if (!running_[k].out.finish_reason.empty()) return false;  // finished, leaving
      running_[k].out.finish_reason = "cancelled";
      leave(k);
      return true;
    }
    return false;
  }

  bool idle() const override { return waiting_.empty() && running_.empty(); }

  BatchState state() const override {
    BatchState st;
    st.waiting = int64_t(waiting_.size());
    st.running = int64_t(running_.size());
    st.kv_blocks_total = kv_.blocks().n_blocks();
    st.kv_blocks_free = kv_.blocks().n_unreserved();
    st.kv_blocks_used = st.kv_blocks_total - st.kv_blocks_free;
    st.last_step_tokens = prog_.step_prefill_tokens + prog_.step_decode_tokens;
    st.last_step_seqs = last_step_seqs_;
    return st;
  }

  Progress step() override {
    if (!t0_) t0_ = Clock::now();
    admit();
    if (running_.empty() && !waiting_.empty()) {
      // add() rejected what the whole pool cannot hold, so an empty batch always admits;
      // never spin if that promise breaks.
      Waiting w = std::move(waiting_.front());
      waiting_.pop_front();
      Output o;
      o.id = w.request.id;
      o.finish_reason = "error";
      o.error = "the KV pool could not admit this request into an empty batch";
      o.prompt_tokens = int64_t(w.request.prompt.size());
      finish(std::move(o), w.callbacks, w.added);
    }
    if (running_.empty()) {
      prog_.elapsed_s = seconds_between(*t0_, Clock::now());
      return prog_;
    }
    try {
      const bool overlap = overlap_ && std::none_of(running_.begin(), running_.end(),
                                                    [](const Running& s) { return s.host_bound; });
      if (overlap) {
        overlapped_step();
      } else {
        if (inflight_) collect();  // the step in flight first: this one needs its tokens
        if (!running_.empty()) run_step();
      }
    } catch (const std::exception& err) {
      // The step's state is unknown: its requests end here, others may still run.
      if (inflight_) {
        inflight_.reset();
        try {
          e_.backend().synchronize();
        } catch (...) {
        }
      }
      const std::string msg = std::string("engine step failed: ") + err.what();
      while (!running_.empty()) {
        running_.back().out.finish_reason = "error";
        running_.back().out.error = msg;
        retire(running_.size() - 1);
      }
      throw;
    }
    prog_.elapsed_s = seconds_between(*t0_, Clock::now());
    return prog_;
  }

 private:
  void check_fits_pool(const KVCompression& comp, int64_t worst) const {
    const MemoryPlan& plan = e_.memory_plan();
    if (kv_.blocks_for_entries(worst) <= kv_.blocks().n_blocks()) return;
    const int64_t fits = kv_.blocks().n_blocks() / plan.kv_heads_total * plan.block_tokens;
    throw Error("request needs " + std::to_string(worst) + " KV entries per layer and head (" +
                format_bytes(kv_.blocks_for_entries(worst) * plan.kv_block_bytes) + ") in " +
                compression_name(comp) + " mode, but the whole KV pool (" +
                format_bytes(plan.kv_pool_bytes) + ") holds " + std::to_string(fits) +
                " per layer and head; lower max_tokens or the prompt, use a smaller kv budget "
                "with kv_mode batchmax, or raise the memory budget");
  }

  // In arrival order, while the batch has room and the pool can promise the request's
  // worst case (no overtaking: a large request is not starved by small ones).
  void admit() {
    const int max_batch = e_.options().max_batch;
    while (!waiting_.empty() && (max_batch == 0 || int(running_.size()) < max_batch)) {
      Waiting& w = waiting_.front();
      const int64_t seq_id = next_seq_id_++;
      if (!kv_.add_sequence(seq_id, w.held_entries, w.comp, w.worst_entries)) break;
      Running s;
      s.handle = w.handle;
      s.callbacks = std::move(w.callbacks);
      s.added = w.added;
      s.seq_id = seq_id;
      s.progress.prompt_tokens = int64_t(w.request.prompt.size());
      if (w.comp.mode == KVMode::BatchMax && w.comp.evicts()) s.progress.chunk = w.comp.params.chunk;
      s.sampler.emplace(w.request.sampling);
      s.host_bound = !token_only(w.request, *s.sampler) || w.request.prompt_logprobs ||
                     (w.comp.evicts() && !kv_.evicts_on_device(seq_id));
      s.out.id = w.request.id;
      s.out.prompt_tokens = int64_t(w.request.prompt.size());
      s.request = std::move(w.request);
      waiting_.pop_front();
      running_.push_back(std::move(s));
    }
  }

  // EngineOptions::schedule for this step: auto puts prefill first once nobody waits.
  StepOrder step_order() const {
    const std::string& s = e_.options().schedule;
    const bool prefill_first = s == "prefill-first" || (s == "auto" && waiting_.empty());
    return prefill_first ? StepOrder::PrefillFirst : StepOrder::DecodeFirst;
  }

  // Greedy, or temperature over the whole vocabulary, without logprobs or kept logits:
  // the backend picks a generated token where the logits are (Backend::sample_rows).
  // (A prompt_logprobs request's prefill rows still send their logits to the host.)
  bool token_only(const Request& r, const Sampler& sampler) const {
    const EngineOptions& opts = e_.options();
    return r.logprobs < 0 && !opts.keep_last_logits && !opts.keep_step_logits &&
           (r.sampling.temperature <= 0 || (sampler.samples_in_order() && !host_sampling()));
  }

  // Steps in flight: plans and launches a step whose decode rows take their tokens from
  // the step in flight where those are not read yet, then reads that step's tokens. A
  // request that stopped on a token read here already has a row in the new step: that
  // row is dropped when the new step's tokens are read, and the request leaves then.
  void overlapped_step() {
    const EngineOptions& opts = e_.options();
    const int64_t chunk = opts.prefill_chunk > 0 ? opts.prefill_chunk : opts.step_tokens;
    std::vector<SeqProgress> progress;
    std::vector<size_t> at;  // running_ index of each progress entry
    for (size_t k = 0; k < running_.size(); ++k) {
      const Running& s = running_[k];
      if (!s.out.finish_reason.empty()) continue;  // leaves when its step is read
      // Its pending token is its last (max_tokens): no row for it.
      const int64_t promised = int64_t(s.out.tokens.size()) + (s.pending_pick >= 0 ? 1 : 0);
      if (s.progress.decoding && promised >= e_.effective_max_tokens(s.request)) continue;
      progress.push_back(s.progress);
      at.push_back(k);
    }
    const std::vector<StepItem> items =
        plan_step(progress, opts.step_tokens, chunk, [&](size_t i, int64_t n) {
          return kv_.reserve_growth(running_[at[i]].seq_id, n);
        }, step_order());
    if (items.empty() && !inflight_)
      throw Error("internal: a step with running requests planned no work");
    std::optional<InFlight> launched;
    if (!items.empty()) launched = launch(items, at);
    if (launched && inflight_) ++prog_.overlapped_steps;
    if (inflight_) collect();
    inflight_ = std::move(launched);
  }

  std::optional<InFlight> launch(const std::vector<StepItem>& items, const std::vector<size_t>& at) {
    static const int32_t kPlaceholder = 0;  // a pick-fed row's token id, never read
    InFlight f;
    f.set = inflight_ ? 1 - inflight_->set : 0;  // the set in flight feeds this step
    std::vector<SeqBatch> batch;
    std::vector<int32_t> decode_tokens(items.size());
    for (size_t j = 0; j < items.size(); ++j) {
      const StepItem& it = items[j];
      Running& s = running_[at[it.seq]];
      SeqBatch b;
      b.seq_id = s.seq_id;
      b.first_pos = s.progress.computed;
      if (it.prefill) {
        b.tokens = std::span<const int32_t>(s.request.prompt.data() + s.progress.computed, size_t(it.n_tokens));
        b.want_logits = it.last_chunk;
      } else if (s.pending_pick >= 0) {
        b.tokens = std::span<const int32_t>(&kPlaceholder, 1);
        b.pick_index = s.pending_pick;
        b.want_logits = true;
      } else {
        decode_tokens[j] = s.last_token;
        b.tokens = std::span<const int32_t>(&decode_tokens[j], 1);
        b.want_logits = true;
      }
      b.token_only = true;  // every running request is token_only here (not host_bound)
      if (b.want_logits && s.sampler->samples_in_order()) {
        b.inv_temperature = s.sampler->inv_temperature();
        b.uniform = s.sampler->draw_uniform();
      }
      kv_.prepare(s.seq_id, it.n_tokens,
                  !it.prefill ? StepPhase::Decode
                              : (it.last_chunk ? StepPhase::LastPrefill : StepPhase::Prefill));
      batch.push_back(b);
    }
    StepPicks picks;
    picks.read_set = inflight_ ? inflight_->set : -1;
    picks.write_set = f.set;
    f.launched = Clock::now();
    e_.model().forward(batch, kv_, picks);
    for (size_t j = 0; j < items.size(); ++j) {
      const StepItem& it = items[j];
      Running& s = running_[at[it.seq]];
      commit_kv(s);
      s.progress.computed += it.n_tokens;
      ++s.in_flight;
      InFlight::Row row{s.seq_id, it.n_tokens, it.prefill, -1};
      if (batch[j].want_logits) {
        s.progress.decoding = true;
        row.pick = int32_t(f.n_picks++);
        s.pending_pick = row.pick;
      }
      f.rows.push_back(row);
    }
    last_step_seqs_ = int64_t(items.size());
    return f;
  }

  // A step's end in the totals (its token counts and step_s are set by the caller).
  void count_step() {
    const ReplayCounts rc = e_.backend().replay_counts();
    prog_.replayed_runs = rc.replayed;
    prog_.recorded_runs = rc.recorded;
    prog_.kv_bytes = kv_.bytes_in_use();
    prog_.kv_peak_bytes = std::max(prog_.kv_peak_bytes, prog_.kv_bytes);
    prog_.running = int64_t(running_.size());
    prog_.max_running = std::max(prog_.max_running, prog_.running);
    ++prog_.steps;
  }

  // The step's eviction (planned by prepare) and the sequence's cache figures.
  void commit_kv(Running& s) {
    kv_.commit(s.seq_id);
    const SequenceKVStats& st = kv_.stats(s.seq_id);
    s.out.kv_peak_entries = st.peak_entries;
    s.out.kv_peak_bytes = st.peak_blocks * PagedKVCache::block_bytes(kv_.config());
    s.out.kv_evicted = st.evicted;
  }

  // Reads the tokens of the step in flight, accepts them and retires who finished (and
  // is in no later step).
  void collect() {
    InFlight f = std::move(*inflight_);
    inflight_.reset();
    std::vector<int32_t> picks(size_t(f.n_picks));
    e_.backend().fetch_picks(f.set, f.n_picks, picks.data());
    const auto now = Clock::now();
    prog_.step_s = seconds_between(last_collect_ && *last_collect_ > f.launched ? *last_collect_ : f.launched, now);
    last_collect_ = now;
    prog_.step_prefill_tokens = prog_.step_decode_tokens = 0;
    for (const InFlight::Row& r : f.rows)
      (r.prefill ? prog_.step_prefill_tokens : prog_.step_decode_tokens) += r.n_tokens;
    prog_.prompt_tokens += prog_.step_prefill_tokens;
    count_step();
    std::unordered_map<int64_t, size_t> index;
    for (size_t k = 0; k < running_.size(); ++k) index[running_[k].seq_id] = k;
    for (const InFlight::Row& r : f.rows) {
      Running& s = running_[index.at(r.seq_id)];
      --s.in_flight;
      if (r.pick < 0) continue;
      // In no later step: its newest token is this one, on the host from now on.
      if (s.in_flight == 0) s.pending_pick = -1;
      if (!s.out.finish_reason.empty()) continue;  // stopped before: a dropped row
      accept_token(s, picks[size_t(r.pick)], {});
      ++prog_.generated_tokens;
    }
    for (size_t k = 0; k < running_.size();) {
      if (running_[k].out.finish_reason.empty() || !leave(k)) ++k;
    }
  }

  void run_step() {
    const EngineOptions& opts = e_.options();
    const int64_t chunk = opts.prefill_chunk > 0 ? opts.prefill_chunk : opts.step_tokens;
    std::vector<SeqProgress> progress;
    for (const Running& s : running_) progress.push_back(s.progress);
    // A prefill chunk may need blocks past its sequence's reservation (batchmax holds
    // budget + chunk until the step's eviction): the cache promises them or the chunk waits.
    const std::vector<StepItem> items =
        plan_step(progress, opts.step_tokens, chunk, [&](size_t i, int64_t n) {
          return kv_.reserve_growth(running_[i].seq_id, n);
        }, step_order());
    // The headroom covers any one sequence's chunk, so a step always has work.
    if (items.empty()) throw Error("internal: a step with running requests planned no work");
    std::vector<SeqBatch> batch;
    const int64_t n_vocab = e_.model().hparams().n_vocab;
    std::vector<int32_t> decode_tokens(running_.size());
    for (const StepItem& it : items) {
      Running& s = running_[it.seq];
      SeqBatch b;
      b.seq_id = s.seq_id;
      b.first_pos = s.progress.computed;
      if (it.prefill) {
        const auto& prompt = s.request.prompt;
        b.tokens = std::span<const int32_t>(prompt.data() + s.progress.computed, size_t(it.n_tokens));
        b.want_logits = it.last_chunk;
        b.all_logits = s.request.prompt_logprobs;
      } else {
        decode_tokens[it.seq] = s.last_token;
        b.tokens = std::span<const int32_t>(&decode_tokens[it.seq], 1);
        b.want_logits = true;
      }
      // Greedy, or temperature over the whole vocabulary, without logprobs: the backend
      // picks the token where the logits are, with the uniform this request's sampler
      // draws now (as sample() would have), instead of sending the logits row here.
      const bool logits_may_stay = s.request.logprobs < 0 && !b.all_logits &&
                                   !opts.keep_last_logits && !opts.keep_step_logits;
      b.token_only = logits_may_stay && token_only(s.request, *s.sampler);
      if (b.token_only && b.want_logits && s.sampler->samples_in_order()) {
        b.inv_temperature = s.sampler->inv_temperature();
        b.uniform = s.sampler->draw_uniform();
      }
      // Top-k / top-p: the row's best entries come back, and the whole row only where they
      // do not decide; the Sampler draws from them as it would from the row.
      if (b.want_logits && logits_may_stay && !b.token_only && !host_sampling() &&
          s.sampler->samples_from_candidates(n_vocab)) {
        b.top_candidates_k = s.sampler->candidates_wanted(n_vocab);
        b.inv_temperature = s.sampler->inv_temperature();
        b.uniform = s.sampler->draw_uniform();  // this token's; whoever draws uses it
        b.sample_top_k = s.request.sampling.top_k;
        b.sample_top_p = s.request.sampling.top_p;
      }
      kv_.prepare(s.seq_id, it.n_tokens,
                  !it.prefill ? StepPhase::Decode
                              : (it.last_chunk ? StepPhase::LastPrefill : StepPhase::Prefill));
      batch.push_back(b);
    }
    const auto step_t0 = Clock::now();
    const std::vector<float> logits = e_.model().forward(batch, kv_);
    prog_.step_s = seconds_between(step_t0, Clock::now());
    prog_.step_prefill_tokens = prog_.step_decode_tokens = 0;
    for (const StepItem& it : items)
      (it.prefill ? prog_.step_prefill_tokens : prog_.step_decode_tokens) += it.n_tokens;
    count_step();
    last_step_seqs_ = int64_t(items.size());
    for (const StepItem& it : items) {
      commit_kv(running_[it.seq]);
    }

    const int64_t V = e_.model().hparams().n_vocab;
    // First what each item's token comes from; rows the host samples (whole rows, and
    // candidates that may not decide) are drawn after, in parallel: each request has its
    // own Sampler, so the draws are independent and each sampler sees the calls it always
    // did. A logprobs row's softmax over 128k entries, or a draw over a wide nucleus's
    // sorted row, costs the host a millisecond or more.
    struct Draw {
      size_t item = 0;
      std::span<const float> row{};                // whole row (empty: candidates)
      const Model::RowCandidates* rc = nullptr;
      int32_t tok = -1;
      TokenInfo info{};                            // logprobs, where asked for
    };
    std::vector<Draw> draws;
    std::vector<int64_t> picked(items.size(), -1);  // token-only rows: the backend's pick
    std::vector<int64_t> drawn(items.size(), -1);   // else: index into draws
    size_t li = 0, ai = 0, ci = 0;  // logits row, picked token, candidates row
    for (size_t k = 0; k < items.size(); ++k) {
      const StepItem& it = items[k];
      const SeqBatch& b = batch[k];
      Running& s = running_[it.seq];
      s.progress.computed += it.n_tokens;
      if (it.prefill) prog_.prompt_tokens += it.n_tokens;
      if (b.all_logits) {
        // Row i predicts prompt token first_pos + i + 1; the last row of the last chunk
        // also feeds the sampler below.
        const auto& prompt = s.request.prompt;
        for (int64_t i = 0; i < it.n_tokens; ++i) {
          const int64_t next = b.first_pos + i + 1;
          if (next >= int64_t(prompt.size())) continue;
          std::span<const float> row(logits.data() + (li + i) * V, size_t(V));
          s.out.prompt_logprobs.push_back(LogSoftmax(row)(row[prompt[next]]));
        }
        li += size_t(it.n_tokens - 1);
        if (!b.want_logits) { ++li; continue; }
      } else if (!b.want_logits) {
        continue;
      }
      s.progress.decoding = true;
      if (b.token_only) {
        picked[k] = e_.model().picked_tokens()[ai++];
      } else if (b.top_candidates_k > 0) {
        drawn[k] = int64_t(draws.size());
        draws.push_back({.item = k, .rc = &e_.model().candidates()[ci++]});
      } else {
        std::span<const float> row(logits.data() + li * V, size_t(V));
        ++li;
        if (it.prefill && opts.keep_last_logits) s.out.last_logits.assign(row.begin(), row.end());
        if (opts.keep_step_logits) s.out.step_logits.emplace_back(row.begin(), row.end());
        drawn[k] = int64_t(draws.size());
        draws.push_back({.item = k, .row = row});
      }
    }
    auto draw = [&](Draw& d) {
      Running& s = running_[items[d.item].seq];
      if (d.rc) {
        const Model::RowCandidates& rc = *d.rc;
        if (rc.token >= 0) {  // drawn by the backend over the whole sorted row
          d.tok = rc.token;
          return;
        }
        const std::optional<int32_t> tok =
            s.sampler->sample_candidates(rc.values, rc.ids, rc.whole_mass, V, &batch[d.item].uniform);
        if (!tok) throw Error("internal: a row's candidates did not decide its draw");
        d.tok = *tok;
      } else {
        d.tok = s.sampler->sample(d.row);
        if (s.request.logprobs >= 0) token_logprobs(d.row, d.tok, s.request.logprobs, d.info);
      }
    };
    // Only rows that take the host real work are worth a thread each.
    const bool heavy = std::any_of(draws.begin(), draws.end(), [](const Draw& d) {
      return !d.rc || d.rc->values.size() > size_t(kMaxTopCandidates);
    });
    if (draws.size() > 1 && heavy) {
      if (!draw_pool_) draw_pool_ = std::make_unique<ThreadPool>(std::min(16u, std::max(1u, std::thread::hardware_concurrency())));
      draw_pool_->parallel_for(int64_t(draws.size()), [&](int64_t b0, int64_t b1) {
        for (int64_t j = b0; j < b1; ++j) draw(draws[size_t(j)]);
      });
    } else {
      for (Draw& d : draws) draw(d);
    }
    for (size_t k = 0; k < items.size(); ++k) {
      Running& s = running_[items[k].seq];
      if (picked[k] >= 0) {
        accept_token(s, int32_t(picked[k]), {});
      } else if (drawn[k] >= 0) {
        Draw& d = draws[size_t(drawn[k])];
        accept_token(s, d.tok, d.row, &d.info);
      } else {
        continue;
      }
      ++prog_.generated_tokens;
    }

    for (size_t k = 0; k < running_.size();) {
      if (running_[k].out.finish_reason.empty()) { ++k; continue; }
      retire(k);
    }
  }

  // Appends a sampled token, decides whether the request is finished and streams the
  // text that became final. row: the token's logits (empty for argmax-only rows, which
  // never ask for logprobs); logprobs: the token's, computed already (null: from row).
  void accept_token(Running& s, int32_t tok, std::span<const float> row,
                    TokenInfo* logprobs = nullptr) {
    const Request& r = s.request;
    Output& o = s.out;
    if (o.tokens.empty()) o.first_token_s = seconds_between(s.added, Clock::now());
    o.tokens.push_back(tok);
    s.last_token = tok;
    TokenInfo info;
    if (logprobs) info = std::move(*logprobs);
    info.token = tok;
    if (r.logprobs >= 0 && !logprobs) token_logprobs(row, tok, r.logprobs, info);

    const Tokenizer* tok_model = e_.tokenizer_or_null();
    const bool at_length = int64_t(o.tokens.size()) >= e_.effective_max_tokens(r);
    if (!tok_model) {  // dummy weights: no EOS, no text, run to max_tokens
      if (at_length) o.finish_reason = "length";
    } else if (!r.sampling.ignore_eos && tok_model->is_eog(tok)) {
      o.finish_reason = "stop";
    } else {
      const size_t before = o.text.size();
      o.text += tok_model->token_to_piece(tok);
      for (const std::string& stop : r.sampling.stop) {
        if (stop.empty()) continue;
        // Only a match that ends in the new piece can be new.
        const size_t from = before >= stop.size() ? before - stop.size() + 1 : 0;
        const size_t at = o.text.find(stop, from);
        if (at != std::string::npos) {
          o.text.resize(at);
          o.finish_reason = "stop";
          break;
        }
      }
      if (o.finish_reason.empty() && at_length) o.finish_reason = "length";
      const size_t end = o.finish_reason.empty() ? stable_text_end(o.text, r.sampling.stop)
                                                 : o.text.size();
      if (end > s.streamed) {
        info.text = o.text.substr(s.streamed, end - s.streamed);
        s.streamed = end;
      }
    }
    if (r.logprobs >= 0) o.token_info.push_back(info);
    if (s.callbacks.on_token) s.callbacks.on_token(info);
  }

  static void token_logprobs(std::span<const float> row, int32_t tok, int k, TokenInfo& info) {
    const LogSoftmax lsm(row);
    info.logprob = lsm(row[size_t(tok)]);
    if (k == 0) return;
    std::vector<int32_t> ids(row.size());
    for (size_t i = 0; i < ids.size(); ++i) ids[i] = int32_t(i);
    const size_t n = std::min(ids.size(), size_t(k));
    std::partial_sort(ids.begin(), ids.begin() + ptrdiff_t(n), ids.end(), [&](int32_t a, int32_t b) {
      return row[size_t(a)] > row[size_t(b)] || (row[size_t(a)] == row[size_t(b)] && a < b);
    });
    for (size_t i = 0; i < n; ++i) info.top.push_back({ids[i], lsm(row[size_t(ids[i])])});
  }

  // Takes running_[k] out of the batch: blocks back to the pool, on_finish.
  void retire(size_t k) {
    Running s = std::move(running_[k]);
    running_.erase(running_.begin() + ptrdiff_t(k));
    kv_.remove_sequence(s.seq_id);
    if (!s.finished) finish(std::move(s.out), s.callbacks, s.added);
  }

  // A finished running_[k] leaves: at once, or, while a step in flight holds a row of it
  // (whose blocks that step may still write), it finishes now and its blocks go back when
  // the step is read. True when it was removed.
  bool leave(size_t k) {
    Running& s = running_[k];
    if (s.in_flight == 0) {
      retire(k);
      return true;
    }
    if (!s.finished) {
      finish(s.out, s.callbacks, s.added);
      s.finished = true;
    }
    return false;
  }

  void finish(Output o, const Callbacks& cb, Clock::time_point added) {
    o.total_s = seconds_between(added, Clock::now());
    ++prog_.done;
    if (cb.on_finish) cb.on_finish(std::move(o));
  }

  LlmEngine& e_;
  PagedKVCache& kv_;
  std::unique_ptr<ThreadPool> draw_pool_;  // host draws of a step, made on first need
  std::deque<Waiting> waiting_;
  std::vector<Running> running_;
  Handle next_handle_ = 1;
  int64_t next_seq_id_ = 1;
  int64_t last_step_seqs_ = 0;
  std::optional<Clock::time_point> t0_;
  Progress prog_;
  bool overlap_ = false;               // steps in flight (EngineOptions::overlap_steps)
  std::optional<InFlight> inflight_;   // launched, tokens not read yet
  std::optional<Clock::time_point> last_collect_;
};

}  // namespace

std::unique_ptr<Engine::Batch> LlmEngine::open_batch() {
  return std::make_unique<EngineBatch>(*this);
}

}  // namespace batchmax
