// The portable fallback: positional reads spread over a small thread pool
// (the calling thread works too), so that a query's scattered block reads
// still overlap where io_uring is refused. One thread when asked for one.
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <condition_variable>
#include <mutex>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "io/block_reader.h"
#include "io/file_ops.h"

namespace msa::io {

namespace {

Status ReadOne(size_t i, const ReadRequest& r) {
  uint32_t done = 0;
  while (done < r.length) {
    const ssize_t n = sys::PRead(r.fd, r.dest + done, r.length - done, static_cast<off_t>(r.offset + done));
    if (n < 0) {
      const int err = errno;
      if (err == EINTR || err == EAGAIN) continue;
      return Status::FromErrno(DescribeRequest(i, r), err);
    }
    if (n == 0) {
      return Status::IOError(DescribeRequest(i, r) + ": end of file after " + std::to_string(done) + " bytes");
    }
    done += static_cast<uint32_t>(n);
  }
  return Status::OK();
}

class PreadReader final : public BlockReader {
 public:
  PreadReader(unsigned threads, std::string why) : why_(std::move(why)) {
    for (unsigned t = 1; t < threads; ++t) workers_.emplace_back([this] { WorkerLoop(); });
  }
  ~PreadReader() override {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_ = true;
    }
    wake_.notify_all();
    for (auto& w : workers_) w.join();
  }

  Status ReadAll(std::span<const ReadRequest> requests, const ReadDoneFn& on_read) override {
    std::lock_guard<std::mutex> call(call_mu_);  // one batch at a time
    if (workers_.empty() || requests.size() < 2) return RunSerial(requests, on_read);
    {
      std::lock_guard<std::mutex> lock(mu_);
      job_ = requests;
      on_read_ = &on_read;
      next_.store(0);
      failure_ = Status::OK();
      failed_index_ = SIZE_MAX;
      busy_ = workers_.size();
      ++generation_;
    }
    wake_.notify_all();
    Work();
    std::unique_lock<std::mutex> lock(mu_);
    done_.wait(lock, [this] { return busy_ == 0; });
    job_ = {};
    on_read_ = nullptr;
    return failure_;
  }

  const char* name() const override { return "pread"; }
  std::string detail() const override {
    return "pread, " + std::to_string(workers_.size() + 1) + " threads" +
           (why_.empty() ? "" : " (fallback: " + why_ + ")");
  }

 private:
  Status RunSerial(std::span<const ReadRequest> requests, const ReadDoneFn& on_read) {
    for (size_t i = 0; i < requests.size(); ++i) {
      MSA_RETURN_IF_ERROR(ReadOne(i, requests[i]));
      if (on_read) on_read(i);
    }
    return Status::OK();
  }

  // Takes requests until none is left; records the lowest-numbered failure.
  void Work() {
    for (size_t i = next_.fetch_add(1); i < job_.size(); i = next_.fetch_add(1)) {
      Status s = ReadOne(i, job_[i]);
      if (s.ok()) {
        if (*on_read_) (*on_read_)(i);
      } else {
        std::lock_guard<std::mutex> lock(mu_);
        if (i < failed_index_) {
          failed_index_ = i;
          failure_ = s;
        }
      }
    }
  }

  void WorkerLoop() {
    uint64_t seen = 0;
    for (;;) {
      {
        std::unique_lock<std::mutex> lock(mu_);
        wake_.wait(lock, [&] { return stop_ || generation_ != seen; });
        if (stop_) return;
        seen = generation_;
      }
      Work();
      std::lock_guard<std::mutex> lock(mu_);
      if (--busy_ == 0) done_.notify_one();
    }
  }

  std::mutex call_mu_;
  std::mutex mu_;
  std::condition_variable wake_, done_;
  std::vector<std::thread> workers_;
  const std::string why_;  // why the fallback is in use ("" when chosen)
  std::span<const ReadRequest> job_;  // set under mu_ before a generation starts
  const ReadDoneFn* on_read_ = nullptr;  // likewise
  std::atomic<size_t> next_{0};
  Status failure_;
  size_t failed_index_ = SIZE_MAX;
  size_t busy_ = 0;
  uint64_t generation_ = 0;
  bool stop_ = false;
};

}  // namespace

std::unique_ptr<BlockReader> MakePreadReader(unsigned threads, std::string why) {
  return std::make_unique<PreadReader>(threads == 0 ? 1 : threads, std::move(why));
}

}  // namespace msa::io
