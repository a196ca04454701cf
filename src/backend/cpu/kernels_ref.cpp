#include "backend/cpu/kernels_ref.h"

#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "core/error.h"

namespace batchmax::cpu::ref {

namespace {

std::vector<float> dequant(const Tensor& t, int64_t r) {
  std::vector<float> v(t.cols);
  dequantize_row(t.type, t.row(r), v.data(), t.cols);
  return v;
}

void check_f32(const Tensor& t, const char* what) {
  if (t.type != GgmlType::F32) throw Error(std::string(what) + " must be F32");
}

}  // namespace

float kv_load(const void* base, GgmlType type, int64_t index) {
  if (type == GgmlType::F16) return fp16_to_fp32(static_cast<const uint16_t*>(base)[index]);
  return static_cast<const float*>(base)[index];
}

void embed(const Tensor& table, std::span<const int32_t> ids, Tensor& out) {
  check_f32(out, "embed output");
  for (size_t r = 0; r < ids.size(); ++r) {
    if (ids[r] < 0 || ids[r] >= table.rows) throw Error("embed: token id out of range");
    dequantize_row(table.type, table.row(ids[r]), out.row_f32(r), table.cols);
  }
}

void rms_norm(const Tensor& x, const Tensor& w, float eps, Tensor& out) {
  const std::vector<float> wv = dequant(w, 0);
  for (int64_t r = 0; r < x.rows; ++r) {
    const float* xr = x.row_f32(r);
    double ss = 0;
    for (int64_t i = 0; i < x.cols; ++i) ss += double(xr[i]) * xr[i];
    const double inv = 1.0 / std::sqrt(ss / x.cols + eps);
    float* o = out.row_f32(r);
    for (int64_t i = 0; i < x.cols; ++i) o[i] = float(xr[i] * inv * wv[i]);
  }
}

void matmul(const Tensor& x, const Tensor& w, const Tensor* bias, Tensor& out) {
  if (x.cols != w.cols) throw Error("matmul: inner dimensions differ");
  std::vector<float> wr;
  for (int64_t j = 0; j < w.rows; ++j) {
    wr = dequant(w, j);
    const float b = bias ? bias->f32()[j] : 0.0f;
    for (int64_t r = 0; r < x.rows; ++r) {
      const float* xr = x.row_f32(r);
      double s = 0;
      for (int64_t i = 0; i < x.cols; ++i) s += double(xr[i]) * wr[i];
      out.row_f32(r)[j] = float(s + b);
    }
  }
}

void rope(Tensor& x, int n_heads, std::span<const int32_t> pos, const RopeParams& p) {
  const int half = p.rotary_dim / 2;
  for (int64_t r = 0; r < x.rows; ++r) {
    for (int h = 0; h < n_heads; ++h) {
      float* v = x.row_f32(r) + int64_t(h) * p.head_dim;
      for (int i = 0; i < half; ++i) {
        const double theta = double(pos[r]) * p.inv_freq[i];
        const double c = std::cos(theta), s = std::sin(theta);
        const int a = p.style == RopeStyle::Interleaved ? 2 * i : i;
        const int b = p.style == RopeStyle::Interleaved ? 2 * i + 1 : i + half;
        const double x0 = v[a], x1 = v[b];
        v[a] = float(x0 * c - x1 * s);
        v[b] = float(x0 * s + x1 * c);
      }
    }
  }
}

void swiglu(const Tensor& gate, const Tensor& up, Tensor& out) {
  for (int64_t r = 0; r < gate.rows; ++r)
    for (int64_t i = 0; i < gate.cols; ++i) {
      const double g = gate.row_f32(r)[i];
      out.row_f32(r)[i] = float(g / (1.0 + std::exp(-g)) * up.row_f32(r)[i]);
    }
}

void add(Tensor& x, const Tensor& y) {
  for (int64_t r = 0; r < x.rows; ++r)
    for (int64_t i = 0; i < x.cols; ++i) x.row_f32(r)[i] += y.row_f32(r)[i];
}

void gather_rows(const Tensor& x, std::span<const int32_t> rows, Tensor& out) {
  const size_t n = row_bytes(x.type, x.cols);
  for (size_t i = 0; i < rows.size(); ++i) {
    if (rows[i] < 0 || rows[i] >= x.rows) throw Error("gather_rows: row out of range");
    std::memcpy(const_cast<void*>(out.row(i)), x.row(rows[i]), n);
  }
}

void attention_part(const Tensor& q, const AttentionSeq& s, int64_t r0, int64_t r1, int h0,
                    int h1, const AttentionParams& p, const KVPoolView& pool, Tensor& out) {
  const int group = p.n_heads / p.n_kv_heads;
  const int hd = p.head_dim;
  std::vector<double> score, acc(hd);
  std::vector<int64_t> slot;
  for (int64_t r = r0; r < r1; ++r) {
    const int32_t qpos = s.q_pos[r];
    for (int h = h0; h < h1; ++h) {
      const int kvh = h / group;
      const float* qv = q.row_f32(s.q_begin + r) + int64_t(h) * hd;
      // Visible entries of this KV head, through the block table.
      score.clear();
      slot.clear();
      for (int32_t e = 0; e < s.head_entries[kvh]; ++e) {
        const int64_t sl = int64_t(s.head_blocks[kvh][e / pool.block_tokens]) * pool.block_tokens +
                           e % pool.block_tokens;
        if (pool.pos[sl] > qpos) continue;
        double d = 0;
        for (int i = 0; i < hd; ++i) d += double(qv[i]) * kv_load(pool.k, pool.type, sl * hd + i);
        score.push_back(d * p.scale);
        slot.push_back(sl);
      }
      double mx = -std::numeric_limits<double>::infinity();
      for (double v : score) mx = std::max(mx, v);
      double sum = 0;
      for (double& v : score) sum += (v = std::exp(v - mx));
      std::fill(acc.begin(), acc.end(), 0.0);
      for (size_t j = 0; j < score.size(); ++j)
        for (int i = 0; i < hd; ++i) acc[i] += score[j] * kv_load(pool.v, pool.type, slot[j] * hd + i);
      float* o = out.row_f32(s.q_begin + r) + int64_t(h) * hd;
      // No visible key (cannot happen once a token's own entry is stored): zeros.
      for (int i = 0; i < hd; ++i) o[i] = sum > 0 ? float(acc[i] / sum) : 0.0f;
    }
  }
}

void attention(const Tensor& q, std::span<const AttentionSeq> seqs, const AttentionParams& p,
               const KVPoolView& pool, Tensor& out) {
  for (const AttentionSeq& s : seqs) attention_part(q, s, 0, s.n_q, 0, p.n_heads, p, pool, out);
}

}  // namespace batchmax::cpu::ref
