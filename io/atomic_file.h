// Whole files written so that a crash leaves either the old file or the
// complete new one, never a torn one: write PATH.tmp, fdatasync, rename over
// PATH, fsync the directory.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "msa/status.h"

namespace msa::io {

Status WriteFileAtomically(const std::string& path, const void* data, size_t size);
// Reads a whole file; NotFound when it does not exist.
Result<std::vector<uint8_t>> ReadWholeFile(const std::string& path);

}  // namespace msa::io
