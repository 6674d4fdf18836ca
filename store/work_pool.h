// A few threads that run the items of batches alongside the thread that
// submits them: a fetch's block decodes while the rest of its reads are in
// flight (StoreOptions::decode_threads), the runs of a router scan
// (RouterOptions::scan_threads).
//
// The submitter calls Batch::Ready(i) once item i may run (a fetch: when
// the block's bytes are in; a scan: at once); a pool thread takes it and
// runs the batch's work for it. The submitter then calls Finish(): it runs
// whatever no pool thread has taken yet, then waits for the rest, so a
// batch completes even when every pool thread is busy elsewhere. After a
// failure it may call Cancel() instead, which starts nothing more and waits
// for what is running, so that no work touches the batch's buffers after
// it returns.
//
// Thread safety: Start, Ready, Finish and Cancel may be called from any
// thread; Finish or Cancel once per batch, by its owner.
// Invariants: every item is claimed exactly once (by a pool thread, by
// Finish, or by Cancel); `done` counts claimed items that are finished.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <utility>
#include <vector>

#include "msa/status.h"

namespace msa {

class WorkPool {
 public:
  class Batch;
  explicit WorkPool(unsigned threads);
  ~WorkPool();  // joins the threads; no batch may be unfinished
  WorkPool(const WorkPool&) = delete;
  WorkPool& operator=(const WorkPool&) = delete;

  unsigned threads() const { return static_cast<unsigned>(threads_.size()); }
  // A batch of `items` pieces of work; work(i) runs at most once per i.
  std::shared_ptr<Batch> Start(size_t items, std::function<Status(size_t)> work);
  // work(0), ..., work(items - 1) on the pool's threads and this one, all
  // ready at once; returns when every item has finished (also when it
  // throws: nothing started runs on after it), with the failure of the
  // lowest-numbered failed item. An item's exception becomes a Status
  // (bad_alloc: IOError "out of memory").
  Status ParallelFor(size_t items, std::function<Status(size_t)> work);

 private:
  friend class Batch;
  void Post(std::shared_ptr<Batch> batch, size_t item);
  void Loop();

  std::mutex mu_;
  std::condition_variable wake_;
  std::deque<std::pair<std::shared_ptr<Batch>, size_t>> queue_;  // guarded by mu_
  bool stop_ = false;                                            // guarded by mu_
  std::vector<std::thread> threads_;                             // constant after construction
};

class WorkPool::Batch : public std::enable_shared_from_this<Batch> {
 public:
  Batch(WorkPool* pool, size_t items, std::function<Status(size_t)> work)
      : pool_(pool), work_(std::move(work)), claimed_(items) {}
  // Item i's input is ready: a pool thread may run it.
  void Ready(size_t i) { pool_->Post(shared_from_this(), i); }
  // Runs every unclaimed item here, waits for the others; the failure of
  // the lowest-numbered failed item, if any.
  Status Finish();
  // Claims every unclaimed item without running it, waits for the running ones.
  void Cancel();
  // Runs item i unless already claimed (pool threads call this).
  void Run(size_t i);

 private:
  void Wait();
  WorkPool* const pool_;
  const std::function<Status(size_t)> work_;
  std::vector<std::atomic<uint8_t>> claimed_;
  std::mutex mu_;
  std::condition_variable finished_;
  size_t done_ = 0;                 // guarded by mu_
  Status failure_;                  // guarded by mu_
  size_t failed_index_ = SIZE_MAX;  // guarded by mu_
};

}  // namespace msa
