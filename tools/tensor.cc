#include "tools/tensor.h"

#include <algorithm>
#include <cstring>
#include <limits>

#include "attention/half.h"

namespace msa::formats {

const char* DTypeName(DType dtype) {
  switch (dtype) {
    case DType::kFloat16: return "float16";
    case DType::kFloat32: return "float32";
    case DType::kBFloat16: return "bfloat16";
  }
  return "unknown";
}

size_t DTypeSize(DType dtype) {
  switch (dtype) {
    case DType::kFloat16: return 2;
    case DType::kFloat32: return 4;
    case DType::kBFloat16: return 2;
  }
  return 0;
}

std::string ShapeToString(const std::vector<int64_t>& shape) {
  std::string out = "[";
  for (size_t i = 0; i < shape.size(); ++i) {
    if (i > 0) out += ", ";
    out += std::to_string(shape[i]);
  }
  return out + "]";
}

Result<uint64_t> ByteSize(const std::vector<int64_t>& shape, size_t element_size) {
  uint64_t bytes = element_size;
  bool overflow = false;
  for (int64_t dim : shape) {
    if (dim < 0) {
      return Status::InvalidArgument("negative dimension in shape " + ShapeToString(shape));
    }
    // A zero dimension makes the tensor empty however large the others are,
    // but keep checking them so the answer does not depend on dimension order.
    if (__builtin_mul_overflow(bytes, static_cast<uint64_t>(dim), &bytes)) overflow = true;
  }
  if (overflow || bytes > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
    return Status::InvalidArgument("shape " + ShapeToString(shape) + " with " +
                                   std::to_string(element_size) +
                                   "-byte elements is too large (size overflows 64 bits)");
  }
  return bytes;
}

Result<uint64_t> ByteSize(const std::vector<int64_t>& shape, DType dtype) {
  return ByteSize(shape, DTypeSize(dtype));
}

int64_t Tensor::num_elements() const {
  int64_t n = 1;
  for (int64_t dim : shape) n *= dim;
  return n;
}

Status Tensor::Validate() const {
  MSA_ASSIGN_OR_RETURN(uint64_t expected, ByteSize(shape, dtype));
  if (data.size() != expected) {
    return Status::InvalidArgument("tensor of shape " + ShapeToString(shape) + " " +
                                   DTypeName(dtype) + " needs " + std::to_string(expected) +
                                   " bytes of data, has " + std::to_string(data.size()));
  }
  return Status::OK();
}

namespace {

Tensor MakeTensor(DType dtype, std::vector<int64_t> shape, const void* src) {
  Tensor t;
  t.dtype = dtype;
  t.shape = std::move(shape);
  t.data.resize(static_cast<size_t>(t.num_elements()) * DTypeSize(dtype));
  if (!t.data.empty()) std::memcpy(t.data.data(), src, t.data.size());
  return t;
}

// The bytes live in a uint8_t vector; reading them through a uint16_t* would
// break aliasing rules, so conversions copy through a small typed buffer.
// One chunk stays in L1 and costs a memcpy, not a per-element branch.
constexpr size_t kChunk = 4096;

float BFloat16ToFloat(uint16_t bits) {
  const uint32_t x = static_cast<uint32_t>(bits) << 16;
  float out;
  std::memcpy(&out, &x, 4);
  return out;
}

}  // namespace

Tensor MakeFloat32Tensor(std::vector<int64_t> shape, const float* values) {
  return MakeTensor(DType::kFloat32, std::move(shape), values);
}

Tensor MakeFloat16Tensor(std::vector<int64_t> shape, const uint16_t* bits) {
  return MakeTensor(DType::kFloat16, std::move(shape), bits);
}

Result<std::vector<float>> ToFloat32(const Tensor& tensor) {
  MSA_RETURN_IF_ERROR(tensor.Validate());
  const size_t n = static_cast<size_t>(tensor.num_elements());
  std::vector<float> out(n);
  const uint8_t* src = tensor.data.data();
  switch (tensor.dtype) {
    case DType::kFloat32:
      if (n > 0) std::memcpy(out.data(), src, n * sizeof(float));
      break;
    case DType::kFloat16:
    case DType::kBFloat16: {
      uint16_t buf[kChunk];
      for (size_t i = 0; i < n; i += kChunk) {
        const size_t m = std::min(kChunk, n - i);
        std::memcpy(buf, src + i * 2, m * 2);
        if (tensor.dtype == DType::kFloat16) {
          attention::HalfToFloatArray(buf, out.data() + i, m);
        } else {
          for (size_t j = 0; j < m; ++j) out[i + j] = BFloat16ToFloat(buf[j]);
        }
      }
      break;
    }
  }
  return out;
}

Result<std::vector<uint16_t>> ToFloat16(const Tensor& tensor) {
  MSA_RETURN_IF_ERROR(tensor.Validate());
  const size_t n = static_cast<size_t>(tensor.num_elements());
  std::vector<uint16_t> out(n);
  const uint8_t* src = tensor.data.data();
  switch (tensor.dtype) {
    case DType::kFloat16:
      if (n > 0) std::memcpy(out.data(), src, n * 2);
      break;
    case DType::kFloat32:
    case DType::kBFloat16: {
      float buf[kChunk];
      uint16_t bf[kChunk];
      for (size_t i = 0; i < n; i += kChunk) {
        const size_t m = std::min(kChunk, n - i);
        if (tensor.dtype == DType::kFloat32) {
          std::memcpy(buf, src + i * 4, m * 4);
        } else {
          std::memcpy(bf, src + i * 2, m * 2);
          for (size_t j = 0; j < m; ++j) buf[j] = BFloat16ToFloat(bf[j]);
        }
        attention::FloatToHalfArray(buf, out.data() + i, m);
      }
      break;
    }
  }
  return out;
}

}  // namespace msa::formats
