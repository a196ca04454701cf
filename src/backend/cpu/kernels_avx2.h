#pragma once
// AVX2/FMA/F16C kernels. Only call them when cpu_features().has_avx2_kernels(): the
// implementation file is the one translation unit compiled with -mavx2 -mfma -mf16c.
// Each works on a range so that the backend can split it over its thread pool.
#include <cstdint>
#include <vector>

#include "backend/backend.h"

namespace batchmax::cpu::avx2 {

// Dequantise n elements of a row (n a multiple of the type's block size).
void dequantize_row(GgmlType t, const void* src, float* dst, int64_t n);

// out[:, m0:m1] = x . w[m0:m1]^T (+ bias). Few rows of x: each weight block is decoded
// in registers and used against every row. Many rows: a tile of weight rows is decoded
// to a thread-local f32 buffer and a register-blocked micro-kernel reuses it.
void matmul_cols(const Tensor& x, const Tensor& w, const Tensor* bias, Tensor& out,
                 int64_t m0, int64_t m1);
// The column count a thread should take at a time for this shape.
int64_t matmul_col_grain(int64_t n, int64_t k);
// From this many rows of x on, matmul_cols uses the tiled path.
constexpr int64_t kMatmulTiledMinRows = 16;

// Rows of x quantised to Q8 per 32 elements: q (rows x blocks x 32), scale d and
// s = d * sum(q) per block. Built once per matmul, shared by all threads.
struct QuantizedRows {
  std::vector<int8_t> q;
  std::vector<float> d, s;
  int64_t rows = 0, blocks = 0;
};
// Whether the integer-dot path is used for this weight type at n rows (Q8_0/Q4_0/Q4_1,
// n <= 4). Lives in an AVX2 file: call only where the kernels may run.
bool matmul_q8_supported(GgmlType t, int64_t n);
// x.cols must be a multiple of 32.
void quantize_rows_q8(const Tensor& x, QuantizedRows& out);
// Like matmul_cols, from quantised activations (~1e-3 relative error, as llama.cpp).
void matmul_q8_cols(const QuantizedRows& xq, const Tensor& w, const Tensor* bias, Tensor& out,
                    int64_t m0, int64_t m1);

// Rows [r0, r1): out = x / rms(x) * w (w: cols floats).
void rms_norm_rows(const Tensor& x, const float* w, float eps, Tensor& out, int64_t r0, int64_t r1);
// Elementwise on n floats.
void swiglu(const float* gate, const float* up, float* out, int64_t n);
void add(float* x, const float* y, int64_t n);
// Rows [r0, r1) of x, in place.
void rope_rows(Tensor& x, int n_heads, const int32_t* pos, const RopeParams& p, int64_t r0,
               int64_t r1);

// Query rows [r0, r1) of one sequence, for all query heads of KV head kvh: flash-style
// (online softmax) over the KV head's blocks; K/V read once per block for the whole
// group of query heads.
void attention_part(const Tensor& q, const AttentionSeq& s, int64_t r0, int64_t r1, int kvh,
                    const AttentionParams& p, const KVPoolView& pool, Tensor& out);

}  // namespace batchmax::cpu::avx2
