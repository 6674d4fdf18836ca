#include "store/catalog_file_system.h"

#include <rocksdb/env.h>
#include <rocksdb/file_system.h>

#include <cerrno>
#include <cstring>
#include <memory>
#include <string>
#include <string_view>
#include <utility>

#include "io/fault_injection.h"
#include "io/file_ops.h"

namespace msa {
namespace {

using io::Fault;
using io::FileOp;
using io::FileOperation;
using rocksdb::IODebugContext;
using rocksdb::IOOptions;
using rocksdb::IOStatus;
using rocksdb::Slice;

// What the injector says about one catalog operation; none when no
// injector is installed (the fast path: one relaxed load).
Fault Ask(FileOp op, std::string_view path, uint64_t offset = 0, size_t length = 0,
          std::string_view target = {}) {
  io::FaultInjector* inj = io::sys::FaultInjectionActive();
  if (inj == nullptr) [[likely]] return Fault::None();
  FileOperation o;
  o.op = op;
  o.path = path;
  o.offset = offset;
  o.length = length;
  o.catalog = true;
  o.target = target;
  return io::sys::Decide(inj, o);
}

// The error RocksDB sees for an injected errno, worded like the io layer's
// messages: the operation, the file, strerror.
IOStatus Failure(const char* what, std::string_view path, int err) {
  const std::string msg = std::string(what) + " " + std::string(path) + ": " + std::strerror(err);
  if (err == ENOSPC || err == EDQUOT) return IOStatus::NoSpace(msg);
  return IOStatus::IOError(msg);
}

// Applies a read fault to what the real read returned. Errors replace the
// read; a false end of file or a short read cut it; a flip changes one byte
// (copied into scratch first where the result points elsewhere).
IOStatus Distort(const Fault& f, const IOStatus& read, std::string_view path, Slice* result, char* scratch) {
  if (f.none() || !read.ok()) return read;
  switch (f.kind) {
    case Fault::Kind::kError:
      *result = Slice();
      return Failure("read", path, f.error);
    case Fault::Kind::kEof:
      *result = Slice(result->data(), 0);
      return read;
    case Fault::Kind::kShort:
      *result = Slice(result->data(), std::min(result->size(), std::max<size_t>(f.bytes, 1)));
      return read;
    case Fault::Kind::kCorrupt:
      if (result->size() > 0) {
        if (result->data() != scratch) {
          std::memmove(scratch, result->data(), result->size());
          *result = Slice(scratch, result->size());
        }
        scratch[std::min(f.bytes, result->size() - 1)] ^= 0x5a;
      }
      return read;
    case Fault::Kind::kNone: break;
  }
  return read;
}

class InjectedSequentialFile final : public rocksdb::FSSequentialFileOwnerWrapper {
 public:
  InjectedSequentialFile(std::unique_ptr<rocksdb::FSSequentialFile> t, std::string path)
      : FSSequentialFileOwnerWrapper(std::move(t)), path_(std::move(path)) {}

  IOStatus Read(size_t n, const IOOptions& options, Slice* result, char* scratch,
                IODebugContext* dbg) override {
    const Fault f = Ask(FileOp::kRead, path_, position_, n);
    if (f.kind == Fault::Kind::kError) return Failure("read", path_, f.error);
    IOStatus s = Distort(f, target()->Read(n, options, result, scratch, dbg), path_, result, scratch);
    if (s.ok()) position_ += result->size();
    return s;
  }
  IOStatus Skip(uint64_t n) override {
    IOStatus s = target()->Skip(n);
    if (s.ok()) position_ += n;
    return s;
  }
  IOStatus PositionedRead(uint64_t offset, size_t n, const IOOptions& options, Slice* result, char* scratch,
                          IODebugContext* dbg) override {
    const Fault f = Ask(FileOp::kRead, path_, offset, n);
    if (f.kind == Fault::Kind::kError) return Failure("read", path_, f.error);
    return Distort(f, target()->PositionedRead(offset, n, options, result, scratch, dbg), path_, result,
                   scratch);
  }

 private:
  const std::string path_;
  uint64_t position_ = 0;
};

class InjectedRandomAccessFile final : public rocksdb::FSRandomAccessFileOwnerWrapper {
 public:
  InjectedRandomAccessFile(std::unique_ptr<rocksdb::FSRandomAccessFile> t, std::string path)
      : FSRandomAccessFileOwnerWrapper(std::move(t)), path_(std::move(path)) {}

  IOStatus Read(uint64_t offset, size_t n, const IOOptions& options, Slice* result, char* scratch,
                IODebugContext* dbg) const override {
    const Fault f = Ask(FileOp::kRead, path_, offset, n);
    if (f.kind == Fault::Kind::kError) return Failure("read", path_, f.error);
    return Distort(f, target()->Read(offset, n, options, result, scratch, dbg), path_, result, scratch);
  }
  // One read at a time, so that each goes through Read's injection.
  IOStatus MultiRead(rocksdb::FSReadRequest* reqs, size_t num_reqs, const IOOptions& options,
                     IODebugContext* dbg) override {
    for (size_t i = 0; i < num_reqs; ++i) {
      reqs[i].status = Read(reqs[i].offset, reqs[i].len, options, &reqs[i].result, reqs[i].scratch, dbg);
    }
    return IOStatus::OK();
  }
  // Asynchronous reads would bypass Read; RocksDB falls back to it.
  IOStatus ReadAsync(rocksdb::FSReadRequest&, const IOOptions&,
                     std::function<void(const rocksdb::FSReadRequest&, void*)>, void*, void**,
                     rocksdb::IOHandleDeleter*, IODebugContext*) override {
    return IOStatus::NotSupported("catalog file system: no asynchronous reads");
  }

 private:
  const std::string path_;
};

class InjectedWritableFile final : public rocksdb::FSWritableFileOwnerWrapper {
 public:
  InjectedWritableFile(std::unique_ptr<rocksdb::FSWritableFile> t, std::string path, uint64_t size)
      : FSWritableFileOwnerWrapper(std::move(t)), path_(std::move(path)), size_(size) {}

  IOStatus Append(const Slice& data, const IOOptions& options, IODebugContext* dbg) override {
    if (IOStatus s = BeforeWrite(size_, data.size()); !s.ok()) return s;
    IOStatus s = target()->Append(data, options, dbg);
    if (s.ok()) size_ += data.size();
    return s;
  }
  IOStatus Append(const Slice& data, const IOOptions& options, const rocksdb::DataVerificationInfo& info,
                  IODebugContext* dbg) override {
    if (IOStatus s = BeforeWrite(size_, data.size()); !s.ok()) return s;
    IOStatus s = target()->Append(data, options, info, dbg);
    if (s.ok()) size_ += data.size();
    return s;
  }
  IOStatus PositionedAppend(const Slice& data, uint64_t offset, const IOOptions& options,
                            IODebugContext* dbg) override {
    if (IOStatus s = BeforeWrite(offset, data.size()); !s.ok()) return s;
    IOStatus s = target()->PositionedAppend(data, offset, options, dbg);
    if (s.ok()) size_ = std::max<uint64_t>(size_, offset + data.size());
    return s;
  }
  IOStatus PositionedAppend(const Slice& data, uint64_t offset, const IOOptions& options,
                            const rocksdb::DataVerificationInfo& info, IODebugContext* dbg) override {
    if (IOStatus s = BeforeWrite(offset, data.size()); !s.ok()) return s;
    IOStatus s = target()->PositionedAppend(data, offset, options, info, dbg);
    if (s.ok()) size_ = std::max<uint64_t>(size_, offset + data.size());
    return s;
  }
  IOStatus Truncate(uint64_t size, const IOOptions& options, IODebugContext* dbg) override {
    if (const Fault f = Ask(FileOp::kTruncate, path_, size); f.kind == Fault::Kind::kError) {
      return Failure("truncate", path_, f.error);
    }
    IOStatus s = target()->Truncate(size, options, dbg);
    if (s.ok()) size_ = size;
    return s;
  }
  IOStatus Sync(const IOOptions& options, IODebugContext* dbg) override {
    if (IOStatus s = BeforeSync(); !s.ok()) return s;
    return target()->Sync(options, dbg);
  }
  IOStatus Fsync(const IOOptions& options, IODebugContext* dbg) override {
    if (IOStatus s = BeforeSync(); !s.ok()) return s;
    return target()->Fsync(options, dbg);
  }
  IOStatus RangeSync(uint64_t offset, uint64_t nbytes, const IOOptions& options, IODebugContext* dbg) override {
    if (IOStatus s = BeforeSync(); !s.ok()) return s;
    return target()->RangeSync(offset, nbytes, options, dbg);
  }

 private:
  // A short write is continued by RocksDB's POSIX file (it loops), so only
  // errors are injected here.
  IOStatus BeforeWrite(uint64_t offset, size_t length) {
    const Fault f = Ask(FileOp::kWrite, path_, offset, length);
    if (f.kind == Fault::Kind::kError) return Failure("write", path_, f.error);
    return IOStatus::OK();
  }
  IOStatus BeforeSync() {
    const Fault f = Ask(FileOp::kSync, path_, size_);
    if (f.kind == Fault::Kind::kError) return Failure("sync", path_, f.error);
    return IOStatus::OK();
  }

  const std::string path_;
  uint64_t size_;  // where the next Append lands
};

class InjectedDirectory final : public rocksdb::FSDirectoryWrapper {
 public:
  InjectedDirectory(std::unique_ptr<rocksdb::FSDirectory> t, std::string path)
      : FSDirectoryWrapper(std::move(t)), path_(std::move(path)) {}

  IOStatus Fsync(const IOOptions& options, IODebugContext* dbg) override {
    if (const Fault f = Ask(FileOp::kSync, path_); f.kind == Fault::Kind::kError) {
      return Failure("sync directory", path_, f.error);
    }
    return FSDirectoryWrapper::Fsync(options, dbg);
  }
  IOStatus FsyncWithDirOptions(const IOOptions& options, IODebugContext* dbg,
                               const rocksdb::DirFsyncOptions& dir_options) override {
    if (const Fault f = Ask(FileOp::kSync, path_); f.kind == Fault::Kind::kError) {
      return Failure("sync directory", path_, f.error);
    }
    return FSDirectoryWrapper::FsyncWithDirOptions(options, dbg, dir_options);
  }

 private:
  const std::string path_;
};

bool IsInfoLog(std::string_view path) {
  const size_t slash = path.find_last_of('/');
  const std::string_view name = slash == std::string_view::npos ? path : path.substr(slash + 1);
  return name == "LOG" || name.starts_with("LOG.old");
}

// Files opened for reading are faulted at their reads, not at the open:
// RocksDB answers a failed open of CURRENT that a retry gets past with
// "Direct I/O is not supported", which would test RocksDB's wording only.
class CatalogFileSystem final : public rocksdb::FileSystemWrapper {
 public:
  CatalogFileSystem() : FileSystemWrapper(rocksdb::FileSystem::Default()) {}
  const char* Name() const override { return "MsaCatalogFileSystem"; }

  IOStatus NewSequentialFile(const std::string& f, const rocksdb::FileOptions& o,
                             std::unique_ptr<rocksdb::FSSequentialFile>* r, IODebugContext* dbg) override {
    std::unique_ptr<rocksdb::FSSequentialFile> file;
    IOStatus s = target()->NewSequentialFile(f, o, &file, dbg);
    if (s.ok()) *r = std::make_unique<InjectedSequentialFile>(std::move(file), f);
    return s;
  }
  IOStatus NewRandomAccessFile(const std::string& f, const rocksdb::FileOptions& o,
                               std::unique_ptr<rocksdb::FSRandomAccessFile>* r, IODebugContext* dbg) override {
    std::unique_ptr<rocksdb::FSRandomAccessFile> file;
    IOStatus s = target()->NewRandomAccessFile(f, o, &file, dbg);
    if (s.ok()) *r = std::make_unique<InjectedRandomAccessFile>(std::move(file), f);
    return s;
  }
  IOStatus NewWritableFile(const std::string& f, const rocksdb::FileOptions& o,
                           std::unique_ptr<rocksdb::FSWritableFile>* r, IODebugContext* dbg) override {
    if (IsInfoLog(f)) return target()->NewWritableFile(f, o, r, dbg);
    if (const Fault fault = Ask(FileOp::kOpen, f); fault.kind == Fault::Kind::kError) {
      return Failure("create", f, fault.error);
    }
    std::unique_ptr<rocksdb::FSWritableFile> file;
    IOStatus s = target()->NewWritableFile(f, o, &file, dbg);
    if (s.ok()) *r = std::make_unique<InjectedWritableFile>(std::move(file), f, 0);
    return s;
  }
  IOStatus ReopenWritableFile(const std::string& f, const rocksdb::FileOptions& o,
                              std::unique_ptr<rocksdb::FSWritableFile>* r, IODebugContext* dbg) override {
    if (IsInfoLog(f)) return target()->ReopenWritableFile(f, o, r, dbg);
    if (const Fault fault = Ask(FileOp::kOpen, f); fault.kind == Fault::Kind::kError) {
      return Failure("open", f, fault.error);
    }
    std::unique_ptr<rocksdb::FSWritableFile> file;
    IOStatus s = target()->ReopenWritableFile(f, o, &file, dbg);
    if (!s.ok()) return s;
    const uint64_t size = file->GetFileSize(IOOptions(), dbg);
    *r = std::make_unique<InjectedWritableFile>(std::move(file), f, size);
    return s;
  }
  // Recycled log files are off (RocksDB's default); refusing keeps every
  // writable file going through NewWritableFile.
  IOStatus ReuseWritableFile(const std::string&, const std::string&, const rocksdb::FileOptions&,
                             std::unique_ptr<rocksdb::FSWritableFile>*, IODebugContext*) override {
    return IOStatus::NotSupported("catalog file system: recycled log files");
  }
  IOStatus NewDirectory(const std::string& name, const IOOptions& io_opts,
                        std::unique_ptr<rocksdb::FSDirectory>* result, IODebugContext* dbg) override {
    std::unique_ptr<rocksdb::FSDirectory> dir;
    IOStatus s = target()->NewDirectory(name, io_opts, &dir, dbg);
    if (s.ok()) *result = std::make_unique<InjectedDirectory>(std::move(dir), name);
    return s;
  }
  IOStatus RenameFile(const std::string& from, const std::string& to, const IOOptions& options,
                      IODebugContext* dbg) override {
    if (const Fault f = Ask(FileOp::kRename, from, 0, 0, to); f.kind == Fault::Kind::kError) {
      return Failure("rename", from, f.error);
    }
    return target()->RenameFile(from, to, options, dbg);
  }
};

}  // namespace

rocksdb::Env* CatalogEnv() {
  // Never destroyed: RocksDB's background threads may outlive static
  // destruction order (as with rocksdb::Env::Default()).
  static rocksdb::Env* env = rocksdb::NewCompositeEnv(std::make_shared<CatalogFileSystem>()).release();
  return env;
}

}  // namespace msa
