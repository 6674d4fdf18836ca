// Batched positional reads: the fetch path's one way to the disk.
//
// A query hands all of its block reads to ReadAll at once; the io_uring
// implementation turns them into one submission at high queue depth, the
// pread fallback (used where io_uring cannot be set up) spreads them over a
// small thread pool.
//
// Thread safety: ReadAll may be called from several threads; calls are
// serialised internally (one ring per reader).
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>

#include "msa/status.h"

namespace msa::io {

// One read. For a descriptor opened with O_DIRECT, offset, length and dest
// must be multiples of 4096 (AlignedBuffer gives such memory).
struct ReadRequest {
  int fd = -1;
  uint64_t offset = 0;
  uint32_t length = 0;
  uint8_t* dest = nullptr;
};

class BlockReader {
 public:
  virtual ~BlockReader() = default;
  // Reads every request completely. Short reads are continued and EAGAIN /
  // EINTR retried; end of file before `length` bytes or any other error fails
  // the whole call with a Status naming the request (index, offset, length).
  virtual Status ReadAll(std::span<const ReadRequest> requests) = 0;
  // True once a failed ReadAll could not wait for all of its reads: the
  // kernel may still write into that call's buffers, so the caller must never
  // free or reuse them, and every later ReadAll fails. Practically never
  // happens; it is the price of not aborting.
  virtual bool abandoned() const { return false; }
  // "io_uring" or "pread": shown by `msa stats`.
  virtual const char* name() const = 0;
};

inline constexpr unsigned kDefaultPreadThreads = 8;

struct BlockReaderOptions {
  unsigned queue_depth = 256;  // io_uring entries (requests in flight)
  bool allow_io_uring = true;  // false forces the pread fallback
};

// Probes io_uring (queue init); where the kernel refuses it (ENOSYS, EPERM
// from seccomp or the io_uring_disabled sysctl, ...) or the environment sets
// MSA_IO_URING=0, returns the pread reader and logs a warning saying why.
std::unique_ptr<BlockReader> MakeBlockReader(const BlockReaderOptions& options);

// Implementations (exposed for tests that compare the two).
Result<std::unique_ptr<BlockReader>> MakeUringReader(unsigned queue_depth);
// The pread fallback reads with `threads` threads (the caller's included).
std::unique_ptr<BlockReader> MakePreadReader(unsigned threads = kDefaultPreadThreads);

// Names a failed request in error messages: its index, file (resolved from
// the descriptor), descriptor, offset and length.
std::string DescribeRequest(size_t index, const ReadRequest& r);

}  // namespace msa::io
