// The registered buffers of an io_uring reader: a few equal slabs carved
// from one 4096-aligned allocation, lent out whole as StagingBuffers.
//
// Thread safety: Acquire, Return and Leak may be called from any thread.
// Invariants: a slab is either free (in free_) or lent to exactly one
// StagingBuffer, or leaked (neither; never lent again). The memory lives as
// long as the pool, which lives as long as its last lease (shared_ptr).
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
  // slabs * slab_bytes bytes, slab_bytes a multiple of kIoAlignment.
  static std::shared_ptr<StagingPool> Make(unsigned slabs, size_t slab_bytes);
  ~StagingPool();
  StagingPool(const StagingPool&) = delete;
  StagingPool& operator=(const StagingPool&) = delete;

  // A free slab when size fits one, else heap memory of `size` bytes.
  StagingBuffer Acquire(size_t size);
  void Return(int slab);
  void Leak(int slab);

  uint8_t* slab(int i) const { return base_ + static_cast<size_t>(i) * slab_bytes_; }
  unsigned slabs() const { return slabs_; }
  size_t slab_bytes() const { return slab_bytes_; }
  // The slab that holds all of [p, p + length), or -1.
  int SlabOf(const uint8_t* p, size_t length) const {
    if (p < base_ || p >= base_ + static_cast<size_t>(slabs_) * slab_bytes_) return -1;
    const size_t at = static_cast<size_t>(p - base_);
    const size_t i = at / slab_bytes_;
    return at + length <= (i + 1) * slab_bytes_ ? static_cast<int>(i) : -1;
  }
  // Batches that found no free slab, or did not fit one (heap instead).
  uint64_t misses() const;

 private:
  StagingPool(unsigned slabs, size_t slab_bytes);
  const unsigned slabs_;
  const size_t slab_bytes_;
  uint8_t* base_ = nullptr;  // constant after construction
  mutable std::mutex mu_;
  std::vector<int> free_;  // guarded by mu_
  bool leaked_ = false;    // guarded by mu_: keep the memory forever
  uint64_t misses_ = 0;    // guarded by mu_
};

}  // namespace msa::io
