#include "backend/cuda/gate_up_swiglu.h"

#include <cstdlib>

#include "backend/cuda/cuda_common.cuh"
#include "backend/cuda/mma_helpers.cuh"
#include "backend/cuda/small_m_gemm_kernel.cuh"

namespace batchmax::cuda {
namespace {

constexpr int kPairs = int(GateUpSwiglu::kFeaturesPerCta);  // gate rows, and as many up rows
constexpr int kWRows = 2 * kPairs;                           // weight rows a stage
constexpr int kBK = 64;                                      // k a stage: one 128-byte swizzled row
constexpr int kThreads = 256;                                // 8 warps x (8 gate + 8 up rows)
constexpr int kStages = 3;
static_assert(kPairs == 8 * (kThreads / 32), "a warp takes 8 features");

struct Args {
  bf16* out;
  int64_t ldo;
  int rows, ff, k_tiles;
};

// NT: x rows in 8-row mma tiles (the TMA box of x is NT * 8 rows; rows past x.rows land
// as zeros and are never written out).
template <int NT>
constexpr size_t smem_bytes() {
  return size_t(kStages) * (kWRows + NT * 8) * kBK * 2 + 1024;  // + 1024: swizzle alignment
}

template <int NT>
__global__ void __launch_bounds__(kThreads, 2)
    gate_up_swiglu_kernel(const Args a, const __grid_constant__ CUtensorMap tw,
                          const __grid_constant__ CUtensorMap tx) {
  constexpr int kStage = (kWRows + NT * 8) * kBK;  // elements: gate rows, up rows, x rows
  constexpr uint32_t kStageBytes = uint32_t(kStage) * 2;
  extern __shared__ __align__(128) unsigned char smem_raw[];
  // 128-byte swizzled TMA boxes repeat their pattern every 1024 bytes.
  bf16* smem = reinterpret_cast<bf16*>(smem_raw + ((1024 - (smem_u32(smem_raw) & 1023)) & 1023));
  __shared__ __align__(8) uint64_t full[kStages];
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  const int f0 = int(blockIdx.x) * kPairs;
  auto at = [](int row, int chunk) { return row * kBK + ((chunk ^ (row & 7)) << 3); };
  // Thread 0 fills stages: the weight boxes (and the barrier's byte count) in load_w, the
  // x box in load_x; the stage's barrier completes when all three have landed.
  auto load_w = [&](int stage, int kt) {
    bf16* sw = smem + stage * kStage;
    small_m::mbar_expect_tx(&full[stage], kStageBytes);
    small_m::tma_load_2d(sw, &tw, kt * kBK, f0, &full[stage]);
    small_m::tma_load_2d(sw + kPairs * kBK, &tw, kt * kBK, a.ff + f0, &full[stage]);
  };
  auto load_x = [&](int stage, int kt) {
    small_m::tma_load_2d(smem + stage * kStage + kWRows * kBK, &tx, kt * kBK, 0, &full[stage]);
  };
  const int pre = min(kStages - 1, a.k_tiles);
  if (tid == 0) {
    for (int s = 0; s < kStages; ++s) small_m::mbar_init(&full[s], 1);
    asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
    // The weights are not written by the kernel before (add + norm): their first stages
    // load under its tail.
    for (int s = 0; s < pre; ++s) load_w(s, s);
  }
  __syncthreads();  // the barriers are initialised before any thread waits on them
  pdl_begin();      // x is the kernel before's output
  if (tid == 0)
    for (int s = 0; s < pre; ++s) load_x(s, s);

  float acc[NT][4];
#pragma unroll
  for (int j = 0; j < NT; ++j) acc[j][0] = acc[j][1] = acc[j][2] = acc[j][3] = 0.f;
  // This lane's A row for ldmatrix: fragment rows 0-7 are the warp's 8 gate rows, 8-15
  // the same features' up rows, so each thread ends with gate (c0, c1) and up (c2, c3)
  // of one feature and two x rows.
  const int a_row = ((lane >> 3) & 1) * kPairs + warp * 8 + (lane & 7);
  int cs = 0, ps = kStages - 1;
  uint32_t phases = 0;  // bit s: the parity stage s's barrier completes next
  for (int kt = 0; kt < a.k_tiles; ++kt) {
    small_m::mbar_wait(&full[cs], (phases >> cs) & 1u);
    phases ^= 1u << cs;
    __syncthreads();  // stage cs landed; every warp is done with stage ps
    if (tid == 0 && kt + kStages - 1 < a.k_tiles) {
      load_w(ps, kt + kStages - 1);
      load_x(ps, kt + kStages - 1);
    }
    const bf16* sw = smem + cs * kStage;
    const bf16* sx = sw + kWRows * kBK;
#pragma unroll
    for (int kk = 0; kk < kBK / 16; ++kk) {
      uint32_t af[4];
      ldsm_x4(af, sw + at(a_row, kk * 2 + (lane >> 4)));
      small_m::mma_x_tiles<NT>(acc, af, sx, kk, lane, at);
    }
    cs = cs + 1 == kStages ? 0 : cs + 1;
    ps = ps + 1 == kStages ? 0 : ps + 1;
  }

  // c[0], c[1]: gate of feature f0 + 8 warp + g at x rows 2t, 2t + 1; c[2], c[3]: its up.
  // The swiglu kernel's op, on the unrounded sums.
  const int g = lane >> 2, t = lane & 3;
  const int64_t feat = f0 + warp * 8 + g;
#pragma unroll
  for (int j = 0; j < NT; ++j)
#pragma unroll
    for (int e = 0; e < 2; ++e) {
      const int r = j * 8 + 2 * t + e;
      if (r < a.rows) {
        a.out[r * a.ldo + feat] = __float2bfloat16(swiglu_f(acc[j][e], acc[j][2 + e]));
      }
    }
}

template <int NT>
void launch(const Args& a, const CUtensorMap& tw, const CUtensorMap& tx, int grid, cudaStream_t s) {
  static const bool sized = [] {
    BMX_CUDA(cudaFuncSetAttribute(gate_up_swiglu_kernel<NT>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                  int(smem_bytes<NT>())));
    return true;
  }();
  (void)sized;
  launch_pdl(gate_up_swiglu_kernel<NT>, dim3(grid), dim3(kThreads), smem_bytes<NT>(), s, a, tw, tx);
  BMX_LAUNCHED();
}

bool aligned16(const Tensor& t) {
  return reinterpret_cast<uintptr_t>(t.data) % 16 == 0 && t.row_stride % 16 == 0;
}

}  // namespace

GateUpSwiglu::GateUpSwiglu() {
  const char* e = std::getenv("BATCHMAX_CUDA_FUSED_GATE_UP");
  enabled_ = !(e && *e == '0');
  int dev = 0;
  BMX_CUDA(cudaGetDevice(&dev));
  BMX_CUDA(cudaDeviceGetAttribute(&sms_, cudaDevAttrMultiProcessorCount, dev));
}

bool GateUpSwiglu::accepts(const Tensor& x, const Tensor& w, const Tensor& out) const {
  if (!enabled_ || x.type != GgmlType::BF16 || w.type != GgmlType::BF16 || out.type != GgmlType::BF16)
    return false;
  if (x.rows < 1 || x.rows > kMaxRows || out.rows != x.rows || w.cols != x.cols || x.cols % kBK)
    return false;
  if (w.rows != 2 * out.cols || out.cols % kPairs || out.cols / kPairs < sms_) return false;
  if (x.cols / kBK > INT32_MAX || w.rows > INT32_MAX) return false;
  return aligned16(x) && aligned16(w) && aligned16(out) && out.row_stride % 2 == 0;
}

const GateUpSwiglu::Maps& GateUpSwiglu::maps(const Tensor& x, const Tensor& w) {
  const Key key{x.data, x.rows, x.row_stride, w.data, w.rows, w.cols};
  auto it = maps_.find(key);
  if (it != maps_.end()) return it->second;
  if (maps_.size() >= 4096) maps_.clear();  // workspaces were remade: old keys are dead
  Maps m{};
  const int nt = x.rows <= 64 ? 8 : 16;
  if (!small_m::make_tma_map(&m.w, w.data, w.rows, w.cols, int64_t(w.row_stride / 2), kPairs) ||
      !small_m::make_tma_map(&m.x, x.data, x.rows, x.cols, int64_t(x.row_stride / 2), nt * 8))
    throw Error("cuda gate_up_swiglu: the driver refused a TMA map");
  return maps_.emplace(key, m).first->second;
}

void GateUpSwiglu::run(const Tensor& x, const Tensor& w, Tensor& out, cudaStream_t s) {
  if (!accepts(x, w, out)) throw Error("cuda gate_up_swiglu: shapes or types the kernel does not take");
  const Maps& m = maps(x, w);
  Args a{static_cast<bf16*>(out.data), int64_t(out.row_stride / 2), int(x.rows), int(out.cols),
         int(x.cols / kBK)};
  const int grid = int(out.cols / kPairs);
  if (x.rows <= 64)
    launch<8>(a, m.w, m.x, grid, s);
  else
    launch<16>(a, m.w, m.x, grid, s);
}

}  // namespace batchmax::cuda
