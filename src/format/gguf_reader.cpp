// Validating GGUF v2/v3 reader. Every count, length, id, dimension and offset read from
// the file is checked against the bytes that remain before it sizes an allocation or
// a pointer, so a corrupt or hostile file ends in a batchmax::Error naming the field.
#include "format/gguf_reader.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <bit>
#include <cerrno>
#include <climits>
#include <cstring>
#include <functional>
#include <limits>
#include <new>
#include <sstream>
#include <type_traits>

#include "core/error.h"

namespace batchmax::gguf {

namespace {

constexpr uint32_t kMaxValueType = static_cast<uint32_t>(ValueType::FLOAT64);
constexpr int kMaxNesting = 8;     // arrays of arrays deeper than this are rejected
constexpr uint32_t kMaxDims = 4;   // GGML_MAX_DIMS
constexpr uint64_t kDefaultAlignment = 32;
// A count that passed the bytes-remaining check can still be ~100x larger in memory
// (a 1-byte u8 item becomes a Value), so reservations are capped and vectors grow only
// as items actually parse.
constexpr uint64_t kMaxReserve = 1 << 16;
size_t capped(uint64_t n) { return static_cast<size_t>(n < kMaxReserve ? n : kMaxReserve); }
// Smallest encodings of a kv (key length + value type) and a tensor info (name length +
// n_dims + type + offset), used to bound the counts before anything is reserved. They
// are deliberately loose so the more specific per-field errors still fire on tiny files.
constexpr uint64_t kMinKvBytes = 8 + 4;
constexpr uint64_t kMinTensorInfoBytes = 8 + 4 + 4 + 8;

// Bytes a value of scalar type `t` occupies; 0 for STRING/ARRAY (variable).
uint64_t scalar_size(ValueType t) {
  switch (t) {
    case ValueType::UINT8: case ValueType::INT8: case ValueType::BOOL: return 1;
    case ValueType::UINT16: case ValueType::INT16: return 2;
    case ValueType::UINT32: case ValueType::INT32: case ValueType::FLOAT32: return 4;
    case ValueType::UINT64: case ValueType::INT64: case ValueType::FLOAT64: return 8;
    default: return 0;
  }
}

// Lower bound on the encoded size of one value of type `t`.
uint64_t min_value_size(ValueType t) {
  if (t == ValueType::STRING) return 8;       // length
  if (t == ValueType::ARRAY) return 4 + 8;    // element type + count
  return scalar_size(t);
}

// Field descriptions are built only when an error is raised: large arrays (150k token
// strings) would otherwise pay one string allocation per item.
using Describe = std::function<std::string()>;

template <typename W>
std::string describe(const W& what) {
  if constexpr (std::is_invocable_v<W>) return what();
  else return std::string(what);
}

// Fields are memcpy'd as is, which is right only on little-endian hosts.
static_assert(std::endian::native == std::endian::little, "GGUF reader assumes little endian");

// Bounds-checked little-endian cursor over the file bytes.
class Cursor {
 public:
  Cursor(const uint8_t* base, uint64_t size, const std::string& path)
      : base_(base), size_(size), path_(path) {}

  uint64_t pos() const { return pos_; }
  uint64_t remaining() const { return size_ - pos_; }

  [[noreturn]] void fail(const std::string& what) const {
    throw Error(path_ + ": " + what);
  }

  template <typename W>
  void need(uint64_t n, const W& what) const {
    if (n > remaining())
      fail(describe(what) + ": needs " + std::to_string(n) + " bytes at offset " +
           std::to_string(pos_) + " but only " + std::to_string(remaining()) +
           " remain (file truncated?)");
  }

  template <typename T, typename W>
  T read(const W& what) {
    need(sizeof(T), what);
    T v;
    std::memcpy(&v, base_ + pos_, sizeof(T));  // hosts are little endian, as is GGUF
    pos_ += sizeof(T);
    return v;
  }

  template <typename W>
  std::string read_string(const W& what) {
    const uint64_t len = read<uint64_t>(what);
    if (len > remaining())
      fail(describe(what) + ": string length " + std::to_string(len) + " exceeds the " +
           std::to_string(remaining()) + " bytes remaining in the file");
    std::string s(reinterpret_cast<const char*>(base_ + pos_), static_cast<size_t>(len));
    pos_ += len;
    return s;
  }

 private:
  const uint8_t* base_;
  uint64_t size_;
  uint64_t pos_ = 0;
  const std::string& path_;
};

bool valid_value_type(uint32_t t) { return t <= kMaxValueType; }

std::string type_desc(uint32_t t) {
  return valid_value_type(t) ? value_type_name(static_cast<ValueType>(t))
                             : "unknown(" + std::to_string(t) + ")";
}

// `budget`: metadata values the file may still hold (ReadLimits::max_metadata_values in
// all); `limit` is that total, for the message.
Value read_value(Cursor& c, ValueType type, int depth, uint64_t& budget, uint64_t limit,
                 const Describe& what) {
  Value v;
  v.type = type;
  switch (type) {
    case ValueType::UINT8: v.u = c.read<uint8_t>(what); break;
    case ValueType::INT8: v.i = c.read<int8_t>(what); break;
    case ValueType::UINT16: v.u = c.read<uint16_t>(what); break;
    case ValueType::INT16: v.i = c.read<int16_t>(what); break;
    case ValueType::UINT32: v.u = c.read<uint32_t>(what); break;
    case ValueType::INT32: v.i = c.read<int32_t>(what); break;
    case ValueType::UINT64: v.u = c.read<uint64_t>(what); break;
    case ValueType::INT64: v.i = c.read<int64_t>(what); break;
    case ValueType::FLOAT32: v.f = c.read<float>(what); break;
    case ValueType::FLOAT64: v.f = c.read<double>(what); break;
    case ValueType::BOOL: {
      const uint8_t b = c.read<uint8_t>(what);
      if (b > 1) c.fail(what() + ": bool value " + std::to_string(b) + " is neither 0 nor 1");
      v.u = b;
      break;
    }
    case ValueType::STRING: v.s = c.read_string(what); break;
    case ValueType::ARRAY: {
      if (depth >= kMaxNesting)
        c.fail(what() + ": arrays nested deeper than " + std::to_string(kMaxNesting) + " levels");
      const uint32_t et = c.read<uint32_t>([&] { return what() + " array element type"; });
      if (!valid_value_type(et))
        c.fail(what() + ": unknown array element value type " + std::to_string(et));
      const ValueType elem = static_cast<ValueType>(et);
      const uint64_t count = c.read<uint64_t>([&] { return what() + " array count"; });
      // Bound the count by the bytes left before reserving anything.
      if (count > c.remaining() / min_value_size(elem))
        c.fail(what() + ": array count " + std::to_string(count) + " of " + type_desc(et) +
               " cannot fit in the " + std::to_string(c.remaining()) + " bytes remaining");
      if (count > budget)
        c.fail(what() + ": array count " + std::to_string(count) + " takes the metadata past " +
               "its limit of " + std::to_string(limit) + " values in all (max_metadata_values)");
      budget -= count;
      v.arr = std::make_shared<Array>();
      v.arr->elem_type = elem;
      v.arr->items.reserve(capped(count));
      for (uint64_t k = 0; k < count; ++k)
        v.arr->items.push_back(read_value(
            c, elem, depth + 1, budget, limit, [&] { return what() + "[" + std::to_string(k) + "]"; }));
      break;
    }
  }
  return v;
}

std::string quote(const std::string& s) { return "'" + s + "'"; }

}  // namespace

// ---- Value ---------------------------------------------------------------------------

const char* value_type_name(ValueType t) {
  switch (t) {
    case ValueType::UINT8: return "UINT8";
    case ValueType::INT8: return "INT8";
    case ValueType::UINT16: return "UINT16";
    case ValueType::INT16: return "INT16";
    case ValueType::UINT32: return "UINT32";
    case ValueType::INT32: return "INT32";
    case ValueType::FLOAT32: return "FLOAT32";
    case ValueType::BOOL: return "BOOL";
    case ValueType::STRING: return "STRING";
    case ValueType::ARRAY: return "ARRAY";
    case ValueType::UINT64: return "UINT64";
    case ValueType::INT64: return "INT64";
    case ValueType::FLOAT64: return "FLOAT64";
  }
  return "UNKNOWN";
}

namespace {
bool is_unsigned(ValueType t) {
  return t == ValueType::UINT8 || t == ValueType::UINT16 || t == ValueType::UINT32 ||
         t == ValueType::UINT64;
}
bool is_signed(ValueType t) {
  return t == ValueType::INT8 || t == ValueType::INT16 || t == ValueType::INT32 ||
         t == ValueType::INT64;
}
[[noreturn]] void type_error(ValueType have, const char* want) {
  throw Error(std::string("value has type ") + value_type_name(have) + ", expected " + want);
}
}  // namespace

bool Value::is_integer() const { return is_unsigned(type) || is_signed(type); }

int64_t Value::as_int() const {
  if (is_signed(type)) return i;
  if (is_unsigned(type)) {
    if (u > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
      throw Error("value " + std::to_string(u) + " does not fit in int64");
    return static_cast<int64_t>(u);
  }
  type_error(type, "an integer");
}

uint64_t Value::as_uint() const {
  if (is_unsigned(type)) return u;
  if (is_signed(type)) {
    if (i < 0) throw Error("value " + std::to_string(i) + " is negative, expected unsigned");
    return static_cast<uint64_t>(i);
  }
  type_error(type, "an unsigned integer");
}

double Value::as_float() const {
  if (is_float()) return f;
  if (is_signed(type)) return static_cast<double>(i);
  if (is_unsigned(type)) return static_cast<double>(u);
  type_error(type, "a number");
}

bool Value::as_bool() const {
  if (type != ValueType::BOOL) type_error(type, "BOOL");
  return u != 0;
}

const std::string& Value::as_string() const {
  if (type != ValueType::STRING) type_error(type, "STRING");
  return s;
}

const Array& Value::as_array() const {
  if (type != ValueType::ARRAY || !arr) type_error(type, "ARRAY");
  return *arr;
}

std::string Value::to_display_string(size_t max_items) const {
  std::ostringstream os;
  switch (type) {
    case ValueType::BOOL: os << (u ? "true" : "false"); break;
    case ValueType::STRING: os << '"' << s << '"'; break;
    case ValueType::FLOAT32: case ValueType::FLOAT64: os << f; break;
    case ValueType::ARRAY: {
      const auto& items = arr ? arr->items : std::vector<Value>{};
      os << '[';
      for (size_t k = 0; k < items.size() && k < max_items; ++k)
        os << (k ? ", " : "") << items[k].to_display_string(max_items);
      if (items.size() > max_items) os << ", ... (" << items.size() << " items)";
      os << ']';
      break;
    }
    default:
      if (is_signed(type)) os << i; else os << u;
  }
  return os.str();
}

// ---- TensorInfo ------------------------------------------------------------------------

int64_t TensorInfo::n_elements() const {
  int64_t n = 1;
  for (int64_t d : dims) n *= d;  // validated against overflow when the file was read
  return dims.empty() ? 0 : n;
}

int64_t TensorInfo::n_rows() const {
  int64_t n = 1;
  for (size_t k = 1; k < dims.size(); ++k) n *= dims[k];
  return dims.empty() ? 0 : n;
}

// ---- File ----------------------------------------------------------------------------

std::unique_ptr<File> File::open(const std::string& path, const ReadLimits& limits) {
  std::unique_ptr<File> f(new File());
  f->path_ = path;
  f->limits_ = limits;
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw Error(path + ": cannot open: " + std::strerror(errno));
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    const int e = errno;
    ::close(fd);
    throw Error(path + ": cannot stat: " + std::strerror(e));
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    throw Error(path + ": not a regular file");
  }
  f->size_ = static_cast<uint64_t>(st.st_size);
  if (f->size_ > 0) {  // mmap of length 0 fails; parse() reports the empty file
    void* p = ::mmap(nullptr, f->size_, PROT_READ, MAP_PRIVATE, fd, 0);
    if (p == MAP_FAILED) {
      const int e = errno;
      ::close(fd);
      throw Error(path + ": cannot mmap " + std::to_string(f->size_) + " bytes: " +
                  std::strerror(e));
    }
    f->base_ = static_cast<const uint8_t*>(p);
    f->mapped_ = true;
  }
  ::close(fd);  // the mapping keeps the file alive
  f->parse_or_throw();
  return f;
}

std::unique_ptr<File> File::from_bytes(const uint8_t* data, size_t size,
                                       const std::string& name, const ReadLimits& limits) {
  std::unique_ptr<File> f(new File());
  f->path_ = name;
  f->limits_ = limits;
  f->owned_.assign(data, data + size);
  f->base_ = f->owned_.data();
  f->size_ = size;
  f->parse_or_throw();
  return f;
}

File::~File() {
  if (mapped_) ::munmap(const_cast<uint8_t*>(base_), size_);
}

// Keeps the "every failure is a batchmax::Error" promise when a hostile but
// length-consistent file asks for more memory than the machine has.
void File::parse_or_throw() {
  try {
    parse();
  } catch (const std::bad_alloc&) {
    throw Error(path_ + ": out of memory while reading the metadata and tensor infos");
  }
}

void File::parse() {
  Cursor c(base_, size_, path_);
  if (size_ < 4 || std::memcmp(base_, "GGUF", 4) != 0)
    c.fail("bad magic: not a GGUF file (expected \"GGUF\" in the first 4 bytes)");
  c.read<uint32_t>("magic");
  version_ = c.read<uint32_t>("header version");
  if (version_ == 1)
    c.fail("GGUF version 1 is not supported (it predates 64-bit counts); convert the file "
           "to version 3");
  if (version_ != 2 && version_ != 3)
    c.fail("unsupported GGUF version " + std::to_string(version_) + " (supported: 2, 3)");
  const uint64_t n_tensors = c.read<uint64_t>("header tensor_count");
  const uint64_t n_kv = c.read<uint64_t>("header kv_count");
  if (n_kv > c.remaining() / kMinKvBytes)
    c.fail("header kv_count " + std::to_string(n_kv) + " cannot fit in the " +
           std::to_string(c.remaining()) + " bytes after the header");
  if (n_tensors > c.remaining() / kMinTensorInfoBytes)
    c.fail("header tensor_count " + std::to_string(n_tensors) + " cannot fit in the " +
           std::to_string(c.remaining()) + " bytes after the header");
  const uint64_t max_values = limits_.max_metadata_values;
  if (n_kv > max_values)
    c.fail("header kv_count " + std::to_string(n_kv) + " is over the limit of " +
           std::to_string(max_values) + " metadata values (max_metadata_values)");
  if (n_tensors > limits_.max_tensors)
    c.fail("header tensor_count " + std::to_string(n_tensors) + " is over the limit of " +
           std::to_string(limits_.max_tensors) + " tensors (max_tensors)");
  uint64_t value_budget = max_values - n_kv;

  // Metadata.
  kv_.reserve(capped(n_kv));
  for (uint64_t k = 0; k < n_kv; ++k) {
    const std::string idx = "metadata key #" + std::to_string(k);
    std::string key = c.read_string(idx);
    if (key.empty()) c.fail(idx + ": key string is empty");
    const std::string what = "metadata key " + quote(key);
    if (kv_index_.count(key)) c.fail(what + ": duplicate key");
    const uint32_t t = c.read<uint32_t>(what + " value type");
    if (!valid_value_type(t)) c.fail(what + ": unknown value type " + std::to_string(t));
    Value v = read_value(c, static_cast<ValueType>(t), 0, value_budget, max_values,
                         [&] { return what; });
    kv_index_.emplace(key, kv_.size());
    kv_.emplace_back(std::move(key), std::move(v));
  }

  if (const Value* a = find("general.alignment")) {
    if (a->type != ValueType::UINT32)
      c.fail(std::string("metadata key 'general.alignment' has type ") +
             value_type_name(a->type) + ", expected UINT32");
    if (a->u == 0 || (a->u & (a->u - 1)) != 0)
      c.fail("metadata key 'general.alignment' = " + std::to_string(a->u) +
             " is not a nonzero power of two");
    alignment_ = a->u;
  } else {
    alignment_ = kDefaultAlignment;
  }

  // Tensor infos. Re-check the count against what the metadata left over.
  if (n_tensors > c.remaining() / kMinTensorInfoBytes)
    c.fail("header tensor_count " + std::to_string(n_tensors) + " cannot fit in the " +
           std::to_string(c.remaining()) + " bytes after the metadata");
  tensors_.reserve(capped(n_tensors));
  for (uint64_t k = 0; k < n_tensors; ++k) {
    const std::string idx = "tensor info #" + std::to_string(k);
    TensorInfo ti;
    ti.name = c.read_string(idx + " name");
    if (ti.name.empty()) c.fail(idx + ": tensor name is empty");
    const std::string what = "tensor " + quote(ti.name);
    if (tensor_index_.count(ti.name)) c.fail(what + ": duplicate tensor name");
    const uint32_t n_dims = c.read<uint32_t>(what + " n_dims");
    if (n_dims == 0 || n_dims > kMaxDims)
      c.fail(what + ": n_dims " + std::to_string(n_dims) + " is outside 1.." +
             std::to_string(kMaxDims));
    int64_t n_el = 1;
    for (uint32_t d = 0; d < n_dims; ++d) {
      const std::string dw = what + " dims[" + std::to_string(d) + "]";
      const uint64_t dim = c.read<uint64_t>(dw);
      if (dim == 0 || dim > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
        c.fail(dw + " = " + std::to_string(dim) + " is not a positive int64");
      ti.dims.push_back(static_cast<int64_t>(dim));
      if (__builtin_mul_overflow(n_el, static_cast<int64_t>(dim), &n_el))
        c.fail(what + ": element count overflows int64");
    }
    const uint32_t type_id = c.read<uint32_t>(what + " type");
    const TypeTraits* tt = type_traits(type_id);
    if (!tt) c.fail(what + ": unknown tensor type id " + std::to_string(type_id));
    ti.type = static_cast<GgmlType>(type_id);
    if (ti.dims[0] % tt->block_size != 0)
      c.fail(what + ": dims[0] = " + std::to_string(ti.dims[0]) +
             " is not a multiple of the block size " + std::to_string(tt->block_size) +
             " of type " + tt->name);
    const uint64_t n_blocks = static_cast<uint64_t>(n_el / tt->block_size);
    if (__builtin_mul_overflow(n_blocks, static_cast<uint64_t>(tt->block_bytes), &ti.n_bytes))
      c.fail(what + ": byte size overflows");
    ti.offset = c.read<uint64_t>(what + " offset");
    if (ti.offset % alignment_ != 0)
      c.fail(what + ": data offset " + std::to_string(ti.offset) +
             " is not a multiple of the alignment " + std::to_string(alignment_));
    tensor_index_.emplace(ti.name, tensors_.size());
    tensors_.push_back(std::move(ti));
  }

  // Data section: end of the infos rounded up to the alignment. A file without tensors
  // may end before it (vocabulary-only files carry no padding).
  if (tensors_.empty()) return;
  const uint64_t pad = (alignment_ - c.pos() % alignment_) % alignment_;
  const uint64_t data_start = c.pos() + pad;
  if (data_start > size_)
    c.fail("data section starts at offset " + std::to_string(data_start) +
           ", past the end of the file (" + std::to_string(size_) + " bytes)");
  const uint64_t data_size = size_ - data_start;
  data_offset_ = data_start;
  for (TensorInfo& ti : tensors_) {
    if (ti.offset > data_size || ti.n_bytes > data_size - ti.offset)
      c.fail("tensor " + quote(ti.name) + ": data at offset " + std::to_string(ti.offset) +
             " of " + std::to_string(ti.n_bytes) + " bytes runs past the end of the file " +
             "(data section holds " + std::to_string(data_size) + " bytes)");
    ti.data = base_ + data_start + ti.offset;
  }
}

const Value* File::find(const std::string& key) const {
  auto it = kv_index_.find(key);
  return it == kv_index_.end() ? nullptr : &kv_[it->second].second;
}

const Value& File::require(const std::string& key) const {
  const Value* v = find(key);
  if (!v) throw Error(path_ + ": metadata key " + quote(key) + " is missing");
  return *v;
}

namespace {
[[noreturn]] void key_type_error(const std::string& path, const std::string& key,
                                 const Value& v, const char* want) {
  throw Error(path + ": metadata key " + quote(key) + " has type " + value_type_name(v.type) +
              ", expected " + want);
}
}  // namespace

std::string File::get_string(const std::string& key) const {
  const Value& v = require(key);
  if (v.type != ValueType::STRING) key_type_error(path_, key, v, "STRING");
  return v.s;
}

int64_t File::get_int(const std::string& key) const {
  const Value& v = require(key);
  if (!v.is_integer()) key_type_error(path_, key, v, "an integer");
  try {
    return v.as_int();
  } catch (const Error& e) {
    throw Error(path_ + ": metadata key " + quote(key) + ": " + e.what());
  }
}

double File::get_float(const std::string& key) const {
  const Value& v = require(key);
  if (!v.is_float() && !v.is_integer()) key_type_error(path_, key, v, "a number");
  return v.as_float();
}

std::optional<int64_t> File::get_int_opt(const std::string& key) const {
  if (!has(key)) return std::nullopt;
  return get_int(key);
}

std::optional<double> File::get_float_opt(const std::string& key) const {
  if (!has(key)) return std::nullopt;
  return get_float(key);
}

std::optional<std::string> File::get_string_opt(const std::string& key) const {
  if (!has(key)) return std::nullopt;
  return get_string(key);
}

const TensorInfo* File::find_tensor(const std::string& name) const {
  auto it = tensor_index_.find(name);
  return it == tensor_index_.end() ? nullptr : &tensors_[it->second];
}

const TensorInfo& File::require_tensor(const std::string& name) const {
  const TensorInfo* t = find_tensor(name);
  if (!t) throw Error(path_ + ": required tensor " + quote(name) + " is missing");
  return *t;
}

}  // namespace batchmax::gguf
