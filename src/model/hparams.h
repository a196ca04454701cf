#pragma once
// Hyper-parameters of a decoder-only transformer, read from GGUF metadata
// ("<arch>.block_count" and friends) and checked for consistency.
#include <cstdint>
#include <string>
#include <vector>

namespace batchmax {
namespace gguf { class File; }

struct HParams {
  std::string arch;            // "llama" or "qwen2"
  std::string name;            // general.name, if any
  int64_t n_vocab = 0;
  int64_t n_ctx_train = 0;     // context length the model was trained for
  int64_t n_embd = 0;
  int64_t n_layer = 0;
  int64_t n_head = 0;
  int64_t n_head_kv = 0;
  int64_t head_dim = 0;        // n_embd / n_head unless the file says otherwise
  int64_t n_ff = 0;
  float rms_eps = 1e-5f;
  float rope_theta = 10000.0f;
  int64_t rope_dim = 0;        // rotated dims per head
  // Llama-3 frequency scaling ("llama3" rope type); factor 0 when absent
  float rope_scale_factor = 0, rope_low_freq_factor = 1, rope_high_freq_factor = 4;
  int64_t rope_orig_ctx = 0;
  bool qkv_bias = false;       // qwen2
  bool tied_embeddings = false;  // no output.weight: the lm head is token_embd

  int64_t n_embd_kv() const { return n_head_kv * head_dim; }
  // Bytes of K and V for one token, all layers, at `bytes_per_elem` per element.
  int64_t kv_bytes_per_token(int bytes_per_elem) const {
    return 2 * n_layer * n_embd_kv() * bytes_per_elem;
  }
};

// Architectures this build can run, for error messages and `batchmax info`.
const std::vector<std::string>& supported_architectures();

// Throws batchmax::Error naming the key, or listing supported architectures.
HParams read_hparams(const gguf::File& file);

}  // namespace batchmax
