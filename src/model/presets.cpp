#include "model/presets.h"

#include "core/error.h"

namespace batchmax {
namespace {

struct Preset {
  const char* name;
  HParams hp;
};

HParams llama(const char* name, int64_t vocab, int64_t layers, int64_t embd, int64_t heads,
              int64_t kv_heads, int64_t ff, float theta, int64_t ctx, bool tied) {
  HParams hp;
  hp.arch = "llama";
  hp.name = name;
  hp.n_vocab = vocab;
  hp.n_layer = layers;
  hp.n_embd = embd;
  hp.n_head = heads;
  hp.n_head_kv = kv_heads;
  hp.head_dim = embd / heads;
  hp.rope_dim = hp.head_dim;
  hp.n_ff = ff;
  hp.rope_theta = theta;
  hp.n_ctx_train = ctx;
  hp.tied_embeddings = tied;
  return hp;
}

// Llama 3.1 / 3.2 frequency scaling ("llama3" rope type).
HParams llama3_scaled(HParams hp, float factor) {
  hp.rope_scale_factor = factor;
  hp.rope_low_freq_factor = 1;
  hp.rope_high_freq_factor = 4;
  hp.rope_orig_ctx = 8192;
  return hp;
}

const std::vector<Preset>& presets() {
  static const std::vector<Preset> p = [] {
    std::vector<Preset> v;
    v.push_back({"llama3-8b", llama3_scaled(llama("Llama-3.1-8B (dummy weights)", 128256, 32,
                                                  4096, 32, 8, 14336, 500000, 131072, false),
                                            8)});
    v.push_back({"llama3-1b", llama3_scaled(llama("Llama-3.2-1B (dummy weights)", 128256, 16,
                                                  2048, 32, 8, 8192, 500000, 131072, true),
                                            32)});
    v.push_back({"smollm2-135m-shape", llama("SmolLM2-135M shape (dummy weights)", 49152, 30,
                                             576, 9, 3, 1536, 100000, 8192, true)});
    HParams q = llama("Qwen2-7B (dummy weights)", 152064, 28, 3584, 28, 4, 18944, 1000000,
                      32768, false);
    q.arch = "qwen2";
    q.qkv_bias = true;
    q.rms_eps = 1e-6f;
    v.push_back({"qwen2-7b", q});
    // Small enough for unit tests: every op runs, in milliseconds.
    v.push_back({"tiny", llama("tiny (dummy weights)", 512, 2, 64, 4, 2, 128, 10000, 4096, false)});
    return v;
  }();
  return p;
}

}  // namespace

const std::vector<std::string>& preset_names() {
  static const std::vector<std::string> names = [] {
    std::vector<std::string> n;
    for (const Preset& p : presets()) n.push_back(p.name);
    return n;
  }();
  return names;
}

HParams preset_hparams(const std::string& name) {
  for (const Preset& p : presets())
    if (name == p.name) return p.hp;
  std::string known;
  for (const auto& n : preset_names()) known += (known.empty() ? "" : ", ") + n;
  throw Error("unknown dummy-weights preset '" + name + "' (known: " + known + ")");
}

}  // namespace batchmax
