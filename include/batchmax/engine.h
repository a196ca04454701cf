#pragma once
// Public API: load a model, submit requests, get outputs. The engine batches all
// running sequences into one forward pass per step (continuous batching).
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace batchmax {

class Tokenizer;
class ChatTemplate;

struct SamplingParams {
  float temperature = 0.0f;   // 0: greedy
  int top_k = 0;              // 0: off
  float top_p = 1.0f;         // 1: off
  uint64_t seed = 0;
  int max_tokens = 256;
  std::vector<std::string> stop;  // stop strings (not included in the output text)
  bool ignore_eos = false;
};

// KV cache compression (Batch-Max). mode: "full" (no eviction), "post-prefill"
// (compress once after the prompt), "batchmax" (evict after every prefill chunk).
struct KVSettings {
  std::string mode = "full";
  std::string policy = "snapkv";  // window, h2o, tova, snapkv, knorm, random, full
  int64_t budget = 512;           // entries kept per (layer, KV head)
  int64_t chunk = 512;            // prefill chunk in batchmax mode
  int64_t slack = 64;             // decode: evict once budget + slack entries are held
  int obs_window = 32;            // snapkv observation window
  int64_t sinks = 4;              // first positions never evicted
  int64_t window = 32;            // most recent entries never evicted
  uint64_t seed = 0;              // random policy
};

struct Request {
  std::string id;
  std::vector<int32_t> prompt;   // token ids (BOS included when the model wants one)
  SamplingParams sampling;
  std::optional<KVSettings> kv;  // unset: the engine's default
  // Perplexity: also return log p(prompt[i] | prompt[0..i)) for i >= 1, computed with
  // the cache as the request's compression leaves it at each chunk.
  bool prompt_logprobs = false;
  // Generated tokens' log-probabilities (of the model's distribution, before temperature
  // and top-k/top-p): -1 none; 0 the chosen token's; k > 0 also the k most likely.
  int logprobs = -1;
};

constexpr int kMaxTopLogprobs = 20;  // most alternatives Request::logprobs may ask for

struct TokenLogprob {
  int32_t token = 0;
  float logprob = 0;
};

// One generated token as it is streamed. The texts of all of a request's TokenInfo
// concatenated are a prefix of its Output::text: text that could still turn out to be the
// start of a stop string, or an incomplete UTF-8 sequence, is held back until it is known
// (the rest, if any, is Output::text past that prefix when the request finishes).
struct TokenInfo {
  int32_t token = 0;
  std::string text;                 // text this token makes final (may be empty)
  float logprob = 0;                // when Request::logprobs >= 0
  std::vector<TokenLogprob> top;    // Request::logprobs most likely, best first
};

struct Output {
  std::string id;
  std::vector<int32_t> tokens;   // generated ids (a stop string's tokens are kept here)
  std::string text;              // generated text, cut before a stop string
  // "stop" (EOS or stop string), "length", "error", "cancelled" (Batch::cancel)
  std::string finish_reason;
  std::string error;             // message when finish_reason == "error"
  int64_t prompt_tokens = 0;
  double first_token_s = 0;      // time from submission to the first generated token
  double total_s = 0;
  std::vector<float> last_logits;  // logits of the last prompt position, if asked
  std::vector<std::vector<float>> step_logits;  // logits of every generated token, if asked
  std::vector<float> prompt_logprobs;  // prompt.size() - 1 values, if asked
  int64_t kv_peak_entries = 0;   // most entries any (layer, head) held
  int64_t kv_peak_bytes = 0;     // most KV bytes held at once
  int64_t kv_evicted = 0;        // entries evicted, all layers and heads
  std::vector<TokenInfo> token_info;  // per generated token, when Request::logprobs >= 0
};

struct EngineOptions {
  std::string model_path;
  // Instead of model_path: a model shape ("llama3-8b", ... see model/presets.h) with
  // weights generated on the backend. No tokenizer then: requests are token ids and
  // run to max_tokens (no EOS, no stop strings, empty text).
  std::string dummy_weights;
  uint64_t dummy_seed = 1;
  int n_threads = 0;          // 0: all hardware threads
  std::string backend = "cpu";  // "cpu" or "cuda" (builds with -DBATCHMAX_CUDA=ON)
  int max_batch = 8;          // sequences running at once (0: as many as the KV pool admits)
  // Tokens per forward step (decode tokens + prefill chunks); 0: the backend's preferred
  // size (512 on the CPU, 2048 on CUDA; see Backend::preferred_step_tokens).
  int step_tokens = 0;
  int prefill_chunk = 0;      // largest prefill chunk of one sequence (0: step_tokens)
  int64_t kv_mem_bytes = int64_t(2) << 30;  // KV pool size (capped at what max_batch can use)
  // When > 0: everything the engine allocates (weights, workspace, KV pool) stays within
  // this many bytes; the KV pool gets what weights and measured workspace leave.
  int64_t mem_budget_bytes = 0;
  int max_context = 0;        // 0: the model's context length
  bool force_scalar = false;  // CPU reference kernels
  bool q8_activations = false;  // CPU: integer-dot decode matmuls (faster, ~1e-3 error)
  bool keep_last_logits = false;
  bool keep_step_logits = false;  // tests: logits behind every generated token
  KVSettings kv;              // default compression for requests that set none
  // The KV pool keeps h2o's accumulated attention mass per slot (4 bytes an entry), so
  // h2o requests evict on the GPU without host round trips. Also on when kv.policy is
  // h2o; without it an h2o request selects on the host.
  bool kv_slot_mass = false;
  // Steps in flight: the engine launches a step before it reads the previous step's
  // tokens (they feed the new step on the backend), so the host's per-step work (tokens,
  // stops, scheduling, the KV cache's tables) runs while the GPU computes. A request that
  // stops on a token computes one more row, which is dropped. -1: the backend's
  // preference (on for CUDA, off for the CPU); 0: off; 1: on. Steps with a request that
  // needs logits on the host (logprobs, top-k/top-p, kept logits) or selects evictions on
  // the host, and profiled runs, go one at a time. Outputs are the same either way.
  int overlap_steps = -1;
  // Which work a step takes first while prompts wait to be prefilled:
  // - "decode-first": every decoding sequence gets its token each step; prefill chunks
  //   take what is left. Steady streams: the server's choice.
  // - "prefill-first": prefill chunks take the step, decoders the tokens left over
  //   (when no chunk can run, every decoder does).
  // - "auto": prefill first while every request has been admitted (none waits for
  //   memory), decode first otherwise. A batch whose requests all fit then ends with one
  //   large decode batch, not a shrinking tail of small, weight-bound decode steps; while
  //   requests wait, decoding first frees their memory soonest. The default: on an H100,
  //   W-full ran 3% faster with it for batchmax and 1% for full, W-limited the same
  //   (bench/results/block_tables_2026-11-28/). The server asks for decode-first.
  // Tokens are the same either way.
  std::string schedule = "auto";
};

struct Progress {
  int64_t done = 0, total = 0;
  int64_t prompt_tokens = 0, generated_tokens = 0;
  double elapsed_s = 0;
  int64_t running = 0, max_running = 0;      // sequences in the batch now / at most
  int64_t kv_bytes = 0, kv_peak_bytes = 0;   // KV blocks in use now / at most
  int64_t kv_pool_bytes = 0;
  int64_t steps = 0;
  // The last step: prompt and decode tokens it computed and its wall time (benchmarks
  // split time between prefill and decode from these). With steps in flight (the last
  // step is the one whose tokens were just read) the time is from the previous step's
  // tokens to this one's: the step's share of the wall clock, host work included.
  int64_t step_prefill_tokens = 0, step_decode_tokens = 0;
  double step_s = 0;
  // Steps launched while the step before them was still in flight (overlap_steps).
  int64_t overlapped_steps = 0;
  // Backend ops replayed from records (CUDA graphs) so far, and records made.
  int64_t replayed_runs = 0, recorded_runs = 0;
};

// The state of an incremental batch between steps (the server's gauges).
struct BatchState {
  int64_t waiting = 0;          // added, not admitted yet
  int64_t running = 0;          // admitted: holding KV blocks
  int64_t kv_blocks_used = 0;   // blocks held or reserved by running requests
  int64_t kv_blocks_free = 0;
  int64_t kv_blocks_total = 0;
  int64_t last_step_tokens = 0; // tokens computed by the last step
  int64_t last_step_seqs = 0;   // sequences in the last step's batch
};

// How the engine splits its memory (DESIGN.md section 2).
struct MemoryPlan {
  std::string backend;
  int64_t mem_budget_bytes = 0;   // 0: no overall budget (KV pool from kv_mem_bytes)
  int64_t weight_bytes = 0;       // weights as the backend holds them
  int64_t workspace_bytes = 0;    // activations and logits of the largest step, measured
  int64_t step_tokens = 0;        // tokens per forward step (EngineOptions', resolved)
  int64_t runtime_reserve_bytes = 0;  // left for what the GPU driver takes by itself later
  int64_t kv_pool_bytes = 0;
  int64_t kv_block_bytes = 0;
  int64_t kv_blocks = 0;
  int64_t block_tokens = 0;
  int64_t kv_heads_total = 0;     // layers x KV heads: blocks per block_tokens entries
  int64_t kv_bytes_per_token = 0; // K and V of one token, all layers and heads
};

class Engine {
 public:
  virtual ~Engine() = default;
  // Throws batchmax::Error with a clear message (bad file, unknown architecture, ...).
  static std::unique_ptr<Engine> create(const EngineOptions& opts);

  // Throws batchmax::Error for dummy weights, which have no tokenizer.
  virtual const Tokenizer& tokenizer() const = 0;
  // nullptr when the model has no chat template.
  virtual const ChatTemplate* chat_template() const = 0;
  virtual int64_t context_length() const = 0;
  // The memory plan the engine runs with (what `batchmax plan` prints).
  virtual const MemoryPlan& memory_plan() const = 0;
  // Most bytes the backend has held since the engine started (weights, workspace, KV).
  virtual int64_t peak_backend_bytes() const = 0;
  // KV blocks one request of this shape reserves for its life; the blocks more that one
  // of its prefill steps holds until the step's eviction (batchmax: budget + chunk
  // against budget + slack), which come from a headroom the pool keeps once for all
  // requests; and how many such requests the pool holds at once (the largest batch for
  // this workload).
  virtual int64_t blocks_per_request(const KVSettings& kv, int64_t prompt_tokens,
                                     int64_t max_tokens) const = 0;
  virtual int64_t prefill_headroom_blocks(const KVSettings& kv, int64_t prompt_tokens,
                                          int64_t max_tokens) const = 0;
  int64_t max_concurrent(const KVSettings& kv, int64_t prompt_tokens, int64_t max_tokens) const {
    const int64_t b = blocks_per_request(kv, prompt_tokens, max_tokens);
    const int64_t room = memory_plan().kv_blocks - prefill_headroom_blocks(kv, prompt_tokens, max_tokens);
    return b > 0 && room > 0 ? room / b : 0;
  }

  // Runs every request to completion and returns outputs in request order. A request
  // that cannot run (empty or too long prompt, bad parameters) gets finish_reason
  // "error" and the others go on. on_output is called as each one finishes.
  std::vector<Output> generate(
      std::vector<Request> requests,
      const std::function<void(const Output&)>& on_output = nullptr,
      const std::function<void(const Progress&)>& on_progress = nullptr);

  // Incremental use (the server): requests join and leave between steps. One Batch at a
  // time per engine (it owns the engine's KV cache while it lives); not thread-safe: one
  // thread adds, cancels and steps (EngineLoop in engine_loop.h wraps it in a thread).
  class Batch {
   public:
    using Handle = uint64_t;
    struct Callbacks {
      std::function<void(const TokenInfo&)> on_token;  // each generated token
      std::function<void(Output)> on_finish;           // exactly once per added request
    };
    virtual ~Batch() = default;
    // An invalid request (empty or too long prompt, bad parameters, more KV than the pool
    // holds) finishes at once, inside add, with finish_reason "error".
    virtual Handle add(Request r, Callbacks cb) = 0;
    // Finishes the request now with "cancelled" (on_finish runs before cancel returns)
    // and frees its blocks; false when it is not here (finished already or never added).
    // With steps in flight, the blocks of a request in the step in flight are freed when
    // that step's tokens are read (within the next step()).
    virtual bool cancel(Handle h) = 0;
    virtual bool idle() const = 0;  // nothing waiting or running
    // Admits what fits, runs one forward step, retires finished requests (their
    // on_finish runs before step returns). Returns the batch's totals so far (the last
    // step's fields describe this step); no work when idle. With steps in flight
    // (EngineOptions::overlap_steps) it launches a step and then reads the previous
    // one's tokens, so the totals are one step behind the launches. If the step fails (backend
    // error), the running requests finish with "error" and the exception propagates.
    virtual Progress step() = 0;
    virtual BatchState state() const = 0;
  };
  virtual std::unique_ptr<Batch> open_batch() = 0;
};

}  // namespace batchmax
