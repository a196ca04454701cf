#pragma once
// Shared by the CUDA kernel tests: a fixture holding the CUDA backend and the CPU
// reference (force_scalar), tensors with the same values on both, NaN poisoning of GPU
// outputs, and the normalised error check. Skips, saying why, when there is no device.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <deque>
#include <iostream>
#include <random>
#include <string>
#include <vector>

#include "backend/backend.h"
#include "format/tensor_types.h"
#ifdef BATCHMAX_HAVE_CUDA
#include "backend/cuda/cuda_backend.h"
#endif

namespace batchmax::cudatest {

// Bounds (normalised error). bf16 has an 8-bit mantissa: one rounding is <= 2^-9
// relative, ~1.1e-3 rms over random data.
constexpr double kDequantBound = 3e-3;   // one bf16 rounding of the exact value
constexpr double kExactBound = 1e-6;     // copies, F32 vectors
constexpr double kBf16OpBound = 1e-2;    // fp32 math, bf16 output (and bf16 weights)
constexpr double kAttnBound = 1e-2;      // bf16 q/out, fp32 online softmax
constexpr double kScoresBound = 2e-3;    // fp32 probabilities vs double, bf16-exact inputs

// small_m_max_rows: as CudaBackendOptions (-1: the default; 0: cuBLASLt for every product).
inline std::unique_ptr<Backend> new_gpu(int small_m_max_rows = -1) {
#ifdef BATCHMAX_HAVE_CUDA
  return make_cuda_backend(CudaBackendOptions{.small_m_max_rows = small_m_max_rows});
#else
  (void)small_m_max_rows;
  return nullptr;
#endif
}

inline bool have_device() {
#ifdef BATCHMAX_HAVE_CUDA
  return cuda_device_count() > 0;
#else
  return false;
#endif
}

inline const char* no_device_reason() {
#ifdef BATCHMAX_HAVE_CUDA
  return "no CUDA device: none visible at run time";
#else
  return "no CUDA device: built without BATCHMAX_CUDA (configure with -DBATCHMAX_CUDA=ON)";
#endif
}

inline float bf16_round(float x) { return bf16_to_fp32(fp32_to_bf16(x)); }

inline double norm_err(const std::vector<float>& got, const std::vector<float>& want, bool* finite) {
  double num = 0, den = 0;
  *finite = got.size() == want.size();
  for (size_t i = 0; i < got.size() && i < want.size(); ++i) {
    if (!std::isfinite(got[i])) *finite = false;
    num += (double(got[i]) - want[i]) * (double(got[i]) - want[i]);
    den += double(want[i]) * want[i];
  }
  return std::sqrt(num / std::max(den, 1e-30));
}

// Records the error for the run log (the device script collects these lines).
inline void expect_close(const std::string& op, const std::vector<float>& got,
                  const std::vector<float>& want, double bound) {
  bool finite = false;
  const double e = norm_err(got, want, &finite);
  std::cout << "[ cuda-err ] " << op << " err=" << e << " bound=" << bound
            << (finite ? "" : " NON-FINITE") << "\n";
  EXPECT_TRUE(finite) << op << ": output has NaN/Inf (an element was not written?)";
  EXPECT_LE(e, bound) << op;
}

class CudaFixture : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!have_device()) GTEST_SKIP() << no_device_reason();
    gpu = new_gpu();
    cpu = make_cpu_backend(CpuBackendOptions{.force_scalar = true});
    const unsigned seed = std::random_device{}();
    rng.seed(seed);
    std::cout << "[ seed     ] " << seed << "\n";
  }
  void TearDown() override {
    for (Tensor& t : gpu_owned) gpu->free(t);
    for (Tensor& t : cpu_owned) cpu->free(t);
  }

  std::vector<float> randv(size_t n, float lo = -1, float hi = 1) {
    std::uniform_real_distribution<float> d(lo, hi);
    std::vector<float> v(n);
    for (float& x : v) x = bf16_round(d(rng));
    return v;
  }
  int randi(int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng); }

  // The same values on both backends: F32 on the CPU, `type` on the GPU.
  struct Pair { Tensor c, g; };
  Pair make(int64_t rows, int64_t cols, const std::vector<float>& v,
            GgmlType type = GgmlType::BF16) {
    Pair p{cpu->alloc(GgmlType::F32, rows, cols), gpu->alloc(type, rows, cols)};
    cpu_owned.push_back(p.c);
    gpu_owned.push_back(p.g);
    cpu->upload(v.data(), p.c);
    upload_gpu(v, p.g);
    return p;
  }
  Pair make_out(int64_t rows, int64_t cols, GgmlType type = GgmlType::BF16) {
    Pair p{cpu->alloc(GgmlType::F32, rows, cols), gpu->alloc(type, rows, cols)};
    cpu_owned.push_back(p.c);
    gpu_owned.push_back(p.g);
    poison(p.g);
    return p;
  }
  void upload_gpu(const std::vector<float>& v, Tensor& t) {
    if (t.type == GgmlType::F32) return gpu->upload(v.data(), t);
    std::vector<uint16_t> h(v.size());
    for (size_t i = 0; i < v.size(); ++i) h[i] = fp32_to_bf16(v[i]);
    gpu->upload(h.data(), t);
  }
  void poison(Tensor& t) {
    upload_gpu(std::vector<float>(size_t(t.rows * t.cols), std::nanf("")), t);
  }
  std::vector<float> down_gpu(const Tensor& t) {
    std::vector<float> out(size_t(t.rows * t.cols));
    if (t.type == GgmlType::F32) {
      gpu->download(t, out.data());
    } else {
      std::vector<uint16_t> h(out.size());
      gpu->download(t, h.data());
      for (size_t i = 0; i < h.size(); ++i) out[i] = bf16_to_fp32(h[i]);
    }
    return out;
  }
  std::vector<float> down_cpu(const Tensor& t) {
    std::vector<float> out(size_t(t.rows * t.cols));
    cpu->download(t, out.data());
    return out;
  }

  // The same random weight (random_weight()) loaded on both backends; the GPU copy is
  // freed with the fixture. The bytes live as long as the fixture: the CPU backend's
  // weight may be a view of them (as of a GGUF's mapping), not a copy.
  Pair load_random_weight(GgmlType type, int64_t rows, int64_t cols) {
    const std::vector<uint8_t>& raw = weight_bytes.emplace_back(random_weight(type, rows, cols));
    Pair w{cpu->load_weight(type, raw.data(), rows, cols), gpu->load_weight(type, raw.data(), rows, cols)};
    gpu_owned.push_back(w.g);
    return w;
  }

  // The CPU's stacked gate/up product of x (fp32, into gu: rows x 2ff) and a host swiglu
  // of its two halves: the reference of gate_up_swiglu.
  std::vector<float> cpu_gate_up_swiglu(const Tensor& x, const Tensor& w, Tensor& gu, int64_t rows,
                                        int64_t ff) {
    cpu->matmul(x, w, nullptr, gu);
    const std::vector<float> prod = down_cpu(gu);
    std::vector<float> want(size_t(rows * ff));
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t f = 0; f < ff; ++f) {
        const float g = prod[size_t(r * 2 * ff + f)], u = prod[size_t(r * 2 * ff + ff + f)];
        want[size_t(r * ff + f)] = g / (1.0f + std::exp(-g)) * u;
      }
    return want;
  }

  // Random GGUF bytes of `type` for rows x cols, with sane fp16 scales.
  std::vector<uint8_t> random_weight(GgmlType type, int64_t rows, int64_t cols) {
    const TypeTraits& tt = type_traits(type);
    const size_t rb = row_bytes(type, cols), nb = size_t(cols / tt.block_size);
    std::vector<uint8_t> raw(rb * rows);
    for (uint8_t& b : raw) b = uint8_t(randi(0, 255));
    auto put16 = [&](uint8_t* p, uint16_t x) { std::memcpy(p, &x, 2); };
    std::uniform_real_distribution<float> small(0.002f, 0.02f), any(-1, 1);
    for (int64_t r = 0; r < rows; ++r)
      for (size_t b = 0; b < nb; ++b) {
        uint8_t* blk = raw.data() + r * rb + b * tt.block_bytes;
        switch (type) {
          case GgmlType::F32: { float x = any(rng); std::memcpy(blk, &x, 4); break; }
          case GgmlType::F16: put16(blk, fp32_to_fp16(any(rng))); break;
          case GgmlType::BF16: put16(blk, fp32_to_bf16(any(rng))); break;
          case GgmlType::Q8_0: case GgmlType::Q4_0: put16(blk, fp32_to_fp16(small(rng))); break;
          case GgmlType::Q4_1:
            put16(blk, fp32_to_fp16(small(rng)));
            put16(blk + 2, fp32_to_fp16(-8 * small(rng)));
            break;
          case GgmlType::Q4_K:
            put16(blk, fp32_to_fp16(small(rng) / 8));
            put16(blk + 2, fp32_to_fp16(small(rng) / 8));
            break;
          case GgmlType::Q6_K: put16(blk + 208, fp32_to_fp16(small(rng) / 16)); break;
          default: ADD_FAILURE() << "no generator for " << type_name(type);
        }
      }
    return raw;
  }

  std::unique_ptr<Backend> gpu, cpu;
  std::vector<Tensor> gpu_owned, cpu_owned;
  std::deque<std::vector<uint8_t>> weight_bytes;  // load_random_weight's, for the fixture's life
  std::mt19937 rng;
};

}  // namespace batchmax::cudatest
