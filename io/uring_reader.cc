// io_uring reader: all requests of a ReadAll go out in as few submissions as
// the ring allows (one when they fit its depth), completions are reaped in
// batches, and every completion's result is checked (liburing's
// examples/io_uring-cp.c is the model: retry -EAGAIN, continue short reads).
//
// Registered files and buffers: descriptors the owner registers go into a
// sparse file table (reads name the slot, IOSQE_FIXED_FILE), and reads into
// the reader's staging buffer, registered once, are IORING_OP_READ_FIXED
// (no page pinning per read). Anything else is read the plain way.
#include <liburing.h>
#include <sys/uio.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <mutex>
#include <string>
#include <vector>

#include <spdlog/spdlog.h>

#include "io/block_reader.h"
#include "io/file_ops.h"
#include "io/staging_pool.h"

namespace msa::io {

namespace {

class UringReader final : public BlockReader {
 public:
  explicit UringReader(const BlockReaderOptions& options)
      : depth_(options.queue_depth), options_(options) {}
  ~UringReader() override {
    // Exiting the ring drops its references to registered files and
    // unpins registered buffers (the pool's memory outlives it, per lease).
    if (initialized_) io_uring_queue_exit(&ring_);
  }

  Status Init() {
    // COOP_TASKRUN: completions are processed when we enter the kernel
    // anyway, not by interrupting this thread (fewer context switches);
    // older kernels refuse the flag, then the ring is made without it.
    int rc = io_uring_queue_init(depth_, &ring_, IORING_SETUP_COOP_TASKRUN);
    if (rc == -EINVAL) rc = io_uring_queue_init(depth_, &ring_, 0);
    if (rc < 0) return Status::FromErrno("io_uring_queue_init", -rc);
    initialized_ = true;
    // A ring can be made where submitting is refused (a seccomp filter on
    // io_uring_enter alone): one no-op through the ring proves the path,
    // so that such a system falls back at start-up, not at the first query.
    if (io_uring_sqe* sqe = io_uring_get_sqe(&ring_)) {
      io_uring_prep_nop(sqe);
      rc = io_uring_submit_and_wait(&ring_, 1);
      if (rc < 0) return Status::FromErrno("io_uring_enter (a no-op at start-up)", -rc);
      io_uring_cqe* cqe = nullptr;
      rc = io_uring_peek_cqe(&ring_, &cqe);
      if (rc < 0 || cqe == nullptr) return Status::FromErrno("io_uring no-op completion", rc < 0 ? -rc : EIO);
      const int res = cqe->res;
      io_uring_cqe_seen(&ring_, cqe);
      if (res < 0) return Status::FromErrno("io_uring no-op at start-up", -res);
    }
    detail_ = "io_uring, queue depth " + std::to_string(depth_);
    if (options_.registered_files > 0) {
      rc = io_uring_register_files_sparse(&ring_, options_.registered_files);
      if (rc < 0) {
        spdlog::info("io_uring: no registered files ({}); reads name their descriptors", std::strerror(-rc));
        detail_ += ", registered files refused (" + std::string(std::strerror(-rc)) + ")";
      } else {
        file_slots_ = options_.registered_files;
        free_slots_.reserve(file_slots_);
        for (unsigned i = file_slots_; i-- > 0;) free_slots_.push_back(static_cast<int>(i));
        detail_ += ", " + std::to_string(file_slots_) + " registered file slots";
      }
    }
    // Registered buffers: a sparse table now, regions registered as the
    // staging pool needs them (io/staging_pool.h says why).
    if (options_.registered_buffer_bytes > 0) {
      rc = io_uring_register_buffers_sparse(&ring_, StagingPool::kMaxRegions);
      if (rc < 0) {
        spdlog::info("io_uring: no registered buffers ({}); reads go to heap buffers", std::strerror(-rc));
        detail_ += ", registered buffers refused (" + std::string(std::strerror(-rc)) + ")";
      } else {
        pool_ = StagingPool::Make(options_.registered_buffer_bytes,
                                  [this](int index, uint8_t* base, size_t bytes) { return RegisterRegion(index, base, bytes); });
      }
    }
    return Status::OK();
  }

  void RegisterFile(int fd) override {
    if (fd < 0) return;
    std::lock_guard<std::mutex> lock(mu_);
    if (file_slots_ == 0 || !broken_.ok()) return;
    if (static_cast<size_t>(fd) < slot_of_fd_.size() && slot_of_fd_[fd] >= 0) return;  // already
    if (free_slots_.empty()) return;  // table full: plain reads
    const int slot = free_slots_.back();
    const int rc = io_uring_register_files_update(&ring_, static_cast<unsigned>(slot), &fd, 1);
    if (rc != 1) {
      spdlog::debug("io_uring: could not register fd {}: {}", fd, std::strerror(rc < 0 ? -rc : EIO));
      return;
    }
    free_slots_.pop_back();
    if (static_cast<size_t>(fd) >= slot_of_fd_.size()) slot_of_fd_.resize(static_cast<size_t>(fd) + 1, -1);
    slot_of_fd_[fd] = slot;
  }

  void ForgetFile(int fd) override {
    if (fd < 0) return;
    std::lock_guard<std::mutex> lock(mu_);
    if (static_cast<size_t>(fd) >= slot_of_fd_.size() || slot_of_fd_[fd] < 0) return;
    const int slot = slot_of_fd_[fd];
    slot_of_fd_[fd] = -1;
    int none = -1;
    const int rc = io_uring_register_files_update(&ring_, static_cast<unsigned>(slot), &none, 1);
    if (rc == 1) {
      free_slots_.push_back(slot);
    } else {
      // The slot keeps its reference (and stays out of use); the descriptor
      // is no longer read through it, so a reused number is harmless.
      spdlog::warn("io_uring: could not drop registered fd {} (slot {}): {}", fd, slot,
                   std::strerror(rc < 0 ? -rc : EIO));
    }
  }

  // Called by the pool (its lock held) to register a new region.
  bool RegisterRegion(int index, uint8_t* base, size_t bytes) {
    std::lock_guard<std::mutex> lock(mu_);  // no read is in flight meanwhile
    iovec iov{base, bytes};
    const __u64 tag = 0;
    const int rc = io_uring_register_buffers_update_tag(&ring_, static_cast<unsigned>(index), &iov, &tag, 1);
    if (rc == 1) return true;
    // ENOMEM: pinning more would pass RLIMIT_MEMLOCK (no CAP_IPC_LOCK).
    buffer_refusal_ = std::strerror(rc < 0 ? -rc : EIO);
    spdlog::info("io_uring: no more registered buffer memory ({}); larger batches read into heap buffers",
                 buffer_refusal_);
    return false;
  }

  StagingBuffer Staging(size_t size) override {
    if (pool_) return pool_->Acquire(size);
    return StagingBuffer(size);
  }

  Status ReadAll(std::span<const ReadRequest> requests, const ReadDoneFn& on_read) override {
    std::lock_guard<std::mutex> lock(mu_);
    if (!broken_.ok()) return broken_;
    counters_.batches += !requests.empty();
    done_.assign(requests.size(), 0);
    pending_.clear();
    for (size_t i = requests.size(); i-- > 0;) pending_.push_back(i);  // popped from the back
    size_t queued = 0;     // SQEs prepared, not yet accepted by the kernel
    size_t in_flight = 0;  // submitted, completion not yet reaped
    size_t completed = 0;
    while (completed < requests.size()) {
      // Queue everything the ring has room for, then one submit for all of it.
      while (!pending_.empty() && queued + in_flight < depth_) {
        io_uring_sqe* sqe = io_uring_get_sqe(&ring_);
        if (sqe == nullptr) break;
        const size_t i = pending_.back();
        pending_.pop_back();
        const ReadRequest& r = requests[i];
        const int slot = static_cast<size_t>(r.fd) < slot_of_fd_.size() ? slot_of_fd_[r.fd] : -1;
        const int fd = slot >= 0 ? slot : r.fd;
        uint8_t* const dest = r.dest + done_[i];
        const uint32_t length = r.length - done_[i];
        const int region = pool_ ? pool_->Find(dest, length) : -1;
        if (region >= 0) {
          io_uring_prep_read_fixed(sqe, fd, dest, length, r.offset + done_[i], region);
        } else {
          io_uring_prep_read(sqe, fd, dest, length, r.offset + done_[i]);
        }
        if (slot >= 0) sqe->flags |= IOSQE_FIXED_FILE;
        ++counters_.reads;
        counters_.registered_file_reads += slot >= 0;
        counters_.registered_buffer_reads += sqe->opcode == IORING_OP_READ_FIXED;
        io_uring_sqe_set_data64(sqe, i);
        ++queued;
      }
      FaultInjector* const inj = sys::FaultInjectionActive();
      if (queued == 0) {
        // Nothing new for the kernel: only wait. Entering through submit
        // here would make the number of submissions depend on how fast
        // reads complete rather than on what was asked.
        io_uring_cqe* first = nullptr;
        const int rc = io_uring_wait_cqe(&ring_, &first);
        if (rc < 0 && rc != -EINTR && rc != -EAGAIN) {
          return Abandon(in_flight, Status::FromErrno("io_uring_wait_cqe", -rc));
        }
      } else {
        int rc = 0;
        if (inj != nullptr) [[unlikely]] rc = sys::UringSubmitInjected(inj);
        if (rc == 0) rc = io_uring_submit_and_wait(&ring_, 1);
        if (rc > 0) {
          // The kernel consumed rc SQEs; the rest stay queued in the ring
          // and go out with the next submit.
          queued -= static_cast<size_t>(rc);
          in_flight += static_cast<size_t>(rc);
        } else if (rc < 0 && rc != -EINTR && rc != -EAGAIN && rc != -EBUSY) {
          // The queued SQEs are in the submission ring already and go to
          // the kernel with the next submit, into these buffers: wait for
          // them too.
          return Abandon(in_flight + queued, Status::FromErrno("io_uring_submit", -rc));
        }
      }
      // Reap every completion that is ready, not just the one waited for.
      io_uring_cqe* cqe;
      unsigned head;
      unsigned seen = 0;
      Status failure;
      io_uring_for_each_cqe(&ring_, head, cqe) {
        ++seen;
        --in_flight;
        const size_t i = io_uring_cqe_get_data64(cqe);
        const ReadRequest& r = requests[i];
        int res = cqe->res;
        if (inj != nullptr) [[unlikely]] {
          res = sys::UringCompletionInjected(inj, r.fd, r.offset + done_[i], r.length - done_[i],
                                             r.dest + done_[i], res);
        }
        if (res == -EAGAIN || res == -EINTR) {
          pending_.push_back(i);
        } else if (res < 0) {
          if (failure.ok()) failure = Status::FromErrno(DescribeRequest(i, r), -res);
        } else if (res == 0) {
          if (failure.ok()) {
            failure = Status::IOError(DescribeRequest(i, r) + ": end of file after " +
                                      std::to_string(done_[i]) + " bytes");
          }
        } else {
          done_[i] += static_cast<uint32_t>(res);
          if (done_[i] < r.length) {
            pending_.push_back(i);  // short read: continue where it stopped
          } else {
            ++completed;
            if (on_read) on_read(i);
          }
        }
      }
      io_uring_cq_advance(&ring_, seen);
      if (!failure.ok()) return Abandon(in_flight + queued, failure);
    }
    return Status::OK();
  }

  const char* name() const override { return "io_uring"; }
  std::string detail() const override {
    if (!pool_) return detail_;
    // The pool's lock first and alone: the pool calls RegisterRegion (mu_)
    // with its lock held, so taking it under mu_ would invert that order.
    const size_t registered = pool_->registered_bytes();
    std::lock_guard<std::mutex> lock(mu_);
    return detail_ + ", registered buffers " + std::to_string(registered >> 10) + " of up to " +
           std::to_string(pool_->max_bytes() >> 10) + " KiB" +
           (buffer_refusal_.empty() ? "" : " (ring refused more: " + buffer_refusal_ + ")");
  }
  ReaderCounters counters() const override {
    std::lock_guard<std::mutex> lock(mu_);
    return counters_;
  }

 private:
  // After a failure: SQEs still queued are submitted (they cannot be taken
  // back), then every read in flight is waited for, because its buffer
  // belongs to the caller, who frees it as soon as we return. If the wait
  // itself fails the reader is marked abandoned (see BlockReader).
  Status Abandon(size_t outstanding, Status failure) {
    while (outstanding > 0) {
      const int rc = io_uring_submit(&ring_);  // flush leftover SQEs, if any
      if (rc < 0 && rc != -EINTR && rc != -EAGAIN && rc != -EBUSY) break;
      io_uring_cqe* cqe = nullptr;
      const int wait = io_uring_wait_cqe(&ring_, &cqe);
      if (wait == -EINTR || wait == -EAGAIN) continue;
      if (wait < 0) break;
      io_uring_cqe_seen(&ring_, cqe);
      --outstanding;
    }
    if (outstanding > 0) {
      broken_ = Status::IOError("io_uring reader: " + std::to_string(outstanding) +
                                " reads could not be reaped after an error; reads are disabled "
                                "until the store is reopened");
      abandoned_.store(true);
      return broken_;
    }
    return failure;
  }

  bool abandoned() const override { return abandoned_.load(); }

  const unsigned depth_;
  const BlockReaderOptions options_;
  std::string detail_;  // constant after Init
  std::shared_ptr<StagingPool> pool_;  // registered buffers (null: none); constant after Init
  std::string buffer_refusal_;         // why the ring refused a region; guarded by mu_
  unsigned file_slots_ = 0;            // registered file table size (0: none); constant after Init
  std::vector<int> slot_of_fd_;        // fd -> file table slot, -1 none; guarded by mu_
  std::vector<int> free_slots_;        // guarded by mu_
  io_uring ring_{};
  bool initialized_ = false;
  mutable std::mutex mu_;
  ReaderCounters counters_;       // guarded by mu_
  std::vector<uint32_t> done_;    // bytes read per request; guarded by mu_
  std::vector<size_t> pending_;   // requests to (re)submit; guarded by mu_
  Status broken_;                 // set when reads could not be reaped; guarded by mu_
  std::atomic<bool> abandoned_{false};
};

}  // namespace

Result<std::unique_ptr<BlockReader>> MakeUringReader(const BlockReaderOptions& options) {
  auto reader = std::make_unique<UringReader>(options);
  MSA_RETURN_IF_ERROR(reader->Init());
  return std::unique_ptr<BlockReader>(std::move(reader));
}

}  // namespace msa::io
