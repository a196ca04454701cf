// Every CPU backend op (AVX2 path, and the threaded scalar path) against the reference
// kernels on fresh random inputs. Each test prints its seed on failure; rerun failures
// with the printed seed by editing fresh_seed() locally.
#include <gtest/gtest.h>

#include <algorithm>
#include <numeric>

#include "backend/cpu/cpu_backend.h"
#include "backend/cpu/kernels_avx2.h"
#include "backend/cpu/kernels_ref.h"
#include "core/cpu_features.h"
#include "core/error.h"
#include "kernel_test_util.h"

namespace batchmax::test {
namespace {

// Normalised error bounds (||fast - ref|| / ||ref||). The reference accumulates in
// double; the fast kernels in float with a different order. For matmul the norm is that
// of |x| . |w|^T instead of the result, so that a dot product that happens to cancel
// to ~0 (a single small output) cannot blow the ratio up: float summation error is
// ~sqrt(k) * 6e-8 of that.
constexpr double kMatmulBound = 1e-5;
// q8_activations: against the reference run on the same Q8-rounded activations the
// integer path differs only in float summation order (and rare rounding ties)...
constexpr double kMatmulQ8VsRoundedBound = 1e-5;
// ...and against the exact reference by the ~0.4% per-element rounding noise of int8
// activations, of which ~1/sqrt(k) survives relative to |x| . |w|.
constexpr double kMatmulQ8Bound = 5e-3;
constexpr double kElementwiseBound = 2e-6;  // rms_norm, swiglu, rope, embed
constexpr double kAttentionBound = 2e-5;

struct Backends {
  std::unique_ptr<Backend> fast = make_cpu_backend({2, false, false});
  std::unique_ptr<Backend> scalar = make_cpu_backend({2, true, false});
  std::unique_ptr<Backend> q8 = make_cpu_backend({2, false, true});
  std::vector<Backend*> all() { return {fast.get(), scalar.get()}; }
};

// Whether a backend's matmul takes the integer (Q8 activation) path for this case.
bool q8_path(Backends& b, Backend* be, GgmlType type, int64_t n) {
  return be == b.q8.get() && cpu_features().has_avx2_kernels() && cpu::avx2::matmul_q8_supported(type, n);
}

// ||a - b|| / || |x| . |w|^T ||: the matmul error measure (see kMatmulBound).
double matmul_err(const std::vector<float>& a, const std::vector<float>& b, const Tensor& x, const Tensor& w) {
  std::vector<float> wr(w.cols);
  double num = 0, den = 0;
  for (int64_t j = 0; j < w.rows; ++j) {
    dequantize_row(w.type, w.row(j), wr.data(), w.cols);
    for (int64_t r = 0; r < x.rows; ++r) {
      double s = 0;
      for (int64_t i = 0; i < x.cols; ++i) s += std::fabs(double(x.row_f32(r)[i]) * wr[i]);
      const double d = double(a[r * w.rows + j]) - b[r * w.rows + j];
      num += d * d;
      den += s * s;
    }
  }
  return std::sqrt(num / std::max(den, 1e-30));
}

// x rounded as the Q8 path rounds it: per 32, d = amax / 127, q = round-to-even(x * 127 / amax).
HostTensor round_q8(const HostTensor& x) {
  HostTensor y(GgmlType::F32, x.t.rows, x.t.cols);
  for (int64_t r = 0; r < x.t.rows; ++r)
    for (int64_t b = 0; b + 32 <= x.t.cols; b += 32) {
      const float* xs = x.t.row_f32(r) + b;
      float amax = 0;
      for (int i = 0; i < 32; ++i) amax = std::max(amax, std::fabs(xs[i]));
      const float d = amax / 127.0f, id = amax > 0 ? 127.0f / amax : 0.0f;
      for (int i = 0; i < 32; ++i) y.t.row_f32(r)[b + i] = std::nearbyint(xs[i] * id) * d;
    }
  return y;
}

std::string label(uint32_t seed) { return "seed=" + std::to_string(seed); }

TEST(CpuKernels, ReportsItsPath) {
  Backends b;
  EXPECT_NE(b.fast->name().find(cpu_features().has_avx2_kernels() ? "avx2" : "scalar"), std::string::npos);
  EXPECT_NE(b.scalar->name().find("scalar"), std::string::npos);
}

TEST(CpuKernels, QuantisersRoundTripThroughDequantize) {
  // Checks the test's block writers against dequantize_row, so that "random valid blocks"
  // mean the same thing to both.
  const uint32_t seed = fresh_seed();
  SCOPED_TRACE(label(seed));
  Rng rng(seed);
  const std::pair<GgmlType, double> cases[] = {{GgmlType::F32, 0}, {GgmlType::F16, 1e-3}, {GgmlType::BF16, 8e-3},
                                               {GgmlType::Q8_0, 1e-2}, {GgmlType::Q4_0, 0.2}, {GgmlType::Q4_1, 0.12}};
  for (auto [type, bound] : cases) {
    const std::vector<float> x = rng.floats(512);
    const std::vector<uint8_t> q = quantize_row(type, x.data(), 512, rng);
    std::vector<float> y(512);
    dequantize_row(type, q.data(), y.data(), 512);
    EXPECT_LE(rel_err(y, x), bound) << type_name(type);
  }
}

TEST(CpuKernels, DequantizeMatchesReference) {
  const uint32_t seed = fresh_seed();
  SCOPED_TRACE(label(seed));
  Rng rng(seed);
  Backends b;
  for (GgmlType type : kWeightTypes) {
    const int64_t k = 3 * 256 + (granule(type) == 1 ? 5 : 0);
    HostWeight w(type, 5, k, rng);
    HostTensor out(GgmlType::F32, 5, k), ref(GgmlType::F32, 5, k);
    std::vector<int32_t> ids = {4, 0, 2, 2, 1};
    out.fill(NAN);
    b.fast->embed(w.t, ids, out.t);
    cpu::ref::embed(w.t, ids, ref.t);
    ASSERT_TRUE(all_finite(out.values())) << type_name(type);
    EXPECT_LE(rel_err(out.values(), ref.values()), kElementwiseBound) << type_name(type);
  }
}

TEST(CpuKernels, MatmulMatchesReferenceForAllTypesAndShapes) {
  const uint32_t seed = fresh_seed();
  SCOPED_TRACE(label(seed));
  Rng rng(seed);
  Backends b;
  // n covers the fused decode path (1..15, in passes of 8) and the tiled path (16+),
  // including remainders of the 4x3 micro-kernel; m covers partial tiles.
  const int64_t ns[] = {1, 2, 3, 5, 8, 9, 15, 16, 17, 31, 67};
  const int64_t ms[] = {1, 7, 50, 97};
  for (GgmlType type : kWeightTypes) {
    const int64_t g = std::max<int64_t>(granule(type), 32);
    std::vector<int64_t> ks = {g, 2 * g, 3 * g};
    if (granule(type) == 1) ks.insert(ks.end(), {1, 13, 37, 100});  // tails of plain types
    for (int64_t k : ks)
      for (int64_t m : ms) {
        HostWeight w(type, m, k, rng);
        HostTensor bias = HostTensor::f32(1, m, rng);
        for (int64_t n : ns) {
          const bool with_bias = rng.uniform_int(0, 1);
          HostTensor x = HostTensor::f32(n, k, rng, /*pad=*/n % 3);
          HostTensor ref(GgmlType::F32, n, m);
          cpu::ref::matmul(x.t, w.t, with_bias ? &bias.t : nullptr, ref.t);
          for (Backend* be : {b.fast.get(), b.scalar.get(), b.q8.get()}) {
            HostTensor out(GgmlType::F32, n, m, /*pad=*/1);
            out.fill(NAN);
            be->matmul(x.t, w.t, with_bias ? &bias.t : nullptr, out.t);
            const std::vector<float> got = out.values();
            ASSERT_TRUE(all_finite(got)) << be->name() << " " << type_name(type) << " n=" << n << " k=" << k << " m=" << m;
            const bool q8 = q8_path(b, be, type, n);
            HostTensor expect = ref;
            if (q8) cpu::ref::matmul(round_q8(x).t, w.t, with_bias ? &bias.t : nullptr, expect.t);
            ASSERT_LE(matmul_err(got, q8 ? expect.values() : ref.values(), x.t, w.t),
                      q8 ? kMatmulQ8VsRoundedBound : kMatmulBound)
                << be->name() << " " << type_name(type) << " n=" << n << " k=" << k << " m=" << m;
          }
        }
      }
  }
}

TEST(CpuKernels, MatmulSmolLM2Shapes) {
  const uint32_t seed = fresh_seed();
  SCOPED_TRACE(label(seed));
  Rng rng(seed);
  Backends b;
  struct Shape { int64_t k, m; GgmlType type; };
  for (Shape s : {Shape{576, 576, GgmlType::Q4_1}, Shape{576, 1536, GgmlType::Q4_1},
                  Shape{1536, 576, GgmlType::Q4_1}, Shape{576, 2000, GgmlType::Q8_0}}) {
    HostWeight w(s.type, s.m, s.k, rng);
    for (int64_t n : {1, 4, 100}) {
      HostTensor x = HostTensor::f32(n, s.k, rng);
      HostTensor ref(GgmlType::F32, n, s.m);
      cpu::ref::matmul(x.t, w.t, nullptr, ref.t);
      for (Backend* be : {b.fast.get(), b.q8.get()}) {
        HostTensor out(GgmlType::F32, n, s.m);
        out.fill(NAN);
        be->matmul(x.t, w.t, nullptr, out.t);
        ASSERT_TRUE(all_finite(out.values()));
        EXPECT_LE(matmul_err(out.values(), ref.values(), x.t, w.t),
                  q8_path(b, be, s.type, n) ? kMatmulQ8Bound : kMatmulBound)
            << be->name() << " n=" << n << " k=" << s.k << " m=" << s.m;
      }
    }
  }
}

TEST(CpuKernels, RmsNormMatchesReference) {
  const uint32_t seed = fresh_seed();
  SCOPED_TRACE(label(seed));
  Rng rng(seed);
  Backends b;
  for (int64_t n : {1, 3, 40})
    for (int64_t k : {7, 64, 576, 1001}) {
      HostTensor x = HostTensor::f32(n, k, rng, 2, -3, 3), w = HostTensor::f32(1, k, rng, 0, 0.5f, 1.5f);
      HostTensor ref(GgmlType::F32, n, k);
      cpu::ref::rms_norm(x.t, w.t, 1e-5f, ref.t);
      for (Backend* be : b.all()) {
        HostTensor out(GgmlType::F32, n, k);
        out.fill(NAN);
        be->rms_norm(x.t, w.t, 1e-5f, out.t);
        ASSERT_TRUE(all_finite(out.values())) << be->name();
        EXPECT_LE(rel_err(out.values(), ref.values()), kElementwiseBound) << be->name() << " n=" << n << " k=" << k;
      }
    }
}

TEST(CpuKernels, RopeMatchesReference) {
  const uint32_t seed = fresh_seed();
  SCOPED_TRACE(label(seed));
  Rng rng(seed);
  Backends b;
  for (RopeStyle style : {RopeStyle::Interleaved, RopeStyle::Neox})
    for (auto [head_dim, rotary_dim] : {std::pair{64, 64}, {128, 128}, {64, 32}, {10, 10}, {12, 6}})
      for (int64_t n : {1, 5, 33}) {
        const int n_heads = 3;
        RopeParams p;
        p.style = style;
        p.head_dim = head_dim;
        p.rotary_dim = rotary_dim;
        for (int i = 0; i < rotary_dim / 2; ++i) p.inv_freq.push_back(std::pow(10000.0f, -2.0f * i / rotary_dim));
        std::vector<int32_t> pos(n);
        for (auto& v : pos) v = rng.uniform_int(0, 40000);
        HostTensor x = HostTensor::f32(n, n_heads * head_dim, rng, 1);
        HostTensor ref = x;
        ref.t.data = ref.bytes.data();
        cpu::ref::rope(ref.t, n_heads, pos, p);
        for (Backend* be : b.all()) {
          HostTensor got = x;
          got.t.data = got.bytes.data();
          be->rope(got.t, n_heads, pos, p);
          EXPECT_LE(rel_err(got.values(), ref.values()), kElementwiseBound)
              << be->name() << " style=" << int(style) << " hd=" << head_dim << " rot=" << rotary_dim << " n=" << n;
        }
      }
}

TEST(CpuKernels, SwigluAndAddMatchReference) {
  const uint32_t seed = fresh_seed();
  SCOPED_TRACE(label(seed));
  Rng rng(seed);
  Backends b;
  for (int64_t n : {1, 4, 19})
    for (int64_t k : {5, 64, 1536, 1541}) {
      HostTensor g = HostTensor::f32(n, k, rng, 0, -12, 12), u = HostTensor::f32(n, k, rng, 3, -2, 2);
      g.t.row_f32(0)[0] = -100;  // exp overflow territory must still give ~0, not NaN
      if (k > 1) g.t.row_f32(0)[1] = 100;
      HostTensor ref(GgmlType::F32, n, k);
      cpu::ref::swiglu(g.t, u.t, ref.t);
      HostTensor y = HostTensor::f32(n, k, rng, 1);
      HostTensor xsum = HostTensor::f32(n, k, rng);
      std::vector<float> sum = xsum.values();
      for (size_t i = 0; i < sum.size(); ++i) sum[i] += y.values()[i];
      for (Backend* be : b.all()) {
        HostTensor out(GgmlType::F32, n, k, 2);
        out.fill(NAN);
        be->swiglu(g.t, u.t, out.t);
        ASSERT_TRUE(all_finite(out.values())) << be->name();
        EXPECT_LE(rel_err(out.values(), ref.values()), kElementwiseBound) << be->name() << " n=" << n << " k=" << k;
        HostTensor x = xsum;
        x.t.data = x.bytes.data();
        be->add(x.t, y.t);
        EXPECT_EQ(x.values(), sum) << be->name();
      }
    }
}

TEST(CpuKernels, GatherRowsCopiesRows) {
  const uint32_t seed = fresh_seed();
  SCOPED_TRACE(label(seed));
  Rng rng(seed);
  Backends b;
  HostTensor x = HostTensor::f32(10, 33, rng, 3);
  const std::vector<int32_t> rows = {9, 0, 4, 4};
  for (Backend* be : b.all()) {
    HostTensor out(GgmlType::F32, 4, 33);
    be->gather_rows(x.t, rows, out.t);
    for (size_t i = 0; i < rows.size(); ++i)
      EXPECT_TRUE(std::equal(x.t.row_f32(rows[i]), x.t.row_f32(rows[i]) + 33, out.t.row_f32(i)));
    EXPECT_THROW(be->gather_rows(x.t, std::vector<int32_t>{10, 0, 0, 0}, out.t), Error);
  }
}

TEST(CpuKernels, MemoryOpsAndWeightViews) {
  Backends b;
  for (Backend* be : b.all()) {
    Tensor t = be->alloc(GgmlType::F32, 3, 5);
    EXPECT_EQ(t.row_stride, 20u);
    std::vector<float> src(15), dst(15);
    std::iota(src.begin(), src.end(), 1.0f);
    be->upload(src.data(), t);
    be->download(t, dst.data());
    EXPECT_EQ(src, dst);
    be->free(t);
    EXPECT_EQ(t.data, nullptr);
    std::vector<uint8_t> raw(row_bytes(GgmlType::Q4_1, 64) * 2);
    Tensor w = be->load_weight(GgmlType::Q4_1, raw.data(), 2, 64);
    EXPECT_EQ(w.data, raw.data());  // no copy
    EXPECT_EQ(w.row_stride, 40u);
    EXPECT_THROW(be->load_weight(GgmlType::Q5_0, raw.data(), 1, 32), Error);
    HostTensor x(GgmlType::F32, 1, 64), out(GgmlType::F32, 1, 3);
    EXPECT_THROW(be->matmul(x.t, w, nullptr, out.t), Error);  // m mismatch
  }
}

}  // namespace
}  // namespace batchmax::test

namespace batchmax::test {
namespace {

TEST(CpuKernels, CopyRowsBetweenStridedViews) {
  std::unique_ptr<Backend> be = make_cpu_backend({1, false, false});
  Backend& b = *be;
  EXPECT_FALSE(b.prefers_stacked_projections());  // weights are used in place, unstacked
  Tensor src = b.alloc(GgmlType::F32, 5, 12), dst = b.alloc(GgmlType::F32, 5, 9);
  for (int64_t i = 0; i < 5 * 12; ++i) src.f32()[i] = float(i);
  std::fill(dst.f32(), dst.f32() + 5 * 9, -1.f);
  Tensor sv = src, dv = dst;  // columns 4..7 of src into columns 2..5 of dst
  sv.data = src.f32() + 4;
  sv.cols = 4;
  dv.data = dst.f32() + 2;
  dv.cols = 4;
  b.copy_rows(sv, dv);
  for (int64_t r = 0; r < 5; ++r)
    for (int64_t c = 0; c < 9; ++c)
      EXPECT_EQ(dst.f32()[r * 9 + c], c >= 2 && c < 6 ? float(r * 12 + 4 + c - 2) : -1.f);
  Tensor wrong = dst;
  wrong.cols = 3;
  EXPECT_THROW(b.copy_rows(sv, wrong), Error);
  b.free(src);
  b.free(dst);
}

}  // namespace
}  // namespace batchmax::test
