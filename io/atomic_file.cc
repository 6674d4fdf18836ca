#include "io/atomic_file.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>

#include "io/file_ops.h"
#include "io/segment_file.h"

namespace msa::io {

namespace {
std::string DirOf(const std::string& path) {
  const auto slash = path.find_last_of('/');
  return slash == std::string::npos ? "." : (slash == 0 ? "/" : path.substr(0, slash));
}

// Closes and removes the temporary file after a failure; returns `failure`.
Status Discard(int fd, const std::string& tmp, Status failure) {
  if (fd >= 0) ::close(fd);
  ::unlink(tmp.c_str());
  return failure;
}
}  // namespace

Status WriteFileAtomically(const std::string& path, const void* data, size_t size) {
  const std::string tmp = path + ".tmp";
  const int fd = sys::Open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return Status::FromErrno("create " + tmp, errno);
  const auto* p = static_cast<const uint8_t*>(data);
  size_t left = size;
  while (left > 0) {
    const ssize_t n = sys::Write(fd, p, left, size - left, tmp);
    if (n < 0) {
      const int err = errno;
      if (err == EINTR) continue;
      return Discard(fd, tmp, Status::FromErrno("write " + tmp, err));
    }
    if (n == 0) return Discard(fd, tmp, Status::IOError("write " + tmp + ": wrote nothing"));
    p += n;
    left -= static_cast<size_t>(n);
  }
  if (sys::FDataSync(fd, tmp) != 0) {
    const int err = errno;
    return Discard(fd, tmp, Status::FromErrno("fdatasync " + tmp, err));
  }
  if (::close(fd) != 0) {
    const int err = errno;
    return Discard(-1, tmp, Status::FromErrno("close " + tmp, err));
  }
  if (sys::Rename(tmp.c_str(), path.c_str()) != 0) {
    const int err = errno;
    return Discard(-1, tmp, Status::FromErrno("rename " + tmp + " to " + path, err));
  }
  return SyncDirectory(DirOf(path));
}

Result<int> OpenForReading(const std::string& path, uint64_t* size) {
  const int fd = sys::Open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    if (errno == ENOENT) return Status::NotFound(path + " does not exist");
    return Status::FromErrno("open " + path, errno);
  }
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    const int err = errno;
    ::close(fd);
    return Status::FromErrno("stat " + path, err);
  }
  *size = static_cast<uint64_t>(st.st_size);
  return fd;
}

Result<std::vector<uint8_t>> ReadWholeFile(const std::string& path) {
  uint64_t size = 0;
  MSA_ASSIGN_OR_RETURN(const int fd, OpenForReading(path, &size));
  std::vector<uint8_t> data(static_cast<size_t>(size));
  size_t got = 0;
  while (got < data.size()) {
    const ssize_t n = sys::PRead(fd, data.data() + got, data.size() - got, static_cast<off_t>(got), &path);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      const int err = n < 0 ? errno : EIO;
      ::close(fd);
      return n < 0 ? Status::FromErrno("read " + path, err)
                   : Status::IOError("read " + path + ": end of file after " + std::to_string(got) +
                                     " of " + std::to_string(data.size()) + " bytes");
    }
    got += static_cast<size_t>(n);
  }
  ::close(fd);
  return data;
}

Status ReadThrough(int fd, const std::string& path, uint64_t size,
                   const std::function<void(const uint8_t* data, size_t n)>& part) {
  constexpr size_t kPart = size_t{4} << 20;
  std::vector<uint8_t> buffer(static_cast<size_t>(std::min<uint64_t>(size, kPart)));
  for (uint64_t at = 0; at < size;) {
    const size_t n = static_cast<size_t>(std::min<uint64_t>(size - at, kPart));
    const ssize_t got = sys::PRead(fd, buffer.data(), n, static_cast<off_t>(at), &path);
    if (got < 0 && errno == EINTR) continue;
    if (got <= 0) {
      return got < 0 ? Status::FromErrno("read " + path, errno)
                     : Status::IOError("read " + path + ": end of file after " + std::to_string(at) + " of " +
                                       std::to_string(size) + " bytes");
    }
    part(buffer.data(), static_cast<size_t>(got));
    at += static_cast<uint64_t>(got);
  }
  return Status::OK();
}

}  // namespace msa::io
