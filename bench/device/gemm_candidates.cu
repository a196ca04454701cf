// cuBLASLt's candidates for the prefill-size products of Llama-3-8B, each timed: how far
// the heuristic's first pick is from the fastest, and what a residual folded into the
// product costs (beta = 1, C = D = the residual, in place), next to the plain product.
// The measured bf16 peak of gemm.cu's ceiling is the square 8192 product's best candidate.
//
// usage: batchmax_gemm_candidates [rows ...]   (default 2048)
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "bench_cuda_checks.cuh"

namespace {

struct Problem {
  const char* name;
  long n_out, k;
};

constexpr int kCands = 16;
constexpr int kRuns = 20;

cublasLtHandle_t lt;
void* workspace;
constexpr size_t kWorkspace = 64ull << 20;

// Mean time of `algo` over kRuns runs: out[tokens x n_out] = x . w^T (+ beta out); < 0: it failed.
float time_algo(cublasLtMatmulDesc_t desc, cublasLtMatrixLayout_t a, cublasLtMatrixLayout_t b,
                cublasLtMatrixLayout_t c, const cublasLtMatmulAlgo_t& algo, const void* w,
                const void* x, void* out, float beta, cudaStream_t s) {
  const float alpha = 1.0f;
  if (cublasLtMatmul(lt, desc, &alpha, w, a, x, b, &beta, out, c, out, c, &algo, workspace,
                     kWorkspace, s) != CUBLAS_STATUS_SUCCESS)
    return -1;
  return time_ms(s, kRuns, [&] {
    CL(cublasLtMatmul(lt, desc, &alpha, w, a, x, b, &beta, out, c, out, c, &algo, workspace,
                      kWorkspace, s));
  });
}

void run(const Problem& pb, long tokens, cudaStream_t s) {
  const long m = pb.n_out, n = tokens, k = pb.k;
  unsigned short *w, *x, *out;
  CK(cudaMalloc(&w, size_t(m) * k * 2));
  CK(cudaMalloc(&x, size_t(n) * k * 2));
  CK(cudaMalloc(&out, size_t(n) * m * 2));
  fill_bf16_bits<<<1024, 256, 0, s>>>(w, size_t(m) * k, 1);
  fill_bf16_bits<<<1024, 256, 0, s>>>(x, size_t(n) * k, 2);
  fill_bf16_bits<<<1024, 256, 0, s>>>(out, size_t(n) * m, 3);
  // gemm.cu's layout: out^T[m, n] = w[k, m]^T . x^T[k, n], column-major, "TN".
  cublasLtMatmulDesc_t desc;
  CL(cublasLtMatmulDescCreate(&desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
  cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
  CL(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof(ta)));
  CL(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof(tb)));
  cublasLtMatrixLayout_t la, lb, lc;
  CL(cublasLtMatrixLayoutCreate(&la, CUDA_R_16BF, k, m, k));
  CL(cublasLtMatrixLayoutCreate(&lb, CUDA_R_16BF, k, n, k));
  CL(cublasLtMatrixLayoutCreate(&lc, CUDA_R_16BF, m, n, m));
  cublasLtMatmulPreference_t pref;
  CL(cublasLtMatmulPreferenceCreate(&pref));
  uint64_t ws = kWorkspace;
  CL(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws,
                                          sizeof(ws)));
  const double flop = 2.0 * double(m) * n * k;
  for (float beta : {0.0f, 1.0f}) {
    cublasLtMatmulHeuristicResult_t res[kCands]{};
    int found = 0;
    CL(cublasLtMatmulAlgoGetHeuristic(lt, desc, la, lb, lc, lc, pref, kCands, res, &found));
    float first = -1, best = -1;
    int best_i = -1;
    for (int i = 0; i < found; ++i) {
      if (res[i].state != CUBLAS_STATUS_SUCCESS) continue;
      const float ms = time_algo(desc, la, lb, lc, res[i].algo, w, x, out, beta, s);
      if (ms <= 0) continue;
      if (i == 0) first = ms;
      if (best < 0 || ms < best) {
        best = ms;
        best_i = i;
      }
    }
    std::printf("%-8s rows %5ld n %6ld k %6ld beta %.0f: first %8.1f us %6.1f TF/s | best #%2d of %2d %8.1f us %6.1f TF/s\n",
                pb.name, tokens, m, k, beta, first * 1e3, flop / (first * 1e-3) / 1e12, best_i, found,
                best * 1e3, flop / (best * 1e-3) / 1e12);
  }
  cublasLtMatmulPreferenceDestroy(pref);
  cublasLtMatrixLayoutDestroy(la);
  cublasLtMatrixLayoutDestroy(lb);
  cublasLtMatrixLayoutDestroy(lc);
  cublasLtMatmulDescDestroy(desc);
  cudaFree(w);
  cudaFree(x);
  cudaFree(out);
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<long> rows;
  for (int i = 1; i < argc; ++i) rows.push_back(std::atol(argv[i]));
  if (rows.empty()) rows.push_back(2048);
  CL(cublasLtCreate(&lt));
  CK(cudaMalloc(&workspace, kWorkspace));
  cudaStream_t s;
  CK(cudaStreamCreate(&s));
  cudaDeviceProp prop{};
  CK(cudaGetDeviceProperties(&prop, 0));
  std::printf("%s\n", prop.name);
  run({"square", 8192, 8192}, 8192, s);
  const Problem llama[] = {{"qkv", 6144, 4096}, {"o", 4096, 4096}, {"gate_up", 28672, 4096},
                           {"down", 4096, 14336}};
  for (long r : rows)
    for (const Problem& p : llama) run(p, r, s);
  return 0;
}
