#include "server/sse.h"

namespace batchmax::server::sse {

std::string event(std::string_view data) {
  std::string s;
  s.reserve(data.size() + 8);
  s.append("data: ").append(data).append("\n\n");
  return s;
}

std::string done() { return "data: [DONE]\n\n"; }

std::string keepalive() { return ": keepalive\n\n"; }

}  // namespace batchmax::server::sse
