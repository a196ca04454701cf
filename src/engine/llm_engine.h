#pragma once
// The engine behind batchmax::Engine: owns the model, backend and KV cache; the batch
// (engine_batch.cpp) drives steps over them.
#include <memory>
#include <string>

#include "batchmax/engine.h"
#include "kv/kv_compression.h"

namespace batchmax {

namespace gguf { class File; }
class Backend;
class Model;
class PagedKVCache;

KVCompression to_compression(const KVSettings& k);
// "full", or e.g. "batchmax (snapkv, budget 512)": for messages.
std::string compression_name(const KVCompression& c);

class LlmEngine final : public Engine {
 public:
  explicit LlmEngine(const EngineOptions& opts);
  ~LlmEngine() override;

  const MemoryPlan& memory_plan() const override { return plan_; }
  int64_t blocks_per_request(const KVSettings& kv, int64_t prompt_tokens,
                             int64_t max_tokens) const override;
  int64_t prefill_headroom_blocks(const KVSettings& kv, int64_t prompt_tokens,
                                  int64_t max_tokens) const override;
  const Tokenizer& tokenizer() const override;
  int64_t peak_backend_bytes() const override;
  const ChatTemplate* chat_template() const override { return chat_.get(); }
  int64_t context_length() const override { return context_; }
  std::unique_ptr<Batch> open_batch() override;

  // Tokens a request may generate: its max_tokens, cut to what the context leaves.
  int64_t effective_max_tokens(const Request& r) const;
  // Throws batchmax::Error naming what is wrong with the request.
  void validate(const Request& r) const;

  const EngineOptions& options() const { return opts_; }
  const Tokenizer* tokenizer_or_null() const { return tokenizer_.get(); }
  Model& model() { return *model_; }
  Backend& backend() { return *backend_; }
  PagedKVCache& kv() { return *kv_; }
  bool batch_open = false;  // one Batch at a time: it owns the KV cache

 private:
  void plan_memory();

  EngineOptions opts_;
  std::shared_ptr<const gguf::File> file_;
  std::unique_ptr<Tokenizer> tokenizer_;
  std::unique_ptr<ChatTemplate> chat_;
  std::unique_ptr<Backend> backend_;
  std::unique_ptr<Model> model_;
  std::unique_ptr<PagedKVCache> kv_;
  int64_t context_ = 0;
  MemoryPlan plan_;
};

}  // namespace batchmax
