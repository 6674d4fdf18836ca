#include "store/table_memory.h"

#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstring>
#include <new>
#include <utility>

#include "io/atomic_file.h"

namespace msa {

namespace {

size_t RoundUp(size_t n, size_t to) { return (n + to - 1) / to * to; }

}  // namespace

TableMemory::TableMemory(size_t bytes) {
  const size_t page = static_cast<size_t>(::sysconf(_SC_PAGESIZE));
  if (bytes < kHugePage) {
    bytes_ = RoundUp(bytes == 0 ? 1 : bytes, page);
    void* p = ::mmap(nullptr, bytes_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) throw std::bad_alloc();
    data_ = static_cast<uint8_t*>(p);
    return;
  }
  // mmap aligns to a page only: map one huge page more, then unmap the
  // parts before the first 2 MiB boundary and after the region.
  bytes_ = RoundUp(bytes, kHugePage);
  const size_t mapped = bytes_ + kHugePage;
  void* p = ::mmap(nullptr, mapped, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) throw std::bad_alloc();
  const auto start = reinterpret_cast<uintptr_t>(p);
  const uintptr_t aligned = RoundUp(start, kHugePage);
  if (aligned > start) ::munmap(p, aligned - start);
  const uintptr_t end = aligned + bytes_;
  if (start + mapped > end) ::munmap(reinterpret_cast<void*>(end), start + mapped - end);
  data_ = reinterpret_cast<uint8_t*>(aligned);
  // A hint: EINVAL where the kernel has no THP leaves ordinary pages.
  (void)::madvise(data_, bytes_, MADV_HUGEPAGE);
}

Result<TableMemory> TableMemory::MapFile(const std::string& path, size_t bytes,
                                         const std::function<void(const uint8_t* data, size_t n)>& read_through) {
  uint64_t actual = 0;
  MSA_ASSIGN_OR_RETURN(const int fd, io::OpenForReading(path, &actual));
  // Everything below on this one descriptor: the bytes checked are the
  // bytes mapped, whatever is renamed over the path meanwhile.
  auto fail = [fd](Status s) {
    ::close(fd);
    return s;
  };
  if (actual != bytes) {
    return fail(Status::Corruption(path + (actual < bytes ? " is truncated: " : " is too long: ") +
                                   std::to_string(actual) + " bytes, expected " + std::to_string(bytes)));
  }
  if (bytes == 0) return fail(Status::InvalidArgument("map " + path + ": the file is empty"));
  if (Status read = io::ReadThrough(fd, path, bytes, read_through); !read.ok()) return fail(read);
  void* p = ::mmap(nullptr, bytes, PROT_READ, MAP_SHARED | MAP_POPULATE, fd, 0);
  if (p == MAP_FAILED) {
    return fail(Status::NotSupported("mmap " + path + ": " + std::strerror(errno)));
  }
  ::close(fd);  // the mapping keeps the file
  return TableMemory(static_cast<uint8_t*>(p), bytes);
}

TableMemory::~TableMemory() {
  if (data_ != nullptr) ::munmap(data_, bytes_);
}

TableMemory::TableMemory(TableMemory&& other) noexcept
    : data_(std::exchange(other.data_, nullptr)), bytes_(std::exchange(other.bytes_, 0)) {}

TableMemory& TableMemory::operator=(TableMemory&& other) noexcept {
  if (this != &other) {
    if (data_ != nullptr) ::munmap(data_, bytes_);
    data_ = std::exchange(other.data_, nullptr);
    bytes_ = std::exchange(other.bytes_, 0);
  }
  return *this;
}

}  // namespace msa
