#pragma once
// Seeded, download-free generators of long-context samples built to a target length in
// the model's own tokens, and their scoring:
//   passkey       a 5-digit pass key hidden at a chosen depth in repeated filler
//   niah_single   RULER needle-in-a-haystack in real English text, one needle
//   niah_multikey the same with three distractor needles under other keys
//   vartrack      RULER variable tracking: a 5-variable assignment chain in filler
//   ppl           perplexity of real English text (from the prompt's log-probs)
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace batchmax {
class Tokenizer;
class ChatTemplate;
}  // namespace batchmax

namespace batchmax::eval {

class TextCorpus;

struct Sample {
  std::string task;
  int64_t index = 0;
  std::vector<int32_t> prompt;       // token ids, BOS included when the model wants one
  std::string prompt_text;           // what was tokenised (tests, debugging)
  std::vector<std::string> answers;  // passkey/niah: the number; vartrack: the names
  int max_tokens = 16;
  double depth = -1;                 // where the (first) needle sits: 0 start .. 1 end
  int64_t score_from = 0;            // ppl: log-probs of prompt[score_from..] are scored
};

struct TaskSpec {
  std::string task;
  int64_t context_tokens = 2048;  // prompt + answer room, in the model's tokens
  int n_samples = 20;
  uint64_t seed = 1;
  double depth = -1;   // >= 0: every needle sample at this depth; < 0: spread over 0..1
  bool chat = true;    // use the chat template when the model has one
};

const std::vector<std::string>& task_names();
bool is_task(std::string_view task);
bool is_perplexity_task(std::string_view task);
// Whether the task needs the English corpus (TextCorpus).
bool task_needs_corpus(std::string_view task);
// What "score" means for the task in the results.
std::string task_metric(std::string_view task);

// Samples 0..n-1 of the spec; sample i is the same whatever n is (depth aside, which is
// spread over n). Prompts are within ~1% of context_tokens - max_tokens. Throws
// batchmax::Error for an unknown task, a missing corpus or a context too short.
std::vector<Sample> make_samples(const TaskSpec& spec, const Tokenizer& tok,
                                 const ChatTemplate* chat, const TextCorpus* corpus);

// Accuracy of one generated answer, 0..1 (not for ppl).
double score_answer(const Sample& s, std::string_view output);
// The first run of digits in s, or "".
std::string first_number(std::string_view s);

// ppl: sum of -log p over the scored prompt positions and their count.
struct Nll {
  double sum = 0;
  int64_t tokens = 0;
};
// logprobs[i] is log p(prompt[i + 1] | prompt[..i]) (Output::prompt_logprobs).
Nll sample_nll(const Sample& s, const std::vector<float>& prompt_logprobs);

}  // namespace batchmax::eval
