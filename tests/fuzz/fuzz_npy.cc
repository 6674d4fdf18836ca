// Fuzz target: the .npy reader (tools/npy_file.h) on arbitrary bytes.
//
// Properties: ReadNpy never crashes, hangs or over-allocates (it may only
// allocate what the file holds); every refusal carries a message that starts
// with the path; an accepted array's bytes match its shape and dtype, convert
// to float32, and survive a write/read round trip unchanged.
#include <cstdint>
#include <cstdlib>
#include <cstring>

#include "tests/fuzz/memory_file.h"
#include "tools/npy_file.h"

namespace {

void Check(bool ok, const char* what) {
  if (!ok) {
    std::fprintf(stderr, "fuzz_npy: broken invariant: %s\n", what);
    std::abort();
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static msa::fuzz::MemoryFile file("fuzz.npy");
  static msa::fuzz::MemoryFile copy("fuzz_copy.npy");
  const std::string& path = file.Set(data, size);
  msa::Result<msa::formats::Tensor> t = msa::formats::ReadNpy(path);
  if (!t.ok()) {
    Check(t.status().message().rfind(path, 0) == 0, "an error message does not start with the path");
    return 0;
  }
  Check(t->Validate().ok(), "an accepted array's data does not match its shape");
  Check(t->data.size() <= size, "the array holds more bytes than the file");
  Check(msa::formats::ToFloat32(*t).ok(), "an accepted array does not convert to float32");
  // Round trip through the writer: the same dtype, shape and bytes.
  const std::string& copy_path = copy.Set(nullptr, 0);
  Check(msa::formats::WriteNpy(copy_path, *t).ok(), "an accepted array cannot be written back");
  msa::Result<msa::formats::Tensor> back = msa::formats::ReadNpy(copy_path);
  Check(back.ok(), "the written copy does not read");
  Check(back->dtype == t->dtype && back->shape == t->shape && back->data == t->data,
        "the written copy differs");
  return 0;
}
