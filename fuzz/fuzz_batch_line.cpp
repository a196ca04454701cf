// One line of an OpenAI Batch API input file. parse_line promises never to throw; a line
// it accepts must be internally consistent, and formatting its output lines (success
// and error, which echo custom_id and model) must produce valid JSON.
#include <climits>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "engine/batch_file.h"
#include "fuzz_target.h"

using namespace batchmax;

BATCHMAX_FUZZ_TARGET(batch_line) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  batch::ParseOptions opts;
  batch::BatchLine line = batch::parse_line(text, 1, opts);
  if (line.ok()) {
    FUZZ_CHECK(!batch::is_blank(text));
    FUZZ_CHECK(line.sampling.max_tokens >= 1);
    if (line.endpoint == batch::Endpoint::ChatCompletions) {
      FUZZ_CHECK(!line.messages.empty());
      for (const ChatMessage& m : line.messages)
        FUZZ_CHECK(m.role == "system" || m.role == "user" || m.role == "assistant");
    } else if (line.prompt_is_ids) {
      FUZZ_CHECK(!line.prompt_ids.empty());
      for (int32_t id : line.prompt_ids) FUZZ_CHECK(id >= 0);
    }
    (void)line.kv_settings(KVSettings{});
  } else {
    FUZZ_CHECK(!line.error->code.empty() && !line.error->message.empty());
  }
  batch::Completion c{"out \xff text", "stop", 3, 4};
  std::vector<std::string> outs = {
      batch::to_jsonl(batch::success_line(line, 1, c, 0, "model")),
      batch::to_jsonl(batch::error_line(line, 2, line.error.value_or(batch::LineError{"x", "y"})))};
  for (const std::string& o : outs) {
    FUZZ_CHECK(!o.empty() && o.back() == '\n');
    FUZZ_CHECK(nlohmann::json::accept(o));
  }
  std::vector<batch::BatchLine> lines = {line, line};
  batch::mark_duplicate_ids(lines);
  FUZZ_CHECK(lines[1].ok() == (lines[0].ok() && !line.custom_id));
  return 0;
}
