// Whole files written so that a crash leaves either the old file or the
// complete new one, never a torn one: write PATH.tmp, fdatasync, rename over
// PATH, fsync the directory.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "msa/status.h"

namespace msa::io {

Status WriteFileAtomically(const std::string& path, const void* data, size_t size);
// Opens a file for reading (the descriptor is the caller's to close) and
// reports its size; NotFound when it does not exist.
Result<int> OpenForReading(const std::string& path, uint64_t* size);
// Reads a whole file; NotFound when it does not exist.
Result<std::vector<uint8_t>> ReadWholeFile(const std::string& path);
// Reads the first `size` bytes of the open file fd (named `path` in
// errors) in order, in parts of at most 4 MiB given to `part` (checksummed
// as they come, say) from one buffer. fd stays open.
Status ReadThrough(int fd, const std::string& path, uint64_t size,
                   const std::function<void(const uint8_t* data, size_t n)>& part);

}  // namespace msa::io
