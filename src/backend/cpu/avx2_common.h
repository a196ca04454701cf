#pragma once
// Inline helpers shared by the AVX2 translation units. Include ONLY from files compiled
// with -mavx2 -mfma -mf16c (see CMakeLists.txt): these are AVX2 instructions.
#include <immintrin.h>

#include <cstdint>
#include <cstring>

namespace batchmax::cpu::avx2 {

inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

inline float half_to_float(const void* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
  return _cvtsh_ss(h);
}

}  // namespace batchmax::cpu::avx2
