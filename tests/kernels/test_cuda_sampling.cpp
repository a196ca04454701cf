// Backend::sample_rows on the GPU against the CPU's (backend/row_sampling.h) on fresh
// random logits: rows of 1 to 128256 tokens (Llama 3's vocabulary), spreads from flat to
// peaked, greedy and sampled rows mixed in one call, uniforms across [0, 1) and near its
// ends. The picks must be the same tokens: the kernel sums in double in another order,
// which can change a pick only where u * total falls within rounding of a boundary.
// Outputs start poisoned (-1), so a row the kernel skipped fails. Skips without a device.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>

#include "backend/row_sampling.h"

#include "core/error.h"
#include "kernels/cuda_test_util.h"

namespace batchmax::cudatest {
namespace {

class CudaSampling : public CudaFixture {};

TEST_F(CudaSampling, SampleRowsMatchesCpu) {
  const float temps[] = {0.0f, 0.3f, 0.7f, 1.0f, 1.5f, 5.0f};
  for (int64_t cols : {int64_t(1), int64_t(7), int64_t(1000), int64_t(49152), int64_t(128256)}) {
    const int64_t rows = 48;
    std::vector<float> x(size_t(rows * cols));
    std::vector<float> inv_t(rows);
    std::vector<double> u(rows);
    std::uniform_real_distribution<double> uni(0.0, 1.0);
    for (int64_t r = 0; r < rows; ++r) {
      // Logits of standard deviation 0.5 to 12: near-uniform to nearly one-hot.
      std::normal_distribution<float> d(float(randi(-5, 5)), 0.5f + 11.5f * float(r) / float(rows));
      for (int64_t c = 0; c < cols; ++c) x[size_t(r * cols + c)] = d(rng);
      const float t = temps[r % 6];
      inv_t[size_t(r)] = t > 0 ? 1.0f / t : 0.0f;
      // The ends of [0, 1): u = 0, and u = 1 - 1e-9 (not closer: within rounding of 1 the
      // host and the kernel may each fall back to the argmax or take the last entry).
      u[size_t(r)] = r == 1 ? 0.0 : r == 2 ? 1.0 - 1e-9 : uni(rng);
    }
    Pair t = make(rows, cols, x, GgmlType::F32);
    std::vector<int32_t> want(static_cast<size_t>(rows)), got(static_cast<size_t>(rows), -1);
    cpu->sample_rows(t.c, inv_t, u, want.data());
    gpu->sample_rows(t.g, inv_t, u, got.data());
    for (int64_t r = 0; r < rows; ++r)
      EXPECT_EQ(got[size_t(r)], want[size_t(r)])
          << "cols " << cols << " row " << r << " inv_t " << inv_t[size_t(r)] << " u " << u[size_t(r)];
  }
}

// All-greedy calls take the argmax kernel; a mismatch in sizes is an error, not a crash.
TEST_F(CudaSampling, GreedyCallsAndBadSizes) {
  const int64_t rows = 9, cols = 3000;
  std::vector<float> x = randv(size_t(rows * cols), -3, 3);
  Pair t = make(rows, cols, x, GgmlType::F32);
  std::vector<float> zero(rows, 0.0f);
  std::vector<double> u(rows, 0.5);
  std::vector<int32_t> want(rows), got(rows, -1);
  cpu->argmax_rows(t.c, want.data());
  gpu->sample_rows(t.g, zero, u, got.data());
  EXPECT_EQ(got, want);
  std::vector<float> short_t(rows - 1, 1.0f);
  EXPECT_THROW(gpu->sample_rows(t.g, short_t, u, got.data()), Error);
  EXPECT_THROW(cpu->sample_rows(t.c, short_t, u, got.data()), Error);
}

// top_candidates: the k best of each row, sorted by value then index, and the row's mass
// at the temperature. Values and indices must be the CPU's exactly (ties at the k-th
// value are broken by index, the case the kernel handles with an ordered pass); the
// mass to 1e-10 relative (double sums in another order).
TEST_F(CudaSampling, TopCandidatesMatchCpu) {
  const int ks[] = {1, 7, 50, 1000, 1024};
  for (int64_t cols : {int64_t(1024), int64_t(1500), int64_t(49152), int64_t(128256)}) {
    for (int k : ks) {
      const int64_t rows = 12;
      std::vector<float> x(size_t(rows * cols));
      std::vector<float> inv_t(rows);
      for (int64_t r = 0; r < rows; ++r) {
        std::normal_distribution<float> d(0.0f, 0.5f + 4.0f * float(r % 4));
        for (int64_t c = 0; c < cols; ++c) x[size_t(r * cols + c)] = d(rng);
        if (r % 3 == 1) {  // many entries equal to what becomes the k-th value
          for (int j = 0; j < 3 * k + 5; ++j) x[size_t(r * cols + randi(0, int(cols - 1)))] = 9.0f;
        }
        if (r % 3 == 2) {  // a few large values, some of them repeated, -0 and +0
          for (int j = 0; j < k / 2; ++j) x[size_t(r * cols + randi(0, int(cols - 1)))] = float(randi(20, 25));
          x[size_t(r * cols)] = -0.0f;
          x[size_t(r * cols + 1)] = 0.0f;
        }
        inv_t[size_t(r)] = r == 0 ? 0.0f : 1.0f / (0.3f + 0.2f * float(r));
      }
      Pair t = make(rows, cols, x, GgmlType::F32);
      const size_t nk = size_t(rows) * size_t(k);
      std::vector<float> wv(nk), gv(nk, std::nanf(""));
      std::vector<int32_t> wi(nk), gi(nk, -1);
      std::vector<double> wm(static_cast<size_t>(rows)), gm(static_cast<size_t>(rows), -1.0);
      cpu->top_candidates(t.c, k, inv_t, wv.data(), wi.data(), wm.data());
      gpu->top_candidates(t.g, k, inv_t, gv.data(), gi.data(), gm.data());
      for (int64_t r = 0; r < rows; ++r) {
        for (int j = 0; j < k; ++j) {
          const size_t e = size_t(r) * size_t(k) + size_t(j);
          ASSERT_EQ(gi[e], wi[e]) << "cols " << cols << " k " << k << " row " << r << " rank " << j;
          ASSERT_EQ(gv[e], wv[e]) << "cols " << cols << " k " << k << " row " << r << " rank " << j;
        }
        if (inv_t[size_t(r)] > 0)
          EXPECT_NEAR(gm[size_t(r)], wm[size_t(r)], 1e-10 * wm[size_t(r)]) << "cols " << cols << " row " << r;
        else
          EXPECT_EQ(gm[size_t(r)], 0.0);
      }
    }
  }
  // k outside [1, min(cols, 1024)] is an error on both backends.
  Pair t = make(2, 100, randv(200), GgmlType::F32);
  std::vector<float> v(400), inv_t(2, 1.0f);
  std::vector<int32_t> i(400);
  std::vector<double> m(2);
  EXPECT_THROW(gpu->top_candidates(t.g, 101, inv_t, v.data(), i.data(), m.data()), Error);
  EXPECT_THROW(cpu->top_candidates(t.c, 0, inv_t, v.data(), i.data(), m.data()), Error);
}

// sorted_prefix: the listed rows sorted as top_candidates orders them, their first n
// entries. Exact values and indices: ties (many equal values, -0 and +0) keep index order.
TEST_F(CudaSampling, SortedPrefixMatchesCpu) {
  for (int64_t cols : {int64_t(1500), int64_t(49152), int64_t(128256)}) {
    const int64_t rows = 21;  // three launches of up to 8 rows
    std::vector<float> x(size_t(rows * cols));
    for (int64_t r = 0; r < rows; ++r) {
      std::normal_distribution<float> d(0.0f, 0.05f + 2.0f * float(r % 3));  // flat to sharp
      for (int64_t c = 0; c < cols; ++c) x[size_t(r * cols + c)] = d(rng);
      if (r % 4 == 1)  // repeated values where the prefix ends and inside it
        for (int j = 0; j < 5000; ++j) x[size_t(r * cols + randi(0, int(cols - 1)))] = float(randi(-2, 2));
      if (r % 4 == 2)
        for (int j = 0; j < 300; ++j) x[size_t(r * cols + randi(0, int(cols - 1)))] = j % 2 ? 0.0f : -0.0f;
    }
    Pair t = make(rows, cols, x, GgmlType::F32);
    const std::vector<int32_t> pick = {20, 0, 3, 7, 1, 2, 9, 14, 5, 11, 19, 4, 13};
    for (int64_t n : {int64_t(1), int64_t(1000), std::min<int64_t>(cols, 4096), cols}) {
      const size_t total = pick.size() * size_t(n);
      std::vector<float> wv(total), gv(total, std::nanf(""));
      std::vector<int32_t> wi(total), gi(total, -1);
      cpu->sorted_prefix(t.c, pick, n, wv.data(), wi.data());
      gpu->sorted_prefix(t.g, pick, n, gv.data(), gi.data());
      for (size_t e = 0; e < total; ++e) {
        ASSERT_EQ(gi[e], wi[e]) << "cols " << cols << " n " << n << " row " << pick[e / size_t(n)]
                                << " rank " << e % size_t(n);
        ASSERT_EQ(gv[e], wv[e]) << "cols " << cols << " n " << n << " rank " << e % size_t(n);
      }
    }
  }
  Pair t = make(2, 100, randv(200), GgmlType::F32);
  std::vector<float> v(400);
  std::vector<int32_t> i(400);
  const std::vector<int32_t> one = {1}, bad = {2};
  EXPECT_THROW(gpu->sorted_prefix(t.g, one, 101, v.data(), i.data()), Error);
  EXPECT_THROW(gpu->sorted_prefix(t.g, bad, 10, v.data(), i.data()), Error);
  EXPECT_THROW(cpu->sorted_prefix(t.c, one, 0, v.data(), i.data()), Error);
}

// draw_sorted_rows: the whole sorted row drawn with each row's parameters. The GPU sums
// in another order than the host, which can change a pick only where a cut falls within
// rounding of a boundary: on these fresh rows the picks must be the CPU's.
TEST_F(CudaSampling, DrawSortedRowsMatchCpu) {
  std::uniform_real_distribution<double> uni(0.0, 1.0);
  for (int64_t cols : {int64_t(1500), int64_t(49152), int64_t(128256)}) {
    const int64_t rows = 19;
    std::vector<float> x(size_t(rows * cols));
    std::vector<SortedDraw> draws;
    std::vector<int32_t> pick;
    for (int64_t r = 0; r < rows; ++r) {
      std::normal_distribution<float> d(0.0f, 0.05f + 1.5f * float(r % 4));
      for (int64_t c = 0; c < cols; ++c) x[size_t(r * cols + c)] = d(rng);
      if (r % 5 == 3)
        for (int j = 0; j < 2000; ++j) x[size_t(r * cols + randi(0, int(cols - 1)))] = j % 2 ? 0.0f : -0.0f;
      SortedDraw sd;
      sd.inv_temperature = 1.0f / (0.4f + 0.5f * float(r % 3));
      sd.top_p = r % 6 == 5 ? 1.0f : 0.5f + 0.09f * float(r % 5);
      const float* row = x.data() + r * cols;
      const float top = *std::max_element(row, row + cols);
      if (r % 4 != 1)  // else: no whole mass, the softmax over the row itself
        for (int64_t c = 0; c < cols; ++c) sd.whole_mass += std::exp(double((row[c] - top) * sd.inv_temperature));
      sd.u = uni(rng);
      draws.push_back(sd);
      pick.push_back(int32_t(rows - 1 - r));
    }
    std::vector<SortedDraw> picked_draws;
    for (int32_t p : pick) picked_draws.push_back(draws[size_t(p)]);
    Pair t = make(rows, cols, x, GgmlType::F32);
    std::vector<int32_t> want(pick.size()), got(pick.size(), -1);
    cpu->draw_sorted_rows(t.c, pick, picked_draws, want.data());
    gpu->draw_sorted_rows(t.g, pick, picked_draws, got.data());
    for (size_t j = 0; j < pick.size(); ++j)
      EXPECT_EQ(got[j], want[j]) << "cols " << cols << " row " << pick[j];
  }
  Pair t = make(2, 100, randv(200), GgmlType::F32);
  int32_t out[2];
  const std::vector<int32_t> bad = {2};
  const std::vector<SortedDraw> one(1);
  EXPECT_THROW(gpu->draw_sorted_rows(t.g, bad, one, out), Error);
  EXPECT_THROW(cpu->draw_sorted_rows(t.c, bad, one, out), Error);
}

}  // namespace
}  // namespace batchmax::cudatest
