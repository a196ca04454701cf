#pragma once
// The forward pass of a Llama-family model, written against the Backend interface.
// It reads and writes the KV cache only through the KVCache interface.
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "backend/backend.h"
#include "model/hparams.h"

namespace batchmax {
namespace gguf { class File; }
class KVCache;

// One sequence's tokens in a forward step: a prefill chunk or one decode token.
struct SeqBatch {
  int64_t seq_id = 0;
  std::span<const int32_t> tokens;
  int64_t first_pos = 0;       // position of tokens[0]
  bool want_logits = false;    // logits of the last token of this chunk
  bool all_logits = false;     // logits of every token of this chunk (perplexity)
  // With want_logits (and not all_logits): only a token is wanted from that row, picked
  // where the logits are (Backend::sample_rows) and read from Model::picked_tokens(): the
  // argmax when inv_temperature <= 0 (greedy), else a draw at that temperature over the
  // whole vocabulary with the uniform the request's sampler drew (backend/row_sampling.h).
  bool token_only = false;
  float inv_temperature = 0;
  double uniform = 0;
  // With want_logits (and neither all_logits nor token_only): top-k / top-p sampling at
  // inv_temperature. The row's best top_candidates_k entries (and its whole mass) come
  // back in Model::candidates(); where they do not decide the draw (candidates_decide
  // with sample_top_k, sample_top_p), the first kSortedPrefix of the sorted row, and
  // where those do not either, the token the backend draws over the whole sorted row
  // with `uniform` (the request's sampler draws it for every such row).
  int top_candidates_k = 0;
  int sample_top_k = 0;
  float sample_top_p = 1;
  // >= 0 (a one-token decode row, steps in flight): the token is pick `pick_index` of
  // StepPicks::read_set, still on the backend; tokens[0] is then only a placeholder.
  int32_t pick_index = -1;
};

// Steps in flight (EngineOptions::overlap_steps): where the rows with
// SeqBatch::pick_index find the previous step's picks, and where this step's stay.
struct StepPicks {
  int read_set = -1;   // the pick set pick_index rows read (-1: no such row)
  // >= 0: token_only rows' picks stay in this set on the backend (Backend::fetch_picks
  // brings them back; picked_tokens() is empty), nothing waits for the step to end, and
  // every want_logits row must be token_only.
  int write_set = -1;
};

struct ModelWeights;

class Model {
 public:
  // Binds the GGUF tensors to the backend; throws naming a missing or misshaped tensor.
  Model(std::shared_ptr<const gguf::File> file, Backend& backend);
  // Dummy weights of the shape `hp` (model/presets.h), generated on the backend from
  // `seed`: matrices in the backend's activation type, norm weights 1, scaled so
  // activations stay finite through every layer. For throughput runs; no file.
  Model(const HParams& hp, Backend& backend, uint64_t seed);
  ~Model();
  const HParams& hparams() const { return hp_; }
  bool has_file() const { return file_ != nullptr; }
  const gguf::File& file() const { return *file_; }  // only when has_file()

  // Runs one step over all sequences' tokens; returns logits on the host, n_vocab per
  // row, in batch order: every row of a sequence with all_logits, else its last row
  // when want_logits and not token_only.
  std::vector<float> forward(std::span<const SeqBatch> batch, KVCache& kv,
                             const StepPicks& picks = {});
  // After forward(): the token picked from each token_only row, in batch order.
  std::span<const int32_t> picked_tokens() const { return picked_; }
  // After forward(): each top_candidates_k row's candidates, in batch order.
  struct RowCandidates {
    std::vector<float> values;  // the row's best, by value then index
    std::vector<int32_t> ids;
    double whole_mass = 0;      // 0 for top-k rows, whose draw does not need it
    // >= 0: the token, drawn by the backend over the whole sorted row with the row's
    // SeqBatch::uniform, where even kSortedPrefix entries did not decide (a wide nucleus)
    int32_t token = -1;
  };
  std::span<const RowCandidates> candidates() const { return candidates_; }

  // Allocates the activations of a step of `max_rows` tokens and the logits buffer, so
  // the memory planner can measure them before sizing the KV pool.
  void reserve_workspace(int64_t max_rows);

  // Bytes of weights as stored (what `info` prints).
  int64_t weight_bytes() const;

 private:
  std::shared_ptr<const gguf::File> file_;
  Backend& backend_;
  HParams hp_;
  RopeParams rope_;
  std::unique_ptr<ModelWeights> w_;
  struct Workspace;
  std::unique_ptr<Workspace> ws_;
  std::vector<int32_t> picked_;
  std::vector<RowCandidates> candidates_;
  // sorted_prefix's output, kept between steps (a flat row's prefix is the whole row:
  // hundreds of MB a step that need not be allocated and zeroed each time).
  std::vector<float> prefix_values_;
  std::vector<int32_t> prefix_ids_;
  AttentionParams attention_params() const;
  bool stacked() const;  // projections stacked (Backend::prefers_stacked_projections)
};

}  // namespace batchmax
