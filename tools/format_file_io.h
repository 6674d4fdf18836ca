// Plain POSIX file I/O for the tensor file formats (npy_file.cc,
// safetensors_file.cc): open a regular file for reading, read exactly n bytes
// at an offset, write a whole file from a few byte ranges. Internal to
// msa_formats; header-only so the formats library stays two translation units
// plus tensor.cc.
//
// Why not std::ifstream: its errors are a bare failbit (no errno, no "file
// shrank under us"), and a multi-GB tensor should arrive by pread() straight
// into its final buffer. The store's io/ readers are built for aligned block
// I/O against segment files, not for this.
//
// Every Status message starts with the path.
#pragma once

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "msa/status.h"

namespace msa::formats::internal {

// A read-only file descriptor. Move-only; closes on destruction. ReadAt is
// safe from several threads (pread has no shared offset).
class ReadOnlyFile {
 public:
  // NotFound when the path does not exist; InvalidArgument when it is not a
  // regular file (a directory, a fifo); IOError for any other refusal.
  static Result<ReadOnlyFile> Open(const std::string& path) {
    int fd;
    do {
      fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    } while (fd < 0 && errno == EINTR);
    if (fd < 0) {
      const int err = errno;
      if (err == ENOENT) return Status::NotFound(path + ": no such file");
      return Status::FromErrno(path + ": open", err);
    }
    ReadOnlyFile file(fd, path);
    struct stat st;
    if (::fstat(fd, &st) != 0) return Status::FromErrno(path + ": fstat", errno);
    if (!S_ISREG(st.st_mode)) return Status::InvalidArgument(path + ": not a regular file");
    file.size_ = static_cast<uint64_t>(st.st_size);
    return file;
  }

  ReadOnlyFile(ReadOnlyFile&& other) noexcept
      : fd_(std::exchange(other.fd_, -1)), size_(other.size_), path_(std::move(other.path_)) {}
  ReadOnlyFile& operator=(ReadOnlyFile&& other) noexcept {
    if (this != &other) {
      Close();
      fd_ = std::exchange(other.fd_, -1);
      size_ = other.size_;
      path_ = std::move(other.path_);
    }
    return *this;
  }
  ReadOnlyFile(const ReadOnlyFile&) = delete;
  ReadOnlyFile& operator=(const ReadOnlyFile&) = delete;
  ~ReadOnlyFile() { Close(); }

  // Size at Open time, in bytes.
  uint64_t size() const { return size_; }
  const std::string& path() const { return path_; }

  // Reads exactly n bytes at `offset` into dst (which must hold n bytes).
  // Continues short reads; Corruption if the file ends first (it shrank
  // after Open: callers check ranges against size() before reading).
  Status ReadAt(uint64_t offset, void* dst, size_t n) const {
    auto* out = static_cast<uint8_t*>(dst);
    size_t done = 0;
    while (done < n) {
      // Linux moves at most ~2 GiB per call; the loop takes care of the rest.
      const ssize_t got = ::pread(fd_, out + done, n - done, static_cast<off_t>(offset + done));
      if (got < 0) {
        if (errno == EINTR) continue;
        return Status::FromErrno(path_ + ": read", errno);
      }
      if (got == 0) {
        return Status::Corruption(path_ + ": file ended at byte " + std::to_string(offset + done) +
                                  " while reading (did it change while being read?)");
      }
      done += static_cast<size_t>(got);
    }
    return Status::OK();
  }

 private:
  ReadOnlyFile(int fd, std::string path) : fd_(fd), path_(std::move(path)) {}
  void Close() {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
  }

  int fd_ = -1;
  uint64_t size_ = 0;
  std::string path_;
};

// One contiguous range of bytes to write.
struct ByteRange {
  const void* data;
  size_t size;
};

// Creates (or truncates) `path` and writes the ranges one after another. On
// any failure the partial file is removed so a reader never sees half a file
// that looks plausible. No fsync: these are tool and test outputs, not store
// files.
inline Status WriteWholeFile(const std::string& path, const std::vector<ByteRange>& ranges) {
  int fd;
  do {
    fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  } while (fd < 0 && errno == EINTR);
  if (fd < 0) return Status::FromErrno(path + ": create", errno);
  Status status;
  for (const ByteRange& range : ranges) {
    const auto* p = static_cast<const uint8_t*>(range.data);
    size_t left = range.size;
    while (left > 0 && status.ok()) {
      const ssize_t put = ::write(fd, p, left);
      if (put < 0) {
        if (errno != EINTR) status = Status::FromErrno(path + ": write", errno);
        continue;
      }
      if (put == 0) {  // not expected of a regular file; never spin on it
        status = Status::IOError(path + ": write made no progress");
        break;
      }
      p += put;
      left -= static_cast<size_t>(put);
    }
    if (!status.ok()) break;
  }
  if (::close(fd) != 0 && status.ok()) status = Status::FromErrno(path + ": close", errno);
  if (!status.ok()) ::unlink(path.c_str());
  return status;
}

}  // namespace msa::formats::internal
