// Append-only segment files holding compressed block records.
//
// Layout: a segment is a sequence of records, each starting at a multiple of
// 4096 bytes and zero-padded to the next one, so that any record can be read
// with O_DIRECT in one request. What a record contains is the store's business
// (store/codec.h); this file only places bytes and makes them durable.
//
// Durability protocol (ARCHITECTURE.md): the store appends records, calls
// Sync() (fdatasync), and only then commits their addresses to RocksDB
// together with the segment's new committed length. Bytes past the committed
// length belong to an append that never committed; Open() cuts them off.
//
// Thread safety: a SegmentWriter is used by one thread at a time.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "msa/status.h"

namespace msa::io {

class SegmentWriter {
 public:
  // Opens `path` for appending at `committed_length`, creating it (and
  // syncing its directory so the new name survives a crash) if absent.
  // A file longer than committed_length is truncated to it; a shorter one is
  // Corruption (committed bytes are missing). preallocate_bytes > 0
  // reserves the segment's disk space up front (fallocate with KEEP_SIZE:
  // the file's size, which recovery trusts, does not change), so appends
  // do not allocate and the segment stays contiguous; file systems that
  // cannot do it are skipped silently.
  static Result<std::unique_ptr<SegmentWriter>> Open(const std::string& path,
                                                     uint64_t committed_length,
                                                     uint64_t preallocate_bytes = 0);
  ~SegmentWriter();
  SegmentWriter(const SegmentWriter&) = delete;
  SegmentWriter& operator=(const SegmentWriter&) = delete;

  // Appends `size` bytes at the current end (a multiple of 4096), zero-padded
  // to the next multiple of 4096. Returns the record's offset. Not durable
  // until Sync().
  Result<uint64_t> Append(const void* data, size_t size);
  // Appends `size` bytes (a multiple of 4096) that already hold their
  // records and zero padding. Returns where they start. With `data`
  // 4096-aligned (io::AlignedBuffer) they are written with O_DIRECT where
  // the file system allows it (not through the page cache), else buffered.
  Result<uint64_t> AppendPadded(const void* data, size_t size);
  // Starts writing back what was appended since the last call (a hint:
  // sync_file_range without waiting), so that the disk works while the
  // caller goes on and Sync() waits only for the tail. Durability still
  // comes from Sync() alone.
  void StartWriteback();
  // fdatasync: every appended byte is on stable storage when this returns OK.
  Status Sync();
  // Bytes written so far (appended, synced or not); always 4096-aligned.
  uint64_t length() const { return length_; }
  const std::string& path() const { return path_; }

 private:
  SegmentWriter(std::string path, int fd, uint64_t length)
      : path_(std::move(path)), fd_(fd), length_(length), writeback_from_(length) {}
  std::string path_;
  int fd_;
  uint64_t length_;
  uint64_t writeback_from_ = 0;  // StartWriteback's next range starts here
  int direct_fd_ = -1;           // O_DIRECT descriptor for AppendPadded; -1: none
};

// fsync a directory so that entries created in it (new files) are durable.
Status SyncDirectory(const std::string& dir);

// Opens a segment for reading with O_DIRECT. File systems that refuse
// O_DIRECT (tmpfs) get a buffered descriptor; *direct tells which.
Result<int> OpenSegmentForRead(const std::string& path, bool* direct);

}  // namespace msa::io
