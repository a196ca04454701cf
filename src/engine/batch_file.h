#pragma once
// The OpenAI Batch API file format (JSONL): parsing and validating one input line into
// a request, and formatting one output line. Kept free of the engine and tokenizer so
// it can be unit-tested and fuzzed on its own; `batchmax run` does the I/O around it.
//
// Input line:  {"custom_id", "method": "POST", "url": "/v1/chat/completions" |
//               "/v1/completions", "body": {"model", "messages" | "prompt", "max_tokens",
//               "temperature", "top_p", "top_k" (extension), "seed", "stop"}}
// Output line: {"id": "batch_req_<n>", "custom_id", "response": {"status_code": 200,
//               "request_id", "body": chat.completion | text_completion}, "error": null}
//           or {"id", "custom_id" (null when unknown), "response": null,
//               "error": {"code", "message"}}
#include <cstdint>
#include <optional>
#include <istream>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "batchmax/engine.h"
#include "engine/openai_fields.h"
#include "tokenizer/chat_template.h"

namespace batchmax::batch {

enum class Endpoint { ChatCompletions, Completions };

// Machine-readable error codes of output lines (the "error.code" field).
namespace code {
inline constexpr const char* kInvalidJson = openai::code::kInvalidJson;
inline constexpr const char* kMissingParameter = openai::code::kMissingParameter;
inline constexpr const char* kInvalidType = openai::code::kInvalidType;
inline constexpr const char* kInvalidValue = openai::code::kInvalidValue;
inline constexpr const char* kInvalidUrl = "invalid_url";
inline constexpr const char* kDuplicateCustomId = "duplicate_custom_id";
inline constexpr const char* kRequestTooLarge = "request_too_large";
inline constexpr const char* kContextLengthExceeded = "context_length_exceeded";
inline constexpr const char* kEngineError = "engine_error";
}  // namespace code

struct LineError {
  std::string code;
  std::string message;
};

// One input line, parsed. When `error` is set the other fields hold whatever could be
// read before the problem (custom_id in particular, so the output can name it).
struct BatchLine {
  int64_t line_no = 0;                  // 1-based line number in the input file
  std::optional<std::string> custom_id;
  Endpoint endpoint = Endpoint::ChatCompletions;
  std::string model;                    // body.model, echoed in the response
  std::vector<ChatMessage> messages;    // chat completions
  std::string prompt;                   // completions, as text
  std::vector<int32_t> prompt_ids;      // completions given as token ids
  bool prompt_is_ids = false;
  SamplingParams sampling;
  // Per-request compression (extension fields kv_mode, kv_policy, kv_budget, kv_chunk);
  // unset fields take the command line's defaults.
  std::optional<std::string> kv_mode, kv_policy;
  std::optional<int64_t> kv_budget, kv_chunk;
  std::optional<LineError> error;

  // The command line's settings with this line's overrides applied.
  KVSettings kv_settings(const KVSettings& defaults) const;

  bool ok() const { return !error.has_value(); }
};

struct ParseOptions {
  int default_max_tokens = 256;  // when the body has no max_tokens
  // Longer lines are rejected before they are parsed: a JSON document costs several
  // times its size in memory, and no context holds a prompt of many megabytes anyway.
  size_t max_line_bytes = kDefaultMaxLineBytes;
  static constexpr size_t kDefaultMaxLineBytes = size_t(8) << 20;
};

// Parses and validates one line. Never throws: problems end up in `error`.
BatchLine parse_line(std::string_view text, int64_t line_no, const ParseOptions& opts = {});

// Reads one line (up to '\n', which is dropped) like std::getline, but keeps at most
// max_line_bytes + 1 bytes of it: a longer line is read to its end without being held in
// memory. `bytes` gets the line's full length. False at the end of the input.
bool read_line(std::istream& in, std::string& text, size_t max_line_bytes, size_t& bytes);
// The line that reports a request of `bytes` bytes over opts.max_line_bytes.
BatchLine oversize_line(int64_t line_no, size_t bytes, const ParseOptions& opts);

// True for lines that carry no request (empty or whitespace only); they get no output.
bool is_blank(std::string_view text);

// Marks every line whose custom_id was already used by an earlier line (valid or not)
// with a duplicate_custom_id error.
void mark_duplicate_ids(std::vector<BatchLine>& lines);

// Result of running one request, as the output line needs it.
struct Completion {
  std::string text;
  std::string finish_reason;   // "stop" or "length"
  int64_t prompt_tokens = 0;
  int64_t completion_tokens = 0;
};

// `index` is the 1-based output line number; ids are derived from it so that a run is
// reproducible. `created` is the Unix time stamp put in the response body.
nlohmann::ordered_json success_line(const BatchLine& line, int64_t index, const Completion& c,
                            int64_t created, const std::string& default_model);
nlohmann::ordered_json error_line(const BatchLine& line, int64_t index, const LineError& err);

// One JSON line, newline included. Invalid UTF-8 (a generated text cut inside a
// character) is replaced with U+FFFD rather than failing the whole line.
std::string to_jsonl(const nlohmann::ordered_json& j);

}  // namespace batchmax::batch
