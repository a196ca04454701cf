// GGML type table, half-precision conversions and scalar dequantisation.
// Block layouts and formulas follow ggml (ggml-quants.c); all reads go through memcpy or
// byte-aligned packed structs, so rows at any address (alignment 1 in a GGUF) are fine.
#include "format/tensor_types.h"

#include <array>
#include <cmath>
#include <cstring>

#include "core/error.h"

namespace batchmax {

namespace {

constexpr size_t kNumTypeIds = 36;  // ids 0..35; gaps (4, 5, 31..33) are retired ids

constexpr std::array<TypeTraits, kNumTypeIds> make_table() {
  std::array<TypeTraits, kNumTypeIds> t{};
  for (auto& e : t) e = TypeTraits{nullptr, 0, 0, false};
  auto set = [&t](GgmlType id, const char* name, int64_t bs, size_t bytes, bool deq) {
    t[static_cast<size_t>(id)] = TypeTraits{name, bs, bytes, deq};
  };
  set(GgmlType::F32, "F32", 1, 4, true);
  set(GgmlType::F16, "F16", 1, 2, true);
  set(GgmlType::Q4_0, "Q4_0", 32, 18, true);
  set(GgmlType::Q4_1, "Q4_1", 32, 20, true);
  set(GgmlType::Q5_0, "Q5_0", 32, 22, false);
  set(GgmlType::Q5_1, "Q5_1", 32, 24, false);
  set(GgmlType::Q8_0, "Q8_0", 32, 34, true);
  set(GgmlType::Q8_1, "Q8_1", 32, 36, false);
  set(GgmlType::Q2_K, "Q2_K", 256, 84, false);
  set(GgmlType::Q3_K, "Q3_K", 256, 110, false);
  set(GgmlType::Q4_K, "Q4_K", 256, 144, true);
  set(GgmlType::Q5_K, "Q5_K", 256, 176, false);
  set(GgmlType::Q6_K, "Q6_K", 256, 210, true);
  set(GgmlType::Q8_K, "Q8_K", 256, 292, false);
  set(GgmlType::IQ2_XXS, "IQ2_XXS", 256, 66, false);
  set(GgmlType::IQ2_XS, "IQ2_XS", 256, 74, false);
  set(GgmlType::IQ3_XXS, "IQ3_XXS", 256, 98, false);
  set(GgmlType::IQ1_S, "IQ1_S", 256, 50, false);
  set(GgmlType::IQ4_NL, "IQ4_NL", 32, 18, false);
  set(GgmlType::IQ3_S, "IQ3_S", 256, 110, false);
  set(GgmlType::IQ2_S, "IQ2_S", 256, 82, false);
  set(GgmlType::IQ4_XS, "IQ4_XS", 256, 136, false);
  set(GgmlType::I8, "I8", 1, 1, false);
  set(GgmlType::I16, "I16", 1, 2, false);
  set(GgmlType::I32, "I32", 1, 4, false);
  set(GgmlType::I64, "I64", 1, 8, false);
  set(GgmlType::F64, "F64", 1, 8, false);
  set(GgmlType::IQ1_M, "IQ1_M", 256, 56, false);
  set(GgmlType::BF16, "BF16", 1, 2, true);
  set(GgmlType::TQ1_0, "TQ1_0", 256, 54, false);
  set(GgmlType::TQ2_0, "TQ2_0", 256, 66, false);
  return t;
}

constexpr std::array<TypeTraits, kNumTypeIds> kTable = make_table();

uint32_t f32_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}
float bits_f32(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

uint16_t load_u16(const uint8_t* p) { return static_cast<uint16_t>(p[0] | (p[1] << 8)); }

// Round-to-nearest-even right shift of a positive integer, 1 <= s <= 31.
uint32_t shift_rne(uint32_t m, int s) {
  uint32_t q = m >> s;
  uint32_t rem = m & ((1u << s) - 1);
  uint32_t half = 1u << (s - 1);
  if (rem > half || (rem == half && (q & 1))) ++q;
  return q;
}

// Q4_K packs 8 six-bit scales and 8 six-bit mins into 12 bytes: sub-blocks 0..3 use the
// low 6 bits of bytes 0..3 (scales) and 4..7 (mins); sub-blocks 4..7 take their low 4 bits
// from bytes 8..11 and their top 2 bits from the spare top bits of bytes 0..7.
void scale_min_k4(int j, const uint8_t* q, uint8_t* sc, uint8_t* m) {
  if (j < 4) {
    *sc = q[j] & 63;
    *m = q[j + 4] & 63;
  } else {
    *sc = static_cast<uint8_t>((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4));
    *m = static_cast<uint8_t>((q[j + 4] >> 4) | ((q[j] >> 6) << 4));
  }
}

void deq_f32(const uint8_t* src, float* dst, int64_t n) {
  std::memcpy(dst, src, static_cast<size_t>(n) * 4);
}

void deq_f16(const uint8_t* src, float* dst, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dst[i] = fp16_to_fp32(load_u16(src + 2 * i));
}

void deq_bf16(const uint8_t* src, float* dst, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dst[i] = bf16_to_fp32(load_u16(src + 2 * i));
}

void deq_q8_0(const uint8_t* src, float* dst, int64_t nb) {
  for (int64_t b = 0; b < nb; ++b, src += sizeof(BlockQ8_0), dst += 32) {
    const float d = fp16_to_fp32(load_u16(src));
    const int8_t* qs = reinterpret_cast<const int8_t*>(src + 2);
    for (int j = 0; j < 32; ++j) dst[j] = qs[j] * d;
  }
}

void deq_q4_0(const uint8_t* src, float* dst, int64_t nb) {
  for (int64_t b = 0; b < nb; ++b, src += sizeof(BlockQ4_0), dst += 32) {
    const float d = fp16_to_fp32(load_u16(src));
    const uint8_t* qs = src + 2;
    for (int j = 0; j < 16; ++j) {
      dst[j] = static_cast<float>((qs[j] & 0xF) - 8) * d;
      dst[j + 16] = static_cast<float>((qs[j] >> 4) - 8) * d;
    }
  }
}

void deq_q4_1(const uint8_t* src, float* dst, int64_t nb) {
  for (int64_t b = 0; b < nb; ++b, src += sizeof(BlockQ4_1), dst += 32) {
    const float d = fp16_to_fp32(load_u16(src));
    const float m = fp16_to_fp32(load_u16(src + 2));
    const uint8_t* qs = src + 4;
    for (int j = 0; j < 16; ++j) {
      dst[j] = static_cast<float>(qs[j] & 0xF) * d + m;
      dst[j + 16] = static_cast<float>(qs[j] >> 4) * d + m;
    }
  }
}

void deq_q4_k(const uint8_t* src, float* dst, int64_t nb) {
  for (int64_t b = 0; b < nb; ++b, src += sizeof(BlockQ4_K)) {
    const float d = fp16_to_fp32(load_u16(src));
    const float dmin = fp16_to_fp32(load_u16(src + 2));
    const uint8_t* scales = src + 4;
    const uint8_t* q = src + 16;
    // Each 32 bytes of qs hold two sub-blocks: low nibbles, then high nibbles.
    for (int is = 0; is < 8; is += 2, q += 32) {
      uint8_t sc, m;
      scale_min_k4(is, scales, &sc, &m);
      const float d1 = d * sc, m1 = dmin * m;
      scale_min_k4(is + 1, scales, &sc, &m);
      const float d2 = d * sc, m2 = dmin * m;
      for (int l = 0; l < 32; ++l) *dst++ = d1 * static_cast<float>(q[l] & 0xF) - m1;
      for (int l = 0; l < 32; ++l) *dst++ = d2 * static_cast<float>(q[l] >> 4) - m2;
    }
  }
}

void deq_q6_k(const uint8_t* src, float* dst, int64_t nb) {
  for (int64_t b = 0; b < nb; ++b, src += sizeof(BlockQ6_K)) {
    const uint8_t* ql = src;
    const uint8_t* qh = src + 128;
    const int8_t* sc = reinterpret_cast<const int8_t*>(src + 192);
    const float d = fp16_to_fp32(load_u16(src + 208));
    // Two halves of 128 elements; each uses 64 ql bytes, 32 qh bytes and 8 scales.
    for (int half = 0; half < 2; ++half, ql += 64, qh += 32, sc += 8, dst += 128) {
      for (int l = 0; l < 32; ++l) {
        const int is = l / 16;
        const int q1 = ((ql[l] & 0xF) | (((qh[l] >> 0) & 3) << 4)) - 32;
        const int q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32;
        const int q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
        const int q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
        dst[l] = d * sc[is + 0] * q1;
        dst[l + 32] = d * sc[is + 2] * q2;
        dst[l + 64] = d * sc[is + 4] * q3;
        dst[l + 96] = d * sc[is + 6] * q4;
      }
    }
  }
}

}  // namespace

const TypeTraits* type_traits(uint32_t id) {
  if (id >= kNumTypeIds || kTable[id].name == nullptr) return nullptr;
  return &kTable[id];
}

const TypeTraits& type_traits(GgmlType t) {
  const TypeTraits* tt = type_traits(static_cast<uint32_t>(t));
  if (!tt) throw Error("unknown ggml type id " + std::to_string(static_cast<uint32_t>(t)));
  return *tt;
}

std::string type_name(GgmlType t) {
  const TypeTraits* tt = type_traits(static_cast<uint32_t>(t));
  return tt ? tt->name : "unknown(" + std::to_string(static_cast<uint32_t>(t)) + ")";
}

size_t row_bytes(GgmlType t, int64_t n) {
  const TypeTraits& tt = type_traits(t);
  if (n < 0) throw Error("row of " + std::to_string(n) + " elements: negative length");
  if (n % tt.block_size != 0)
    throw Error("row of " + std::to_string(n) + " elements is not a multiple of the block size " +
                std::to_string(tt.block_size) + " of type " + tt.name);
  size_t bytes;
  if (__builtin_mul_overflow(static_cast<uint64_t>(n / tt.block_size), tt.block_bytes, &bytes))
    throw Error("row of " + std::to_string(n) + " elements of type " + tt.name +
                ": byte size overflows");
  return bytes;
}

void dequantize_row(GgmlType t, const void* src, float* dst, int64_t n) {
  const TypeTraits& tt = type_traits(t);
  if (!tt.dequantizable) throw Error(std::string("dequantisation of type ") + tt.name +
                                     " is not supported");
  row_bytes(t, n);  // validates n
  const auto* s = static_cast<const uint8_t*>(src);
  const int64_t nb = n / tt.block_size;
  switch (t) {
    case GgmlType::F32: return deq_f32(s, dst, n);
    case GgmlType::F16: return deq_f16(s, dst, n);
    case GgmlType::BF16: return deq_bf16(s, dst, n);
    case GgmlType::Q8_0: return deq_q8_0(s, dst, nb);
    case GgmlType::Q4_0: return deq_q4_0(s, dst, nb);
    case GgmlType::Q4_1: return deq_q4_1(s, dst, nb);
    case GgmlType::Q4_K: return deq_q4_k(s, dst, nb);
    case GgmlType::Q6_K: return deq_q6_k(s, dst, nb);
    default: break;
  }
  throw Error(std::string("dequantisation of type ") + tt.name + " is not implemented");
}

float fp16_to_fp32(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000) << 16;
  const uint32_t exp = (h >> 10) & 0x1F;
  const uint32_t mant = h & 0x3FF;
  if (exp == 0) {
    // Zero or subnormal: mant * 2^-24, exact in fp32.
    const float v = std::ldexp(static_cast<float>(mant), -24);
    return sign ? -v : v;
  }
  if (exp == 31) return bits_f32(sign | 0x7F800000u | (mant << 13));  // inf / nan (payload kept)
  return bits_f32(sign | ((exp + 112) << 23) | (mant << 13));         // rebias 15 -> 127
}

uint16_t fp32_to_fp16(float f) {
  const uint32_t bits = f32_bits(f);
  const uint16_t sign = static_cast<uint16_t>((bits >> 16) & 0x8000);
  const uint32_t abs = bits & 0x7FFFFFFFu;
  if (abs > 0x7F800000u)  // nan: keep it a (quiet) nan with the top payload bits
    return static_cast<uint16_t>(sign | 0x7E00 | ((abs >> 13) & 0x3FF));
  if (abs >= 0x47800000u) return sign | 0x7C00;  // >= 65536 (and inf): inf
  const uint32_t e = abs >> 23;
  if (e < 113) {
    // Below the smallest normal half (2^-14): count units of 2^-24, rounding to even.
    // A result of 0x400 is exactly the smallest normal, so the encoding stays right.
    if (e == 0) return sign;  // fp32 subnormals are far below half's range
    const uint32_t m = (abs & 0x7FFFFF) | 0x800000;
    const int s = 126 - static_cast<int>(e);
    if (s > 24) return sign;
    return static_cast<uint16_t>(sign | shift_rne(m, s));
  }
  // Normal: rebias and round the 13 dropped bits; a carry into the exponent is correct,
  // including the step to inf from just below 65520.
  const uint32_t h = ((e - 112) << 10) | ((abs & 0x7FFFFF) >> 13);
  const uint32_t rem = abs & 0x1FFF;
  const uint32_t r = (rem > 0x1000 || (rem == 0x1000 && (h & 1))) ? h + 1 : h;
  return static_cast<uint16_t>(sign | r);
}

float bf16_to_fp32(uint16_t h) { return bits_f32(static_cast<uint32_t>(h) << 16); }

uint16_t fp32_to_bf16(float f) {
  const uint32_t bits = f32_bits(f);
  if ((bits & 0x7FFFFFFFu) > 0x7F800000u)  // nan: truncate, force quiet so it stays nan
    return static_cast<uint16_t>((bits >> 16) | 0x40);
  return static_cast<uint16_t>((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16);
}

}  // namespace batchmax
