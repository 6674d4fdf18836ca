// io-internal: the system calls of io/ that touch files, with the fault
// injection seam (io/fault_injection.h). Each wrapper behaves exactly like
// the call it wraps (return value, errno); with no injector installed it is
// that call plus one relaxed atomic load.
//
// Only io/*.cc and store/catalog_file_system.cc (which routes RocksDB's
// file operations through the same seam) include this. The store and tools
// never call these: they see faults through the io layer's Status results.
#pragma once

#include <fcntl.h>
#include <sys/types.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <cstddef>
#include <cstdint>
#include <string>

#include "io/fault_injection.h"

namespace msa::io::sys {

// The one check on every call. A relaxed load suffices to see whether an
// injector is installed; the slow path fences (acquire) before using it.
inline FaultInjector* FaultInjectionActive() {
  return detail::g_fault_injector.load(std::memory_order_relaxed);
}

// Asks the installed injector about one operation (slow path only).
Fault Decide(FaultInjector* injector, const FileOperation& op);

// Slow paths (io/file_ops.cc).
int OpenInjected(FaultInjector* inj, const char* path, int flags, mode_t mode);
ssize_t PWriteInjected(FaultInjector* inj, int fd, const void* buf, size_t n, off_t offset,
                       const std::string& path);
ssize_t WriteInjected(FaultInjector* inj, int fd, const void* buf, size_t n, uint64_t offset,
                      const std::string& path);
int SyncInjected(FaultInjector* inj, int fd, bool data_only, const std::string& path);
int FAllocateInjected(FaultInjector* inj, int fd, int mode, off_t offset, off_t len,
                      const std::string& path);
int FTruncateInjected(FaultInjector* inj, int fd, off_t length, const std::string& path);
int RenameInjected(FaultInjector* inj, const char* from, const char* to);
ssize_t PReadInjected(FaultInjector* inj, int fd, void* buf, size_t n, off_t offset,
                      const std::string* path);
// io_uring: the result to act on for a read completion whose kernel result
// was `res` (the bytes landed in dest), and 0 or -errno for a submission
// about to be made (-errno: make none, report that).
int UringCompletionInjected(FaultInjector* inj, int fd, uint64_t offset, size_t length,
                            uint8_t* dest, int res);
int UringSubmitInjected(FaultInjector* inj);

inline int Open(const char* path, int flags, mode_t mode = 0) {
  if (FaultInjector* inj = FaultInjectionActive(); inj != nullptr) [[unlikely]] {
    return OpenInjected(inj, path, flags, mode);
  }
  return ::open(path, flags, mode);
}

inline ssize_t PWrite(int fd, const void* buf, size_t n, off_t offset, const std::string& path) {
  if (FaultInjector* inj = FaultInjectionActive(); inj != nullptr) [[unlikely]] {
    return PWriteInjected(inj, fd, buf, n, offset, path);
  }
  return ::pwrite(fd, buf, n, offset);
}

// write(2) at the file position; `offset` (where that position is) is only
// for the injector's view.
inline ssize_t Write(int fd, const void* buf, size_t n, uint64_t offset, const std::string& path) {
  if (FaultInjector* inj = FaultInjectionActive(); inj != nullptr) [[unlikely]] {
    return WriteInjected(inj, fd, buf, n, offset, path);
  }
  return ::write(fd, buf, n);
}

inline int FDataSync(int fd, const std::string& path) {
  if (FaultInjector* inj = FaultInjectionActive(); inj != nullptr) [[unlikely]] {
    return SyncInjected(inj, fd, /*data_only=*/true, path);
  }
  return ::fdatasync(fd);
}

inline int FSync(int fd, const std::string& path) {
  if (FaultInjector* inj = FaultInjectionActive(); inj != nullptr) [[unlikely]] {
    return SyncInjected(inj, fd, /*data_only=*/false, path);
  }
  return ::fsync(fd);
}

inline int FAllocate(int fd, int mode, off_t offset, off_t len, const std::string& path) {
  if (FaultInjector* inj = FaultInjectionActive(); inj != nullptr) [[unlikely]] {
    return FAllocateInjected(inj, fd, mode, offset, len, path);
  }
  return ::fallocate(fd, mode, offset, len);
}

inline int FTruncate(int fd, off_t length, const std::string& path) {
  if (FaultInjector* inj = FaultInjectionActive(); inj != nullptr) [[unlikely]] {
    return FTruncateInjected(inj, fd, length, path);
  }
  return ::ftruncate(fd, length);
}

inline int Rename(const char* from, const char* to) {
  if (FaultInjector* inj = FaultInjectionActive(); inj != nullptr) [[unlikely]] {
    return RenameInjected(inj, from, to);
  }
  return ::rename(from, to);
}

// path may be null (then resolved from fd when an injector asks).
inline ssize_t PRead(int fd, void* buf, size_t n, off_t offset, const std::string* path = nullptr) {
  if (FaultInjector* inj = FaultInjectionActive(); inj != nullptr) [[unlikely]] {
    return PReadInjected(inj, fd, buf, n, offset, path);
  }
  return ::pread(fd, buf, n, offset);
}

// The file behind a descriptor (readlink of /proc/self/fd/N), for messages
// and the injector; "fd N" where that is unavailable.
std::string PathOfFd(int fd);

}  // namespace msa::io::sys
