#include "engine/stream_text.h"

#include <algorithm>

namespace batchmax {
namespace {

// Bytes of a UTF-8 sequence from its lead byte; 0 for a continuation byte, 1 for an
// invalid lead (it is emitted as is: waiting would not make it valid).
size_t utf8_sequence_length(unsigned char c) {
  if (c < 0x80) return 1;
  if (c < 0xC0) return 0;
  if (c < 0xE0) return 2;
  if (c < 0xF0) return 3;
  if (c < 0xF8) return 4;
  return 1;
}

size_t complete_utf8_end(std::string_view text) {
  const size_t n = text.size();
  // A sequence is at most 4 bytes: only the last 3 can belong to an incomplete one.
  for (size_t back = 1; back <= std::min<size_t>(3, n); ++back) {
    const size_t at = n - back;
    const size_t len = utf8_sequence_length(static_cast<unsigned char>(text[at]));
    if (len == 0) continue;  // continuation byte: the lead is further back
    return len > back ? at : n;
  }
  return n;
}

}  // namespace

size_t stable_text_end(std::string_view text, const std::vector<std::string>& stops) {
  size_t end = complete_utf8_end(text);
  for (const std::string& stop : stops) {
    // The longest proper prefix of stop that text ends with.
    for (size_t k = std::min(stop.size() - (stop.empty() ? 0 : 1), text.size()); k > 0; --k) {
      if (text.compare(text.size() - k, k, stop, 0, k) == 0) {
        end = std::min(end, text.size() - k);
        break;
      }
    }
  }
  return end;
}

}  // namespace batchmax
