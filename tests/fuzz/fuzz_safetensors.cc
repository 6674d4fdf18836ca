// Fuzz target: the safetensors reader (tools/safetensors_file.h) on
// arbitrary bytes.
//
// Properties: ReadSafetensors never crashes, throws or over-allocates; every
// refusal carries a message that starts with the path; every loaded tensor's
// bytes match its shape and dtype and convert to float32; Get on a skipped
// tensor is NotSupported and on an absent name NotFound; an accepted file's
// loaded tensors survive a write/read round trip unchanged.
#include <cstdint>
#include <cstdio>
#include <cstdlib>

#include "tests/fuzz/memory_file.h"
#include "tools/safetensors_file.h"

namespace {

void Check(bool ok, const char* what) {
  if (!ok) {
    std::fprintf(stderr, "fuzz_safetensors: broken invariant: %s\n", what);
    std::abort();
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using msa::Status;
  static msa::fuzz::MemoryFile file("fuzz.safetensors");
  static msa::fuzz::MemoryFile copy("fuzz_copy.safetensors");
  const std::string& path = file.Set(data, size);
  msa::Result<msa::formats::SafetensorsFile> f = msa::formats::ReadSafetensors(path);
  if (!f.ok()) {
    Check(f.status().message().rfind(path, 0) == 0, "an error message does not start with the path");
    return 0;
  }
  uint64_t total = 0;
  for (const auto& [name, t] : f->tensors) {
    Check(t.Validate().ok(), "a loaded tensor's data does not match its shape");
    Check(msa::formats::ToFloat32(t).ok(), "a loaded tensor does not convert to float32");
    Check(f->Get(name).ok(), "Get fails on a loaded tensor");
    total += t.data.size();
  }
  Check(total <= size, "the tensors hold more bytes than the file");
  for (const auto& [name, dtype] : f->skipped) {
    Check(f->Get(name).status().code() == Status::Code::kNotSupported,
          "Get on a skipped tensor is not NotSupported");
  }
  Check(f->Get("\x01no such tensor").status().code() == Status::Code::kNotFound,
        "Get on an absent name is not NotFound");

  const std::string& copy_path = copy.Set(nullptr, 0);
  Status written = msa::formats::WriteSafetensors(copy_path, f->tensors, f->metadata);
  // Names and metadata that are not valid UTF-8 are read (the reference
  // reader's JSON accepts them escaped or raw) but refused by the writer.
  if (!written.ok()) {
    Check(written.code() == Status::Code::kInvalidArgument, "the writer fails other than on UTF-8");
    return 0;
  }
  msa::Result<msa::formats::SafetensorsFile> back = msa::formats::ReadSafetensors(copy_path);
  Check(back.ok(), "the written copy does not read");
  Check(back->tensors.size() == f->tensors.size(), "the written copy has other tensors");
  for (const auto& [name, t] : f->tensors) {
    auto it = back->tensors.find(name);
    Check(it != back->tensors.end() && it->second.dtype == t.dtype &&
              it->second.shape == t.shape && it->second.data == t.data,
          "the written copy differs");
  }
  return 0;
}
