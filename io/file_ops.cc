// Slow paths of io/file_ops.h: taken only while an injector is installed.
#include "io/file_ops.h"

#include <limits.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>

namespace msa::io::sys {

namespace {

// The bytes a short transfer of n moves: at most f.bytes, at least 1; 0
// when n is no more than that (the call then runs whole).
size_t ShortLength(const Fault& f, size_t n) {
  const size_t s = std::max<size_t>(f.bytes, 1);
  return s < n ? s : 0;
}

void Flip(const Fault& f, uint8_t* data, size_t n) { data[std::min(f.bytes, n - 1)] ^= 0x5a; }

int Fail(const Fault& f) {
  errno = f.error;
  return -1;
}

}  // namespace

std::string PathOfFd(int fd) {
  char link[64];
  std::snprintf(link, sizeof(link), "/proc/self/fd/%d", fd);
  char target[PATH_MAX];
  const ssize_t n = ::readlink(link, target, sizeof(target) - 1);
  if (n <= 0) return "fd " + std::to_string(fd);
  return std::string(target, static_cast<size_t>(n));
}

Fault Decide(FaultInjector* injector, const FileOperation& op) {
  // Pairs with SetFaultInjector's exchange: the injector's construction is
  // visible before it is used.
  std::atomic_thread_fence(std::memory_order_acquire);
  return injector->Decide(op);
}

int OpenInjected(FaultInjector* inj, const char* path, int flags, mode_t mode) {
  FileOperation op;
  op.op = FileOp::kOpen;
  op.path = path;
  const Fault f = Decide(inj, op);
  if (f.kind == Fault::Kind::kError) return Fail(f);
  return ::open(path, flags, mode);
}

ssize_t PWriteInjected(FaultInjector* inj, int fd, const void* buf, size_t n, off_t offset,
                       const std::string& path) {
  FileOperation op;
  op.op = FileOp::kWrite;
  op.path = path;
  op.fd = fd;
  op.offset = static_cast<uint64_t>(offset);
  op.length = n;
  const Fault f = Decide(inj, op);
  if (f.kind == Fault::Kind::kError) return Fail(f);
  if (f.kind == Fault::Kind::kShort && ShortLength(f, n) > 0) n = ShortLength(f, n);
  return ::pwrite(fd, buf, n, offset);
}

ssize_t WriteInjected(FaultInjector* inj, int fd, const void* buf, size_t n, uint64_t offset,
                      const std::string& path) {
  FileOperation op;
  op.op = FileOp::kWrite;
  op.path = path;
  op.fd = fd;
  op.offset = offset;
  op.length = n;
  const Fault f = Decide(inj, op);
  if (f.kind == Fault::Kind::kError) return Fail(f);
  if (f.kind == Fault::Kind::kShort && ShortLength(f, n) > 0) n = ShortLength(f, n);
  return ::write(fd, buf, n);
}

int SyncInjected(FaultInjector* inj, int fd, bool data_only, const std::string& path) {
  FileOperation op;
  op.op = FileOp::kSync;
  op.path = path;
  op.fd = fd;
  const Fault f = Decide(inj, op);
  if (f.kind == Fault::Kind::kError) return Fail(f);
  return data_only ? ::fdatasync(fd) : ::fsync(fd);
}

int FAllocateInjected(FaultInjector* inj, int fd, int mode, off_t offset, off_t len,
                      const std::string& path) {
  FileOperation op;
  op.op = FileOp::kFallocate;
  op.path = path;
  op.fd = fd;
  op.offset = static_cast<uint64_t>(offset);
  op.length = static_cast<size_t>(len);
  const Fault f = Decide(inj, op);
  if (f.kind == Fault::Kind::kError) return Fail(f);
  return ::fallocate(fd, mode, offset, len);
}

int FTruncateInjected(FaultInjector* inj, int fd, off_t length, const std::string& path) {
  FileOperation op;
  op.op = FileOp::kTruncate;
  op.path = path;
  op.fd = fd;
  op.offset = static_cast<uint64_t>(length);
  const Fault f = Decide(inj, op);
  if (f.kind == Fault::Kind::kError) return Fail(f);
  return ::ftruncate(fd, length);
}

int RenameInjected(FaultInjector* inj, const char* from, const char* to) {
  FileOperation op;
  op.op = FileOp::kRename;
  op.path = from;
  op.target = to;
  const Fault f = Decide(inj, op);
  if (f.kind == Fault::Kind::kError) return Fail(f);
  return ::rename(from, to);
}

ssize_t PReadInjected(FaultInjector* inj, int fd, void* buf, size_t n, off_t offset,
                      const std::string* path) {
  const std::string resolved = path != nullptr ? std::string() : PathOfFd(fd);
  FileOperation op;
  op.op = FileOp::kRead;
  op.path = path != nullptr ? *path : resolved;
  op.fd = fd;
  op.offset = static_cast<uint64_t>(offset);
  op.length = n;
  const Fault f = Decide(inj, op);
  switch (f.kind) {
    case Fault::Kind::kError: return Fail(f);
    case Fault::Kind::kEof: return 0;
    case Fault::Kind::kShort:
      if (ShortLength(f, n) > 0) n = ShortLength(f, n);
      break;
    default: break;
  }
  const ssize_t got = ::pread(fd, buf, n, offset);
  if (f.kind == Fault::Kind::kCorrupt && got > 0) Flip(f, static_cast<uint8_t*>(buf), static_cast<size_t>(got));
  return got;
}

int UringCompletionInjected(FaultInjector* inj, int fd, uint64_t offset, size_t length,
                            uint8_t* dest, int res) {
  if (res < 0) return res;  // a real error stays what it is
  const std::string path = PathOfFd(fd);
  FileOperation op;
  op.op = FileOp::kRead;
  op.path = path;
  op.fd = fd;
  op.offset = offset;
  op.length = length;
  op.io_uring = true;
  const Fault f = Decide(inj, op);
  switch (f.kind) {
    case Fault::Kind::kError: return -f.error;
    case Fault::Kind::kEof: return 0;
    case Fault::Kind::kShort: {
      // The kernel read `res` bytes; report fewer, so the reader continues
      // (and reads the rest again) from there.
      const size_t s = ShortLength(f, static_cast<size_t>(res));
      return s > 0 ? static_cast<int>(s) : res;
    }
    case Fault::Kind::kCorrupt:
      if (res > 0) Flip(f, dest, static_cast<size_t>(res));
      return res;
    default: return res;
  }
}

int UringSubmitInjected(FaultInjector* inj) {
  FileOperation op;
  op.op = FileOp::kSubmit;
  op.io_uring = true;
  const Fault f = Decide(inj, op);
  return f.kind == Fault::Kind::kError ? -f.error : 0;
}

}  // namespace msa::io::sys
