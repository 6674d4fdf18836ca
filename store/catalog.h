// The catalog: RocksDB as the store of record and the commit point.
//
// Everything that says what exists lives here, written in one synced
// WriteBatch per commit: the geometry, the block directory (where each
// block's record is and what it must checksum to), the summaries (so the
// router can always be rebuilt), the documents, the committed length of every
// segment, and the store's counters.
//
// Keys (one column family; the first byte is the record kind):
//   'G'                                   -> geometry
//   'C'                                   -> counters (CatalogCounters)
//   'D' doc_id:be64                       -> DocumentRecord
//   'X' doc_id:be64                       -> DocumentRecord of a deleted document
//                                            (its blocks stay numbered; see Store)
//   'N' name                              -> doc_id:le64 (names are unique)
//   'B' layer:be32 kv_head:be32 block:be64 -> BlockLocation
//   'S' layer:be32 kv_head:be32 block:be64 -> summary, Geometry::summary_width() values:
//                                            fp16 (format 3 on), float32 (stores made
//                                            before: they keep writing float32)
//   'L' segment:be32                      -> committed length:le64
//   'R' stream:be32                       -> RouterIndexRecord (a saved IVF index)
//   'P' stream:be32 first_block:be64      -> SummaryPieceRecord (summaries saved as a file)
//   'T' doc_id:be64                       -> DocumentTokens of a live document, when
//                                            ingested with token ids or text (optional;
//                                            stores made before it simply have none)
// Big-endian numbers keep RocksDB's byte order equal to numeric order, so
// one stream's blocks are one contiguous, ordered key range.
//
// Thread safety: all methods may be called from several threads (RocksDB is);
// ordering of commits is the caller's (Store's) business.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "msa/status.h"
#include "store/geometry.h"

namespace rocksdb {
class DB;
class WriteBatch;
}  // namespace rocksdb

namespace msa {

// Where one block's record lives and what it must contain.
struct BlockLocation {
  uint32_t segment = 0;       // segment file number (from 1); 0: the block's document
                              // was deleted and compaction removed its record
  uint64_t offset = 0;        // byte offset of the record, 4096-aligned
  uint32_t record_bytes = 0;  // header + payload, unpadded
  uint32_t tokens = 0;        // valid tokens, 1..block_tokens
  uint64_t checksum = 0;      // XXH3-64 of the payload
  uint64_t doc_id = 0;
  uint64_t first_position = 0;  // position of the block's first token in its document
  Codec codec = Codec::kF16ShuffleZstd;
};

// A document: the same run of tokens in every stream. Its blocks are
// [first_block, first_block + blocks) in every stream, since every document
// contributes the same number of blocks to each stream, in commit order.
struct DocumentRecord {
  uint64_t id = 0;
  std::string name;
  uint64_t tokens = 0;
  uint64_t first_block = 0;
  uint64_t blocks = 0;
};

// What a document's tokens were, when the caller gave them: the model's
// token ids, and/or the text with each token's byte span in it. Optional
// and independent of the K/V (the store never reads them to attend); kept
// so that a block can be shown as the text it came from (`msa inspect`).
struct TokenSpan {
  uint64_t begin = 0, end = 0;  // bytes [begin, end) of DocumentTokens::text
};
struct DocumentTokens {
  std::vector<int32_t> ids;      // empty, or one per token of the document
  std::string text;              // empty: none stored
  std::vector<TokenSpan> spans;  // empty, or one per token (needs text)
  bool empty() const { return ids.empty() && text.empty() && spans.empty(); }
};
// OK when `t` fits a document of `tokens` tokens: ids and spans empty or
// one per token, spans inside the text, no spans without text.
Status ValidateDocumentTokens(const DocumentTokens& t, uint64_t tokens);

struct CatalogCounters {
  uint64_t next_doc_id = 1;
  uint64_t blocks_per_stream = 0;  // committed blocks in each stream
  uint64_t tokens = 0;             // committed tokens (per stream)
  uint32_t active_segment = 1;     // segment that appends go to
  uint64_t documents = 0;          // live documents
};

// A router index file saved for one stream (STORE/router/): which file,
// how many blocks it covers, and its size and checksum to detect damage.
// An accelerator only: if the file is missing or damaged it is rebuilt from
// the summaries.
struct RouterIndexRecord {
  uint64_t generation = 0;       // file name: <stream>.<generation>.ivf
  uint64_t blocks = 0;           // blocks [0, blocks) of the stream are in it
  uint64_t trained_vectors = 0;  // vectors its IVF was trained on
  uint64_t file_bytes = 0;
  uint64_t checksum = 0;         // XXH3-64 of the file
};

// A run of one stream's summaries saved as a file, so that opening a large
// store reads them in one sequential read instead of record by record from
// RocksDB (the 'S' records stay the source of truth; a missing or damaged
// piece is read from them instead).
struct SummaryPieceRecord {
  uint64_t first_block = 0;  // blocks [first_block, first_block + blocks)
  uint64_t blocks = 0;
  uint64_t file_bytes = 0;
  uint64_t checksum = 0;     // XXH3-64 of the file
};

class Catalog {
 public:
  // Creates a new catalog in `dir` (which must not hold one).
  static Result<std::unique_ptr<Catalog>> Create(const std::string& dir, const Geometry& geometry);
  // Opens an existing catalog; NotFound when `dir` holds none.
  static Result<std::unique_ptr<Catalog>> Open(const std::string& dir, bool read_only);
  ~Catalog();

  const Geometry& geometry() const { return geometry_; }
  // Whether block summaries are stored as fp16 (stores of format 3 on: the
  // router keeps them at that precision, and float32 doubled the bytes of
  // every commit) or float32 (older stores, so that older msa still reads them).
  bool half_summaries() const { return half_summaries_; }
  Result<CatalogCounters> ReadCounters() const;
  Result<uint64_t> ReadSegmentLength(uint32_t segment) const;  // 0 when never committed
  Result<std::optional<uint64_t>> FindDocument(const std::string& name) const;
  Result<std::optional<RouterIndexRecord>> ReadRouterIndex(uint32_t stream) const;
  Result<std::vector<DocumentRecord>> ListDocuments() const;
  Result<std::vector<DocumentRecord>> ListDeletedDocuments() const;
  Result<std::optional<DocumentRecord>> ReadDocument(uint64_t id) const;
  // A document's token ids / text (the 'T' record); nullopt when none was stored.
  Result<std::optional<DocumentTokens>> ReadDocumentTokens(uint64_t id) const;
  // Every segment with a committed length: segment -> length.
  Result<std::vector<std::pair<uint32_t, uint64_t>>> ListSegments() const;

  // Visits every block of one stream in block order.
  Status ScanBlocks(uint32_t layer, uint32_t kv_head,
                    const std::function<Status(uint64_t block, const BlockLocation&)>& fn) const;
  // Visits the summaries of one stream in block order, from block `from` on.
  Status ScanSummaries(uint32_t layer, uint32_t kv_head,
                       const std::function<Status(uint64_t block, std::span<const float>)>& fn,
                       uint64_t from = 0) const;
  // The stream's saved summary pieces, by first block.
  Result<std::vector<SummaryPieceRecord>> ListSummaryPieces(uint32_t stream) const;

  // One commit's worth of catalog changes, applied atomically by Commit().
  class Batch {
   public:
    Batch();
    ~Batch();
    // half: store the summary as fp16 (the catalog's half_summaries()).
    void PutBlock(const BlockId& id, const BlockLocation& loc, std::span<const float> summary, bool half);
    void PutDocument(const DocumentRecord& doc);
    // Removes the document and its name, and records it as deleted.
    void DeleteDocument(const DocumentRecord& doc);
    // A block's new location (compaction); its summary is unchanged.
    void PutBlockLocation(const BlockId& id, const BlockLocation& loc);
    void PutSegmentLength(uint32_t segment, uint64_t length);
    void DeleteSegmentLength(uint32_t segment);
    void PutCounters(const CatalogCounters& counters);
    void PutRouterIndex(uint32_t stream, const RouterIndexRecord& record);
    void PutSummaryPiece(uint32_t stream, const SummaryPieceRecord& record);
    void DeleteSummaryPiece(uint32_t stream, uint64_t first_block);
    // Document `id`'s token ids / text; removed again by DeleteDocument.
    void PutDocumentTokens(uint64_t id, const DocumentTokens& tokens);
    size_t count() const;

   private:
    friend class Catalog;
    std::unique_ptr<rocksdb::WriteBatch> batch_;
    std::vector<uint16_t> half_;  // PutBlock's fp16 summary, reused
  };
  // Writes the batch with sync=true: durable when this returns OK.
  Status Commit(Batch& batch);
  // Moves the commits still only in RocksDB's log into its table files
  // (a memtable flush), so that the next open need not replay them. Not
  // needed for durability. NotSupported on a read-only catalog.
  Status Flush();

  // The catalog's high-water mark: the file HIGH-WATER in its directory
  // holds the RocksDB sequence number of an acknowledged commit. RocksDB
  // cannot tell a write-ahead log cut short (a truncated or lost file)
  // from a torn last record, and would open at an older state, silently
  // dropping acknowledged commits -- and the store's next writable open
  // would then cut the segments back to match. Open compares the recovered
  // sequence with the mark and fails (Corruption) when the catalog is
  // behind it. The mark is written only after its commit is durable, so
  // it never runs ahead of the catalog, not even after a crash or power
  // loss; hence it needs no sync, and is written at most once a second
  // (and when a writable catalog closes): what it catches is a loss of
  // anything older than that.
  static constexpr const char* kHighWaterFile = "HIGH-WATER";

 private:
  Catalog(std::string dir, rocksdb::DB* db, Geometry geometry, bool half_summaries, bool read_only);
  // Fails when the recovered catalog is behind its high-water mark.
  Status CheckHighWater() const;
  // Records the current sequence (a failure is logged: the mark only detects).
  void WriteHighWater();
  std::string dir_;
  rocksdb::DB* db_;  // owned
  Geometry geometry_;
  bool half_summaries_;
  bool read_only_;
  uint64_t acknowledged_ = 0;  // the sequence of the last durable commit
  uint64_t high_water_ = 0;    // the sequence last written to the mark
  std::chrono::steady_clock::time_point high_water_at_{};
};

}  // namespace msa
