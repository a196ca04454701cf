#include "engine/sampler.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <optional>
#include <map>
#include <set>
#include <random>

#include "core/error.h"

using namespace batchmax;

namespace {
std::vector<float> random_logits(uint32_t seed, int n) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> d(0, 3);
  std::vector<float> v(n);
  for (auto& x : v) x = d(rng);
  return v;
}
}  // namespace

TEST(Sampler, GreedyIsArgmax) {
  auto l = random_logits(7, 1000);
  SamplingParams p;
  Sampler s(p);
  int32_t want = int32_t(std::max_element(l.begin(), l.end()) - l.begin());
  EXPECT_EQ(s.sample(l), want);
}

TEST(Sampler, TopKOneAndTinyTopPAreGreedy) {
  auto l = random_logits(8, 500);
  int32_t want = argmax_row(l);
  SamplingParams p;
  p.temperature = 1.5f;
  p.top_k = 1;
  p.seed = 3;
  Sampler a(p);
  for (int i = 0; i < 20; ++i) EXPECT_EQ(a.sample(l), want);
  p.top_k = 0;
  p.top_p = 1e-6f;
  Sampler b(p);
  for (int i = 0; i < 20; ++i) EXPECT_EQ(b.sample(l), want);
}

TEST(Sampler, SeededIsDeterministicAndSeedsDiffer) {
  auto l = random_logits(9, 300);
  SamplingParams p;
  p.temperature = 1.0f;
  p.seed = 11;
  Sampler a(p), b(p);
  std::vector<int32_t> ra, rb, rc;
  for (int i = 0; i < 50; ++i) { ra.push_back(a.sample(l)); rb.push_back(b.sample(l)); }
  EXPECT_EQ(ra, rb);
  p.seed = 12;
  Sampler c(p);
  for (int i = 0; i < 50; ++i) rc.push_back(c.sample(l));
  EXPECT_NE(ra, rc);
}

// Frequencies follow softmax(logits / T) within a few standard errors.
TEST(Sampler, FrequenciesFollowSoftmax) {
  std::vector<float> l = {1.0f, 2.0f, 0.5f, 3.0f};
  SamplingParams p;
  p.temperature = 0.8f;
  p.seed = 5;
  Sampler s(p);
  const int n = 40000;
  std::map<int, int> count;
  for (int i = 0; i < n; ++i) ++count[s.sample(l)];
  double z = 0;
  for (float x : l) z += std::exp(x / 0.8);
  for (int i = 0; i < 4; ++i) {
    double pr = std::exp(l[i] / 0.8) / z;
    double se = std::sqrt(pr * (1 - pr) / n);
    EXPECT_NEAR(double(count[i]) / n, pr, 5 * se) << "token " << i;
  }
}

TEST(Sampler, TopKRestrictsSupport) {
  auto l = random_logits(10, 100);
  std::vector<int32_t> order(100);
  for (int i = 0; i < 100; ++i) order[i] = i;
  std::sort(order.begin(), order.end(), [&](int a, int b) { return l[a] > l[b]; });
  SamplingParams p;
  p.temperature = 5.0f;
  p.top_k = 3;
  p.seed = 1;
  Sampler s(p);
  for (int i = 0; i < 200; ++i) {
    int32_t t = s.sample(l);
    EXPECT_TRUE(t == order[0] || t == order[1] || t == order[2]);
  }
}

TEST(Sampler, BadParametersAreErrors) {
  SamplingParams p;
  p.temperature = -1;
  EXPECT_THROW(validate_sampling(p), Error);
  p = {};
  p.top_p = 0;
  EXPECT_THROW(validate_sampling(p), Error);
  p = {};
  p.top_k = -2;
  EXPECT_THROW(validate_sampling(p), Error);
  p = {};
  p.max_tokens = -1;
  EXPECT_THROW(validate_sampling(p), Error);
  p = {};
  p.temperature = NAN;
  EXPECT_THROW(validate_sampling(p), Error);
}

// Top-p alone sorts only a growing prefix of the vocabulary: the tokens it samples are
// exactly the nucleus a full sort gives, and every nucleus token is reachable.
TEST(Sampler, TopPAloneSamplesTheFullSortNucleus) {
  for (float top_p : {0.3f, 0.9f, 0.999f}) {
    const int V = 5000;
    auto l = random_logits(11, V);
    SamplingParams p;
    p.temperature = 1.5f;
    p.top_p = top_p;
    p.seed = 3;
    std::vector<int32_t> order(V);
    for (int i = 0; i < V; ++i) order[i] = i;
    std::sort(order.begin(), order.end(), [&](int a, int b) { return l[a] > l[b] || (l[a] == l[b] && a < b); });
    double all = 0;
    for (float x : l) all += std::exp(double((x - l[order[0]]) / p.temperature));
    std::set<int32_t> nucleus;
    double acc = 0;
    for (int32_t t : order) {
      nucleus.insert(t);
      acc += std::exp(double((l[t] - l[order[0]]) / p.temperature)) / all;
      if (acc >= top_p) break;
    }
    Sampler s(p);
    std::set<int32_t> seen;
    for (int i = 0; i < 600; ++i) {
      const int32_t t = s.sample(l);
      ASSERT_TRUE(nucleus.count(t)) << "top_p " << top_p << ": token " << t << " outside the nucleus";
      seen.insert(t);
    }
    if (nucleus.size() <= 20) EXPECT_EQ(seen.size(), nucleus.size()) << "top_p " << top_p;
  }
}

// The uniforms a seed draws are std::uniform_real_distribution's (what sample() drew
// before the draw was split out for the backends), and sample() over the whole
// vocabulary is sample_row_in_order with the next draw, which Backend::sample_rows takes.
TEST(Sampler, InOrderSamplingIsTheRowFunctionWithTheNextDraw) {
  SamplingParams p;
  p.temperature = 0.7f;
  p.seed = 1234;
  Sampler a(p), b(p);
  std::mt19937_64 g(p.seed);
  for (int i = 0; i < 100; ++i) {
    const double total = 3.5 + i;
    EXPECT_EQ(a.draw_uniform() * total, std::uniform_real_distribution<double>(0.0, total)(g));
  }
  ASSERT_TRUE(b.samples_in_order());
  EXPECT_FLOAT_EQ(b.inv_temperature(), 1.0f / 0.7f);
  Sampler c(p);
  for (int i = 0; i < 200; ++i) {
    const std::vector<float> l = random_logits(uint32_t(i), 1 + i * 37);
    const int32_t want = sample_row_in_order(l, c.inv_temperature(), c.draw_uniform());
    EXPECT_EQ(b.sample(l), want) << i;
  }
  p.top_k = 5;
  EXPECT_FALSE(Sampler(p).samples_in_order());
  p.top_k = 0;
  p.top_p = 0.9f;
  EXPECT_FALSE(Sampler(p).samples_in_order());
  p.temperature = 0;
  p.top_p = 1;
  EXPECT_FALSE(Sampler(p).samples_in_order());
  EXPECT_EQ(Sampler(p).inv_temperature(), 0.0f);
}

// The row function: u = 0 takes the first token of non-zero weight; u near 1 the
// last; the frequencies follow the softmax; inv_temperature <= 0 is the argmax.
TEST(Sampler, RowFunctionEdgesAndFrequencies) {
  const std::vector<float> l = {-1e30f, 0.5f, 2.0f, 2.0f, -1e30f, 1.0f, -1e30f};
  EXPECT_EQ(sample_row_in_order(l, 1.0f, 0.0), 1);
  EXPECT_EQ(sample_row_in_order(l, 1.0f, 0.95), 5);  // the last 14% of the mass
  EXPECT_EQ(pick_row(l, 0.0f, 0.3), 2);  // first of the tie
  EXPECT_EQ(argmax_row(l), 2);
  std::mt19937_64 g(7);
  std::vector<int> count(l.size());
  const int n = 200000;
  for (int i = 0; i < n; ++i)
    ++count[size_t(sample_row_in_order(l, 0.5f, std::generate_canonical<double, 53>(g)))];
  double z = 0;
  for (float x : l) z += std::exp(double(x) * 0.5);
  for (size_t i = 0; i < l.size(); ++i) {
    const double want = std::exp(double(l[i]) * 0.5) / z;
    EXPECT_NEAR(double(count[i]) / n, want, 4 * std::sqrt(want * (1 - want) / n) + 1e-9) << i;
  }
}

// Top-k / top-p from the row's best entries (as Backend::top_candidates gives them) draw
// the same tokens as sample() on the whole row, seed for seed; where they do not decide
// (a flat row, top-p near 1) nothing is drawn and the caller samples the whole row.
TEST(Sampler, CandidatesDrawWhatTheWholeRowDraws) {
  struct Case { float temp; int top_k; float top_p; };
  const Case cases[] = {{0.7f, 1, 1}, {0.7f, 5, 1}, {1.0f, 40, 1}, {1.3f, 1024, 1}, {1.0f, 0, 0.5f},
                        {0.8f, 0, 0.9f}, {1.0f, 0, 0.99f}, {0.9f, 50, 0.9f}, {2.0f, 0, 0.95f}};
  for (const Case& c : cases) {
    SamplingParams p;
    p.temperature = c.temp;
    p.top_k = c.top_k;
    p.top_p = c.top_p;
    p.seed = 42;
    Sampler whole(p), from_cand(p);
    ASSERT_TRUE(from_cand.samples_from_candidates(5000));
    int decided = 0;
    for (int i = 0; i < 60; ++i) {
      std::vector<float> l = random_logits(uint32_t(1000 + i), 5000);
      if (i % 7 == 0) l[10] = l[11] = l[12] = 30;  // ties at the top: order by index
      const int k = from_cand.candidates_wanted(int64_t(l.size()));
      std::vector<std::pair<float, int32_t>> c2;
      for (size_t j = 0; j < l.size(); ++j) c2.push_back({l[j], int32_t(j)});
      std::partial_sort(c2.begin(), c2.begin() + k, c2.end(), candidate_before);
      std::vector<float> values;
      std::vector<int32_t> ids;
      for (int j = 0; j < k; ++j) values.push_back(c2[size_t(j)].first), ids.push_back(c2[size_t(j)].second);
      double mass = 0;
      const float inv_t = 1.0f / c.temp;
      for (float x : l) mass += std::exp(double((x - values[0]) * inv_t));
      std::optional<int32_t> got = from_cand.sample_candidates(values, ids, mass, int64_t(l.size()));
      if (!got) got = from_cand.sample(l);  // what the engine does when they do not decide
      else ++decided;
      EXPECT_EQ(*got, whole.sample(l)) << "temp " << c.temp << " top_k " << c.top_k << " top_p " << c.top_p << " row " << i;
    }
    if (c.top_k > 0) EXPECT_EQ(decided, 60);
    else EXPECT_GT(decided, 0);
  }
  // A flat row over a wide vocabulary: 1024 entries hold ~1% of the mass, top-p 0.9 is
  // not inside them.
  SamplingParams p;
  p.temperature = 1;
  p.top_p = 0.9f;
  Sampler s(p);
  std::vector<float> flat(100000, 0.0f);
  std::vector<float> values(1024, 0.0f);
  std::vector<int32_t> ids(1024);
  for (int j = 0; j < 1024; ++j) ids[size_t(j)] = j;
  EXPECT_FALSE(s.sample_candidates(values, ids, 100000.0, 100000).has_value());
  EXPECT_TRUE(s.sample_candidates(values, ids, 1100.0, 100000).has_value());
  p.top_k = 2000;  // more than a backend gives: the whole row goes to the host
  EXPECT_FALSE(Sampler(p).samples_from_candidates(100000));
}
