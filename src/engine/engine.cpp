// The engine: loads a model, plans its memory and validates requests; engine_batch.cpp
// runs them with continuous batching on one backend.
#include "engine/llm_engine.h"

#include <algorithm>
#include <string>

#include "backend/backend.h"
#include "backend/backend_registry.h"
#include "core/error.h"
#include "core/format.h"
#include "engine/sampler.h"
#include "format/gguf_reader.h"
#include "kv/paged_kv_cache.h"
#include "model/model.h"
#include "model/presets.h"
#include "tokenizer/chat_template.h"
#include "tokenizer/tokenizer.h"

namespace batchmax {

std::string compression_name(const KVCompression& c) {
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

LlmEngine::LlmEngine(const EngineOptions& opts) : opts_(opts) {
  if (opts.max_batch < 0) throw Error("max_batch must be >= 0");
  if (opts.step_tokens < 0) throw Error("step_tokens must be positive (0: the backend's choice)");
  if (opts.mem_budget_bytes < 0) throw Error("memory budget must be positive");
  if (opts.schedule != "decode-first" && opts.schedule != "prefill-first" && opts.schedule != "auto")
    throw Error("schedule must be decode-first, prefill-first or auto, got '" + opts.schedule + "'");
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
  if (opts_.step_tokens == 0) opts_.step_tokens = int(backend_->preferred_step_tokens());
  context_ = opts.max_context > 0 ? std::min<int64_t>(opts.max_context, hp.n_ctx_train)
                                  : hp.n_ctx_train;
  plan_memory();
}

LlmEngine::~LlmEngine() = default;

// DESIGN.md section 2: weights, then the measured workspace of the largest step, then
// the KV pool gets the rest of the budget (or kv_mem_bytes when there is no budget).
void LlmEngine::plan_memory() {
  const HParams& hp = model_->hparams();
  MemoryPlan& m = plan_;
  m.backend = backend_->name();
  m.mem_budget_bytes = opts_.mem_budget_bytes;
  m.step_tokens = opts_.step_tokens;
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
  // h2o accumulates mass per entry: where eviction runs on the backend, the pool can keep
  // it per slot (4 bytes an entry) so h2o never leaves the device; engines that expect no
  // h2o request pay nothing (EngineOptions::kv_slot_mass).
  const bool h2o_default = opts_.kv.policy == "h2o" && opts_.kv.mode != "full";
  kc.slot_mass = (opts_.kv_slot_mass || h2o_default) && eviction_on_device(*backend_);
  // As many batchmax prefill chunks as a step holds may borrow room at once (with room for
  // one, a W-limited 1024-token step held 121 decode rows and one 512-token chunk).
  kc.step_tokens = opts_.step_tokens;
  // Block tables that stay on the backend: attention over hundreds of sequences then
  // sends no block ids (their packing bound a 512-sequence decode step by the host).
  kc.block_tables = backend_->keeps_block_tables();
  m.block_tokens = kc.block_tokens;
  m.kv_block_bytes = PagedKVCache::block_bytes(kc);
  m.kv_heads_total = int64_t(kc.n_layer) * kc.n_kv_heads;
  m.kv_bytes_per_token = m.kv_block_bytes / kc.block_tokens * m.kv_heads_total;
  if (opts_.mem_budget_bytes > 0) {
    m.runtime_reserve_bytes = backend_->runtime_reserve_bytes();
    m.kv_pool_bytes =
        opts_.mem_budget_bytes - m.weight_bytes - m.workspace_bytes - m.runtime_reserve_bytes;
    if (m.kv_pool_bytes < m.kv_block_bytes * m.kv_heads_total)
      throw Error("memory budget " + format_bytes(opts_.mem_budget_bytes) +
                  " is too small: weights take " + format_bytes(m.weight_bytes) +
                  " and the workspace of a " + std::to_string(opts_.step_tokens) +
                  "-token step " + format_bytes(m.workspace_bytes) +
                  (m.runtime_reserve_bytes
                       ? " (plus " + format_bytes(m.runtime_reserve_bytes) + " kept for the GPU driver)"
                       : std::string()) +
                  ", leaving no room for the KV cache; at least " +
                  format_bytes(m.weight_bytes + m.workspace_bytes + m.runtime_reserve_bytes +
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

int64_t LlmEngine::blocks_per_request(const KVSettings& kv, int64_t prompt_tokens,
                                    int64_t max_tokens) const {
  const int64_t gen = std::min<int64_t>(max_tokens, context_ - prompt_tokens);
  return kv_->blocks_for_entries(held_entries(to_compression(kv), prompt_tokens, gen));
}

int64_t LlmEngine::prefill_headroom_blocks(const KVSettings& kv, int64_t prompt_tokens,
                                           int64_t max_tokens) const {
  const int64_t gen = std::min<int64_t>(max_tokens, context_ - prompt_tokens);
  const KVCompression c = to_compression(kv);
  return kv_->burst_blocks(kv_->blocks_for_entries(worst_case_entries(c, prompt_tokens, gen)) -
                              kv_->blocks_for_entries(held_entries(c, prompt_tokens, gen)),
                          c);
}

const Tokenizer& LlmEngine::tokenizer() const {
  if (!tokenizer_)
    throw Error("the model has dummy weights (" + opts_.dummy_weights +
                ") and no tokenizer: give requests as token ids");
  return *tokenizer_;
}
int64_t LlmEngine::peak_backend_bytes() const { return backend_->peak_allocated_bytes(); }

int64_t LlmEngine::effective_max_tokens(const Request& r) const {
  return std::min<int64_t>(r.sampling.max_tokens, context_ - int64_t(r.prompt.size()));
}

void LlmEngine::validate(const Request& r) const {
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
  if (r.logprobs < -1 || r.logprobs > kMaxTopLogprobs)
    throw Error("logprobs must be between 0 and " + std::to_string(kMaxTopLogprobs) + ", got " +
                std::to_string(r.logprobs));
  to_compression(r.kv.value_or(opts_.kv));  // throws naming a bad kv setting
}

std::vector<Output> Engine::generate(std::vector<Request> requests,
                                     const std::function<void(const Output&)>& on_output,
                                     const std::function<void(const Progress&)>& on_progress) {
  std::vector<Output> outputs(requests.size());
  std::unique_ptr<Batch> batch = open_batch();
  for (size_t i = 0; i < requests.size(); ++i) {
    Batch::Callbacks cb;
    cb.on_finish = [&, i](Output o) {
      outputs[i] = std::move(o);
      if (on_output) on_output(outputs[i]);
    };
    batch->add(std::move(requests[i]), std::move(cb));
  }
  while (!batch->idle()) {
    const Progress prog = batch->step();
    if (on_progress) on_progress(prog);
  }
  if (on_progress) on_progress(batch->step());  // idle: the totals, no work
  return outputs;
}

std::unique_ptr<Engine> Engine::create(const EngineOptions& opts) {
  return std::make_unique<LlmEngine>(opts);
}

}  // namespace batchmax
