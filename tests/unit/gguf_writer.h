#pragma once
// Builds GGUF files in memory for tests: metadata of every value type (arrays nested at
// will), tensors with any type/dims/raw bytes, and knobs to corrupt each field so tests
// can hand the reader broken files. Not a production writer: it trusts its caller.
//
//   batchmax::test::GgufWriter w;
//   w.add_string("general.architecture", "llama").add_u32("llama.block_count", 2);
//   w.add_tensor("tok", batchmax::GgmlType::F32, {4, 2}, floats_as_bytes(data));
//   std::vector<uint8_t> bytes = w.to_bytes();      // or w.write_file(path)
#include <cstdint>
#include <cstring>
#include <fstream>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "format/gguf_reader.h"
#include "format/tensor_types.h"

namespace batchmax::test {

using gguf::ValueType;

namespace gguf_bytes {
template <typename T>
inline void put(std::vector<uint8_t>& out, T v) {
  uint8_t b[sizeof(T)];
  std::memcpy(b, &v, sizeof(T));  // little-endian host, as GGUF
  out.insert(out.end(), b, b + sizeof(T));
}
inline void put_string(std::vector<uint8_t>& out, const std::string& s) {
  put<uint64_t>(out, s.size());
  out.insert(out.end(), s.begin(), s.end());
}
}  // namespace gguf_bytes

// One encoded metadata value: its type id and its bytes (without the type id).
struct GValue {
  uint32_t type = 0;
  std::vector<uint8_t> bytes;

  template <typename T>
  static GValue scalar(ValueType t, T v) {
    GValue g{static_cast<uint32_t>(t), {}};
    gguf_bytes::put<T>(g.bytes, v);
    return g;
  }
  static GValue u8(uint8_t v) { return scalar(ValueType::UINT8, v); }
  static GValue i8(int8_t v) { return scalar(ValueType::INT8, v); }
  static GValue u16(uint16_t v) { return scalar(ValueType::UINT16, v); }
  static GValue i16(int16_t v) { return scalar(ValueType::INT16, v); }
  static GValue u32(uint32_t v) { return scalar(ValueType::UINT32, v); }
  static GValue i32(int32_t v) { return scalar(ValueType::INT32, v); }
  static GValue u64(uint64_t v) { return scalar(ValueType::UINT64, v); }
  static GValue i64(int64_t v) { return scalar(ValueType::INT64, v); }
  static GValue f32(float v) { return scalar(ValueType::FLOAT32, v); }
  static GValue f64(double v) { return scalar(ValueType::FLOAT64, v); }
  static GValue boolean(bool v) { return scalar<uint8_t>(ValueType::BOOL, v ? 1 : 0); }
  static GValue str(const std::string& s) {
    GValue g{static_cast<uint32_t>(ValueType::STRING), {}};
    gguf_bytes::put_string(g.bytes, s);
    return g;
  }
  // Items must all have type `elem` (not checked: that is how bad files are made).
  // `count_override` writes a different item count than items.size().
  static GValue array(ValueType elem, const std::vector<GValue>& items,
                      std::optional<uint64_t> count_override = std::nullopt) {
    return array_raw(static_cast<uint32_t>(elem), items, count_override);
  }
  static GValue array_raw(uint32_t elem_type_id, const std::vector<GValue>& items,
                          std::optional<uint64_t> count_override = std::nullopt) {
    GValue g{static_cast<uint32_t>(ValueType::ARRAY), {}};
    gguf_bytes::put<uint32_t>(g.bytes, elem_type_id);
    gguf_bytes::put<uint64_t>(g.bytes, count_override.value_or(items.size()));
    for (const GValue& it : items) g.bytes.insert(g.bytes.end(), it.bytes.begin(), it.bytes.end());
    return g;
  }
  static GValue strings(const std::vector<std::string>& v) {
    std::vector<GValue> items;
    for (const auto& s : v) items.push_back(str(s));
    return array(ValueType::STRING, items);
  }
  template <typename T>
  static GValue numbers(ValueType elem, const std::vector<T>& v) {
    std::vector<GValue> items;
    for (T x : v) items.push_back(scalar<T>(elem, x));
    return array(elem, items);
  }
  // Anything at all: a type id (maybe invalid) followed by arbitrary bytes.
  static GValue raw(uint32_t type_id, std::vector<uint8_t> bytes) {
    return GValue{type_id, std::move(bytes)};
  }
};

// One tensor info plus its data. Fields marked "override" let tests corrupt the info.
struct GTensor {
  std::string name;
  uint32_t type = 0;               // ggml type id, may be invalid on purpose
  std::vector<uint64_t> dims;      // written as is (0, huge, ... allowed)
  std::vector<uint8_t> data;       // raw bytes placed in the data section
  std::optional<uint32_t> n_dims_override;
  std::optional<uint64_t> offset_override;  // default: next aligned slot
};

class GgufWriter {
 public:
  // ---- header -------------------------------------------------------------------
  GgufWriter& version(uint32_t v) { version_ = v; return *this; }
  GgufWriter& magic(const std::string& m) { magic_ = m; return *this; }
  GgufWriter& tensor_count_override(uint64_t n) { tensor_count_ = n; return *this; }
  GgufWriter& kv_count_override(uint64_t n) { kv_count_ = n; return *this; }
  // Layout alignment; also writes general.alignment (u32) unless write_key is false.
  GgufWriter& alignment(uint32_t a, bool write_key = true) {
    alignment_ = a;
    if (write_key) add("general.alignment", GValue::u32(a));
    return *this;
  }
  // Cut the output to this many bytes (after everything else is written).
  GgufWriter& truncate_to(size_t n) { truncate_ = n; return *this; }
  // Extra bytes appended after the data section.
  GgufWriter& trailing_bytes(size_t n) { trailing_ = n; return *this; }

  // ---- metadata ------------------------------------------------------------------
  GgufWriter& add(const std::string& key, GValue v) {
    kv_.emplace_back(key, std::move(v));
    return *this;
  }
  GgufWriter& add_u8(const std::string& k, uint8_t v) { return add(k, GValue::u8(v)); }
  GgufWriter& add_i8(const std::string& k, int8_t v) { return add(k, GValue::i8(v)); }
  GgufWriter& add_u16(const std::string& k, uint16_t v) { return add(k, GValue::u16(v)); }
  GgufWriter& add_i16(const std::string& k, int16_t v) { return add(k, GValue::i16(v)); }
  GgufWriter& add_u32(const std::string& k, uint32_t v) { return add(k, GValue::u32(v)); }
  GgufWriter& add_i32(const std::string& k, int32_t v) { return add(k, GValue::i32(v)); }
  GgufWriter& add_u64(const std::string& k, uint64_t v) { return add(k, GValue::u64(v)); }
  GgufWriter& add_i64(const std::string& k, int64_t v) { return add(k, GValue::i64(v)); }
  GgufWriter& add_f32(const std::string& k, float v) { return add(k, GValue::f32(v)); }
  GgufWriter& add_f64(const std::string& k, double v) { return add(k, GValue::f64(v)); }
  GgufWriter& add_bool(const std::string& k, bool v) { return add(k, GValue::boolean(v)); }
  GgufWriter& add_string(const std::string& k, const std::string& v) {
    return add(k, GValue::str(v));
  }
  GgufWriter& add_strings(const std::string& k, const std::vector<std::string>& v) {
    return add(k, GValue::strings(v));
  }
  GgufWriter& add_i32s(const std::string& k, const std::vector<int32_t>& v) {
    return add(k, GValue::numbers(ValueType::INT32, v));
  }
  GgufWriter& add_f32s(const std::string& k, const std::vector<float>& v) {
    return add(k, GValue::numbers(ValueType::FLOAT32, v));
  }

  // ---- tensors -------------------------------------------------------------------
  GgufWriter& add_tensor(GTensor t) {
    tensors_.push_back(std::move(t));
    return *this;
  }
  // dims in GGUF order (dims[0] contiguous). Empty `data` means zero bytes of the
  // right size for type and dims.
  GgufWriter& add_tensor(const std::string& name, GgmlType type, const std::vector<int64_t>& dims,
                         std::vector<uint8_t> data = {}) {
    GTensor t;
    t.name = name;
    t.type = static_cast<uint32_t>(type);
    int64_t n = 1;
    for (int64_t d : dims) { t.dims.push_back(static_cast<uint64_t>(d)); n *= d; }
    if (data.empty()) data.assign(batchmax::row_bytes(type, dims.empty() ? 0 : dims[0]) *
                                      static_cast<size_t>(dims.empty() ? 0 : n / dims[0]), 0);
    t.data = std::move(data);
    return add_tensor(std::move(t));
  }
  GgufWriter& add_f32_tensor(const std::string& name, const std::vector<int64_t>& dims,
                             const std::vector<float>& values) {
    std::vector<uint8_t> b(values.size() * 4);
    std::memcpy(b.data(), values.data(), b.size());
    return add_tensor(name, GgmlType::F32, dims, std::move(b));
  }

  // ---- output --------------------------------------------------------------------
  std::vector<uint8_t> to_bytes() const {
    using namespace gguf_bytes;
    std::vector<uint8_t> out;
    out.insert(out.end(), magic_.begin(), magic_.end());
    put<uint32_t>(out, version_);
    put<uint64_t>(out, tensor_count_.value_or(tensors_.size()));
    put<uint64_t>(out, kv_count_.value_or(kv_.size()));
    for (const auto& [k, v] : kv_) {
      put_string(out, k);
      put<uint32_t>(out, v.type);
      out.insert(out.end(), v.bytes.begin(), v.bytes.end());
    }
    // Lay out data first so infos can carry the offsets.
    std::vector<uint64_t> offsets;
    uint64_t data_size = 0;
    for (const GTensor& t : tensors_) {
      data_size = align(data_size);
      offsets.push_back(data_size);
      data_size += t.data.size();
    }
    for (size_t i = 0; i < tensors_.size(); ++i) {
      const GTensor& t = tensors_[i];
      put_string(out, t.name);
      put<uint32_t>(out, t.n_dims_override.value_or(static_cast<uint32_t>(t.dims.size())));
      for (uint64_t d : t.dims) put<uint64_t>(out, d);
      put<uint32_t>(out, t.type);
      put<uint64_t>(out, t.offset_override.value_or(offsets[i]));
    }
    if (!tensors_.empty()) {
      out.resize(align(out.size()), 0);
      const size_t data_start = out.size();
      out.resize(data_start + data_size, 0);
      for (size_t i = 0; i < tensors_.size(); ++i)
        if (!tensors_[i].data.empty())
          std::memcpy(out.data() + data_start + offsets[i], tensors_[i].data.data(),
                      tensors_[i].data.size());
    }
    out.resize(out.size() + trailing_, 0);
    if (truncate_ && *truncate_ < out.size()) out.resize(*truncate_);
    return out;
  }

  void write_file(const std::string& path) const {
    const std::vector<uint8_t> b = to_bytes();
    std::ofstream f(path, std::ios::binary | std::ios::trunc);
    if (!f) throw std::runtime_error("cannot write " + path);
    f.write(reinterpret_cast<const char*>(b.data()), static_cast<std::streamsize>(b.size()));
    if (!f) throw std::runtime_error("cannot write " + path);
  }

  // Parse the output with the reader under test.
  std::unique_ptr<gguf::File> open(const std::string& name = "test.gguf") const {
    const std::vector<uint8_t> b = to_bytes();
    return gguf::File::from_bytes(b.data(), b.size(), name);
  }

 private:
  uint64_t align(uint64_t x) const {
    const uint64_t a = alignment_ ? alignment_ : 1;
    return (x + a - 1) / a * a;
  }

  std::string magic_ = "GGUF";
  uint32_t version_ = 3;
  std::optional<uint64_t> tensor_count_, kv_count_;
  uint64_t alignment_ = 32;
  std::optional<size_t> truncate_;
  size_t trailing_ = 0;
  std::vector<std::pair<std::string, GValue>> kv_;
  std::vector<GTensor> tensors_;
};

// Bytes of a vector of trivially copyable values (tensor data for add_tensor).
template <typename T>
std::vector<uint8_t> as_bytes(const std::vector<T>& v) {
  std::vector<uint8_t> b(v.size() * sizeof(T));
  if (!b.empty()) std::memcpy(b.data(), v.data(), b.size());
  return b;
}

}  // namespace batchmax::test
