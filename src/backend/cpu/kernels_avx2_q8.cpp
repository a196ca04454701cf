// Decode matmuls with the activations quantised to Q8 (int8 + one scale per 32), as
// llama.cpp does: weight nibbles or bytes meet int8 activations in integer multiply-adds,
// about half the instructions per weight block of decoding the weights to floats.
// Compiled with -mavx2 -mfma -mf16c (see CMakeLists.txt).
#include <algorithm>

#include "backend/cpu/avx2_common.h"
#include "backend/cpu/kernels_avx2.h"

namespace batchmax::cpu::avx2 {

namespace {

// 16 bytes of nibbles -> 32 u8: low nibbles are elements 0..15, high ones 16..31.
inline __m256i nibbles32(const uint8_t* qs) {
  const __m128i raw = _mm_loadu_si128(reinterpret_cast<const __m128i*>(qs));
  return _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(raw, 4), raw), _mm256_set1_epi8(15));
}

// Sum over a block of w_i * x_i, where w_i = d * q_i + off:
//   d * dx * sum(q_i * xq_i) + off * (dx * sum(xq_i)); the last factor is QuantizedRows::s.
template <GgmlType T, int N>
void matmul_q8_n(const QuantizedRows& xq, int64_t r0, const Tensor& w, const Tensor* bias, Tensor& out,
                 int64_t m0, int64_t m1) {
  constexpr int A = N <= 2 ? 2 : 1;  // two chains when few rows, to hide FMA latency
  const int64_t blocks = xq.blocks;
  const __m256i ones = _mm256_set1_epi16(1);
  const int8_t* xr[N];
  const float* dx[N];
  const float* sx[N];
  for (int r = 0; r < N; ++r) {
    xr[r] = xq.q.data() + (r0 + r) * blocks * 32;
    dx[r] = xq.d.data() + (r0 + r) * blocks;
    sx[r] = xq.s.data() + (r0 + r) * blocks;
  }
  for (int64_t j = m0; j < m1; ++j) {
    const uint8_t* wr = static_cast<const uint8_t*>(w.row(j));
    __m256 acc[N * A];
    for (auto& a : acc) a = _mm256_setzero_ps();
    float off_acc[N] = {};
    for (int64_t g = 0; g < blocks; ++g) {
      __m256i wq, wabs;
      float d, off = 0;
      if constexpr (T == GgmlType::Q8_0) {
        const BlockQ8_0* b = reinterpret_cast<const BlockQ8_0*>(wr) + g;
        wq = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b->qs));
        wabs = _mm256_sign_epi8(wq, wq);  // maddubs wants its first operand unsigned
        d = half_to_float(&b->d);
      } else if constexpr (T == GgmlType::Q4_0) {
        const BlockQ4_0* b = reinterpret_cast<const BlockQ4_0*>(wr) + g;
        wq = wabs = nibbles32(b->qs);
        d = half_to_float(&b->d);
        off = -8.0f * d;
      } else {
        const BlockQ4_1* b = reinterpret_cast<const BlockQ4_1*>(wr) + g;
        wq = wabs = nibbles32(b->qs);
        d = half_to_float(&b->d);
        off = half_to_float(&b->m);
      }
      for (int r = 0; r < N; ++r) {
        __m256i xv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xr[r] + 32 * g));
        if constexpr (T == GgmlType::Q8_0) xv = _mm256_sign_epi8(xv, wq);
        const __m256i p = _mm256_madd_epi16(_mm256_maddubs_epi16(wabs, xv), ones);
        __m256& a = acc[r * A + (A == 2 ? (g & 1) : 0)];
        a = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), _mm256_set1_ps(d * dx[r][g]), a);
        if constexpr (T != GgmlType::Q8_0) off_acc[r] += off * sx[r][g];
      }
    }
    const float bv = bias ? bias->f32()[j] : 0.0f;
    for (int r = 0; r < N; ++r) {
      const __m256 s = A == 2 ? _mm256_add_ps(acc[r * A], acc[r * A + A - 1]) : acc[r * A];
      out.row_f32(r0 + r)[j] = hsum(s) + off_acc[r] + bv;
    }
  }
}

template <GgmlType T>
void matmul_q8_rows(const QuantizedRows& xq, const Tensor& w, const Tensor* bias, Tensor& out, int64_t m0,
                    int64_t m1) {
  for (int64_t r0 = 0; r0 < xq.rows; r0 += 8) {
    switch (std::min<int64_t>(8, xq.rows - r0)) {
      case 1: matmul_q8_n<T, 1>(xq, r0, w, bias, out, m0, m1); break;
      case 2: matmul_q8_n<T, 2>(xq, r0, w, bias, out, m0, m1); break;
      case 3: matmul_q8_n<T, 3>(xq, r0, w, bias, out, m0, m1); break;
      case 4: matmul_q8_n<T, 4>(xq, r0, w, bias, out, m0, m1); break;
      case 5: matmul_q8_n<T, 5>(xq, r0, w, bias, out, m0, m1); break;
      case 6: matmul_q8_n<T, 6>(xq, r0, w, bias, out, m0, m1); break;
      case 7: matmul_q8_n<T, 7>(xq, r0, w, bias, out, m0, m1); break;
      default: matmul_q8_n<T, 8>(xq, r0, w, bias, out, m0, m1); break;
    }
  }
}

}  // namespace

bool matmul_q8_supported(GgmlType t, int64_t n) {
  // Measured: ~1.5x faster at n = 1, slower than the float path by n = 8 (the per-row
  // scale work grows with n while the float path shares one weight decode).
  return n <= 4 && (t == GgmlType::Q8_0 || t == GgmlType::Q4_0 || t == GgmlType::Q4_1);
}

void quantize_rows_q8(const Tensor& x, QuantizedRows& out) {
  const int64_t k = x.cols, blocks = k / 32;
  out.rows = x.rows;
  out.blocks = blocks;
  out.q.resize(size_t(x.rows) * blocks * 32);
  out.d.resize(size_t(x.rows) * blocks);
  out.s.resize(size_t(x.rows) * blocks);
  const __m256 sign = _mm256_set1_ps(-0.0f);
  const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
  for (int64_t r = 0; r < x.rows; ++r)
    for (int64_t b = 0; b < blocks; ++b) {
      const float* xs = x.row_f32(r) + 32 * b;
      __m256 v[4], amax = _mm256_setzero_ps();
      for (int i = 0; i < 4; ++i) {
        v[i] = _mm256_loadu_ps(xs + 8 * i);
        amax = _mm256_max_ps(amax, _mm256_andnot_ps(sign, v[i]));
      }
      __m128 m = _mm_max_ps(_mm256_castps256_ps128(amax), _mm256_extractf128_ps(amax, 1));
      m = _mm_max_ps(m, _mm_movehl_ps(m, m));
      m = _mm_max_ss(m, _mm_movehdup_ps(m));
      const float mx = _mm_cvtss_f32(m), d = mx / 127.0f;
      const __m256 id = _mm256_set1_ps(mx > 0 ? 127.0f / mx : 0.0f);
      __m256i q[4], sum = _mm256_setzero_si256();
      for (int i = 0; i < 4; ++i) {
        q[i] = _mm256_cvtps_epi32(_mm256_mul_ps(v[i], id));  // round to nearest
        sum = _mm256_add_epi32(sum, q[i]);
      }
      // packs interleave 128-bit lanes; the permute puts the 32 bytes back in order.
      const __m256i p = _mm256_packs_epi16(_mm256_packs_epi32(q[0], q[1]), _mm256_packs_epi32(q[2], q[3]));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(out.q.data() + (r * blocks + b) * 32),
                          _mm256_permutevar8x32_epi32(p, order));
      out.d[r * blocks + b] = d;
      out.s[r * blocks + b] = d * hsum(_mm256_cvtepi32_ps(sum));
    }
}

void matmul_q8_cols(const QuantizedRows& xq, const Tensor& w, const Tensor* bias, Tensor& out, int64_t m0,
                    int64_t m1) {
  switch (w.type) {
    case GgmlType::Q8_0: matmul_q8_rows<GgmlType::Q8_0>(xq, w, bias, out, m0, m1); break;
    case GgmlType::Q4_0: matmul_q8_rows<GgmlType::Q4_0>(xq, w, bias, out, m0, m1); break;
    default: matmul_q8_rows<GgmlType::Q4_1>(xq, w, bias, out, m0, m1); break;
  }
}

}  // namespace batchmax::cpu::avx2
