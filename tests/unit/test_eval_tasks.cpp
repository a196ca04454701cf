// The eval's sample generators, text cleaning, scoring and report rendering. Tests that
// measure prompt lengths use the SmolLM2 tokenizer and skip when it is not fetched.
#include <gtest/gtest.h>

#include <cmath>
#include <string>

#include "../test_support.h"
#include "core/error.h"
#include "eval/eval_report.h"
#include "eval/eval_runner.h"
#include "eval/eval_tasks.h"
#include "eval/eval_text.h"
#include "format/gguf_reader.h"
#include "tokenizer/chat_template.h"
#include "tokenizer/tokenizer.h"

namespace batchmax::eval {
namespace {

// A few paragraphs of plain English (the corpus wraps around when a haystack needs more).
const char* kText =
    "The river rose slowly through the night, and by morning the lower fields were under "
    "water. Nobody in the village was surprised. They had seen it happen every spring.\n\n"
    "Martha walked to the bridge with her brother. The planks were wet but still firm, and "
    "the old rope railing had held through another winter. She counted the boats below.\n\n"
    "In the afternoon the wind turned to the west. Clouds gathered over the hills, and the "
    "baker closed his shop early. Children ran home along the muddy lane, laughing.\n\n"
    "The schoolmaster wrote a letter to the council about the road. It was the third letter "
    "that year. He did not expect an answer, but he kept a copy of every one.\n";

TEST(EvalText, RstToProseKeepsParagraphsAndDropsMarkup) {
  const char* rst =
      ".. _tut-intro:\n\n"
      "*****************\nWhetting Appetite\n*****************\n\n"
      "If you do much work on computers, you may use :func:`len` or the :class:`~a.b.Dict`\n"
      "class, see `the guide <https://example.org>`_ and ``print()`` for **details**.\n\n"
      "Here is an example::\n\n"
      "   >>> print(1)\n\n"
      "* a bullet item that is not prose at all, really not.\n\n"
      "Short.\n";
  std::string p = rst_to_prose(rst);
  EXPECT_EQ(p,
            "If you do much work on computers, you may use len or the Dict class, see the guide "
            "and print() for details.\n");
}

TEST(EvalText, SplitSentencesKeepsAbbreviations) {
  auto s = split_sentences("It works, e.g. Like this. Does it? Yes! A last one");
  ASSERT_EQ(s.size(), 4u);
  EXPECT_EQ(s[0], "It works, e.g. Like this.");
  EXPECT_EQ(s[1], "Does it?");
  EXPECT_EQ(s[3], "A last one");
}

TEST(EvalText, CorpusFromTextWrapsAround) {
  TextCorpus c = TextCorpus::from_text(kText, "test");
  EXPECT_EQ(c.size(), 12u);
  EXPECT_TRUE(c.ends_paragraph(2));
  EXPECT_FALSE(c.ends_paragraph(0));
  EXPECT_EQ(c.sentence(12), c.sentence(0));
  EXPECT_GE(c.text_from(5, 2000).size(), 2000u);
}

TEST(EvalText, MissingDirectoryNamesThePackage) {
  try {
    TextCorpus::load("/nonexistent/eval/text");
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("python3-doc"), std::string::npos) << e.what();
  }
}

TEST(EvalScore, NumbersAndNames) {
  Sample s;
  s.task = "passkey";
  s.answers = {"71432"};
  EXPECT_EQ(first_number(" 71432. Remember it."), "71432");
  EXPECT_EQ(first_number("none"), "");
  EXPECT_EQ(score_answer(s, " 71432."), 1.0);
  EXPECT_EQ(score_answer(s, " 714321"), 0.0);     // a longer number is wrong
  EXPECT_EQ(score_answer(s, " 12345 or 71432"), 0.0);  // the first number counts
  EXPECT_EQ(score_answer(s, " the pass key"), 0.0);
  s.task = "niah_single";
  s.answers = {"4490675"};
  EXPECT_EQ(score_answer(s, " 4490675. This is"), 1.0);
  s.task = "vartrack";
  s.answers = {"ABCDE", "FGHIJ", "KLMNO", "PQRST", "UVWXY"};
  EXPECT_DOUBLE_EQ(score_answer(s, " ABCDE, FGHIJ and KLMNO"), 0.6);
  EXPECT_DOUBLE_EQ(score_answer(s, " XABCDE FGHIJK"), 0.0);  // whole words only
  EXPECT_DOUBLE_EQ(score_answer(s, "ABCDE FGHIJ KLMNO PQRST UVWXY"), 1.0);
}

TEST(EvalScore, NllOfTheScoredHalf) {
  Sample s;
  s.task = "ppl";
  s.prompt = {1, 2, 3, 4, 5};
  s.score_from = 3;  // prompt[3], prompt[4] <- logprobs[2], logprobs[3]
  Nll n = sample_nll(s, {-9.f, -9.f, -1.f, -2.f});
  EXPECT_EQ(n.tokens, 2);
  EXPECT_DOUBLE_EQ(n.sum, 3.0);
}

TEST(EvalRunner, PlanSkipsUselessCells) {
  GridSpec g;
  g.tasks = {"passkey", "ppl"};
  g.contexts = {512};
  g.modes = {"full", "post-prefill", "batchmax"};
  g.policies = {"snapkv", "h2o"};
  g.budgets = {128, 1024};
  validate_grid(g);
  std::vector<Cell> cells = plan_cells(g);
  // passkey: full + 2 modes x 2 policies x budget 128; ppl: full + batchmax x 2 policies.
  ASSERT_EQ(cells.size(), 5u + 3u);
  EXPECT_EQ(cells[0].kv.mode, "full");
  for (const Cell& c : cells) {
    EXPECT_NE(c.kv.budget, 1024) << "budget over the context evicts nothing";
    EXPECT_FALSE(c.task == "ppl" && c.kv.mode == "post-prefill");
  }
  g.tasks = {"nope"};
  EXPECT_THROW(validate_grid(g), Error);
}

TEST(EvalReport, JsonAndMarkdown) {
  Row full;
  full.model = "m";
  full.task = "passkey";
  full.context_tokens = 2048;
  full.mode = "full";
  full.policy = "-";
  full.chunk = 512;
  full.score = 80;
  full.metric = "accuracy_pct";
  full.n_samples = 10;
  Row pp = full, bm = full;
  pp.mode = "post-prefill";
  pp.policy = bm.policy = "snapkv";
  pp.kv_budget = bm.kv_budget = 256;
  pp.score = 60;
  bm.mode = "batchmax";
  bm.score = 40;
  const std::string js = rows_to_json_text({full, pp, bm});
  auto arr = nlohmann::json::parse(js);
  ASSERT_EQ(arr.size(), 3u);
  EXPECT_EQ(arr[0]["kv_budget"], "-");
  EXPECT_EQ(arr[1]["kv_budget"], 256);
  for (const char* k : {"model", "task", "context_tokens", "mode", "policy", "kv_budget", "chunk",
                        "score", "n_samples", "commit", "backend", "seconds"})
    EXPECT_TRUE(arr[2].contains(k)) << k;
  EXPECT_EQ(row_from_json(arr[2]).score, 40);
  const std::string md = rows_to_markdown({full, pp, bm});
  EXPECT_NE(md.find("## passkey, 2048 tokens"), std::string::npos) << md;
  EXPECT_NE(md.find("Full cache: **80.0**"), std::string::npos) << md;
  EXPECT_NE(md.find("| post-prefill | snapkv | 60.0 (75%) |"), std::string::npos) << md;
  EXPECT_NE(md.find("| batchmax | snapkv | 40.0 (50%) |"), std::string::npos) << md;
  EXPECT_NE(md.find("| Δ | snapkv | -20.0 |"), std::string::npos) << md;
}

// With the real tokenizer and chat template.
class EvalSamples : public ::testing::Test {
 protected:
  void SetUp() override {
    BATCHMAX_REQUIRE_SMOLLM2();
    file_ = gguf::File::open(test::smollm2_path());
    tok_ = Tokenizer::from_gguf(*file_);
    chat_ = std::make_unique<ChatTemplate>(ChatTemplate::from_gguf(*file_));
    corpus_ = std::make_unique<TextCorpus>(TextCorpus::from_text(kText, "test"));
  }
  std::vector<Sample> make(const std::string& task, int64_t ctx, int n, uint64_t seed,
                           double depth = -1) {
    TaskSpec s;
    s.task = task;
    s.context_tokens = ctx;
    s.n_samples = n;
    s.seed = seed;
    s.depth = depth;
    return make_samples(s, *tok_, chat_.get(), corpus_.get());
  }
  std::unique_ptr<gguf::File> file_;
  std::unique_ptr<Tokenizer> tok_;
  std::unique_ptr<ChatTemplate> chat_;
  std::unique_ptr<TextCorpus> corpus_;
};

TEST_F(EvalSamples, DeterministicPerSeed) {
  for (const std::string task : {"passkey", "niah_single", "niah_multikey", "vartrack", "ppl"}) {
    auto a = make(task, 512, 3, 7), b = make(task, 512, 3, 7), c = make(task, 512, 3, 8);
    for (int i = 0; i < 3; ++i) {
      EXPECT_EQ(a[i].prompt, b[i].prompt) << task;
      EXPECT_EQ(a[i].answers, b[i].answers) << task;
    }
    EXPECT_NE(a[0].prompt, c[0].prompt) << task << ": another seed, another sample";
  }
  // Sample i does not depend on how many are drawn (at a fixed depth).
  EXPECT_EQ(make("niah_single", 512, 2, 3, 0.5)[1].prompt, make("niah_single", 512, 5, 3, 0.5)[1].prompt);
}

TEST_F(EvalSamples, PromptsHitTheTargetLength) {
  for (const std::string task : {"passkey", "niah_single", "niah_multikey", "vartrack"}) {
    for (int64_t ctx : {512, 2048}) {
      for (const Sample& s : make(task, ctx, 4, 1)) {
        const double target = double(ctx - s.max_tokens);
        EXPECT_LE(double(s.prompt.size()), target) << task << " " << ctx;
        EXPECT_GE(double(s.prompt.size()), 0.98 * target) << task << " " << ctx;
        EXPECT_EQ(s.prompt, tok_->encode(s.prompt_text, true, true)) << "prompt_text is what was encoded";
      }
    }
  }
  for (const Sample& s : make("ppl", 1024, 2, 1)) {
    EXPECT_EQ(s.prompt.size(), 1024u);
    EXPECT_EQ(s.score_from, 512);
  }
}

TEST_F(EvalSamples, NeedleSitsAtTheAskedDepth) {
  for (const std::string task : {"passkey", "niah_single"}) {
    for (double depth : {0.0, 0.25, 0.5, 0.9, 1.0}) {
      Sample s = make(task, 2048, 1, 5, depth)[0];
      const std::string& t = s.prompt_text;
      const std::string needle = task == "passkey" ? "The pass key is " + s.answers[0]
                                                   : "is: " + s.answers[0] + ".";
      const size_t at = t.find(needle);
      ASSERT_NE(at, std::string::npos) << task;
      EXPECT_EQ(t.find(needle, at + 1), std::string::npos) << "one needle";
      // The haystack runs from after the intro's blank line to the question's.
      const size_t h0 = t.find("\n\n") + 2;
      const size_t h1 = t.rfind("\n\n", t.find(task == "passkey" ? "What is the pass key" : "What is the special"));
      const double got = double(at - h0) / double(h1 - h0);
      EXPECT_NEAR(got, depth, 0.03) << task << " depth " << depth;
    }
  }
}

TEST_F(EvalSamples, MultikeyHasDistractorsAndVartrackAChain) {
  Sample m = make("niah_multikey", 1024, 1, 2)[0];
  size_t needles = 0;
  for (size_t at = m.prompt_text.find("special magic numbers for "); at != std::string::npos;
       at = m.prompt_text.find("special magic numbers for ", at + 1))
    ++needles;
  EXPECT_EQ(needles, 4u);
  Sample v = make("vartrack", 1024, 1, 2)[0];
  ASSERT_EQ(v.answers.size(), 5u);
  size_t last = 0;
  for (size_t k = 1; k < 5; ++k) {
    const size_t at = v.prompt_text.find("VAR " + v.answers[k] + " = VAR " + v.answers[k - 1]);
    ASSERT_NE(at, std::string::npos);
    EXPECT_GT(at, last) << "the chain is in reading order";
    last = at;
  }
}

TEST(EvalText, RealCorpusWhenInstalled) {
  std::unique_ptr<TextCorpus> c;
  try {
    c = std::make_unique<TextCorpus>(TextCorpus::load());
  } catch (const Error& e) {
    GTEST_SKIP() << e.what();
  }
  EXPECT_GT(c->size(), 1000u);
  for (size_t i = 0; i < c->size(); i += 97) {
    EXPECT_EQ(c->sentence(i).find("``"), std::string::npos) << c->sentence(i);
    EXPECT_EQ(c->sentence(i).find(":func:"), std::string::npos) << c->sentence(i);
  }
}

}  // namespace
}  // namespace batchmax::eval
