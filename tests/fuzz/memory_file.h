// A file whose contents are a fuzz input, for readers that take a path.
//
// The .npy and safetensors readers read files by path (open, fstat, pread);
// fuzzing them through that path exercises exactly the production code,
// descriptor handling and range checks included, rather than a separate
// in-memory entry point that could drift from it. The file is a memfd
// (memory only, no disk I/O), opened by the readers as /proc/self/fd/N.
//
// Thread safety: one MemoryFile per thread.
#pragma once

#include <sys/mman.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>

namespace msa::fuzz {

class MemoryFile {
 public:
  explicit MemoryFile(const char* name) : fd_(::memfd_create(name, MFD_CLOEXEC)) {
    if (fd_ < 0) {
      std::perror("memfd_create");
      std::abort();
    }
    path_ = "/proc/self/fd/" + std::to_string(fd_);
  }
  ~MemoryFile() { ::close(fd_); }
  MemoryFile(const MemoryFile&) = delete;
  MemoryFile& operator=(const MemoryFile&) = delete;

  // Replaces the contents with data[0, size); returns the path to read.
  const std::string& Set(const uint8_t* data, size_t size) {
    if (::ftruncate(fd_, 0) != 0) std::abort();
    size_t done = 0;
    while (done < size) {
      const ssize_t put = ::pwrite(fd_, data + done, size - done, static_cast<off_t>(done));
      if (put <= 0) std::abort();
      done += static_cast<size_t>(put);
    }
    return path_;
  }

 private:
  int fd_;
  std::string path_;
};

}  // namespace msa::fuzz
