// The registered buffers of an io_uring reader: regions of 4096-aligned
// memory, each registered with the ring as one buffer when it is first
// needed, and lent out in runs of 256 KiB chunks as StagingBuffers, so that
// a batch of reads lands in registered memory (IORING_OP_READ_FIXED).
// Regions are added on demand (at least 4 MiB each, up to a total bound):
// pinning 32 MiB up front cost ~25 ms per store opened on the loaded 2-core
// VM, paid by every process, even one that only ingests.
//
// Thread safety: Acquire, Return and Leak may be called from any thread;
// Find is lock-free (readers see a region only once it is published).
// Invariants: a chunk is free, lent to exactly one StagingBuffer, or leaked
// (never lent again); regions live as long as the pool, which lives as long
// as its last lease (shared_ptr).
#pragma once

#include <array>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <vector>

#include "io/block_reader.h"

namespace msa::io {

class StagingPool : public std::enable_shared_from_this<StagingPool> {
 public:
  static constexpr size_t kChunkBytes = 256 << 10;
  static constexpr size_t kMinRegionBytes = 4 << 20;
  static constexpr int kMaxRegions = 16;
  // Registers region `index` ([base, base + bytes)) with the ring; false
  // when refused (the pool then stops growing).
  using RegisterFn = std::function<bool(int index, uint8_t* base, size_t bytes)>;
  static std::shared_ptr<StagingPool> Make(size_t max_bytes, RegisterFn register_region);
  ~StagingPool();
  StagingPool(const StagingPool&) = delete;
  StagingPool& operator=(const StagingPool&) = delete;

  // A run of free chunks that holds `size` bytes (in a new region if none
  // has room and the bound allows), else heap memory.
  StagingBuffer Acquire(size_t size);
  void Return(int first_chunk, size_t bytes);  // first_chunk: region * 65536 + chunk
  void Leak();

  // The region that holds all of [p, p + length), or -1.
  int Find(const uint8_t* p, size_t length) const {
    const int n = published_.load(std::memory_order_acquire);
    for (int i = 0; i < n; ++i) {
      const Region& r = regions_[i];
      if (p >= r.base && p + length <= r.base + r.chunks * kChunkBytes) return i;
    }
    return -1;
  }
  size_t registered_bytes() const;
  size_t max_bytes() const { return max_bytes_; }

 private:
  struct Region {
    uint8_t* base = nullptr;  // constant once published
    size_t chunks = 0;        // constant once published
    std::vector<bool> used;   // guarded by mu_
  };
  StagingPool(size_t max_bytes, RegisterFn register_region);
  StagingBuffer LendRun(int region, size_t first, size_t need);  // mu_ held

  const size_t max_bytes_;
  const RegisterFn register_;
  mutable std::mutex mu_;
  std::array<Region, kMaxRegions> regions_;
  std::atomic<int> published_{0};  // regions [0, published_) are usable
  size_t total_bytes_ = 0;         // guarded by mu_
  bool refused_ = false;           // guarded by mu_: the ring refused a region
  bool leaked_ = false;            // guarded by mu_: keep the memory forever
};

}  // namespace msa::io
