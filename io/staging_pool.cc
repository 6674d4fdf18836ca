#include "io/staging_pool.h"

#include <cstdlib>
#include <cstring>
#include <new>
#include <utility>

namespace msa::io {

std::shared_ptr<StagingPool> StagingPool::Make(unsigned slabs, size_t slab_bytes) {
  return std::shared_ptr<StagingPool>(new StagingPool(slabs, slab_bytes));
}

StagingPool::StagingPool(unsigned slabs, size_t slab_bytes)
    : slabs_(slabs), slab_bytes_(AlignUp(slab_bytes)) {
  const size_t total = static_cast<size_t>(slabs_) * slab_bytes_;
  void* p = std::aligned_alloc(kIoAlignment, total == 0 ? kIoAlignment : total);
  if (p == nullptr) throw std::bad_alloc();
  std::memset(p, 0, total);  // touched now: registration pins resident pages
  base_ = static_cast<uint8_t*>(p);
  for (int i = static_cast<int>(slabs_) - 1; i >= 0; --i) free_.push_back(i);
}

StagingPool::~StagingPool() {
  std::lock_guard<std::mutex> lock(mu_);
  if (!leaked_) std::free(base_);
}

StagingBuffer StagingPool::Acquire(size_t size) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (size <= slab_bytes_ && !free_.empty()) {
      const int i = free_.back();
      free_.pop_back();
      return StagingBuffer(shared_from_this(), i, slab(i), slab_bytes_);
    }
    ++misses_;
  }
  return StagingBuffer(size);
}

void StagingPool::Return(int slab) {
  std::lock_guard<std::mutex> lock(mu_);
  free_.push_back(slab);
}

void StagingPool::Leak(int /*slab*/) {
  std::lock_guard<std::mutex> lock(mu_);
  leaked_ = true;  // the slab is never returned, and the memory never freed
}

uint64_t StagingPool::misses() const {
  std::lock_guard<std::mutex> lock(mu_);
  return misses_;
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
  if (pool_) pool_->Return(slab_);
  pool_.reset();
  slab_ = -1;
  slab_data_ = nullptr;
  slab_size_ = 0;
}

void StagingBuffer::Leak() {
  if (pool_) {
    pool_->Leak(slab_);
    pool_.reset();
    slab_data_ = nullptr;
    slab_size_ = 0;
  } else {
    heap_.Leak();
  }
}

}  // namespace msa::io
