#pragma once
// UTF-8 decoding and the few Unicode codepoint classes the pre-tokenisers need
// (letters \p{L}, numbers \p{N}, White_Space \s), from a generated range table.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace batchmax::unicode {

constexpr uint32_t kReplacement = 0xFFFD;

// Class bits; a codepoint in none of them is "other" (punctuation, symbols, marks...).
enum : uint8_t { kLetter = 1, kNumber = 2, kSpace = 4 };

struct CodepointRange {
  uint32_t first, last;
  uint8_t cls;
};

uint8_t classify(uint32_t cp);
inline bool is_letter(uint32_t cp) { return classify(cp) & kLetter; }
inline bool is_number(uint32_t cp) { return classify(cp) & kNumber; }
inline bool is_space(uint32_t cp) { return classify(cp) & kSpace; }

// Length of the valid UTF-8 sequence starting at s[0], or 0 when it is invalid
// (bad lead byte, truncated, bad continuation, overlong, surrogate, > U+10FFFF).
size_t valid_sequence_length(std::string_view s, uint32_t* cp);

// Decodes strictly: every byte that does not start a valid sequence becomes one
// U+FFFD and decoding resumes at the next byte (as llama.cpp does).
std::vector<uint32_t> decode_utf8(std::string_view s);
void append_utf8(uint32_t cp, std::string& out);
std::string to_utf8(const std::vector<uint32_t>& cps);

// GPT-2's reversible byte <-> printable-codepoint mapping used by byte-level BPE.
uint32_t byte_to_codepoint(uint8_t b);
// -1 when cp is not an image of a byte.
int codepoint_to_byte(uint32_t cp);

namespace detail {
extern const CodepointRange kRanges[];
extern const size_t kRangeCount;
}  // namespace detail

}  // namespace batchmax::unicode
