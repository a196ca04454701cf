#include "backend/cuda/gemm.h"

#include <cstdlib>
#include <string>

#include "backend/cuda/cuda_common.cuh"

namespace batchmax::cuda {
namespace {

void check_lt(cublasStatus_t st, const char* what) {
  if (st != CUBLAS_STATUS_SUCCESS)
    throw Error(std::string("cuBLASLt: ") + what + " failed (status " + std::to_string(int(st)) +
                ")");
}

// Largest power of two (<= 256) dividing the address: the heuristic may only pick
// kernels whose alignment needs this meets.
int alignment(const void* p) {
  uintptr_t a = reinterpret_cast<uintptr_t>(p);
  int al = 256;
  while (al > 1 && a % al) al /= 2;
  return al;
}

// Off by default: see gemm.h.
bool tuning_enabled() {
  const char* e = std::getenv("BATCHMAX_CUDA_GEMM_TUNE");
  return e && *e == '1';
}

// Candidates timed per tuned plan, and runs per timing.
constexpr int kTuneCandidates = 16;
constexpr int kTuneRuns = 5;

// Reads `n` 16-byte words (evicting L2); the sum goes to *sink only so the reads stay.
__global__ void read_through(const uint4* p, size_t n, float* sink) {
  uint32_t acc = 0;
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x)
    acc ^= p[i].x ^ p[i].w;
  if (acc == 0x9e3779b9u) *sink = float(acc);
}

}  // namespace

// BATCHMAX_CUDA_SMALL_GEMM_ROWS=n: products of <= n rows take SmallMGemm (0: none).
static int small_m_rows_from_env() {
  const char* e = std::getenv("BATCHMAX_CUDA_SMALL_GEMM_ROWS");
  return e && *e ? std::atoi(e) : 0;
}

Gemm::Gemm(size_t workspace_bytes, int small_m_max_rows)
    : workspace_bytes_(workspace_bytes), tune_(tuning_enabled()) {
  check_lt(cublasLtCreate(&handle_), "create");
  if (workspace_bytes_) BMX_CUDA(cudaMalloc(&workspace_, workspace_bytes_));
  const int rows = small_m_max_rows < 0 ? small_m_rows_from_env() : small_m_max_rows;
  // Its split partials live in cuBLASLt's workspace: both run in stream order.
  if (rows > 0 && workspace_)
    small_ = std::make_unique<SmallMGemm>(workspace_, workspace_bytes_, rows);
}

Gemm::~Gemm() {
  small_.reset();
  for (auto& [k, p] : plans_) {
    cublasLtMatrixLayoutDestroy(p.a);
    cublasLtMatrixLayoutDestroy(p.b);
    cublasLtMatrixLayoutDestroy(p.c);
    cublasLtMatmulDescDestroy(p.desc);
  }
  if (workspace_) cudaFree(workspace_);
  if (flush_sink_) cudaFree(flush_sink_);
  if (t0_) cudaEventDestroy(t0_);
  if (t1_) cudaEventDestroy(t1_);
  if (handle_) cublasLtDestroy(handle_);
}

Gemm::Plan& Gemm::plan(const Key& key, const Tensor& x, const Tensor& w, Tensor& out,
                       cudaStream_t s) {
  auto it = plans_.find(key);
  if (it != plans_.end()) return it->second;
  const auto [m, n, k, ldx, ldw, ldo, out_type, al_x, al_w, al_o, accumulate] = key;
  // Column-major view of the row-major problem: out^T[m, n] = w[m, k] . x^T[k, n], with
  // w stored as a k x m column-major matrix (transposed: "TN").
  Plan p;
  check_lt(cublasLtMatmulDescCreate(&p.desc, CUBLAS_COMPUTE_32F, CUDA_R_32F), "desc");
  cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
  check_lt(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof(ta)),
           "transa");
  check_lt(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof(tb)),
           "transb");
  const cudaDataType_t ot = out_type == int(GgmlType::F32) ? CUDA_R_32F : CUDA_R_16BF;
  check_lt(cublasLtMatrixLayoutCreate(&p.a, CUDA_R_16BF, k, m, ldw), "layout w");
  check_lt(cublasLtMatrixLayoutCreate(&p.b, CUDA_R_16BF, k, n, ldx), "layout x");
  check_lt(cublasLtMatrixLayoutCreate(&p.c, ot, m, n, ldo), "layout out");

  cublasLtMatmulPreference_t pref;
  check_lt(cublasLtMatmulPreferenceCreate(&pref), "preference");
  uint64_t ws = workspace_bytes_;
  cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws,
                                       sizeof(ws));
  uint32_t ax = al_x, aw = al_w, ao = al_o;
  cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &aw,
                                       sizeof(aw));
  cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &ax,
                                       sizeof(ax));
  cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &ao,
                                       sizeof(ao));
  cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &ao,
                                       sizeof(ao));
  // Tuning runs the candidates, which a stream being captured into a graph cannot do.
  cudaStreamCaptureStatus cap = cudaStreamCaptureStatusNone;
  BMX_CUDA(cudaStreamIsCapturing(s, &cap));
  // (Tuning overwrites out: not for a product that adds to it.)
  const bool tuned = tune_ && flush_ && n <= kTuneMaxRows && cap == cudaStreamCaptureStatusNone &&
                     out.data != x.data && out.data != w.data && !accumulate;
  cublasLtMatmulHeuristicResult_t res[kTuneCandidates]{};
  int found = 0;
  cublasStatus_t st = cublasLtMatmulAlgoGetHeuristic(handle_, p.desc, p.a, p.b, p.c, p.c, pref,
                                                     tuned ? kTuneCandidates : 1, res, &found);
  cublasLtMatmulPreferenceDestroy(pref);
  if (st != CUBLAS_STATUS_SUCCESS || found == 0) {
    cublasLtMatrixLayoutDestroy(p.a);
    cublasLtMatrixLayoutDestroy(p.b);
    cublasLtMatrixLayoutDestroy(p.c);
    cublasLtMatmulDescDestroy(p.desc);
    throw Error("cuBLASLt: no algorithm for matmul m=" + std::to_string(m) + " n=" +
                std::to_string(n) + " k=" + std::to_string(k));
  }
  p.algo = res[0].algo;
  if (tuned && found > 1) tune(p, res, found, x, w, out, s);
  return plans_.emplace(key, p).first->second;
}

// Keeps the fastest candidate over kTuneRuns runs each (after one warm-up run). A
// candidate that fails to run is skipped; the heuristic's first pick is the fallback.
void Gemm::tune(Plan& p, const cublasLtMatmulHeuristicResult_t* cands, int n, const Tensor& x,
                const Tensor& w, Tensor& out, cudaStream_t s) {
  if (!t0_) {
    BMX_CUDA(cudaEventCreate(&t0_));
    BMX_CUDA(cudaEventCreate(&t1_));
    BMX_CUDA(cudaMalloc(&flush_sink_, sizeof(float)));
  }
  auto flush = [&] {
    read_through<<<264, 512, 0, s>>>(static_cast<const uint4*>(flush_), flush_bytes_ / 16, flush_sink_);
    BMX_LAUNCHED();
  };
  const float alpha = 1.0f, beta = 0.0f;
  auto launch = [&](const cublasLtMatmulAlgo_t& algo) {
    return cublasLtMatmul(handle_, p.desc, &alpha, w.data, p.a, x.data, p.b, &beta, out.data, p.c,
                          out.data, p.c, &algo, workspace_, workspace_bytes_, s);
  };
  float best = 0;
  bool have = false;
  for (int i = 0; i < n; ++i) {
    if (cands[i].state != CUBLAS_STATUS_SUCCESS) continue;
    if (launch(cands[i].algo) != CUBLAS_STATUS_SUCCESS) continue;
    bool ok = true;
    float ms = 0;
    for (int r = 0; r < kTuneRuns && ok; ++r) {
      flush();
      BMX_CUDA(cudaEventRecord(t0_, s));
      ok = launch(cands[i].algo) == CUBLAS_STATUS_SUCCESS;
      BMX_CUDA(cudaEventRecord(t1_, s));
      BMX_CUDA(cudaEventSynchronize(t1_));
      float one = 0;
      BMX_CUDA(cudaEventElapsedTime(&one, t0_, t1_));
      ms += one;
    }
    if (ok && (!have || ms < best)) {
      best = ms;
      p.algo = cands[i].algo;
      have = true;
    }
  }
}

void Gemm::run(const Tensor& x, const Tensor& w, Tensor& out, cudaStream_t s, bool accumulate) {
  if (x.type != GgmlType::BF16 || w.type != GgmlType::BF16)
    throw Error("cuda matmul: x and w must be BF16 (weights are converted at load)");
  if (out.type != GgmlType::BF16 && out.type != GgmlType::F32)
    throw Error("cuda matmul: output must be BF16 or F32");
  if (x.cols != w.cols || out.rows != x.rows || out.cols != w.rows)
    throw Error("cuda matmul: shapes do not match");
  if (x.rows == 0 || w.rows == 0) return;
  if (!accumulate && small_ && small_->accepts(x, w, out)) {
    small_->run(x, w, out, s);
    return;
  }
  const size_t eo = out.type == GgmlType::F32 ? 4 : 2;
  const Key key{w.rows, x.rows, x.cols, int64_t(x.row_stride / 2), int64_t(w.row_stride / 2),
                int64_t(out.row_stride / eo), int(out.type), alignment(x.data),
                alignment(w.data), alignment(out.data), accumulate};
  Plan& p = plan(key, x, w, out, s);
  const float alpha = 1.0f, beta = accumulate ? 1.0f : 0.0f;
  check_lt(cublasLtMatmul(handle_, p.desc, &alpha, w.data, p.a, x.data, p.b, &beta, out.data,
                          p.c, out.data, p.c, &p.algo, workspace_, workspace_bytes_, s),
           "matmul");
}

}  // namespace batchmax::cuda
