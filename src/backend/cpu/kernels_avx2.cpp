// The one file compiled with -mavx2 -mfma -mf16c (see CMakeLists.txt).
#include "backend/cpu/kernels_avx2.h"

#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <memory>

#include "backend/cpu/avx2_common.h"
#include "core/error.h"

namespace batchmax::cpu::avx2 {

namespace {

// ---------------------------------------------------------------- helpers

inline float bf16_to_float(const void* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
  const uint32_t u = uint32_t(h) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// exp(x) to about 2 ulp (Cephes polynomial); inputs below -87 give ~0.
inline __m256 exp256(__m256 x) {
  x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-87.0f)), _mm256_set1_ps(88.0f));
  __m256 fx = _mm256_floor_ps(_mm256_fmadd_ps(x, _mm256_set1_ps(1.44269504088896341f),
                                               _mm256_set1_ps(0.5f)));
  x = _mm256_fnmadd_ps(fx, _mm256_set1_ps(0.693359375f), x);
  x = _mm256_fnmadd_ps(fx, _mm256_set1_ps(-2.12194440e-4f), x);
  __m256 y = _mm256_set1_ps(1.9875691500e-4f);
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.3981999507e-3f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(8.3334519073e-3f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(4.1665795894e-2f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.6666665459e-1f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(5.0000001201e-1f));
  y = _mm256_fmadd_ps(y, _mm256_mul_ps(x, x), _mm256_add_ps(x, _mm256_set1_ps(1.0f)));
  const __m256i e = _mm256_slli_epi32(
      _mm256_add_epi32(_mm256_cvttps_epi32(fx), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(y, _mm256_castsi256_ps(e));
}

// 64-byte aligned scratch that grows and is kept per thread (no allocation per call).
struct Scratch {
  float* data = nullptr;
  size_t cap = 0;
  ~Scratch() { std::free(data); }
  float* get(size_t n) {
    if (n > cap) {
      std::free(data);
      cap = (n + 15) & ~size_t{15};
      data = static_cast<float*>(std::aligned_alloc(64, cap * sizeof(float)));
      if (!data) throw Error("out of memory for kernel scratch");
    }
    return data;
  }
};

// ---------------------------------------------------------------- decoders
// Dq<T>::group(row, g, w) decodes elements [32g, 32g + 32) of a row into w[0..3] in order.

template <GgmlType T>
struct Dq;

template <>
struct Dq<GgmlType::F32> {
  static constexpr bool kPlain = true;
  static float elem(const uint8_t* row, int64_t i) { return reinterpret_cast<const float*>(row)[i]; }
  static void group(const uint8_t* row, int64_t g, __m256 w[4]) {
    const float* p = reinterpret_cast<const float*>(row) + g * 32;
    for (int i = 0; i < 4; ++i) w[i] = _mm256_loadu_ps(p + 8 * i);
  }
};

template <>
struct Dq<GgmlType::F16> {
  static constexpr bool kPlain = true;
  static float elem(const uint8_t* row, int64_t i) { return half_to_float(row + 2 * i); }
  static void group(const uint8_t* row, int64_t g, __m256 w[4]) {
    const uint8_t* p = row + g * 64;
    for (int i = 0; i < 4; ++i)
      w[i] = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 16 * i)));
  }
};

template <>
struct Dq<GgmlType::BF16> {
  static constexpr bool kPlain = true;
  static float elem(const uint8_t* row, int64_t i) { return bf16_to_float(row + 2 * i); }
  static void group(const uint8_t* row, int64_t g, __m256 w[4]) {
    const uint8_t* p = row + g * 64;
    for (int i = 0; i < 4; ++i) {
      const __m256i v = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 16 * i)));
      w[i] = _mm256_castsi256_ps(_mm256_slli_epi32(v, 16));
    }
  }
};

// 16 bytes of 4-bit values -> elements 0..15 (low nibbles) and 16..31 (high nibbles).
inline void unpack_nibbles(const uint8_t* qs, __m256 w[4]) {
  const __m128i raw = _mm_loadu_si128(reinterpret_cast<const __m128i*>(qs));
  const __m128i mask = _mm_set1_epi8(15);
  const __m128i lo = _mm_and_si128(raw, mask);
  const __m128i hi = _mm_and_si128(_mm_srli_epi16(raw, 4), mask);
  w[0] = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(lo));
  w[1] = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(lo, 8)));
  w[2] = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(hi));
  w[3] = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(hi, 8)));
}

// 32 bytes of small integers (u8 or s8) -> 32 floats.
template <bool kSigned>
inline void widen32(__m256i q, __m256 w[4]) {
  const __m128i a = _mm256_castsi256_si128(q), b = _mm256_extracti128_si256(q, 1);
  if constexpr (kSigned) {
    w[0] = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(a));
    w[1] = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(a, 8)));
    w[2] = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(b));
    w[3] = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(b, 8)));
  } else {
    w[0] = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(a));
    w[1] = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(a, 8)));
    w[2] = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(b));
    w[3] = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(b, 8)));
  }
}

template <>
struct Dq<GgmlType::Q8_0> {
  static constexpr bool kPlain = false;
  static void group(const uint8_t* row, int64_t g, __m256 w[4]) {
    const BlockQ8_0* b = reinterpret_cast<const BlockQ8_0*>(row) + g;
    const __m256 d = _mm256_set1_ps(half_to_float(&b->d));
    widen32<true>(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(b->qs)), w);
    for (int i = 0; i < 4; ++i) w[i] = _mm256_mul_ps(w[i], d);
  }
};

template <>
struct Dq<GgmlType::Q4_0> {
  static constexpr bool kPlain = false;
  static void group(const uint8_t* row, int64_t g, __m256 w[4]) {
    const BlockQ4_0* b = reinterpret_cast<const BlockQ4_0*>(row) + g;
    const float d = half_to_float(&b->d);
    const __m256 vd = _mm256_set1_ps(d), off = _mm256_set1_ps(-8.0f * d);
    unpack_nibbles(b->qs, w);
    for (int i = 0; i < 4; ++i) w[i] = _mm256_fmadd_ps(w[i], vd, off);
  }
};

template <>
struct Dq<GgmlType::Q4_1> {
  static constexpr bool kPlain = false;
  static void group(const uint8_t* row, int64_t g, __m256 w[4]) {
    const BlockQ4_1* b = reinterpret_cast<const BlockQ4_1*>(row) + g;
    const __m256 vd = _mm256_set1_ps(half_to_float(&b->d)), vm = _mm256_set1_ps(half_to_float(&b->m));
    unpack_nibbles(b->qs, w);
    for (int i = 0; i < 4; ++i) w[i] = _mm256_fmadd_ps(w[i], vd, vm);
  }
};

template <>
struct Dq<GgmlType::Q4_K> {
  static constexpr bool kPlain = false;
  static void group(const uint8_t* row, int64_t g, __m256 w[4]) {
    const BlockQ4_K* b = reinterpret_cast<const BlockQ4_K*>(row) + g / 8;
    const int j = static_cast<int>(g % 8);
    const uint8_t* s = b->scales;
    int sc, mn;  // 6-bit scale and min of sub-block j, packed as ggml's get_scale_min_k4
    if (j < 4) {
      sc = s[j] & 63;
      mn = s[j + 4] & 63;
    } else {
      sc = (s[j + 4] & 0xF) | ((s[j - 4] >> 6) << 4);
      mn = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
    }
    const __m256 vd = _mm256_set1_ps(half_to_float(&b->d) * sc);
    const __m256 vm = _mm256_set1_ps(-half_to_float(&b->dmin) * mn);
    // Sub-blocks 2p and 2p+1 share 32 bytes: low nibbles, then high nibbles.
    __m256i q = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b->qs + 32 * (j >> 1)));
    if (j & 1) q = _mm256_srli_epi16(q, 4);
    q = _mm256_and_si256(q, _mm256_set1_epi8(15));
    widen32<false>(q, w);
    for (int i = 0; i < 4; ++i) w[i] = _mm256_fmadd_ps(w[i], vd, vm);
  }
};

template <>
struct Dq<GgmlType::Q6_K> {
  static constexpr bool kPlain = false;
  static void group(const uint8_t* row, int64_t g, __m256 w[4]) {
    const BlockQ6_K* b = reinterpret_cast<const BlockQ6_K*>(row) + g / 8;
    const int j = static_cast<int>(g % 8), half = j / 4, quarter = j % 4;
    // Quarter t of a 128-element half: low bits from ql (+32 for odd t, high nibble for
    // t >= 2), high 2 bits from qh >> 2t; minus 32.
    __m256i lo = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b->ql + 64 * half + 32 * (quarter & 1)));
    if (quarter >= 2) lo = _mm256_srli_epi16(lo, 4);
    lo = _mm256_and_si256(lo, _mm256_set1_epi8(15));
    __m256i hi = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b->qh + 32 * half));
    hi = _mm256_and_si256(_mm256_srl_epi16(hi, _mm_cvtsi32_si128(2 * quarter)), _mm256_set1_epi8(3));
    const __m256i q = _mm256_sub_epi8(_mm256_or_si256(lo, _mm256_slli_epi16(hi, 4)), _mm256_set1_epi8(32));
    widen32<true>(q, w);
    const float d = half_to_float(&b->d);
    const int8_t* sc = b->scales + 8 * half + 2 * quarter;
    const __m256 s0 = _mm256_set1_ps(d * sc[0]), s1 = _mm256_set1_ps(d * sc[1]);
    w[0] = _mm256_mul_ps(w[0], s0);
    w[1] = _mm256_mul_ps(w[1], s0);
    w[2] = _mm256_mul_ps(w[2], s1);
    w[3] = _mm256_mul_ps(w[3], s1);
  }
};

// Calls f.template operator()<T>() for the run-time type t.
template <class F>
void dispatch_type(GgmlType t, F&& f) {
  switch (t) {
    case GgmlType::F32: f.template operator()<GgmlType::F32>(); return;
    case GgmlType::F16: f.template operator()<GgmlType::F16>(); return;
    case GgmlType::BF16: f.template operator()<GgmlType::BF16>(); return;
    case GgmlType::Q8_0: f.template operator()<GgmlType::Q8_0>(); return;
    case GgmlType::Q4_0: f.template operator()<GgmlType::Q4_0>(); return;
    case GgmlType::Q4_1: f.template operator()<GgmlType::Q4_1>(); return;
    case GgmlType::Q4_K: f.template operator()<GgmlType::Q4_K>(); return;
    case GgmlType::Q6_K: f.template operator()<GgmlType::Q6_K>(); return;
    default: throw Error("CPU kernels do not support weight type " + type_name(t));
  }
}

template <GgmlType T>
void dequant_row_t(const uint8_t* row, float* dst, int64_t n) {
  const int64_t groups = n / 32;
  __m256 w[4];
  for (int64_t g = 0; g < groups; ++g) {
    Dq<T>::group(row, g, w);
    for (int i = 0; i < 4; ++i) _mm256_storeu_ps(dst + 32 * g + 8 * i, w[i]);
  }
  if constexpr (Dq<T>::kPlain)
    for (int64_t i = groups * 32; i < n; ++i) dst[i] = Dq<T>::elem(row, i);
}

// ---------------------------------------------------------------- matmul, few rows

// Rows of x handled together by the fused kernel; more go through it in passes, and from
// kTiledMinRows on the tiled path is used.
constexpr int kFusedRows = 8;
constexpr int64_t kTiledMinRows = kMatmulTiledMinRows;

// out[r0 .. r0+N, m0 .. m1) for N rows of x: every weight block is decoded once into
// registers and multiplied into all N rows.
template <GgmlType T, int N>
void matmul_fused(const Tensor& x, int64_t r0, const Tensor& w, const Tensor* bias, Tensor& out,
                  int64_t m0, int64_t m1) {
  // Independent accumulators per row so at least ~8 FMA chains are in flight (4-cycle
  // latency, 2 ports) even when N is small.
  constexpr int A = N >= 8 ? 1 : N >= 4 ? 2 : 4;
  const int64_t k = w.cols, groups = k / 32;
  const float* xr[N];
  for (int r = 0; r < N; ++r) xr[r] = x.row_f32(r0 + r);
  for (int64_t j = m0; j < m1; ++j) {
    const uint8_t* wr = static_cast<const uint8_t*>(w.row(j));
    __m256 acc[N * A];
    for (int i = 0; i < N * A; ++i) acc[i] = _mm256_setzero_ps();
    for (int64_t g = 0; g < groups; ++g) {
      __m256 wv[4];
      Dq<T>::group(wr, g, wv);
      for (int r = 0; r < N; ++r)
        for (int i = 0; i < 4; ++i)
          acc[r * A + i % A] = _mm256_fmadd_ps(wv[i], _mm256_loadu_ps(xr[r] + 32 * g + 8 * i), acc[r * A + i % A]);
    }
    const float b = bias ? bias->f32()[j] : 0.0f;
    for (int r = 0; r < N; ++r) {
      __m256 s = acc[r * A];
      for (int a = 1; a < A; ++a) s = _mm256_add_ps(s, acc[r * A + a]);
      float sum = hsum(s);
      if constexpr (Dq<T>::kPlain)
        for (int64_t i = groups * 32; i < k; ++i) sum += Dq<T>::elem(wr, i) * xr[r][i];
      out.row_f32(r0 + r)[j] = sum + b;
    }
  }
}

template <GgmlType T>
void matmul_fused_rows(const Tensor& x, const Tensor& w, const Tensor* bias, Tensor& out,
                       int64_t m0, int64_t m1) {
  for (int64_t r0 = 0; r0 < x.rows; r0 += kFusedRows) {
    switch (std::min<int64_t>(kFusedRows, x.rows - r0)) {
      case 1: matmul_fused<T, 1>(x, r0, w, bias, out, m0, m1); break;
      case 2: matmul_fused<T, 2>(x, r0, w, bias, out, m0, m1); break;
      case 3: matmul_fused<T, 3>(x, r0, w, bias, out, m0, m1); break;
      case 4: matmul_fused<T, 4>(x, r0, w, bias, out, m0, m1); break;
      case 5: matmul_fused<T, 5>(x, r0, w, bias, out, m0, m1); break;
      case 6: matmul_fused<T, 6>(x, r0, w, bias, out, m0, m1); break;
      case 7: matmul_fused<T, 7>(x, r0, w, bias, out, m0, m1); break;
      default: matmul_fused<T, 8>(x, r0, w, bias, out, m0, m1); break;
    }
  }
}

// ---------------------------------------------------------------- matmul, many rows

// R rows of x against C rows of a decoded weight tile: R*C accumulators of 8 partial sums
// (12 + 3 weight registers + 1 for x fit the 16 ymm registers at 4x3).
template <int R, int C>
void micro(const float* x, int64_t xs, const float* w, int64_t ws, int64_t k, float* o, int64_t os) {
  __m256 acc[R][C];
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < C; ++c) acc[r][c] = _mm256_setzero_ps();
  const int64_t k8 = k & ~int64_t{7};
  for (int64_t i = 0; i < k8; i += 8) {
    __m256 wv[C];
    for (int c = 0; c < C; ++c) wv[c] = _mm256_loadu_ps(w + c * ws + i);
    for (int r = 0; r < R; ++r) {
      const __m256 xv = _mm256_loadu_ps(x + r * xs + i);
      for (int c = 0; c < C; ++c) acc[r][c] = _mm256_fmadd_ps(xv, wv[c], acc[r][c]);
    }
  }
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < C; ++c) {
      float s = hsum(acc[r][c]);
      for (int64_t i = k8; i < k; ++i) s += x[r * xs + i] * w[c * ws + i];
      o[r * os + c] = s;
    }
}

using MicroFn = void (*)(const float*, int64_t, const float*, int64_t, int64_t, float*, int64_t);
constexpr int kMR = 4, kMC = 3;
constexpr MicroFn kMicro[kMR][kMC] = {
    {micro<1, 1>, micro<1, 2>, micro<1, 3>},
    {micro<2, 1>, micro<2, 2>, micro<2, 3>},
    {micro<3, 1>, micro<3, 2>, micro<3, 3>},
    {micro<4, 1>, micro<4, 2>, micro<4, 3>},
};

// Weight rows decoded at a time: a multiple of kMC whose f32 copy stays in L2 (~384 KiB).
int64_t tile_rows(int64_t k) {
  const int64_t kp = (k + 15) & ~int64_t{15};
  const int64_t t = (384 * 1024 / 4) / kp;
  return std::clamp<int64_t>(t / kMC * kMC, kMC, 48);
}

thread_local Scratch tl_tile;

void matmul_tiled(const Tensor& x, const Tensor& w, const Tensor* bias, Tensor& out, int64_t m0,
                  int64_t m1) {
  const int64_t k = w.cols, n = x.rows;
  const int64_t kp = (k + 15) & ~int64_t{15};  // 64-byte aligned rows in the tile
  const int64_t tw_max = tile_rows(k);
  float* tile = tl_tile.get(tw_max * kp);
  const int64_t xs = x.row_stride / sizeof(float), os = out.row_stride / sizeof(float);
  for (int64_t t0 = m0; t0 < m1; t0 += tw_max) {
    const int64_t tw = std::min(tw_max, m1 - t0);
    for (int64_t c = 0; c < tw; ++c) avx2::dequantize_row(w.type, w.row(t0 + c), tile + c * kp, k);
    // The rows of x (kMR at a time, in L1) meet every row of the tile (in L2).
    for (int64_t r = 0; r < n; r += kMR) {
      const int64_t nr = std::min<int64_t>(kMR, n - r);
      for (int64_t c = 0; c < tw; c += kMC) {
        const int64_t nc = std::min<int64_t>(kMC, tw - c);
        kMicro[nr - 1][nc - 1](x.row_f32(r), xs, tile + c * kp, kp, k, out.row_f32(r) + t0 + c, os);
      }
    }
    if (bias)
      for (int64_t r = 0; r < n; ++r) add(out.row_f32(r) + t0, bias->f32() + t0, tw);
  }
}

}  // namespace

// ---------------------------------------------------------------- public kernels

void dequantize_row(GgmlType t, const void* src, float* dst, int64_t n) {
  dispatch_type(t, [&]<GgmlType T>() { dequant_row_t<T>(static_cast<const uint8_t*>(src), dst, n); });
}

int64_t matmul_col_grain(int64_t n, int64_t k) { return n < kTiledMinRows ? 16 : tile_rows(k); }

void matmul_cols(const Tensor& x, const Tensor& w, const Tensor* bias, Tensor& out, int64_t m0,
                 int64_t m1) {
  if (x.rows < kTiledMinRows)
    dispatch_type(w.type, [&]<GgmlType T>() { matmul_fused_rows<T>(x, w, bias, out, m0, m1); });
  else
    matmul_tiled(x, w, bias, out, m0, m1);
}

void rms_norm_rows(const Tensor& x, const float* w, float eps, Tensor& out, int64_t r0, int64_t r1) {
  const int64_t n = x.cols, n8 = n & ~int64_t{7};
  for (int64_t r = r0; r < r1; ++r) {
    const float* xr = x.row_f32(r);
    float* o = out.row_f32(r);
    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 16 <= n8; i += 16) {
      const __m256 v0 = _mm256_loadu_ps(xr + i), v1 = _mm256_loadu_ps(xr + i + 8);
      a0 = _mm256_fmadd_ps(v0, v0, a0);
      a1 = _mm256_fmadd_ps(v1, v1, a1);
    }
    for (; i < n8; i += 8) {
      const __m256 v = _mm256_loadu_ps(xr + i);
      a0 = _mm256_fmadd_ps(v, v, a0);
    }
    double ss = hsum(_mm256_add_ps(a0, a1));
    for (i = n8; i < n; ++i) ss += double(xr[i]) * xr[i];
    const float inv = float(1.0 / std::sqrt(ss / n + eps));
    const __m256 vi = _mm256_set1_ps(inv);
    for (i = 0; i < n8; i += 8)
      _mm256_storeu_ps(o + i, _mm256_mul_ps(_mm256_mul_ps(_mm256_loadu_ps(xr + i), vi), _mm256_loadu_ps(w + i)));
    for (i = n8; i < n; ++i) o[i] = xr[i] * inv * w[i];
  }
}

void swiglu(const float* gate, const float* up, float* out, int64_t n) {
  const int64_t n8 = n & ~int64_t{7};
  const __m256 one = _mm256_set1_ps(1.0f);
  for (int64_t i = 0; i < n8; i += 8) {
    const __m256 g = _mm256_loadu_ps(gate + i);
    const __m256 e = exp256(_mm256_sub_ps(_mm256_setzero_ps(), g));
    _mm256_storeu_ps(out + i, _mm256_mul_ps(_mm256_div_ps(g, _mm256_add_ps(one, e)), _mm256_loadu_ps(up + i)));
  }
  for (int64_t i = n8; i < n; ++i) out[i] = gate[i] / (1.0f + std::exp(-gate[i])) * up[i];
}

void add(float* x, const float* y, int64_t n) {
  const int64_t n8 = n & ~int64_t{7};
  for (int64_t i = 0; i < n8; i += 8)
    _mm256_storeu_ps(x + i, _mm256_add_ps(_mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i)));
  for (int64_t i = n8; i < n; ++i) x[i] += y[i];
}

void rope_rows(Tensor& x, int n_heads, const int32_t* pos, const RopeParams& p, int64_t r0, int64_t r1) {
  const int half = p.rotary_dim / 2;
  thread_local Scratch tl_trig;
  // Interleaved: cos duplicated per pair and sin as (-s, s), so a pair swap and two FMAs
  // rotate 4 pairs at once. Neox: plain cos and sin per i.
  float* cs = tl_trig.get(2 * size_t(p.rotary_dim));
  float* sn = cs + p.rotary_dim;
  for (int64_t r = r0; r < r1; ++r) {
    for (int i = 0; i < half; ++i) {
      const double theta = double(pos[r]) * p.inv_freq[i];
      const float c = float(std::cos(theta)), s = float(std::sin(theta));
      if (p.style == RopeStyle::Interleaved) {
        cs[2 * i] = cs[2 * i + 1] = c;
        sn[2 * i] = -s;
        sn[2 * i + 1] = s;
      } else {
        cs[i] = c;
        sn[i] = s;
      }
    }
    for (int h = 0; h < n_heads; ++h) {
      float* v = x.row_f32(r) + int64_t(h) * p.head_dim;
      if (p.style == RopeStyle::Interleaved) {
        int i = 0;
        for (; i + 8 <= p.rotary_dim; i += 8) {
          const __m256 a = _mm256_loadu_ps(v + i);
          const __m256 sw = _mm256_permute_ps(a, 0xB1);  // (x1, x0) per pair
          _mm256_storeu_ps(v + i, _mm256_fmadd_ps(a, _mm256_loadu_ps(cs + i), _mm256_mul_ps(sw, _mm256_loadu_ps(sn + i))));
        }
        for (; i < p.rotary_dim; i += 2) {
          const float x0 = v[i], x1 = v[i + 1];
          v[i] = x0 * cs[i] + x1 * sn[i];
          v[i + 1] = x1 * cs[i + 1] + x0 * sn[i + 1];
        }
      } else {
        int i = 0;
        for (; i + 8 <= half; i += 8) {
          const __m256 a = _mm256_loadu_ps(v + i), b = _mm256_loadu_ps(v + i + half);
          const __m256 c = _mm256_loadu_ps(cs + i), s = _mm256_loadu_ps(sn + i);
          _mm256_storeu_ps(v + i, _mm256_fmsub_ps(a, c, _mm256_mul_ps(b, s)));
          _mm256_storeu_ps(v + i + half, _mm256_fmadd_ps(a, s, _mm256_mul_ps(b, c)));
        }
        for (; i < half; ++i) {
          const float a = v[i], b = v[i + half];
          v[i] = a * cs[i] - b * sn[i];
          v[i + half] = a * sn[i] + b * cs[i];
        }
      }
    }
  }
}

// ---------------------------------------------------------------- attention

namespace {

inline float dot(const float* a, const float* b, int n) {
  __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
  int i = 0;
  for (; i + 16 <= n; i += 16) {
    s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
    s1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), s1);
  }
  for (; i < n; i += 8) s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
  return hsum(_mm256_add_ps(s0, s1));
}

// count rows of head_dim elements of the pool from `slot` on, as f32: in place for F32
// storage, converted into `buf` for F16.
const float* kv_rows(const void* base, GgmlType type, int64_t slot, int count, int hd, float* buf) {
  if (type == GgmlType::F32) return static_cast<const float*>(base) + slot * hd;
  const uint16_t* h = static_cast<const uint16_t*>(base) + slot * hd;
  for (int64_t i = 0; i < int64_t(count) * hd; i += 8)
    _mm256_storeu_ps(buf + i, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(h + i))));
  return buf;
}

thread_local Scratch tl_attn;

}  // namespace

void attention_part(const Tensor& q, const AttentionSeq& s, int64_t r0, int64_t r1, int kvh,
                    const AttentionParams& p, const KVPoolView& pool, Tensor& out) {
  const int G = p.n_heads / p.n_kv_heads, hd = p.head_dim, bt = pool.block_tokens;
  const int nq = static_cast<int>(r1 - r0) * G;  // query vectors: rows x heads of the group
  const int bt8 = (bt + 7) & ~7;
  // Scratch: O[nq][hd], running max m[nq] and sum l[nq], scores[bt8], K and V blocks.
  float* O = tl_attn.get(size_t(nq) * hd + 2 * size_t(nq) + bt8 + 2 * size_t(bt) * hd);
  float* m = O + size_t(nq) * hd;
  float* l = m + nq;
  float* sc = l + nq;
  float* kbuf = sc + bt8;
  float* vbuf = kbuf + size_t(bt) * hd;
  std::fill(O, O + size_t(nq) * hd, 0.0f);
  std::fill(m, m + nq, -std::numeric_limits<float>::infinity());
  std::fill(l, l + nq, 0.0f);
  int32_t max_qpos = std::numeric_limits<int32_t>::min();
  for (int64_t r = r0; r < r1; ++r) max_qpos = std::max(max_qpos, s.q_pos[r]);

  const int32_t entries = s.head_entries[kvh];
  const std::span<const int32_t> blocks = s.head_blocks[kvh];
  const __m256 neg_inf = _mm256_set1_ps(-std::numeric_limits<float>::infinity());
  for (int32_t e0 = 0; e0 < entries; e0 += bt) {
    const int cnt = std::min(bt, entries - e0);
    const int64_t slot0 = int64_t(blocks[e0 / bt]) * bt;
    const int32_t* kpos = pool.pos + slot0;
    bool any = false;  // skip blocks no query of this unit can see
    for (int j = 0; j < cnt; ++j) any |= kpos[j] <= max_qpos;
    if (!any) continue;
    const float* K = kv_rows(pool.k, pool.type, slot0, cnt, hd, kbuf);
    const float* V = kv_rows(pool.v, pool.type, slot0, cnt, hd, vbuf);
    for (int qi = 0; qi < nq; ++qi) {
      const int64_t r = r0 + qi / G;
      const int h = kvh * G + qi % G;
      const float* qv = q.row_f32(s.q_begin + r) + int64_t(h) * hd;
      const int32_t qpos = s.q_pos[r];
      float bmax = -std::numeric_limits<float>::infinity();
      for (int j = 0; j < cnt; ++j) {
        sc[j] = kpos[j] <= qpos ? dot(qv, K + int64_t(j) * hd, hd) * p.scale
                                : -std::numeric_limits<float>::infinity();
        bmax = std::max(bmax, sc[j]);
      }
      if (bmax == -std::numeric_limits<float>::infinity()) continue;
      for (int j = cnt; j < bt8; ++j) sc[j] = -std::numeric_limits<float>::infinity();
      const float m_new = std::max(m[qi], bmax);
      const float corr = std::exp(m[qi] - m_new);  // 0 on the first visible block
      const __m256 vm = _mm256_set1_ps(m_new);
      __m256 psum = _mm256_setzero_ps();
      for (int j = 0; j < bt8; j += 8) {
        const __m256 v = _mm256_loadu_ps(sc + j);
        // Masked scores are -inf: force their weight to exactly 0.
        const __m256 pj = _mm256_andnot_ps(_mm256_cmp_ps(v, neg_inf, _CMP_EQ_OQ), exp256(_mm256_sub_ps(v, vm)));
        _mm256_storeu_ps(sc + j, pj);
        psum = _mm256_add_ps(psum, pj);
      }
      l[qi] = l[qi] * corr + hsum(psum);
      m[qi] = m_new;
      float* o = O + int64_t(qi) * hd;
      const __m256 vc = _mm256_set1_ps(corr);
      for (int i = 0; i < hd; i += 8) {
        __m256 acc = _mm256_mul_ps(_mm256_loadu_ps(o + i), vc);
        for (int j = 0; j < cnt; ++j)
          acc = _mm256_fmadd_ps(_mm256_set1_ps(sc[j]), _mm256_loadu_ps(V + int64_t(j) * hd + i), acc);
        _mm256_storeu_ps(o + i, acc);
      }
    }
  }
  for (int qi = 0; qi < nq; ++qi) {
    const int64_t r = r0 + qi / G;
    const int h = kvh * G + qi % G;
    float* dst = out.row_f32(s.q_begin + r) + int64_t(h) * hd;
    const float inv = l[qi] > 0 ? 1.0f / l[qi] : 0.0f;  // no visible key: zeros
    for (int i = 0; i < hd; ++i) dst[i] = O[int64_t(qi) * hd + i] * inv;
  }
}

}  // namespace batchmax::cpu::avx2
