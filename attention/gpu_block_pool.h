// A pool of K/V blocks in GPU memory, in front of the host block cache: the
// device side of the fetch path (issue 6).
//
// Pages. The pool is one device allocation of `pages` fixed-size pages, each
// holding one block of one stream as fp16: keys [block_tokens, head_dim] in
// one array and values in another, plus the block's token count. A page is
// keyed by (stream, block) and evicted least-recently-used. Because every
// page has the same shape, the whole pool *is* a BlockTable
// (attention/block_table.h): a query's "page table" is simply its Selection,
// whose entries are page numbers, and the split-K kernel reads K/V straight
// from the pages -- a warm query copies no K/V at all.
//
// Staging. Blocks missing from the pool are written by the caller, as fp16,
// into a staging slot: anonymous memory registered with cudaHostRegister
// (pinned, so the copy is a real DMA, and equally usable as an io_uring read
// target). Upload() then enqueues on the caller's stream one host-to-device
// copy of the slot (staged blocks and the call's small arrays together) and
// one scatter kernel that moves each staged block into its page. Nothing
// waits on the host: the copy of one call overlaps the reads and decoding
// of the next. A slot is reused only after the work that read it is done
// (an event recorded by Finish, waited for when the slot is next taken).
//
// One call's use of the pool (a Batch):
//   Begin(keys)  -> a page per key; pages pinned; `misses` lists the keys
//                   whose data the caller must stage (not resident, or all
//                   of them when lookup is off)
//   Io(...)      -> pinned host + device regions of the slot for the call's
//                   own arrays (q, page table, out, lse)
//   Staged*(m)   -> where to write miss m's fp16 K/V and token count
//   Upload()     -> copy + scatter, enqueued on the stream
//   (the caller enqueues its kernel over table() on the same stream)
//   Finish()     -> records an event after the caller's work, unpins, and
//                   publishes the misses' pages under their keys
// Cross-call ordering is by events, never by host waits: a page reused for
// another block first waits (on the GPU) for the batches that read it --
// every unfinished batch up to its latest reader, since concurrent readers
// on different streams end in any order -- and a hit on a page whose upload
// another call enqueued waits (on the GPU) for that upload. A miss's page is published only in Finish, after its
// upload is enqueued, so no call can hit a page that nothing has written.
// Two concurrent calls missing the same block each upload it; the second
// page to be published is dropped.
//
// Thread safety: all methods may be called from several threads, each with
// its own Batch. Invariants (guarded by the pool mutex): a pinned page is
// neither evicted nor reassigned; a keyed page's contents are valid once
// its `ready` event has completed; the index holds exactly the keyed pages,
// at most half full.
//
// Cost: a warm call's bookkeeping is one flat-index probe, an LRU relink and
// a pin per block, and one event per call (12 us for 512 blocks on the H100
// host, BENCHMARKS.md "GPU attend end to end").
//
// Built with MSA_WITH_CUDA; otherwise Create returns NotSupported.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include "attention/block_table.h"
#include "msa/status.h"

namespace msa::attention {

struct GpuPoolOptions {
  int block_tokens = 0;  // tokens per page (the store's block size)
  int head_dim = 0;      // channels; a multiple of 8 (the kernel's 16-byte rows)
  // 8 or 4: pages of int8 or int4 codes and their parameters
  // (attention/quantized_pages.h) instead of fp16 rows, for stores of those
  // codecs, dequantised in the kernel; 0: fp16 rows.
  int page_bits = 0;
  uint64_t pool_bytes = uint64_t{256} << 20;  // device memory for pages (K and V fp16, lengths)
  uint64_t staging_bytes = uint64_t{4} << 20; // initial size of each staging slot (grows on demand)
  int slots = 4;                              // staging slots: calls in flight at once
};

struct GpuPoolKey {
  uint32_t stream = 0;
  uint64_t block = 0;
};

struct GpuPoolStats {
  uint64_t pages = 0, resident = 0;  // capacity, and pages holding a keyed block
  uint64_t hits = 0, misses = 0, evictions = 0, uploads = 0;
  uint64_t device_bytes = 0;  // pages
  uint64_t pinned_bytes = 0;  // staging slots, host side
};

class GpuBlockPool {
 public:
  struct Batch;  // one call's pages, slot and events (opaque; see Begin)
  struct BatchDeleter {
    void operator()(Batch* b) const;
  };
  // Every batch Begin opens must be passed to Finish (which releases its
  // pages and slot); merely destroying one leaks them.
  using BatchPtr = std::unique_ptr<Batch, BatchDeleter>;

  static Result<std::unique_ptr<GpuBlockPool>> Create(const GpuPoolOptions& options);
  // Waits for all work that reads the pool's memory, then frees it. No Batch
  // may be open.
  ~GpuBlockPool();
  GpuBlockPool(const GpuBlockPool&) = delete;
  GpuBlockPool& operator=(const GpuBlockPool&) = delete;

  int pages() const;
  // Bytes of one block's K (or V) in a page: block_tokens * head_dim * 2,
  // or with quantised pages QuantizedPages(...).page_bytes.
  size_t block_bytes() const;
  int page_bits() const;  // GpuPoolOptions::page_bits
  // The whole pool as a BlockTable over device memory: entry p is page p
  // (with quantised pages, keys/values are the first key/value page's bytes).
  BlockTable<uint16_t> table() const;
  GpuPoolStats Stats() const;

  // Opens a batch for `keys` (distinct). pages[i] receives key i's page;
  // *misses the indices i whose data must be staged. lookup = false treats
  // every key as missing and uses pages that are freed again at Finish
  // (nothing is published): a cold read that leaves the pool as it was.
  // io_bytes: bytes of the caller's own arrays to reserve in the slot.
  // NotSupported (naming the counts) when the pool cannot hold all keys at
  // once beside what other calls have pinned; nothing is then changed. Takes a staging slot,
  // waiting for one to be free.
  Status Begin(const std::vector<GpuPoolKey>& keys, bool lookup, size_t io_bytes,
               BatchPtr* batch, std::vector<int32_t>* pages,
               std::vector<size_t>* misses);
  // The caller's arrays: `io_bytes` at host (pinned) and device addresses;
  // Upload copies [host, host + io_bytes) to device.
  void Io(Batch& batch, void** host, void** device) const;
  // Staging of the m-th miss: fp16 [block_tokens, head_dim] keys and values
  // (rows past the token count are never read) and its token count. With
  // quantised pages, the block_bytes() of its key and value pages (copied whole).
  uint16_t* StagedKeys(Batch& batch, size_t m) const;
  uint16_t* StagedValues(Batch& batch, size_t m) const;
  void SetStagedTokens(Batch& batch, size_t m, int32_t tokens) const;
  // A stream owned by the batch's slot (a cudaStream_t), for callers that
  // bring none; valid until Finish.
  void* SlotStream(Batch& batch) const;
  // Enqueues on `stream` (a cudaStream_t) the waits this batch needs, the
  // copy of the slot and the scatter of staged blocks into their pages.
  Status Upload(Batch& batch, void* stream);
  // Call once the caller's work over the pages is enqueued on `stream`
  // (also on failure paths, with ok = false: nothing is published, pages
  // return to the free list). Always releases the batch.
  Status Finish(BatchPtr batch, void* stream, bool ok = true);

  // Copies `bytes` of device memory to `host` (pageable) through a pinned
  // bounce buffer on `stream` and waits for it: a pageable copy goes through
  // the driver's own staging and costs more. Calls are serialised.
  Status ReadToHost(const void* device, size_t bytes, void* host, void* stream);

  // Forgets every keyed page (they become free); for cold measurements and
  // tests. Pinned pages of open batches are not touched.
  void Clear();

 private:
  struct Impl;
  explicit GpuBlockPool(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace msa::attention
