// stable_text_end: streamed text never has to be taken back, and never ends inside a
// UTF-8 sequence.
#include <gtest/gtest.h>

#include <random>

#include "engine/stream_text.h"

namespace batchmax {
namespace {

TEST(StreamText, HoldsBackAPossibleStopStringStart) {
  const std::vector<std::string> stops = {"</end>", "\n\n"};
  EXPECT_EQ(stable_text_end("hello", stops), 5u);
  EXPECT_EQ(stable_text_end("hello</e", stops), 5u);   // "</e" may become "</end>"
  EXPECT_EQ(stable_text_end("hello<", stops), 5u);
  EXPECT_EQ(stable_text_end("hello\n", stops), 5u);
  EXPECT_EQ(stable_text_end("hello</x", stops), 8u);  // cannot become a stop any more
  EXPECT_EQ(stable_text_end("", stops), 0u);
  EXPECT_EQ(stable_text_end("abc", {}), 3u);
  EXPECT_EQ(stable_text_end("abc", {""}), 3u);  // an empty stop string never matches
}

TEST(StreamText, HoldsBackAnIncompleteUtf8Sequence) {
  const std::string euro = "\xE2\x82\xAC";     // 3 bytes
  const std::string emoji = "\xF0\x9F\x98\x80";  // 4 bytes
  EXPECT_EQ(stable_text_end("a" + euro, {}), 4u);
  EXPECT_EQ(stable_text_end("a" + euro.substr(0, 2), {}), 1u);
  EXPECT_EQ(stable_text_end("a" + euro.substr(0, 1), {}), 1u);
  EXPECT_EQ(stable_text_end("a" + emoji.substr(0, 3), {}), 1u);
  EXPECT_EQ(stable_text_end("a" + emoji, {}), 5u);
  // Invalid bytes are final as they are: waiting cannot make them valid.
  EXPECT_EQ(stable_text_end("a\xFF", {}), 2u);
  EXPECT_EQ(stable_text_end("a\x80\x80\x80\x80", {}), 5u);
}

// Property: streaming the held-back-safe prefix after every appended piece, then the
// rest at the end, gives the text cut at the first stop string; nothing streamed is
// ever past that cut.
TEST(StreamText, StreamedPrefixIsNeverTakenBack) {
  std::mt19937 rng(7);
  const std::vector<std::string> alphabet = {"a", "b", "<", "/", "e", ">", "\n", "\xC3",
                                             "\xA9", "\xE2\x82", "\xAC"};
  const std::vector<std::string> stops = {"</e>", "b\n", "\xC3\xA9z"};
  for (int trial = 0; trial < 2000; ++trial) {
    std::string text, streamed;
    bool stopped = false;
    const int n = 1 + int(rng() % 20);
    for (int i = 0; i < n && !stopped; ++i) {
      const size_t before = text.size();
      text += alphabet[rng() % alphabet.size()];
      for (const std::string& s : stops) {
        const size_t from = before >= s.size() ? before - s.size() + 1 : 0;
        const size_t at = text.find(s, from);
        if (at != std::string::npos) { text.resize(at); stopped = true; break; }
      }
      const size_t end = stopped ? text.size() : stable_text_end(text, stops);
      ASSERT_GE(end, streamed.size()) << "trial " << trial;
      ASSERT_EQ(text.compare(0, streamed.size(), streamed), 0) << "trial " << trial;
      streamed = text.substr(0, end);
    }
    ASSERT_EQ(text.compare(0, streamed.size(), streamed), 0);
  }
}

}  // namespace
}  // namespace batchmax
