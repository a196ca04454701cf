// CudaBackend members: picks, kept picks, candidates, sorted rows.
#include "backend/cuda/cuda_backend_impl.cuh"

namespace batchmax::cuda {

void CudaBackend::argmax_rows(const Tensor& x, int32_t* out) {
  if (x.rows == 0) return;
  int32_t* d = static_cast<int32_t*>(small_out_.get(size_t(x.rows) * 4));
  {
    BMX_OP_TIME("argmax_rows");
    cuda::launch_argmax_rows(x, d, stream_);
  }
  BMX_CUDA(cudaMemcpyAsync(out, d, size_t(x.rows) * 4, cudaMemcpyDeviceToHost, stream_));
  BMX_CUDA(cudaStreamSynchronize(stream_));
  op_timer_.drain();
}

void CudaBackend::sample_rows(const Tensor& x, std::span<const float> inv_temperature,
                              std::span<const double> uniform, int32_t* out) {
  if (x.rows == 0) return;
  int32_t* d = static_cast<int32_t*>(small_out_.get(size_t(x.rows) * 4));
  pick_rows_to(x, inv_temperature, uniform, d);
  BMX_CUDA(cudaMemcpyAsync(out, d, size_t(x.rows) * 4, cudaMemcpyDeviceToHost, stream_));
  BMX_CUDA(cudaStreamSynchronize(stream_));
  op_timer_.drain();
}

void CudaBackend::sample_rows_kept(const Tensor& x, std::span<const float> inv_temperature,
                                   std::span<const double> uniform, int set, int64_t first) {
  if (x.rows == 0) return;
  if (first < 0) throw Error("cuda sample_rows_kept: negative first pick");
  int32_t* d = kept_picks_.device(set, first + x.rows, stream_) + first;
  pick_rows_to(x, inv_temperature, uniform, d);
  kept_picks_.copy_back(set, first, x.rows, stream_);
}

void CudaBackend::fetch_picks(int set, int64_t n, int32_t* out) {
  kept_picks_.fetch(set, n, out);
  op_timer_.drain();
}

void CudaBackend::embed_with_picks(const Tensor& table, std::span<const int32_t> ids,
                                   std::span<const int32_t> pick_index, int set, Tensor& out) {
  BMX_OP_TIME("embed");
  if (int64_t(ids.size()) != out.rows || pick_index.size() != ids.size())
    throw Error("cuda embed_with_picks: ids, pick indices and output rows differ");
  check_ids(ids, table.rows, "embed: token id");
  if (ids.empty()) return;
  // The staged ids are this call's own: the picks are written over them in place.
  int32_t* d = const_cast<int32_t*>(put_ints({ids, pick_index}));
  kept_picks_.resolve(set, d, d + ids.size(), int64_t(ids.size()), stream_);
  cuda::launch_embed(table, d, out, stream_);
}

void CudaBackend::top_candidates(const Tensor& x, int k, std::span<const float> inv_temperature,
                                 float* values, int32_t* ids, double* whole_mass) {
  if (int64_t(inv_temperature.size()) != x.rows)
    throw Error("cuda top_candidates: one temperature per row");
  if (x.rows == 0) return;
  const size_t n = size_t(x.rows), nk = n * size_t(k);
  const float* d_t = static_cast<const float*>(staging_->put(inv_temperature.data(), n * sizeof(float), stream_));
  // One buffer, one copy back: the masses (8-byte aligned first), values, indices.
  const size_t bytes = n * sizeof(double) + nk * (sizeof(float) + sizeof(int32_t));
  char* d = static_cast<char*>(small_out_.get(bytes));
  {
    BMX_OP_TIME("top_candidates");
    cuda::launch_top_candidates(x, k, d_t, reinterpret_cast<float*>(d + n * sizeof(double)),
                                reinterpret_cast<int32_t*>(d + n * sizeof(double) + nk * sizeof(float)),
                                reinterpret_cast<double*>(d), stream_);
  }
  host_sample_.resize(bytes);
  BMX_CUDA(cudaMemcpyAsync(host_sample_.data(), d, bytes, cudaMemcpyDeviceToHost, stream_));
  BMX_CUDA(cudaStreamSynchronize(stream_));
  op_timer_.drain();
  std::memcpy(whole_mass, host_sample_.data(), n * sizeof(double));
  std::memcpy(values, host_sample_.data() + n * sizeof(double), nk * sizeof(float));
  std::memcpy(ids, host_sample_.data() + n * sizeof(double) + nk * sizeof(float), nk * sizeof(int32_t));
}

void CudaBackend::sorted_prefix(const Tensor& x, std::span<const int32_t> rows, int64_t n,
                                float* values, int32_t* ids) {
  if (n < 1 || n > x.cols) throw Error("cuda sorted_prefix: n must be in [1, cols]");
  check_ids(rows, x.rows, "sorted_prefix: row");
  const size_t bytes = cuda::row_sort_scratch_bytes(x.cols);
  void* scratch = sort_scratch_.get(bytes);
  const size_t pitch = size_t(x.cols) * 4, width = size_t(n) * 4;
  for (size_t r0 = 0; r0 < rows.size(); r0 += cuda::kRowsPerSort) {
    const size_t m = std::min<size_t>(cuda::kRowsPerSort, rows.size() - r0);
    const int32_t* d_rows = put_ints({rows.subspan(r0, m)});
    const float* keys = nullptr;
    const int32_t* sorted = nullptr;
    {
      BMX_OP_TIME("sorted_prefix");
      cuda::launch_sort_rows(x, d_rows, int(m), scratch, bytes, &keys, &sorted, stream_);
    }
    BMX_CUDA(cudaMemcpy2DAsync(values + r0 * size_t(n), width, keys, pitch, width, m,
                               cudaMemcpyDeviceToHost, stream_));
    BMX_CUDA(cudaMemcpy2DAsync(ids + r0 * size_t(n), width, sorted, pitch, width, m,
                               cudaMemcpyDeviceToHost, stream_));
  }
  BMX_CUDA(cudaStreamSynchronize(stream_));
  op_timer_.drain();
}

void CudaBackend::draw_sorted_rows(const Tensor& x, std::span<const int32_t> rows,
                                   std::span<const SortedDraw> draws, int32_t* out) {
  if (draws.size() != rows.size()) throw Error("cuda draw_sorted_rows: one draw per row");
  check_ids(rows, x.rows, "draw_sorted_rows: row");
  if (rows.empty()) return;
  const size_t bytes = cuda::row_sort_scratch_bytes(x.cols);
  void* scratch = sort_scratch_.get(bytes);
  int32_t* d_out = static_cast<int32_t*>(small_out_.get(rows.size() * sizeof(int32_t)));
  for (size_t r0 = 0; r0 < rows.size(); r0 += cuda::kRowsPerSort) {
    const size_t m = std::min<size_t>(cuda::kRowsPerSort, rows.size() - r0);
    // One put per launch: the draws (8-byte aligned) and then the row ids.
    host_sample_.resize(m * sizeof(SortedDraw) + m * sizeof(int32_t));
    std::memcpy(host_sample_.data(), draws.data() + r0, m * sizeof(SortedDraw));
    std::memcpy(host_sample_.data() + m * sizeof(SortedDraw), rows.data() + r0, m * sizeof(int32_t));
    const char* d = static_cast<const char*>(staging_->put(host_sample_.data(), host_sample_.size(), stream_));
    const float* keys = nullptr;
    const int32_t* sorted = nullptr;
    BMX_OP_TIME("draw_sorted_rows");
    cuda::launch_sort_rows(x, reinterpret_cast<const int32_t*>(d + m * sizeof(SortedDraw)), int(m),
                           scratch, bytes, &keys, &sorted, stream_);
    cuda::launch_draw_sorted(keys, sorted, x.cols, int(m), reinterpret_cast<const SortedDraw*>(d),
                             d_out + r0, stream_);
  }
  BMX_CUDA(cudaMemcpyAsync(out, d_out, rows.size() * sizeof(int32_t), cudaMemcpyDeviceToHost, stream_));
  BMX_CUDA(cudaStreamSynchronize(stream_));
  op_timer_.drain();
}

void CudaBackend::pick_rows_to(const Tensor& x, std::span<const float> inv_temperature,
                               std::span<const double> uniform, int32_t* d) {
  if (int64_t(inv_temperature.size()) != x.rows || int64_t(uniform.size()) != x.rows)
    throw Error("cuda sample_rows: one temperature and one uniform per row");
  if (std::none_of(inv_temperature.begin(), inv_temperature.end(), [](float t) { return t > 0; })) {
    BMX_OP_TIME("argmax_rows");
    cuda::launch_argmax_rows(x, d, stream_);
    return;
  }
  // One staging put: the uniforms (8-byte aligned at its start), then the temperatures.
  const size_t n = size_t(x.rows);
  host_sample_.resize(n * (sizeof(double) + sizeof(float)));
  std::memcpy(host_sample_.data(), uniform.data(), n * sizeof(double));
  std::memcpy(host_sample_.data() + n * sizeof(double), inv_temperature.data(), n * sizeof(float));
  const char* d_in = static_cast<const char*>(staging_->put(host_sample_.data(), host_sample_.size(), stream_));
  BMX_OP_TIME("sample_rows");
  cuda::launch_sample_rows(x, reinterpret_cast<const float*>(d_in + n * sizeof(double)),
                           reinterpret_cast<const double*>(d_in), d, stream_);
}

}  // namespace batchmax::cuda
