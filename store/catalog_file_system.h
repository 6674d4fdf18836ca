// The file system the catalog opens RocksDB on: the default POSIX one, with
// every file creation, append, sync (of files and directories), rename and
// read of RocksDB's files put through the io layer's fault-injection seam
// (io/fault_injection.h), marked as catalog operations.
//
// Why: the catalog's commit is the store's commit point. Without this, a
// failing or torn catalog write could not be tested, nor a power loss that
// drops what RocksDB wrote but did not sync (io/power_loss.h), while block
// data written through io/ could; the store's promise (a failed commit is
// reported and loses nothing committed before it) covers both.
//
// With no injector installed each call costs one relaxed atomic load more
// than RocksDB's own file system. RocksDB's info LOG is passed through
// untouched: its writes come from any thread at any time, which would make
// fault schedules depend on timing, and nothing depends on it.
#pragma once

namespace rocksdb {
class Env;
}

namespace msa {

// Process-lifetime; shared by every catalog.
rocksdb::Env* CatalogEnv();

}  // namespace msa
