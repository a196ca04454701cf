#include "eval/eval_tasks.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <functional>
#include <unordered_map>

#include "core/error.h"
#include "eval/eval_text.h"
#include "tokenizer/chat_template.h"
#include "tokenizer/tokenizer.h"

namespace batchmax::eval {
namespace {

// splitmix64: the same numbers on every compiler and standard library (std::
// distributions are not portable).
struct Rng {
  uint64_t s;
  explicit Rng(uint64_t seed) : s(seed) {}
  uint64_t next() {
    uint64_t z = (s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  }
  uint64_t below(uint64_t n) { return next() % n; }
  double unit() { return double(next() >> 11) / double(1ull << 53); }
};

uint64_t hash_str(std::string_view s) {
  uint64_t h = 1469598103934665603ull;  // FNV-1a
  for (char c : s) h = (h ^ uint8_t(c)) * 1099511628211ull;
  return h;
}

// Every sample has its own stream, so sample i does not depend on how many are drawn.
Rng sample_rng(const TaskSpec& spec, int64_t i) {
  Rng r(spec.seed ^ hash_str(spec.task) ^ (uint64_t(spec.context_tokens) << 20) ^
        (uint64_t(i) * 0x2545f4914f6cdd1dull));
  r.next();
  return r;
}

// The classic passkey filler (Mohtashami & Jaggi), also RULER's noise for vartrack.
const std::vector<std::string> kFiller = {"The grass is green.", "The sky is blue.",
                                          "The sun is yellow.", "Here we go.",
                                          "There and back again."};

const std::vector<std::string> kAdjectives = {
    "abundant", "agreeable", "ancient", "bitter",  "brave",   "bright",  "calm",    "cheerful",
    "clever",   "crooked",   "curious", "damp",    "dusty",   "eager",   "elegant", "fancy",
    "fierce",   "fluffy",    "fragile", "gentle",  "gloomy",  "golden",  "hollow",  "humble",
    "icy",      "jolly",     "lively",  "lonely",  "mighty",  "modern",  "muddy",   "nervous",
    "noisy",    "odd",       "pale",    "polite",  "quiet",   "rapid",   "rusty",   "shiny",
    "silent",   "sleepy",    "smooth",  "sturdy",  "tame",    "tiny",    "velvet",  "wooden"};
const std::vector<std::string> kNouns = {
    "apple",   "armchair", "badge",   "balloon", "bicycle", "blanket", "bottle",  "bridge",
    "candle",  "canyon",   "carpet",  "castle",  "compass", "cottage", "crayon",  "desert",
    "drum",    "engine",   "feather", "forest",  "garden",  "glacier", "hammer",  "harbor",
    "helmet",  "island",   "jacket",  "kettle",  "ladder",  "lantern", "meadow",  "mirror",
    "needle",  "orchard",  "pencil",  "piano",   "pillow",  "rainbow", "river",   "saddle",
    "shovel",  "spoon",    "teapot",  "tunnel",  "umbrella", "valley", "violin",  "window"};

std::string random_digits(Rng& r, int n) {
  std::string s(1, char('1' + r.below(9)));  // no leading zero
  while (int(s.size()) < n) s.push_back(char('0' + r.below(10)));
  return s;
}

std::string random_key(Rng& r) {
  return kAdjectives[r.below(kAdjectives.size())] + "-" + kNouns[r.below(kNouns.size())];
}

std::string random_var(Rng& r) {
  std::string s;
  for (int i = 0; i < 5; ++i) s.push_back(char('A' + r.below(26)));
  return s;
}

struct Needle {
  double depth;
  std::string text;
};

// A prompt around a haystack: intro, the haystack, the question, then the start of
// the answer that the model continues (after the assistant header in chat form).
struct PromptParts {
  std::string intro, question, answer_prefix;
};

class PromptEncoder {
 public:
  PromptEncoder(const Tokenizer& tok, const ChatTemplate* chat) : tok_(tok), chat_(chat) {}

  std::string text(const PromptParts& p, const std::string& haystack) const {
    std::string user = p.intro + "\n\n" + haystack + "\n\n" + p.question;
    if (chat_) return chat_->render({{"user", user}}, true) + p.answer_prefix;
    return user + "\n" + p.answer_prefix;
  }

  std::vector<int32_t> encode(const std::string& text) const {
    std::vector<int32_t> ids = tok_.encode(text, true, chat_ != nullptr);
    // Templates that write their own BOS text must not get a second one.
    const int32_t bos = tok_.bos_id();
    if (bos >= 0 && ids.size() >= 2 && ids[0] == bos && ids[1] == bos) ids.erase(ids.begin());
    return ids;
  }

 private:
  const Tokenizer& tok_;
  const ChatTemplate* chat_;
};

// Builds a haystack of whole units (sentences) plus a few words of the next one, with
// needles between units at their depths, sized so the whole prompt lands just under
// the target token count.
class HaystackFitter {
 public:
  using UnitFn = std::function<std::string(size_t)>;  // unit text with its separator

  HaystackFitter(const Tokenizer& tok, const PromptEncoder& enc, UnitFn unit)
      : tok_(tok), enc_(enc), unit_(std::move(unit)) {}

  struct Fit {
    std::string text;
    std::vector<int32_t> ids;
  };

  Fit fit(const PromptParts& parts, const std::vector<Needle>& needles, int64_t target) {
    auto build = [&](size_t n, size_t w) {
      return enc_.text(parts, haystack(n, w, needles));
    };
    const int64_t base = int64_t(enc_.encode(build(0, 0)).size());
    if (base + 16 > target)
      throw Error("context of " + std::to_string(target) + " tokens is too short for the task's " +
                  std::to_string(base) + "-token prompt");
    // Estimate from the units' own token counts, then correct against the real count.
    size_t n = 0;
    for (int64_t sum = base; sum + count(n) <= target; ++n) sum += count(n);
    size_t w = 0;
    const int64_t slack = std::max<int64_t>(2, target / 200);
    Fit best;
    for (int iter = 0; iter < 16; ++iter) {
      std::string text = build(n, w);
      std::vector<int32_t> ids = enc_.encode(text);
      const int64_t got = int64_t(ids.size());
      if (got <= target && got > int64_t(best.ids.size())) best = {text, ids};
      if (got <= target && target - got <= slack) break;
      // Aim a little under the target: the next measurement corrects the estimate.
      move(n, w, double(target - got) - (got > target ? 1.0 : 0.5 * double(slack)));
    }
    if (best.ids.empty()) throw Error("could not fit the prompt into " + std::to_string(target) + " tokens");
    return best;
  }

  // Units [0, n), then w words of unit n; needles go in before the unit at their depth.
  std::string haystack(size_t n, size_t w, const std::vector<Needle>& needles) const {
    std::vector<size_t> at(needles.size());
    for (size_t k = 0; k < needles.size(); ++k)
      at[k] = size_t(std::lround(std::clamp(needles[k].depth, 0.0, 1.0) * double(n)));
    std::string out;
    for (size_t i = 0; i <= n; ++i) {
      for (size_t k = 0; k < needles.size(); ++k)
        if (at[k] == i) out += needles[k].text + " ";
      if (i < n) out += unit_(i);
    }
    if (w > 0) out += first_words(unit_(n), w);
    while (!out.empty() && std::isspace(static_cast<unsigned char>(out.back()))) out.pop_back();
    return out;
  }

 private:
  // Moves the end of the haystack by about `tokens` (negative: shorter), using each
  // unit's own token count per word as the exchange rate.
  void move(size_t& n, size_t& w, double tokens) {
    for (int guard = 0; guard < 100000 && std::fabs(tokens) >= 0.5; ++guard) {
      const double words = double(std::max<size_t>(1, count_words(n)));
      const double per_word = std::max(0.5, double(count(n)) / words);
      if (tokens > 0) {
        const double left = (words - double(w)) * per_word;
        if (left <= tokens) {
          tokens -= left;
          ++n;
          w = 0;
        } else {
          w = std::min(size_t(words) - 1, w + size_t(std::max(1.0, std::floor(tokens / per_word))));
          return;
        }
      } else {
        if (w == 0) {
          if (n == 0) return;
          --n;
          w = count_words(n);
          continue;
        }
        const double have = double(w) * per_word;
        if (have <= -tokens) {
          tokens += have;
          w = 0;
        } else {
          w -= size_t(std::max(1.0, std::ceil(-tokens / per_word)));
          return;
        }
      }
    }
  }

  int64_t count(size_t i) {
    auto it = counts_.find(i);
    if (it != counts_.end()) return it->second;
    int64_t c = int64_t(tok_.encode(unit_(i), false, false).size());
    counts_[i] = c;
    return c;
  }
  size_t count_words(size_t i) const {
    std::string u = unit_(i);
    size_t words = 0;
    bool in = false;
    for (char c : u) {
      bool sp = std::isspace(static_cast<unsigned char>(c));
      if (!sp && !in) ++words;
      in = !sp;
    }
    return words;
  }
  static std::string first_words(const std::string& s, size_t w) {
    size_t i = 0, words = 0;
    while (i < s.size()) {
      while (i < s.size() && std::isspace(static_cast<unsigned char>(s[i]))) ++i;
      if (i == s.size() || words == w) break;
      while (i < s.size() && !std::isspace(static_cast<unsigned char>(s[i]))) ++i;
      ++words;
    }
    return s.substr(0, i);
  }

  const Tokenizer& tok_;
  const PromptEncoder& enc_;
  UnitFn unit_;
  std::unordered_map<size_t, int64_t> counts_;
};

int task_max_tokens(std::string_view task) {
  if (task == "vartrack") return 32;
  if (task == "ppl") return 1;
  return 12;
}

double depth_of(const TaskSpec& spec, int64_t i) {
  if (spec.depth >= 0) return std::min(spec.depth, 1.0);
  return spec.n_samples > 1 ? double(i) / double(spec.n_samples - 1) : 0.5;
}

Sample make_ppl(const TaskSpec& spec, int64_t i, const Tokenizer& tok, const TextCorpus& corpus) {
  Rng r = sample_rng(spec, i);
  // Start at a paragraph's first sentence so the text reads from its beginning.
  size_t start = r.below(corpus.size());
  while (start > 0 && !corpus.ends_paragraph(start - 1)) --start;
  Sample s;
  s.task = spec.task;
  s.index = i;
  s.max_tokens = 1;
  for (size_t chars = size_t(spec.context_tokens) * 5;; chars *= 2) {
    s.prompt_text = corpus.text_from(start, chars);
    s.prompt = tok.encode(s.prompt_text, true, false);
    if (int64_t(s.prompt.size()) >= spec.context_tokens) break;
  }
  s.prompt.resize(size_t(spec.context_tokens));
  // Score the second half: there every token's context is longer than the first half,
  // which is where a bounded cache has had to evict.
  s.score_from = spec.context_tokens / 2;
  return s;
}

Sample make_needle_task(const TaskSpec& spec, int64_t i, const Tokenizer& tok,
                        const ChatTemplate* chat, const TextCorpus* corpus) {
  Rng r = sample_rng(spec, i);
  Sample s;
  s.task = spec.task;
  s.index = i;
  s.max_tokens = task_max_tokens(spec.task);
  s.depth = depth_of(spec, i);
  PromptEncoder enc(tok, chat);
  PromptParts parts;
  std::vector<Needle> needles;
  HaystackFitter::UnitFn unit;

  if (spec.task == "passkey") {
    const std::string key = random_digits(r, 5);
    s.answers = {key};
    // The question is asked before the text too, and the answer is phrased like the
    // RULER needle ("... mentioned in the provided text is"): with the bare classic
    // prompt SmolLM2-135M defines what a pass key is instead of recalling it.
    parts.intro =
        "There is an important info hidden inside a lot of irrelevant text. Find it and "
        "memorize it. I will quiz you about the important information there: what is the "
        "pass key mentioned in the provided text?";
    needles.push_back({s.depth, "The pass key is " + key + ". Remember it. " + key + " is the pass key."});
    parts.question = "What is the pass key mentioned in the provided text?";
    parts.answer_prefix = "The pass key mentioned in the provided text is";
    const size_t shift = r.below(kFiller.size());
    unit = [shift](size_t u) { return kFiller[(u + shift) % kFiller.size()] + " "; };
  } else if (spec.task == "niah_single" || spec.task == "niah_multikey") {
    if (!corpus) throw Error(spec.task + " needs the English text corpus");
    const int n_needles = spec.task == "niah_multikey" ? 4 : 1;
    std::vector<std::string> keys;
    while (int(keys.size()) < n_needles) {
      std::string k = random_key(r);
      if (std::find(keys.begin(), keys.end(), k) == keys.end()) keys.push_back(k);
    }
    std::vector<std::string> values;
    for (int k = 0; k < n_needles; ++k) values.push_back(random_digits(r, 7));
    // Needle 0 is the one asked for; distractors go at random depths.
    for (int k = 0; k < n_needles; ++k)
      needles.push_back({k == 0 ? s.depth : r.unit(),
                         "One of the special magic numbers for " + keys[k] + " is: " + values[k] + "."});
    s.answers = {values[0]};
    parts.intro =
        "Some special magic numbers are hidden within the following text. Make sure to "
        "memorize it. I will quiz you about the numbers afterwards.";
    parts.question = "What is the special magic number for " + keys[0] + " mentioned in the provided text?";
    parts.answer_prefix = "The special magic number for " + keys[0] + " mentioned in the provided text is";
    const size_t start = r.below(corpus->size());
    unit = [corpus, start](size_t u) {
      return corpus->sentence(start + u) + (corpus->ends_paragraph(start + u) ? "\n\n" : " ");
    };
  } else if (spec.task == "vartrack") {
    std::vector<std::string> names;
    while (names.size() < 5) {
      std::string v = random_var(r);
      if (std::find(names.begin(), names.end(), v) == names.end()) names.push_back(v);
    }
    const std::string value = random_digits(r, 5);
    // The chain in reading order: the first statement at the sample's depth scaled into
    // the first half, the rest after it.
    std::vector<double> d = {s.depth * 0.5};
    for (int k = 1; k < 5; ++k) d.push_back(d[0] + (1.0 - d[0]) * r.unit());
    std::sort(d.begin() + 1, d.end());
    s.depth = d[0];
    needles.push_back({d[0], "VAR " + names[0] + " = " + value + "."});
    for (int k = 1; k < 5; ++k)
      needles.push_back({d[k], "VAR " + names[k] + " = VAR " + names[k - 1] + "."});
    s.answers = names;
    // RULER gives one worked example before the task; small models need it to answer
    // with names at all.
    const std::string task_line =
        "Memorize and track the chain(s) of variable assignment hidden in the following text.";
    parts.intro =
        "Example:\n" + task_line +
        "\n\nThe grass is green. VAR QPWOE = 54321. The sky is blue. VAR ZXCVB = VAR QPWOE. "
        "The sun is yellow. VAR MNBVC = VAR ZXCVB. Here we go.\n\nQuestion: Find all variables "
        "that are assigned the value 54321 in the text above.\nAnswer: According to the "
        "chain(s) of variable assignment in the text above, 3 variables are assigned the value "
        "54321, they are: QPWOE ZXCVB MNBVC\n\nNow the task:\n" + task_line;
    parts.question = "Question: Find all variables that are assigned the value " + value +
                     " in the text above.";
    parts.answer_prefix = "Answer: According to the chain(s) of variable assignment in the text above, 5 "
                          "variables are assigned the value " + value + ", they are:";
    const size_t shift = r.below(kFiller.size());
    unit = [shift](size_t u) { return kFiller[(u + shift) % kFiller.size()] + " "; };
  } else {
    throw Error("unknown eval task '" + spec.task + "'");
  }

  HaystackFitter fitter(tok, enc, unit);
  HaystackFitter::Fit f = fitter.fit(parts, needles, spec.context_tokens - s.max_tokens);
  s.prompt = std::move(f.ids);
  s.prompt_text = std::move(f.text);
  return s;
}

}  // namespace

const std::vector<std::string>& task_names() {
  static const std::vector<std::string> names = {"passkey", "niah_single", "niah_multikey",
                                                 "vartrack", "ppl"};
  return names;
}

bool is_task(std::string_view t) {
  const auto& n = task_names();
  return std::find(n.begin(), n.end(), t) != n.end();
}
bool is_perplexity_task(std::string_view t) { return t == "ppl"; }
bool task_needs_corpus(std::string_view t) {
  return t == "niah_single" || t == "niah_multikey" || t == "ppl";
}
std::string task_metric(std::string_view t) {
  if (t == "ppl") return "perplexity";  // exp(mean NLL) over the second half
  if (t == "vartrack") return "accuracy_pct_names";
  return "accuracy_pct";
}

std::vector<Sample> make_samples(const TaskSpec& spec, const Tokenizer& tok,
                                 const ChatTemplate* chat, const TextCorpus* corpus) {
  if (!is_task(spec.task)) throw Error("unknown eval task '" + spec.task + "'");
  if (task_needs_corpus(spec.task) && !corpus)
    throw Error("task " + spec.task + " needs the English text corpus");
  if (spec.n_samples <= 0) throw Error("n_samples must be positive");
  std::vector<Sample> out;
  for (int64_t i = 0; i < spec.n_samples; ++i) {
    if (is_perplexity_task(spec.task))
      out.push_back(make_ppl(spec, i, tok, *corpus));
    else
      out.push_back(make_needle_task(spec, i, tok, spec.chat ? chat : nullptr, corpus));
  }
  return out;
}

std::string first_number(std::string_view s) {
  size_t i = 0;
  while (i < s.size() && !std::isdigit(static_cast<unsigned char>(s[i]))) ++i;
  size_t j = i;
  while (j < s.size() && std::isdigit(static_cast<unsigned char>(s[j]))) ++j;
  return std::string(s.substr(i, j - i));
}

double score_answer(const Sample& s, std::string_view out) {
  if (s.answers.empty()) return 0;
  if (s.task == "vartrack") {
    // Each expected name counts when it appears as a whole word.
    int found = 0;
    for (const auto& name : s.answers) {
      for (size_t at = out.find(name); at != std::string_view::npos; at = out.find(name, at + 1)) {
        const bool left = at == 0 || !std::isalnum(static_cast<unsigned char>(out[at - 1]));
        const size_t e = at + name.size();
        const bool right = e == out.size() || !std::isalnum(static_cast<unsigned char>(out[e]));
        if (left && right) {
          ++found;
          break;
        }
      }
    }
    return double(found) / double(s.answers.size());
  }
  return first_number(out) == s.answers[0] ? 1.0 : 0.0;
}

Nll sample_nll(const Sample& s, const std::vector<float>& lp) {
  Nll r;
  // lp[i] scores prompt[i + 1]; positions score_from.. are prompt[score_from..].
  for (size_t pos = size_t(std::max<int64_t>(s.score_from, 1)); pos < s.prompt.size(); ++pos) {
    if (pos - 1 >= lp.size()) break;
    r.sum -= double(lp[pos - 1]);
    ++r.tokens;
  }
  return r;
}

}  // namespace batchmax::eval
