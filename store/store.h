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
#include <functional>
#include <future>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <shared_mutex>
#include <span>
#include <string>
#include <vector>

#include "attention/gpu_block_pool.h"
#include "io/aligned_buffer.h"
#include "io/block_reader.h"
#include "io/segment_file.h"
#include "msa/status.h"
#include "store/background_worker.h"
#include "store/block_cache.h"
#include "store/catalog.h"
#include "store/codec.h"
#include "store/geometry.h"
#include "store/router.h"
#include "store/work_pool.h"

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
  // GPU block pool (device memory for K/V pages: fp16, or the codes of
  // int8 and int4 stores, see gpu_quantized_pages; allocated on the
  // first query that runs on the GPU; attention/gpu_block_pool.h). 0: the
  // GPU is never used.
  uint64_t gpu_pool_bytes = uint64_t{256} << 20;
  // An int8 or int4 store's GPU pool holds its blocks as their codes,
  // dequantised in the kernel (attention/quantized_pages.h: a half or a
  // quarter of the GPU memory, staging and copy of fp16 pages); false
  // decodes them on the host into fp16 pages (the same results; for
  // comparisons).
  bool gpu_quantized_pages = true;
  // Summaries are also saved in files of this many blocks per stream
  // (summaries/<stream>.<first block>.f16, recorded in the catalog) as a
  // commit completes each run, so that opening reads them sequentially
  // rather than record by record from RocksDB. Rounded up to a multiple of
  // 128 blocks; 0: none saved (saved ones are still used).
  uint64_t summary_piece_blocks = 16384;
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

// Where Attend computes attention.
//   kAuto: on the GPU when msa was built with CUDA, a device is usable and
//          the call suits it (head_dim a multiple of 8 up to 256, codec f16,
//          int8 or int4, |q| < 65504, not exact mode, its blocks fit the
//          pool); on the CPU otherwise.
//   kOff: always on the CPU.
//   kRequire: on the GPU, or NotSupported saying why not.
// The GPU reads K/V as fp16: int8/int4 blocks are decoded, then rounded to
// fp16 (2^-11 relative, far below their quantisation step); f16 blocks are
// exact. The arithmetic is float32 on both (tests/gpu_attend_test.cc).
enum class GpuMode { kAuto, kOff, kRequire };

struct AttendOptions {
  uint32_t top_k = 16;  // routed blocks per (query row, KV head), besides sink and recent
  bool exact = false;   // attend over every block of the layer (dense)
  GqaCombine combine = GqaCombine::kMax;  // how a GQA group's head scores make a block's score
  bool exact_routing = false;  // score every summary, even where the stream has an IVF index
  uint32_t nprobe = 0;         // IVF lists probed per head (0: default)
  uint32_t candidates = 0;     // candidates rescored exactly: IVF per head (0: 4 * top_k),
                               // approximate routing per ranking (0: 2 * top_k)
  // Restrict the query to these documents (ids from AppendDocument or
  // ListDocuments; empty: all). Routing, the sink and the recent block then
  // come from their blocks only: the sink is the first block of the first
  // of them, the recent block the last block of the last. An unknown id is
  // NotFound.
  std::vector<uint64_t> documents;
  uint32_t channels = 0;       // approximate routing over this many key channels chosen
                               // from the group's queries, rescored exactly (0: the
                               // router's default: approximate for large streams, see
                               // RouterOptions)
  // Coarse-to-fine routing (RouteOptions::coarse_groups): groups picked
  // first; 0: the router's default (only very large streams);
  // RouteOptions::kNoCoarse: never.
  uint32_t coarse_groups = 0;
  bool use_cache = true;       // false: read every block from disk (cold-path measurements);
                               // on the GPU also bypasses the GPU pool
  GpuMode gpu = GpuMode::kAuto;
  // Also force the first block of every document queried, besides the
  // stream's sink and recent block: a document that was run from position 0
  // starts with its own attention sink, which soaks up mass in every later
  // query. top_k then counts the routed blocks that are not such a first
  // block (the router's best top_k of the others).
  bool document_sinks = false;
};

// Where one Attend call spent its time, in milliseconds, and what it read.
struct AttendStats {
  double route_ms = 0, fetch_ms = 0, decode_ms = 0, attend_ms = 0, total_ms = 0;
  uint64_t blocks_read = 0;  // distinct (KV head, block) records read
  uint64_t bytes_read = 0;   // bytes requested from the disk (4096-padded)
  uint64_t cache_hits = 0;   // blocks served by the block cache (not read)
  double routed_fraction = 0;  // mean share of index vectors scored per routed (row, KV head)
  // The GPU path: whether it ran, blocks found in the GPU pool (no copy),
  // and the time to stage and enqueue the copies of the rest (the copy
  // itself runs on the GPU, inside attend_ms).
  bool on_gpu = false;
  uint64_t gpu_pool_hits = 0;
  double upload_ms = 0;
  double plan_ms = 0;  // routing and the fetch plan (route_ms is part of it)
  double pool_ms = 0;  // GPU pool bookkeeping: lookups, page table, release
};

// What `msa verify` found: every block read and checked, every catalog
// invariant tested, every saved router index (STORE/router/S.G.ivf) and
// summary piece (STORE/summaries/S.FIRST.f16) read and checked against the
// size and checksum its catalog record holds. Each problem names the block,
// file and offset (or the document, or the file) and says what is wrong; a
// damaged, missing or truncated index or piece is reported as such, saying
// that it is rebuilt from the catalog (nothing is lost).
struct VerifyReport {
  uint64_t blocks_checked = 0;
  uint64_t documents_checked = 0;
  uint64_t files_checked = 0;  // router index and summary piece files
  std::vector<std::string> problems;  // empty: the store is sound
};

// Bytes of one stream (layer, KV head): its block records as stored, and
// the same K/V as plain fp16 (what the codec saved is raw / stored).
struct StreamBytes {
  uint64_t raw_bytes = 0;      // tokens * head_dim * 2 (K and V) * 2 bytes
  uint64_t stored_bytes = 0;   // block records, unpadded
  uint64_t segment_bytes = 0;  // the same, 4096-padded as on disk
};

// Progress of a long operation (Verify, Compact), reported from the
// calling thread every few hundred blocks: blocks done of blocks to do,
// and the record bytes read so far. An empty function reports nothing.
using ProgressFn = std::function<void(uint64_t done, uint64_t total, uint64_t bytes)>;

// What Compact() did.
struct CompactStats {
  uint64_t segments_removed = 0;
  uint64_t bytes_reclaimed = 0;  // size of the removed segment files
  uint64_t blocks_moved = 0;     // live records copied to the active segment
  uint64_t bytes_moved = 0;      // their bytes, 4096-padded
  uint64_t blocks_dropped = 0;   // records of deleted documents removed
};

// What `msa inspect` shows of one block (Store::InspectBlock).
struct BlockInspection {
  BlockId id;
  BlockLocation location;    // from the catalog (segment 0: compacted away)
  std::string segment_path;  // STORE/segments/N.seg; empty when compacted away
  // The record as read from disk (when it still exists): its header, and
  // whether it decodes and checksums as the catalog says (record_error
  // says why not).
  bool record_read = false;
  uint16_t record_version = 0;
  BlockRecordHeader header;
  uint64_t raw_bytes = 0;     // the block's K and V as plain fp16: 2 * tokens * head_dim * 2
  std::string record_error;   // empty: the record is sound
  // The document the block belongs to, and where its tokens sit.
  DocumentRecord document;
  bool document_deleted = false;
  // Position of the block's first token in the stream of live documents
  // (what ReadStream returns and queries see); -1 for a deleted document.
  int64_t stream_position = -1;
  // The document's token ids / text, where it was ingested with them.
  std::optional<DocumentTokens> tokens;
};

// Why a block is in a query's selection, with the router's score where it
// ranked it (Store::ExplainQuery).
struct ExplainedBlock {
  uint64_t block = 0;
  int32_t rank = -1;       // 0-based place in the router's top k; -1: not routed
  float score = 0;         // the group score the router ranked it by (rank >= 0)
  uint8_t ranking = 0;     // ScoredBlock::ranking (hybrid: 0 bound, 1 mean)
  bool sink = false;       // forced: the first block of the range queried
  bool recent = false;     // forced: the last block of the range queried
  bool document_sink = false;  // forced: a document's first block (AttendOptions::document_sinks)
  bool all = false;        // exact mode, or the budget covers every block
  uint64_t doc_id = 0;
  uint64_t first_position = 0;  // of its first token, in its document
  uint32_t tokens = 0;
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
  uint64_t summary_piece_blocks = 0; // blocks, summed over streams, whose summaries are in saved
                                     // pieces (StoreOptions::summary_piece_blocks)
  BlockCacheStats cache;             // this handle's block cache
  attention::GpuPoolStats gpu_pool;  // this handle's GPU pool (zeros until first used)
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
  // The same, also keeping the document's token ids and/or text
  // (DocumentTokens) in the same commit, for `msa inspect`. They must fit
  // the document (ValidateDocumentTokens; InvalidArgument otherwise,
  // nothing staged).
  Result<uint64_t> AppendDocument(const std::string& name, const DocumentKV& kv,
                                  const DocumentTokens& tokens);
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
  // Moves the catalog's recent commits out of its write-ahead log into its
  // table files, so that the next open does not replay them (read-only
  // opens cannot flush, and at 1e8 tokens the last ingest's log took half
  // a second of every open). Optional: commits are durable without it; a
  // failure loses nothing. `msa ingest` and `msa synth --into-store` call
  // it when they finish. NotSupported on a read-only store.
  Status FlushCatalog();

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

  // The same attention with q, out and lse in GPU memory (shapes as
  // Attend's), enqueued on `stream` (a cudaStream_t; nullptr: the legacy
  // default stream). Routing runs on the CPU, so q is first copied to the
  // host: the call waits for `stream` up to that copy. It returns once the
  // kernel is enqueued; out/lse are written when `stream` gets there.
  // Blocks not in the GPU pool are read, staged and copied on `stream`.
  // lse may be null. options.gpu is ignored: this is always the GPU;
  // NotSupported (saying why) where the GPU path cannot run this call.
  // The calling thread's current device must be the one the store's pool
  // lives on (the current device at the store's first GPU call).
  Status AttendDevice(uint32_t layer, const float* q, uint32_t n, uint32_t q_heads,
                      const AttendOptions& options, float* out, float* lse, void* stream,
                      AttendStats* stats = nullptr) const;

  // Forgets every block of the GPU pool (cold measurements, tests).
  void ClearGpuPool() const;

  // Asynchronous prefetch: routes q now and reads the chosen blocks into
  // the block cache -- or, where Attend with these options would run on the
  // GPU, into the GPU pool (read, staged and copied on a pool stream) -- on
  // a background thread, so that an Attend with the same
  // arguments later finds them there (typically: prefetch layer l + 1, then
  // attend layer l). The future holds the fetch's status. q is copied; the
  // call returns at once. Does nothing (an OK future) for exact mode, with
  // use_cache off, or without a cache. Prefetches run one at a time, in order.
  std::shared_future<Status> Prefetch(uint32_t layer, const float* q, uint32_t n,
                                      uint32_t q_heads, const AttendOptions& options) const;

  // One layer's queries for PrefetchLayers: q [n, q_heads, head_dim].
  struct LayerQueries {
    uint32_t layer = 0;
    const float* q = nullptr;
    uint32_t n = 0;
  };
  // Prefetch of several layers in one read submission: each layer routed
  // as Prefetch would, the union of their blocks read into the host block
  // cache with one batch of reads (the reader's queue depth permitting),
  // on the background thread. For when the queries of several layers are
  // known at once (the same q for every layer, a replayed prompt). The
  // host cache only (the GPU pool is filled by Attend or Prefetch); does
  // nothing for exact mode, with use_cache off, or without a cache. q is
  // copied; a bad layer or q fails the whole prefetch (its future).
  std::shared_future<Status> PrefetchLayers(std::span<const LayerQueries> layers, uint32_t q_heads,
                                            const AttendOptions& options) const;

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
  Status Compact(CompactStats* stats = nullptr, const ProgressFn& progress = {});
  // Reads every committed block (bypassing the cache), verifying checksums
  // and identities, and checks the catalog's invariants: block locations
  // inside their segments' committed lengths, documents tiling the block
  // range with the token counts their blocks hold. Problems are collected,
  // not returned as errors; the Status is for failures to run at all.
  Status Verify(VerifyReport* report, const ProgressFn& progress = {}) const;
  StoreStats Stats() const;
  // Empties the block cache (its counters stay): the next queries read
  // from disk. For cold-cache measurements.
  void DropCache() const { cache_.Clear(); }

  // ---- Introspection (store/store_inspect.cc) ----
  // The token ids / text a committed live document was ingested with;
  // nullopt when none were given. NotFound for an unknown document.
  Result<std::optional<DocumentTokens>> ReadDocumentTokens(uint64_t id) const;
  // One committed block, as `msa inspect` shows it: its catalog location,
  // its record header read from disk (the record decoded and checksummed,
  // bypassing the cache; a bad record is reported in record_error, not as
  // an error), its document and positions, and the document's token ids /
  // text where stored. NotFound for a block past the stream's end;
  // InvalidArgument for a layer or KV head out of range.
  Result<BlockInspection> InspectBlock(const BlockId& id) const;
  // The routing Attend would do with the same arguments, explained: per
  // (row, KV head) -- explained[i * kv_heads + g] -- the chosen blocks, the
  // routed ones first in the router's order (best first) with their scores,
  // then the forced sink and recent blocks the router did not pick. The
  // same blocks as Attend's `selected` against the same committed state.
  // Reads no block.
  Status ExplainQuery(uint32_t layer, const float* q, uint32_t n, uint32_t q_heads,
                      const AttendOptions& options,
                      std::vector<std::vector<ExplainedBlock>>* explained) const;

 private:
  Store(std::string path, std::unique_ptr<Catalog> catalog, const StoreOptions& options);
  Status Load();
  // Load's two halves, run at once: every stream's block directory from
  // the catalog, and every stream's summaries into the router (from saved
  // pieces where there are some; *pieces_blocks counts those blocks).
  Status ReadBlockDirectory();
  Status LoadSummaries(uint64_t* pieces_blocks);
  Status OpenWriter(uint32_t segment, uint64_t committed_length);
  // Appends one record to the active segment (rolling over to a new one
  // past options_.segment_bytes); *segment/*offset receive where it went.
  Status AppendRecord(std::span<const uint8_t> record, uint32_t* segment, uint64_t* offset);
  // The same for consecutive records at `data`, each padded with zeros to
  // a multiple of 4096 bytes (record_bytes[i] unpadded), placed exactly as
  // AppendRecord would place them one by one, in one write per segment
  // they land in; segments[i]/offsets[i] receive where record i went.
  Status AppendRecords(const uint8_t* data, std::span<const uint32_t> record_bytes,
                       uint32_t* segments, uint64_t* offsets);
  // Starts the next segment when `bytes` more would overflow the active one
  // (which is not empty). Caller holds the write lock.
  Status RollOverIfFull(size_t bytes);
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
  // Summary pieces (StoreOptions::summary_piece_blocks): loads the stream's
  // saved pieces into the router, returns the blocks they cover (up to the
  // first missing or damaged one, which is logged); saves the runs a commit
  // completed (best effort: a failure is logged and retried next commit).
  uint64_t LoadSummaryPieces(uint32_t stream);
  // Verify's part for the router index files and summary pieces: each one
  // the catalog records is read and checked as opening checks it.
  void VerifyRebuildableFiles(VerifyReport* report) const;
  void SaveSummaryPieces();
  std::string SummaryPiecePath(uint32_t stream, uint64_t first_block) const;
  std::string RouterIndexPath(uint32_t stream, uint64_t generation) const;
  Result<int> SegmentFd(uint32_t segment) const;
  std::string SegmentFilePath(uint32_t segment) const;  // STORE/segments/NNNNNN.seg
  // Reads and decodes blocks: ids[j] into keys/values at slot j
  // ([slot, block_tokens, head_dim]), len[j] its token count.
  // locs[j] is ids[j]'s location, copied from the directory under the state
  // lock (the fetch itself runs without it).
  // use_cache: look blocks up in the block cache and keep what was read.
  Status CheckQuery(uint32_t layer, const float* q, uint32_t n, uint32_t q_heads) const;
  // A query's routing: chosen[i * kv_heads + kv] (ascending block numbers),
  // and the distinct blocks to fetch with their locations; slot_of[kv] holds
  // (block number, its index in ids) for KV head kv in ascending block order.
  struct QueryPlan {
    // Held from planning until the reads are done: compaction removes a
    // segment file only once no planned query can still read it.
    std::shared_lock<std::shared_mutex> io_lock;
    std::vector<std::vector<uint64_t>> chosen;
    std::vector<BlockId> ids;
    std::vector<BlockLocation> locs;
    std::vector<std::vector<std::pair<uint64_t, int32_t>>> slot_of;  // [kv]: (block, slot), ascending
    bool all = false;  // every block of the range (exact, or a budget covering it)
    uint64_t sink = 0, recent = 0;  // the forced blocks (when not all)
    std::vector<uint64_t> document_sinks;  // options.document_sinks: the documents' first blocks, ascending
    // Filled only when PlanQuery is asked for it (ExplainQuery): per (row,
    // KV head), the router's picks in its order, with their scores.
    std::vector<std::vector<ScoredBlock>> routed;
  };
  Result<QueryPlan> PlanQuery(uint32_t layer, const float* q, uint32_t n, uint32_t q_heads,
                              const AttendOptions& options, AttendStats* st,
                              bool keep_scores = false) const;
  // keys, values and len null: only into the cache (a prefetch; use_cache must be true).
  // records (optional, quantised codecs only, keys/values then null): block
  // j's verified record, from the cache or read, instead of decoded floats;
  // a record of another codec than the store's is Corruption. A record read
  // and not cached borrows the read's staging buffer (registered memory),
  // which stays lent until the last of such records is dropped.
  Status FetchBlocks(const std::vector<BlockId>& ids, const std::vector<BlockLocation>& locs,
                     float* keys, float* values, int32_t* len, AttendStats* stats,
                     bool use_cache,
                     std::vector<std::shared_ptr<const CachedBlock>>* records = nullptr) const;
  // OK when the GPU path can run this call (GpuMode's conditions but the
  // pool's capacity); else NotSupported saying why. q on the host.
  Status GpuSuits(const AttendOptions& options, const float* q, size_t q_elems) const;
  // The store's GPU pool, created on first use; a failure to create it is
  // kept and returned from then on.
  Result<attention::GpuBlockPool*> GpuPool() const;
  // The GPU half of Attend/AttendDevice after routing: pool lookup, fetch
  // and staging of the misses, upload, kernel. device_io: q/out/lse are
  // device pointers and the work is left enqueued on `stream`; otherwise
  // they are host arrays, and the call waits for the result. NotSupported
  // before any work when the pool cannot take the call.
  // upload_only (a prefetch): the blocks go into the pool and nothing else
  // runs (out, lse and q unused).
  Status AttendOnGpu(const QueryPlan& plan, const float* q, uint32_t n,
                     uint32_t q_heads, const AttendOptions& options, float* out, float* lse,
                     bool device_io, void* stream, AttendStats* st, bool upload_only = false) const;
  // Prefetch's GPU half: where Attend would run on the GPU, posts a task
  // that routes q and uploads the blocks into the GPU pool, and returns
  // true (*done then holds its status); false leaves the call to the
  // host-cache prefetch.
  bool PrefetchToGpu(uint32_t layer, const float* q, uint32_t n, uint32_t q_heads,
                     const AttendOptions& options, std::shared_future<Status>* done) const;

  const std::string path_;
  const std::unique_ptr<Catalog> catalog_;
  const Geometry geometry_;
  const StoreOptions options_;
  const std::unique_ptr<io::BlockReader> reader_;
  mutable BlockCache cache_;  // internally synchronised
  const std::unique_ptr<WorkPool> decoders_;  // null when options_.decode_threads == 0
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
  // AppendDocument's encoded records, one buffer per encoding thread, kept
  // from one document to the next (no page faults and zeroing per
  // document): a writing store holds about its largest document's
  // encoded size (its threads' runs of at most max-record-size each).
  std::vector<io::AlignedBuffer> encode_buffers_;
  CatalogCounters staged_;
  std::unique_ptr<Catalog::Batch> batch_;
  std::vector<std::vector<BlockLocation>> staged_locations_;  // [stream] new blocks
  std::vector<std::vector<float>> staged_summaries_;          // [stream] new summaries
  std::map<std::string, uint64_t> staged_names_;
  std::map<uint64_t, std::pair<uint64_t, uint64_t>> staged_docs_;  // merged into doc_blocks_
  std::map<uint64_t, DocumentRecord> staged_deletions_;            // removed from doc_blocks_
  Status write_error_;  // set by a failed commit: refuse writes until reopen
  std::vector<RouterIndexRecord> saved_indexes_;  // [stream]; generation 0: none saved
  // [stream] blocks [0, end) are in saved summary pieces; written by the
  // writer under an exclusive state_mu_.
  std::vector<uint64_t> pieces_end_;

  // The GPU pool; guarded by gpu_mu_ until created, then constant.
  mutable std::mutex gpu_mu_;
  mutable std::unique_ptr<attention::GpuBlockPool> gpu_pool_;
  mutable Status gpu_error_;  // why the pool could not be created

  // Last: destroyed first, finishing queued prefetches while all else lives.
  mutable BackgroundWorker prefetcher_;
};

}  // namespace msa
