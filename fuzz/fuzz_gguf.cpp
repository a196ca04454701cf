// GGUF reader from bytes, then everything that reads a parsed file: metadata accessors,
// tensor data bounds and dequantisation, hyper-parameters, tokenizer and chat template
// loading. A hostile file must end in batchmax::Error, never in a crash or a huge
// allocation.
#include <string>
#include <vector>

#include "core/error.h"
#include "format/gguf_reader.h"
#include "format/tensor_types.h"
#include "fuzz_target.h"
#include "model/hparams.h"
#include "tokenizer/chat_template.h"
#include "tokenizer/tokenizer.h"

using namespace batchmax;

namespace {

// Keeps dequantisation cheap per input; a larger tensor is only bounds-checked.
constexpr int64_t kMaxDequantElements = 1 << 16;

void touch_value(const gguf::Value& v) {
  (void)v.to_display_string();
  try { (void)v.as_int(); } catch (const Error&) {}
  try { (void)v.as_uint(); } catch (const Error&) {}
  try { (void)v.as_float(); } catch (const Error&) {}
  try { (void)v.as_bool(); } catch (const Error&) {}
  try { (void)v.as_string(); } catch (const Error&) {}
  try { (void)v.as_array(); } catch (const Error&) {}
}

void check_tensors(const gguf::File& f, const uint8_t* base, size_t size) {
  for (const gguf::TensorInfo& t : f.tensors()) {
    FUZZ_CHECK(f.find_tensor(t.name) == &t);
    // The reader promised the data lies inside the file.
    FUZZ_CHECK(t.data >= base && t.n_bytes <= size &&
               static_cast<size_t>(t.data - base) <= size - t.n_bytes);
    const TypeTraits& tt = type_traits(t.type);
    const int64_t rows = t.n_rows(), len = t.row_length();
    size_t rb = 0;
    try {
      rb = row_bytes(t.type, len);
    } catch (const Error&) {
      continue;
    }
    FUZZ_CHECK(rb * static_cast<uint64_t>(rows) == t.n_bytes);
    if (t.n_elements() > kMaxDequantElements) continue;
    std::vector<float> row(static_cast<size_t>(len));
    for (int64_t r = 0; r < rows; ++r) {
      try {
        dequantize_row(t.type, t.data + r * rb, row.data(), len);
        FUZZ_CHECK(tt.dequantizable);
      } catch (const Error&) {
        FUZZ_CHECK(!tt.dequantizable);
        break;
      }
    }
  }
}

void use_tokenizer(const gguf::File& f) {
  std::unique_ptr<Tokenizer> tok;
  try {
    tok = Tokenizer::from_gguf(f);
  } catch (const Error&) {
    return;
  }
  const std::string text = "Hello world! 123 <|im_start|> \xF0\x9F\x98\x80 \xff";
  for (bool special : {false, true}) {
    std::vector<int32_t> ids = tok->encode(text, special, special);
    for (int32_t id : ids) FUZZ_CHECK(id >= 0 && id < tok->n_vocab());
    (void)tok->decode(ids, special);
  }
  for (int32_t id : {-1, 0, tok->n_vocab() - 1, tok->n_vocab()}) {
    (void)tok->token_to_piece(id, true);
    (void)tok->is_eog(id);
  }
}

}  // namespace

BATCHMAX_FUZZ_TARGET(gguf) {
  std::unique_ptr<gguf::File> f;
  try {
    f = gguf::File::from_bytes(data, size, "fuzz.gguf");
  } catch (const Error&) {
    return 0;
  }
  FUZZ_CHECK(f->file_size() == size);
  for (const auto& [key, value] : f->metadata()) {
    FUZZ_CHECK(f->find(key) == &value);
    touch_value(value);
    try { (void)f->get_int(key); } catch (const Error&) {}
    try { (void)f->get_float(key); } catch (const Error&) {}
    try { (void)f->get_string(key); } catch (const Error&) {}
  }
  // The reader copies the bytes into a buffer of exactly `size` (ASan flags any read past
  // it); its start is recovered from a tensor's pointer to check the others' bounds.
  const uint8_t* base = f->tensors().empty() ? nullptr : f->tensors()[0].data - f->data_offset() -
                                                             f->tensors()[0].offset;
  if (base) check_tensors(*f, base, size);
  try { (void)read_hparams(*f); } catch (const Error&) {}
  use_tokenizer(*f);
  try {
    ChatTemplate t = ChatTemplate::from_gguf(*f);
    (void)t.render({{"user", "hi"}});
  } catch (const Error&) {
  }
  return 0;
}
