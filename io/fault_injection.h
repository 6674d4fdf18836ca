// Fault injection for the io layer: make chosen or random file operations
// fail (EIO, ENOSPC, ...), come up short, hit a false end of file or return
// flipped bytes, to test that the store reports such failures and never
// loses committed data or answers with garbage (issue 10; RocksDB's
// FaultInjectionTestFS is the model).
//
// The seam: every system call of io/ that touches a file goes through the
// wrappers of io/file_ops.h (open, pwrite/write, fdatasync/fsync, fallocate,
// ftruncate, rename, pread) and the io_uring reader asks the same question
// before each submit and of each completion. With no injector installed the
// cost is one relaxed atomic load per call. The store (store/store.cc) needs
// nothing: it sees faults exactly as it would see them from the kernel.
//
// The catalog's RocksDB files go through the same seam: the catalog opens
// RocksDB on a file system (store/catalog_file_system.h) that asks the
// installed injector before each of RocksDB's file creations, appends,
// syncs (files and directories), renames and reads, marking those
// operations `catalog`. Rules match either the io layer's own files or the
// catalog's (Rule::catalog), so a schedule written for segment files does
// not also fail RocksDB's, and the reverse.
//
// Outside the seam: the calls store/store.cc makes itself (mkdir, the
// rename that puts a new catalog in place, unlink of leftovers), RocksDB's
// info LOG, close() and fstat().
//
// Thread safety: an injector is installed process-wide and may be consulted
// from any thread (the pread pool's workers, the prefetch thread), so its
// Decide must be thread-safe (FaultSchedule is). Installing and removing are
// atomic, but the installer must keep the injector alive until no io call
// that may have seen it is still running: remove it only while the store is
// idle (no Attend, ReadStream, Prefetch or Commit in flight).
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <mutex>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

namespace msa::io {

// What an intercepted call does. kRead covers pread (the pread reader and
// ReadWholeFile) and io_uring read completions alike, so one schedule tests
// both readers.
enum class FileOp : uint8_t {
  kOpen,       // open(2) of a segment, temporary or directory
  kWrite,      // pwrite/write
  kSync,       // fdatasync/fsync of a file or a directory
  kFallocate,  // segment preallocation (best effort: the store ignores it failing)
  kTruncate,   // ftruncate (a segment's uncommitted tail, on open)
  kRename,     // rename (atomic whole-file writes)
  kRead,       // pread, io_uring read completion
  kSubmit,     // io_uring_submit_and_wait (the submission itself)
};
inline constexpr int kFileOpCount = 8;
const char* FileOpName(FileOp op);
constexpr uint32_t OpMask(FileOp op) { return 1u << static_cast<unsigned>(op); }
constexpr uint32_t kAllOps = (1u << kFileOpCount) - 1;

// One intercepted call, as the injector sees it.
struct FileOperation {
  FileOp op = FileOp::kRead;
  // The file (for kRead resolved from fd through /proc/self/fd; for kSync
  // of a directory, the directory; for kRename the source).
  std::string_view path;
  int fd = -1;          // -1 where the call takes a path
  uint64_t offset = 0;  // kWrite, kRead, kFallocate, kTruncate (the new length)
  size_t length = 0;    // bytes asked for (kWrite, kRead)
  bool io_uring = false;  // kRead: an io_uring completion, not a pread
  bool catalog = false;   // one of the catalog's RocksDB files (path is absolute there)
  std::string_view target;  // kRename: the new name
};

struct Fault {
  enum class Kind : uint8_t {
    kNone,     // the call runs normally
    kError,    // the call fails with `error` (errno) and does nothing
    kShort,    // kRead/kWrite transfer at most `bytes` (at least 1) and report
               // that; the caller must continue from there. A call for no
               // more than `bytes` runs whole. With then_eof (kRead), the
               // continuation read at the point where it stopped hits end of
               // file: a short read that never completes.
    kEof,      // kRead returns 0 (end of file) without reading
    kCorrupt,  // kRead succeeds but the byte at `bytes` into what it read
               // (or its last byte, if it read less) is flipped
  };
  Kind kind = Kind::kNone;
  int error = 0;     // kError: EIO, ENOSPC, ...
  size_t bytes = 0;  // kShort: bytes moved; kCorrupt: where the flip is
  bool then_eof = false;  // kShort of a kRead

  static Fault None() { return {}; }
  static Fault Error(int err) { return {Kind::kError, err, 0, false}; }
  static Fault Short(size_t bytes) { return {Kind::kShort, 0, bytes, false}; }
  static Fault ShortThenEof(size_t bytes) { return {Kind::kShort, 0, bytes, true}; }
  static Fault Eof() { return {Kind::kEof, 0, 0, false}; }
  // Byte 100: past a block record's 64-byte header, inside its payload
  // (a flip in the zero padding after a record would change nothing).
  static Fault Corrupt(size_t at = 100) { return {Kind::kCorrupt, 0, at, false}; }
  // A fault the caller has to report (a call that saw one must fail): an
  // error other than EINTR/EAGAIN, a false end of file, flipped bytes, a
  // short read that never completes. Short transfers that complete and
  // retried errors are not.
  bool hard() const;
  bool none() const { return kind == Kind::kNone; }
  // "EIO", "ENOSPC", "short(100)", "short(4096)+eof", "eof", "corrupt(100)"
  std::string ToString() const;
};

class FaultInjector {
 public:
  virtual ~FaultInjector() = default;
  // Called once per intercepted call, from the thread making it: before the
  // call runs (a pread too: an error or end of file then replaces it), or,
  // for an io_uring read, when its completion is reaped (the fault then
  // replaces or alters the kernel's result). Must be thread-safe.
  virtual Fault Decide(const FileOperation& op) = 0;
};

// Installs `injector` process-wide (nullptr removes). Not owned. Returns the
// one it replaces.
FaultInjector* SetFaultInjector(FaultInjector* injector);

// Installs an injector for a scope, restoring the previous one after.
class ScopedFaultInjector {
 public:
  explicit ScopedFaultInjector(FaultInjector* injector) : previous_(SetFaultInjector(injector)) {}
  ~ScopedFaultInjector() { SetFaultInjector(previous_); }
  ScopedFaultInjector(const ScopedFaultInjector&) = delete;
  ScopedFaultInjector& operator=(const ScopedFaultInjector&) = delete;

 private:
  FaultInjector* previous_;
};

// The injector the tests and tools/fault_soak.sh use: a list of rules, each
// matching some operations and faulting either the ones at chosen positions
// (the k-th match, k counted from 0 per rule) or each with a probability.
// A random draw depends only on the seed, the rule and the operation (its
// kind, file name without directory, offset, length, and how many times
// that same operation was seen before), not on the order in which threads
// ask: a seed replays the same faults although the pread pool's workers
// and io_uring completions come in a different order each run (short of
// the rare read that a failed io_uring batch does or does not get to
// continue, depending on timing). Rules are
// tried in order; the first that
// fires decides, and the rules after it do not see (or count) the
// operation. Every injected fault is logged. Thread-safe.
//
// A rule's filter runs under the schedule's lock: it may keep state, but
// must not call back into the schedule.
class FaultSchedule final : public FaultInjector {
 public:
  struct Rule {
    uint32_t ops = kAllOps;          // OpMask bits this rule matches
    std::string path_contains;       // "" matches every path
    std::function<bool(const FileOperation&)> filter;  // optional further test
    // Positional mode (probability == 0): matches first .. first+count-1 fault.
    uint64_t first = 0;
    uint64_t count = 1;              // UINT64_MAX: every match from `first` on
    double probability = 0;          // > 0: random mode, each match with this chance
    Fault fault;
    // Which files: the io layer's own (false) or the catalog's RocksDB
    // files (true); a rule never matches the other kind.
    bool catalog = false;
  };
  // One injected fault, for messages and counts.
  struct Injection {
    size_t rule = 0;
    FileOp op = FileOp::kRead;
    std::string path;
    uint64_t offset = 0;
    Fault fault;
    std::string ToString() const;  // "EIO on write /s/segments/000000.seg at 8192"
  };

  explicit FaultSchedule(std::vector<Rule> rules = {}, uint64_t seed = 1);

  Fault Decide(const FileOperation& op) override;

  // While disabled nothing is injected and nothing is counted (for checking
  // a result against the disk with the faults out of the way).
  void set_enabled(bool enabled);
  // Replaces the rules and zeroes the match counters (the log is kept).
  void Reset(std::vector<Rule> rules);
  // Operations rule `rule` matched so far (faulted or not).
  uint64_t matched(size_t rule) const;
  std::vector<Injection> injections() const;
  uint64_t injected() const;

 private:
  mutable std::mutex mu_;
  std::vector<Rule> rules_;          // guarded by mu_
  std::vector<uint64_t> matched_;    // per rule; guarded by mu_
  std::vector<Injection> log_;       // guarded by mu_
  const uint64_t seed_;
  // Times each operation was seen (a hash of what identifies it), for the
  // random draws; guarded by mu_.
  std::unordered_map<uint64_t, uint64_t> seen_;
  // Where short reads with then_eof stopped: (fd, offset) whose read gets
  // end of file; guarded by mu_.
  std::vector<std::pair<int, uint64_t>> eof_at_;
  std::atomic<bool> enabled_{true};
};

namespace detail {
// The installed injector; read through FaultInjectionActive() (file_ops.h).
extern std::atomic<FaultInjector*> g_fault_injector;
}  // namespace detail

}  // namespace msa::io
