// Chat template recognition and rendering (ChatML with SmolLM2/Qwen defaults, Llama-3).
#include <gtest/gtest.h>

#include "../test_support.h"
#include "core/error.h"
#include "format/gguf_reader.h"
#include "tokenizer/chat_template.h"
#include "tokenizer/tokenizer.h"

using namespace batchmax;

namespace {

const char* kSmolTemplate =
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
    "Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + "
    "message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\n' }}{% endif %}";

// Qwen2.5's template as stored from JSON: Jinja escapes "\n" inside string literals.
const char* kQwenTemplate =
    "{%- if messages[0]['role'] == 'system' %}{{- '<|im_start|>system\\n' + "
    "messages[0]['content'] + '<|im_end|>\\n' }}{%- else %}{{- '<|im_start|>system\\nYou are "
    "Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}{%- endif %}";

const char* kLlama3Template =
    "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = "
    "'<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | "
    "trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}"
    "{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}{{ "
    "'<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}";

TEST(ChatTemplate, SmolLM2InsertsItsDefaultSystemMessage) {
  auto t = ChatTemplate::from_template_text(kSmolTemplate);
  EXPECT_EQ(t.style(), ChatStyle::ChatML);
  EXPECT_EQ(t.render({{"user", "Hi"}}),
            "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
            "Face<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n");
  EXPECT_EQ(t.render({{"system", "Be brief."}, {"user", "Hi"}, {"assistant", "Hello"}}, false),
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
            "<|im_start|>assistant\nHello<|im_end|>\n");
}

TEST(ChatTemplate, QwenDefaultSystemFromEscapedTemplate) {
  auto t = ChatTemplate::from_template_text(kQwenTemplate);
  EXPECT_EQ(t.style(), ChatStyle::ChatML);
  EXPECT_EQ(t.default_system(), "You are Qwen, created by Alibaba Cloud. You are a helpful assistant.");
}

TEST(ChatTemplate, PlainChatMLHasNoDefault) {
  ChatTemplate t(ChatStyle::ChatML);
  EXPECT_EQ(t.render({{"user", "x"}}, false), "<|im_start|>user\nx<|im_end|>\n");
}

TEST(ChatTemplate, Llama3Headers) {
  auto t = ChatTemplate::from_template_text(kLlama3Template);
  EXPECT_EQ(t.style(), ChatStyle::Llama3);
  EXPECT_EQ(t.render({{"system", "S"}, {"user", "  Hi \n"}}),
            "<|start_header_id|>system<|end_header_id|>\n\nS<|eot_id|>"
            "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\n");
}

TEST(ChatTemplate, Errors) {
  ChatTemplate t(ChatStyle::ChatML);
  EXPECT_THROW(t.render({}), Error);
  try {
    t.render({{"user", "a"}, {"robot", "b"}});
    ADD_FAILURE() << "no error for an unknown role";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("robot"), std::string::npos) << e.what();
  }
  try {
    ChatTemplate::from_template_text("{{ messages[0]['content'] }}<end>");
    ADD_FAILURE() << "no error for an unknown template";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("unsupported chat template"), std::string::npos);
  }
}

TEST(ChatTemplate, SmolLM2FromGgufTokenisesToSpecialIds) {
  BATCHMAX_REQUIRE_SMOLLM2();
  auto file = gguf::File::open(test::smollm2_path());
  auto t = ChatTemplate::from_gguf(*file);
  EXPECT_EQ(t.default_system(), "You are a helpful AI assistant named SmolLM, trained by Hugging Face");
  auto tok = Tokenizer::from_gguf(*file);
  auto ids = tok->encode(t.render({{"user", "What is 2+2?"}}), true, true);
  ASSERT_GT(ids.size(), 10u);
  EXPECT_EQ(ids.front(), 1);  // <|im_start|>
  EXPECT_EQ(std::count(ids.begin(), ids.end(), 1), 3);
  EXPECT_EQ(std::count(ids.begin(), ids.end(), 2), 2);  // <|im_end|>
}

}  // namespace
