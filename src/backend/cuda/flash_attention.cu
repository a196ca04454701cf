// Tensor-core paged attention (flash-attention-2 style) for a bf16 pool and bf16 q/out.
//
// One CTA (4 warps) takes a work item (sequence, KV head, tile of query vectors; vector
// v = row * group + g, so the query heads of a GQA group share every K/V tile) and a
// range of its cache entries. K/V tiles of 64 entries go through the block table into
// padded shared memory with cp.async (two stages); S = Q K^T and O += P V run on
// mma.sync m16n8k16 (bf16 in, fp32 accumulate); the online softmax stays in fp32
// registers. Key e is visible to a query iff pos[e] <= the query's position: the mask
// reads the pool's positions, never indices, so gaps after eviction are honoured.
//
// Two shapes of the same kernel:
//   prefill (WM=4, WN=1): 64 query vectors, each warp 16 rows over all 64 keys of a
//     tile; a first scan finds the last entry any row can see, so causal chunks load
//     no later tiles.
//   decode (WM=1, WN=4): up to 16 query vectors (one warp's rows), each warp 16 of the
//     tile's keys with its own softmax state, merged through shared memory at the end;
//     split-KV over blockIdx.y, with a combine pass, when there are too few items to
//     fill the GPU.
// Work items and metadata: as in attention_kernels.cu.
#include <algorithm>
#include <type_traits>
#include <climits>
#include <cstdlib>
#include <string>

#include "backend/cuda/cuda_common.cuh"
#include "backend/cuda/mma_helpers.cuh"

namespace batchmax::cuda {
namespace {

constexpr int kThreads = 128;  // decode CTAs and the combine kernel
constexpr int kKeys = 64;      // entries per shared-memory tile
constexpr int kPad = 8;        // bf16 per row: 16 bytes, so ldmatrix rows hit distinct banks
constexpr int kMaxSplit = 64;  // key ranges per work item (decode)
constexpr int kDecodeM = 16;
// Prefill CTAs: 16 query vectors per warp. 8 warps (128 vectors) read each K/V tile
// once for twice the rows of 4 warps: for a 512-row chunk over a long history the tiles
// are read by every row tile of the chunk, and that traffic bound the kernel.
// BATCHMAX_CUDA_PREFILL_ROWS=64 picks the 4-warp shape (A/B timings).
int prefill_warps() {
  static const int w = [] {
    const char* e = std::getenv("BATCHMAX_CUDA_PREFILL_ROWS");
    return e && std::string(e) == "64" ? 4 : 8;
  }();
  return w;
}

// 2^x in one instruction (2^-22 relative error; -inf gives 0): the softmax's exponentials
// are most of its non-mma instructions, and exp2f adds range handling around this.
__device__ __forceinline__ float ex2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}

struct FlashArgs {
  const bf16* q;
  int64_t q_stride;
  bf16* out;
  int64_t out_stride;
  const int32_t* work;
  const int32_t* meta;
  const int32_t* tables;  // KVPoolView::tables
  int seq_at, n_seqs, group;
  float scale_log2;
  const bf16* pk;
  const bf16* pv;
  const int32_t* ppos;
  int block_tokens, bt_shift;  // bt_shift: block_shift(block_tokens)
  float* part_o;   // split > 1: [item][split][kDecodeM][HD] unnormalised O
  float* part_ml;  // [item][split][kDecodeM][2]: max (log2 units), sum
  float* lse;      // optional: log2-sum-exp per (q row, head), see AttentionLaunch
  int64_t lse_stride;
  int queries_newest;  // AttentionParams::queries_newest: entries before the last n_q are older
};

// KEYS entries per shared-memory tile, STAGES tiles in the cp.async ring.
template <int HD, int WM, int WN, int KEYS = kKeys, int STAGES = 2>
struct Shape {
  static constexpr int kRows = 16 * WM;       // query vectors per CTA
  static constexpr int kN = KEYS / WN;        // keys per warp per tile
  static constexpr int kStride = HD + kPad;   // shared row, bf16
  static constexpr int kTile = KEYS * kStride;
  static constexpr size_t kSmem = 2 * STAGES * kTile * sizeof(bf16) + STAGES * KEYS * sizeof(int) + 16;
  static constexpr int kCtaThreads = WM * WN * 32;
  static_assert(HD % 16 == 0 && kN % 16 == 0 && kCtaThreads <= 256 && STAGES >= 2, "tile shape");
  // The decode merge reuses the K/V buffers.
  static_assert(WN == 1 || WN * 16 * (HD + 2) * 4 <= 2 * STAGES * kTile * 2, "merge fits");
};

// kMinCtas: CTAs per SM the register allocation must allow (1: unbounded).
template <int HD, int WM, int WN, int kMinCtas, int KEYS = kKeys, int STAGES = 2>
__global__ void __launch_bounds__(WM * WN * 32, kMinCtas) flash_kernel(const FlashArgs a) {
  // Decode CTAs read their metadata and start their first tile before waiting for the
  // kernel before them (below); prefill CTAs wait first.
  if constexpr (WN == 1) pdl_begin();
  using S = Shape<HD, WM, WN, KEYS, STAGES>;
  constexpr int kThreads = S::kCtaThreads;
  constexpr int kN = S::kN, kStride = S::kStride;
  extern __shared__ __align__(16) unsigned char smem[];
  bf16* Ks = reinterpret_cast<bf16*>(smem);  // [STAGES][KEYS][kStride]
  bf16* Vs = Ks + STAGES * S::kTile;         // [STAGES][KEYS][kStride]
  int* kpos_s = reinterpret_cast<int*>(Vs + STAGES * S::kTile);  // [STAGES][KEYS]
  int* red_s = kpos_s + STAGES * KEYS;                           // [2]

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int wm = warp % WM, wn = warp / WM;
  const WorkItem wi = read_work_item(a.work + 4 * blockIdx.x, a.meta, a.tables, a.seq_at, a.n_seqs, a.group);
  const int kvh = wi.kvh, v0 = wi.v0, n_vec = wi.n_vec, entries = wi.entries;
  const int64_t q_begin = wi.q_begin;
  const int32_t* qpos = wi.qpos;
  const int32_t* blocks = wi.blocks;
  const int bt = a.block_tokens;

  // This thread's two rows of the warp's 16: r and r + 8 (mma accumulator layout).
  const int va = v0 + 16 * wm + (lane >> 2), vb = va + 8;
  const int qpa = va < n_vec ? qpos[va / a.group] : INT_MIN;
  const int qpb = vb < n_vec ? qpos[vb / a.group] : INT_MIN;

  // This CTA's entries: a split's share (decode), cut at the last one any row sees.
  int e_begin = 0, e_end = entries;
  if (gridDim.y > 1) {
    const int chunk = ((entries + gridDim.y - 1) / gridDim.y + KEYS - 1) / KEYS * KEYS;
    e_begin = min(entries, int(blockIdx.y) * chunk);
    e_end = min(entries, e_begin + chunk);
  }
  auto slot_of = [&](int e) { return table_slot(blocks, e, bt, a.bt_shift); };
  if (WN == 1) {  // prefill: causal chunks see a prefix of the history (positions need no order)
    if (tid == 0) red_s[0] = INT_MIN, red_s[1] = -1;
    __syncthreads();
    const int vend = min(v0 + S::kRows, n_vec);
    int mx = INT_MIN;
    for (int r = v0 / a.group + tid; r <= (vend - 1) / a.group; r += kThreads) mx = max(mx, qpos[r]);
    if (mx != INT_MIN) atomicMax(&red_s[0], mx);
    __syncthreads();
    const int maxq = red_s[0];
    int last = -1;
#pragma unroll 8
    for (int e = e_begin + tid; e < e_end; e += kThreads)  // unrolled: loads in flight together
      if (a.ppos[slot_of(e)] <= maxq) last = e;
    if (last >= 0) atomicMax(&red_s[1], last);
    __syncthreads();
    e_end = red_s[1] + 1;
  }
  const int n_tiles = e_end > e_begin ? (e_end - e_begin + KEYS - 1) / KEYS : 0;

  // A tile's slots come from the block table in global memory: a dependent load before
  // each cp.async. They are fetched one tile ahead of the ring (fetch_slots(t + STAGES)
  // while tile t is computed), so that latency hides behind the math instead of delaying
  // the loads.
  constexpr int kChunks = HD / 8;  // 16-byte pieces per row
  constexpr int kPer = KEYS * kChunks / kThreads;
  static_assert(KEYS * kChunks % kThreads == 0 && KEYS <= kThreads, "tile load shape");
  int32_t slot_k[kPer], slot_p = -1;  // -1: past the last entry (< 2^31 slots: checked at launch)
  // Blocks of a power-of-two size that divides the tile (the engine's 16): lane l of each
  // warp loads the table entry of the tile's l-th block and the warp's threads take theirs
  // by shuffle, one load a tile instead of one for each of a thread's kPer + 1 entries.
  const int sh = a.bt_shift;
  const bool by_lane = sh >= 0 && bt <= KEYS && (KEYS >> sh) <= 32;
  auto fetch_slots = [&](int t) {
    const int e0 = e_begin + t * KEYS;
    if (by_lane) {
      int32_t bid = 0;
      if (t < n_tiles && lane < (KEYS >> sh) && e0 + (lane << sh) < e_end) bid = blocks[(e0 >> sh) + lane];
#pragma unroll
      for (int i = 0; i < kPer; ++i) {
        const int j = (tid + i * kThreads) / kChunks, e = e0 + j;
        const int32_t b = __shfl_sync(0xffffffffu, bid, j >> sh);
        slot_k[i] = t < n_tiles && e < e_end ? (b << sh) | (e & (bt - 1)) : -1;
      }
      const int32_t b = __shfl_sync(0xffffffffu, bid, (tid >> sh) & 31);
      const int e = e0 + tid;
      slot_p = t < n_tiles && tid < KEYS && e < e_end ? (b << sh) | (e & (bt - 1)) : -1;
      return;
    }
#pragma unroll
    for (int i = 0; i < kPer; ++i) {
      const int e = e0 + (tid + i * kThreads) / kChunks;
      slot_k[i] = t < n_tiles && e < e_end ? int32_t(slot_of(e)) : -1;
    }
    const int e = e0 + tid;
    slot_p = t < n_tiles && tid < KEYS && e < e_end ? int32_t(slot_of(e)) : -1;
  };
  auto load_tile = [&](int t) {
    const int st = t % STAGES;
    bf16* kd = Ks + st * S::kTile;
    bf16* vd = Vs + st * S::kTile;
#pragma unroll
    for (int i = 0; i < kPer; ++i) {
      const int idx = tid + i * kThreads, j = idx / kChunks, c = 8 * (idx % kChunks);
      const bool ok = slot_k[i] >= 0;
      const int64_t off = int64_t(ok ? slot_k[i] : 0) * HD + c;
      cp_async16(kd + j * kStride + c, a.pk + off, ok);
      cp_async16(vd + j * kStride + c, a.pv + off, ok);
    }
    if (tid < KEYS) cp_async4(kpos_s + st * KEYS + tid, a.ppos + (slot_p >= 0 ? slot_p : 0), slot_p >= 0);
  };

  float o[HD / 8][4];
#pragma unroll
  for (int i = 0; i < HD / 8; ++i) o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.f;
  float ma = -INFINITY, mb = -INFINITY, la = 0.f, lb = 0.f;  // max in raw score units
  const float sl = a.scale_log2;
  // Warps whose rows are all padding skip the math (the barriers still count them).
  const bool active = __any_sync(0xffffffffu, qpa != INT_MIN || qpb != INT_MIN);
  // The earliest query position among the warp's rows (padding rows do not count): a
  // tile whose keys all sit at or before it needs no mask. Over a long history that is
  // every tile but the chunk's own, and the mask (a shared load, compares and selects per
  // score) cost about as many instructions as the mma.sync themselves (ncu).
  int qmin = min(qpa == INT_MIN ? INT_MAX : qpa, qpb == INT_MIN ? INT_MAX : qpb);
#pragma unroll
  for (int off = 4; off < 32; off <<= 1) qmin = min(qmin, __shfl_xor_sync(0xffffffffu, qmin, off));

  // The ring: tiles 0 .. STAGES-2 in flight before the loop, one more each iteration;
  // commit group i holds tile i, so waiting for all but STAGES-1 groups lands tile t.
  fetch_slots(0);
  int pre = 0;  // ring tiles loaded before waiting for the kernel before
  if constexpr (WN > 1) {
    // That kernel (the rope and KV store) writes this step's keys and the queries, nothing
    // else these CTAs read. The metadata was staged before the launch, and where the
    // caller vouches that the step's keys are each table's last n_q entries, the tiles
    // wholly before them are old: their loads start now, under that kernel's tail,
    // instead of after it (a chain of dependent loads, ~3 us a CTA).
    const int old_end = a.queries_newest ? entries - n_vec / a.group : e_begin;
#pragma unroll
    for (int i = 0; i < STAGES - 1; ++i) {
      if (pre != i || i >= n_tiles || e_begin + (i + 1) * KEYS > old_end) break;
      load_tile(i);
      fetch_slots(i + 1);
      cp_async_commit();
      ++pre;
    }
    pdl_begin();
  }
  uint32_t qf[HD / 16][4];  // A fragments of the warp's 16 x HD queries
  load_q_fragments<HD>(qf, a.q, a.q_stride, wi, a.group, va, vb, lane);
#pragma unroll
  for (int i = 0; i < STAGES - 1; ++i) {
    if (i < pre) continue;
    if (i < n_tiles) {
      load_tile(i);
      fetch_slots(i + 1);
    }
    cp_async_commit();
  }
  for (int t = 0; t < n_tiles; ++t) {
    if (t + STAGES - 1 < n_tiles) {
      load_tile(t + STAGES - 1);  // the stage of tile t - 1, freed by the last barrier
      fetch_slots(t + STAGES);
    }
    cp_async_commit();
    cp_async_wait<STAGES - 1>();
    __syncthreads();
    if (active) {
      const int st = t % STAGES;
      const bf16* kt = Ks + st * S::kTile + wn * kN * kStride;
      const bf16* vt = Vs + st * S::kTile + wn * kN * kStride;
      const int* kp = kpos_s + st * KEYS + wn * kN;
      const int n_valid = e_end - (e_begin + t * KEYS) - wn * kN;

      float s[kN / 8][4];
      qk_tile<HD, kN>(s, qf, kt, kStride, lane);
      float mxa = -INFINITY, mxb = -INFINITY;
      int kmax = INT_MIN;  // the latest key position of the warp's kN keys (past the end: INT_MAX)
#pragma unroll
      for (int c = lane; c < kN; c += 32) kmax = max(kmax, c < n_valid ? kp[c] : INT_MAX);
#pragma unroll
      for (int off = 1; off < 32; off <<= 1) kmax = max(kmax, __shfl_xor_sync(0xffffffffu, kmax, off));
      if (kmax <= qmin) {  // every key visible to every row
#pragma unroll
        for (int nb = 0; nb < kN / 8; ++nb) {
          mxa = fmaxf(mxa, fmaxf(s[nb][0], s[nb][1]));
          mxb = fmaxf(mxb, fmaxf(s[nb][2], s[nb][3]));
        }
      } else {
#pragma unroll
        for (int nb = 0; nb < kN / 8; ++nb)
#pragma unroll
          for (int x = 0; x < 2; ++x) {
            const int col = 8 * nb + 2 * (lane & 3) + x;
            const int kpv = col < n_valid ? kp[col] : INT_MAX;
            if (kpv > qpa) s[nb][x] = -INFINITY;
            if (kpv > qpb) s[nb][2 + x] = -INFINITY;
            mxa = fmaxf(mxa, s[nb][x]);
            mxb = fmaxf(mxb, s[nb][2 + x]);
          }
      }
#pragma unroll
      for (int off = 1; off < 4; off <<= 1) {  // the 4 lanes of a quad share the rows
        mxa = fmaxf(mxa, __shfl_xor_sync(0xffffffffu, mxa, off));
        mxb = fmaxf(mxb, __shfl_xor_sync(0xffffffffu, mxb, off));
      }
      const float mna = fmaxf(ma, mxa), mnb = fmaxf(mb, mxb);
      // A row that has seen no key keeps max -inf: subtract 0 so exp2 gives 0, not NaN.
      const float ska = mna == -INFINITY ? 0.f : mna * sl, skb = mnb == -INFINITY ? 0.f : mnb * sl;
      // Rescale only when some row's max moved (otherwise the factors are exactly 1;
      // after the first tiles of a long history they mostly are).
      if (__any_sync(0xffffffffu, mna != ma || mnb != mb)) {
        const float ala = exp2f(ma * sl - ska), alb = exp2f(mb * sl - skb);
        la *= ala;
        lb *= alb;
#pragma unroll
        for (int i = 0; i < HD / 8; ++i) {
          o[i][0] *= ala; o[i][1] *= ala;
          o[i][2] *= alb; o[i][3] *= alb;
        }
      }
      ma = mna;
      mb = mnb;
#pragma unroll
      for (int nb = 0; nb < kN / 8; ++nb) {
        s[nb][0] = ex2(fmaf(s[nb][0], sl, -ska));
        s[nb][1] = ex2(fmaf(s[nb][1], sl, -ska));
        s[nb][2] = ex2(fmaf(s[nb][2], sl, -skb));
        s[nb][3] = ex2(fmaf(s[nb][3], sl, -skb));
        la += s[nb][0] + s[nb][1];
        lb += s[nb][2] + s[nb][3];
      }
#pragma unroll
      for (int kk = 0; kk < kN / 16; ++kk) {
        const uint32_t pa[4] = {pack_bf16(s[2 * kk][0], s[2 * kk][1]),
                                pack_bf16(s[2 * kk][2], s[2 * kk][3]),
                                pack_bf16(s[2 * kk + 1][0], s[2 * kk + 1][1]),
                                pack_bf16(s[2 * kk + 1][2], s[2 * kk + 1][3])};
#pragma unroll
        for (int dp = 0; dp < HD / 16; ++dp) {
          uint32_t b[4];
          ldsm_x4_t(b, vt + (16 * kk + (lane & 7) + 8 * ((lane >> 3) & 1)) * kStride + 16 * dp +
                           8 * (lane >> 4));
          mma(o[2 * dp], pa, b[0], b[1]);
          mma(o[2 * dp + 1], pa, b[2], b[3]);
        }
      }
    }
    __syncthreads();  // this stage is read; the next iteration's load may overwrite it
  }
  cp_async_wait<0>();

#pragma unroll
  for (int off = 1; off < 4; off <<= 1) {
    la += __shfl_xor_sync(0xffffffffu, la, off);
    lb += __shfl_xor_sync(0xffffffffu, lb, off);
  }
  const int c = 2 * (lane & 3);
  if constexpr (WN == 1) {
    // No visible key at all (l = 0): zeros, as the CPU reference writes.
    const float ia = la > 0 ? 1.f / la : 0.f, ib = lb > 0 ? 1.f / lb : 0.f;
    if (a.lse && (lane & 3) == 0) {
      if (va < n_vec)
        a.lse[(q_begin + va / a.group) * a.lse_stride + kvh * a.group + va % a.group] =
            la > 0 ? ma * sl + log2f(la) : -INFINITY;
      if (vb < n_vec)
        a.lse[(q_begin + vb / a.group) * a.lse_stride + kvh * a.group + vb % a.group] =
            lb > 0 ? mb * sl + log2f(lb) : -INFINITY;
    }
    bf16* oa = va < n_vec ? a.out + (q_begin + va / a.group) * a.out_stride +
                                int64_t(kvh * a.group + va % a.group) * HD
                          : nullptr;
    bf16* ob = vb < n_vec ? a.out + (q_begin + vb / a.group) * a.out_stride +
                                int64_t(kvh * a.group + vb % a.group) * HD
                          : nullptr;
#pragma unroll
    for (int i = 0; i < HD / 8; ++i) {
      if (oa) *reinterpret_cast<__nv_bfloat162*>(oa + 8 * i + c) = __floats2bfloat162_rn(o[i][0] * ia, o[i][1] * ia);
      if (ob) *reinterpret_cast<__nv_bfloat162*>(ob + 8 * i + c) = __floats2bfloat162_rn(o[i][2] * ib, o[i][3] * ib);
    }
  } else {
    // Merge the WN warps' states (same rows, different keys) through shared memory.
    __syncthreads();  // every warp is done with the K/V buffers
    float* so = reinterpret_cast<float*>(smem);  // [WN][16][HD]
    float* sml = so + WN * 16 * HD;               // [WN][16][2]
    const int ra = lane >> 2;
#pragma unroll
    for (int i = 0; i < HD / 8; ++i) {
      *reinterpret_cast<float2*>(so + (wn * 16 + ra) * HD + 8 * i + c) = make_float2(o[i][0], o[i][1]);
      *reinterpret_cast<float2*>(so + (wn * 16 + ra + 8) * HD + 8 * i + c) = make_float2(o[i][2], o[i][3]);
    }
    if ((lane & 3) == 0) {
      sml[(wn * 16 + ra) * 2] = ma == -INFINITY ? -INFINITY : ma * sl;
      sml[(wn * 16 + ra) * 2 + 1] = la;
      sml[(wn * 16 + ra + 8) * 2] = mb == -INFINITY ? -INFINITY : mb * sl;
      sml[(wn * 16 + ra + 8) * 2 + 1] = lb;
    }
    __syncthreads();
    const int rows = min(16, n_vec - v0);
    const int64_t part = (int64_t(blockIdx.x) * gridDim.y + blockIdx.y) * kDecodeM;
    for (int idx = tid; idx < rows * HD; idx += kThreads) {
      const int r = idx / HD, d = idx % HD;
      float M = -INFINITY;
#pragma unroll
      for (int x = 0; x < WN; ++x) M = fmaxf(M, sml[(x * 16 + r) * 2]);
      float acc = 0.f, L = 0.f;
      if (M != -INFINITY) {
#pragma unroll
        for (int x = 0; x < WN; ++x) {
          const float f = exp2f(sml[(x * 16 + r) * 2] - M);
          acc += f * so[(x * 16 + r) * HD + d];
          L += f * sml[(x * 16 + r) * 2 + 1];
        }
      }
      if (gridDim.y == 1) {
        const int v = v0 + r;
        a.out[(q_begin + v / a.group) * a.out_stride + int64_t(kvh * a.group + v % a.group) * HD + d] =
            __float2bfloat16(L > 0 ? acc / L : 0.f);
        if (a.lse && d == 0)
          a.lse[(q_begin + v / a.group) * a.lse_stride + kvh * a.group + v % a.group] =
              L > 0 ? M + log2f(L) : -INFINITY;
      } else {
        a.part_o[(part + r) * HD + d] = acc;
        if (d == 0) {
          a.part_ml[(part + r) * 2] = M;
          a.part_ml[(part + r) * 2 + 1] = L;
        }
      }
    }
  }
}

// Merges the split-KV partial results of each decode item: weights 2^(m_s - M) / L.
template <int HD>
__global__ void __launch_bounds__(kThreads) flash_combine(const FlashArgs a, int n_split) {
  pdl_begin();
  __shared__ float wgt[kMaxSplit][kDecodeM];
  const int32_t* w = a.work + 4 * blockIdx.x;
  const int seq = w[0], kvh = w[1], v0 = w[2];
  const int32_t* sm = a.meta + a.seq_at + 4 * seq;
  const int64_t q_begin = sm[0];
  const int rows = min(kDecodeM, sm[1] * a.group - v0);
  const int64_t base = int64_t(blockIdx.x) * n_split * kDecodeM;
  const int tid = threadIdx.x;
  if (tid < rows) {
    float M = -INFINITY, L = 0.f;
    for (int s = 0; s < n_split; ++s) M = fmaxf(M, a.part_ml[(base + s * kDecodeM + tid) * 2]);
    for (int s = 0; s < n_split; ++s) {
      const float* ml = a.part_ml + (base + s * kDecodeM + tid) * 2;
      const float f = M == -INFINITY ? 0.f : exp2f(ml[0] - M);
      wgt[s][tid] = f;
      L += f * ml[1];
    }
    const float inv = L > 0 ? 1.f / L : 0.f;
    for (int s = 0; s < n_split; ++s) wgt[s][tid] *= inv;
    if (a.lse) {
      const int v = v0 + tid;
      a.lse[(q_begin + v / a.group) * a.lse_stride + kvh * a.group + v % a.group] =
          L > 0 ? M + log2f(L) : -INFINITY;
    }
  }
  __syncthreads();
  for (int idx = tid; idx < rows * HD; idx += kThreads) {
    const int r = idx / HD, d = idx % HD, v = v0 + r;
    float acc = 0.f;
    for (int s = 0; s < n_split; ++s) acc += wgt[s][r] * a.part_o[(base + s * kDecodeM + r) * HD + d];
    a.out[(q_begin + v / a.group) * a.out_stride + int64_t(kvh * a.group + v % a.group) * HD + d] =
        __float2bfloat16(acc);
  }
}

// CTAs of one instantiation resident on the whole GPU at once.
template <class K>
int resident_ctas(K kernel, size_t smem, int threads = kThreads) {
  int per_sm = 0, dev = 0, sms = 0;
  BMX_CUDA(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
  BMX_CUDA(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, threads, smem));
  BMX_CUDA(cudaGetDevice(&dev));
  BMX_CUDA(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
  return std::max(1, per_sm * sms);
}

// BATCHMAX_CUDA_DECODE_SPLITS=n: every decode launch splits each item's entries n ways
// (A/B timings of choose_splits; 0 or unset: chosen).
int forced_decode_splits() {
  static const int n = [] {
    const char* e = std::getenv("BATCHMAX_CUDA_DECODE_SPLITS");
    return e ? std::max(0, std::atoi(e)) : 0;
  }();
  return n;
}

// Splits per decode item: the fewest that fill >= 90% of the last wave, each split
// keeping >= 2 tiles of `keys` entries; none when there are many waves anyway.
int choose_splits(int n_items, int max_entries, int slots, int keys) {
  const int max_s = std::clamp(max_entries / (2 * keys), 1, kMaxSplit);
  if (n_items >= 4 * slots) return 1;
  int best = 1;
  double best_eff = 0;
  for (int s = 1; s <= max_s; ++s) {
    const int64_t ctas = int64_t(n_items) * s;
    const double eff = double(ctas) / double((ctas + slots - 1) / slots * slots);
    if (eff >= 0.9) return s;
    if (eff > best_eff + 1e-9) best = s, best_eff = eff;
  }
  return best;
}

// The decode CTA's tile shape: KEYS entries a tile (KEYS / 16 warps of 16 keys each) in a
// ring of STAGES tiles. Short caches (Batch-Max's budgets) take 32x2: its CTAs are half
// the size of 64x2's (2 warps; ~200 registers a thread bind both shapes to 8 warps per
// SM), so an H100 holds 4 a SM instead of 2 and ~500 (sequence, KV head) items run as one
// wave instead of two. Long caches keep 64x2, as fast or faster there in the attention
// bench (bench/results/decode_tile_2026-11-27/; capping the registers for more CTAs a SM
// measured slower, as did 3- and 4-deep rings, which the template still allows).
// BATCHMAX_CUDA_DECODE_TILE=64x2 or 32x2 forces one shape (A/B timings); unset or "auto",
// the choice above.
enum class DecodeTile { kAuto, k64x2, k32x2 };
constexpr int kShortCache = 2048;  // the most entries a decode launch runs as 32x2 (auto)
DecodeTile forced_decode_tile() {
  static const DecodeTile t = [] {
    const char* e = std::getenv("BATCHMAX_CUDA_DECODE_TILE");
    const std::string v = e ? e : "";
    if (v == "64x2") return DecodeTile::k64x2;
    if (v == "32x2") return DecodeTile::k32x2;
    return DecodeTile::kAuto;
  }();
  return t;
}
DecodeTile decode_tile_for(int max_entries) {
  const DecodeTile f = forced_decode_tile();
  if (f != DecodeTile::kAuto) return f;
  return max_entries <= kShortCache ? DecodeTile::k32x2 : DecodeTile::k64x2;
}
template <class F>
auto with_decode_tile(DecodeTile t, F&& f) {
  using std::integral_constant;
  switch (t) {
    case DecodeTile::k32x2: return f(integral_constant<int, 32>{}, integral_constant<int, 2>{});
    default: return f(integral_constant<int, 64>{}, integral_constant<int, 2>{});
  }
}

// The decode kernel of one tile shape and the resident CTAs it allows on this GPU.
template <int HD, int KEYS, int STAGES>
struct DecodeKernel {
  using S = Shape<HD, 1, KEYS / 16, KEYS, STAGES>;
  static constexpr auto kernel = flash_kernel<HD, 1, KEYS / 16, 1, KEYS, STAGES>;
  static int slots() {
    static const int n = resident_ctas(kernel, S::kSmem, S::kCtaThreads);
    return n;
  }
  // Also sets the kernel's shared-memory attribute (slots()), which every launch needs.
  static int splits(int n_items, int max_entries) {
    const int n_slots = slots();
    return forced_decode_splits() > 0 ? std::min(forced_decode_splits(), kMaxSplit)
                                      : choose_splits(n_items, max_entries, n_slots, KEYS);
  }
};

template <int HD>
void launch_hd(const FlashArgs& base, const AttentionLaunch& L, cudaStream_t s) {
  if (L.n_small > 0) {  // decode items
    with_decode_tile(decode_tile_for(L.max_small_entries), [&](auto keys_tag, auto stages_tag) {
      using D = DecodeKernel<HD, decltype(keys_tag)::value, decltype(stages_tag)::value>;
      const int n_split = D::splits(L.n_small, L.max_small_entries);
      FlashArgs a = base;
      if (n_split > 1) {
        const size_t n_part = size_t(L.n_small) * n_split * kDecodeM;
        float* scratch = static_cast<float*>(L.scratch(n_part * (HD + 2) * sizeof(float)));
        a.part_o = scratch;
        a.part_ml = scratch + n_part * HD;
      }
      launch_pdl(D::kernel, dim3(L.n_small, n_split), D::S::kCtaThreads, D::S::kSmem, s, a);
      BMX_LAUNCHED();
      if (n_split > 1) {
        launch_pdl(flash_combine<HD>, L.n_small, kThreads, 0, s, a, n_split);
        BMX_LAUNCHED();
      }
    });
  }
  if (L.n_big > 0) {  // prefill items
    // Unbounded registers (180 at head_dim 128) measured 4-15% faster than a cap at 3
    // CTAs per SM (168, small spills): bench/device/cuda_notes.md.
    FlashArgs a = base;
    a.work = base.work + 4 * L.n_small;
    auto run = [&](auto wm_tag) {
      constexpr int WM = decltype(wm_tag)::value;
      using S = Shape<HD, WM, 1>;
      static const int slots = resident_ctas(flash_kernel<HD, WM, 1, 1>, S::kSmem, S::kCtaThreads);
      (void)slots;  // sets the shared-memory attribute once
      launch_pdl(flash_kernel<HD, WM, 1, 1>, L.n_big, S::kCtaThreads, S::kSmem, s, a);
      BMX_LAUNCHED();
    };
    if (prefill_warps() == 8)
      run(std::integral_constant<int, 8>{});
    else
      run(std::integral_constant<int, 4>{});
  }
}

}  // namespace

bool flash_attention_supported(GgmlType q, GgmlType pool, int head_dim) {
  // BATCHMAX_CUDA_SIMT_ATTENTION=1 forces the SIMT kernel (A/B timings, debugging).
  static const bool simt = [] {
    const char* e = std::getenv("BATCHMAX_CUDA_SIMT_ATTENTION");
    return e && *e && *e != '0';
  }();
  return !simt && q == GgmlType::BF16 && pool == GgmlType::BF16 &&
         (head_dim == 64 || head_dim == 96 || head_dim == 128);
}
AttentionTiles flash_attention_tiles() { return {kDecodeM, 16 * prefill_warps()}; }

size_t flash_decode_scratch_bound(int head_dim, int64_t max_items) {
  auto bound = [&](auto hd_tag) {
    constexpr int HD = decltype(hd_tag)::value;
    auto bound_of = [&](DecodeTile t, int max_entries) {
      return with_decode_tile(t, [&](auto keys_tag, auto stages_tag) {
        using D = DecodeKernel<HD, decltype(keys_tag)::value, decltype(stages_tag)::value>;
        const int slots = D::slots();
        size_t most = 0;
        // Splits happen only below 4 waves; the split count grows with the entries.
        for (int64_t n = 1; n <= std::min<int64_t>(max_items, 4 * int64_t(slots)); ++n) {
          const int sp = D::splits(int(n), max_entries);
          if (sp > 1) most = std::max(most, size_t(n) * sp * kDecodeM * (HD + 2) * sizeof(float));
        }
        return most;
      });
    };
    // Every shape a launch may pick: the forced one, or both of the automatic choice.
    if (forced_decode_tile() != DecodeTile::kAuto)
      return bound_of(forced_decode_tile(), INT32_MAX / 2);
    return std::max(bound_of(DecodeTile::k32x2, kShortCache), bound_of(DecodeTile::k64x2, INT32_MAX / 2));
  };
  switch (head_dim) {
    case 64: return bound(std::integral_constant<int, 64>{});
    case 96: return bound(std::integral_constant<int, 96>{});
    case 128: return bound(std::integral_constant<int, 128>{});
    default: return 0;
  }
}

void launch_flash_attention(const Tensor& q, const AttentionLaunch& L, const AttentionParams& p,
                            const KVPoolView& pool, Tensor& out, cudaStream_t s) {
  FlashArgs a{};
  a.q = static_cast<const bf16*>(q.data);
  a.q_stride = int64_t(q.row_stride / sizeof(bf16));
  a.out = static_cast<bf16*>(out.data);
  a.out_stride = int64_t(out.row_stride / sizeof(bf16));
  a.work = L.meta;
  a.meta = L.meta;
  a.tables = pool.tables;
  a.seq_at = L.seq_at;
  a.n_seqs = L.n_seqs;
  a.group = p.n_heads / p.n_kv_heads;
  a.scale_log2 = p.scale * 1.4426950408889634f;
  a.queries_newest = p.queries_newest ? 1 : 0;
  a.pk = static_cast<const bf16*>(pool.k);
  a.pv = static_cast<const bf16*>(pool.v);
  a.ppos = pool.pos;
  a.block_tokens = pool.block_tokens;
  a.bt_shift = block_shift(pool.block_tokens);
  a.lse = L.lse;
  a.lse_stride = L.lse_stride;
  if (pool.n_blocks * pool.block_tokens > INT32_MAX)
    throw Error("cuda flash attention: more than 2^31 pool slots");
  // The Q fragments are 4-byte loads: row starts must be 4-byte aligned.
  if (reinterpret_cast<uintptr_t>(q.data) % 4 || q.row_stride % 4 ||
      reinterpret_cast<uintptr_t>(out.data) % 4 || out.row_stride % 4)
    throw Error("cuda attention: q/out rows must be 4-byte aligned");
  switch (p.head_dim) {
    case 64: return launch_hd<64>(a, L, s);
    case 96: return launch_hd<96>(a, L, s);
    case 128: return launch_hd<128>(a, L, s);
    default: throw Error("cuda flash attention: head_dim " + std::to_string(p.head_dim));
  }
}

}  // namespace batchmax::cuda
