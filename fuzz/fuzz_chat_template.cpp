// Chat-template recognition and rendering. Input: NUL-separated fields; the first is the
// template text (Jinja as a GGUF would carry it), each further one is a message whose
// first byte picks the role (0-2 system/user/assistant, 3 a role spelled out up to
// '\x01', others "user"), the rest being its content. Checked: render() throws exactly
// for an empty list or an unknown role, and every content appears in the output.
#include <string>
#include <string_view>
#include <vector>

#include "core/error.h"
#include "fuzz_target.h"
#include "tokenizer/chat_template.h"

using namespace batchmax;

namespace {

std::vector<std::string_view> split(std::string_view s, char sep) {
  std::vector<std::string_view> out;
  for (size_t at; (at = s.find(sep)) != std::string_view::npos; s.remove_prefix(at + 1))
    out.push_back(s.substr(0, at));
  out.push_back(s);
  return out;
}

std::string trim(std::string_view s) {
  const char* ws = " \t\n\r\f\v";
  size_t b = s.find_first_not_of(ws);
  if (b == std::string_view::npos) return {};
  return std::string(s.substr(b, s.find_last_not_of(ws) - b + 1));
}

}  // namespace

BATCHMAX_FUZZ_TARGET(chat_template) {
  const std::string_view in(reinterpret_cast<const char*>(data), size);
  std::vector<std::string_view> fields = split(in, '\0');
  std::vector<ChatMessage> msgs;
  bool known_roles = true;
  for (size_t i = 1; i < fields.size(); ++i) {
    std::string_view f = fields[i];
    ChatMessage m;
    const unsigned char sel = f.empty() ? 1 : static_cast<unsigned char>(f[0]);
    if (!f.empty()) f.remove_prefix(1);
    static const char* kRoles[] = {"system", "user", "assistant"};
    if (sel < 3) {
      m.role = kRoles[sel];
    } else if (sel == 3) {
      size_t at = f.find('\x01');
      m.role = std::string(f.substr(0, at));
      f = at == std::string_view::npos ? std::string_view() : f.substr(at + 1);
      known_roles = known_roles && (m.role == "system" || m.role == "user" || m.role == "assistant");
    } else {
      m.role = "user";
    }
    m.content = std::string(f);
    msgs.push_back(std::move(m));
  }

  std::vector<ChatTemplate> templates = {ChatTemplate(ChatStyle::ChatML, "You are helpful."),
                                         ChatTemplate(ChatStyle::Llama3),
                                         ChatTemplate(ChatStyle::Llama3).set_trim_content(true)};
  try {
    templates.push_back(ChatTemplate::from_template_text(std::string(fields[0])));
  } catch (const Error&) {
  }
  for (size_t k = 0; k < templates.size(); ++k) {
    const ChatTemplate& t = templates[k];
    for (bool gen : {false, true}) {
      std::string out;
      try {
        out = t.render(msgs, gen);
      } catch (const Error&) {
        FUZZ_CHECK(msgs.empty() || !known_roles);
        continue;
      }
      FUZZ_CHECK(!msgs.empty() && known_roles);
      for (const ChatMessage& m : msgs) {
        // Llama-3 with trim strips whitespace, also a template read from text may do so.
        const bool trimmed = t.style() == ChatStyle::Llama3 && (k == 2 || k == 3);
        FUZZ_CHECK(out.find(trimmed ? trim(m.content) : m.content) != std::string::npos);
      }
    }
  }
  return 0;
}
