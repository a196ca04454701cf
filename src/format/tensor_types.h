#pragma once
// GGML tensor types as GGUF stores them: ids, block layouts and dequantisation.
#include <cstddef>
#include <cstdint>
#include <string>

namespace batchmax {

// Type ids as written in GGUF tensor infos (ggml_type). Only some are supported for
// compute; the others are known by name so errors can say what a file holds.
enum class GgmlType : uint32_t {
  F32 = 0, F16 = 1, Q4_0 = 2, Q4_1 = 3, Q5_0 = 6, Q5_1 = 7, Q8_0 = 8, Q8_1 = 9,
  Q2_K = 10, Q3_K = 11, Q4_K = 12, Q5_K = 13, Q6_K = 14, Q8_K = 15,
  IQ2_XXS = 16, IQ2_XS = 17, IQ3_XXS = 18, IQ1_S = 19, IQ4_NL = 20, IQ3_S = 21,
  IQ2_S = 22, IQ4_XS = 23, I8 = 24, I16 = 25, I32 = 26, I64 = 27, F64 = 28, IQ1_M = 29,
  BF16 = 30, TQ1_0 = 34, TQ2_0 = 35,
};

struct TypeTraits {
  const char* name;
  int64_t block_size;   // elements per block (1 for plain types)
  size_t block_bytes;   // bytes per block
  bool dequantizable;   // dequantize_row() supports it
};

// nullptr when `id` is no known ggml type.
const TypeTraits* type_traits(uint32_t id);
const TypeTraits& type_traits(GgmlType t);
std::string type_name(GgmlType t);

// Bytes of a row of `n` elements; throws batchmax::Error when n is not a whole number
// of blocks or the size overflows.
size_t row_bytes(GgmlType t, int64_t n);

// Dequantise `n` elements (n a multiple of the block size) of a row into floats.
// Throws batchmax::Error for types that are not dequantizable.
void dequantize_row(GgmlType t, const void* src, float* dst, int64_t n);

// Half-precision helpers used across the code base.
float fp16_to_fp32(uint16_t h);
uint16_t fp32_to_fp16(float f);
float bf16_to_fp32(uint16_t h);
uint16_t fp32_to_bf16(float f);  // round to nearest even

// Block layouts (little endian, as GGUF stores them).
#pragma pack(push, 1)
struct BlockQ8_0 { uint16_t d; int8_t qs[32]; };
struct BlockQ4_0 { uint16_t d; uint8_t qs[16]; };
struct BlockQ4_1 { uint16_t d; uint16_t m; uint8_t qs[16]; };
struct BlockQ4_K { uint16_t d; uint16_t dmin; uint8_t scales[12]; uint8_t qs[128]; };
struct BlockQ6_K { uint8_t ql[128]; uint8_t qh[64]; int8_t scales[16]; uint16_t d; };
#pragma pack(pop)
static_assert(sizeof(BlockQ8_0) == 34);
static_assert(sizeof(BlockQ4_0) == 18);
static_assert(sizeof(BlockQ4_1) == 20);
static_assert(sizeof(BlockQ4_K) == 144);
static_assert(sizeof(BlockQ6_K) == 210);

}  // namespace batchmax
