// Backend::sample_rows on the GPU against the CPU's (backend/row_sampling.h) on fresh
// random logits: rows of 1 to 128256 tokens (Llama 3's vocabulary), spreads from flat to
// peaked, greedy and sampled rows mixed in one call, uniforms across [0, 1) and at its
// ends. The picks must be the same tokens: the kernel sums in double in another order,
// which can change a pick only where u * total falls within rounding of a boundary.
// Outputs start poisoned (-1), so a row the kernel skipped fails. Skips without a device.
#include <gtest/gtest.h>

#include <cmath>

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
      u[size_t(r)] = r == 1 ? 0.0 : r == 2 ? std::nextafter(1.0, 0.0) : uni(rng);
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

}  // namespace
}  // namespace batchmax::cudatest
