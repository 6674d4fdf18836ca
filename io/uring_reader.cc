// io_uring reader: all requests of a ReadAll go out in as few submissions as
// the ring allows (one when they fit its depth), completions are reaped in
// batches, and every completion's result is checked (liburing's
// examples/io_uring-cp.c is the model: retry -EAGAIN, continue short reads).
#include <liburing.h>

#include <cerrno>
#include <cstring>
#include <mutex>
#include <vector>

#include "io/block_reader.h"

namespace msa::io {

namespace {

class UringReader final : public BlockReader {
 public:
  explicit UringReader(unsigned depth) : depth_(depth) {}
  ~UringReader() override {
    if (initialized_) io_uring_queue_exit(&ring_);
  }

  Status Init() {
    const int rc = io_uring_queue_init(depth_, &ring_, 0);
    if (rc < 0) return Status::FromErrno("io_uring_queue_init", -rc);
    initialized_ = true;
    return Status::OK();
  }

  Status ReadAll(std::span<const ReadRequest> requests) override {
    std::lock_guard<std::mutex> lock(mu_);
    done_.assign(requests.size(), 0);
    pending_.clear();
    for (size_t i = requests.size(); i-- > 0;) pending_.push_back(i);  // popped from the back
    size_t in_flight = 0;
    size_t completed = 0;
    while (completed < requests.size()) {
      // Queue everything the ring has room for, then one submit for all of it.
      while (!pending_.empty() && in_flight < depth_) {
        io_uring_sqe* sqe = io_uring_get_sqe(&ring_);
        if (sqe == nullptr) break;
        const size_t i = pending_.back();
        pending_.pop_back();
        const ReadRequest& r = requests[i];
        io_uring_prep_read(sqe, r.fd, r.dest + done_[i], r.length - done_[i], r.offset + done_[i]);
        io_uring_sqe_set_data64(sqe, i);
        ++in_flight;
      }
      int rc = io_uring_submit_and_wait(&ring_, 1);
      if (rc < 0 && rc != -EINTR) {
        Drain(in_flight);
        return Status::FromErrno("io_uring_submit", -rc);
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
        const int res = cqe->res;
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
      if (!failure.ok()) {
        Drain(in_flight);
        return failure;
      }
    }
    return Status::OK();
  }

  const char* name() const override { return "io_uring"; }

 private:
  // After a failure, wait for reads still in flight: their buffers belong to
  // the caller, who may free them as soon as we return.
  void Drain(size_t in_flight) {
    while (in_flight > 0) {
      io_uring_cqe* cqe;
      if (io_uring_wait_cqe(&ring_, &cqe) < 0) return;
      io_uring_cqe_seen(&ring_, cqe);
      --in_flight;
    }
  }

  const unsigned depth_;
  io_uring ring_{};
  bool initialized_ = false;
  std::mutex mu_;
  std::vector<uint32_t> done_;    // bytes read per request; guarded by mu_
  std::vector<size_t> pending_;   // requests to (re)submit; guarded by mu_
};

}  // namespace

Result<std::unique_ptr<BlockReader>> MakeUringReader(unsigned queue_depth) {
  auto reader = std::make_unique<UringReader>(queue_depth);
  MSA_RETURN_IF_ERROR(reader->Init());
  return std::unique_ptr<BlockReader>(std::move(reader));
}

}  // namespace msa::io
