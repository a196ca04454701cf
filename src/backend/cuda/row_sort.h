#pragma once
// Whole F32 logit rows sorted on the GPU in top_candidates' order (value descending,
// then index; -0 as +0), for top-p draws whose nucleus is wider than the 1024 entries
// top_candidates returns: a CUB segmented radix sort, which is stable, so equal values
// keep their index order. A flat 128k-token row sorted on the host took ~10 ms.
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "backend/backend.h"

namespace batchmax::cuda {

// Rows sorted per launch: 8 rows of Llama 3's 128256 entries take ~4 MiB of keys and ids
// in and out, and CUB's temporary storage.
constexpr int kRowsPerSort = 8;

// Device bytes one launch over up to kRowsPerSort rows of `cols` entries needs.
size_t row_sort_scratch_bytes(int64_t cols);

// Sorts rows d_rows[0, n_rows) (device memory, row ids of x), n_rows <= kRowsPerSort, of
// the F32 tensor x. On return *keys and *ids (inside `scratch`, row-major, cols per row)
// hold the sorted values and their column indices, stream-ordered on `s`.
void launch_sort_rows(const Tensor& x, const int32_t* d_rows, int n_rows, void* scratch,
                      size_t scratch_bytes, const float** keys, const int32_t** ids, cudaStream_t s);

// draw_sorted (backend/row_sampling.h) over each of the n_rows sorted rows that
// launch_sort_rows left in keys / ids (cols per row), with d_draws[r] (device memory);
// the picked id to d_out[r]. One 1024-thread CTA a row: per-thread segment sums of p_i in
// double, a block scan, then the segment where the nucleus ends, and the one where
// u * its mass falls, walked in order by one thread.
void launch_draw_sorted(const float* keys, const int32_t* ids, int64_t cols, int n_rows,
                        const SortedDraw* d_draws, int32_t* d_out, cudaStream_t s);

}  // namespace batchmax::cuda
