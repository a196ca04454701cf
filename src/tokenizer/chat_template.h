#pragma once
// Chat templates rendered natively (no Jinja): the style is chosen from the GGUF's
// tokenizer.chat_template text (ChatML for SmolLM2/Qwen, Llama-3 headers).
#include <string>
#include <vector>

namespace batchmax {
namespace gguf { class File; }

struct ChatMessage {
  std::string role;     // "system", "user", "assistant"
  std::string content;
};

enum class ChatStyle { ChatML, Llama3 };

class ChatTemplate {
 public:
  // Throws batchmax::Error when the file has no chat template or one of unknown style.
  static ChatTemplate from_gguf(const gguf::File& file);
  static ChatTemplate from_template_text(const std::string& jinja_text);
  explicit ChatTemplate(ChatStyle style, std::string default_system = "")
      : style_(style), default_system_(std::move(default_system)) {}

  // Text to tokenise with parse_special = true. Throws on an empty message list or an
  // unknown role.
  std::string render(const std::vector<ChatMessage>& messages,
                     bool add_generation_prompt = true) const;
  ChatStyle style() const { return style_; }
  const std::string& default_system() const { return default_system_; }
  // Strip surrounding whitespace from message contents (Llama-3's "| trim").
  ChatTemplate& set_trim_content(bool on) { trim_content_ = on; return *this; }

 private:
  ChatStyle style_;
  std::string default_system_;  // inserted when the first message is not "system"
  bool trim_content_ = false;
};

}  // namespace batchmax
