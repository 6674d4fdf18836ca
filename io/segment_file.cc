#include "io/segment_file.h"

#include <fcntl.h>
#include <linux/falloc.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <vector>

#include "io/aligned_buffer.h"
#include "io/file_ops.h"

namespace msa::io {

namespace {
std::string DirName(const std::string& path) {
  const auto slash = path.find_last_of('/');
  if (slash == std::string::npos) return ".";
  if (slash == 0) return "/";
  return path.substr(0, slash);
}

Status WriteFully(int fd, const uint8_t* data, size_t size, uint64_t offset, const std::string& path) {
  while (size > 0) {
    const ssize_t n = sys::PWrite(fd, data, size, static_cast<off_t>(offset), path);
    if (n < 0) {
      const int err = errno;  // before anything that may allocate
      if (err == EINTR) continue;
      return Status::FromErrno("write " + path + " at offset " + std::to_string(offset), err);
    }
    if (n == 0) {  // no progress and no error: would loop forever
      return Status::IOError("write " + path + " at offset " + std::to_string(offset) +
                             ": wrote nothing");
    }
    data += n;
    size -= static_cast<size_t>(n);
    offset += static_cast<uint64_t>(n);
  }
  return Status::OK();
}
}  // namespace

Result<std::unique_ptr<SegmentWriter>> SegmentWriter::Open(const std::string& path,
                                                           uint64_t committed_length,
                                                           uint64_t preallocate_bytes) {
  if (committed_length % kIoAlignment != 0) {
    return Status::Corruption("segment " + path + ": committed length " +
                              std::to_string(committed_length) + " is not 4096-aligned");
  }
  const bool existed = ::access(path.c_str(), F_OK) == 0;
  const int fd = sys::Open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (fd < 0) {
    const int err = errno;
    return Status::FromErrno("open segment " + path, err);
  }
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    const int err = errno;
    ::close(fd);
    return Status::FromErrno("stat segment " + path, err);
  }
  const uint64_t size = static_cast<uint64_t>(st.st_size);
  if (size < committed_length) {
    ::close(fd);
    return Status::Corruption("segment " + path + " holds " + std::to_string(size) +
                              " bytes but " + std::to_string(committed_length) +
                              " were committed: committed data is missing");
  }
  if (size > committed_length) {
    // The tail of an append that crashed before its commit: invisible, drop it.
    if (sys::FTruncate(fd, static_cast<off_t>(committed_length), path) != 0) {
      const int err = errno;
      ::close(fd);
      return Status::FromErrno("truncate uncommitted tail of segment " + path, err);
    }
    if (sys::FDataSync(fd, path) != 0) {
      const int err = errno;
      ::close(fd);
      return Status::FromErrno("fdatasync segment " + path + " after truncating its uncommitted tail", err);
    }
  }
  if (preallocate_bytes > committed_length) {
    // Best effort: EOPNOTSUPP (tmpfs, some network file systems) just means
    // appends allocate as they go.
    (void)sys::FAllocate(fd, FALLOC_FL_KEEP_SIZE, 0, static_cast<off_t>(preallocate_bytes), path);
  }
  if (!existed) {
    Status st_dir = SyncDirectory(DirName(path));
    if (!st_dir.ok()) {
      ::close(fd);
      return st_dir;
    }
  }
  // A second descriptor for AppendPadded's large writes, bypassing the page
  // cache: a buffered write costs a copy into the cache and its writeback
  // (on a 2-core machine, more CPU than encoding the records), and the
  // commit's fdatasync then waits for all of it. EINVAL: the file system
  // has no O_DIRECT (tmpfs); its writes go through the cache.
  int direct_fd = sys::Open(path.c_str(), O_WRONLY | O_DIRECT | O_CLOEXEC);
  if (direct_fd < 0) {
    const int err = errno;
    if (err != EINVAL) {
      ::close(fd);
      return Status::FromErrno("open segment " + path + " for direct writes", err);
    }
  }
  auto writer = std::unique_ptr<SegmentWriter>(new SegmentWriter(path, fd, committed_length));
  writer->direct_fd_ = direct_fd;
  return writer;
}

SegmentWriter::~SegmentWriter() {
  ::close(fd_);
  if (direct_fd_ >= 0) ::close(direct_fd_);
}

Result<uint64_t> SegmentWriter::Append(const void* data, size_t size) {
  const uint64_t offset = length_;
  const uint64_t padded = AlignUp(size);
  MSA_RETURN_IF_ERROR(WriteFully(fd_, static_cast<const uint8_t*>(data), size, offset, path_));
  if (padded > size) {
    static const std::vector<uint8_t> zeros(kIoAlignment, 0);
    MSA_RETURN_IF_ERROR(WriteFully(fd_, zeros.data(), padded - size, offset + size, path_));
  }
  length_ = offset + padded;
  return offset;
}

Result<uint64_t> SegmentWriter::AppendPadded(const void* data, size_t size) {
  if (size % kIoAlignment != 0) {
    return Status::InvalidArgument("segment " + path_ + ": padded append of " + std::to_string(size) +
                                   " bytes is not a multiple of 4096");
  }
  const uint64_t offset = length_;
  const auto* p = static_cast<const uint8_t*>(data);
  // Direct writes while buffer, offset and length are aligned (always, but
  // for a short write that stopped mid-block: its rest goes through the
  // page cache, which reads the block back from the disk first), in pieces
  // of 8 MiB so that one call does not hold the device queue for long. A
  // direct write refused with EINVAL (alignment) is done buffered, and so
  // is every later one of this writer.
  constexpr size_t kDirectPiece = 8u << 20;
  size_t done = 0;
  while (done < size) {
    const bool aligned = direct_fd_ >= 0 && reinterpret_cast<uintptr_t>(p + done) % kIoAlignment == 0 &&
                         (offset + done) % kIoAlignment == 0;
    const size_t piece = aligned ? std::min(kDirectPiece, size - done) : size - done;
    const ssize_t n = sys::PWrite(aligned ? direct_fd_ : fd_, p + done, piece, static_cast<off_t>(offset + done), path_);
    if (n < 0) {
      const int err = errno;
      if (err == EINTR) continue;
      if (err == EINVAL && aligned) {
        // The device wants a larger alignment than 4096 (or the file system
        // changed its mind): this writer goes through the page cache.
        ::close(direct_fd_);
        direct_fd_ = -1;
        continue;
      }
      return Status::FromErrno("write " + path_ + " at offset " + std::to_string(offset + done), err);
    }
    if (n == 0) {
      return Status::IOError("write " + path_ + " at offset " + std::to_string(offset + done) + ": wrote nothing");
    }
    done += static_cast<size_t>(n);
  }
  length_ = offset + size;
  return offset;
}

void SegmentWriter::StartWriteback() {
  // Not a durability point, so not a fault-injection seam (io/file_ops.h):
  // a failure here only means the later fdatasync writes it all.
  if (length_ > writeback_from_) {
    (void)::sync_file_range(fd_, static_cast<off_t>(writeback_from_),
                            static_cast<off_t>(length_ - writeback_from_), SYNC_FILE_RANGE_WRITE);
  }
  writeback_from_ = length_;
}

Status SegmentWriter::Sync() {
  if (sys::FDataSync(fd_, path_) != 0) {
    const int err = errno;
    return Status::FromErrno("fdatasync " + path_, err);
  }
  return Status::OK();
}

Status SyncDirectory(const std::string& dir) {
  const int fd = sys::Open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) {
    const int err = errno;
    return Status::FromErrno("open directory " + dir, err);
  }
  const int rc = sys::FSync(fd, dir);
  const int err = errno;
  ::close(fd);
  if (rc != 0) return Status::FromErrno("fsync directory " + dir, err);
  return Status::OK();
}

Result<int> OpenSegmentForRead(const std::string& path, bool* direct) {
  int fd = sys::Open(path.c_str(), O_RDONLY | O_DIRECT | O_CLOEXEC);
  *direct = fd >= 0;
  if (fd < 0 && errno == EINVAL) fd = sys::Open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    const int err = errno;
    return Status::FromErrno("open segment " + path, err);
  }
  return fd;
}

}  // namespace msa::io
