// msa::Store: a directory holding one memory store, and everything done to it.
//
// Layout of a store directory:
//   STORE/catalog/          RocksDB: the store of record (store/catalog.h)
//   STORE/segments/N.seg    append-only block records (io/segment_file.h)
//   STORE/router/S.G.ivf    saved router index of stream S, generation G
//                           (an accelerator: rebuilt from the catalog if lost)
//
// Commit protocol (ARCHITECTURE.md): AppendDocument encodes a document's
// blocks and appends their records to the active segment; nothing of it is
// visible yet. Commit() fdatasyncs every segment written since the last
// commit, then writes one synced RocksDB WriteBatch with the blocks'
// locations and summaries, the documents, the segments' new committed
// lengths and the counters. Only then do queries see the new documents. A
// crash at any point leaves the last committed state; segment bytes past the
// committed length are cut off when the store is next opened for writing.
//
// Deletion: DeleteDocument stages a deletion that Commit makes durable and
// visible, like an append. A deleted document's blocks keep their numbers
// (block numbers never change) but are never routed, fetched or read again;
// Compact() copies the live records out of every segment that holds a
// deleted one, commits their new locations, and removes those segments.
//
// Thread safety: Attend, Prefetch, ReadStream, Verify, Stats and
// ListDocuments may be called from any number of threads, concurrently with
// one writer calling AppendDocument/DeleteDocument/Commit/Compact. Queries see the state of the last completed commit.
// A second process may open the same store read-only; only one may write
// (RocksDB's lock file enforces it). A read-only handle sees the documents
// committed when it was opened; reopen it to see later commits.
#pragma once

#include <atomic>
#include <cstdint>
#include <future>
#include <map>
#include <memory>
#include <mutex>
#include <shared_mutex>
#include <span>
#include <string>
#include <vector>

#include "io/block_reader.h"
#include "io/segment_file.h"
#include "msa/status.h"
#include "store/background_worker.h"
#include "store/block_cache.h"
#include "store/catalog.h"
#include "store/decode_pool.h"
#include "store/geometry.h"
#include "store/router.h"

namespace msa {

enum class ElementType { kFloat32, kFloat16, kBFloat16 };

// One document's keys and values for every stream, as the model produced
// them: keys[((layer * kv_heads + kv_head) * tokens + t) * head_dim + c],
// values likewise. The store's codec decides what is kept (store/codec.h):
// f16 stores fp16 input bit-exact and rounds the rest to fp16, bf16 the same
// with bfloat16, int8/int4 quantise.
struct DocumentKV {
  const void* keys = nullptr;
  const void* values = nullptr;
  uint64_t tokens = 0;
  ElementType dtype = ElementType::kFloat32;
};

struct StoreOptions {
  bool read_only = false;           // open without the writer lock; no appends
  unsigned queue_depth = 256;       // io_uring entries
  bool allow_io_uring = true;       // false forces the pread fallback
  uint64_t segment_bytes = 1ull << 30;  // roll over to a new segment file past this size
  RouterOptions router;                 // when streams get an IVF index
  uint64_t cache_bytes = 256ull << 20;  // host cache of decoded blocks (0: none)
  unsigned encode_threads = 0;          // threads encoding a document's blocks (0: one per core)
  // io_uring registered files and buffers (io/block_reader.h); 0 turns
  // either off. Measured in BENCHMARKS.md "Fetch path".
  unsigned registered_files = 1024;
  uint64_t registered_buffer_bytes = 32ull << 20;
  // Threads that decode a fetch's blocks as their reads complete, overlapping
  // the reads still in flight (0: the querying thread decodes once all reads
  // are in). kAutoDecodeThreads: 1 where the machine has 4 or more hardware
  // threads, else 0 -- on the 2-core VM it cut a cold top-64 fetch+decode
  // from 7.2 to 4.4 ms p50 when a core was free, and gained nothing with
  // both cores busy (BENCHMARKS.md "Fetch path").
  static constexpr unsigned kAutoDecodeThreads = ~0u;
  unsigned decode_threads = kAutoDecodeThreads;
};

struct AttendOptions {
  uint32_t top_k = 16;  // routed blocks per (query row, KV head), besides sink and recent
  bool exact = false;   // attend over every block of the layer (dense)
  GqaCombine combine = GqaCombine::kMax;  // how a GQA group's head scores make a block's score
  bool exact_routing = false;  // score every summary, even where the stream has an IVF index
  uint32_t nprobe = 0;         // IVF lists probed per head (0: default)
  uint32_t candidates = 0;     // IVF candidates per head before exact rescoring (0: 4 * top_k)
  // Restrict the query to these documents (ids from AppendDocument or
  // ListDocuments; empty: all). Routing, the sink and the recent block then
  // come from their blocks only: the sink is the first block of the first
  // of them, the recent block the last block of the last. An unknown id is
  // NotFound.
  std::vector<uint64_t> documents;
  uint32_t channels = 0;       // approximate routing over each head's largest probe
                               // coefficients, rescored exactly (0: exact scan)
  bool use_cache = true;       // false: read every block from disk (cold-path measurements)
};

// Where one Attend call spent its time, in milliseconds, and what it read.
struct AttendStats {
  double route_ms = 0, fetch_ms = 0, decode_ms = 0, attend_ms = 0, total_ms = 0;
  uint64_t blocks_read = 0;  // distinct (KV head, block) records read
  uint64_t bytes_read = 0;   // bytes requested from the disk (4096-padded)
  uint64_t cache_hits = 0;   // blocks served by the block cache (not read)
  double routed_fraction = 0;  // mean share of index vectors scored per routed (row, KV head)
};

// What `msa verify` found: every block read and checked, every catalog
// invariant tested. Each problem names the block, file and offset (or the
// document) and says what is wrong.
struct VerifyReport {
  uint64_t blocks_checked = 0;
  uint64_t documents_checked = 0;
  std::vector<std::string> problems;  // empty: the store is sound
};

// Bytes of one stream (layer, KV head): its block records as stored, and
// the same K/V as plain fp16 (what the codec saved is raw / stored).
struct StreamBytes {
  uint64_t raw_bytes = 0;      // tokens * head_dim * 2 (K and V) * 2 bytes
  uint64_t stored_bytes = 0;   // block records, unpadded
  uint64_t segment_bytes = 0;  // the same, 4096-padded as on disk
};

// What Compact() did.
struct CompactStats {
  uint64_t segments_removed = 0;
  uint64_t bytes_reclaimed = 0;  // size of the removed segment files
  uint64_t blocks_moved = 0;     // live records copied to the active segment
  uint64_t bytes_moved = 0;      // their bytes, 4096-padded
  uint64_t blocks_dropped = 0;   // records of deleted documents removed
};

struct StoreStats {
  Geometry geometry;
  uint64_t documents = 0;            // live (not deleted) documents
  uint64_t tokens = 0;               // per stream, of live documents
  uint64_t blocks_per_stream = 0;
  uint64_t stored_bytes = 0;         // block records, unpadded, all streams
  uint64_t raw_bytes = 0;            // the same K/V as plain fp16
  uint64_t segment_bytes = 0;        // segment files on disk (4096-padded)
  std::string reader;                // "io_uring" or "pread"
  std::string reader_detail;         // how it is set up, or why the fallback is in use; decode threads
  uint64_t disk_blocks_read = 0;     // this handle's block reads from disk (queries, prefetches, ReadStream)
  uint64_t disk_bytes_read = 0;      // their bytes, 4096-padded as requested
  io::ReaderCounters reader_counters;  // reads submitted (all callers), how many registered
  uint32_t ivf_streams = 0;          // streams routed through an IVF index (the rest: exact scan)
  BlockCacheStats cache;             // this handle's block cache
  std::vector<StreamBytes> streams;  // [layer * kv_heads + kv_head]
};

class Store {
 public:
  // Creates STORE (the directory may exist but must not hold a store).
  static Result<std::unique_ptr<Store>> Create(const std::string& path, const Geometry& geometry,
                                               const StoreOptions& options = {});
  // Opens an existing store; NotFound "PATH is not an msa store" otherwise.
  static Result<std::unique_ptr<Store>> Open(const std::string& path,
                                             const StoreOptions& options = {});
  ~Store();

  const Geometry& geometry() const { return geometry_; }
  const std::string& path() const { return path_; }

  // Stages one document (see DocumentKV for the layout). Returns its id.
  // Not visible to queries, and not durable, until Commit() returns OK.
  // Names must be unique and non-empty (AlreadyExists otherwise). A failed
  // append stages nothing of that document and leaves the store writable:
  // documents staged before it still commit (its bytes already in a
  // segment, if any, are never referenced).
  Result<uint64_t> AppendDocument(const std::string& name, const DocumentKV& kv);
  // Stages the deletion of committed document `id` (from AppendDocument or
  // ListDocuments): once Commit() returns OK it is gone from queries,
  // ListDocuments and ReadStream, and its name may be used again. NotFound
  // if no such document is committed (or its deletion is already staged).
  // Its disk space comes back with Compact().
  Status DeleteDocument(uint64_t id);
  // Makes every staged document and deletion durable and visible. After a failed commit
  // the store refuses further writes until reopened (what reached the disk
  // is then unknown; reopening restores the last committed state).
  Status Commit();

  // Attention of q over the memory of one layer.
  //   q   : [n, q_heads, head_dim] float32, q_heads a multiple of kv_heads
  //   out : [n, q_heads, head_dim] float32
  //   lse : [n, q_heads] float32, may be null
  // Per (row, KV head): the top_k blocks by router score for the group's
  // query heads, plus the first (sink) and last (recent) block of the
  // stream; every block when options.exact. An empty store gives out = 0
  // and lse = -inf. selected (optional) receives, per (row, KV head), the
  // chosen block numbers in ascending order: selected[i * kv_heads + g].
  Status Attend(uint32_t layer, const float* q, uint32_t n, uint32_t q_heads,
                const AttendOptions& options, float* out, float* lse, AttendStats* stats = nullptr,
                std::vector<std::vector<uint64_t>>* selected = nullptr) const;

  // Asynchronous prefetch: routes q now and reads the chosen blocks into
  // the block cache on a background thread, so that an Attend with the same
  // arguments later finds them there (typically: prefetch layer l + 1, then
  // attend layer l). The future holds the fetch's status. q is copied; the
  // call returns at once. Does nothing (an OK future) for exact mode, with
  // use_cache off, or without a cache. Prefetches run one at a time, in order.
  std::shared_future<Status> Prefetch(uint32_t layer, const float* q, uint32_t n,
                                      uint32_t q_heads, const AttendOptions& options) const;

  // Every committed token of one stream, decoded: keys/values
  // [tokens, head_dim] float32 (fp16 values widened exactly). Checksums are
  // verified like any read.
  Status ReadStream(uint32_t layer, uint32_t kv_head, std::vector<float>* keys,
                    std::vector<float>* values) const;

  Result<std::vector<DocumentRecord>> ListDocuments() const;
  Result<std::vector<DocumentRecord>> ListDeletedDocuments() const;
  // Reclaims the space of deleted documents: every segment holding one of
  // their records is rewritten (its live records copied, unchanged, to the
  // active segment) and removed, in one commit. Queries go on meanwhile;
  // the files are removed once no query still reads them. InvalidArgument
  // while appends or deletions are staged (commit them first). A crash
  // leaves either the old or the new layout; leftover files are removed on
  // the next open for writing. stats may be null.
  Status Compact(CompactStats* stats = nullptr);
  // Reads every committed block (bypassing the cache), verifying checksums
  // and identities, and checks the catalog's invariants: block locations
  // inside their segments' committed lengths, documents tiling the block
  // range with the token counts their blocks hold. Problems are collected,
  // not returned as errors; the Status is for failures to run at all.
  Status Verify(VerifyReport* report) const;
  StoreStats Stats() const;
  // Empties the block cache (its counters stay): the next queries read
  // from disk. For cold-cache measurements.
  void DropCache() const { cache_.Clear(); }

 private:
  Store(std::string path, std::unique_ptr<Catalog> catalog, const StoreOptions& options);
  Status Load();
  Status OpenWriter(uint32_t segment, uint64_t committed_length);
  // Appends one record to the active segment (rolling over to a new one
  // past options_.segment_bytes); *segment/*offset receive where it went.
  Status AppendRecord(std::span<const uint8_t> record, uint32_t* segment, uint64_t* offset);
  // Segment files the catalog no longer references (a compaction that
  // crashed before removing them, an uncommitted rollover): removed.
  void RemoveOrphanSegments();
  // The block ranges of live documents, merged ([first, end), ascending),
  // for `docs` (id -> (first block, blocks)).
  static std::vector<std::pair<uint64_t, uint64_t>> LiveRanges(
      const std::map<uint64_t, std::pair<uint64_t, uint64_t>>& docs);
  uint64_t PreallocateBytes() const;  // disk reserved when a segment is opened for writing
  unsigned EncodeThreads() const;
  // Below this many blocks per thread, encoding stays on the calling thread.
  static constexpr uint64_t kBlocksPerEncodeThread = 32;
  // Trains IVF indexes for streams that are due (Router::RefreshIndex); a
  // failure only logs (the stream keeps its exact scan).
  void RefreshRouterIndexes();
  // Router index files (STORE/router/): loaded on open where present and
  // intact (else rebuilt, with a warning), saved after a training and
  // whenever a stream's index has grown by an eighth since it was saved.
  void LoadRouterIndexes();
  Status SaveRouterIndex(uint32_t stream);
  std::string RouterIndexPath(uint32_t stream, uint64_t generation) const;
  Result<int> SegmentFd(uint32_t segment) const;
  // Reads and decodes blocks: ids[j] into keys/values at slot j
  // ([slot, block_tokens, head_dim]), len[j] its token count.
  // locs[j] is ids[j]'s location, copied from the directory under the state
  // lock (the fetch itself runs without it).
  // use_cache: look blocks up in the block cache and keep what was read.
  Status CheckQuery(uint32_t layer, const float* q, uint32_t n, uint32_t q_heads) const;
  // A query's routing: chosen[i * kv_heads + kv] (ascending block numbers),
  // and the distinct blocks to fetch with their locations; slot_of[kv] maps
  // a block number to its index in ids.
  struct QueryPlan {
    // Held from planning until the reads are done: compaction removes a
    // segment file only once no planned query can still read it.
    std::shared_lock<std::shared_mutex> io_lock;
    std::vector<std::vector<uint64_t>> chosen;
    std::vector<BlockId> ids;
    std::vector<BlockLocation> locs;
    std::vector<std::map<uint64_t, int32_t>> slot_of;
  };
  Result<QueryPlan> PlanQuery(uint32_t layer, const float* q, uint32_t n, uint32_t q_heads,
                              const AttendOptions& options, AttendStats* st) const;
  // keys, values and len null: only into the cache (a prefetch; use_cache must be true).
  Status FetchBlocks(const std::vector<BlockId>& ids, const std::vector<BlockLocation>& locs,
                     float* keys, float* values, int32_t* len, AttendStats* stats,
                     bool use_cache) const;

  const std::string path_;
  const std::unique_ptr<Catalog> catalog_;
  const Geometry geometry_;
  const StoreOptions options_;
  const std::unique_ptr<io::BlockReader> reader_;
  mutable BlockCache cache_;  // internally synchronised
  const std::unique_ptr<DecodePool> decoders_;  // null when options_.decode_threads == 0
  mutable std::atomic<uint64_t> disk_blocks_read_{0}, disk_bytes_read_{0};

  // Committed state seen by queries; guarded by state_mu_ (shared for
  // readers, exclusive while a commit publishes).
  mutable std::shared_mutex state_mu_;
  CatalogCounters committed_;
  std::vector<std::vector<BlockLocation>> directory_;  // [stream][block]
  std::map<uint64_t, std::pair<uint64_t, uint64_t>> doc_blocks_;  // live doc id -> (first block, blocks)
  std::vector<std::pair<uint64_t, uint64_t>> live_ranges_;  // LiveRanges(doc_blocks_)
  Router router_;

  // Shared by queries from planning to the end of their reads, exclusive
  // while compaction closes and removes segment files.
  mutable std::shared_mutex io_mu_;
  // Read descriptors per segment, opened on first use; guarded by fd_mu_.
  mutable std::mutex fd_mu_;
  mutable std::map<uint32_t, int> read_fds_;

  // Writer state; guarded by write_mu_.
  std::mutex write_mu_;
  std::unique_ptr<io::SegmentWriter> writer_;
  std::map<uint32_t, io::SegmentWriter*> dirty_segments_;  // written since last commit
  std::vector<std::unique_ptr<io::SegmentWriter>> retired_writers_;  // rolled over, not yet synced
  CatalogCounters staged_;
  std::unique_ptr<Catalog::Batch> batch_;
  std::vector<std::vector<BlockLocation>> staged_locations_;  // [stream] new blocks
  std::vector<std::vector<float>> staged_summaries_;          // [stream] new summaries
  std::map<std::string, uint64_t> staged_names_;
  std::map<uint64_t, std::pair<uint64_t, uint64_t>> staged_docs_;  // merged into doc_blocks_
  std::map<uint64_t, DocumentRecord> staged_deletions_;            // removed from doc_blocks_
  Status write_error_;  // set by a failed commit: refuse writes until reopen
  std::vector<RouterIndexRecord> saved_indexes_;  // [stream]; generation 0: none saved

  // Last: destroyed first, finishing queued prefetches while all else lives.
  mutable BackgroundWorker prefetcher_;
};

}  // namespace msa
