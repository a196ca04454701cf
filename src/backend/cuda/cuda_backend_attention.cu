// CudaBackend members: attention (our kernels and cuDNN), scores, mass, eviction.
#include "backend/cuda/cuda_backend_impl.cuh"

namespace batchmax::cuda {

void CudaBackend::attention(const Tensor& q, std::span<const AttentionSeq> seqs,
                            const AttentionParams& p, const KVPoolView& pool, Tensor& out) {
  BMX_OP_TIME(attention_op_name(seqs));
  lse_memo_.clear();
  const cuda::AttentionTiles t = cuda::attention_tiles(p, q.type, pool.type);
  const bool flash = cuda::flash_attention_supported(q.type, pool.type, p.head_dim);
  float* lse = flash ? static_cast<float*>(lse_.get(size_t(q.rows) * p.n_heads * sizeof(float)))
                     : nullptr;
  const std::vector<char>* to_cudnn = pick_cudnn(q, seqs, p, pool, out);
  cuda::AttentionLaunch a = pack_attention(q, seqs, p, pool, t.small, t.big, t.small, to_cudnn);
  const bool ours = a.n_small + a.n_big > 0;
  if (ours) {
    if (q.type != out.type || out.rows != q.rows || out.cols != q.cols)
      throw Error("cuda attention: out must match q");
    a.meta = put_attention_work();  // before cuDNN's put: see run_cudnn
  }
  bool cudnn_ran = false;
  if (to_cudnn) {
    cudnn_ran = run_cudnn(q, seqs, p, pool, out, lse);
    if (!cudnn_ran) {  // no plan for this shape: our kernel takes every sequence
      a = pack_attention(q, seqs, p, pool, t.small, t.big, t.small, nullptr);
      a.meta = put_attention_work();
    }
  }
  if (a.n_small + a.n_big > 0) {
    a.scratch = [this](size_t n) { return attn_scratch_.get(n); };
    if (flash) {
      a.lse = lse;
      a.lse_stride = p.n_heads;
    }
    cuda::launch_attention(q, a, p, pool, out, stream_);
  }
  if (cudnn_ran) BMX_CUDA(cudaStreamWaitEvent(stream_, cudnn_join_, 0));
  if (flash && (cudnn_ran || a.n_small + a.n_big > 0))
    lse_memo_.remember(q.data, q.row_stride, seqs);
}

const std::vector<char>* CudaBackend::pick_cudnn(const Tensor& q,
                                                 std::span<const AttentionSeq> seqs,
                                                 const AttentionParams& p, const KVPoolView& pool,
                                                 const Tensor& out) {
  if (!cudnn_ || !p.queries_newest || q.type != GgmlType::BF16 || pool.type != GgmlType::BF16 ||
      out.type != GgmlType::BF16 || out.rows != q.rows || out.cols != q.cols ||
      p.head_dim % 8 != 0 || p.head_dim > 256 || p.n_kv_heads <= 0 || p.n_heads % p.n_kv_heads)
    return nullptr;
  to_cudnn_.assign(seqs.size(), 0);
  bool any = false;
  for (size_t i = 0; i < seqs.size(); ++i)
    if (seqs[i].n_q >= cudnn_min_rows_) to_cudnn_[i] = any = true;
  return any ? &to_cudnn_ : nullptr;
}

bool CudaBackend::run_cudnn(const Tensor& q, std::span<const AttentionSeq> seqs,
                            const AttentionParams& p, const KVPoolView& pool, Tensor& out,
                            float* lse) {
  sdpa_entries_.clear();
  for (size_t i = 0; i < seqs.size(); ++i) {
    if (!to_cudnn_[i]) continue;
    const AttentionSeq& s = seqs[i];
    for (int h = 0; h < p.n_kv_heads; ++h)
      sdpa_entries_.push_back({int32_t(s.q_begin), int32_t(s.n_q), h, s.head_entries[h],
                               s.head_blocks[h]});
  }
  cuda::SdpaCall c;
  c.q = q.data;
  c.q_row_stride = int64_t(q.row_stride / 2);
  c.out = out.data;
  c.out_row_stride = int64_t(out.row_stride / 2);
  c.k_pool = pool.k;
  c.v_pool = pool.v;
  c.n_blocks = pool.n_blocks;
  c.block_tokens = pool.block_tokens;
  c.n_heads = p.n_heads;
  c.n_kv_heads = p.n_kv_heads;
  c.head_dim = p.head_dim;
  c.scale = p.scale;
  c.lse = lse;
  c.lse_stride = p.n_heads;
  c.entries = sdpa_entries_;
  // cuDNN runs on a side stream, next to our kernel's decode rows on stream_ (one after
  // the other, each leaves most SMs idle). Its metadata goes through staging on stream_
  // (so the fork follows the copy), and it is the call's last put: the join that
  // attention() queues next on stream_ then precedes any later put that could recycle
  // the staging half cuDNN reads.
  auto put = [this](std::span<const int32_t> v) {
    const void* d = staging_->put(v.data(), v.size() * sizeof(int32_t), stream_);
    BMX_CUDA(cudaEventRecord(cudnn_fork_, stream_));
    BMX_CUDA(cudaStreamWaitEvent(cudnn_stream_, cudnn_fork_, 0));
    return static_cast<const int32_t*>(d);
  };
  const bool ran = cudnn_->run(c, put, [this](size_t n) { return cudnn_scratch_.get(n); });
  if (ran) BMX_CUDA(cudaEventRecord(cudnn_join_, cudnn_stream_));
  return ran;
}

void CudaBackend::attention_scores(const Tensor& q, std::span<const AttentionSeq> seqs,
                                   const AttentionParams& p, const KVPoolView& pool,
                                   std::span<float* const> out, int64_t out_stride) {
  if (out.size() != seqs.size()) throw Error("cuda attention_scores: one output per sequence");
  for (const AttentionSeq& a : seqs)
    for (int32_t e : a.head_entries)
      if (e > out_stride) throw Error("cuda attention_scores: out_stride below the entries");
  // All work items in the first list.
  const int tile = cuda::attention_scores_tile(q.type, pool.type, p.head_dim);
  cuda::AttentionLaunch a = pack_attention(q, seqs, p, pool, tile, tile, INT64_MAX);
  if (a.n_small == 0) return;
  a.scratch = [this](size_t n) { return scores_part_.get(n); };
  const size_t per_seq = size_t(p.n_kv_heads) * out_stride;
  float* d_out = static_cast<float*>(scores_out_.get(std::max<size_t>(seqs.size() * per_seq, 1) * 4));
  BMX_CUDA(cudaMemsetAsync(d_out, 0, seqs.size() * per_seq * 4, stream_));
  a.meta = put_attention_work();
  use_lse(q, seqs, p, a);
  cuda::launch_attention_scores(q, a, p, pool, d_out, out_stride, stream_);
  host_scores_.resize(seqs.size() * per_seq);
  BMX_CUDA(cudaMemcpyAsync(host_scores_.data(), d_out, host_scores_.size() * 4,
                           cudaMemcpyDeviceToHost, stream_));
  BMX_CUDA(cudaStreamSynchronize(stream_));
  for (size_t i = 0; i < seqs.size(); ++i)
    for (int h = 0; h < p.n_kv_heads; ++h) {
      const float* src = host_scores_.data() + i * per_seq + size_t(h) * out_stride;
      std::copy(src, src + seqs[i].head_entries[h], out[i] + size_t(h) * out_stride);
    }
}

void CudaBackend::kv_positions(const KVPoolView& pool, std::span<const int32_t> blocks,
                               int64_t n_entries, int32_t* out) {
  if (n_entries > int64_t(blocks.size()) * pool.block_tokens)
    throw Error("cuda kv_positions: more entries than the blocks hold");
  check_ids(blocks, pool.n_blocks, "kv_positions: block");
  if (n_entries == 0) return;
  int32_t* d = static_cast<int32_t*>(small_out_.get(size_t(n_entries) * 4));
  cuda::launch_kv_positions(pool, put_ints({blocks}), n_entries, d, stream_);
  BMX_CUDA(cudaMemcpyAsync(out, d, size_t(n_entries) * 4, cudaMemcpyDeviceToHost, stream_));
  BMX_CUDA(cudaStreamSynchronize(stream_));
}

void CudaBackend::attention_scores_to(const Tensor& q, std::span<const AttentionSeq> seqs,
                                      const AttentionParams& p, const KVPoolView& pool, Tensor& out) {
  const int64_t rows = int64_t(seqs.size()) * p.n_kv_heads;
  if (out.type != GgmlType::F32 || out.rows < rows || out.row_stride != size_t(out.cols) * 4)
    throw Error("cuda attention_scores_to: out must be contiguous F32 with a row per (sequence, KV head)");
  for (const AttentionSeq& a : seqs)
    for (int32_t e : a.head_entries)
      if (e > out.cols) throw Error("cuda attention_scores_to: out has fewer columns than entries");
  if (rows == 0) return;
  BMX_OP_TIME("attention_scores_to");
  const int tile = cuda::attention_scores_tile(q.type, pool.type, p.head_dim);
  cuda::AttentionLaunch a = pack_attention(q, seqs, p, pool, tile, tile, INT64_MAX);
  use_lse(q, seqs, p, a);
  // Decode rows (one work item per sequence and KV head, sums memoised): the kernel
  // writes whole rows, so no memset sits between the attention and it (a memset ends
  // the chain of programmatic launches, and was ~3 us of a layer with its gaps).
  a.fill_rows = a.n_small > 0 && cuda::attention_scores_fill_rows(q, a, p, pool);
  if (!a.fill_rows) BMX_CUDA(cudaMemsetAsync(out.data, 0, size_t(rows) * out.row_stride, stream_));
  if (a.n_small == 0) return;
  a.scratch = [this](size_t n) { return scores_part_.get(n); };
  a.meta = put_attention_work();
  cuda::launch_attention_scores(q, a, p, pool, out.f32(), out.cols, stream_);
}

void CudaBackend::accumulate_mass(const Tensor& q, std::span<const AttentionSeq> seqs,
                                  const AttentionParams& p, KVPoolView& pool) {
  if (!pool.mass) throw Error("cuda accumulate_mass: the pool has no slot mass");
  int64_t stride = 1;
  for (const AttentionSeq& a : seqs)
    for (int32_t e : a.head_entries) stride = std::max<int64_t>(stride, e);
  const int64_t rows = int64_t(seqs.size()) * p.n_kv_heads;
  if (rows == 0) return;
  if (rows > INT32_MAX) throw Error("cuda accumulate_mass: too many sequences");
  Tensor mass;
  mass.type = GgmlType::F32;
  mass.rows = rows;
  mass.cols = stride;
  mass.row_stride = size_t(stride) * 4;
  mass.data = scores_out_.get(size_t(rows) * mass.row_stride);
  attention_scores_to(q, seqs, p, pool, mass);  // checks the tables; zeroes then scores
  BMX_OP_TIME("accumulate_mass");
  std::vector<int32_t>& m = host_ints_;
  m.assign(size_t(2 * rows), 0);
  for (size_t i = 0; i < seqs.size(); ++i)
    for (int h = 0; h < p.n_kv_heads; ++h) {
      int32_t* rec = m.data() + 2 * (i * size_t(p.n_kv_heads) + size_t(h));
      rec[0] = int32_t(m.size());
      rec[1] = seqs[i].head_entries[size_t(h)];
      const auto& b = seqs[i].head_blocks[size_t(h)];
      m.insert(m.end(), b.begin(), b.end());
    }
  if (m.size() > size_t(INT32_MAX)) throw Error("cuda accumulate_mass: metadata too large");
  cuda::launch_add_mass(put_packed(), int(rows), mass.f32(), stride, pool, stream_);
}

void CudaBackend::evict(std::span<const EvictTask> tasks, const Tensor* mass, KVPoolView& pool) {
  // Launches of at most kEvictKeysPerLaunch entries (the reserved key scratch).
  size_t begin = 0;
  for (size_t end : evict_launch_ends(tasks, cuda::kEvictKeysPerLaunch)) {
    const EvictWork w = evict_packer_.pack(tasks.subspan(begin, end - begin), pool, mass);
    begin = end;
    uint32_t* keys = static_cast<uint32_t*>(evict_keys_.get(size_t(w.keys) * 4));
    const std::span<const int32_t> m = evict_packer_.meta();
    const int32_t* d = static_cast<const int32_t*>(
        staging_->put(m.data(), m.size() * sizeof(int32_t), stream_));
    BMX_OP_TIME("evict");
    cuda::launch_evict(d, w.n_tasks, mass ? mass->f32() : nullptr,
                       mass ? int64_t(mass->row_stride / 4) : 0, keys, pool, stream_);
  }
}

void CudaBackend::key_norms(const KVPoolView& pool, std::span<const int32_t> blocks,
                            int64_t n_entries, float* out) {
  if (n_entries > int64_t(blocks.size()) * pool.block_tokens)
    throw Error("cuda key_norms: more entries than the blocks hold");
  check_ids(blocks, pool.n_blocks, "key_norms: block");
  if (n_entries == 0) return;
  float* d_out = static_cast<float*>(scores_out_.get(size_t(n_entries) * 4));
  cuda::launch_key_norms(pool, put_ints({blocks}), n_entries, d_out, stream_);
  BMX_CUDA(cudaMemcpyAsync(out, d_out, size_t(n_entries) * 4, cudaMemcpyDeviceToHost, stream_));
  BMX_CUDA(cudaStreamSynchronize(stream_));
}

void CudaBackend::use_lse(const Tensor& q, std::span<const AttentionSeq> seqs,
                          const AttentionParams& p, cuda::AttentionLaunch& a) {
  if (!cuda::flash_attention_supported(q.type, GgmlType::BF16, p.head_dim) || scores_two_pass() ||
      !lse_memo_.covers(q.data, q.row_stride, seqs))
    return;
  a.lse = static_cast<float*>(lse_.get(0));
  a.lse_stride = p.n_heads;
}

}  // namespace batchmax::cuda
