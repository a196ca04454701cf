// The engine: loads a model and runs requests with continuous batching on one backend.
#include "batchmax/engine.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <deque>
#include <optional>
#include <string>

#include "backend/backend.h"
#include "backend/backend_registry.h"
#include "core/format.h"
#include "core/error.h"
#include "engine/sampler.h"
#include "engine/scheduler.h"
#include "format/gguf_reader.h"
#include "kv/kv_compression.h"
#include "kv/paged_kv_cache.h"
#include "model/model.h"
#include "model/presets.h"
#include "tokenizer/chat_template.h"
#include "tokenizer/tokenizer.h"

namespace batchmax {
namespace {

using Clock = std::chrono::steady_clock;

float log_softmax_at(std::span<const float> logits, int32_t id) {
  float mx = logits[0];
  for (float x : logits) mx = std::max(mx, x);
  double sum = 0;
  for (float x : logits) sum += std::exp(double(x - mx));
  return float(double(logits[id] - mx) - std::log(sum));
}

double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

// One running request.
struct Running {
  size_t index = 0;  // into the request list
  int64_t seq_id = 0;
  SeqProgress progress;
  std::optional<Sampler> sampler;
  int32_t last_token = -1;
  KVCompression comp;
  Output out;
};

std::string comp_name(const KVCompression& c) {
  return c.evicts() ? kv_mode_name(c.mode) + " (" + c.policy + ", budget " +
                          std::to_string(c.params.budget) + ")"
                    : std::string("full");
}

KVCompression to_compression(const KVSettings& k) {
  KVCompression c;
  c.mode = parse_kv_mode(k.mode);
  c.policy = k.policy;
  c.params.budget = k.budget;
  c.params.chunk = k.chunk;
  c.params.slack = k.slack;
  c.params.obs_window = k.obs_window;
  c.params.sinks = k.sinks;
  c.params.window = k.window;
  c.params.seed = k.seed;
  c.validate();
  return c;
}

class LlmEngine final : public Engine {
 public:
  explicit LlmEngine(const EngineOptions& opts) : opts_(opts) {
    if (opts.max_batch < 0) throw Error("max_batch must be >= 0");
    if (opts.step_tokens <= 0) throw Error("step_tokens must be positive");
    if (opts.mem_budget_bytes < 0) throw Error("memory budget must be positive");
    BackendOptions bo;
    bo.n_threads = opts.n_threads;
    bo.force_scalar = opts.force_scalar;
    bo.q8_activations = opts.q8_activations;
    if (!opts.dummy_weights.empty()) {
      const HParams hp = preset_hparams(opts.dummy_weights);
      backend_ = make_backend(opts.backend, bo);
      model_ = std::make_unique<Model>(hp, *backend_, opts.dummy_seed);
    } else {
      file_ = std::shared_ptr<const gguf::File>(gguf::File::open(opts.model_path));
      read_hparams(*file_);  // an unsupported architecture is the first thing to report
      tokenizer_ = Tokenizer::from_gguf(*file_);
      try {
        chat_ = std::make_unique<ChatTemplate>(ChatTemplate::from_gguf(*file_));
      } catch (const Error&) {
        chat_.reset();  // a model without a (known) template still serves raw prompts
      }
      backend_ = make_backend(opts.backend, bo);
      model_ = std::make_unique<Model>(file_, *backend_);
    }
    const HParams& hp = model_->hparams();
    if (tokenizer_ && tokenizer_->n_vocab() > hp.n_vocab)
      throw Error(opts.model_path + ": tokenizer has " + std::to_string(tokenizer_->n_vocab()) +
                  " tokens but the embedding only " + std::to_string(hp.n_vocab));
    context_ = opts.max_context > 0 ? std::min<int64_t>(opts.max_context, hp.n_ctx_train)
                                    : hp.n_ctx_train;
    plan_memory();
  }

  // DESIGN.md section 2: weights, then the measured workspace of the largest step, then
  // the KV pool gets the rest of the budget (or kv_mem_bytes when there is no budget).
  void plan_memory() {
    const HParams& hp = model_->hparams();
    MemoryPlan& m = plan_;
    m.backend = backend_->name();
    m.mem_budget_bytes = opts_.mem_budget_bytes;
    const int64_t held_before = backend_->allocated_bytes();
    // Weights used in place from the mapped file are not in the backend's count.
    const bool mapped = backend_->maps_weights() && model_->has_file();
    m.weight_bytes = held_before + (mapped ? model_->weight_bytes() : 0);
    model_->reserve_workspace(opts_.step_tokens);
    m.workspace_bytes = backend_->allocated_bytes() - held_before;

    KVCacheConfig kc;
    kc.n_layer = int(hp.n_layer);
    kc.n_kv_heads = int(hp.n_head_kv);
    kc.head_dim = int(hp.head_dim);
    kc.block_tokens = 16;
    kc.type = backend_->activation_type();  // F32 on the CPU, BF16 on CUDA
    m.block_tokens = kc.block_tokens;
    m.kv_block_bytes = PagedKVCache::block_bytes(kc);
    m.kv_heads_total = int64_t(kc.n_layer) * kc.n_kv_heads;
    m.kv_bytes_per_token = m.kv_block_bytes / kc.block_tokens * m.kv_heads_total;
    if (opts_.mem_budget_bytes > 0) {
      m.kv_pool_bytes = opts_.mem_budget_bytes - m.weight_bytes - m.workspace_bytes;
      if (m.kv_pool_bytes < m.kv_block_bytes * m.kv_heads_total)
        throw Error("memory budget " + format_bytes(opts_.mem_budget_bytes) +
                    " is too small: weights take " + format_bytes(m.weight_bytes) +
                    " and the workspace of a " + std::to_string(opts_.step_tokens) +
                    "-token step " + format_bytes(m.workspace_bytes) +
                    ", leaving no room for the KV cache; at least " +
                    format_bytes(m.weight_bytes + m.workspace_bytes +
                                 m.kv_block_bytes * m.kv_heads_total * 64) +
                    " is needed for a 1k-token sequence");
    } else {
      m.kv_pool_bytes = opts_.kv_mem_bytes;
      // Without a budget, never more than the batch could use at full context.
      if (opts_.max_batch > 0) {
        const int64_t per_seq = (context_ + kc.block_tokens - 1) / kc.block_tokens *
                                m.kv_heads_total * m.kv_block_bytes;
        m.kv_pool_bytes = std::min(m.kv_pool_bytes, per_seq * opts_.max_batch);
      }
    }
    kc.n_blocks = m.kv_pool_bytes / m.kv_block_bytes;
    if (kc.n_blocks < m.kv_heads_total)
      throw Error("KV memory " + format_bytes(m.kv_pool_bytes) +
                  " is too small for one block per layer and head (" +
                  format_bytes(m.kv_block_bytes * m.kv_heads_total) + ")");
    m.kv_blocks = kc.n_blocks;
    m.kv_pool_bytes = kc.n_blocks * m.kv_block_bytes;
    kv_ = std::make_unique<PagedKVCache>(*backend_, kc);
  }

  const MemoryPlan& memory_plan() const override { return plan_; }

  int64_t blocks_per_request(const KVSettings& kv, int64_t prompt_tokens,
                             int64_t max_tokens) const override {
    const int64_t gen = std::min<int64_t>(max_tokens, context_ - prompt_tokens);
    return kv_->blocks_for_entries(worst_case_entries(to_compression(kv), prompt_tokens, gen));
  }

  const Tokenizer& tokenizer() const override {
    if (!tokenizer_)
      throw Error("the model has dummy weights (" + opts_.dummy_weights +
                  ") and no tokenizer: give requests as token ids");
    return *tokenizer_;
  }
  int64_t peak_backend_bytes() const override { return backend_->peak_allocated_bytes(); }
  const ChatTemplate* chat_template() const override { return chat_.get(); }
  int64_t context_length() const override { return context_; }

  std::vector<Output> generate(std::vector<Request> requests,
                               const std::function<void(const Output&)>& on_output,
                               const std::function<void(const Progress&)>& on_progress) override {
    const auto t0 = Clock::now();
    std::vector<Output> outputs(requests.size());
    std::deque<size_t> waiting;
    Progress prog;
    prog.total = int64_t(requests.size());
    prog.kv_pool_bytes = kv_->blocks().n_blocks() * PagedKVCache::block_bytes(kv_->config());

    auto finish_error = [&](size_t i, const std::string& msg) {
      Output& o = outputs[i];
      o.id = requests[i].id;
      o.finish_reason = "error";
      o.error = msg;
      o.prompt_tokens = int64_t(requests[i].prompt.size());
      o.total_s = seconds_since(t0);
      ++prog.done;
      if (on_output) on_output(o);
    };

    for (size_t i = 0; i < requests.size(); ++i) {
      try {
        validate(requests[i]);
        waiting.push_back(i);
      } catch (const Error& e) {
        finish_error(i, e.what());
      }
    }

    std::vector<Running> running;
    const int64_t chunk = opts_.prefill_chunk > 0 ? opts_.prefill_chunk : opts_.step_tokens;
    while (!waiting.empty() || !running.empty()) {
      // Capacity first: admit while the batch has room and the pool can promise the
      // request's worst case.
      while (!waiting.empty() && (opts_.max_batch == 0 || int(running.size()) < opts_.max_batch)) {
        size_t i = waiting.front();
        const Request& r = requests[i];
        KVCompression comp = to_compression(r.kv.value_or(opts_.kv));
        int64_t worst = worst_case_entries(comp, int64_t(r.prompt.size()), effective_max_tokens(r));
        int64_t seq_id = next_seq_id_++;
        if (!kv_->add_sequence(seq_id, worst, comp)) {
          if (running.empty()) {
            waiting.pop_front();
            const int64_t fits = kv_->blocks().n_blocks() / plan_.kv_heads_total * plan_.block_tokens;
            finish_error(i, "request needs " + std::to_string(worst) +
                                " KV entries per layer and head (" +
                                format_bytes(kv_->blocks_for_entries(worst) * plan_.kv_block_bytes) +
                                ") in " + comp_name(comp) + " mode, but the whole KV pool (" +
                                format_bytes(plan_.kv_pool_bytes) + ") holds " +
                                std::to_string(fits) +
                                " per layer and head; lower max_tokens or the prompt, use a "
                                "smaller kv budget with kv_mode batchmax, or raise the memory budget");
            continue;
          }
          break;  // wait for running requests to free blocks
        }
        waiting.pop_front();
        Running s;
        s.index = i;
        s.seq_id = seq_id;
        s.progress.prompt_tokens = int64_t(r.prompt.size());
        if (comp.mode == KVMode::BatchMax && comp.evicts()) s.progress.chunk = comp.params.chunk;
        s.comp = comp;
        s.sampler.emplace(r.sampling);
        s.out.id = r.id;
        s.out.prompt_tokens = int64_t(r.prompt.size());
        running.push_back(std::move(s));
      }
      if (running.empty()) continue;

      // Then the micro-batch: what fits in this step's token budget.
      std::vector<SeqProgress> progress;
      for (const Running& s : running) progress.push_back(s.progress);
      std::vector<StepItem> items = plan_step(progress, opts_.step_tokens, chunk);
      std::vector<SeqBatch> batch;
      std::vector<int32_t> decode_tokens(running.size());
      for (const StepItem& it : items) {
        Running& s = running[it.seq];
        SeqBatch b;
        b.seq_id = s.seq_id;
        b.first_pos = s.progress.computed;
        if (it.prefill) {
          const auto& prompt = requests[s.index].prompt;
          b.tokens = std::span<const int32_t>(prompt.data() + s.progress.computed, size_t(it.n_tokens));
          b.want_logits = it.last_chunk;
          b.all_logits = requests[s.index].prompt_logprobs;
        } else {
          decode_tokens[it.seq] = s.last_token;
          b.tokens = std::span<const int32_t>(&decode_tokens[it.seq], 1);
          b.want_logits = true;
        }
        // Greedy: the backend returns the argmax instead of the logits row.
        b.argmax_only = requests[s.index].sampling.temperature <= 0 && !opts_.keep_last_logits &&
                        !opts_.keep_step_logits;
        kv_->prepare(s.seq_id, it.n_tokens,
                     !it.prefill ? StepPhase::Decode
                                 : (it.last_chunk ? StepPhase::LastPrefill : StepPhase::Prefill));
        batch.push_back(b);
      }
      const auto step_t0 = Clock::now();
      std::vector<float> logits = model_->forward(batch, *kv_);
      prog.step_s = seconds_since(step_t0);
      prog.step_prefill_tokens = prog.step_decode_tokens = 0;
      for (const StepItem& it : items)
        (it.prefill ? prog.step_prefill_tokens : prog.step_decode_tokens) += it.n_tokens;
      prog.kv_bytes = kv_->bytes_in_use();
      prog.kv_peak_bytes = std::max(prog.kv_peak_bytes, prog.kv_bytes);
      prog.running = int64_t(running.size());
      prog.max_running = std::max(prog.max_running, prog.running);
      ++prog.steps;
      for (const StepItem& it : items) {
        Running& s = running[it.seq];
        kv_->commit(s.seq_id);
        const SequenceKVStats& st = kv_->stats(s.seq_id);
        s.out.kv_peak_entries = st.peak_entries;
        s.out.kv_peak_bytes = st.peak_blocks * PagedKVCache::block_bytes(kv_->config());
        s.out.kv_evicted = st.evicted;
      }

      const int64_t V = model_->hparams().n_vocab;
      size_t li = 0, ai = 0;
      for (const StepItem& it : items) {
        Running& s = running[it.seq];
        s.progress.computed += it.n_tokens;
        if (it.prefill) prog.prompt_tokens += it.n_tokens;
        const SeqBatch& b = batch[size_t(&it - items.data())];
        if (b.all_logits) {
          // Row i predicts prompt token first_pos + i + 1; the last row of the last chunk
          // also feeds the sampler below.
          const auto& prompt = requests[s.index].prompt;
          for (int64_t i = 0; i < it.n_tokens; ++i) {
            const int64_t next = b.first_pos + i + 1;
            if (next < int64_t(prompt.size()))
              s.out.prompt_logprobs.push_back(log_softmax_at(
                  std::span<const float>(logits.data() + (li + i) * V, size_t(V)), prompt[next]));
          }
          li += size_t(it.n_tokens - 1);
          if (!b.want_logits) { ++li; continue; }
        } else if (!b.want_logits) {
          continue;
        }
        int32_t tok = 0;
        if (b.argmax_only && !b.all_logits) {
          tok = model_->argmax()[ai++];
        } else {
          std::span<const float> row(logits.data() + li * V, size_t(V));
          ++li;
          if (it.prefill && opts_.keep_last_logits) s.out.last_logits.assign(row.begin(), row.end());
          if (opts_.keep_step_logits) s.out.step_logits.emplace_back(row.begin(), row.end());
          tok = s.sampler->sample(row);
        }
        s.progress.decoding = true;
        accept_token(s, requests[s.index], tok, t0);
        ++prog.generated_tokens;
      }

      // Retire finished sequences; their blocks go back to the pool for the next admits.
      for (size_t k = 0; k < running.size();) {
        Running& s = running[k];
        if (s.out.finish_reason.empty()) { ++k; continue; }
        kv_->remove_sequence(s.seq_id);
        s.out.total_s = seconds_since(t0);
        outputs[s.index] = std::move(s.out);
        ++prog.done;
        if (on_output) on_output(outputs[s.index]);
        running.erase(running.begin() + k);
      }
      prog.elapsed_s = seconds_since(t0);
      if (on_progress) on_progress(prog);
    }
    prog.elapsed_s = seconds_since(t0);
    if (on_progress) on_progress(prog);
    return outputs;
  }

 private:
  int64_t effective_max_tokens(const Request& r) const {
    return std::min<int64_t>(r.sampling.max_tokens, context_ - int64_t(r.prompt.size()));
  }

  void validate(const Request& r) const {
    if (r.prompt.empty()) throw Error("prompt is empty");
    if (int64_t(r.prompt.size()) >= context_)
      throw Error("prompt has " + std::to_string(r.prompt.size()) +
                  " tokens, but the context length is " + std::to_string(context_) +
                  " (at least one token must be left to generate)");
    for (int32_t t : r.prompt)
      if (t < 0 || t >= model_->hparams().n_vocab)
        throw Error("prompt token id " + std::to_string(t) + " is outside the vocabulary");
    validate_sampling(r.sampling);
    if (r.sampling.max_tokens == 0) throw Error("max_tokens must be at least 1");
    to_compression(r.kv.value_or(opts_.kv));  // throws naming a bad kv setting
  }

  // Appends a sampled token and decides whether the request is finished.
  void accept_token(Running& s, const Request& r, int32_t tok, Clock::time_point t0) {
    Output& o = s.out;
    if (o.tokens.empty()) o.first_token_s = seconds_since(t0);
    o.tokens.push_back(tok);
    s.last_token = tok;
    if (!tokenizer_) {  // dummy weights: no EOS, no text, run to max_tokens
      if (int64_t(o.tokens.size()) >= effective_max_tokens(r)) o.finish_reason = "length";
      return;
    }
    if (!r.sampling.ignore_eos && tokenizer_->is_eog(tok)) {
      o.finish_reason = "stop";
      return;
    }
    const size_t before = o.text.size();
    o.text += tokenizer_->token_to_piece(tok);
    for (const std::string& stop : r.sampling.stop) {
      if (stop.empty()) continue;
      // Only a match that ends in the new piece can be new.
      size_t from = before >= stop.size() ? before - stop.size() + 1 : 0;
      size_t at = o.text.find(stop, from);
      if (at != std::string::npos) {
        o.text.resize(at);
        o.finish_reason = "stop";
        return;
      }
    }
    if (int64_t(o.tokens.size()) >= effective_max_tokens(r)) o.finish_reason = "length";
  }

  EngineOptions opts_;
  std::shared_ptr<const gguf::File> file_;
  std::unique_ptr<Tokenizer> tokenizer_;
  std::unique_ptr<ChatTemplate> chat_;
  std::unique_ptr<Backend> backend_;
  std::unique_ptr<Model> model_;
  std::unique_ptr<PagedKVCache> kv_;
  int64_t context_ = 0;
  int64_t next_seq_id_ = 1;
  MemoryPlan plan_;
};

}  // namespace

std::unique_ptr<Engine> Engine::create(const EngineOptions& opts) {
  return std::make_unique<LlmEngine>(opts);
}

}  // namespace batchmax
