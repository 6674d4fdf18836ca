#include "io/block_reader.h"

#include <cstdlib>
#include <cstring>

#include <spdlog/spdlog.h>

#include "io/file_ops.h"

namespace msa::io {

std::string DescribeRequest(size_t index, const ReadRequest& r) {
  // Only failures are described: resolving the descriptor's file is cheap enough.
  return "read #" + std::to_string(index) + " of " + sys::PathOfFd(r.fd) + " (fd " + std::to_string(r.fd) +
         ", offset " + std::to_string(r.offset) + ", " + std::to_string(r.length) + " bytes)";
}

std::unique_ptr<BlockReader> MakeBlockReader(const BlockReaderOptions& options) {
  const char* env = std::getenv("MSA_IO_URING");
  if (env != nullptr && std::strcmp(env, "0") == 0) {
    spdlog::warn("io_uring disabled by MSA_IO_URING=0: block reads use the pread fallback");
    return MakePreadReader(kDefaultPreadThreads, "MSA_IO_URING=0");
  }
  if (!options.allow_io_uring) return MakePreadReader(kDefaultPreadThreads, "io_uring not allowed by the options");
  auto uring = MakeUringReader(options);
  if (uring.ok()) return std::move(uring).value();
  spdlog::warn("io_uring unavailable ({}): block reads use the pread fallback",
               uring.status().message());
  return MakePreadReader(kDefaultPreadThreads, "io_uring unavailable: " + uring.status().message());
}

}  // namespace msa::io
