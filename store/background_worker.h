// One background thread running tasks in order: the Store's prefetches run
// here, so that a query's block reads overlap the caller's other work.
#pragma once

#include <condition_variable>
#include <deque>
#include <functional>
#include <mutex>
#include <thread>

namespace msa {

class BackgroundWorker {
 public:
  BackgroundWorker() = default;
  // Runs every task already queued, then stops the thread.
  ~BackgroundWorker();
  BackgroundWorker(const BackgroundWorker&) = delete;
  BackgroundWorker& operator=(const BackgroundWorker&) = delete;

  // Queues a task; the thread starts on first use. Tasks must not throw.
  void Post(std::function<void()> task);

 private:
  void Loop();
  std::mutex mu_;
  std::condition_variable wake_;
  std::deque<std::function<void()>> tasks_;
  bool stop_ = false;
  std::thread thread_;  // started by the first Post, under mu_
};

}  // namespace msa
