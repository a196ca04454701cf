// The KV cache's two eviction paths through the whole model: host selection at commit
// (select_keep on host mirrors) and eviction without the host (Backend::evict per layer,
// right after that layer's attention, the host only setting counts). On the CPU backend,
// whose evict() is the host policies themselves, both must give bit-identical logits and
// keep the same positions in every (layer, head), for every policy that can run there,
// with sequences of different policies and budgets mixed in one batch. h2o runs on the
// backend only in a pool with slot mass (KVCacheConfig::slot_mass), checked the same way.
#include <gtest/gtest.h>

#include <cstdlib>
#include <random>

#include "backend/backend.h"
#include "kv/paged_kv_cache.h"
#include "model/model.h"
#include "model/presets.h"
#include "table_keeping_backend.h"

using namespace batchmax;

namespace {

struct PathRun {
  std::vector<std::vector<float>> logits;                  // per step
  std::vector<std::vector<std::vector<int32_t>>> positions;  // [seq][layer * heads + head]
  std::vector<bool> on_device;
};

// Two chunked prefills and then decode steps, all sequences in every step.
PathRun run_path(Model& model, Backend& be, const char* eviction,
        const std::vector<KVCompression>& comps, const std::vector<std::vector<int32_t>>& prompts,
        int decode_steps, bool slot_mass = false) {
  // Set for the whole run: the model's first forward sizes the eviction scratch by it.
  setenv("BATCHMAX_EVICTION", eviction, 1);
  const HParams& hp = model.hparams();
  KVCacheConfig kc;
  kc.n_layer = int(hp.n_layer);
  kc.n_kv_heads = int(hp.n_head_kv);
  kc.head_dim = int(hp.head_dim);
  kc.n_blocks = 4096;
  kc.slot_mass = slot_mass;
  kc.block_tables = be.keeps_block_tables();
  PagedKVCache kv(be, kc);
  PathRun out;
  const size_t n = comps.size();
  for (size_t i = 0; i < n; ++i) {
    EXPECT_TRUE(kv.add_sequence(int64_t(i), int64_t(prompts[i].size()) + decode_steps, comps[i]));
    out.on_device.push_back(kv.evicts_on_device(int64_t(i)));
  }
  std::vector<int64_t> done(n, 0);
  std::vector<int32_t> last(n, 0);
  const int64_t chunk = 48;
  for (int step = 0;; ++step) {
    std::vector<SeqBatch> batch;
    std::vector<int32_t> tokens(n);
    for (size_t i = 0; i < n; ++i) {
      SeqBatch b;
      b.seq_id = int64_t(i);
      b.first_pos = done[i];
      const int64_t plen = int64_t(prompts[i].size());
      StepPhase phase = StepPhase::Decode;
      if (done[i] < plen) {
        const int64_t c = std::min(chunk, plen - done[i]);
        b.tokens = std::span<const int32_t>(prompts[i].data() + done[i], size_t(c));
        phase = done[i] + c == plen ? StepPhase::LastPrefill : StepPhase::Prefill;
      } else {
        if (done[i] - plen >= decode_steps) continue;
        tokens[i] = last[i];
        b.tokens = std::span<const int32_t>(&tokens[i], 1);
      }
      b.want_logits = true;
      kv.prepare(b.seq_id, int64_t(b.tokens.size()), phase);
      batch.push_back(b);
    }
    if (batch.empty()) break;
    std::vector<float> lg = model.forward(batch, kv);
    const int64_t V = hp.n_vocab;
    for (size_t j = 0; j < batch.size(); ++j) {
      const size_t i = size_t(batch[j].seq_id);
      kv.commit(batch[j].seq_id);
      done[i] += int64_t(batch[j].tokens.size());
      int32_t best = 0;
      for (int64_t t = 1; t < V; ++t)
        if (lg[j * V + t] > lg[j * V + best]) best = int32_t(t);
      last[i] = best;
    }
    out.logits.push_back(std::move(lg));
  }
  for (size_t i = 0; i < n; ++i) {
    out.positions.emplace_back();
    for (int l = 0; l < kc.n_layer; ++l)
      for (int h = 0; h < kc.n_kv_heads; ++h)
        out.positions.back().push_back(kv.positions(int64_t(i), l, h));
  }
  unsetenv("BATCHMAX_EVICTION");
  return out;
}

// A sequence for every (policy, mode), budgets of budget0 + 0/16/32 and prompts of
// prompt0 + 0..3 x prompt_step random tokens, in that order (full mode: no policy).
void add_mix(std::initializer_list<const char*> policies, std::initializer_list<KVMode> modes,
             int64_t budget0, size_t prompt0, size_t prompt_step, uint32_t vocab,
             std::mt19937& rng, std::vector<KVCompression>& comps,
             std::vector<std::vector<int32_t>>& prompts) {
  int k = 0;
  for (const char* pol : policies)
    for (KVMode mode : modes) {
      KVCompression c;
      c.mode = mode;
      c.policy = mode == KVMode::Full ? "none" : pol;
      c.params.budget = budget0 + 16 * (k % 3);
      c.params.chunk = 48;
      c.params.slack = 8;
      c.params.obs_window = 16;
      c.params.pool_kernel = 5;
      c.params.sinks = 4;
      c.params.window = 16;
      c.params.seed = 99;
      comps.push_back(c);
      std::vector<int32_t> p(prompt0 + prompt_step * size_t(k % 4));
      for (int32_t& t : p) t = int32_t(rng() % vocab);
      prompts.push_back(std::move(p));
      ++k;
    }
}

}  // namespace

TEST(DeviceEviction, SameLogitsAndKeptPositionsAsHostSelection) {
  HParams hp = preset_hparams("tiny");
  auto be = make_cpu_backend();
  Model model(hp, *be, 7);
  std::mt19937 rng(11);
  std::vector<KVCompression> comps;
  std::vector<std::vector<int32_t>> prompts;
  add_mix({"snapkv", "tova", "window", "knorm", "random", "h2o"}, {KVMode::BatchMax, KVMode::PostPrefill},
          64, 150, 37, uint32_t(hp.n_vocab), rng, comps, prompts);
  const PathRun host = run_path(model, *be, "host", comps, prompts, 30);
  // This model's workspace has no eviction scratch (sized under "host"): the cache
  // scores and evicts layer by layer with a scratch of its own. A model first run under
  // "device" has one: every layer is scored into it and evicted in one call at the end.
  const PathRun by_layer = run_path(model, *be, "device", comps, prompts, 30);
  Model model_dev(hp, *be, 7);
  const PathRun dev = run_path(model_dev, *be, "device", comps, prompts, 30);
  ASSERT_EQ(by_layer.logits, dev.logits);
  ASSERT_EQ(by_layer.positions, dev.positions);
  for (size_t i = 0; i < comps.size(); ++i) {
    EXPECT_FALSE(host.on_device[i]);
    EXPECT_EQ(dev.on_device[i], comps[i].policy != "h2o") << comps[i].policy;  // h2o keeps state
  }
  // The pool with slot mass: h2o accumulates and evicts on the backend too.
  Model model_mass(hp, *be, 7);
  const PathRun mass = run_path(model_mass, *be, "device", comps, prompts, 30, true);
  for (size_t i = 0; i < comps.size(); ++i) EXPECT_TRUE(mass.on_device[i]) << comps[i].policy;
  for (const PathRun* run : {&dev, &mass}) {
    const char* what = run == &dev ? "device" : "device with slot mass";
    ASSERT_EQ(host.logits.size(), run->logits.size()) << what;
    for (size_t s = 0; s < host.logits.size(); ++s)
      ASSERT_EQ(host.logits[s], run->logits[s]) << what << ": step " << s;
    for (size_t i = 0; i < comps.size(); ++i)
      for (size_t lh = 0; lh < host.positions[i].size(); ++lh) {
        EXPECT_EQ(host.positions[i][lh], run->positions[i][lh])
            << what << ": " << comps[i].policy << " " << kv_mode_name(comps[i].mode)
            << " layer*heads+head " << lh;
        const int64_t n = int64_t(host.positions[i][lh].size());
        EXPECT_GE(n, comps[i].params.budget);  // prompts are longer than every budget
        EXPECT_LT(n, comps[i].params.budget + comps[i].params.slack);
      }
  }
}

// Block tables kept on the backend (what the CUDA backend does): the cache then names
// new entries' slots by their table place and sends each block id once. On the CPU,
// whose attention still reads the host tables, every logit and kept position must be
// the same as without them, on both eviction paths and with slot mass.
TEST(DeviceEviction, BlockTablesOnTheBackendChangeNothing) {
  HParams hp = preset_hparams("tiny");
  auto be = make_cpu_backend();
  TableKeepingBackend tb;
  std::mt19937 rng(5);
  std::vector<KVCompression> comps;
  std::vector<std::vector<int32_t>> prompts;
  add_mix({"snapkv", "tova", "h2o", "window"}, {KVMode::BatchMax, KVMode::PostPrefill, KVMode::Full},
          48, 130, 29, uint32_t(hp.n_vocab), rng, comps, prompts);
  for (const char* path : {"device", "host"})
    for (bool mass : {false, true}) {
      Model plain(hp, *be, 3), kept(hp, tb, 3);
      const int64_t writes = tb.writes;
      const PathRun a = run_path(plain, *be, path, comps, prompts, 24, mass);
      const PathRun b = run_path(kept, tb, path, comps, prompts, 24, mass);
      EXPECT_GT(tb.writes, writes) << "the cache wrote its tables";
      ASSERT_EQ(a.logits.size(), b.logits.size());
      for (size_t s = 0; s < a.logits.size(); ++s)
        ASSERT_EQ(a.logits[s], b.logits[s]) << path << (mass ? " with slot mass" : "") << ": step " << s;
      EXPECT_EQ(a.positions, b.positions) << path;
    }
}
