#include "tokenizer/prompt_tokens.h"

namespace batchmax {

std::vector<int32_t> tokenize_chat(const Tokenizer& tok, const ChatTemplate& tmpl,
                                   const std::vector<ChatMessage>& messages) {
  std::vector<int32_t> ids = tok.encode(tmpl.render(messages, true), true, true);
  int32_t bos = tok.bos_id();
  if (bos >= 0 && ids.size() >= 2 && ids[0] == bos && ids[1] == bos) ids.erase(ids.begin());
  return ids;
}

std::vector<int32_t> tokenize_text(const Tokenizer& tok, const std::string& text) {
  return tok.encode(text, true, false);
}

}  // namespace batchmax
