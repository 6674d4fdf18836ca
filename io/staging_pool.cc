#include "io/staging_pool.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <new>
#include <utility>

namespace msa::io {

std::shared_ptr<StagingPool> StagingPool::Make(size_t bytes) {
  return std::shared_ptr<StagingPool>(new StagingPool(bytes));
}

StagingPool::StagingPool(size_t bytes)
    : chunks_(std::max<size_t>(1, (bytes + kChunkBytes - 1) / kChunkBytes)), used_(chunks_, false) {
  void* p = std::aligned_alloc(kIoAlignment, chunks_ * kChunkBytes);
  if (p == nullptr) throw std::bad_alloc();
  std::memset(p, 0, chunks_ * kChunkBytes);  // resident before registration pins it
  base_ = static_cast<uint8_t*>(p);
}

StagingPool::~StagingPool() {
  std::lock_guard<std::mutex> lock(mu_);
  if (!leaked_) std::free(base_);
}

StagingBuffer StagingPool::Acquire(size_t size) {
  const size_t need = std::max<size_t>(1, (size + kChunkBytes - 1) / kChunkBytes);
  if (need <= chunks_) {
    std::lock_guard<std::mutex> lock(mu_);
    size_t run = 0;
    for (size_t i = 0; i < chunks_; ++i) {
      run = used_[i] ? 0 : run + 1;
      if (run == need) {
        const size_t first = i + 1 - need;
        for (size_t c = first; c <= i; ++c) used_[c] = true;
        return StagingBuffer(shared_from_this(), static_cast<int>(first), base_ + first * kChunkBytes,
                             need * kChunkBytes);
      }
    }
  }
  return StagingBuffer(size);
}

void StagingPool::Return(int first_chunk, size_t bytes) {
  std::lock_guard<std::mutex> lock(mu_);
  for (size_t c = static_cast<size_t>(first_chunk); c < first_chunk + bytes / kChunkBytes; ++c) used_[c] = false;
}

void StagingPool::Leak() {
  std::lock_guard<std::mutex> lock(mu_);
  leaked_ = true;  // the lease's chunks are never returned, and the memory never freed
}

StagingBuffer::~StagingBuffer() { Release(); }

StagingBuffer::StagingBuffer(StagingBuffer&& other) noexcept
    : heap_(std::move(other.heap_)),
      pool_(std::move(other.pool_)),
      slab_(std::exchange(other.slab_, -1)),
      slab_data_(std::exchange(other.slab_data_, nullptr)),
      slab_size_(std::exchange(other.slab_size_, 0)) {}

StagingBuffer& StagingBuffer::operator=(StagingBuffer&& other) noexcept {
  if (this != &other) {
    Release();
    heap_ = std::move(other.heap_);
    pool_ = std::move(other.pool_);
    slab_ = std::exchange(other.slab_, -1);
    slab_data_ = std::exchange(other.slab_data_, nullptr);
    slab_size_ = std::exchange(other.slab_size_, 0);
  }
  return *this;
}

void StagingBuffer::Release() {
  if (pool_) pool_->Return(slab_, slab_size_);
  pool_.reset();
  slab_ = -1;
  slab_data_ = nullptr;
  slab_size_ = 0;
}

void StagingBuffer::Leak() {
  if (pool_) {
    pool_->Leak();
    pool_.reset();
    slab_data_ = nullptr;
    slab_size_ = 0;
  } else {
    heap_.Leak();
  }
}

}  // namespace msa::io
