// Native rendering of the two chat-template families we support. The style is recognised
// from marker strings in the GGUF's Jinja text rather than by executing it.
#include "tokenizer/chat_template.h"

#include "core/error.h"
#include "format/gguf_reader.h"

namespace batchmax {

namespace {

// The default system message a ChatML template writes when the first message is not a
// system one, e.g. SmolLM2's '<|im_start|>system\nYou are ...<|im_end|>\n' literal.
std::string chatml_default_system(const std::string& jinja) {
  // Templates stored from JSON may keep Jinja's escaped "\\n" rather than a newline.
  std::string t;
  t.reserve(jinja.size());
  for (size_t i = 0; i < jinja.size(); ++i) {
    if (jinja[i] == '\\' && i + 1 < jinja.size() && jinja[i + 1] == 'n') {
      t += '\n';
      ++i;
    } else {
      t += jinja[i];
    }
  }
  const std::string head = "<|im_start|>system\n";
  size_t at = t.find(head);
  while (at != std::string::npos) {
    size_t begin = at + head.size();
    size_t end = t.find("<|im_end|>", begin);
    if (end == std::string::npos) return {};
    std::string body = t.substr(begin, end - begin);
    // Literal text only: a template expression ({{ ... }} or quotes) is not a default.
    if (!body.empty() && body.find_first_of("{}'\"") == std::string::npos) return body;
    at = t.find(head, end);
  }
  return {};
}

std::string trim(const std::string& s) {
  const char* ws = " \t\n\r\f\v";
  size_t b = s.find_first_not_of(ws);
  if (b == std::string::npos) return {};
  return s.substr(b, s.find_last_not_of(ws) - b + 1);
}

}  // namespace

ChatTemplate ChatTemplate::from_template_text(const std::string& t) {
  if (t.find("<|start_header_id|>") != std::string::npos &&
      t.find("<|end_header_id|>") != std::string::npos)
    return ChatTemplate(ChatStyle::Llama3).set_trim_content(t.find("| trim") != std::string::npos);
  if (t.find("<|im_start|>") != std::string::npos)
    return ChatTemplate(ChatStyle::ChatML, chatml_default_system(t));
  std::string head = t.substr(0, 80);
  throw Error("unsupported chat template (supported: ChatML with <|im_start|>, Llama-3 with "
              "<|start_header_id|>); template begins: " + head);
}

ChatTemplate ChatTemplate::from_gguf(const gguf::File& file) {
  std::optional<std::string> t = file.get_string_opt("tokenizer.chat_template");
  if (!t) throw Error(file.path() + ": no chat template (metadata key 'tokenizer.chat_template')");
  return from_template_text(*t);
}

std::string ChatTemplate::render(const std::vector<ChatMessage>& messages,
                                 bool add_generation_prompt) const {
  if (messages.empty()) throw Error("chat template: the message list is empty");
  for (size_t i = 0; i < messages.size(); ++i) {
    const std::string& r = messages[i].role;
    if (r != "system" && r != "user" && r != "assistant")
      throw Error("chat template: message " + std::to_string(i) + " has unknown role '" + r +
                  "' (expected system, user or assistant)");
  }
  std::string out;
  if (style_ == ChatStyle::ChatML) {
    if (messages.front().role != "system" && !default_system_.empty())
      out += "<|im_start|>system\n" + default_system_ + "<|im_end|>\n";
    for (const ChatMessage& m : messages)
      out += "<|im_start|>" + m.role + "\n" + m.content + "<|im_end|>\n";
    if (add_generation_prompt) out += "<|im_start|>assistant\n";
  } else {
    // <|begin_of_text|> is the tokenizer's BOS, added by encode(add_special = true).
    for (const ChatMessage& m : messages)
      out += "<|start_header_id|>" + m.role + "<|end_header_id|>\n\n" +
             (trim_content_ ? trim(m.content) : m.content) + "<|eot_id|>";
    if (add_generation_prompt) out += "<|start_header_id|>assistant<|end_header_id|>\n\n";
  }
  return out;
}

}  // namespace batchmax
