// safetensors files: read and write named float16/float32/bfloat16 tensors.
//
// Format (huggingface/safetensors): an 8-byte little-endian header length N,
// N bytes of JSON
//   {"k": {"dtype": "F16", "shape": [2, 3], "data_offsets": [0, 12]},
//    "__metadata__": {"producer": "..."}, ...}
// then the data buffer; data_offsets are [begin, end) byte offsets into that
// buffer, little-endian, C order.
//
// Validation follows the reference reader: the header must fit in the file
// (and in 100 MB), each tensor's range must lie inside the buffer, hold
// exactly product(shape) * element size bytes and not overlap another, and
// together the ranges must cover the buffer with no gap or trailing bytes.
// Any failure is a one-line Status that starts with the path.
//
// Dtypes: F16, F32 and BF16 are loaded. A file may also hold tensors of other
// dtypes (I64 position ids beside the K/V, say): they are validated but not
// loaded, and asking for one by name answers NotSupported naming its dtype,
// so one odd tensor does not make the rest of a file unreadable.
//
// Thread safety: the functions share no state. A SafetensorsFile is a plain
// value (const access from several threads is safe).
#pragma once

#include <map>
#include <string>
#include <vector>

#include "msa/status.h"
#include "tools/tensor.h"

namespace msa::formats {

struct SafetensorsFile {
  std::string path;                              // as given to ReadSafetensors
  std::map<std::string, Tensor> tensors;         // the F16/F32/BF16 tensors, by name
  std::map<std::string, std::string> skipped;    // name -> dtype ("I64") of tensors not loaded
  std::map<std::string, std::string> metadata;   // "__metadata__" entries with string values

  // A copy of the named tensor. NotFound names the tensor and the file and
  // lists the names available; NotSupported for a tensor in `skipped`.
  Result<Tensor> Get(const std::string& name) const;
  // Moves the named tensor out (no copy of its data) and erases it from
  // `tensors`; errors as for Get. For callers done with the file's other tensors.
  Result<Tensor> Take(const std::string& name);
  // Names of the loaded tensors, sorted.
  std::vector<std::string> names() const;
};

// Reads the header, validates every entry, then reads each loaded tensor with
// one pread straight into its Tensor::data.
Result<SafetensorsFile> ReadSafetensors(const std::string& path);

// Writes `tensors` (each must pass Tensor::Validate) and optional string
// metadata as a safetensors file that the reference library reads: header
// padded with spaces to 8 bytes, tensors laid out largest element size first,
// then by name, so every tensor starts aligned to its element size. Creates or
// truncates `path`; a failed write removes the partial file. InvalidArgument
// for an invalid tensor, the reserved name "__metadata__", or a name that is
// not valid UTF-8.
Status WriteSafetensors(const std::string& path, const std::map<std::string, Tensor>& tensors,
                        const std::map<std::string, std::string>& metadata = {});

}  // namespace msa::formats
