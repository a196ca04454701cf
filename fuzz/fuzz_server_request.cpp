// The server's request-body parser (POST /v1/completions, /v1/chat/completions).
// Input: byte 0 picks the endpoint, the rest is the body. parse_completion_request
// promises never to throw; an accepted request stays within ProtocolLimits, a rejected
// one carries an HTTP error status and a message, and its error object is valid JSON.
#include <string>
#include <string_view>
#include <variant>

#include <nlohmann/json.hpp>

#include "fuzz_target.h"
#include "server/openai_protocol.h"

using namespace batchmax;

BATCHMAX_FUZZ_TARGET(server_request) {
  if (size == 0) return 0;
  const auto endpoint = data[0] & 1 ? server::Endpoint::ChatCompletions : server::Endpoint::Completions;
  const std::string_view body(reinterpret_cast<const char*>(data + 1), size - 1);
  const server::ProtocolLimits limits;
  server::ParseResult r = server::parse_completion_request(body, endpoint, limits);
  if (const auto* req = std::get_if<server::CompletionRequest>(&r)) {
    FUZZ_CHECK(req->endpoint == endpoint);
    FUZZ_CHECK(req->n >= 1 && req->n <= limits.max_n);
    FUZZ_CHECK(req->sampling.max_tokens >= 1 && req->sampling.max_tokens <= limits.max_tokens);
    FUZZ_CHECK(static_cast<int>(req->sampling.stop.size()) <= limits.max_stop);
    if (endpoint == server::Endpoint::ChatCompletions) {
      FUZZ_CHECK(!req->messages.empty());
      for (const ChatMessage& m : req->messages)
        FUZZ_CHECK(m.role == "system" || m.role == "user" || m.role == "assistant");
    } else if (req->prompt.is_ids) {
      for (int32_t id : req->prompt.ids) FUZZ_CHECK(id >= 0);
    }
  } else {
    const server::ApiError& e = std::get<server::ApiError>(r);
    FUZZ_CHECK(e.status >= 400 && e.status < 600);
    FUZZ_CHECK(!e.message.empty());
    FUZZ_CHECK(nlohmann::json::accept(server::dump(server::error_object(e))));
  }
  return 0;
}
