#pragma once
// Plans one engine step: decoding sequences contribute one token each and prefill chunks
// go in admission order (as in vLLM, a sequence's progress is one number: tokens
// computed so far). StepOrder says which of the two takes the step's tokens first.
#include <cstddef>
#include <cstdint>
#include <functional>
#include <vector>

namespace batchmax {

struct SeqProgress {
  int64_t prompt_tokens = 0;
  int64_t computed = 0;   // prompt tokens (and fed-back generated tokens) computed
  bool decoding = false;  // prompt done: feeds its last sampled token
  int64_t chunk = 0;      // this sequence's largest prefill chunk (0: the step's)
};

struct StepItem {
  size_t seq = 0;         // index into the progress list
  int64_t n_tokens = 0;   // tokens this step: 1 for decode, a chunk for prefill
  bool prefill = false;
  bool last_chunk = false;  // completes the prompt: logits wanted
};

enum class StepOrder {
  // Every decoding sequence gets its token, prefill takes what is left (at least one
  // token): requests stream steadily while others are prefilled (chunked prefill).
  DecodeFirst,
  // Prefill chunks take the step first, decoders the tokens left; when no prefill chunk
  // can run, every decoder does. Deferred decoders then run together as one large batch
  // (vLLM's scheduler before chunked prefill put prefill first too).
  PrefillFirst,
};

// step_tokens: the step's token budget; chunk: the largest prefill chunk (0: no limit).
// Items list decode rows first (in sequence order), then prefill chunks.
// room(i, n), when given, is asked before sequence i takes a prefill chunk of n tokens
// (the KV cache promises the blocks the chunk needs past the sequence's reservation);
// on false, prefill stops for this step, so no later sequence overtakes it.
std::vector<StepItem> plan_step(const std::vector<SeqProgress>& seqs, int64_t step_tokens,
                                int64_t chunk,
                                const std::function<bool(size_t, int64_t)>& room = nullptr,
                                StepOrder order = StepOrder::DecodeFirst);

}  // namespace batchmax
