// GGUF reader: well-formed files of every value type, one handcrafted bad file per
// validation rule (each error must name the field), truncation/fuzz sweeps, the shared
// vocabulary-only files and the real SmolLM2 model when present.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <unistd.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <limits>
#include <random>

#include "core/error.h"
#include "format/gguf_reader.h"
#include "gguf_writer.h"
#include "../test_support.h"

using batchmax::GgmlType;
using batchmax::gguf::File;
using batchmax::gguf::ValueType;
using batchmax::test::as_bytes;
using batchmax::test::GgufWriter;
using batchmax::test::GTensor;
using batchmax::test::GValue;
using ::testing::HasSubstr;

namespace {

// Parses w's bytes and expects a batchmax::Error whose message contains every needle.
void expect_bad(const GgufWriter& w, std::initializer_list<std::string> needles) {
  const std::vector<uint8_t> b = w.to_bytes();
  try {
    File::from_bytes(b.data(), b.size(), "bad.gguf");
    ADD_FAILURE() << "file was accepted";
  } catch (const batchmax::Error& e) {
    EXPECT_THAT(e.what(), HasSubstr("bad.gguf"));
    for (const auto& n : needles) EXPECT_THAT(e.what(), HasSubstr(n));
  }
}

template <typename Fn>
void expect_error(Fn fn, const std::string& needle) {
  try {
    fn();
    ADD_FAILURE() << "expected batchmax::Error containing '" << needle << "'";
  } catch (const batchmax::Error& e) {
    EXPECT_THAT(e.what(), HasSubstr(needle));
  }
}

// A small valid file used as the base of the sweep tests.
GgufWriter small_model() {
  GgufWriter w;
  w.add_string("general.architecture", "llama")
      .add_u32("llama.block_count", 2)
      .add_strings("tokenizer.ggml.tokens", {"<s>", "a", "b"})
      .add_f32s("scores", {0.5f, -1.0f})
      .add_f32_tensor("a", {4, 2}, {1, 2, 3, 4, 5, 6, 7, 8})
      .add_tensor("q", GgmlType::Q8_0, {32, 1});
  return w;
}

std::string shared_tokenizer_dir() {
  // The worktrees live one level deeper than the main checkout, so look upwards too.
  namespace fs = std::filesystem;
  for (const std::string& base :
       {batchmax::test::shared_testdata(),
        batchmax::test::source_dir() + "/../../shared/testdata"}) {
    if (fs::is_directory(base + "/tokenizer")) return base + "/tokenizer";
  }
  return "";
}

}  // namespace

// ---- well-formed files ----------------------------------------------------------------

TEST(GgufReader, ReadsAllValueTypes) {
  GgufWriter w;
  w.add_u8("u8", 200).add_i8("i8", -100).add_u16("u16", 60000).add_i16("i16", -30000)
      .add_u32("u32", 4000000000u).add_i32("i32", -2000000000).add_u64("u64", ~uint64_t{0})
      .add_i64("i64", std::numeric_limits<int64_t>::min()).add_f32("f32", 1.5f)
      .add_f64("f64", -2.25).add_bool("t", true).add_bool("f", false)
      .add_string("s", "héllo").add_string("empty", "")
      .add_i32s("ints", {1, -2, 3})
      .add("nested", GValue::array(ValueType::ARRAY,
                                   {GValue::strings({"x", "y"}),
                                    GValue::numbers<uint16_t>(ValueType::UINT16, {7})}))
      .add("empty_arr", GValue::array(ValueType::STRING, {}));
  auto f = w.open();
  EXPECT_EQ(f->version(), 3u);
  EXPECT_EQ(f->metadata().size(), 17u);
  EXPECT_EQ(f->metadata()[0].first, "u8");  // file order kept
  EXPECT_EQ(f->get_int("u8"), 200);
  EXPECT_EQ(f->get_int("i8"), -100);
  EXPECT_EQ(f->get_int("u16"), 60000);
  EXPECT_EQ(f->get_int("i16"), -30000);
  EXPECT_EQ(f->get_int("u32"), 4000000000LL);
  EXPECT_EQ(f->get_int("i32"), -2000000000);
  EXPECT_EQ(f->require("u64").as_uint(), ~uint64_t{0});
  EXPECT_EQ(f->get_int("i64"), std::numeric_limits<int64_t>::min());
  EXPECT_EQ(f->get_float("f32"), 1.5);
  EXPECT_EQ(f->get_float("f64"), -2.25);
  EXPECT_EQ(f->get_float("i32"), -2e9);  // integers convert to float
  EXPECT_TRUE(f->require("t").as_bool());
  EXPECT_FALSE(f->require("f").as_bool());
  EXPECT_EQ(f->get_string("s"), "héllo");
  EXPECT_EQ(f->get_string("empty"), "");
  const auto& ints = f->require("ints").as_array();
  EXPECT_EQ(ints.elem_type, ValueType::INT32);
  ASSERT_EQ(ints.items.size(), 3u);
  EXPECT_EQ(ints.items[1].as_int(), -2);
  const auto& nested = f->require("nested").as_array();
  ASSERT_EQ(nested.items.size(), 2u);
  EXPECT_EQ(nested.items[0].as_array().items[1].as_string(), "y");
  EXPECT_EQ(nested.items[1].as_array().elem_type, ValueType::UINT16);
  EXPECT_EQ(nested.items[1].as_array().items[0].as_uint(), 7u);
  EXPECT_TRUE(f->require("empty_arr").as_array().items.empty());
  EXPECT_EQ(f->require("ints").to_display_string(), "[1, -2, 3]");
  EXPECT_EQ(f->require("s").to_display_string(), "\"héllo\"");
  EXPECT_TRUE(f->tensors().empty());
}

TEST(GgufReader, AccessorsThrowOnMismatch) {
  GgufWriter w;
  w.add_u64("big", ~uint64_t{0}).add_i32("neg", -1).add_string("s", "x").add_f32("f", 1)
      .add_bool("b", true);
  auto f = w.open("acc.gguf");
  expect_error([&] { f->get_int("big"); }, "'big'");
  expect_error([&] { f->get_int("big"); }, "int64");
  expect_error([&] { f->require("neg").as_uint(); }, "negative");
  expect_error([&] { f->get_int("s"); }, "metadata key 's' has type STRING");
  expect_error([&] { f->get_string("f"); }, "expected STRING");
  expect_error([&] { f->get_float("s"); }, "'s'");
  expect_error([&] { f->require("b").as_int(); }, "BOOL");
  expect_error([&] { f->require("s").as_array(); }, "ARRAY");
  expect_error([&] { f->require("f").as_bool(); }, "FLOAT32");
  expect_error([&] { f->require("f").as_string(); }, "FLOAT32");
  expect_error([&] { f->require("missing"); }, "acc.gguf: metadata key 'missing' is missing");
  expect_error([&] { f->get_string("missing"); }, "'missing' is missing");
  EXPECT_FALSE(f->get_int_opt("missing").has_value());
  EXPECT_FALSE(f->get_float_opt("missing").has_value());
  EXPECT_FALSE(f->get_string_opt("missing").has_value());
  EXPECT_EQ(f->get_int_opt("neg"), -1);
  EXPECT_EQ(f->get_float_opt("f"), 1.0);
  EXPECT_EQ(f->get_string_opt("s"), "x");
  expect_error([&] { f->get_int_opt("s"); }, "'s'");  // present but wrong type still throws
  expect_error([&] { f->require_tensor("w"); }, "acc.gguf: required tensor 'w' is missing");
  EXPECT_EQ(f->find_tensor("w"), nullptr);
}

TEST(GgufReader, ReadsTensorsAndAlignment) {
  for (uint32_t align : {1u, 8u, 32u, 64u}) {
    SCOPED_TRACE(align);
    GgufWriter w;
    w.alignment(align).version(2);
    w.add_f32_tensor("a", {3}, {1, 2, 3});
    w.add_f32_tensor("b.weight", {2, 2, 1, 1}, {4, 5, 6, 7});
    w.add_tensor("c", GgmlType::Q4_K, {256, 3});
    auto f = w.open();
    EXPECT_EQ(f->version(), 2u);
    EXPECT_EQ(f->alignment(), align);
    ASSERT_EQ(f->tensors().size(), 3u);
    const auto& a = f->require_tensor("a");
    EXPECT_EQ(a.type, GgmlType::F32);
    EXPECT_EQ(a.n_elements(), 3);
    EXPECT_EQ(a.n_rows(), 1);
    EXPECT_EQ(a.n_bytes, 12u);
    float v[4];
    std::memcpy(v, a.data, 12);
    EXPECT_EQ(v[2], 3.0f);
    const auto& b = f->require_tensor("b.weight");
    EXPECT_EQ(b.dims, (std::vector<int64_t>{2, 2, 1, 1}));
    EXPECT_EQ(b.row_length(), 2);
    EXPECT_EQ(b.n_rows(), 2);
    std::memcpy(v, b.data, 16);
    EXPECT_EQ(v[3], 7.0f);
    const auto& c = f->require_tensor("c");
    EXPECT_EQ(c.n_bytes, 3u * 144u);
    EXPECT_EQ(c.offset % align, 0u);
    EXPECT_EQ(f->data_offset() % align, 0u);
    EXPECT_EQ(c.data, b.data - b.offset + c.offset);
  }
}

TEST(GgufReader, OpensFileWithMmap) {
  const std::string path = ::testing::TempDir() + "/batchmax_gguf_" +
                           std::to_string(::getpid()) + ".gguf";
  small_model().write_file(path);
  {
    auto f = File::open(path);
    EXPECT_EQ(f->path(), path);
    EXPECT_EQ(f->file_size(), std::filesystem::file_size(path));
    EXPECT_EQ(f->get_string("general.architecture"), "llama");
    const auto& a = f->require_tensor("a");
    float v;
    std::memcpy(&v, a.data + 4, 4);
    EXPECT_EQ(v, 2.0f);
  }
  std::filesystem::remove(path);
  expect_error([&] { File::open(path); }, "cannot open");
  expect_error([&] { File::open(::testing::TempDir()); }, "not a regular file");
}

// ---- one bad file per validation rule ---------------------------------------------------

TEST(GgufReaderBad, Magic) {
  expect_bad(GgufWriter().magic("GGML"), {"bad magic"});
  const uint8_t tiny[2] = {'G', 'G'};
  expect_error([&] { File::from_bytes(tiny, 2, "tiny"); }, "bad magic");
  expect_error([&] { File::from_bytes(nullptr, 0, "empty"); }, "bad magic");
}

TEST(GgufReaderBad, Version) {
  expect_bad(GgufWriter().version(1), {"version 1 is not supported"});
  expect_bad(GgufWriter().version(4), {"unsupported GGUF version 4"});
  expect_bad(GgufWriter().truncate_to(6), {"header version"});
}

TEST(GgufReaderBad, Counts) {
  expect_bad(GgufWriter().kv_count_override(uint64_t{1} << 60), {"kv_count"});
  expect_bad(GgufWriter().tensor_count_override(~uint64_t{0}), {"tensor_count"});
  // Counts that are small but still more than the bytes left.
  expect_bad(GgufWriter().add_u8("k", 1).kv_count_override(2).trailing_bytes(5), {"kv_count"});
  expect_bad(small_model().tensor_count_override(1000), {"tensor_count"});
  expect_bad(GgufWriter().truncate_to(20), {"kv_count"});
}

TEST(GgufReaderBad, KeyStrings) {
  expect_bad(GgufWriter().add_u8("", 1), {"metadata key #0", "empty"});
  // Key length larger than the file.
  GgufWriter w;
  w.add_u8("abc", 1).add_u8("def", 2);
  std::vector<uint8_t> b = w.to_bytes();
  const uint64_t huge = uint64_t{1} << 62;
  std::memcpy(b.data() + 24, &huge, 8);  // first key's length field follows the header
  expect_error([&] { File::from_bytes(b.data(), b.size(), "bad.gguf"); },
               "metadata key #0: string length 4611686018427387904");
  expect_bad(GgufWriter().add_u8("a", 1).add_u8("a", 2), {"metadata key 'a'", "duplicate"});
}

TEST(GgufReaderBad, StringValues) {
  std::vector<uint8_t> len;
  batchmax::test::gguf_bytes::put<uint64_t>(len, 1000);
  len.push_back('x');
  expect_bad(GgufWriter().add("name", GValue::raw(8, len)),
             {"metadata key 'name'", "string length 1000"});
  // A string item inside an array.
  expect_bad(GgufWriter().add("toks", GValue::array(ValueType::STRING,
                                                    {GValue::str("a"), GValue::raw(8, len)})),
             {"metadata key 'toks'[1]", "string length 1000"});
}

TEST(GgufReaderBad, ArrayCounts) {
  expect_bad(GgufWriter().add("arr", GValue::array(ValueType::UINT32, {GValue::u32(1)},
                                                   uint64_t{1} << 61)),
             {"metadata key 'arr'", "array count 2305843009213693952"});
  // Count that fits bytes-wise for u8 but not for strings (8 bytes each at least).
  std::vector<GValue> bytes(16, GValue::u8(0));
  expect_bad(GgufWriter().add("s", GValue::array_raw(8, bytes, 3)), {"'s'", "array count 3"});
  expect_bad(GgufWriter().add("t", GValue::array(ValueType::UINT8, {GValue::u8(1)}, 2)),
             {"'t'"});
}

TEST(GgufReaderBad, UnknownValueTypes) {
  expect_bad(GgufWriter().add("k", GValue::raw(13, {0, 0, 0, 0})),
             {"metadata key 'k'", "unknown value type 13"});
  expect_bad(GgufWriter().add("k", GValue::raw(0xFFFFFFFF, {})), {"'k'", "unknown value type"});
  expect_bad(GgufWriter().add("arr", GValue::array_raw(99, {})),
             {"metadata key 'arr'", "unknown array element value type 99"});
}

TEST(GgufReaderBad, BoolValue) {
  expect_bad(GgufWriter().add("b", GValue::raw(7, {2})), {"metadata key 'b'", "bool value 2"});
}

TEST(GgufReaderBad, Nesting) {
  auto nest = [](int levels) {
    GValue v = GValue::array(ValueType::UINT8, {GValue::u8(1)});
    for (int k = 1; k < levels; ++k) v = GValue::array(ValueType::ARRAY, {v});
    return v;
  };
  EXPECT_NO_THROW(GgufWriter().add("deep", nest(8)).open());
  expect_bad(GgufWriter().add("deep", nest(9)), {"metadata key 'deep'", "nested deeper than 8"});
  // Deep enough to blow the stack if depth were unchecked.
  expect_bad(GgufWriter().add("deep", nest(1000)), {"'deep'", "nested"});
}

TEST(GgufReaderBad, Alignment) {
  expect_bad(GgufWriter().alignment(0), {"general.alignment", "power of two"});
  expect_bad(GgufWriter().alignment(48), {"general.alignment", "48"});
  expect_bad(GgufWriter().add_u64("general.alignment", 32), {"general.alignment", "UINT64"});
}

TEST(GgufReaderBad, TensorName) {
  expect_bad(GgufWriter().add_f32_tensor("", {1}, {1}), {"tensor info #0", "empty"});
  expect_bad(GgufWriter().add_f32_tensor("w", {1}, {1}).add_f32_tensor("w", {1}, {2}),
             {"tensor 'w'", "duplicate"});
  GTensor t;
  t.name = "x";
  t.type = 0;
  t.dims = {1};
  std::vector<uint8_t> b = GgufWriter().add_tensor(t).to_bytes();
  const uint64_t huge = 1u << 20;
  std::memcpy(b.data() + 24, &huge, 8);  // the name's length field
  expect_error([&] { File::from_bytes(b.data(), b.size(), "bad.gguf"); },
               "tensor info #0 name: string length 1048576");
}

TEST(GgufReaderBad, TensorType) {
  for (uint32_t id : {4u, 31u, 36u, 0xFFFFFFFFu}) {
    GTensor t{"w", id, {32}, std::vector<uint8_t>(128), {}, {}};
    expect_bad(GgufWriter().add_tensor(t), {"tensor 'w'", "unknown tensor type id " +
                                                              std::to_string(id)});
  }
}

TEST(GgufReaderBad, TensorDims) {
  GTensor t{"w", 0, {4}, std::vector<uint8_t>(16), {}, {}};
  GTensor zero = t;
  zero.n_dims_override = 0;
  zero.dims = {};
  expect_bad(GgufWriter().add_tensor(zero), {"tensor 'w'", "n_dims 0"});
  GTensor five = t;
  five.dims = {4, 1, 1, 1, 1};
  expect_bad(GgufWriter().add_tensor(five), {"tensor 'w'", "n_dims 5"});
  GTensor big_ndims = t;
  big_ndims.n_dims_override = 1u << 31;
  expect_bad(GgufWriter().add_tensor(big_ndims), {"tensor 'w'", "n_dims 2147483648"});
  GTensor d0 = t;
  d0.dims = {4, 0};
  expect_bad(GgufWriter().add_tensor(d0), {"tensor 'w' dims[1] = 0"});
  GTensor neg = t;
  neg.dims = {uint64_t{1} << 63};  // negative as int64
  expect_bad(GgufWriter().add_tensor(neg), {"tensor 'w' dims[0]", "positive int64"});
}

TEST(GgufReaderBad, TensorSizeOverflow) {
  GTensor t{"w", 0, {uint64_t{1} << 40, uint64_t{1} << 40}, {}, {}, {}};
  expect_bad(GgufWriter().add_tensor(t), {"tensor 'w'", "element count overflows"});
  // 2^62 F32 elements fit in int64 but their bytes do not fit in 64 bits.
  t.dims = {uint64_t{1} << 31, uint64_t{1} << 31};
  expect_bad(GgufWriter().add_tensor(t), {"tensor 'w'", "byte size overflows"});
  // 4 dims, each fine, product overflows only at the last step.
  t.dims = {1 << 16, 1 << 16, 1 << 16, 1 << 16};
  expect_bad(GgufWriter().add_tensor(t), {"tensor 'w'", "element count overflows"});
}

TEST(GgufReaderBad, TensorBlockSize) {
  GTensor t{"blk.0.w", static_cast<uint32_t>(GgmlType::Q8_0), {33, 2}, {}, {}, {}};
  t.data.resize(200);
  expect_bad(GgufWriter().add_tensor(t), {"tensor 'blk.0.w'", "dims[0] = 33", "block size 32"});
}

TEST(GgufReaderBad, TensorOffset) {
  GTensor t{"w", 0, {4}, std::vector<uint8_t>(64), {}, 8};
  expect_bad(GgufWriter().add_tensor(t),
             {"tensor 'w'", "data offset 8 is not a multiple of the alignment 32"});
  t.offset_override = 64;  // aligned, but 64 + 16 > 64 data bytes
  expect_bad(GgufWriter().add_tensor(t), {"tensor 'w'", "past the end of the file"});
  t.offset_override = ~uint64_t{0} - 31;  // offset + size would wrap around
  expect_bad(GgufWriter().add_tensor(t), {"tensor 'w'", "past the end"});
  // Data cut short by truncation.
  GgufWriter w;
  w.add_f32_tensor("a", {2}, {1, 2}).add_f32_tensor("b", {64}, std::vector<float>(64, 1));
  const size_t full = w.to_bytes().size();
  expect_bad(w.truncate_to(full - 1), {"tensor 'b'", "past the end"});
}

TEST(GgufReaderBad, DataSectionPastEnd) {
  // The infos end off alignment and the file stops right there, so the aligned start of
  // the data section lies past the end of the file.
  GTensor t{"w", 0, {1}, {}, {}, 0};
  GgufWriter w;
  w.add_u8("x", 1).add_tensor(t);
  // header 24 + kv (8 + 1 + 4 + 1) + info (8 + 1 + 4 + 8 + 4 + 8) = 71, padded to 96.
  std::vector<uint8_t> b = w.to_bytes();
  ASSERT_EQ(b.size(), 96u);
  b.resize(71);
  expect_error([&] { File::from_bytes(b.data(), b.size(), "bad.gguf"); },
               "data section starts at offset 96");
}

// ---- sweeps: no input may crash or throw anything but batchmax::Error ----------------------

TEST(GgufReaderBad, EveryTruncationIsAnError) {
  const std::vector<uint8_t> full = small_model().to_bytes();
  ASSERT_NO_THROW(File::from_bytes(full.data(), full.size()));
  for (size_t n = 0; n < full.size(); ++n) {
    std::vector<uint8_t> cut(full.begin(), full.begin() + static_cast<std::ptrdiff_t>(n));
    EXPECT_THROW(File::from_bytes(cut.data(), cut.size()), batchmax::Error) << "length " << n;
  }
}

TEST(GgufReaderBad, RandomCorruptionNeverCrashes) {
  const std::vector<uint8_t> full = small_model().to_bytes();
  std::mt19937 rng(1234);
  int accepted = 0;
  for (int iter = 0; iter < 3000; ++iter) {
    std::vector<uint8_t> b = full;
    const int flips = 1 + static_cast<int>(rng() % 4);
    for (int k = 0; k < flips; ++k) {
      const size_t pos = rng() % b.size();
      // Half the time a random byte, half the time a single flipped bit.
      b[pos] = static_cast<uint8_t>((rng() % 2) ? rng() : b[pos] ^ (1u << (rng() % 8)));
    }
    try {
      auto f = File::from_bytes(b.data(), b.size());
      ++accepted;
      // Whatever was accepted must be internally consistent.
      for (const auto& t : f->tensors()) {
        ASSERT_NE(t.data, nullptr);
        ASSERT_LE(t.offset + t.n_bytes, f->file_size());
        (void)t.n_elements();
      }
    } catch (const batchmax::Error&) {
    }
  }
  EXPECT_GT(accepted, 0);  // flips inside tensor data are harmless
}

// ---- shared vocabulary-only files ---------------------------------------------------------

TEST(GgufReader, VocabularyOnlyFiles) {
  const std::string dir = shared_tokenizer_dir();
  if (dir.empty()) GTEST_SKIP() << "shared tokenizer test data not found";
  int seen = 0;
  for (const auto& entry : std::filesystem::directory_iterator(dir)) {
    if (entry.path().extension() != ".gguf") continue;
    SCOPED_TRACE(entry.path().string());
    ++seen;
    auto f = File::open(entry.path().string());
    EXPECT_TRUE(f->tensors().empty());
    EXPECT_FALSE(f->get_string("tokenizer.ggml.model").empty());
    const auto& toks = f->require("tokenizer.ggml.tokens").as_array();
    EXPECT_EQ(toks.elem_type, ValueType::STRING);
    ASSERT_GT(toks.items.size(), 1000u);
    for (const auto& t : toks.items) ASSERT_EQ(t.type, ValueType::STRING);
    if (f->has("tokenizer.ggml.token_type")) {
      EXPECT_EQ(f->require("tokenizer.ggml.token_type").as_array().items.size(),
                toks.items.size());
    }
  }
  EXPECT_EQ(seen, 5);
}

// ---- the real model ---------------------------------------------------------------------

TEST(GgufReader, SmolLM2) {
  BATCHMAX_REQUIRE_SMOLLM2();
  auto f = File::open(batchmax::test::smollm2_path());
  EXPECT_EQ(f->version(), 3u);
  EXPECT_EQ(f->get_string("general.architecture"), "llama");
  EXPECT_EQ(f->get_int("llama.block_count"), 30);
  EXPECT_EQ(f->get_int("llama.embedding_length"), 576);
  EXPECT_NEAR(f->get_float("llama.rope.freq_base"), 100000.0, 1e-3);
  EXPECT_EQ(f->tensors().size(), 272u);
  EXPECT_EQ(f->alignment(), 32u);
  EXPECT_EQ(f->data_offset(), 1785664u);  // GGUFReader(PATH).data_offset
  const auto& emb = f->require_tensor("token_embd.weight");
  EXPECT_EQ(emb.type, GgmlType::Q8_0);
  EXPECT_EQ(emb.dims, (std::vector<int64_t>{576, 49152}));
  EXPECT_EQ(f->require("tokenizer.ggml.tokens").as_array().items.size(), 49152u);

  std::vector<float> row(576);
  // python3 -c "from gguf import GGUFReader; from gguf.quants import dequantize;
  //   t={x.name:x for x in GGUFReader(PATH).tensors}['token_embd.weight'];
  //   print(dequantize(t.data, t.tensor_type)[1000, [0,1,31,32,575]].tolist())"
  const size_t emb_row = batchmax::row_bytes(emb.type, 576);
  batchmax::dequantize_row(emb.type, emb.data + 1000 * emb_row, row.data(), 576);
  const float emb_ref[] = {-0.1119384765625f, -0.0739593505859375f, 0.211883544921875f,
                           0.0050754547119140625f, 0.11810302734375f};
  const int emb_idx[] = {0, 1, 31, 32, 575};
  for (int k = 0; k < 5; ++k) EXPECT_NEAR(row[emb_idx[k]], emb_ref[k], 1e-6) << emb_idx[k];

  // Same one-liner with 'blk.0.attn_q.weight', row 3, [0,1,15,16,31,32,100,575].
  const auto& q = f->require_tensor("blk.0.attn_q.weight");
  ASSERT_EQ(q.type, GgmlType::Q4_1);
  ASSERT_EQ(q.dims, (std::vector<int64_t>{576, 576}));
  const size_t q_row = batchmax::row_bytes(q.type, 576);
  EXPECT_EQ(q.n_bytes, q_row * 576);
  batchmax::dequantize_row(q.type, q.data + 3 * q_row, row.data(), 576);
  const float q_ref[] = {-0.06280517578125f, 0.1446533203125f, 0.07550048828125f,
                         -0.06280517578125f, 0.49041748046875f, -0.2889404296875f,
                         0.30572509765625f, 0.030517578125f};
  const int q_idx[] = {0, 1, 15, 16, 31, 32, 100, 575};
  for (int k = 0; k < 8; ++k) EXPECT_NEAR(row[q_idx[k]], q_ref[k], 1e-6) << q_idx[k];
}

// Memory-exhaustion guards: a count that fits in the file's bytes but would cost many
// times the file's size in memory (an 80-byte Value per 1-byte UINT8 item) is refused
// before anything is reserved or parsed.
namespace {

// A v3 header with the given counts, then one key "big" holding an array of `count`
// items of `elem`, followed by `payload` zero bytes.
std::vector<uint8_t> big_array_file(uint64_t n_kv, uint64_t n_tensors, uint32_t elem,
                                    uint64_t count, size_t payload) {
  using batchmax::test::gguf_bytes::put;
  std::vector<uint8_t> b = {'G', 'G', 'U', 'F'};
  put<uint32_t>(b, 3);
  put<uint64_t>(b, n_tensors);
  put<uint64_t>(b, n_kv);
  batchmax::test::gguf_bytes::put_string(b, "big");
  put<uint32_t>(b, static_cast<uint32_t>(ValueType::ARRAY));
  put<uint32_t>(b, elem);
  put<uint64_t>(b, count);
  b.resize(b.size() + payload, 0);
  return b;
}

}  // namespace

TEST(GgufReaderLimits, ArrayItemsPastTheValueLimit) {
  const uint64_t n = batchmax::gguf::kMaxMetadataValues;  // + the key itself = limit + 1
  auto b = big_array_file(1, 0, static_cast<uint32_t>(ValueType::UINT8), n, n);
  expect_error([&] { File::from_bytes(b.data(), b.size(), "big.gguf"); },
               "array count 8388608 takes the metadata past its limit of 8388608 values");
}

TEST(GgufReaderLimits, NestedArraysShareOneBudget) {
  // With a budget of 20 values: 2 keys, the first an array of 13 leaves 5; the second
  // takes 1 for its outer array, so an inner array of 5 is refused and one of 4 parses.
  using batchmax::test::gguf_bytes::put;
  const batchmax::gguf::ReadLimits limits{20, 10};
  auto b = big_array_file(2, 0, static_cast<uint32_t>(ValueType::UINT8), 13, 13);
  batchmax::test::gguf_bytes::put_string(b, "second");
  put<uint32_t>(b, static_cast<uint32_t>(ValueType::ARRAY));
  put<uint32_t>(b, static_cast<uint32_t>(ValueType::ARRAY));
  put<uint64_t>(b, 1);
  put<uint32_t>(b, static_cast<uint32_t>(ValueType::UINT8));
  put<uint64_t>(b, 5);
  b.resize(b.size() + 5, 0);
  expect_error([&] { File::from_bytes(b.data(), b.size(), "big.gguf", limits); },
               "metadata key 'second'[0]: array count 5 takes the metadata past its limit of 20");
  EXPECT_NO_THROW(File::from_bytes(b.data(), b.size(), "big.gguf"));  // default limits
  std::vector<uint8_t> ok(b.begin(), b.end() - 5 - 8);
  put<uint64_t>(ok, 4);
  ok.resize(ok.size() + 4, 0);
  EXPECT_NO_THROW(File::from_bytes(ok.data(), ok.size(), "ok.gguf", limits));
  // The tensor limit is configurable the same way.
  GgufWriter w;
  for (int i = 0; i < 11; ++i) w.add_f32_tensor("t" + std::to_string(i), {1}, {0.0f});
  const std::vector<uint8_t> t = w.to_bytes();
  expect_error([&] { File::from_bytes(t.data(), t.size(), "t.gguf", limits); },
               "tensor_count 11 is over the limit of 10 tensors");
  EXPECT_NO_THROW(File::from_bytes(t.data(), t.size(), "t.gguf"));
}

TEST(GgufReaderLimits, KvAndTensorCountsPastTheLimits) {
  // Counts that the file's length allows (a kv takes >= 12 bytes, a tensor info >= 24):
  // sparse files of ~100 MB, mapped rather than read.
  auto check = [](GgufWriter w, uint64_t length, const std::string& needle) {
    const std::string path = ::testing::TempDir() + "batchmax_limits.gguf";
    w.write_file(path);
    ASSERT_EQ(::truncate(path.c_str(), static_cast<off_t>(length)), 0);
    expect_error([&] { File::open(path); }, needle);
    std::filesystem::remove(path);
  };
  const uint64_t kv = batchmax::gguf::kMaxMetadataValues + 1;
  check(GgufWriter().kv_count_override(kv), 24 + kv * 12,
        "kv_count 8388609 is over the limit of 8388608 metadata values");
  const uint64_t nt = batchmax::gguf::kMaxTensors + 1;
  check(GgufWriter().tensor_count_override(nt), 24 + nt * 24,
        "tensor_count 1048577 is over the limit of 1048576 tensors");
}
