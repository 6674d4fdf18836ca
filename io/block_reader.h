// Batched positional reads: the fetch path's one way to the disk.
//
// A query hands all of its block reads to ReadAll at once; the io_uring
// implementation turns them into one submission at high queue depth, the
// pread fallback (used where io_uring cannot be set up) spreads them over a
// small thread pool.
//
// Thread safety: every method may be called from several threads; ReadAll
// calls are serialised internally (one ring per reader). A StagingBuffer
// may be used and released on any thread.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>

#include "io/aligned_buffer.h"
#include "msa/status.h"

namespace msa::io {

// One read. For a descriptor opened with O_DIRECT, offset, length and dest
// must be multiples of 4096 (AlignedBuffer and StagingBuffer give such memory).
struct ReadRequest {
  int fd = -1;
  uint64_t offset = 0;
  uint32_t length = 0;
  uint8_t* dest = nullptr;
};

// Called once per request, as soon as that request's bytes are all in
// (index into the span given to ReadAll), from the thread that reaped it:
// the submitting thread for io_uring, any pool thread for pread. It must be
// quick and must not call back into the reader. A request whose read fails
// is never reported; ReadAll then returns the error.
using ReadDoneFn = std::function<void(size_t index)>;

class StagingPool;  // the registered buffers of an io_uring reader

// Memory that reads land in, 4096-aligned: a run of chunks of one of the
// reader's registered buffers (io_uring reads into it without pinning pages per read:
// IORING_OP_READ_FIXED) or, when not enough of it is free, an ordinary heap
// buffer. Move-only; the chunks go back to the pool when destroyed.
class StagingBuffer {
 public:
  StagingBuffer() = default;
  explicit StagingBuffer(size_t size) : heap_(size) {}
  StagingBuffer(std::shared_ptr<StagingPool> pool, int first_chunk, uint8_t* data, size_t size)
      : pool_(std::move(pool)), slab_(first_chunk), slab_data_(data), slab_size_(size) {}
  ~StagingBuffer();
  StagingBuffer(StagingBuffer&& other) noexcept;
  StagingBuffer& operator=(StagingBuffer&& other) noexcept;
  StagingBuffer(const StagingBuffer&) = delete;
  StagingBuffer& operator=(const StagingBuffer&) = delete;

  uint8_t* data() { return pool_ ? slab_data_ : heap_.data(); }
  size_t size() const { return pool_ ? slab_size_ : heap_.size(); }
  bool registered() const { return pool_ != nullptr; }
  // Gives the memory up for good (see BlockReader::abandoned): registered
  // chunks are never lent again, a heap buffer is never freed.
  void Leak();

 private:
  void Release();
  AlignedBuffer heap_;
  std::shared_ptr<StagingPool> pool_;  // null: heap_
  int slab_ = -1;                      // first chunk
  uint8_t* slab_data_ = nullptr;
  size_t slab_size_ = 0;
};

// What a reader has submitted since it was made (reads include continued
// short reads and retries).
struct ReaderCounters {
  uint64_t batches = 0;  // ReadAll calls with at least one request (each one submission batch)
  uint64_t reads = 0;
  uint64_t registered_file_reads = 0;    // through the ring's file table
  uint64_t registered_buffer_reads = 0;  // IORING_OP_READ_FIXED
};

class BlockReader {
 public:
  virtual ~BlockReader() = default;
  // Reads every request completely. Short reads are continued and EAGAIN /
  // EINTR retried; end of file before `length` bytes or any other error fails
  // the whole call with a Status naming the request (index, file, offset,
  // length). on_read (optional) hears of each request as it completes, so
  // that the caller can start on its bytes while the others are in flight.
  virtual Status ReadAll(std::span<const ReadRequest> requests, const ReadDoneFn& on_read) = 0;
  Status ReadAll(std::span<const ReadRequest> requests) { return ReadAll(requests, ReadDoneFn()); }
  // True once a failed ReadAll could not wait for all of its reads: the
  // kernel may still write into that call's buffers, so the caller must never
  // free or reuse them, and every later ReadAll fails. Practically never
  // happens; it is the price of not aborting.
  virtual bool abandoned() const { return false; }
  // "io_uring" or "pread": shown by `msa stats`.
  virtual const char* name() const = 0;
  // One line for `msa stats`: the kind and how it is set up (registered
  // files and buffers), or why the fallback is in use.
  virtual std::string detail() const = 0;

  // Registered files. RegisterFile(fd) says fd will be read until
  // ForgetFile(fd); the io_uring reader then puts it in its ring's file
  // table (saving the kernel a descriptor lookup and reference per read).
  // The owner must call ForgetFile(fd) before closing fd: the table holds a
  // reference to the file -- an unlinked segment's disk space would stay
  // allocated -- and a reused descriptor number must not read the old
  // file. Best effort: a full table or a refused registration leaves plain
  // reads of fd. Must not be called while a ReadAll of fd is in flight.
  virtual void RegisterFile(int /*fd*/) {}
  virtual void ForgetFile(int /*fd*/) {}

  virtual ReaderCounters counters() const { return {}; }

  // A buffer for a batch of reads totalling `size` bytes (see StagingBuffer).
  virtual StagingBuffer Staging(size_t size) { return StagingBuffer(size); }
};

inline constexpr unsigned kDefaultPreadThreads = 8;

struct BlockReaderOptions {
  unsigned queue_depth = 256;  // io_uring entries (requests in flight)
  bool allow_io_uring = true;  // false forces the pread fallback
  // io_uring only. Registered files: a sparse table of this many slots (0:
  // none, every read names its descriptor).
  unsigned registered_files = 1024;
  // Registered buffers: up to this many bytes, pinned in regions of at
  // least 4 MiB as batches need them, lent out in 256 KiB chunks (0: none;
  // reads go to heap memory). A batch that does not fit what is free (and
  // the bound, or a ring that refuses more, e.g. over RLIMIT_MEMLOCK) gets
  // heap memory and plain reads.
  uint64_t registered_buffer_bytes = 32ull << 20;
};

// Probes io_uring (queue init); where the kernel refuses it (ENOSYS, EPERM
// from seccomp or the io_uring_disabled sysctl, ...) or the environment sets
// MSA_IO_URING=0, returns the pread reader and logs a warning saying why
// (detail() repeats it). Registered files or buffers that the kernel
// refuses (old kernel, RLIMIT_MEMLOCK) are left out, said once at info level
// and in detail().
std::unique_ptr<BlockReader> MakeBlockReader(const BlockReaderOptions& options);

// Implementations (exposed for tests and benchmarks that compare them).
Result<std::unique_ptr<BlockReader>> MakeUringReader(const BlockReaderOptions& options);
inline Result<std::unique_ptr<BlockReader>> MakeUringReader(unsigned queue_depth) {
  BlockReaderOptions options;
  options.queue_depth = queue_depth;
  return MakeUringReader(options);
}
// The pread fallback reads with `threads` threads (the caller's included);
// `why` (shown by detail()) says why it is in use.
std::unique_ptr<BlockReader> MakePreadReader(unsigned threads = kDefaultPreadThreads,
                                             std::string why = "");

// Names a failed request in error messages: its index, file (resolved from
// the descriptor), descriptor, offset and length.
std::string DescribeRequest(size_t index, const ReadRequest& r);

}  // namespace msa::io
