#pragma once
// Prompt token ids as every front end builds them (the CLI, batch files, the server):
// BOS as the vocabulary asks, chat templates with their special tokens parsed.
#include <cstdint>
#include <vector>

#include "tokenizer/chat_template.h"
#include "tokenizer/tokenizer.h"

namespace batchmax {

// Prompt ids for a chat: the template's text, tokenised with special tokens parsed and
// BOS added when the vocabulary asks for one, but never twice (templates that write
// their own BOS text, like Llama 3's, would otherwise get a second one).
std::vector<int32_t> tokenize_chat(const Tokenizer& tok, const ChatTemplate& tmpl,
                                   const std::vector<ChatMessage>& messages);
// Plain text prompt: BOS as the vocabulary asks, special-token text kept as text.
std::vector<int32_t> tokenize_text(const Tokenizer& tok, const std::string& text);

}  // namespace batchmax
