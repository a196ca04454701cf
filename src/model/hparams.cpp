#include "model/hparams.h"

#include <cmath>

#include "core/error.h"
#include "format/gguf_reader.h"

namespace batchmax {

const std::vector<std::string>& supported_architectures() {
  static const std::vector<std::string> archs = {"llama", "qwen2"};
  return archs;
}

namespace {

std::string join(const std::vector<std::string>& v) {
  std::string out;
  for (const auto& s : v) out += (out.empty() ? "" : ", ") + s;
  return out;
}

// Some files store per-layer values as arrays; we accept them only when uniform.
int64_t read_uniform_int(const gguf::File& f, const std::string& key) {
  const gguf::Value& v = f.require(key);
  if (v.type != gguf::ValueType::ARRAY) return v.as_int();
  const auto& items = v.as_array().items;
  if (items.empty()) throw Error(f.path() + ": metadata key '" + key + "' is an empty array");
  int64_t first = items[0].as_int();
  for (const auto& it : items)
    if (it.as_int() != first)
      throw Error(f.path() + ": metadata key '" + key +
                  "' differs between layers, which this build does not support");
  return first;
}

void check_positive(const gguf::File& f, const std::string& key, int64_t v, int64_t max) {
  if (v <= 0 || v > max)
    throw Error(f.path() + ": metadata key '" + key + "' = " + std::to_string(v) +
                " is out of range (1.." + std::to_string(max) + ")");
}

}  // namespace

HParams read_hparams(const gguf::File& f) {
  HParams hp;
  hp.arch = f.get_string("general.architecture");
  bool known = false;
  for (const auto& a : supported_architectures()) known |= (a == hp.arch);
  if (!known)
    throw Error(f.path() + ": unsupported architecture '" + hp.arch +
                "' (supported: " + join(supported_architectures()) + ")");
  hp.name = f.get_string_opt("general.name").value_or("");
  const std::string a = hp.arch + ".";

  hp.n_ctx_train = f.get_int(a + "context_length");
  hp.n_embd = f.get_int(a + "embedding_length");
  hp.n_layer = f.get_int(a + "block_count");
  hp.n_ff = read_uniform_int(f, a + "feed_forward_length");
  hp.n_head = read_uniform_int(f, a + "attention.head_count");
  hp.n_head_kv = f.has(a + "attention.head_count_kv") ? read_uniform_int(f, a + "attention.head_count_kv")
                                                     : hp.n_head;
  check_positive(f, a + "context_length", hp.n_ctx_train, int64_t(1) << 24);
  check_positive(f, a + "embedding_length", hp.n_embd, 1 << 16);
  check_positive(f, a + "block_count", hp.n_layer, 1024);
  check_positive(f, a + "feed_forward_length", hp.n_ff, 1 << 18);
  check_positive(f, a + "attention.head_count", hp.n_head, 1024);
  check_positive(f, a + "attention.head_count_kv", hp.n_head_kv, hp.n_head);
  if (hp.n_head % hp.n_head_kv != 0)
    throw Error(f.path() + ": attention.head_count (" + std::to_string(hp.n_head) +
                ") is not a multiple of attention.head_count_kv (" +
                std::to_string(hp.n_head_kv) + ")");
  hp.head_dim = f.get_int_opt(a + "attention.key_length").value_or(hp.n_embd / hp.n_head);
  check_positive(f, a + "attention.key_length", hp.head_dim, 1024);
  if (hp.head_dim % 2 != 0)
    throw Error(f.path() + ": head dimension " + std::to_string(hp.head_dim) + " is odd");
  if (auto vl = f.get_int_opt(a + "attention.value_length"); vl && *vl != hp.head_dim)
    throw Error(f.path() + ": attention.value_length differs from key_length (unsupported)");

  hp.rms_eps = float(f.get_float_opt(a + "attention.layer_norm_rms_epsilon").value_or(1e-5));
  if (!(hp.rms_eps > 0) || !std::isfinite(hp.rms_eps))
    throw Error(f.path() + ": attention.layer_norm_rms_epsilon must be positive");
  hp.rope_theta = float(f.get_float_opt(a + "rope.freq_base").value_or(10000.0));
  if (!(hp.rope_theta > 1) || !std::isfinite(hp.rope_theta))
    throw Error(f.path() + ": rope.freq_base must be > 1");
  hp.rope_dim = f.get_int_opt(a + "rope.dimension_count").value_or(hp.head_dim);
  if (hp.rope_dim <= 0 || hp.rope_dim > hp.head_dim || hp.rope_dim % 2 != 0)
    throw Error(f.path() + ": rope.dimension_count " + std::to_string(hp.rope_dim) +
                " does not fit head dimension " + std::to_string(hp.head_dim));

  // Llama-3.1 frequency scaling, when given as metadata (files may instead carry the
  // precomputed factors as the tensor rope_freqs.weight; the model reads that).
  if (auto type = f.get_string_opt(a + "rope.scaling.type");
      type && *type == "llama3" && !f.find_tensor("rope_freqs.weight")) {
    // No silent defaults: a wrong factor would quietly change every long-context answer.
    hp.rope_scale_factor = float(f.get_float(a + "rope.scaling.factor"));
    hp.rope_low_freq_factor = float(f.get_float_opt(a + "rope.scaling.low_freq_factor").value_or(1.0));
    hp.rope_high_freq_factor = float(f.get_float_opt(a + "rope.scaling.high_freq_factor").value_or(4.0));
    hp.rope_orig_ctx = f.get_int(a + "rope.scaling.original_context_length");
    if (!(hp.rope_scale_factor >= 1) || hp.rope_orig_ctx <= 0 ||
        !(hp.rope_high_freq_factor > hp.rope_low_freq_factor))
      throw Error(f.path() + ": llama3 rope scaling needs factor >= 1, original_context_length > 0 "
                  "and high_freq_factor > low_freq_factor");
  }

  hp.qkv_bias = (hp.arch == "qwen2");
  hp.tied_embeddings = (f.find_tensor("output.weight") == nullptr);

  const gguf::TensorInfo& emb = f.require_tensor("token_embd.weight");
  if (emb.dims.size() != 2 || emb.dims[0] != hp.n_embd)
    throw Error(f.path() + ": tensor 'token_embd.weight' has row length " +
                std::to_string(emb.dims.empty() ? 0 : emb.dims[0]) + ", expected n_embd " +
                std::to_string(hp.n_embd));
  hp.n_vocab = emb.dims[1];
  if (auto v = f.get_int_opt(a + "vocab_size"); v && *v != hp.n_vocab)
    throw Error(f.path() + ": " + a + "vocab_size (" + std::to_string(*v) +
                ") differs from token_embd.weight rows (" + std::to_string(hp.n_vocab) + ")");
  return hp;
}

}  // namespace batchmax
