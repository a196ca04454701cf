// Type table, half-precision conversions and dequantisation against hand-built blocks.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "core/error.h"
#include "format/tensor_types.h"

using batchmax::GgmlType;
using ::testing::HasSubstr;

namespace {

uint16_t h(float f) { return batchmax::fp32_to_fp16(f); }
float f32_from_bits(uint32_t u) { float f; std::memcpy(&f, &u, 4); return f; }
uint32_t bits(float f) { uint32_t u; std::memcpy(&u, &f, 4); return u; }

template <typename Fn>
void expect_error(Fn fn, const std::string& needle) {
  try {
    fn();
    ADD_FAILURE() << "expected batchmax::Error containing '" << needle << "'";
  } catch (const batchmax::Error& e) {
    EXPECT_THAT(e.what(), HasSubstr(needle));
  }
}

}  // namespace

TEST(TensorTypes, TableHasGgmlBlockLayouts) {
  struct Row { GgmlType t; int64_t bs; size_t bytes; bool deq; };
  const Row rows[] = {
      {GgmlType::F32, 1, 4, true},       {GgmlType::F16, 1, 2, true},
      {GgmlType::BF16, 1, 2, true},      {GgmlType::Q4_0, 32, 18, true},
      {GgmlType::Q4_1, 32, 20, true},    {GgmlType::Q5_0, 32, 22, false},
      {GgmlType::Q5_1, 32, 24, false},   {GgmlType::Q8_0, 32, 34, true},
      {GgmlType::Q8_1, 32, 36, false},   {GgmlType::Q2_K, 256, 84, false},
      {GgmlType::Q3_K, 256, 110, false}, {GgmlType::Q4_K, 256, 144, true},
      {GgmlType::Q5_K, 256, 176, false}, {GgmlType::Q6_K, 256, 210, true},
      {GgmlType::Q8_K, 256, 292, false}, {GgmlType::I8, 1, 1, false},
      {GgmlType::I16, 1, 2, false},      {GgmlType::I32, 1, 4, false},
      {GgmlType::I64, 1, 8, false},      {GgmlType::F64, 1, 8, false},
      {GgmlType::IQ4_NL, 32, 18, false}, {GgmlType::IQ4_XS, 256, 136, false},
      {GgmlType::IQ2_XXS, 256, 66, false}, {GgmlType::IQ2_XS, 256, 74, false},
      {GgmlType::IQ2_S, 256, 82, false}, {GgmlType::IQ3_XXS, 256, 98, false},
      {GgmlType::IQ3_S, 256, 110, false}, {GgmlType::IQ1_S, 256, 50, false},
      {GgmlType::IQ1_M, 256, 56, false}, {GgmlType::TQ1_0, 256, 54, false},
      {GgmlType::TQ2_0, 256, 66, false},
  };
  for (const Row& r : rows) {
    const batchmax::TypeTraits& tt = batchmax::type_traits(r.t);
    SCOPED_TRACE(tt.name);
    EXPECT_EQ(tt.block_size, r.bs);
    EXPECT_EQ(tt.block_bytes, r.bytes);
    EXPECT_EQ(tt.dequantizable, r.deq);
    EXPECT_EQ(batchmax::type_traits(static_cast<uint32_t>(r.t)), &tt);
  }
  EXPECT_EQ(batchmax::type_name(GgmlType::Q4_K), "Q4_K");
  for (uint32_t bad : {4u, 5u, 31u, 32u, 33u, 36u, 1000u})
    EXPECT_EQ(batchmax::type_traits(bad), nullptr) << bad;
  EXPECT_EQ(batchmax::type_name(static_cast<GgmlType>(4)), "unknown(4)");
}

TEST(TensorTypes, RowBytes) {
  EXPECT_EQ(batchmax::row_bytes(GgmlType::F32, 576), 2304u);
  EXPECT_EQ(batchmax::row_bytes(GgmlType::Q8_0, 576), 18u * 34u);
  EXPECT_EQ(batchmax::row_bytes(GgmlType::Q4_K, 512), 288u);
  EXPECT_EQ(batchmax::row_bytes(GgmlType::Q4_1, 0), 0u);
  expect_error([] { batchmax::row_bytes(GgmlType::Q4_0, 33); }, "block size 32");
  expect_error([] { batchmax::row_bytes(GgmlType::F32, -1); }, "negative");
  // (2^62 elements) * 4 bytes does not fit in 64 bits.
  expect_error([] { batchmax::row_bytes(GgmlType::F32, int64_t{1} << 62); }, "overflow");
  expect_error([] { batchmax::row_bytes(static_cast<GgmlType>(99), 1); }, "unknown ggml type");
}

TEST(TensorTypes, Fp16Conversions) {
  EXPECT_EQ(batchmax::fp16_to_fp32(0x3C00), 1.0f);
  EXPECT_EQ(batchmax::fp16_to_fp32(0xC000), -2.0f);
  EXPECT_EQ(batchmax::fp16_to_fp32(0x7BFF), 65504.0f);
  EXPECT_EQ(batchmax::fp16_to_fp32(0x0400), std::ldexp(1.0f, -14));      // smallest normal
  EXPECT_EQ(batchmax::fp16_to_fp32(0x0001), std::ldexp(1.0f, -24));      // smallest subnormal
  EXPECT_EQ(batchmax::fp16_to_fp32(0x03FF), std::ldexp(1023.0f, -24));   // largest subnormal
  EXPECT_EQ(bits(batchmax::fp16_to_fp32(0x8000)), 0x80000000u);          // -0
  EXPECT_EQ(batchmax::fp16_to_fp32(0x7C00), std::numeric_limits<float>::infinity());
  EXPECT_EQ(batchmax::fp16_to_fp32(0xFC00), -std::numeric_limits<float>::infinity());
  EXPECT_TRUE(std::isnan(batchmax::fp16_to_fp32(0x7E00)));
  EXPECT_TRUE(std::isnan(batchmax::fp16_to_fp32(0x7C01)));  // signalling nan stays nan

  EXPECT_EQ(h(1.0f), 0x3C00);
  EXPECT_EQ(h(-2.0f), 0xC000);
  EXPECT_EQ(h(65504.0f), 0x7BFF);
  EXPECT_EQ(h(65519.0f), 0x7BFF);   // below the halfway point to 65536
  EXPECT_EQ(h(65520.0f), 0x7C00);   // halfway, ties to even -> inf
  EXPECT_EQ(h(1e10f), 0x7C00);
  EXPECT_EQ(h(-std::numeric_limits<float>::infinity()), 0xFC00);
  EXPECT_EQ(h(-0.0f), 0x8000);
  EXPECT_EQ(h(std::ldexp(1.0f, -24)), 0x0001);
  EXPECT_EQ(h(std::ldexp(1.0f, -25)), 0x0000);                 // tie between 0 and 1 -> 0
  EXPECT_EQ(h(std::ldexp(1.5f, -25)), 0x0001);                 // above the tie
  EXPECT_EQ(h(std::ldexp(3.0f, -25)), 0x0002);                 // 1.5 units: tie -> even 2
  EXPECT_EQ(h(std::ldexp(1023.5f, -24)), 0x0400);              // rounds up into the normals
  EXPECT_EQ(h(std::ldexp(1.0f, -14)), 0x0400);
  EXPECT_EQ(h(1e-30f), 0x0000);
  EXPECT_EQ(h(f32_from_bits(1)), 0x0000);                      // fp32 subnormal
  // 1 + 2^-11 is halfway between 1 and 1 + 2^-10: ties to even (1.0).
  EXPECT_EQ(h(1.0f + std::ldexp(1.0f, -11)), 0x3C00);
  EXPECT_EQ(h(1.0f + 3 * std::ldexp(1.0f, -11)), 0x3C02);      // tie, odd below -> up
  EXPECT_EQ(h(1.0f + std::ldexp(1.0f, -11) + std::ldexp(1.0f, -20)), 0x3C01);
  const uint16_t n = h(std::numeric_limits<float>::quiet_NaN());
  EXPECT_EQ(n & 0x7C00, 0x7C00);
  EXPECT_NE(n & 0x3FF, 0);
  // Every finite half round-trips exactly.
  for (uint32_t x = 0; x < 0x10000; ++x) {
    if ((x & 0x7C00) == 0x7C00) continue;
    ASSERT_EQ(h(batchmax::fp16_to_fp32(static_cast<uint16_t>(x))), x) << std::hex << x;
  }
}

TEST(TensorTypes, Bf16Conversions) {
  EXPECT_EQ(batchmax::bf16_to_fp32(0x3F80), 1.0f);
  EXPECT_EQ(batchmax::bf16_to_fp32(0xC040), -3.0f);
  EXPECT_EQ(batchmax::bf16_to_fp32(0x7F80), std::numeric_limits<float>::infinity());
  EXPECT_EQ(batchmax::bf16_to_fp32(0x0001), f32_from_bits(0x00010000));  // subnormal
  EXPECT_EQ(batchmax::fp32_to_bf16(1.0f), 0x3F80);
  EXPECT_EQ(batchmax::fp32_to_bf16(f32_from_bits(0x3F808000)), 0x3F80);  // tie -> even
  EXPECT_EQ(batchmax::fp32_to_bf16(f32_from_bits(0x3F818000)), 0x3F82);  // tie, odd -> up
  EXPECT_EQ(batchmax::fp32_to_bf16(f32_from_bits(0x3F808001)), 0x3F81);  // above tie
  EXPECT_EQ(batchmax::fp32_to_bf16(f32_from_bits(0x7F7FFFFF)), 0x7F80);  // max float -> inf
  EXPECT_EQ(batchmax::fp32_to_bf16(-std::numeric_limits<float>::infinity()), 0xFF80);
  EXPECT_EQ(batchmax::fp32_to_bf16(-0.0f), 0x8000);
  EXPECT_EQ(batchmax::fp32_to_bf16(f32_from_bits(0x00018000)), 0x0002);  // subnormal tie
  // A nan whose payload lives only in the low 16 bits must not become inf.
  const uint16_t n = batchmax::fp32_to_bf16(f32_from_bits(0x7F800001));
  EXPECT_TRUE(std::isnan(batchmax::bf16_to_fp32(n)));
  EXPECT_TRUE(std::isnan(batchmax::bf16_to_fp32(
      batchmax::fp32_to_bf16(std::numeric_limits<float>::quiet_NaN()))));
}

TEST(TensorTypes, DequantPlainTypes) {
  const float f[3] = {1.5f, -2.0f, 3.25f};
  std::vector<float> out(3);
  batchmax::dequantize_row(GgmlType::F32, f, out.data(), 3);
  EXPECT_EQ(out, std::vector<float>(f, f + 3));

  // Unaligned source: rows may start at odd addresses.
  uint8_t buf[7] = {0xAA};
  const uint16_t hv[3] = {0x3C00, 0xC000, 0x0001};
  std::memcpy(buf + 1, hv, 6);
  batchmax::dequantize_row(GgmlType::F16, buf + 1, out.data(), 3);
  EXPECT_EQ(out, (std::vector<float>{1.0f, -2.0f, std::ldexp(1.0f, -24)}));

  const uint16_t bv[3] = {0x3F80, 0xC040, 0x4120};
  batchmax::dequantize_row(GgmlType::BF16, bv, out.data(), 3);
  EXPECT_EQ(out, (std::vector<float>{1.0f, -3.0f, 10.0f}));
}

TEST(TensorTypes, DequantQ8_0) {
  batchmax::BlockQ8_0 b[2];
  b[0].d = h(0.5f);
  b[1].d = h(-0.25f);
  for (int j = 0; j < 32; ++j) {
    b[0].qs[j] = static_cast<int8_t>(j - 16);
    b[1].qs[j] = static_cast<int8_t>(j % 2 ? 127 : -128);
  }
  std::vector<float> out(64);
  batchmax::dequantize_row(GgmlType::Q8_0, b, out.data(), 64);
  for (int j = 0; j < 32; ++j) {
    EXPECT_EQ(out[j], (j - 16) * 0.5f) << j;
    EXPECT_EQ(out[32 + j], (j % 2 ? 127 : -128) * -0.25f) << j;
  }
}

TEST(TensorTypes, DequantQ4_0) {
  batchmax::BlockQ4_0 b;
  b.d = h(2.0f);
  // Byte j: low nibble j (element j), high nibble 15 - j (element j + 16).
  for (int j = 0; j < 16; ++j) b.qs[j] = static_cast<uint8_t>(j | ((15 - j) << 4));
  std::vector<float> out(32);
  batchmax::dequantize_row(GgmlType::Q4_0, &b, out.data(), 32);
  for (int j = 0; j < 16; ++j) {
    EXPECT_EQ(out[j], (j - 8) * 2.0f) << j;
    EXPECT_EQ(out[j + 16], (15 - j - 8) * 2.0f) << j;
  }
}

TEST(TensorTypes, DequantQ4_1) {
  batchmax::BlockQ4_1 b;
  b.d = h(0.125f);
  b.m = h(-1.0f);
  for (int j = 0; j < 16; ++j) b.qs[j] = static_cast<uint8_t>((j % 16) | (((j * 7) % 16) << 4));
  std::vector<float> out(32);
  batchmax::dequantize_row(GgmlType::Q4_1, &b, out.data(), 32);
  for (int j = 0; j < 16; ++j) {
    EXPECT_EQ(out[j], j * 0.125f - 1.0f) << j;
    EXPECT_EQ(out[j + 16], ((j * 7) % 16) * 0.125f - 1.0f) << j;
  }
}

// Scales/mins for Q4_K sub-blocks 0..7, packed the way ggml's get_scale_min_k4 unpacks.
static void pack_q4k_scales(const uint8_t sc[8], const uint8_t mn[8], uint8_t out[12]) {
  for (int j = 0; j < 4; ++j) {
    out[j] = static_cast<uint8_t>((sc[j] & 63) | ((sc[j + 4] >> 4) << 6));
    out[j + 4] = static_cast<uint8_t>((mn[j] & 63) | ((mn[j + 4] >> 4) << 6));
    out[j + 8] = static_cast<uint8_t>((sc[j + 4] & 0xF) | ((mn[j + 4] & 0xF) << 4));
  }
}

TEST(TensorTypes, DequantQ4_K) {
  batchmax::BlockQ4_K b;
  b.d = h(0.5f);
  b.dmin = h(0.25f);
  // Sub-blocks 4..7 use values >= 16 so the split high bits are exercised.
  const uint8_t sc[8] = {1, 2, 3, 63, 17, 33, 48, 63};
  const uint8_t mn[8] = {0, 5, 10, 62, 16, 31, 47, 60};
  pack_q4k_scales(sc, mn, b.scales);
  for (int k = 0; k < 128; ++k)
    b.qs[k] = static_cast<uint8_t>((k % 16) | (((k * 3 + 1) % 16) << 4));
  std::vector<float> out(256);
  batchmax::dequantize_row(GgmlType::Q4_K, &b, out.data(), 256);
  // Element e: chunk c = e / 64 uses qs[32c .. 32c+31]; the first 32 elements take the low
  // nibbles (sub-block 2c), the next 32 the high nibbles (sub-block 2c + 1).
  for (int e = 0; e < 256; ++e) {
    const int c = e / 64, l = e % 32, hi = (e % 64) >= 32;
    const uint8_t byte = b.qs[32 * c + l];
    const int q = hi ? byte >> 4 : byte & 0xF;
    const int s = 2 * c + hi;
    const float want = 0.5f * sc[s] * q - 0.25f * mn[s];
    EXPECT_NEAR(out[e], want, 1e-6) << e;
  }
  // One element worked fully by hand: e = 232 -> chunk 3, high nibbles, sub-block 7,
  // l = 8: byte qs[104], high nibble (104*3+1) % 16 = 9; 0.5*63*9 - 0.25*60 = 268.5.
  EXPECT_EQ(out[232], 268.5f);
}

TEST(TensorTypes, DequantQ6_K) {
  batchmax::BlockQ6_K b;
  b.d = h(0.25f);
  for (int s = 0; s < 16; ++s) b.scales[s] = static_cast<int8_t>(s % 2 ? -(s + 1) : s + 1);
  // Choose every element's 6-bit quant q(e) = (e * 37) % 64 and pack it.
  auto q6 = [](int e) { return (e * 37) % 64; };
  std::memset(b.ql, 0, sizeof b.ql);
  std::memset(b.qh, 0, sizeof b.qh);
  for (int e = 0; e < 256; ++e) {
    // Within a 128-element half: element l + 32*g (g = 0..3) keeps its low nibble in
    // ql[l] (g=0 low, g=2 high) or ql[l+32] (g=1 low, g=3 high), and its top 2 bits in
    // qh[l] at bit 2*g.
    const int half = e / 128, r = e % 128, g = r / 32, l = r % 32;
    uint8_t* ql = b.ql + 64 * half;
    uint8_t* qh = b.qh + 32 * half;
    const int q = q6(e);
    const int qi = l + (g % 2 ? 32 : 0);
    ql[qi] |= static_cast<uint8_t>((q & 0xF) << (g >= 2 ? 4 : 0));
    qh[l] |= static_cast<uint8_t>((q >> 4) << (2 * g));
  }
  std::vector<float> out(256);
  batchmax::dequantize_row(GgmlType::Q6_K, &b, out.data(), 256);
  for (int e = 0; e < 256; ++e) {
    const int scale = b.scales[e / 16];  // 16 elements per scale
    EXPECT_NEAR(out[e], 0.25f * scale * (q6(e) - 32), 1e-6) << e;
  }
  // By hand: e = 0 -> q = 0 -> -32 * 1 * 0.25 = -8; e = 17 -> q = 629 % 64 = 53,
  // scale index 1 -> -2: 0.25 * -2 * 21 = -10.5.
  EXPECT_EQ(out[0], -8.0f);
  EXPECT_EQ(out[17], -10.5f);
}

TEST(TensorTypes, DequantRejectsUnsupportedAndBadLengths) {
  float out[32];
  uint8_t zeros[64] = {};
  expect_error([&] { batchmax::dequantize_row(GgmlType::Q5_0, zeros, out, 32); }, "Q5_0");
  expect_error([&] { batchmax::dequantize_row(GgmlType::Q8_0, zeros, out, 16); },
               "block size 32");
}

// Independent oracle: the Python gguf package on a fixed byte pattern. Produced by
//   python3 -c "import numpy as np; from gguf.quants import dequantize;
//     from gguf import GGMLQuantizationType as T;
//     b=bytearray((i*73+11)%256 for i in range(144));
//     b[0:2]=np.float16(0.5).tobytes(); b[2:4]=np.float16(0.25).tobytes();
//     v=dequantize(np.frombuffer(bytes(b),dtype=np.uint8), T.Q4_K);
//     print([float(v[i]) for i in [0,1,31,32,63,64,100,130,160,200,232,255]])"
// and for Q6_K the same with range(210) and b[208:210]=np.float16(0.125).tobytes().
TEST(TensorTypes, DequantKQuantsMatchPythonGguf) {
  const int idx[12] = {0, 1, 31, 32, 63, 64, 100, 130, 160, 200, 232, 255};
  std::vector<uint8_t> b(210);
  for (size_t i = 0; i < b.size(); ++i) b[i] = static_cast<uint8_t>((i * 73 + 11) % 256);
  std::vector<float> out(256);

  const uint16_t d = h(0.5f), dmin = h(0.25f);
  std::memcpy(b.data(), &d, 2);
  std::memcpy(b.data() + 2, &dmin, 2);
  batchmax::dequantize_row(GgmlType::Q4_K, b.data(), out.data(), 256);
  const float q4k[12] = {253.75f, 89.25f, 42.25f, 245.0f, 189.0f, -3.75f,
                         53.5f,   39.75f, 93.0f,  73.5f,  2.75f,  11.75f};
  for (int k = 0; k < 12; ++k) EXPECT_EQ(out[idx[k]], q4k[k]) << idx[k];

  for (size_t i = 0; i < b.size(); ++i) b[i] = static_cast<uint8_t>((i * 73 + 11) % 256);
  const uint16_t d6 = h(0.125f);
  std::memcpy(b.data() + 208, &d6, 2);
  batchmax::dequantize_row(GgmlType::Q6_K, b.data(), out.data(), 256);
  const float q6k[12] = {-178.875f, 185.5f,  5.0f,     127.875f, 337.5f,    68.0f,
                         -63.5f,    -7.125f, -125.125f, 171.875f, -185.625f, 9.0f};
  for (int k = 0; k < 12; ++k) EXPECT_EQ(out[idx[k]], q6k[k]) << idx[k];
}
