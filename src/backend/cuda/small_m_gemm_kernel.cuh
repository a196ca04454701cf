#pragma once
// The few-row product kernel (small_m_gemm.h), templated on its pipeline so that the
// device benchmark (bench/device/small_m_variants.cu) can time the variants side by side.
//
// A CTA holds 128 weight rows (8 warps x 16: A of mma.sync m16n8k16) against NT tiles of
// 8 x rows (B). Loads go through a ring of kStages shared-memory stages of BK columns,
// either by per-thread cp.async (Load::CpAsync), by one bulk copy per row signalled on
// an mbarrier (Load::Bulk, sm_90), or by two TMA box loads a stage (Load::Tma, sm_90:
// 128-byte swizzled rows, BK = 64). Units are (row tile, k split); a CTA walks its units
// through one ring that does not drain between units.
#include <cuda.h>

#include <cstdint>

#include "backend/cuda/cuda_common.cuh"
#include "backend/cuda/mma_helpers.cuh"

namespace batchmax::cuda::small_m {

constexpr int kBN = 128;
constexpr int kThreads = 256;

enum class Load { CpAsync, Bulk, CpAsyncNoMath, Tma };

struct Args {
  const bf16* x;
  const bf16* w;
  void* out;
  float* partials;
  int* counters;
  int rows, n, k_tiles, splits, units;
  int64_t ldx, ldw, ldo;
};

// Padded rows (kLd = BK + 8: ldmatrix conflict-free) or, for TMA, 128-byte rows whose
// 16-byte chunks are XOR-swizzled by row % 8 in 1024-byte aligned stages.
template <int NT, int BK, int STAGES, bool SWIZZLED = false>
struct Shape {
  static constexpr int kLd = SWIZZLED ? BK : BK + 8;
  static constexpr int kWElems = kBN * kLd;
  static constexpr int kStageElems = kWElems + NT * 8 * kLd;
  static constexpr size_t kSmem = size_t(STAGES) * kStageElems * 2 + (SWIZZLED ? 1024 : 0);
};

__device__ __forceinline__ void ldsm_x2(uint32_t (&r)[2], const bf16* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0,%1}, [%2];\n"
               : "=r"(r[0]), "=r"(r[1])
               : "r"(smem_u32(p))
               : "memory");
}
__device__ __forceinline__ void mbar_init(uint64_t* b, int count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(smem_u32(b)), "r"(count) : "memory");
}
__device__ __forceinline__ void mbar_expect_tx(uint64_t* b, uint32_t bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(smem_u32(b)),
               "r"(bytes)
               : "memory");
}
__device__ __forceinline__ void mbar_wait(uint64_t* b, uint32_t parity) {
  asm volatile(
      "{\n.reg .pred p;\nWAIT_%=:\n"
      "mbarrier.try_wait.parity.shared::cta.b64 p, [%0], %1;\n"
      "@!p bra WAIT_%=;\n}\n" ::"r"(smem_u32(b)),
      "r"(parity)
      : "memory");
}
__device__ __forceinline__ void bulk_copy(void* dst, const void* src, uint32_t bytes, uint64_t* bar) {
  asm volatile(
      "cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];\n" ::"r"(
          smem_u32(dst)),
      "l"(src), "r"(bytes), "r"(smem_u32(bar))
      : "memory");
}

__device__ __forceinline__ void tma_load_2d(void* dst, const CUtensorMap* map, int c0, int c1,
                                            uint64_t* bar) {
  asm volatile(
      "cp.async.bulk.tensor.2d.shared::cluster.global.tile.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3}], [%4];\n" ::"r"(
          smem_u32(dst)),
      "l"(reinterpret_cast<uint64_t>(map)), "r"(c0), "r"(c1), "r"(smem_u32(bar))
      : "memory");
}

// One 16-wide k step of a warp: its A fragment (16 weight rows) against the stage's NT
// x tiles of 8 rows, acc[j] += A . tile j. `at(row, chunk)`: element offset of a row's
// 16-byte chunk in the stage (padded or swizzled, as the kernel lays it out).
template <int NT, class At>
__device__ __forceinline__ void mma_x_tiles(float (&acc)[NT][4], const uint32_t (&af)[4], const bf16* sx,
                                            int kk, int lane, At at) {
#pragma unroll
  for (int p = 0; p < NT / 2; ++p) {
    uint32_t b[4];
    ldsm_x4(b, sx + at(p * 16 + (lane & 7) + 8 * (lane >> 4), kk * 2 + ((lane >> 3) & 1)));
    mma(acc[2 * p], af, b[0], b[1]);
    mma(acc[2 * p + 1], af, b[2], b[3]);
  }
  if constexpr (NT % 2 == 1) {
    uint32_t b[2];
    ldsm_x2(b, sx + at((NT - 1) * 8 + (lane & 7), kk * 2 + ((lane >> 3) & 1)));
    mma(acc[NT - 1], af, b[0], b[1]);
  }
}

__device__ __forceinline__ int split_begin(int split, const Args& a) {
  return int(int64_t(split) * a.k_tiles / a.splits);
}

// tw, tx: TMA maps of w (box 64 x 128 rows) and x (box 64 x NT * 8 rows), Load::Tma only.
template <int NT, int BK, int STAGES, Load L, int MIN_BLOCKS, class OutT>
__global__ void __launch_bounds__(kThreads, MIN_BLOCKS)
    gemm_kernel(Args a, const __grid_constant__ CUtensorMap tw, const __grid_constant__ CUtensorMap tx) {
  constexpr bool kTma = L == Load::Tma;
  static_assert(!kTma || BK == 64, "TMA stages are 128-byte rows");
  using S = Shape<NT, BK, STAGES, kTma>;
  constexpr int kLd = S::kLd;
  constexpr int kChunks = BK / 8;  // 16-byte pieces of a row's stage
  extern __shared__ __align__(128) unsigned char smem_raw[];
  bf16* smem = reinterpret_cast<bf16*>(smem_raw + (kTma ? (1024 - (smem_u32(smem_raw) & 1023)) & 1023 : 0));
  // Element offset of (row, 16-byte chunk) in a stage's tile.
  auto at = [](int row, int chunk) {
    return kTma ? row * kLd + ((chunk ^ (row & 7)) << 3) : row * kLd + (chunk << 3);
  };
  __shared__ int last_split;
  __shared__ __align__(8) uint64_t full[STAGES];
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  const int x_rows = a.rows < NT * 8 ? a.rows : NT * 8;

  if constexpr (L == Load::Bulk || kTma) {
    if (tid == 0) {
      for (int s = 0; s < STAGES; ++s) mbar_init(&full[s], 1);
      asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
    }
    __syncthreads();
  }

  // Producer cursor: the unit and k tile the next load fills.
  int pu = blockIdx.x, pk = 0, pk_end = 0;
  auto enter = [&] {
    if (pu < a.units) {
      const int sp = pu % a.splits;
      pk = split_begin(sp, a);
      pk_end = split_begin(sp + 1, a);
    }
  };
  enter();
  auto load = [&](int stage) {
    bf16* sw = smem + stage * S::kStageElems;
    bf16* sx = sw + S::kWElems;
    const int64_t n0 = int64_t(pu / a.splits) * kBN, k0 = int64_t(pk) * BK;
    if constexpr (kTma) {
      // Whole boxes: rows past the tensor's last are zero-filled and still counted.
      if (tid == 0) {
        mbar_expect_tx(&full[stage], uint32_t((kBN + NT * 8) * BK * 2));
        tma_load_2d(sw, &tw, int(k0), int(n0), &full[stage]);
        tma_load_2d(sx, &tx, int(k0), 0, &full[stage]);
      }
    } else if constexpr (L == Load::Bulk) {
      // Warp 0: lane 0 arms the stage's barrier with its byte count, then each lane
      // copies rows lane, lane + 32, ... (x rows past the last are left as they are:
      // they only reach output columns that are never written).
      if (warp == 0) {
        const int w_rows = a.n - n0 < kBN ? int(a.n - n0) : kBN;
        if (lane == 0) mbar_expect_tx(&full[stage], uint32_t((w_rows + x_rows) * BK * 2));
        __syncwarp();
        for (int r = lane; r < w_rows; r += 32)
          bulk_copy(sw + r * kLd, a.w + (n0 + r) * a.ldw + k0, BK * 2, &full[stage]);
        for (int r = lane; r < x_rows; r += 32)
          bulk_copy(sx + r * kLd, a.x + r * a.ldx + k0, BK * 2, &full[stage]);
      }
    } else {
#pragma unroll
      for (int it = 0; it < kBN * kChunks / kThreads; ++it) {
        const int i = tid + it * kThreads, r = i / kChunks, c = i % kChunks;
        const bool ok = n0 + r < a.n;
        cp_async16(sw + r * kLd + c * 8, a.w + (ok ? n0 + r : 0) * a.ldw + k0 + c * 8, ok);
      }
#pragma unroll
      for (int it = 0; it < (NT * 8 * kChunks + kThreads - 1) / kThreads; ++it) {
        const int i = tid + it * kThreads, r = i / kChunks, c = i % kChunks;
        if (i >= NT * 8 * kChunks) break;
        const bool ok = r < a.rows;
        cp_async16(sx + r * kLd + c * 8, a.x + (ok ? r : 0) * a.ldx + k0 + c * 8, ok);
      }
    }
    if (++pk == pk_end) {
      pu += gridDim.x;
      enter();
    }
  };

#pragma unroll
  for (int s = 0; s < STAGES - 1; ++s) {
    if (pu < a.units) load(s);
    if constexpr (L == Load::CpAsync || L == Load::CpAsyncNoMath) cp_async_commit();
  }
  int cs = 0, ps = STAGES - 1;
  uint32_t phases = 0;  // bit s: the parity stage s's barrier completes next
  const int g = lane >> 2, t = lane & 3;
  for (int u = blockIdx.x; u < a.units; u += gridDim.x) {
    const int split = u % a.splits, tile = u / a.splits;
    float acc[NT][4];
#pragma unroll
    for (int j = 0; j < NT; ++j) acc[j][0] = acc[j][1] = acc[j][2] = acc[j][3] = 0.f;
    const int kb = split_begin(split, a), ke = split_begin(split + 1, a);
    for (int kt = kb; kt < ke; ++kt) {
      if constexpr (L == Load::Bulk || kTma) {
        mbar_wait(&full[cs], (phases >> cs) & 1u);
        phases ^= 1u << cs;
      } else {
        cp_async_wait<STAGES - 2>();
      }
      __syncthreads();  // stage cs is loaded; every warp is done with stage ps
      if (pu < a.units) load(ps);
      if constexpr (L == Load::CpAsync || L == Load::CpAsyncNoMath) cp_async_commit();
      if constexpr (L != Load::CpAsyncNoMath) {
        const bf16* sw = smem + cs * S::kStageElems;
        const bf16* sx = sw + S::kWElems;
#pragma unroll
        for (int kk = 0; kk < BK / 16; ++kk) {
          uint32_t af[4];
          ldsm_x4(af, sw + at(warp * 16 + (lane & 15), kk * 2 + (lane >> 4)));
          mma_x_tiles<NT>(acc, af, sx, kk, lane, at);
        }
      }
      cs = cs + 1 == STAGES ? 0 : cs + 1;
      ps = ps + 1 == STAGES ? 0 : ps + 1;
    }

    if (a.splits > 1) {
      // This split's partial, in fragment order (coalesced float4s).
      float4* mine = reinterpret_cast<float4*>(a.partials) + size_t(u) * NT * kThreads;
#pragma unroll
      for (int j = 0; j < NT; ++j)
        __stcg(mine + j * kThreads + tid, make_float4(acc[j][0], acc[j][1], acc[j][2], acc[j][3]));
      __threadfence();
      __syncthreads();
      if (tid == 0) last_split = atomicAdd(a.counters + tile, 1) == a.splits - 1;
      __syncthreads();
      if (!last_split) continue;
      __threadfence();
      // Sum in split order: the same bits whichever split came last.
      float sum[NT][4];
#pragma unroll
      for (int j = 0; j < NT; ++j) sum[j][0] = sum[j][1] = sum[j][2] = sum[j][3] = 0.f;
      const float4* base =
          reinterpret_cast<const float4*>(a.partials) + size_t(tile) * a.splits * NT * kThreads;
      for (int sp = 0; sp < a.splits; ++sp)
#pragma unroll
        for (int j = 0; j < NT; ++j) {
          const float4 v = sp == split ? make_float4(acc[j][0], acc[j][1], acc[j][2], acc[j][3])
                                       : __ldcg(base + (size_t(sp) * NT + j) * kThreads + tid);
          sum[j][0] += v.x;
          sum[j][1] += v.y;
          sum[j][2] += v.z;
          sum[j][3] += v.w;
        }
#pragma unroll
      for (int j = 0; j < NT; ++j)
#pragma unroll
        for (int e = 0; e < 4; ++e) acc[j][e] = sum[j][e];
      if (tid == 0) a.counters[tile] = 0;  // ready for the next launch
    }
    // c[e]: weight row g (+8 for e >= 2), x row 2t (+1 for odd e).
    OutT* out = static_cast<OutT*>(a.out);
    const int64_t n0 = int64_t(tile) * kBN + warp * 16 + g;
#pragma unroll
    for (int j = 0; j < NT; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int xr = j * 8 + 2 * t + (e & 1);
        const int64_t col = n0 + (e >> 1) * 8;
        if (xr < a.rows && col < a.n) out[xr * a.ldo + col] = from_f<OutT>(acc[j][e]);
      }
  }
  if constexpr (L == Load::CpAsync || L == Load::CpAsyncNoMath) cp_async_wait<0>();
}

// A TMA map of a row-major bf16 matrix (rows x cols, ld elements a row) in boxes of 64
// columns x box_rows rows, 128-byte swizzled; false if the driver refuses it.
inline bool make_tma_map(CUtensorMap* map, const void* p, int64_t rows, int64_t cols, int64_t ld,
                         int box_rows) {
  using Encode = CUresult (*)(CUtensorMap*, CUtensorMapDataType, cuuint32_t, void*, const cuuint64_t*,
                              const cuuint64_t*, const cuuint32_t*, const cuuint32_t*,
                              CUtensorMapInterleave, CUtensorMapSwizzle, CUtensorMapL2promotion,
                              CUtensorMapFloatOOBfill);
  static Encode encode = [] {
    void* f = nullptr;
    cudaDriverEntryPointQueryResult q{};
    if (cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &f, 12000, cudaEnableDefault, &q) !=
            cudaSuccess ||
        q != cudaDriverEntryPointSuccess)
      f = nullptr;
    return reinterpret_cast<Encode>(f);
  }();
  if (!encode) return false;
  const cuuint64_t dims[2] = {cuuint64_t(cols), cuuint64_t(rows)};
  const cuuint64_t strides[1] = {cuuint64_t(ld) * 2};
  const cuuint32_t box[2] = {64, cuuint32_t(box_rows)};
  const cuuint32_t elem[2] = {1, 1};
  return encode(map, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 2, const_cast<void*>(p), dims, strides, box,
                elem, CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
                CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE) == CUDA_SUCCESS;
}

// The split count that gives the busiest CTA the fewest k tiles, counting a split's
// partial write and read as one more tile; ties go to fewer splits. Partials must fit
// in partial_bytes, and a unit keeps at least 2 k tiles.
struct Split {
  int tiles, k_tiles, splits, grid;
};
inline Split choose_split(int64_t rows, int64_t m, int64_t k, int bk, int64_t slots,
                          size_t partial_bytes, int max_counters) {
  const int nt = int((rows + 7) / 8);
  Split best{int((m + kBN - 1) / kBN), int(k / bk), 1, 0};
  const size_t partial_per_unit = size_t(nt) * kThreads * 16;
  int64_t best_cost = -1;
  for (int s = 1; s <= best.k_tiles / 2 || s == 1; ++s) {
    const int64_t units = int64_t(best.tiles) * s;
    if (s > 1 && (size_t(units) * partial_per_unit > partial_bytes || best.tiles > max_counters))
      break;
    const int64_t per_cta = (units + slots - 1) / slots;
    const int64_t cost = per_cta * ((best.k_tiles + s - 1) / s + (s > 1 ? 1 : 0));
    if (best_cost < 0 || cost < best_cost) {
      best_cost = cost;
      best.splits = s;
    }
  }
  best.grid = int(std::min<int64_t>(int64_t(best.tiles) * best.splits, slots));
  return best;
}

}  // namespace batchmax::cuda::small_m
