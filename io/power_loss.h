// Simulated power loss, for the crash tests (issue 10): what survives on
// disk when the power goes is only what was synced. A kill -9 (the crash
// tests) keeps everything that reached the kernel's page cache; a power
// loss does not, so it is what tests the store's fdatasync ordering: block
// data synced before the catalog points at it, new files' directory
// entries synced, RocksDB's WAL synced at commit.
//
// The model is RocksDB's FaultInjectionTestFS: installed as the fault
// injector (io/fault_injection.h), the simulator sees every write and sync
// of the io layer and of the catalog's RocksDB files and keeps, per file,
// how far it was written and how far synced. CutPower() (or a countdown of
// write operations, to cut in the middle of a call) makes every later
// write, sync, open, rename, truncate and preallocation fail with EIO, so
// nothing more reaches the disk; the caller then closes the store and calls
// LoseUnsyncedData(), which does to the files what the power loss would
// have: each file written since its last sync is cut back to its synced
// length, or (as the page cache may have written some of it back) to a
// random length between that and all it was written; each file created and
// never made durable by a sync of its directory is deleted.
//
// Not modelled: renames are taken as durable at once (undoing one would
// need the replaced file's old contents; the store and RocksDB sync the
// directory right after each rename, so the window is small), and with a
// rename the names created before it in the same directory (journaling file
// systems commit metadata in order: a rename that survived brings them
// along); unlinks are
// not tracked; a file first seen with data already in it counts that data
// as synced; writes below a file's synced length (neither the store nor
// RocksDB overwrites synced data) are not undone.
//
// Thread-safe (RocksDB's background threads write too).
#pragma once

#include <cstdint>
#include <map>
#include <mutex>
#include <string>

#include "io/fault_injection.h"
#include "msa/status.h"

namespace msa::io {

class PowerLossSimulator final : public FaultInjector {
 public:
  Fault Decide(const FileOperation& op) override;

  // The power goes now: every later write-side operation fails with EIO.
  void CutPower();
  // The power goes at the n-th write-side operation from now (n >= 1; that
  // operation already fails): a cut in the middle of whatever call makes it.
  void CutPowerAfter(uint64_t n);
  bool power_cut() const;
  // Write-side operations seen (files of the io layer and the catalog).
  uint64_t write_operations() const;

  struct Loss {
    uint64_t files_cut = 0;       // files that lost a tail
    uint64_t bytes_lost = 0;      // written but not synced, and not kept
    uint64_t bytes_kept = 0;      // written, not synced, kept by chance
    uint64_t files_deleted = 0;   // created, directory entry never synced
  };
  // Applies the loss (call after the power is cut and the store closed);
  // `seed` drives the random lengths; keep_some = false cuts every file to
  // exactly its synced length. Forgets what it tracked, so the simulator can
  // be used again on the same files (power on, CutPowerAfter again).
  Status LoseUnsyncedData(uint64_t seed, bool keep_some, Loss* loss);

 private:
  struct FileState {
    uint64_t written_end = 0;  // end of the furthest write
    uint64_t synced_end = 0;   // written_end at the last sync of the file
    bool durable_name = true;  // false: created, its directory not synced since
  };
  FileState& Track(const std::string& path);  // requires mu_

  mutable std::mutex mu_;
  std::map<std::string, FileState> files_;  // guarded by mu_
  uint64_t write_ops_ = 0;                  // guarded by mu_
  uint64_t cut_at_ = UINT64_MAX;            // write_ops_ count at which the power goes
};

}  // namespace msa::io
