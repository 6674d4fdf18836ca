// The registered buffer of an io_uring reader: one 4096-aligned region,
// registered with the ring as a single buffer and lent out in runs of
// contiguous chunks as StagingBuffers, so that any batch that fits the free
// space reads into registered memory (IORING_OP_READ_FIXED).
//
// Thread safety: Acquire, Return and Leak may be called from any thread.
// Invariants: a chunk is free, lent to exactly one StagingBuffer, or leaked
// (never lent again); the region lives as long as the pool, which lives as
// long as its last lease (shared_ptr).
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <vector>

#include "io/block_reader.h"

namespace msa::io {

class StagingPool : public std::enable_shared_from_this<StagingPool> {
 public:
  static constexpr size_t kChunkBytes = 256 << 10;
  // bytes rounded up to whole chunks.
  static std::shared_ptr<StagingPool> Make(size_t bytes);
  ~StagingPool();
  StagingPool(const StagingPool&) = delete;
  StagingPool& operator=(const StagingPool&) = delete;

  // The first run of free chunks that holds `size` bytes, else heap memory.
  StagingBuffer Acquire(size_t size);
  void Return(int first_chunk, size_t bytes);
  void Leak();

  uint8_t* base() const { return base_; }
  size_t bytes() const { return chunks_ * kChunkBytes; }
  // True when all of [p, p + length) lies in the region.
  bool Holds(const uint8_t* p, size_t length) const {
    return p >= base_ && p + length <= base_ + bytes();
  }

 private:
  explicit StagingPool(size_t bytes);
  const size_t chunks_;
  uint8_t* base_ = nullptr;  // constant after construction
  std::mutex mu_;
  std::vector<bool> used_;  // per chunk; guarded by mu_
  bool leaked_ = false;     // guarded by mu_: keep the memory forever
};

}  // namespace msa::io
