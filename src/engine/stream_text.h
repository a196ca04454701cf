#pragma once
// Streaming text safely: how much of a request's text so far is final, i.e. can no
// longer be cut by a stop string that completes later, and does not end inside a UTF-8
// sequence (a client would see a replacement character).
#include <cstddef>
#include <string>
#include <string_view>
#include <vector>

namespace batchmax {

// The end of the final prefix of text: text[0, end) is never taken back. A suffix of
// text that is a proper prefix of some stop string is held back, and so are the bytes of
// a trailing incomplete UTF-8 sequence.
size_t stable_text_end(std::string_view text, const std::vector<std::string>& stops);

}  // namespace batchmax
