// NumPy .npy files: read and write one float16/float32 array.
//
// Format (numpy.lib.format): the magic "\x93NUMPY", a major and minor version
// byte, the header length (2 bytes little-endian for 1.0, 4 bytes for 2.0 and
// 3.0), then a Python dict literal such as
//   {'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }
// padded with spaces and a newline, then the raw array bytes.
//
// What is accepted: versions 1.0, 2.0, 3.0; descr '<f2' (float16) or '<f4'
// (float32); fortran_order False; any key order, spacing, trailing commas,
// shapes like (3,) and (). What is refused, each with a one-line Status that
// starts with the path: a missing file (NotFound), bad magic
// (InvalidArgument), an unknown version, a big-endian or other dtype, Fortran
// order (NotSupported), a truncated or malformed header, and data whose size
// is not exactly product(shape) * element size, short or long (Corruption).
//
// Thread safety: the functions share no state; concurrent calls on different
// paths are safe.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "msa/status.h"
#include "tools/tensor.h"

namespace msa::formats {

// Reads the whole array with one pread into Tensor::data (no per-element
// work, so a file of a few GB costs one pass of I/O and the memory for it).
// The result's dtype is kFloat16 or kFloat32.
Result<Tensor> ReadNpy(const std::string& path);
// The same, reading into `storage` (moved into the result): a buffer whose
// capacity is already large enough is reused without allocating, zeroing
// or faulting in new pages (a bulk ingest recycles its document buffers).
Result<Tensor> ReadNpy(const std::string& path, std::vector<uint8_t>&& storage);

// Reads an '<i4' (int32) or '<i8' (int64) array, such as a document's
// token ids, widened to int64 (values in C order). The same checks as
// ReadNpy; any other dtype is refused naming the file.
struct IntegerArray {
  std::vector<int64_t> shape;
  std::vector<int64_t> values;
};
Result<IntegerArray> ReadNpyIntegers(const std::string& path);

// Writes `tensor` as a C-order little-endian .npy that numpy.load reads:
// version 1.0 (2.0 only if the header would exceed 64 KiB), header padded so
// the data starts on a 64-byte boundary, as numpy does. Creates or truncates
// `path`; a failed write removes the partial file. InvalidArgument when
// tensor.data does not match its shape, or the dtype is bfloat16 (.npy has no
// standard bfloat16 dtype: convert with ToFloat32 first).
Status WriteNpy(const std::string& path, const Tensor& tensor);

// Convenience: writes product(shape) floats from `values` (C order) as '<f4'.
Status WriteNpyFloat32(const std::string& path, const std::vector<int64_t>& shape,
                       const float* values);

}  // namespace msa::formats
