#include "store/work_pool.h"

#include <new>
#include <string>

namespace msa {

WorkPool::WorkPool(unsigned threads) {
  for (unsigned t = 0; t < threads; ++t) threads_.emplace_back([this] { Loop(); });
}

WorkPool::~WorkPool() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  wake_.notify_all();
  for (auto& t : threads_) t.join();
}

std::shared_ptr<WorkPool::Batch> WorkPool::Start(size_t items, std::function<Status(size_t)> work) {
  return std::make_shared<Batch>(this, items, std::move(work));
}

void WorkPool::Post(std::shared_ptr<Batch> batch, size_t item) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    queue_.emplace_back(std::move(batch), item);
  }
  wake_.notify_one();
}

void WorkPool::Loop() {
  for (;;) {
    std::pair<std::shared_ptr<Batch>, size_t> next;
    {
      std::unique_lock<std::mutex> lock(mu_);
      wake_.wait(lock, [this] { return stop_ || !queue_.empty(); });
      if (queue_.empty()) return;  // stopping
      next = std::move(queue_.front());
      queue_.pop_front();
    }
    next.first->Run(next.second);
  }
}

void WorkPool::Batch::Run(size_t i) {
  if (claimed_[i].exchange(1, std::memory_order_acq_rel) != 0) return;
  Status s;
  try {
    s = work_(i);
  } catch (const std::bad_alloc&) {
    s = Status::IOError("out of memory");  // short: fits std::string's inline buffer, allocates nothing
  } catch (const std::exception& e) {
    try {
      s = Status::Internal(std::string("work item ") + std::to_string(i) + ": " + e.what());
    } catch (...) {
      s = Status::Internal("work item threw");
    }
  } catch (...) {
    s = Status::Internal("work item threw");
  }
  std::lock_guard<std::mutex> lock(mu_);
  if (!s.ok() && i < failed_index_) {
    failed_index_ = i;
    failure_ = std::move(s);
  }
  if (++done_ == claimed_.size()) finished_.notify_all();
}

Status WorkPool::ParallelFor(size_t items, std::function<Status(size_t)> work) {
  const std::shared_ptr<Batch> batch = Start(items, std::move(work));
  try {
    for (size_t i = 1; i < items; ++i) batch->Ready(i);
  } catch (...) {  // a post failed (out of memory): stop, wait for what runs, then unwind
    batch->Cancel();
    throw;
  }
  return batch->Finish();
}

Status WorkPool::Batch::Finish() {
  for (size_t i = 0; i < claimed_.size(); ++i) Run(i);
  Wait();
  std::lock_guard<std::mutex> lock(mu_);
  return failure_;
}

void WorkPool::Batch::Cancel() {
  size_t cancelled = 0;
  for (size_t i = 0; i < claimed_.size(); ++i) {
    if (claimed_[i].exchange(1, std::memory_order_acq_rel) == 0) ++cancelled;
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    done_ += cancelled;
  }
  Wait();
}

void WorkPool::Batch::Wait() {
  std::unique_lock<std::mutex> lock(mu_);
  finished_.wait(lock, [this] { return done_ == claimed_.size(); });
}

}  // namespace msa
