// An owned host tensor: what the .npy and safetensors readers hand back and
// the writers take.
//
// Deliberately small: a dtype, a shape and the raw bytes. The bytes are the
// file's bytes (little-endian, C order: element [i0, i1, ..., ik] sits at
// index ((i0 * shape[1] + i1) * shape[2] + ...) * element_size), so reading a
// multi-GB file is one read and no per-element work; conversion to float32 or
// float16 is a separate, explicit step (ToFloat32 / ToFloat16).
//
// Thread safety: a Tensor is a plain value; const access from several threads
// is safe, mutation is not.
#pragma once

#include <bit>
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "msa/status.h"

namespace msa::formats {

// The bytes are stored as the files store them and reinterpreted in place.
static_assert(std::endian::native == std::endian::little,
              "msa::formats assumes a little-endian host");

enum class DType {
  kFloat16,   // IEEE 754 binary16 ('<f2' in .npy, F16 in safetensors)
  kFloat32,   // IEEE 754 binary32 ('<f4', F32)
  kBFloat16,  // bfloat16: the top 16 bits of a float32 (safetensors BF16; .npy has none)
};

// "float16", "float32", "bfloat16".
const char* DTypeName(DType dtype);
// Bytes per element: 2, 4, 2.
size_t DTypeSize(DType dtype);

// "[2, 3, 5, 8]"; "[]" for a scalar.
std::string ShapeToString(const std::vector<int64_t>& shape);

// Bytes needed by a tensor of `shape` and `dtype`: product(shape) * DTypeSize.
// InvalidArgument on a negative dimension or when the product overflows 64
// bits (both possible in a hostile file header, so readers call this before
// allocating anything).
Result<uint64_t> ByteSize(const std::vector<int64_t>& shape, DType dtype);
// The same for any element size in bytes (for dtypes outside DType).
Result<uint64_t> ByteSize(const std::vector<int64_t>& shape, size_t element_size);

struct Tensor {
  DType dtype = DType::kFloat32;
  std::vector<int64_t> shape;  // empty: a scalar (one element)
  // num_elements() * DTypeSize(dtype) bytes, little-endian, C order. The
  // readers guarantee this size; code that builds a Tensor by hand should
  // too (the writers and converters check it and refuse a mismatch).
  std::vector<uint8_t> data;

  // product(shape); 1 for a scalar, 0 when any dimension is 0. Assumes the
  // shape is valid (see ByteSize for the checked version).
  int64_t num_elements() const;
  size_t num_bytes() const { return data.size(); }
  // OK when data.size() matches shape and dtype; InvalidArgument otherwise.
  Status Validate() const;
};

// Copies `values` (product(shape) floats) into a new float32 Tensor.
Tensor MakeFloat32Tensor(std::vector<int64_t> shape, const float* values);
// Copies `bits` (product(shape) binary16 bit patterns) into a new float16 Tensor.
Tensor MakeFloat16Tensor(std::vector<int64_t> shape, const uint16_t* bits);

// All elements as float32, in C order (exact for every dtype: float16 and
// bfloat16 values are all representable). InvalidArgument if !Validate().
Result<std::vector<float>> ToFloat32(const Tensor& tensor);
// All elements as binary16 bit patterns, in C order. float32 and bfloat16
// round to nearest-even (out-of-range values become +-inf, nan stays nan);
// float16 is copied. InvalidArgument if !Validate().
Result<std::vector<uint16_t>> ToFloat16(const Tensor& tensor);

}  // namespace msa::formats
