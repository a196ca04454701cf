#pragma once
// Result rows of `batchmax eval` and their two renderings: a JSON array (one object per
// row) and Markdown tables (one per task and context, rows = mode/policy, columns =
// KV budgets) with the derived numbers people read: % of full-cache accuracy and the
// batchmax minus post-prefill difference.
#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace batchmax::eval {

struct Row {
  std::string model;
  std::string task;
  int64_t context_tokens = 0;  // the target context (prompt + answer room)
  std::string mode;            // full, post-prefill, batchmax
  std::string policy;          // "-" for full
  int64_t kv_budget = -1;      // -1 for full (written as "-")
  int64_t chunk = 0;
  double score = 0;            // NaN when no sample ran (written as null)
  std::string metric;          // accuracy_pct, accuracy_pct_names or perplexity
  int64_t n_samples = 0;       // samples scored
  int64_t errors = 0;          // samples the engine failed (not scored)
  double prompt_tokens = 0;    // mean prompt length
  std::string commit;
  std::string backend;
  double seconds = 0;          // wall time spent on the cell's samples
  double nll = 0;              // ppl only: mean negative log-likelihood per token (nats)
  std::string text_source;     // corpus the haystack/perplexity text came from, or "synthetic"
};

nlohmann::ordered_json row_to_json(const Row& r);
Row row_from_json(const nlohmann::json& j);
std::string rows_to_json_text(const std::vector<Row>& rows);
std::string rows_to_markdown(const std::vector<Row>& rows);

}  // namespace batchmax::eval
