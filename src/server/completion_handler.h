#pragma once
// POST /v1/completions and /v1/chat/completions: validate, tokenise, check the request
// against the context and the KV pool, submit its n choices to the engine loop, and
// answer. Both kinds of answer are written by a chunked content provider on the
// connection's thread, so that a client that goes away is noticed (a write fails) and
// its requests are cancelled: streams send ": keepalive" comments while no token is
// ready; non-streamed answers send JSON-legal leading spaces until the body is ready.
#include <httplib.h>

#include "server/server_state.h"

namespace batchmax::server {

// Reads the body through `reader` (at most opts.max_body_bytes of it: httplib 0.11 only
// bounds bodies that come with a Content-Length, not chunked ones), then writes the
// answer (or an error) into `res`. Never throws.
void handle_completion(const httplib::Request& req, httplib::Response& res,
                       const httplib::ContentReader& reader, Endpoint endpoint, ServerState& state);

// An OpenAI error as the whole response.
void respond_error(httplib::Response& res, const ApiError& e);
// 413 with the OpenAI error body.
ApiError body_too_large();

}  // namespace batchmax::server
