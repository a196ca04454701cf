#pragma once
// Helpers for the CPU kernel tests: seeded random data, host tensors, quantisers that
// write valid GGML blocks, and the normalised error ||a - b|| / ||b||.
#include <cmath>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "backend/backend.h"
#include "format/tensor_types.h"

namespace batchmax::test {

// A fresh seed per run, printed by the tests that use it (SCOPED_TRACE).
inline uint32_t fresh_seed() { return std::random_device{}(); }

struct Rng {
  std::mt19937 gen;
  explicit Rng(uint32_t seed) : gen(seed) {}
  float uniform(float lo, float hi) { return std::uniform_real_distribution<float>(lo, hi)(gen); }
  int uniform_int(int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(gen); }
  std::vector<float> floats(size_t n, float lo = -1, float hi = 1) {
    std::vector<float> v(n);
    for (float& x : v) x = uniform(lo, hi);
    return v;
  }
};

// Host storage with a Tensor view; `pad` extra elements per row test strided rows.
struct HostTensor {
  std::vector<uint8_t> bytes;
  Tensor t;
  HostTensor() = default;
  HostTensor(GgmlType type, int64_t rows, int64_t cols, int64_t pad = 0) {
    const size_t elem = type == GgmlType::F32 ? 4 : 0;
    t.type = type;
    t.rows = rows;
    t.cols = cols;
    t.row_stride = row_bytes(type, cols) + pad * elem;
    bytes.resize(std::max<size_t>(1, t.row_stride * rows));
    t.data = bytes.data();
  }
  static HostTensor f32(int64_t rows, int64_t cols, Rng& rng, int64_t pad = 0, float lo = -1, float hi = 1) {
    HostTensor h(GgmlType::F32, rows, cols, pad);
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t i = 0; i < cols; ++i) h.t.row_f32(r)[i] = rng.uniform(lo, hi);
    return h;
  }
  void fill(float v) {
    for (int64_t r = 0; r < t.rows; ++r) std::fill(t.row_f32(r), t.row_f32(r) + t.cols, v);
  }
  std::vector<float> values() const {  // F32 only, without padding
    std::vector<float> v;
    for (int64_t r = 0; r < t.rows; ++r) v.insert(v.end(), t.row_f32(r), t.row_f32(r) + t.cols);
    return v;
  }
};

inline double rel_err(const std::vector<float>& a, const std::vector<float>& b) {
  double num = 0, den = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    num += (double(a[i]) - b[i]) * (double(a[i]) - b[i]);
    den += double(b[i]) * b[i];
  }
  return std::sqrt(num / std::max(den, 1e-30));
}

inline bool all_finite(const std::vector<float>& v) {
  for (float x : v)
    if (!std::isfinite(x)) return false;
  return true;
}

inline void put_half(uint16_t& dst, float f) { dst = fp32_to_fp16(f); }

// One row of `n` elements of `type` from floats x. Q4_K and Q6_K rows are random valid
// blocks instead (x ignored): their encoders are not needed to test decoding.
inline std::vector<uint8_t> quantize_row(GgmlType type, const float* x, int64_t n, Rng& rng) {
  std::vector<uint8_t> out(row_bytes(type, n));
  uint8_t* p = out.data();
  switch (type) {
    case GgmlType::F32: std::memcpy(p, x, n * 4); break;
    case GgmlType::F16:
      for (int64_t i = 0; i < n; ++i) { uint16_t h = fp32_to_fp16(x[i]); std::memcpy(p + 2 * i, &h, 2); }
      break;
    case GgmlType::BF16:
      for (int64_t i = 0; i < n; ++i) { uint16_t h = fp32_to_bf16(x[i]); std::memcpy(p + 2 * i, &h, 2); }
      break;
    case GgmlType::Q8_0:
      for (int64_t b = 0; b < n / 32; ++b) {
        auto* blk = reinterpret_cast<BlockQ8_0*>(p) + b;
        float amax = 0;
        for (int j = 0; j < 32; ++j) amax = std::max(amax, std::fabs(x[b * 32 + j]));
        const float d = amax / 127;
        put_half(blk->d, d);
        for (int j = 0; j < 32; ++j) blk->qs[j] = int8_t(std::lround(d ? x[b * 32 + j] / d : 0));
      }
      break;
    case GgmlType::Q4_0:
      for (int64_t b = 0; b < n / 32; ++b) {
        auto* blk = reinterpret_cast<BlockQ4_0*>(p) + b;
        float amax = 0, mx = 0;
        for (int j = 0; j < 32; ++j)
          if (std::fabs(x[b * 32 + j]) > amax) amax = std::fabs(mx = x[b * 32 + j]);
        const float d = mx / -8;
        put_half(blk->d, d);
        auto q = [&](int j) { return std::clamp<int>(std::lround(d ? x[b * 32 + j] / d : 0) + 8, 0, 15); };
        for (int j = 0; j < 16; ++j) blk->qs[j] = uint8_t(q(j) | (q(j + 16) << 4));
      }
      break;
    case GgmlType::Q4_1:
      for (int64_t b = 0; b < n / 32; ++b) {
        auto* blk = reinterpret_cast<BlockQ4_1*>(p) + b;
        float lo = x[b * 32], hi = x[b * 32];
        for (int j = 0; j < 32; ++j) lo = std::min(lo, x[b * 32 + j]), hi = std::max(hi, x[b * 32 + j]);
        const float d = (hi - lo) / 15;
        put_half(blk->d, d);
        put_half(blk->m, lo);
        auto q = [&](int j) { return std::clamp<int>(std::lround(d ? (x[b * 32 + j] - lo) / d : 0), 0, 15); };
        for (int j = 0; j < 16; ++j) blk->qs[j] = uint8_t(q(j) | (q(j + 16) << 4));
      }
      break;
    case GgmlType::Q4_K:
      for (int64_t b = 0; b < n / 256; ++b) {
        auto* blk = reinterpret_cast<BlockQ4_K*>(p) + b;
        put_half(blk->d, rng.uniform(0.001f, 0.01f));
        put_half(blk->dmin, rng.uniform(0.0005f, 0.005f));
        for (auto& s : blk->scales) s = uint8_t(rng.uniform_int(0, 255));
        for (auto& q : blk->qs) q = uint8_t(rng.uniform_int(0, 255));
      }
      break;
    case GgmlType::Q6_K:
      for (int64_t b = 0; b < n / 256; ++b) {
        auto* blk = reinterpret_cast<BlockQ6_K*>(p) + b;
        put_half(blk->d, rng.uniform(0.0005f, 0.005f));
        for (auto& s : blk->scales) s = int8_t(rng.uniform_int(-128, 127));
        for (auto& q : blk->ql) q = uint8_t(rng.uniform_int(0, 255));
        for (auto& q : blk->qh) q = uint8_t(rng.uniform_int(0, 255));
      }
      break;
    default: break;
  }
  return out;
}

// A rows x cols weight of `type` holding random data.
struct HostWeight {
  std::vector<uint8_t> bytes;
  Tensor t;
  HostWeight(GgmlType type, int64_t rows, int64_t cols, Rng& rng) {
    const size_t rb = row_bytes(type, cols);
    bytes.resize(std::max<size_t>(1, rb * rows));
    for (int64_t r = 0; r < rows; ++r) {
      const std::vector<float> x = rng.floats(cols);
      const std::vector<uint8_t> q = quantize_row(type, x.data(), cols, rng);
      std::memcpy(bytes.data() + r * rb, q.data(), rb);
    }
    t = Tensor{bytes.data(), type, rows, cols, rb};
  }
};

inline const GgmlType kWeightTypes[] = {GgmlType::F32,  GgmlType::F16,  GgmlType::BF16, GgmlType::Q8_0,
                                        GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q4_K, GgmlType::Q6_K};

// The row length granule of a type (32 for the simple quants, 256 for the K quants).
inline int64_t granule(GgmlType t) { return type_traits(t).block_size == 1 ? 1 : type_traits(t).block_size; }

}  // namespace batchmax::test
