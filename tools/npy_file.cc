#include "tools/npy_file.h"

#include <algorithm>
#include <cstring>
#include <new>
#include <string_view>
#include <utility>

#include "tools/format_file_io.h"

namespace msa::formats {
namespace {

constexpr char kMagic[] = "\x93NUMPY";
constexpr size_t kMagicLen = 6;
// numpy aligns the start of the data to this many bytes (ARRAY_ALIGN).
constexpr size_t kAlign = 64;

// ---- the header: a Python literal ---------------------------------------
//
// numpy writes the header with repr() and reads it with ast.literal_eval, so
// the honest parser is a small Python-literal parser rather than a pattern
// match on numpy's current spelling (other writers order keys differently,
// put spaces elsewhere, leave the trailing comma out, or write Python 2
// longs like (3L,)).

struct PyValue {
  enum class Kind { kNone, kBool, kInt, kString, kTuple, kList, kDict };
  Kind kind = Kind::kNone;
  bool boolean = false;          // kBool
  int64_t integer = 0;           // kInt
  std::string str;               // kString
  std::vector<PyValue> items;    // kTuple, kList; for kDict the values
  std::vector<std::string> keys;  // kDict: keys[i] maps to items[i]

  const PyValue* Find(std::string_view key) const {
    for (size_t i = 0; i < keys.size(); ++i) {
      if (keys[i] == key) return &items[i];
    }
    return nullptr;
  }
};

const char* KindName(PyValue::Kind kind) {
  switch (kind) {
    case PyValue::Kind::kNone: return "None";
    case PyValue::Kind::kBool: return "a bool";
    case PyValue::Kind::kInt: return "an int";
    case PyValue::Kind::kString: return "a string";
    case PyValue::Kind::kTuple: return "a tuple";
    case PyValue::Kind::kList: return "a list";
    case PyValue::Kind::kDict: return "a dict";
  }
  return "?";
}

// Parses one Python literal: dict, tuple, list, str, int, True/False/None.
// Errors are Corruption with the column; the caller adds the path.
class LiteralParser {
 public:
  explicit LiteralParser(std::string_view text) : text_(text) {}

  Result<PyValue> ParseAll() {
    PyValue value;
    MSA_RETURN_IF_ERROR(Parse(&value, 0));
    SkipSpace();
    // A NUL padding byte is not something numpy writes, but it is harmless.
    while (pos_ < text_.size() && text_[pos_] == '\0') ++pos_;
    if (pos_ != text_.size()) return Error("unexpected text after the dict");
    return value;
  }

 private:
  // Deep enough for any real header; bounds recursion on hostile input.
  static constexpr int kMaxDepth = 16;

  void SkipSpace() {
    while (pos_ < text_.size() &&
           (text_[pos_] == ' ' || text_[pos_] == '\t' || text_[pos_] == '\n' || text_[pos_] == '\r')) {
      ++pos_;
    }
  }

  Status Error(const std::string& what) const {
    std::string where;
    if (pos_ >= text_.size()) {
      where = "at the end of the header";
    } else {
      const unsigned char c = static_cast<unsigned char>(text_[pos_]);
      where = "at column " + std::to_string(pos_ + 1) + " (";
      if (c >= 0x20 && c < 0x7f) {
        where += "'" + std::string(1, static_cast<char>(c)) + "'";
      } else {
        static const char kHex[] = "0123456789abcdef";
        where += std::string("byte 0x") + kHex[c >> 4] + kHex[c & 15];
      }
      where += ")";
    }
    return Status::Corruption(what + " " + where);
  }

  Status Parse(PyValue* out, int depth) {
    if (depth > kMaxDepth) return Error("nesting too deep");
    SkipSpace();
    if (pos_ >= text_.size()) return Error("expected a value");
    const char c = text_[pos_];
    if (c == '{') return ParseDict(out, depth);
    if (c == '(' || c == '[') return ParseSequence(out, depth);
    if (c == '\'' || c == '"') {
      out->kind = PyValue::Kind::kString;
      return ParseString(&out->str);
    }
    if (c == '-' || c == '+' || (c >= '0' && c <= '9')) return ParseInt(out);
    if (c == '_' || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')) return ParseName(out);
    return Error("expected a value");
  }

  Status ParseDict(PyValue* out, int depth) {
    out->kind = PyValue::Kind::kDict;
    ++pos_;  // '{'
    while (true) {
      SkipSpace();
      if (pos_ < text_.size() && text_[pos_] == '}') break;
      if (pos_ >= text_.size() || (text_[pos_] != '\'' && text_[pos_] != '"')) {
        return Error("expected a quoted key or '}'");
      }
      std::string key;
      MSA_RETURN_IF_ERROR(ParseString(&key));
      SkipSpace();
      if (pos_ >= text_.size() || text_[pos_] != ':') return Error("expected ':'");
      ++pos_;
      PyValue value;
      MSA_RETURN_IF_ERROR(Parse(&value, depth + 1));
      out->keys.push_back(std::move(key));
      out->items.push_back(std::move(value));
      SkipSpace();
      if (pos_ < text_.size() && text_[pos_] == ',') {
        ++pos_;
        continue;
      }
      if (pos_ < text_.size() && text_[pos_] == '}') break;
      return Error("expected ',' or '}'");
    }
    ++pos_;  // '}'
    return Status::OK();
  }

  // (a, b), (a,), (), [a, b]. As in Python, "(a)" is just a.
  Status ParseSequence(PyValue* out, int depth) {
    const char close = text_[pos_] == '(' ? ')' : ']';
    ++pos_;
    PyValue seq;
    seq.kind = close == ')' ? PyValue::Kind::kTuple : PyValue::Kind::kList;
    bool saw_comma = false;
    while (true) {
      SkipSpace();
      if (pos_ < text_.size() && text_[pos_] == close) break;
      PyValue item;
      MSA_RETURN_IF_ERROR(Parse(&item, depth + 1));
      seq.items.push_back(std::move(item));
      SkipSpace();
      if (pos_ < text_.size() && text_[pos_] == ',') {
        saw_comma = true;
        ++pos_;
        continue;
      }
      if (pos_ < text_.size() && text_[pos_] == close) break;
      return Error(std::string("expected ',' or '") + close + "'");
    }
    ++pos_;  // close
    if (close == ')' && seq.items.size() == 1 && !saw_comma) {
      *out = std::move(seq.items[0]);
    } else {
      *out = std::move(seq);
    }
    return Status::OK();
  }

  Status ParseString(std::string* out) {
    const char quote = text_[pos_++];
    while (pos_ < text_.size() && text_[pos_] != quote) {
      char c = text_[pos_++];
      if (c == '\n') return Error("newline inside a string");
      if (c == '\\' && pos_ < text_.size()) {
        const char e = text_[pos_++];
        switch (e) {
          case 'n': c = '\n'; break;
          case 't': c = '\t'; break;
          case '\\': case '\'': case '"': c = e; break;
          default:  // keep unknown escapes verbatim, as Python does
            out->push_back('\\');
            c = e;
        }
      }
      out->push_back(c);
    }
    if (pos_ >= text_.size()) return Error("unterminated string");
    ++pos_;  // closing quote
    return Status::OK();
  }

  Status ParseInt(PyValue* out) {
    const size_t start = pos_;
    bool negative = false;
    if (text_[pos_] == '-' || text_[pos_] == '+') negative = text_[pos_++] == '-';
    if (pos_ >= text_.size() || text_[pos_] < '0' || text_[pos_] > '9') {
      pos_ = start;
      return Error("expected an integer");
    }
    uint64_t value = 0;
    while (pos_ < text_.size() && text_[pos_] >= '0' && text_[pos_] <= '9') {
      if (__builtin_mul_overflow(value, uint64_t{10}, &value) ||
          __builtin_add_overflow(value, static_cast<uint64_t>(text_[pos_] - '0'), &value) ||
          value > static_cast<uint64_t>(INT64_MAX)) {
        pos_ = start;
        return Error("integer too large");
      }
      ++pos_;
    }
    if (pos_ < text_.size() && (text_[pos_] == 'L' || text_[pos_] == 'l')) ++pos_;  // Python 2 long
    if (pos_ < text_.size() && (text_[pos_] == '.' || text_[pos_] == 'e' || text_[pos_] == 'E')) {
      return Error("expected an integer, found a float");
    }
    out->kind = PyValue::Kind::kInt;
    out->integer = negative ? -static_cast<int64_t>(value) : static_cast<int64_t>(value);
    return Status::OK();
  }

  Status ParseName(PyValue* out) {
    const size_t start = pos_;
    while (pos_ < text_.size() &&
           (text_[pos_] == '_' || (text_[pos_] >= 'a' && text_[pos_] <= 'z') ||
            (text_[pos_] >= 'A' && text_[pos_] <= 'Z') || (text_[pos_] >= '0' && text_[pos_] <= '9'))) {
      ++pos_;
    }
    const std::string_view name = text_.substr(start, pos_ - start);
    if (name == "True" || name == "False") {
      out->kind = PyValue::Kind::kBool;
      out->boolean = name == "True";
    } else if (name == "None") {
      out->kind = PyValue::Kind::kNone;
    } else {
      pos_ = start;
      return Error("unknown name '" + std::string(name) + "'");
    }
    return Status::OK();
  }

  std::string_view text_;
  size_t pos_ = 0;
};

struct NpyHeader {
  DType dtype = DType::kFloat32;  // when reading floats
  size_t int_bytes = 0;           // when reading integers: 4 ('<i4') or 8 ('<i8')
  std::vector<int64_t> shape;
  size_t element_size() const { return int_bytes ? int_bytes : DTypeSize(dtype); }
};

// Interprets the parsed dict; messages are relative ("dtype ..."), the
// caller adds the path. `integers`: accept int32/int64 (ReadNpyIntegers)
// instead of the float dtypes.
Result<NpyHeader> InterpretHeader(const PyValue& dict, bool integers) {
  if (dict.kind != PyValue::Kind::kDict) {
    return Status::Corruption(std::string("malformed header: expected a dict, found ") +
                              KindName(dict.kind));
  }
  const PyValue* descr = dict.Find("descr");
  const PyValue* fortran = dict.Find("fortran_order");
  const PyValue* shape = dict.Find("shape");
  for (const auto& [key, value] : {std::pair{"descr", descr}, std::pair{"fortran_order", fortran},
                                   std::pair{"shape", shape}}) {
    if (value == nullptr) {
      return Status::Corruption(std::string("malformed header: no '") + key + "' key");
    }
  }

  NpyHeader header;
  if (descr->kind != PyValue::Kind::kString) {
    return Status::NotSupported(std::string("unsupported dtype: descr is ") + KindName(descr->kind) +
                                " (a structured dtype?); msa reads '<f2' (float16) and '<f4' (float32)");
  }
  const std::string& d = descr->str;
  if (integers) {
    if (d == "<i4" || d == "<i8") {
      header.int_bytes = d == "<i4" ? 4 : 8;
    } else if (!d.empty() && d[0] == '>') {
      return Status::NotSupported("big-endian dtype '" + d + "' is not supported; write little-endian");
    } else {
      return Status::NotSupported("unsupported dtype '" + d + "'; expected integers, '<i4' (int32) or '<i8' (int64)");
    }
  } else if (d == "<f2") {
    header.dtype = DType::kFloat16;
  } else if (d == "<f4") {
    header.dtype = DType::kFloat32;
  } else if (!d.empty() && d[0] == '>') {
    return Status::NotSupported("big-endian dtype '" + d +
                                "' is not supported; write little-endian (numpy: a.astype('<" +
                                d.substr(1) + "'))");
  } else {
    return Status::NotSupported("unsupported dtype '" + d +
                                "'; msa reads '<f2' (float16) and '<f4' (float32)");
  }

  if (fortran->kind != PyValue::Kind::kBool) {
    return Status::Corruption(std::string("malformed header: fortran_order is ") +
                              KindName(fortran->kind) + ", expected True or False");
  }
  if (fortran->boolean) {
    return Status::NotSupported(
        "Fortran-order array: C order required (numpy: np.ascontiguousarray(a) before saving)");
  }

  if (shape->kind != PyValue::Kind::kTuple && shape->kind != PyValue::Kind::kList) {
    return Status::Corruption(std::string("malformed header: shape is ") + KindName(shape->kind) +
                              ", expected a tuple");
  }
  for (const PyValue& dim : shape->items) {
    if (dim.kind != PyValue::Kind::kInt || dim.integer < 0) {
      return Status::Corruption("malformed header: shape entries must be non-negative integers");
    }
    header.shape.push_back(dim.integer);
  }
  return header;
}

// "()", "(3,)", "(2, 3)": Python's repr of a tuple, as numpy writes it.
std::string PythonShape(const std::vector<int64_t>& shape) {
  std::string out = "(";
  for (size_t i = 0; i < shape.size(); ++i) {
    if (i > 0) out += ", ";
    out += std::to_string(shape[i]);
  }
  if (shape.size() == 1) out += ",";
  return out + ")";
}

// The bytes before the data: magic, version, length, dict, padding, '\n'.
std::string EncodeHeader(DType dtype, const std::vector<int64_t>& shape) {
  const std::string dict = std::string("{'descr': '") + (dtype == DType::kFloat16 ? "<f2" : "<f4") +
                           "', 'fortran_order': False, 'shape': " + PythonShape(shape) + ", }";
  int major = 1;
  size_t prefix = kMagicLen + 2 + 2;
  auto padded_len = [&] {
    const size_t unpadded = prefix + dict.size() + 1;  // + '\n'
    return dict.size() + (kAlign - unpadded % kAlign) % kAlign + 1;
  };
  size_t header_len = padded_len();
  if (header_len > 0xffff) {  // only with absurdly many dimensions
    major = 2;
    prefix = kMagicLen + 2 + 4;
    header_len = padded_len();
  }
  std::string out(kMagic, kMagicLen);
  out.push_back(static_cast<char>(major));
  out.push_back(0);
  const int len_bytes = major == 1 ? 2 : 4;
  for (int i = 0; i < len_bytes; ++i) out.push_back(static_cast<char>((header_len >> (8 * i)) & 0xff));
  out += dict;
  out.append(header_len - dict.size() - 1, ' ');
  out.push_back('\n');
  return out;
}

Status WriteNpyRaw(const std::string& path, DType dtype, const std::vector<int64_t>& shape,
                   const void* data, size_t bytes) {
  if (dtype == DType::kBFloat16) {
    return Status::InvalidArgument(path +
                                   ": .npy has no bfloat16 dtype; convert with ToFloat32 first");
  }
  Result<uint64_t> expected = ByteSize(shape, dtype);
  if (!expected.ok()) return expected.status().WithContext(path);
  if (*expected != bytes) {
    return Status::InvalidArgument(path + ": tensor of shape " + ShapeToString(shape) + " " +
                                   DTypeName(dtype) + " needs " + std::to_string(*expected) +
                                   " bytes of data, has " + std::to_string(bytes));
  }
  const std::string header = EncodeHeader(dtype, shape);
  return internal::WriteWholeFile(path, {{header.data(), header.size()}, {data, bytes}});
}

// Reads the header and the data of `path` (see ReadNpy and ReadNpyIntegers).
Result<NpyHeader> ReadNpyFile(const std::string& path, bool integers, std::vector<uint8_t>* data) {
  MSA_ASSIGN_OR_RETURN(internal::ReadOnlyFile file, internal::ReadOnlyFile::Open(path));
  const uint64_t size = file.size();

  // Magic (6), version (2), header length (2 or 4).
  uint8_t prefix[kMagicLen + 2 + 4];
  const size_t have = static_cast<size_t>(std::min<uint64_t>(size, sizeof(prefix)));
  MSA_RETURN_IF_ERROR(file.ReadAt(0, prefix, have));
  if (have == 0) return Status::InvalidArgument(path + ": not an .npy file (the file is empty)");
  if (std::memcmp(prefix, kMagic, std::min(have, kMagicLen)) != 0) {
    return Status::InvalidArgument(path + ": not an .npy file (bad magic; expected \\x93NUMPY)");
  }
  if (have < kMagicLen + 2) {
    return Status::Corruption(path + ": truncated header (the file is only " +
                              std::to_string(size) + " bytes)");
  }
  const int major = prefix[kMagicLen];
  const int minor = prefix[kMagicLen + 1];
  if (major < 1 || major > 3 || minor != 0) {
    return Status::NotSupported(path + ": unsupported .npy format version " +
                                std::to_string(major) + "." + std::to_string(minor) +
                                " (msa reads 1.0, 2.0 and 3.0)");
  }
  const size_t len_bytes = major == 1 ? 2 : 4;
  const size_t prefix_len = kMagicLen + 2 + len_bytes;
  if (have < prefix_len) {
    return Status::Corruption(path + ": truncated header (the file is only " +
                              std::to_string(size) + " bytes)");
  }
  uint64_t header_len = 0;
  for (size_t i = 0; i < len_bytes; ++i) {
    header_len |= static_cast<uint64_t>(prefix[kMagicLen + 2 + i]) << (8 * i);
  }
  if (header_len > size - prefix_len) {
    return Status::Corruption(path + ": truncated header: it should be " +
                              std::to_string(header_len) + " bytes, the file has " +
                              std::to_string(size - prefix_len) + " after the prefix");
  }

  std::string text(static_cast<size_t>(header_len), '\0');
  MSA_RETURN_IF_ERROR(file.ReadAt(prefix_len, text.data(), text.size()));
  Result<PyValue> dict = LiteralParser(text).ParseAll();
  if (!dict.ok()) return dict.status().WithContext(path + ": malformed header");
  Result<NpyHeader> header = InterpretHeader(*dict, integers);
  if (!header.ok()) return header.status().WithContext(path);
  Result<uint64_t> expected = ByteSize(header->shape, header->element_size());
  if (!expected.ok()) {
    return Status::Corruption(path + ": " + expected.status().message());
  }

  const uint64_t data_offset = prefix_len + header_len;
  const uint64_t found = size - data_offset;
  if (found < *expected) {
    return Status::Corruption(path + ": truncated data: expected " + std::to_string(*expected) +
                              " bytes of data, found " + std::to_string(found));
  }
  if (found > *expected) {
    return Status::Corruption(path + ": " + std::to_string(found - *expected) +
                              " extra bytes after the data: expected " +
                              std::to_string(*expected) + " bytes of data, found " +
                              std::to_string(found));
  }

  try {
    data->resize(static_cast<size_t>(*expected));
  } catch (const std::bad_alloc&) {
    return Status::InvalidArgument(path + ": cannot allocate " + std::to_string(*expected) +
                                   " bytes for the data");
  }
  MSA_RETURN_IF_ERROR(file.ReadAt(data_offset, data->data(), data->size()));
  return header;
}

}  // namespace

Result<Tensor> ReadNpy(const std::string& path) { return ReadNpy(path, std::vector<uint8_t>()); }

Result<Tensor> ReadNpy(const std::string& path, std::vector<uint8_t>&& storage) {
  Tensor tensor;
  tensor.data = std::move(storage);
  MSA_ASSIGN_OR_RETURN(NpyHeader header, ReadNpyFile(path, /*integers=*/false, &tensor.data));
  tensor.dtype = header.dtype;
  tensor.shape = std::move(header.shape);
  return tensor;
}

Result<IntegerArray> ReadNpyIntegers(const std::string& path) {
  std::vector<uint8_t> data;
  MSA_ASSIGN_OR_RETURN(NpyHeader header, ReadNpyFile(path, /*integers=*/true, &data));
  IntegerArray out;
  out.shape = header.shape;
  auto& values = out.values;
  values.resize(data.size() / header.int_bytes);
  for (size_t i = 0; i < values.size(); ++i) {
    if (header.int_bytes == 4) {
      int32_t v;
      std::memcpy(&v, data.data() + 4 * i, 4);
      values[i] = v;
    } else {
      std::memcpy(&values[i], data.data() + 8 * i, 8);
    }
  }
  return out;
}

Status WriteNpy(const std::string& path, const Tensor& tensor) {
  return WriteNpyRaw(path, tensor.dtype, tensor.shape, tensor.data.data(), tensor.data.size());
}

Status WriteNpyFloat32(const std::string& path, const std::vector<int64_t>& shape,
                       const float* values) {
  Result<uint64_t> bytes = ByteSize(shape, DType::kFloat32);
  if (!bytes.ok()) return bytes.status().WithContext(path);
  return WriteNpyRaw(path, DType::kFloat32, shape, values, static_cast<size_t>(*bytes));
}

}  // namespace msa::formats
