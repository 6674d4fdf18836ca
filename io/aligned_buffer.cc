#include "io/aligned_buffer.h"

#include <cstdlib>
#include <cstring>
#include <new>
#include <utility>

namespace msa::io {

AlignedBuffer::AlignedBuffer(size_t size) { Reserve(size); }

AlignedBuffer::~AlignedBuffer() { std::free(data_); }

AlignedBuffer::AlignedBuffer(AlignedBuffer&& other) noexcept
    : data_(std::exchange(other.data_, nullptr)), size_(std::exchange(other.size_, 0)) {}

AlignedBuffer& AlignedBuffer::operator=(AlignedBuffer&& other) noexcept {
  if (this != &other) {
    std::free(data_);
    data_ = std::exchange(other.data_, nullptr);
    size_ = std::exchange(other.size_, 0);
  }
  return *this;
}

void AlignedBuffer::Reserve(size_t size) {
  if (size <= size_ && data_ != nullptr) return;
  const size_t rounded = AlignUp(size == 0 ? 1 : size);
  void* p = std::aligned_alloc(kIoAlignment, rounded);
  if (p == nullptr) throw std::bad_alloc();  // out of memory is not a recoverable Status here
  std::memset(p, 0, rounded);
  std::free(data_);
  data_ = static_cast<uint8_t*>(p);
  size_ = rounded;
}

}  // namespace msa::io
