#include "io/staging_pool.h"

#include <algorithm>
#include <cstdlib>
#include <new>
#include <utility>

namespace msa::io {

namespace {
constexpr size_t kChunksPerRegionId = 65536;  // first_chunk = region * this + chunk
}

std::shared_ptr<StagingPool> StagingPool::Make(size_t max_bytes, RegisterFn register_region) {
  return std::shared_ptr<StagingPool>(new StagingPool(max_bytes, std::move(register_region)));
}

StagingPool::StagingPool(size_t max_bytes, RegisterFn register_region)
    : max_bytes_(max_bytes), register_(std::move(register_region)) {}

StagingPool::~StagingPool() {
  std::lock_guard<std::mutex> lock(mu_);
  if (leaked_) return;
  for (int i = 0; i < published_.load(); ++i) std::free(regions_[i].base);
}

StagingBuffer StagingPool::LendRun(int region, size_t first, size_t need) {
  Region& r = regions_[region];
  for (size_t c = first; c < first + need; ++c) r.used[c] = true;
  return StagingBuffer(shared_from_this(), static_cast<int>(region * kChunksPerRegionId + first),
                       r.base + first * kChunkBytes, need * kChunkBytes);
}

StagingBuffer StagingPool::Acquire(size_t size) {
  const size_t need = std::max<size_t>(1, (size + kChunkBytes - 1) / kChunkBytes);
  std::lock_guard<std::mutex> lock(mu_);
  const int n = published_.load(std::memory_order_relaxed);
  for (int i = 0; i < n; ++i) {
    Region& r = regions_[i];
    size_t run = 0;
    for (size_t c = 0; c < r.chunks; ++c) {
      run = r.used[c] ? 0 : run + 1;
      if (run == need) return LendRun(i, c + 1 - need, need);
    }
  }
  // No room: a new region, if the bound and the ring allow.
  const size_t bytes = std::max(kMinRegionBytes, need * kChunkBytes);
  if (refused_ || n == kMaxRegions || total_bytes_ + bytes > max_bytes_) return StagingBuffer(size);
  void* p = std::aligned_alloc(kIoAlignment, bytes);
  if (p == nullptr) return StagingBuffer(size);
  if (!register_(n, static_cast<uint8_t*>(p), bytes)) {
    std::free(p);
    refused_ = true;
    return StagingBuffer(size);
  }
  Region& r = regions_[n];
  r.base = static_cast<uint8_t*>(p);
  r.chunks = bytes / kChunkBytes;
  r.used.assign(r.chunks, false);
  total_bytes_ += bytes;
  published_.store(n + 1, std::memory_order_release);
  return LendRun(n, 0, need);
}

void StagingPool::Return(int first_chunk, size_t bytes) {
  std::lock_guard<std::mutex> lock(mu_);
  Region& r = regions_[static_cast<size_t>(first_chunk) / kChunksPerRegionId];
  const size_t first = static_cast<size_t>(first_chunk) % kChunksPerRegionId;
  for (size_t c = first; c < first + bytes / kChunkBytes; ++c) r.used[c] = false;
}

void StagingPool::Leak() {
  std::lock_guard<std::mutex> lock(mu_);
  leaked_ = true;  // the lease's chunks are never returned, and no region is freed
}

size_t StagingPool::registered_bytes() const {
  std::lock_guard<std::mutex> lock(mu_);
  return total_bytes_;
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
