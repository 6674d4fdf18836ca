// A heap buffer aligned for O_DIRECT I/O.
//
// O_DIRECT requires the user buffer, the file offset and the length to be
// multiples of the logical block size; 4096 covers every NVMe and file system
// we target, so every buffer handed to the block reader comes from here.
#pragma once

#include <cstddef>
#include <cstdint>

namespace msa::io {

inline constexpr size_t kIoAlignment = 4096;

inline constexpr uint64_t AlignUp(uint64_t n, uint64_t a = kIoAlignment) {
  return (n + a - 1) / a * a;
}

class AlignedBuffer {
 public:
  AlignedBuffer() = default;
  // size is rounded up to a multiple of kIoAlignment; contents zeroed.
  explicit AlignedBuffer(size_t size);
  ~AlignedBuffer();
  AlignedBuffer(AlignedBuffer&& other) noexcept;
  AlignedBuffer& operator=(AlignedBuffer&& other) noexcept;
  AlignedBuffer(const AlignedBuffer&) = delete;
  AlignedBuffer& operator=(const AlignedBuffer&) = delete;

  uint8_t* data() { return data_; }
  const uint8_t* data() const { return data_; }
  size_t size() const { return size_; }
  // Grows (never shrinks) to at least `size`; contents are not preserved.
  void Reserve(size_t size);
  // Gives up the memory without freeing it: for a buffer the kernel may
  // still write into (see BlockReader::abandoned).
  void Leak() {
    data_ = nullptr;
    size_ = 0;
  }

 private:
  uint8_t* data_ = nullptr;
  size_t size_ = 0;
};

}  // namespace msa::io
