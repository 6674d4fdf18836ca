// io_uring reader: all requests of a ReadAll go out in as few submissions as
// the ring allows (one when they fit its depth), completions are reaped in
// batches, and every completion's result is checked (liburing's
// examples/io_uring-cp.c is the model: retry -EAGAIN, continue short reads).
#include <liburing.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <mutex>
#include <vector>

#include "io/block_reader.h"
#include "io/file_ops.h"

namespace msa::io {

namespace {

class UringReader final : public BlockReader {
 public:
  explicit UringReader(unsigned depth) : depth_(depth) {}
  ~UringReader() override {
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
    return Status::OK();
  }

  Status ReadAll(std::span<const ReadRequest> requests) override {
    std::lock_guard<std::mutex> lock(mu_);
    if (!broken_.ok()) return broken_;
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
        io_uring_prep_read(sqe, r.fd, r.dest + done_[i], r.length - done_[i], r.offset + done_[i]);
        io_uring_sqe_set_data64(sqe, i);
        ++queued;
      }
      int rc = 0;
      FaultInjector* const inj = sys::FaultInjectionActive();
      if (inj != nullptr) [[unlikely]] rc = sys::UringSubmitInjected(inj);
      if (rc == 0) rc = io_uring_submit_and_wait(&ring_, 1);
      if (rc > 0) {
        // The kernel consumed rc SQEs; the rest stay queued in the ring and
        // go out with the next submit.
        queued -= static_cast<size_t>(rc);
        in_flight += static_cast<size_t>(rc);
      } else if (rc < 0 && rc != -EINTR && rc != -EAGAIN && rc != -EBUSY) {
        // The queued SQEs are in the submission ring already and go to the
        // kernel with the next submit, into these buffers: wait for them too.
        return Abandon(in_flight + queued, Status::FromErrno("io_uring_submit", -rc));
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
          }
        }
      }
      io_uring_cq_advance(&ring_, seen);
      if (!failure.ok()) return Abandon(in_flight + queued, failure);
    }
    return Status::OK();
  }

  const char* name() const override { return "io_uring"; }

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
  io_uring ring_{};
  bool initialized_ = false;
  std::mutex mu_;
  std::vector<uint32_t> done_;    // bytes read per request; guarded by mu_
  std::vector<size_t> pending_;   // requests to (re)submit; guarded by mu_
  Status broken_;                 // set when reads could not be reaped; guarded by mu_
  std::atomic<bool> abandoned_{false};
};

}  // namespace

Result<std::unique_ptr<BlockReader>> MakeUringReader(unsigned queue_depth) {
  auto reader = std::make_unique<UringReader>(queue_depth);
  MSA_RETURN_IF_ERROR(reader->Init());
  return std::unique_ptr<BlockReader>(std::move(reader));
}

}  // namespace msa::io
