// Memory for the router's long-lived tables (store/summary_table.h,
// store/route_sketch.h): anonymous mappings that the kernel may back with
// 2 MiB transparent huge pages.
//
// Why: those tables are filled once, at open or as blocks arrive, and then
// read for the life of the store; at 1e8 tokens they are ~2 GB. They come
// in slabs of many chunks or runs (few mappings, however the table grows).
// A region of 2 MiB or more is aligned to 2 MiB and marked MADV_HUGEPAGE
// (a hint; where the kernel keeps THP for madvised regions only, Debian's
// default, this is what turns it on): opening the 1e8 store then faults
// 82K pages instead of 569K. On the 2-core VM that saved no time (the
// cost there is zeroing fresh memory, not the faults: BENCHMARKS.md,
// "Opening the 1e8 store in 3.3 s cold"), and a 1e7-token ingest took the
// same time with and without the hint, so it stays for the machines where
// faults and TLB reach do count.
//
// Contents start zeroed (the kernel's anonymous pages).
//
// A region can instead be a read-only map of a file (MapFile): a saved
// summary piece becomes table memory without a copy, sharing the page
// cache's pages. On the VM a fresh anonymous page costs ~3 us to fault in
// and zero (0.85 s per GB; 2.7-3.8 s per GB in the first huge pages a
// process maps), which made copying 1.5 GB of pieces into the table most
// of the 1e8 store's open time.
//
// Thread safety: a region is plain memory; moving or destroying it is the
// owner's to serialise.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>

#include "msa/status.h"

namespace msa {

class TableMemory {
 public:
  static constexpr size_t kHugePage = size_t{2} << 20;

  TableMemory() = default;
  // At least `bytes` (rounded up to whole pages, and to huge pages from
  // kHugePage on), zeroed. Throws std::bad_alloc where the kernel refuses,
  // as operator new would.
  explicit TableMemory(size_t bytes);
  // `path`, which must be exactly `bytes` long (Corruption naming both
  // sizes otherwise), read through once in parts given to `read_through`
  // (to checksum them) and then mapped read-only from the same open file
  // (writing to data() faults), its pages mapped in now. The read turns a
  // disk error now into a Status; it cannot protect later accesses: a
  // mapped page the kernel evicted and fails to read back, or a file
  // someone else truncates, raises SIGBUS. msa never rewrites a mapped
  // file in place (pieces are replaced by rename). NotSupported where the
  // kernel refuses the mapping (a file system without mmap, no address
  // space left): the caller can still copy the file.
  static Result<TableMemory> MapFile(const std::string& path, size_t bytes,
                                     const std::function<void(const uint8_t* data, size_t n)>& read_through);
  ~TableMemory();
  TableMemory(TableMemory&& other) noexcept;
  TableMemory& operator=(TableMemory&& other) noexcept;
  TableMemory(const TableMemory&) = delete;
  TableMemory& operator=(const TableMemory&) = delete;

  uint8_t* data() const { return data_; }
  size_t bytes() const { return bytes_; }

 private:
  TableMemory(uint8_t* data, size_t bytes) : data_(data), bytes_(bytes) {}
  uint8_t* data_ = nullptr;
  size_t bytes_ = 0;
};

}  // namespace msa
