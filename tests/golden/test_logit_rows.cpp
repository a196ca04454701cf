// The logits of a step are computed a slice of rows at a time, in a buffer that reuses the
// per-layer activations' memory (Model::Workspace). A model whose vocabulary is large
// next to its activations gets the smallest slice (64 rows), so a step of 150 sequences
// takes three slices. Every sequence's logits (and greedy argmax) must be those it gets
// when it runs alone, whatever slice its row landed in. On the CPU always; on the GPU
// when there is one (else that test skips, saying why).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <memory>
#include <random>

#include "backend/backend.h"
#include "backend/row_sampling.h"
#include "kernels/cuda_test_util.h"
#include "kv/paged_kv_cache.h"
#include "model/model.h"
#include "model/presets.h"

namespace batchmax {
namespace {

constexpr int kSeqs = 150;

HParams wide_vocab() {
  HParams hp = preset_hparams("tiny");
  hp.n_vocab = 8192;  // 32 KiB of F32 logits a row against ~2.5 KiB of activations
  return hp;
}

std::vector<std::vector<int32_t>> prompts(int64_t vocab) {
  std::mt19937 rng(5);
  std::vector<std::vector<int32_t>> p(kSeqs);
  for (size_t i = 0; i < p.size(); ++i) {
    p[i].resize(1 + i % 3);
    for (int32_t& t : p[i]) t = int32_t(rng() % uint32_t(vocab));
  }
  return p;
}

std::unique_ptr<PagedKVCache> new_kv(const HParams& hp, Backend& be) {
  KVCacheConfig kc;
  kc.n_layer = int(hp.n_layer);
  kc.n_kv_heads = int(hp.n_head_kv);
  kc.head_dim = int(hp.head_dim);
  kc.n_blocks = 2048;
  return std::make_unique<PagedKVCache>(be, kc);
}

struct StepResult {
  std::vector<std::vector<float>> logits;  // per sequence (empty for argmax-only rows)
  std::vector<int32_t> argmax;             // per sequence (-1 for logits rows)
};

// One forward over the sequences [first, first + n) of `ps`; with `mixed`, those of odd
// index want only the argmax.
StepResult run_step(Model& model, Backend& be, const std::vector<std::vector<int32_t>>& ps,
                    size_t first, size_t n, bool mixed) {
  const HParams& hp = model.hparams();
  auto kv_ptr = new_kv(hp, be);
  PagedKVCache& kv = *kv_ptr;
  std::vector<SeqBatch> batch;
  for (size_t i = first; i < first + n; ++i) {
    EXPECT_TRUE(kv.add_sequence(int64_t(i), int64_t(ps[i].size())));
    SeqBatch b;
    b.seq_id = int64_t(i);
    b.tokens = ps[i];
    b.want_logits = true;
    b.token_only = mixed && i % 2 == 1;
    kv.prepare(b.seq_id, int64_t(b.tokens.size()));
    batch.push_back(b);
  }
  const std::vector<float> lg = model.forward(batch, kv);
  const int64_t V = hp.n_vocab;
  StepResult r;
  size_t logit_row = 0, argmax_row = 0;
  for (const SeqBatch& b : batch) {
    if (b.token_only) {
      r.logits.emplace_back();
      r.argmax.push_back(model.picked_tokens()[argmax_row++]);
    } else {
      r.logits.emplace_back(lg.begin() + int64_t(logit_row) * V, lg.begin() + int64_t(logit_row + 1) * V);
      r.argmax.push_back(-1);
      ++logit_row;
    }
  }
  EXPECT_EQ(logit_row * size_t(V), lg.size());
  EXPECT_EQ(argmax_row, model.picked_tokens().size());
  return r;
}

// tol: normalised error allowed between a sequence's logits in the big step and alone
// (0 where the backend's rows do not depend on the batch).
void check_slices_match_single_runs(Backend& be, double tol) {
  const HParams hp = wide_vocab();
  Model model(hp, be, 3);
  const auto ps = prompts(hp.n_vocab);
  const StepResult all = run_step(model, be, ps, 0, ps.size(), true);
  for (size_t i = 0; i < ps.size(); ++i) {
    const StepResult one = run_step(model, be, ps, i, 1, false);  // alone, with its logits
    ASSERT_EQ(one.logits[0].size(), size_t(hp.n_vocab)) << i;
    if (i % 2 == 0) {
      ASSERT_EQ(all.logits[i].size(), size_t(hp.n_vocab)) << i;
      double num = 0, den = 0;
      for (int64_t t = 0; t < hp.n_vocab; ++t) {
        const double d = double(all.logits[i][t]) - double(one.logits[0][t]);
        num += d * d;
        den += double(one.logits[0][t]) * one.logits[0][t];
      }
      EXPECT_LE(std::sqrt(num / std::max(den, 1e-30)), tol) << "sequence " << i;
    } else {
      // The big step's argmax must pick (within tol of) the largest logit alone.
      const std::vector<float>& l = one.logits[0];
      const int32_t got = all.argmax[i];
      ASSERT_GE(got, 0);
      ASSERT_LT(got, hp.n_vocab);
      const float best = *std::max_element(l.begin(), l.end());
      EXPECT_GE(l[size_t(got)], best - float(tol) * std::max(1.0f, std::fabs(best))) << "sequence " << i;
      if (tol == 0) {
        const int32_t want = int32_t(std::max_element(l.begin(), l.end()) - l.begin());
        EXPECT_EQ(got, want) << "sequence " << i;
      }
    }
  }
}

TEST(LogitRows, SlicedLogitsEqualEachSequenceAloneCpu) {
  auto be = make_cpu_backend();
  check_slices_match_single_runs(*be, 1e-5);
}

TEST(CudaLogitRows, SlicedLogitsEqualEachSequenceAlone) {
  if (!cudatest::have_device()) GTEST_SKIP() << cudatest::no_device_reason();
  auto be = cudatest::new_gpu();
  // bf16 activations; products of 1 and of 150 rows may take different kernels.
  check_slices_match_single_runs(*be, 2e-2);
}

// Top-k / top-p rows: their candidates are the best entries of the logits the same step
// gives when the rows ask for logits, sorted by value then index; where the best 1024 do
// not decide the draw (flat rows at top-p 0.999), the first 4096 of the sorted row come
// back, and where those do not either, the token the backend drew over the whole sorted
// row with the row's uniform (draw_sorted's pick).
void check_candidate_rows(Backend& be) {
  const HParams hp = wide_vocab();
  Model model(hp, be, 3);
  const auto ps = prompts(hp.n_vocab);
  const StepResult all = run_step(model, be, ps, 0, ps.size(), false);
  auto kv_ptr = new_kv(hp, be);
  PagedKVCache& kv = *kv_ptr;
  std::vector<SeqBatch> batch;
  for (size_t i = 0; i < ps.size(); ++i) {
    EXPECT_TRUE(kv.add_sequence(int64_t(i), int64_t(ps[i].size())));
    SeqBatch b;
    b.seq_id = int64_t(i);
    b.tokens = ps[i];
    b.want_logits = true;
    // Temperature 100 (flat: 1024 of 8192 entries hold ~1/8 of the mass) or 0.1 (sharp).
    b.inv_temperature = i % 10 == 9 ? 0.01f : 10.0f;
    if (i % 2 == 0) {
      b.sample_top_k = 20;
      b.top_candidates_k = 20;
    } else {
      b.sample_top_p = i % 10 == 9 ? 0.999f : 0.5f;
      b.top_candidates_k = kMaxTopCandidates;
    }
    b.uniform = 0.05 + 0.9 * double(i % 7) / 6.0;
    kv.prepare(b.seq_id, int64_t(b.tokens.size()));
    batch.push_back(b);
  }
  EXPECT_TRUE(model.forward(batch, kv).empty());
  ASSERT_EQ(model.candidates().size(), ps.size());
  int whole_rows = 0;
  for (size_t i = 0; i < ps.size(); ++i) {
    const Model::RowCandidates& rc = model.candidates()[i];
    const std::vector<float>& l = all.logits[i];
    std::vector<int32_t> order(l.size());
    for (size_t j = 0; j < l.size(); ++j) order[j] = int32_t(j);
    std::stable_sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return l[size_t(a)] > l[size_t(b)]; });
    // One launch per slice asks for the slice's largest k: 1024 here; the flat rows get
    // the first 4096 of the sorted row, which hold too little of their mass, and a token.
    const bool wide = i % 10 == 9;
    ASSERT_EQ(rc.values.size(), wide ? size_t(kSortedPrefix) : size_t(kMaxTopCandidates)) << i;
    ASSERT_EQ(rc.ids.size(), rc.values.size()) << i;
    for (size_t j = 0; j < rc.values.size(); ++j) {
      ASSERT_EQ(rc.ids[j], order[j]) << "sequence " << i << " rank " << j;
      ASSERT_EQ(rc.values[j], l[size_t(order[j])]) << "sequence " << i << " rank " << j;
    }
    const bool decides = candidates_decide(rc.values, rc.whole_mass, batch[i].inv_temperature,
                                           batch[i].sample_top_k, batch[i].sample_top_p, hp.n_vocab);
    EXPECT_EQ(decides, !wide) << i;
    if (wide) {
      ++whole_rows;
      std::vector<std::pair<float, int32_t>> cand;
      for (int32_t o : order) cand.push_back({l[size_t(o)], o});
      std::vector<double> prob;
      EXPECT_EQ(rc.token, draw_sorted(cand, batch[i].inv_temperature, rc.whole_mass,
                                      batch[i].sample_top_p, batch[i].uniform, prob))
          << i;
    } else {
      EXPECT_EQ(rc.token, -1) << i;
    }
  }
  EXPECT_EQ(whole_rows, int(ps.size() / 10));
}

TEST(LogitRows, CandidateRowsCpu) {
  auto be = make_cpu_backend();
  check_candidate_rows(*be);
}

TEST(CudaLogitRows, CandidateRows) {
  if (!cudatest::have_device()) GTEST_SKIP() << cudatest::no_device_reason();
  auto be = cudatest::new_gpu();
  check_candidate_rows(*be);
}

}  // namespace
}  // namespace batchmax
