#pragma once
// Validating reader of GGUF v2/v3 files. Nothing read from the file is trusted before
// it is checked against the file's length: counts, string and array lengths, type ids,
// dimensions, sizes and offsets. Every failure is a batchmax::Error naming the field.
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "format/tensor_types.h"

namespace batchmax::gguf {

// Limits independent of the file's length. A metadata value costs ~80 bytes in memory
// however small it is in the file (a UINT8 array item is 1 byte), and a tensor info
// ~150, so a large file could otherwise demand many times its size in RAM. Real models
// hold < 2M values (vocabularies, merges) and a few thousand tensors.
inline constexpr uint64_t kMaxMetadataValues = uint64_t(1) << 23;  // keys + array items
inline constexpr uint64_t kMaxTensors = uint64_t(1) << 20;

struct ReadLimits {
  uint64_t max_metadata_values = kMaxMetadataValues;
  uint64_t max_tensors = kMaxTensors;
};

enum class ValueType : uint32_t {
  UINT8 = 0, INT8 = 1, UINT16 = 2, INT16 = 3, UINT32 = 4, INT32 = 5, FLOAT32 = 6,
  BOOL = 7, STRING = 8, ARRAY = 9, UINT64 = 10, INT64 = 11, FLOAT64 = 12,
};
const char* value_type_name(ValueType t);

struct Value;
struct Array {
  ValueType elem_type = ValueType::UINT8;
  std::vector<Value> items;
};

// One metadata value. Integers keep their signedness; arrays may nest.
struct Value {
  ValueType type = ValueType::UINT8;
  uint64_t u = 0;       // UINT*, BOOL
  int64_t i = 0;        // INT*
  double f = 0;         // FLOAT*
  std::string s;        // STRING
  std::shared_ptr<Array> arr;  // ARRAY

  bool is_integer() const;
  bool is_float() const { return type == ValueType::FLOAT32 || type == ValueType::FLOAT64; }
  // Conversions that throw batchmax::Error when the value does not fit.
  int64_t as_int() const;
  uint64_t as_uint() const;
  double as_float() const;  // accepts integers too
  bool as_bool() const;
  const std::string& as_string() const;
  const Array& as_array() const;
  std::string to_display_string(size_t max_items = 8) const;
};

struct TensorInfo {
  std::string name;
  std::vector<int64_t> dims;  // GGUF order: dims[0] is the contiguous (row) dimension
  GgmlType type = GgmlType::F32;
  uint64_t offset = 0;        // relative to the start of the data section
  uint64_t n_bytes = 0;
  const uint8_t* data = nullptr;  // inside the mapped file

  int64_t n_elements() const;
  int64_t n_rows() const;     // product of dims[1..]
  int64_t row_length() const { return dims.empty() ? 0 : dims[0]; }
};

class File {
 public:
  // Maps the file read-only and validates header, metadata and tensor infos.
  static std::unique_ptr<File> open(const std::string& path, const ReadLimits& limits = {});
  // Same validation on bytes in memory (tests, fuzzing). The bytes are copied.
  static std::unique_ptr<File> from_bytes(const uint8_t* data, size_t size,
                                          const std::string& name = "<memory>",
                                          const ReadLimits& limits = {});
  ~File();
  File(const File&) = delete;
  File& operator=(const File&) = delete;

  const std::string& path() const { return path_; }
  uint32_t version() const { return version_; }
  uint64_t alignment() const { return alignment_; }
  uint64_t file_size() const { return size_; }
  // Absolute file offset of the data section (TensorInfo::offset is relative to it);
  // 0 for files without tensors.
  uint64_t data_offset() const { return data_offset_; }

  // Metadata in file order.
  const std::vector<std::pair<std::string, Value>>& metadata() const { return kv_; }
  const Value* find(const std::string& key) const;
  bool has(const std::string& key) const { return find(key) != nullptr; }
  // Typed getters: throw batchmax::Error "<path>: metadata key 'k' is missing" or
  // "... has type X, expected Y".
  const Value& require(const std::string& key) const;
  std::string get_string(const std::string& key) const;
  int64_t get_int(const std::string& key) const;
  double get_float(const std::string& key) const;
  std::optional<int64_t> get_int_opt(const std::string& key) const;
  std::optional<double> get_float_opt(const std::string& key) const;
  std::optional<std::string> get_string_opt(const std::string& key) const;

  const std::vector<TensorInfo>& tensors() const { return tensors_; }
  const TensorInfo* find_tensor(const std::string& name) const;
  // Throws "<path>: required tensor 'name' is missing".
  const TensorInfo& require_tensor(const std::string& name) const;

 private:
  File() = default;
  void parse();
  void parse_or_throw();  // parse(), with std::bad_alloc turned into batchmax::Error

  std::string path_;
  const uint8_t* base_ = nullptr;
  uint64_t size_ = 0;
  bool mapped_ = false;
  ReadLimits limits_;
  std::vector<uint8_t> owned_;
  uint32_t version_ = 0;
  uint64_t alignment_ = 32;
  uint64_t data_offset_ = 0;
  std::vector<std::pair<std::string, Value>> kv_;
  std::map<std::string, size_t> kv_index_;
  std::vector<TensorInfo> tensors_;
  std::map<std::string, size_t> tensor_index_;
};

}  // namespace batchmax::gguf
