#pragma once
// Plain scalar reference kernels: the test oracle and the force_scalar path. Written for
// clarity, not speed; they accumulate in double where it makes them a better oracle.
// Activations are F32; weights and embedding tables may be any dequantizable type.
#include <cstdint>
#include <span>

#include "backend/backend.h"

namespace batchmax::cpu::ref {

void embed(const Tensor& table, std::span<const int32_t> ids, Tensor& out);
void rms_norm(const Tensor& x, const Tensor& w, float eps, Tensor& out);
void matmul(const Tensor& x, const Tensor& w, const Tensor* bias, Tensor& out);
void rope(Tensor& x, int n_heads, std::span<const int32_t> pos, const RopeParams& p);
void swiglu(const Tensor& gate, const Tensor& up, Tensor& out);
void add(Tensor& x, const Tensor& y);
void gather_rows(const Tensor& x, std::span<const int32_t> rows, Tensor& out);
void attention(const Tensor& q, std::span<const AttentionSeq> seqs, const AttentionParams& p,
               const KVPoolView& pool, Tensor& out);

// Query rows [q_begin, q_begin + n_q) of one sequence and query heads [h0, h1): the unit
// the backend parallelises the scalar path over.
void attention_part(const Tensor& q, const AttentionSeq& s, int64_t r0, int64_t r1, int h0,
                    int h1, const AttentionParams& p, const KVPoolView& pool, Tensor& out);

// One element of K or V of the pool (F32 or F16 storage), as float.
float kv_load(const void* base, GgmlType type, int64_t index);

}  // namespace batchmax::cpu::ref
