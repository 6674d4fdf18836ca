#include "tools/safetensors_file.h"

#include <algorithm>
#include <cstring>
#include <exception>
#include <new>
#include <optional>
#include <string_view>
#include <utility>

#include <nlohmann/json.hpp>

#include "tools/format_file_io.h"

namespace msa::formats {
namespace {

using Json = nlohmann::json;

// The reference implementation refuses larger headers; so do we, before
// allocating one.
constexpr uint64_t kMaxHeaderBytes = 100'000'000;
constexpr char kMetadataKey[] = "__metadata__";

std::optional<DType> LoadableDType(std::string_view name) {
  if (name == "F16") return DType::kFloat16;
  if (name == "F32") return DType::kFloat32;
  if (name == "BF16") return DType::kBFloat16;
  return std::nullopt;
}

const char* SafetensorsDTypeName(DType dtype) {
  switch (dtype) {
    case DType::kFloat16: return "F16";
    case DType::kFloat32: return "F32";
    case DType::kBFloat16: return "BF16";
  }
  return "?";
}

// Element size of the dtypes we do not load, so their ranges can still be
// checked; 0 for names we do not know (or sub-byte types such as F4), whose
// size is then not checked.
size_t OtherDTypeSize(std::string_view name) {
  static constexpr std::pair<std::string_view, size_t> kSizes[] = {
      {"BOOL", 1}, {"U8", 1},  {"I8", 1},  {"F8_E5M2", 1}, {"F8_E4M3", 1}, {"F8_E8M0", 1},
      {"I16", 2},  {"U16", 2}, {"I32", 4}, {"U32", 4},     {"I64", 8},     {"U64", 8},
      {"F64", 8},  {"C64", 8}};
  for (const auto& [n, size] : kSizes) {
    if (n == name) return size;
  }
  return 0;
}

// "'a', 'b', 'c'" (the first 16, then "and N more"); "none" when empty.
template <typename Map>
std::string ListNames(const Map& map) {
  if (map.empty()) return "none";
  constexpr size_t kShown = 16;
  std::string out;
  size_t i = 0;
  for (const auto& entry : map) {
    if (i == kShown) {
      out += ", and " + std::to_string(map.size() - kShown) + " more";
      break;
    }
    if (i++ > 0) out += ", ";
    out += "'" + entry.first + "'";
  }
  return out;
}

// One header entry, validated against itself but not yet against the others.
struct Entry {
  std::string name;
  std::string dtype_name;
  std::optional<DType> dtype;  // set when loadable
  std::vector<int64_t> shape;
  uint64_t begin = 0;
  uint64_t end = 0;
};

Result<Entry> ParseEntry(const std::string& name, const Json& value, uint64_t buffer_size) {
  const std::string where = "tensor '" + name + "'";
  if (!value.is_object()) return Status::Corruption(where + ": header entry is not an object");
  Entry e;
  e.name = name;

  const auto dtype = value.find("dtype");
  if (dtype == value.end() || !dtype->is_string()) {
    return Status::Corruption(where + ": missing or non-string \"dtype\"");
  }
  e.dtype_name = dtype->get<std::string>();
  e.dtype = LoadableDType(e.dtype_name);

  const auto shape = value.find("shape");
  if (shape == value.end() || !shape->is_array()) {
    return Status::Corruption(where + ": missing or non-array \"shape\"");
  }
  for (const Json& dim : *shape) {
    if (!dim.is_number_unsigned() || dim.get<uint64_t>() > uint64_t{INT64_MAX}) {
      return Status::Corruption(where + ": shape entries must be non-negative integers");
    }
    e.shape.push_back(static_cast<int64_t>(dim.get<uint64_t>()));
  }

  const auto offsets = value.find("data_offsets");
  if (offsets == value.end() || !offsets->is_array() || offsets->size() != 2 ||
      !(*offsets)[0].is_number_unsigned() || !(*offsets)[1].is_number_unsigned()) {
    return Status::Corruption(where + ": \"data_offsets\" must be [begin, end] byte offsets");
  }
  e.begin = (*offsets)[0].get<uint64_t>();
  e.end = (*offsets)[1].get<uint64_t>();
  const std::string range = "[" + std::to_string(e.begin) + ", " + std::to_string(e.end) + ")";
  if (e.begin > e.end || e.end > buffer_size) {
    return Status::Corruption(where + ": data_offsets " + range +
                              " out of range (the data buffer is " + std::to_string(buffer_size) +
                              " bytes)");
  }

  // For dtypes of unknown element size only the shape itself is checked.
  const size_t elem = e.dtype ? DTypeSize(*e.dtype) : OtherDTypeSize(e.dtype_name);
  Result<uint64_t> expected = ByteSize(e.shape, elem == 0 ? 1 : elem);
  if (!expected.ok()) return Status::Corruption(where + ": " + expected.status().message());
  if (elem != 0 && e.end - e.begin != *expected) {
    return Status::Corruption(where + ": shape " + ShapeToString(e.shape) + " " + e.dtype_name +
                              " needs " + std::to_string(*expected) + " bytes, data_offsets " +
                              range + " hold " + std::to_string(e.end - e.begin));
  }
  return e;
}

// The ranges, sorted, must tile [0, buffer_size) exactly.
Status CheckCoverage(std::vector<const Entry*> entries, uint64_t buffer_size) {
  std::sort(entries.begin(), entries.end(), [](const Entry* a, const Entry* b) {
    return a->begin != b->begin ? a->begin < b->begin : a->end < b->end;
  });
  uint64_t covered = 0;  // end of the data accounted for so far
  const Entry* prev = nullptr;
  for (const Entry* e : entries) {
    if (e->begin < covered) {
      return Status::Corruption("tensors '" + prev->name + "' and '" + e->name +
                                "' overlap (data_offsets [" + std::to_string(prev->begin) + ", " +
                                std::to_string(prev->end) + ") and [" + std::to_string(e->begin) +
                                ", " + std::to_string(e->end) + "))");
    }
    if (e->begin > covered) {
      return Status::Corruption("bytes [" + std::to_string(covered) + ", " +
                                std::to_string(e->begin) +
                                ") of the data buffer belong to no tensor (a gap before '" +
                                e->name + "')");
    }
    covered = e->end;
    if (e->end > e->begin) prev = e;  // an empty tensor overlaps nothing
  }
  if (covered != buffer_size) {
    const std::string last = entries.empty() ? "" : " (after tensor '" + entries.back()->name + "')";
    return Status::Corruption(std::to_string(buffer_size - covered) + " extra bytes at the end" +
                              last + ": the data buffer is " + std::to_string(buffer_size) +
                              " bytes, the tensors end at " + std::to_string(covered));
  }
  return Status::OK();
}

// Parses and validates the JSON header. Messages are relative; the caller
// adds the path. nlohmann::json reports errors by exception: they are caught
// here and never leave this function.
Result<std::vector<Entry>> ParseHeader(std::string_view text, uint64_t buffer_size,
                                       std::map<std::string, std::string>* metadata) {
  try {
    Json header;
    try {
      header = Json::parse(text);
    } catch (const Json::parse_error& e) {
      // what() is "[json.exception.parse_error.101] parse error at line 1, column 5: ...".
      std::string why = e.what();
      if (const size_t p = why.find("] "); p != std::string::npos) why = why.substr(p + 2);
      return Status::Corruption("header is not valid JSON: " + why);
    }
    if (!header.is_object()) return Status::Corruption("header is not a JSON object");

    std::vector<Entry> entries;
    for (const auto& [name, value] : header.items()) {
      if (name == kMetadataKey) {
        if (value.is_object()) {
          for (const auto& [k, v] : value.items()) {
            if (v.is_string()) (*metadata)[k] = v.get<std::string>();
          }
        }
        continue;
      }
      MSA_ASSIGN_OR_RETURN(Entry entry, ParseEntry(name, value, buffer_size));
      entries.push_back(std::move(entry));
    }
    std::vector<const Entry*> ptrs;
    for (const Entry& e : entries) ptrs.push_back(&e);
    MSA_RETURN_IF_ERROR(CheckCoverage(std::move(ptrs), buffer_size));
    return entries;
  } catch (const std::exception& e) {
    return Status::Corruption(std::string("malformed header: ") + e.what());
  }
}

// Why `name` is not among the loaded tensors.
Status MissingTensor(const SafetensorsFile& file, const std::string& name) {
  if (auto it = file.skipped.find(name); it != file.skipped.end()) {
    return Status::NotSupported(file.path + ": tensor '" + name + "' has dtype " + it->second +
                                "; msa reads F16, F32 and BF16");
  }
  return Status::NotFound(file.path + ": no tensor named '" + name + "' (tensors: " +
                          ListNames(file.tensors) + ")");
}

}  // namespace

Result<Tensor> SafetensorsFile::Get(const std::string& name) const {
  auto it = tensors.find(name);
  if (it == tensors.end()) return MissingTensor(*this, name);
  return it->second;
}

Result<Tensor> SafetensorsFile::Take(const std::string& name) {
  auto it = tensors.find(name);
  if (it == tensors.end()) return MissingTensor(*this, name);
  Tensor out = std::move(it->second);
  tensors.erase(it);
  return out;
}

std::vector<std::string> SafetensorsFile::names() const {
  std::vector<std::string> out;
  out.reserve(tensors.size());
  for (const auto& entry : tensors) out.push_back(entry.first);
  return out;
}

Result<SafetensorsFile> ReadSafetensors(const std::string& path) {
  MSA_ASSIGN_OR_RETURN(internal::ReadOnlyFile file, internal::ReadOnlyFile::Open(path));
  const uint64_t size = file.size();
  if (size < 8) {
    return Status::Corruption(path + ": not a safetensors file: " + std::to_string(size) +
                              " bytes, too short for the 8-byte header length");
  }
  uint8_t len_bytes[8];
  MSA_RETURN_IF_ERROR(file.ReadAt(0, len_bytes, 8));
  uint64_t header_len = 0;
  for (int i = 0; i < 8; ++i) header_len |= static_cast<uint64_t>(len_bytes[i]) << (8 * i);
  if (header_len > size - 8) {
    return Status::Corruption(path + ": header length " + std::to_string(header_len) +
                              " is larger than the file (" + std::to_string(size) + " bytes)");
  }
  if (header_len > kMaxHeaderBytes) {
    return Status::Corruption(path + ": header length " + std::to_string(header_len) +
                              " exceeds the 100 MB limit");
  }
  std::string text(static_cast<size_t>(header_len), '\0');
  MSA_RETURN_IF_ERROR(file.ReadAt(8, text.data(), text.size()));
  // The reference reader insists on this; it also rejects a bare length
  // field followed by arbitrary bytes with a clearer message than JSON's.
  if (text.empty() || text[0] != '{') {
    return Status::Corruption(path + ": header is not a JSON object (it does not start with '{')");
  }

  const uint64_t data_start = 8 + header_len;
  const uint64_t buffer_size = size - data_start;
  SafetensorsFile out;
  out.path = path;
  Result<std::vector<Entry>> entries = ParseHeader(text, buffer_size, &out.metadata);
  if (!entries.ok()) return entries.status().WithContext(path);

  for (Entry& e : *entries) {
    if (!e.dtype) {
      out.skipped[e.name] = e.dtype_name;
      continue;
    }
    Tensor t;
    t.dtype = *e.dtype;
    t.shape = std::move(e.shape);
    try {
      t.data.resize(static_cast<size_t>(e.end - e.begin));
    } catch (const std::bad_alloc&) {
      return Status::InvalidArgument(path + ": cannot allocate " + std::to_string(e.end - e.begin) +
                                     " bytes for tensor '" + e.name + "'");
    }
    MSA_RETURN_IF_ERROR(file.ReadAt(data_start + e.begin, t.data.data(), t.data.size()));
    out.tensors.emplace(e.name, std::move(t));
  }
  return out;
}

Status WriteSafetensors(const std::string& path, const std::map<std::string, Tensor>& tensors,
                        const std::map<std::string, std::string>& metadata) {
  // Largest elements first, then by name: each tensor starts at a multiple of
  // its element size because every size before it is a multiple of it.
  std::vector<const std::pair<const std::string, Tensor>*> order;
  for (const auto& entry : tensors) {
    if (entry.first == kMetadataKey) {
      return Status::InvalidArgument(path + ": \"" + kMetadataKey +
                                     "\" is reserved and cannot name a tensor");
    }
    Status valid = entry.second.Validate();
    if (!valid.ok()) return valid.WithContext(path + ": tensor '" + entry.first + "'");
    order.push_back(&entry);
  }
  std::stable_sort(order.begin(), order.end(), [](const auto* a, const auto* b) {
    return DTypeSize(a->second.dtype) > DTypeSize(b->second.dtype);
  });

  std::string text;
  try {
    Json header = Json::object();
    if (!metadata.empty()) header[kMetadataKey] = metadata;
    uint64_t offset = 0;
    for (const auto* entry : order) {
      const Tensor& t = entry->second;
      header[entry->first] = {{"dtype", SafetensorsDTypeName(t.dtype)},
                              {"shape", t.shape},
                              {"data_offsets", {offset, offset + t.data.size()}}};
      offset += t.data.size();
    }
    text = header.dump();  // throws on a name or value that is not valid UTF-8
  } catch (const std::exception& e) {
    return Status::InvalidArgument(path + ": cannot encode the header: " + e.what());
  }
  text.append((8 - text.size() % 8) % 8, ' ');

  uint8_t len_bytes[8];
  for (int i = 0; i < 8; ++i) len_bytes[i] = static_cast<uint8_t>((text.size() >> (8 * i)) & 0xff);
  std::vector<internal::ByteRange> ranges = {{len_bytes, 8}, {text.data(), text.size()}};
  for (const auto* entry : order) ranges.push_back({entry->second.data.data(), entry->second.data.size()});
  return internal::WriteWholeFile(path, ranges);
}

}  // namespace msa::formats
