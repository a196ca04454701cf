#pragma once
// Server-sent events as the OpenAI streaming API writes them.
#include <string>
#include <string_view>

namespace batchmax::server::sse {

// "data: <payload>\n\n" (payload is one line of JSON).
std::string event(std::string_view data);
// "data: [DONE]\n\n": the end of an OpenAI stream.
std::string done();
// ": keepalive\n\n", a comment clients ignore; sent while no token is ready so that a
// client that went away is noticed (the write fails) before the first token.
std::string keepalive();

}  // namespace batchmax::server::sse
