// The Batch-Max invariant behind chunk-by-chunk eviction, on the real model: for a
// policy whose score of an entry does not depend on when it is computed (knorm: the
// key's norm), keeping the top entries chunk by chunk keeps exactly the entries that
// one compression after the whole prompt keeps. Layer 0's keys depend only on the
// tokens and positions, so its kept positions must be identical in both modes.
#include <gtest/gtest.h>

#include <fstream>
#include <sstream>

#include "backend/backend.h"
#include "format/gguf_reader.h"
#include "kv/paged_kv_cache.h"
#include "model/model.h"
#include "test_support.h"
#include "tokenizer/tokenizer.h"

using namespace batchmax;

namespace {

std::vector<int32_t> layer0_after_prefill(Model& model, Backend& be, KVMode mode,
                                          const std::vector<int32_t>& prompt, int64_t chunk,
                                          int head) {
  const HParams& hp = model.hparams();
  KVCacheConfig kc;
  kc.n_layer = int(hp.n_layer);
  kc.n_kv_heads = int(hp.n_head_kv);
  kc.head_dim = int(hp.head_dim);
  kc.n_blocks = 8192;
  PagedKVCache kv(be, kc);
  KVCompression comp;
  comp.mode = mode;
  comp.policy = "knorm";
  comp.params.budget = 96;
  comp.params.chunk = chunk;
  comp.params.sinks = 4;
  comp.params.window = 8;
  EXPECT_TRUE(kv.add_sequence(1, int64_t(prompt.size()), comp));
  for (int64_t done = 0; done < int64_t(prompt.size()); done += chunk) {
    const int64_t n = std::min<int64_t>(chunk, int64_t(prompt.size()) - done);
    const bool last = done + n == int64_t(prompt.size());
    kv.prepare(1, n, last ? StepPhase::LastPrefill : StepPhase::Prefill);
    SeqBatch b;
    b.seq_id = 1;
    b.tokens = std::span<const int32_t>(prompt.data() + done, size_t(n));
    b.first_pos = done;
    b.want_logits = last;
    model.forward(std::span<const SeqBatch>(&b, 1), kv);
    kv.commit(1);
    if (mode == KVMode::BatchMax) {
      EXPECT_LE(kv.n_entries(1, 0, head), 96 + chunk);
    }
  }
  EXPECT_EQ(kv.n_entries(1, 0, head), 96);
  return kv.positions(1, 0, head);
}

}  // namespace

TEST(ChunkedEviction, KNormKeepsTheSameLayer0EntriesChunkByChunkAsAfterPrefill) {
  BATCHMAX_REQUIRE_SMOLLM2();
  std::shared_ptr<const gguf::File> file = gguf::File::open(test::smollm2_path());
  auto tok = Tokenizer::from_gguf(*file);
  std::ifstream f(test::source_dir() + "/scripts/reference/texts/bread.txt");
  std::stringstream ss;
  ss << f.rdbuf();
  auto prompt = tok->encode(ss.str(), true, false);
  prompt.resize(400);
  auto be = make_cpu_backend();
  Model model(file, *be);
  for (int head = 0; head < int(model.hparams().n_head_kv); ++head) {
    auto once = layer0_after_prefill(model, *be, KVMode::PostPrefill, prompt, 400, head);
    auto chunked = layer0_after_prefill(model, *be, KVMode::BatchMax, prompt, 64, head);
    EXPECT_EQ(chunked, once) << "KV head " << head;
  }
}
