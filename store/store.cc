#include "store/store.h"

#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <limits>
#include <set>
#include <thread>

#include <spdlog/spdlog.h>

#include "attention/half.h"
#include "attention/sparse_attention_cpu.h"
#include "attention/sparse_attention_cuda.h"
#include "io/aligned_buffer.h"
#include "io/atomic_file.h"
#include "store/codec.h"
#include "store/codec_quantized.h"
#include "store/summary.h"
#include "store/summary_table.h"

namespace msa {

namespace {

using Clock = std::chrono::steady_clock;
double MsSince(Clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
}

std::string CatalogDir(const std::string& path) { return path + "/catalog"; }
std::string SegmentDir(const std::string& path) { return path + "/segments"; }
std::string SegmentPath(const std::string& path, uint32_t segment) {
  char name[32];
  std::snprintf(name, sizeof(name), "/%06u.seg", segment);
  return SegmentDir(path) + name;
}

Status MakeDirectory(const std::string& dir) {
  if (::mkdir(dir.c_str(), 0755) != 0 && errno != EEXIST) {
    return Status::FromErrno("create directory " + dir, errno);
  }
  return Status::OK();
}

// count elements of a DocumentKV array from element `at`, as float32
// (fp16 and bf16 widen exactly).
void WidenToFloat(const void* array, ElementType dtype, size_t at, size_t count, float* out) {
  switch (dtype) {
    case ElementType::kFloat32:
      std::memcpy(out, static_cast<const float*>(array) + at, count * sizeof(float));
      return;
    case ElementType::kFloat16:
      attention::HalfToFloatArray(static_cast<const uint16_t*>(array) + at, out, count);
      return;
    case ElementType::kBFloat16: {
      const uint16_t* in = static_cast<const uint16_t*>(array) + at;
      for (size_t i = 0; i < count; ++i) {
        const uint32_t bits = static_cast<uint32_t>(in[i]) << 16;
        std::memcpy(out + i, &bits, 4);
      }
      return;
    }
  }
}

unsigned DecodeThreads(const StoreOptions& options) {
  if (options.decode_threads != StoreOptions::kAutoDecodeThreads) return options.decode_threads;
  return std::thread::hardware_concurrency() >= 4 ? 1 : 0;
}

bool IsDirectory(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

// What a file whose checksum the catalog records is when it does not match.
constexpr char kDamaged[] = "damaged: its checksum does not match the catalog's";

// A file the store keeps beside the catalog as an accelerator (a router
// index, a summary piece) read and checked against the size and checksum
// its catalog record holds: its bytes, or NotFound (missing), or Corruption
// saying whether it is truncated, too long or damaged. Verify (which
// reports it) and opening, where a summary piece cannot be mapped, use it.
Result<std::vector<uint8_t>> ReadRecordedFile(const std::string& file, uint64_t file_bytes,
                                              uint64_t checksum) {
  MSA_ASSIGN_OR_RETURN(std::vector<uint8_t> bytes, io::ReadWholeFile(file));
  if (bytes.size() != file_bytes) {
    return Status::Corruption(std::string(bytes.size() < file_bytes ? "truncated: " : "too long: ") +
                              std::to_string(bytes.size()) + " bytes, the catalog records " +
                              std::to_string(file_bytes));
  }
  if (Checksum(bytes.data(), bytes.size()) != checksum) return Status::Corruption(kDamaged);
  return bytes;
}

// A summary piece's catalog record against the piece before it (the pieces
// of a stream tile [0, end) in order), the stream's committed blocks and the
// size of a chunk of its summaries. Shared by opening and Verify.
Status CheckSummaryPieceRecord(const SummaryPieceRecord& p, uint64_t expected_first,
                               uint64_t committed_blocks, size_t chunk_bytes) {
  if (p.first_block != expected_first || p.blocks == 0 || p.blocks % SummaryTable::kChunkBlocks != 0 ||
      p.first_block + p.blocks > committed_blocks) {
    return Status::Corruption("blocks [" + std::to_string(p.first_block) + ", " +
                              std::to_string(p.first_block + p.blocks) +
                              ") do not continue the saved summaries");
  }
  if (p.file_bytes != p.blocks / SummaryTable::kChunkBlocks * chunk_bytes) {
    return Status::Corruption("its size does not match the store's geometry");
  }
  return Status::OK();
}

}  // namespace

Store::Store(std::string path, std::unique_ptr<Catalog> catalog, const StoreOptions& options)
    : path_(std::move(path)),
      catalog_(std::move(catalog)),
      geometry_(catalog_->geometry()),
      options_(options),
      reader_(io::MakeBlockReader({options.queue_depth, options.allow_io_uring, options.registered_files,
                                   options.registered_buffer_bytes})),
      cache_(options.cache_bytes),
      decoders_(DecodeThreads(options) > 0 ? std::make_unique<WorkPool>(DecodeThreads(options)) : nullptr),
      directory_(geometry_.streams()),
      router_(geometry_, options.router),
      staged_locations_(geometry_.streams()),
      staged_summaries_(geometry_.streams()),
      saved_indexes_(geometry_.streams()),
      pieces_end_(geometry_.streams(), 0) {}

Store::~Store() {
  for (auto& [segment, fd] : read_fds_) ::close(fd);
}

Result<std::unique_ptr<Store>> Store::Create(const std::string& path, const Geometry& geometry,
                                             const StoreOptions& options) {
  if (options.read_only) return Status::InvalidArgument("cannot create a store read-only");
  MSA_RETURN_IF_ERROR(geometry.Validate());
  MSA_RETURN_IF_ERROR(MakeDirectory(path));
  if (IsDirectory(CatalogDir(path))) return Status::AlreadyExists(path + " already holds an msa store");
  MSA_RETURN_IF_ERROR(MakeDirectory(SegmentDir(path)));
  // The catalog is built under a temporary name and renamed into place once
  // its geometry is durable: a crash during creation leaves no half-made
  // store (a catalog without geometry), only a leftover that the next
  // Create removes.
  const std::string staging = CatalogDir(path) + ".creating";
  std::error_code ec;
  std::filesystem::remove_all(staging, ec);
  if (ec) return Status::IOError("remove leftover " + staging + ": " + ec.message());
  {
    MSA_ASSIGN_OR_RETURN(auto catalog, Catalog::Create(staging, geometry));
  }
  if (::rename(staging.c_str(), CatalogDir(path).c_str()) != 0) {
    return Status::FromErrno("rename " + staging + " to " + CatalogDir(path), errno);
  }
  MSA_RETURN_IF_ERROR(io::SyncDirectory(path));
  return Open(path, options);  // the one way a store comes up
}

Result<std::unique_ptr<Store>> Store::Open(const std::string& path, const StoreOptions& options) {
  if (!IsDirectory(CatalogDir(path))) {
    return Status::NotFound(path + " is not an msa store (no catalog/ directory)");
  }
  const auto t0 = Clock::now();
  auto catalog = Catalog::Open(CatalogDir(path), options.read_only);
  if (!catalog.ok()) return catalog.status().WithContext("open store " + path);
  spdlog::debug("{}: catalog (RocksDB) opened in {:.1f} ms", path, MsSince(t0));
  std::unique_ptr<Store> store(new Store(path, std::move(catalog).value(), options));
  MSA_RETURN_IF_ERROR(store->Load().WithContext("open store " + path));
  return store;
}

Status Store::ReadBlockDirectory() {
  for (uint32_t layer = 0; layer < geometry_.layers; ++layer) {
    for (uint32_t head = 0; head < geometry_.kv_heads; ++head) {
      auto& dir = directory_[geometry_.StreamOf(layer, head)];
      dir.reserve(committed_.blocks_per_stream);
      MSA_RETURN_IF_ERROR(catalog_->ScanBlocks(layer, head, [&](uint64_t block, const BlockLocation& loc) {
        if (block != dir.size()) {
          return Status::Corruption("block directory of layer " + std::to_string(layer) +
                                    " kv-head " + std::to_string(head) + " skips block " +
                                    std::to_string(dir.size()));
        }
        const bool compacted_away = loc.segment == 0;  // a deleted document's, removed
        if (loc.tokens == 0 || loc.tokens > geometry_.block_tokens ||
            (!compacted_away && loc.record_bytes == 0) || loc.offset % io::kIoAlignment != 0) {
          return Status::Corruption("block " + std::to_string(block) + " of layer " +
                                    std::to_string(layer) + " kv-head " + std::to_string(head) +
                                    " has an impossible location (tokens " +
                                    std::to_string(loc.tokens) + ", offset " +
                                    std::to_string(loc.offset) + ")");
        }
        dir.push_back(loc);
        return Status::OK();
      }));
      if (dir.size() != committed_.blocks_per_stream) {
        return Status::Corruption("layer " + std::to_string(layer) + " kv-head " + std::to_string(head) +
                                  " has " + std::to_string(dir.size()) + " blocks; the catalog says " +
                                  std::to_string(committed_.blocks_per_stream));
      }
    }
  }
  return Status::OK();
}

Status Store::LoadSummaries(uint64_t* pieces_blocks) {
  std::vector<float> summaries;
  for (uint32_t layer = 0; layer < geometry_.layers; ++layer) {
    for (uint32_t head = 0; head < geometry_.kv_heads; ++head) {
      const uint32_t stream = geometry_.StreamOf(layer, head);
      // Saved pieces first (one sequential read each, then mapped), then the
      // rest record by record from the catalog into memory reserved for it,
      // in batches: the whole stream's float summaries at once would be
      // gigabytes at 100M tokens.
      constexpr uint64_t kBatch = 4096;
      uint64_t count = LoadSummaryPieces(stream);
      const uint64_t from_pieces = count;
      router_.Reserve(stream, committed_.blocks_per_stream - std::min(count, committed_.blocks_per_stream));
      summaries.clear();
      MSA_RETURN_IF_ERROR(catalog_->ScanSummaries(
          layer, head,
          [&](uint64_t block, std::span<const float> s) {
            if (block != count++) return Status::Corruption("summaries skip a block");
            summaries.insert(summaries.end(), s.begin(), s.end());
            if ((count - from_pieces) % kBatch == 0) {
              router_.Add(stream, summaries);
              summaries.clear();
            }
            return Status::OK();
          },
          from_pieces));
      *pieces_blocks += from_pieces;
      if (count != committed_.blocks_per_stream) {
        return Status::Corruption("layer " + std::to_string(layer) + " kv-head " + std::to_string(head) +
                                  " has " + std::to_string(count) + " summaries; the catalog says " +
                                  std::to_string(committed_.blocks_per_stream) + " blocks");
      }
      router_.Add(stream, summaries);
    }
  }
  return Status::OK();
}

Status Store::Load() {
  const auto t0 = Clock::now();
  MSA_ASSIGN_OR_RETURN(committed_, catalog_->ReadCounters());
  // The block directory and the summaries are independent: the directory
  // (a RocksDB scan, ~1 s at 1e8 tokens) is read on a thread of its own
  // while this one loads the summaries (reads, checksums, the sketch).
  Status directory_status;
  double directory_ms = 0;
  std::jthread directory_reader([&] {
    const auto start = Clock::now();
    try {
      directory_status = ReadBlockDirectory();
    } catch (const std::exception& e) {  // out of memory: the open fails, the process lives
      directory_status = Status::Internal(std::string("reading the block directory: ") + e.what());
    }
    directory_ms = MsSince(start);
  });
  uint64_t pieces_blocks = 0;
  const Status summaries_status = LoadSummaries(&pieces_blocks);
  const double summaries_ms = MsSince(t0);
  directory_reader.join();
  MSA_RETURN_IF_ERROR(directory_status);
  MSA_RETURN_IF_ERROR(summaries_status);
  spdlog::debug("{}: block directory read in {:.1f} ms, summaries in {:.1f} ms (at once; {} blocks from saved pieces)",
                path_, directory_ms, summaries_ms, pieces_blocks);
  MSA_ASSIGN_OR_RETURN(const auto docs, catalog_->ListDocuments());
  for (const DocumentRecord& doc : docs) doc_blocks_[doc.id] = {doc.first_block, doc.blocks};
  live_ranges_ = LiveRanges(doc_blocks_);
  LoadRouterIndexes();
  RefreshRouterIndexes();
  spdlog::info("opened {}: {} documents, {} tokens per stream, router rebuilt in {:.1f} ms",
               path_, committed_.documents, committed_.tokens, MsSince(t0));
  staged_ = committed_;
  if (!options_.read_only) {
    SaveSummaryPieces();  // a store from before pieces, or one whose piece was damaged
    RemoveOrphanSegments();
    MSA_ASSIGN_OR_RETURN(const uint64_t len, catalog_->ReadSegmentLength(committed_.active_segment));
    MSA_RETURN_IF_ERROR(OpenWriter(committed_.active_segment, len));
  }
  return Status::OK();
}

Status Store::FlushCatalog() { return catalog_->Flush(); }  // NotSupported when read-only

void Store::RemoveOrphanSegments() {
  auto segments = catalog_->ListSegments();
  if (!segments.ok()) {
    spdlog::warn("{}: not looking for leftover segments: {}", path_, segments.status().ToString());
    return;
  }
  std::set<uint32_t> referenced = {committed_.active_segment};
  for (const auto& [segment, length] : *segments) referenced.insert(segment);
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator(SegmentDir(path_), ec)) {
    const std::string name = entry.path().filename().string();
    char* end = nullptr;
    const unsigned long n = std::strtoul(name.c_str(), &end, 10);
    if (end == name.c_str() || std::string(end) != ".seg" || referenced.count(static_cast<uint32_t>(n))) {
      continue;
    }
    if (::unlink(entry.path().c_str()) == 0) {
      spdlog::info("{}: removed {}, which no commit references (an interrupted compaction or rollover)",
                   path_, entry.path().string());
    } else {
      spdlog::warn("{}: could not remove unreferenced {}: {}", path_, entry.path().string(),
                   std::strerror(errno));
    }
  }
}

std::vector<std::pair<uint64_t, uint64_t>> Store::LiveRanges(
    const std::map<uint64_t, std::pair<uint64_t, uint64_t>>& docs) {
  // Document ids grow with their blocks, so the map's order is block order.
  std::vector<std::pair<uint64_t, uint64_t>> ranges;
  for (const auto& [id, blocks] : docs) {
    const uint64_t first = blocks.first, end = blocks.first + blocks.second;
    if (!ranges.empty() && ranges.back().second == first) {
      ranges.back().second = end;
    } else {
      ranges.emplace_back(first, end);
    }
  }
  return ranges;
}

Status Store::RollOverIfFull(size_t bytes) {
  if (writer_->length() == 0 || writer_->length() + bytes <= options_.segment_bytes) return Status::OK();
  // Roll over: the full segment is synced at the next commit. The next
  // writer is opened before the current one is retired, so a failure here
  // leaves the writer as it was.
  const uint32_t next = staged_.active_segment + 1;
  MSA_ASSIGN_OR_RETURN(auto next_writer, io::SegmentWriter::Open(SegmentPath(path_, next), 0, PreallocateBytes()));
  dirty_segments_[staged_.active_segment] = writer_.get();
  retired_writers_.push_back(std::move(writer_));
  writer_ = std::move(next_writer);
  staged_.active_segment = next;
  return Status::OK();
}

Status Store::AppendRecord(std::span<const uint8_t> record, uint32_t* segment, uint64_t* offset) {
  MSA_RETURN_IF_ERROR(RollOverIfFull(record.size()));
  MSA_ASSIGN_OR_RETURN(*offset, writer_->Append(record.data(), record.size()));
  dirty_segments_[staged_.active_segment] = writer_.get();
  *segment = staged_.active_segment;
  return Status::OK();
}

Status Store::AppendRecords(const uint8_t* data, std::span<const uint32_t> record_bytes,
                            uint32_t* segments, uint64_t* offsets) {
  // The same placement as AppendRecord one record at a time (a record that
  // does not fit the active segment starts the next), in one write per run
  // of records that share a segment.
  size_t i = 0;
  while (i < record_bytes.size()) {
    MSA_RETURN_IF_ERROR(RollOverIfFull(record_bytes[i]));
    const uint64_t start = writer_->length();
    uint64_t run = 0;
    size_t j = i;
    do {
      segments[j] = staged_.active_segment;
      offsets[j] = start + run;
      run += io::AlignUp(record_bytes[j]);
      ++j;
    } while (j < record_bytes.size() && start + run + record_bytes[j] <= options_.segment_bytes);
    MSA_ASSIGN_OR_RETURN(const uint64_t at, writer_->AppendPadded(data, run));
    if (at != start) return Status::Internal("segment writer appended at an unexpected offset");
    dirty_segments_[staged_.active_segment] = writer_.get();
    data += run;
    i = j;
  }
  return Status::OK();
}

Status Store::OpenWriter(uint32_t segment, uint64_t committed_length) {
  MSA_ASSIGN_OR_RETURN(writer_, io::SegmentWriter::Open(SegmentPath(path_, segment), committed_length,
                                                         PreallocateBytes()));
  return Status::OK();
}

unsigned Store::EncodeThreads() const {
  if (options_.encode_threads > 0) return options_.encode_threads;
  return std::max(1u, std::thread::hardware_concurrency());
}

uint64_t Store::PreallocateBytes() const {
  // Reserving a whole segment (1 GiB by default) for every store, however
  // small, filled this machine's disk when a test suite made a few dozen
  // stores; the first 64 MiB keeps a large ingest's first extent
  // contiguous, and beyond it appends allocate as they go.
  constexpr uint64_t kPreallocateLimit = 64ull << 20;
  return std::min(options_.segment_bytes, kPreallocateLimit);
}

Result<uint64_t> Store::AppendDocument(const std::string& name, const DocumentKV& kv) {
  return AppendDocument(name, kv, DocumentTokens{});
}

Result<uint64_t> Store::AppendDocument(const std::string& name, const DocumentKV& kv,
                                       const DocumentTokens& tokens) {
  if (options_.read_only) return Status::InvalidArgument("store " + path_ + " is open read-only");
  std::lock_guard<std::mutex> lock(write_mu_);
  MSA_RETURN_IF_ERROR(write_error_);
  if (name.empty()) return Status::InvalidArgument("document name is empty");
  if (kv.tokens == 0) return Status::InvalidArgument("document " + name + " has no tokens");
  MSA_RETURN_IF_ERROR(ValidateDocumentTokens(tokens, kv.tokens).WithContext("document " + name));
  if (kv.keys == nullptr || kv.values == nullptr) {
    return Status::InvalidArgument("document " + name + ": keys or values is null");
  }
  MSA_ASSIGN_OR_RETURN(auto existing, catalog_->FindDocument(name));
  if (existing.has_value() || staged_names_.count(name)) {
    return Status::AlreadyExists("document '" + name + "' already exists");
  }
  const Geometry& g = geometry_;
  const uint64_t bt = g.block_tokens;
  const uint64_t d = g.head_dim;
  // The caller's arrays hold streams * tokens * head_dim elements of up to 4
  // bytes; a token count whose byte size overflows cannot describe them.
  const uint64_t max_tokens = std::numeric_limits<uint64_t>::max() / (4ull * g.streams() * d);
  if (kv.tokens > max_tokens) {
    return Status::InvalidArgument("document " + name + ": " + std::to_string(kv.tokens) +
                                   " tokens is more than any array can hold");
  }
  const uint64_t n_blocks = (kv.tokens + bt - 1) / bt;
  const uint64_t width = g.summary_width();
  const uint64_t first_block = staged_.blocks_per_stream;
  const uint64_t doc_id = staged_.next_doc_id;

  // Encode first, write second: a failure part-way leaves nothing staged.
  // The encoding (quantisation or zstd, and the summaries) is the CPU-bound
  // part of ingest and runs on several threads, each over a contiguous run
  // of items (item = stream * n_blocks + block) into its own buffer of
  // records laid out as the segment will hold them (each padded with zeros
  // to 4096 bytes), so the runs go to disk in a few large writes, in item
  // order: the layout does not depend on the thread count. The buffers are
  // kept for the next document (no page faults and zeroing per document).
  const uint64_t items = uint64_t{g.streams()} * n_blocks;
  const size_t max_record = io::AlignUp(
      kBlockRecordHeaderSize +
      std::max<size_t>(FixedPayloadBytes(g.codec, g.block_tokens, g.head_dim), 4 * bt * d));
  std::vector<uint32_t> record_bytes(items), block_tokens(items);
  std::vector<uint64_t> checksums(items);
  // Summaries go straight to their staged place; cut back on failure.
  std::vector<size_t> summaries_before(g.streams());
  for (uint32_t stream = 0; stream < g.streams(); ++stream) {
    summaries_before[stream] = staged_summaries_[stream].size();
    staged_summaries_[stream].resize(summaries_before[stream] + n_blocks * width);
  }
  auto unstage_summaries = [&] {
    for (uint32_t stream = 0; stream < g.streams(); ++stream) {
      staged_summaries_[stream].resize(summaries_before[stream]);
    }
  };
  const unsigned threads = static_cast<unsigned>(
      std::min<uint64_t>(EncodeThreads(), std::max<uint64_t>(1, items / kBlocksPerEncodeThread)));
  if (encode_buffers_.size() < threads) encode_buffers_.resize(threads);
  const bool quantised = g.codec == Codec::kInt8 || g.codec == Codec::kInt4;
  auto encode_range = [&](unsigned thread, uint64_t from, uint64_t to) -> Status {
    try {
      io::AlignedBuffer& out = encode_buffers_[thread];
      if (out.size() < (to - from) * max_record) out = io::AlignedBuffer((to - from) * max_record);
      uint8_t* at_out = out.data();
      std::vector<float> kin(bt * d), vin(bt * d), kf(bt * d);
      BlockEncoder encoder;
      for (uint64_t item = from; item < to; ++item) {
        const uint32_t stream = static_cast<uint32_t>(item / n_blocks);
        const uint64_t b = item % n_blocks, t0 = b * bt;
        const uint32_t tokens = static_cast<uint32_t>(std::min<uint64_t>(bt, kv.tokens - t0));
        const size_t count = static_cast<size_t>(tokens) * d;
        const size_t at = static_cast<size_t>(stream) * kv.tokens * d + t0 * d;
        WidenToFloat(kv.keys, kv.dtype, at, count, kin.data());
        WidenToFloat(kv.values, kv.dtype, at, count, vin.data());
        const BlockId id{stream / g.kv_heads, stream % g.kv_heads, first_block + b};
        if (!quantised) {
          // A NaN or infinity (or, for f16, a value past its range) would be
          // stored as given and poison every attention over its block.
          for (const auto& [part, x] : {std::pair<const char*, const float*>{"keys", kin.data()}, {"values", vin.data()}}) {
            const size_t i = FirstUnstorable(g.codec, x, count);
            if (i < count) {
              return Status::InvalidArgument(
                  "document " + name + ": " + part + " of layer " + std::to_string(id.layer) + " kv-head " +
                  std::to_string(id.kv_head) + " token " + std::to_string(t0 + i / d) + " channel " +
                  std::to_string(i % d) + " is " + std::to_string(x[i]) +
                  (g.codec == Codec::kF16ShuffleZstd ? "; the f16 codec stores finite values up to 65504 (bf16 stores larger ones)"
                                                     : "; K/V must be finite"));
            }
          }
        }
        BlockRecordHeader header;
        auto record = encoder.Encode(g.codec, id, tokens, g.head_dim, kin.data(), vin.data(),
                                     &header, kf.data());
        if (!record.ok()) return record.status().WithContext("document " + name);
        const size_t padded = io::AlignUp(record->size());
        std::memcpy(at_out, record->data(), record->size());
        std::memset(at_out + record->size(), 0, padded - record->size());
        at_out += padded;
        record_bytes[item] = static_cast<uint32_t>(record->size());
        checksums[item] = header.checksum;
        block_tokens[item] = tokens;
        // Summary, from the keys as stored (what attention will see).
        Summarize(g, kf.data(), tokens, staged_summaries_[stream].data() + summaries_before[stream] + b * width);
      }
      return Status::OK();
    } catch (const std::exception& e) {
      return Status::Internal("document " + name + ": encoding failed: " + e.what());
    }
  };
  std::vector<uint64_t> run_from(threads + 1);
  for (unsigned t = 0; t <= threads; ++t) run_from[t] = items * t / threads;
  {
    std::vector<Status> results(threads);
    std::vector<std::thread> pool;
    for (unsigned t = 1; t < threads; ++t) {
      pool.emplace_back([&, t] { results[t] = encode_range(t, run_from[t], run_from[t + 1]); });
    }
    results[0] = encode_range(0, run_from[0], run_from[1]);  // the calling thread takes the first run
    for (auto& th : pool) th.join();
    for (const Status& r : results) {
      if (!r.ok()) {
        unstage_summaries();
        return r;
      }
    }
  }
  std::vector<std::vector<BlockLocation>> locations(g.streams());
  for (uint32_t stream = 0; stream < g.streams(); ++stream) locations[stream].reserve(n_blocks);
  for (unsigned t = 0; t < threads; ++t) {
    const uint64_t from = run_from[t], to = run_from[t + 1];
    std::vector<uint64_t> offsets(to - from);
    std::vector<uint32_t> segments(to - from);
    Status written = AppendRecords(encode_buffers_[t].data(), std::span<const uint32_t>(&record_bytes[from], to - from),
                                   segments.data(), offsets.data());
    if (!written.ok()) {
      unstage_summaries();
      return written;
    }
    for (uint64_t item = from; item < to; ++item) {
      BlockLocation loc;
      loc.segment = segments[item - from];
      loc.offset = offsets[item - from];
      loc.record_bytes = record_bytes[item];
      loc.tokens = block_tokens[item];
      loc.checksum = checksums[item];
      loc.doc_id = doc_id;
      loc.first_position = (item % n_blocks) * bt;
      loc.codec = g.codec;
      locations[item / n_blocks].push_back(loc);
    }
  }
  writer_->StartWriteback();  // the disk works while the next document is encoded
  // Stage: everything below is in memory and cannot fail.
  if (!batch_) batch_ = std::make_unique<Catalog::Batch>();
  for (uint32_t stream = 0; stream < g.streams(); ++stream) {
    const BlockId base{stream / g.kv_heads, stream % g.kv_heads, 0};
    const float* summaries = staged_summaries_[stream].data() + summaries_before[stream];
    for (size_t j = 0; j < locations[stream].size(); ++j) {
      BlockId id = base;
      id.block = first_block + j;
      batch_->PutBlock(id, locations[stream][j], std::span<const float>(summaries + j * width, width),
                       catalog_->half_summaries());
    }
    auto& sl = staged_locations_[stream];
    sl.insert(sl.end(), locations[stream].begin(), locations[stream].end());
  }
  DocumentRecord doc{doc_id, name, kv.tokens, first_block, n_blocks};
  batch_->PutDocument(doc);
  if (!tokens.empty()) batch_->PutDocumentTokens(doc_id, tokens);
  staged_names_[name] = doc_id;
  staged_docs_[doc_id] = {first_block, n_blocks};
  staged_.next_doc_id++;
  staged_.blocks_per_stream += n_blocks;
  staged_.tokens += kv.tokens;
  staged_.documents++;
  return doc_id;
}

Status Store::DeleteDocument(uint64_t id) {
  if (options_.read_only) return Status::InvalidArgument("store " + path_ + " is open read-only");
  std::lock_guard<std::mutex> lock(write_mu_);
  MSA_RETURN_IF_ERROR(write_error_);
  // doc_blocks_ changes only under write_mu_ (held), so it is read unlocked.
  if (!doc_blocks_.count(id) || staged_deletions_.count(id)) {
    return Status::NotFound("document id " + std::to_string(id) + " is not a committed document of " +
                            path_ + (staged_deletions_.count(id) ? " (its deletion is staged)" : ""));
  }
  MSA_ASSIGN_OR_RETURN(auto doc, catalog_->ReadDocument(id));
  if (!doc.has_value()) {
    return Status::Corruption("document id " + std::to_string(id) + " is live in " + path_ +
                              " but has no catalog record");
  }
  if (!batch_) batch_ = std::make_unique<Catalog::Batch>();
  batch_->DeleteDocument(*doc);
  staged_.documents--;
  staged_.tokens -= doc->tokens;
  staged_deletions_.emplace(id, std::move(*doc));
  return Status::OK();
}

Result<std::vector<DocumentRecord>> Store::ListDeletedDocuments() const {
  return catalog_->ListDeletedDocuments();
}

Status Store::Commit() {
  if (options_.read_only) return Status::InvalidArgument("store " + path_ + " is open read-only");
  std::lock_guard<std::mutex> lock(write_mu_);
  MSA_RETURN_IF_ERROR(write_error_);
  if (!batch_) return Status::OK();  // nothing staged
  // 1. Payloads durable.
  for (auto& [segment, writer] : dirty_segments_) {
    Status s = writer->Sync();
    if (!s.ok()) {
      write_error_ = s.WithContext("commit failed; reopen the store");
      return write_error_;
    }
    batch_->PutSegmentLength(segment, writer->length());
  }
  // 2. One synced catalog batch: the commit point.
  batch_->PutCounters(staged_);
  Status s = catalog_->Commit(*batch_);
  if (!s.ok()) {
    write_error_ = s.WithContext("commit failed; reopen the store");
    return write_error_;
  }
  // 3. Publish to queries. The commit is durable now; publishing must not
  // fail half-way, so every allocation (the reserves, the new live ranges)
  // happens before the first change, and a failure of it (out of memory) changes nothing
  // visible and refuses further writes: the store is then consistent on
  // disk, and a reopen shows the commit. The reserves need the exclusive
  // lock too: they reallocate the vectors that queries read under the
  // shared lock (a data race and use-after-free found by
  // tests/concurrency_test.cc under ThreadSanitizer).
  {
    std::vector<std::pair<uint64_t, uint64_t>> live_ranges;
    std::unique_lock<std::shared_mutex> state(state_mu_, std::defer_lock);
    try {
      // doc_blocks_ changes only under write_mu_ (held): computed unlocked.
      if (staged_deletions_.empty()) {
        live_ranges = live_ranges_;
        for (const auto& [id, blocks] : staged_docs_) {  // appended in block order
          if (!live_ranges.empty() && live_ranges.back().second == blocks.first) {
            live_ranges.back().second = blocks.first + blocks.second;
          } else {
            live_ranges.emplace_back(blocks.first, blocks.first + blocks.second);
          }
        }
      } else {
        auto docs = doc_blocks_;
        for (const auto& [id, blocks] : staged_docs_) docs[id] = blocks;
        for (const auto& [id, doc] : staged_deletions_) docs.erase(id);
        live_ranges = LiveRanges(docs);
      }
      state.lock();
      for (uint32_t stream = 0; stream < geometry_.streams(); ++stream) {
        directory_[stream].reserve(directory_[stream].size() + staged_locations_[stream].size());
        router_.Reserve(stream, staged_locations_[stream].size());
      }
    } catch (const std::exception& e) {
      write_error_ = Status::Internal(std::string("commit is durable but could not be published (") +
                                      e.what() + "); reopen the store");
      return write_error_;
    }
    for (uint32_t stream = 0; stream < geometry_.streams(); ++stream) {
      auto& dir = directory_[stream];
      dir.insert(dir.end(), staged_locations_[stream].begin(), staged_locations_[stream].end());
      router_.Add(stream, staged_summaries_[stream]);
      staged_locations_[stream].clear();
      staged_summaries_[stream].clear();
    }
    doc_blocks_.merge(staged_docs_);  // moves the nodes: allocates nothing
    for (const auto& [id, doc] : staged_deletions_) doc_blocks_.erase(id);
    live_ranges_.swap(live_ranges);
    committed_ = staged_;
  }
  staged_deletions_.clear();
  batch_.reset();
  dirty_segments_.clear();
  retired_writers_.clear();
  staged_names_.clear();
  RefreshRouterIndexes();
  SaveSummaryPieces();
  return Status::OK();
}

Status Store::Compact(CompactStats* out, const ProgressFn& progress) {
  if (options_.read_only) return Status::InvalidArgument("store " + path_ + " is open read-only");
  std::lock_guard<std::mutex> lock(write_mu_);
  MSA_RETURN_IF_ERROR(write_error_);
  if (batch_) {
    return Status::InvalidArgument("compact " + path_ +
                                   ": documents or deletions are staged; commit them first");
  }
  CompactStats stats;
  const Geometry& g = geometry_;
  // 1. The segments holding a record of a deleted document. directory_
  // changes only under write_mu_ (held), so it is read unlocked.
  MSA_ASSIGN_OR_RETURN(const auto deleted, catalog_->ListDeletedDocuments());
  std::vector<std::pair<uint64_t, uint64_t>> dead_ranges;
  for (const DocumentRecord& doc : deleted) dead_ranges.emplace_back(doc.first_block, doc.first_block + doc.blocks);
  std::sort(dead_ranges.begin(), dead_ranges.end());
  auto is_dead = [&](uint64_t b) {
    auto it = std::upper_bound(dead_ranges.begin(), dead_ranges.end(), std::make_pair(b, UINT64_MAX));
    return it != dead_ranges.begin() && b < std::prev(it)->second;
  };
  std::set<uint32_t> victims;
  for (uint32_t stream = 0; stream < g.streams(); ++stream) {
    for (const auto& [first, end] : dead_ranges) {
      for (uint64_t b = first; b < end && b < directory_[stream].size(); ++b) {
        if (directory_[stream][b].segment != 0) victims.insert(directory_[stream][b].segment);
      }
    }
  }
  if (victims.empty()) {
    if (out) *out = stats;
    return Status::OK();
  }
  // Any failure from here on leaves bytes in the active segment that no
  // commit references: refuse writes until reopened (which cuts them off),
  // as after a failed commit. The committed state is untouched.
  auto fail = [&](Status s) {
    write_error_ = s.WithContext("compaction failed; reopen the store");
    return write_error_;
  };
  // 2. Never copy into a segment that is about to go.
  if (victims.count(staged_.active_segment)) {
    const uint32_t next = staged_.active_segment + 1;
    auto next_writer = io::SegmentWriter::Open(SegmentPath(path_, next), 0, PreallocateBytes());
    if (!next_writer.ok()) return fail(next_writer.status());
    retired_writers_.push_back(std::move(writer_));  // nothing uncommitted in it
    writer_ = std::move(*next_writer);
    staged_.active_segment = next;
  }
  // 3. Copy the live records of the victims, unchanged (header, payload and
  // checksum), checking each against the catalog on the way.
  struct Move {
    uint32_t stream;
    uint64_t block;
    BlockLocation loc;
  };
  std::vector<Move> moves;
  std::vector<Move> batch;
  auto copy_batch = [&]() -> Status {
    uint64_t total = 0;
    for (const Move& m : batch) total += io::AlignUp(m.loc.record_bytes);
    io::AlignedBuffer buffer(total);
    std::vector<io::ReadRequest> requests;
    uint64_t at = 0;
    for (const Move& m : batch) {
      MSA_ASSIGN_OR_RETURN(const int fd, SegmentFd(m.loc.segment));
      const uint32_t padded = static_cast<uint32_t>(io::AlignUp(m.loc.record_bytes));
      requests.push_back(io::ReadRequest{fd, m.loc.offset, padded, buffer.data() + at});
      at += padded;
    }
    Status read = reader_->ReadAll(requests);
    if (!read.ok()) {
      if (reader_->abandoned()) buffer.Leak();
      return read.WithContext("compaction reading " + SegmentDir(path_));
    }
    for (size_t i = 0; i < batch.size(); ++i) {
      Move m = batch[i];
      const std::span<const uint8_t> record(requests[i].dest, m.loc.record_bytes);
      const BlockId id{m.stream / g.kv_heads, m.stream % g.kv_heads, m.block};
      BlockRecordHeader h;
      MSA_RETURN_IF_ERROR(ParseBlockRecordHeader(record, &h).WithContext(DescribeBlock(id)));
      if (Checksum(record.data() + kBlockRecordHeaderSize, h.payload_bytes) != m.loc.checksum) {
        return Status::Corruption(DescribeBlock(id) + " (" + SegmentPath(path_, m.loc.segment) +
                                  " offset " + std::to_string(m.loc.offset) +
                                  "): checksum mismatch; not compacting (msa verify lists the damage)");
      }
      MSA_RETURN_IF_ERROR(AppendRecord(record, &m.loc.segment, &m.loc.offset));
      stats.bytes_moved += io::AlignUp(m.loc.record_bytes);
      moves.push_back(m);
    }
    batch.clear();
    return Status::OK();
  };
  std::vector<Move> drops;
  uint64_t scanned = 0;
  const uint64_t to_scan = uint64_t{g.streams()} * (directory_.empty() ? 0 : directory_[0].size());
  for (uint32_t stream = 0; stream < g.streams(); ++stream) {
    const auto& dir = directory_[stream];
    if (progress) progress(scanned, to_scan, stats.bytes_moved);
    scanned += dir.size();
    for (uint64_t b = 0; b < dir.size(); ++b) {
      if (dir[b].segment == 0 || !victims.count(dir[b].segment)) continue;
      if (is_dead(b)) {
        BlockLocation gone = dir[b];
        gone.segment = 0;
        gone.offset = 0;
        gone.record_bytes = 0;
        drops.push_back({stream, b, gone});
        continue;
      }
      batch.push_back({stream, b, dir[b]});
      if (batch.size() == 256) {
        Status s = copy_batch();
        if (!s.ok()) return fail(s);
        if (progress) progress(scanned - dir.size() + b + 1, to_scan, stats.bytes_moved);
      }
    }
  }
  if (Status s = copy_batch(); !s.ok()) return fail(s);
  if (progress) progress(to_scan, to_scan, stats.bytes_moved);
  // 4. The copies durable, then one catalog batch: the new locations, the
  // dropped records, the victims forgotten. The commit point.
  Catalog::Batch cb;
  for (auto& [segment, writer] : dirty_segments_) {
    if (Status s = writer->Sync(); !s.ok()) return fail(s);
    cb.PutSegmentLength(segment, writer->length());
  }
  for (const Move& m : moves) cb.PutBlockLocation({m.stream / g.kv_heads, m.stream % g.kv_heads, m.block}, m.loc);
  for (const Move& m : drops) cb.PutBlockLocation({m.stream / g.kv_heads, m.stream % g.kv_heads, m.block}, m.loc);
  for (uint32_t segment : victims) cb.DeleteSegmentLength(segment);
  cb.PutCounters(staged_);
  if (Status s = catalog_->Commit(cb); !s.ok()) return fail(s);
  dirty_segments_.clear();
  retired_writers_.clear();
  // 5. Publish (assignments in place, nothing allocated), then remove the
  // victims once no query planned with the old layout still reads them.
  // Taking io_mu_ while holding state_mu_ stops new queries from planning
  // meanwhile, so a steady stream of queries cannot starve the compaction.
  {
    std::unique_lock<std::shared_mutex> state(state_mu_);
    for (const Move& m : moves) directory_[m.stream][m.block] = m.loc;
    for (const Move& m : drops) directory_[m.stream][m.block] = m.loc;
    committed_ = staged_;
    std::unique_lock<std::shared_mutex> io(io_mu_);
    state.unlock();
    std::lock_guard<std::mutex> fds(fd_mu_);
    for (uint32_t segment : victims) {
      auto it = read_fds_.find(segment);
      if (it != read_fds_.end()) {
        // Out of the ring's file table first: its reference would keep the
        // unlinked file's space, and the descriptor number may be reused.
        reader_->ForgetFile(it->second);
        ::close(it->second);
        read_fds_.erase(it);
      }
      const std::string file = SegmentPath(path_, segment);
      struct stat st;
      if (::stat(file.c_str(), &st) == 0) stats.bytes_reclaimed += static_cast<uint64_t>(st.st_blocks) * 512;
      if (::unlink(file.c_str()) != 0) {
        // Committed without it; the next open for writing tries again.
        spdlog::warn("compaction: could not remove {}: {}", file, std::strerror(errno));
      }
    }
  }
  stats.segments_removed = victims.size();
  stats.blocks_moved = moves.size();
  stats.blocks_dropped = drops.size();
  spdlog::info("compacted {}: {} segments removed ({} bytes), {} live blocks moved, {} deleted blocks dropped",
               path_, stats.segments_removed, stats.bytes_reclaimed, stats.blocks_moved, stats.blocks_dropped);
  if (out) *out = stats;
  return Status::OK();
}

void Store::RefreshRouterIndexes() {
  for (uint32_t stream = 0; stream < geometry_.streams(); ++stream) {
    bool trained = false;
    try {
      const auto t0 = Clock::now();
      trained = router_.RefreshIndex(stream, state_mu_);  // slow; queries go on meanwhile
      if (trained) {
        spdlog::info("router: stream {} ({} blocks) indexed with IVF in {:.0f} ms", stream,
                     router_.blocks(stream), MsSince(t0));
      }
    } catch (const std::exception& e) {
      spdlog::warn("router: building the IVF index of stream {} failed ({}); scanning it exactly",
                   stream, e.what());
    }
    if (options_.read_only || !router_.has_ivf(stream)) continue;
    const RouterIndexRecord& saved = saved_indexes_[stream];
    const bool grown = router_.blocks(stream) >= saved.blocks + std::max<uint64_t>(1, saved.blocks / 8);
    if (trained || saved.generation == 0 || grown) {
      Status st = SaveRouterIndex(stream);
      if (!st.ok()) spdlog::warn("router: saving the index of stream {} failed: {}", stream, st.ToString());
    }
  }
}

std::string Store::RouterIndexPath(uint32_t stream, uint64_t generation) const {
  return path_ + "/router/" + std::to_string(stream) + "." + std::to_string(generation) + ".ivf";
}

Status Store::SaveRouterIndex(uint32_t stream) {
  MSA_ASSIGN_OR_RETURN(const std::vector<uint8_t> bytes, router_.SerializeIndex(stream));
  RouterIndexRecord rec;
  rec.generation = saved_indexes_[stream].generation + 1;
  rec.blocks = router_.blocks(stream);
  rec.trained_vectors = router_.trained_vectors(stream);
  rec.file_bytes = bytes.size();
  rec.checksum = Checksum(bytes.data(), bytes.size());
  MSA_RETURN_IF_ERROR(MakeDirectory(path_ + "/router"));
  MSA_RETURN_IF_ERROR(io::WriteFileAtomically(RouterIndexPath(stream, rec.generation), bytes.data(), bytes.size()));
  Catalog::Batch batch;
  batch.PutRouterIndex(stream, rec);
  MSA_RETURN_IF_ERROR(catalog_->Commit(batch));
  if (saved_indexes_[stream].generation != 0) {
    ::unlink(RouterIndexPath(stream, saved_indexes_[stream].generation).c_str());  // superseded
  }
  saved_indexes_[stream] = rec;
  return Status::OK();
}

std::string Store::SummaryPiecePath(uint32_t stream, uint64_t first_block) const {
  return path_ + "/summaries/" + std::to_string(stream) + "." + std::to_string(first_block) + ".f16";
}

uint64_t Store::LoadSummaryPieces(uint32_t stream) {
  auto pieces = catalog_->ListSummaryPieces(stream);
  if (!pieces.ok()) {
    spdlog::warn("{}: {}; reading stream {}'s summaries from the catalog", path_, pieces.status().ToString(),
                 stream);
    return 0;
  }
  const SummaryTable& table = router_.summaries(stream);
  uint64_t covered = 0;
  for (const SummaryPieceRecord& p : *pieces) {
    const std::string file = SummaryPiecePath(stream, p.first_block);
    Status st = [&]() -> Status {
      MSA_RETURN_IF_ERROR(CheckSummaryPieceRecord(p, covered, committed_.blocks_per_stream, table.chunk_bytes()));
      // Read through once (the checksum against the record; a read error
      // a Status now), then mapped from the same descriptor: the router's
      // table keeps the page cache's pages, with no copy into fresh memory.
      ChecksumStream sum;
      auto mapped = TableMemory::MapFile(file, p.file_bytes, [&](const uint8_t* data, size_t n) { sum.Update(data, n); });
      if (mapped.ok()) {
        if (sum.Digest() != p.checksum) return Status::Corruption(kDamaged);
        router_.AddMappedChunks(stream, std::move(mapped).value());
        return Status::OK();
      }
      if (mapped.status().code() != Status::Code::kNotSupported) return mapped.status();
      // The kernel would not map it: copied instead.
      spdlog::debug("{}; copying it", mapped.status().ToString());
      MSA_ASSIGN_OR_RETURN(const std::vector<uint8_t> bytes, ReadRecordedFile(file, p.file_bytes, p.checksum));
      router_.AddChunks(stream, reinterpret_cast<const uint16_t*>(bytes.data()), p.blocks / SummaryTable::kChunkBlocks);
      return Status::OK();
    }();
    if (!st.ok()) {
      spdlog::warn("{}: summary piece {} is unusable ({}); reading its summaries from the catalog", path_, file,
                   st.ToString());
      break;
    }
    covered += p.blocks;
  }
  pieces_end_[stream] = covered;
  return covered;
}

void Store::SaveSummaryPieces() {
  const uint64_t per = (options_.summary_piece_blocks + SummaryTable::kChunkBlocks - 1) /
                       SummaryTable::kChunkBlocks * SummaryTable::kChunkBlocks;
  if (options_.read_only || per == 0) return;
  for (uint32_t stream = 0; stream < geometry_.streams(); ++stream) {
    const uint64_t blocks = router_.blocks(stream);
    if (blocks < pieces_end_[stream] + per) continue;
    const SummaryTable& table = router_.summaries(stream);
    Status st = [&]() -> Status {
      MSA_RETURN_IF_ERROR(MakeDirectory(path_ + "/summaries"));
      Catalog::Batch batch;
      // Records past what was loaded (a damaged piece, or another piece
      // size) are replaced.
      MSA_ASSIGN_OR_RETURN(const auto existing, catalog_->ListSummaryPieces(stream));
      std::vector<uint64_t> stale;
      for (const SummaryPieceRecord& p : existing) {
        if (p.first_block >= pieces_end_[stream]) stale.push_back(p.first_block);
      }
      for (uint64_t first : stale) batch.DeleteSummaryPiece(stream, first);
      uint64_t end = pieces_end_[stream];
      std::vector<uint8_t> bytes;
      for (; blocks >= end + per; end += per) {
        const size_t first_chunk = end / SummaryTable::kChunkBlocks;
        const size_t chunks = per / SummaryTable::kChunkBlocks;
        bytes.resize(chunks * table.chunk_bytes());
        for (size_t c = 0; c < chunks; ++c) {
          std::memcpy(bytes.data() + c * table.chunk_bytes(), table.ChunkData(first_chunk + c), table.chunk_bytes());
        }
        MSA_RETURN_IF_ERROR(
            io::WriteFileAtomically(SummaryPiecePath(stream, end), bytes.data(), bytes.size()));
        batch.PutSummaryPiece(stream, SummaryPieceRecord{end, per, bytes.size(),
                                                         Checksum(bytes.data(), bytes.size())});
      }
      MSA_RETURN_IF_ERROR(catalog_->Commit(batch));
      for (uint64_t first : stale) {
        if (first >= end || (first - pieces_end_[stream]) % per != 0) {
          ::unlink(SummaryPiecePath(stream, first).c_str());  // not rewritten under its name
        }
      }
      std::unique_lock<std::shared_mutex> state(state_mu_);  // Stats() reads it
      pieces_end_[stream] = end;
      return Status::OK();
    }();
    if (!st.ok()) {
      spdlog::warn("{}: saving summary pieces of stream {} failed ({}); its summaries stay in the catalog, "
                   "retried at the next commit",
                   path_, stream, st.ToString());
    }
  }
}

void Store::LoadRouterIndexes() {
  for (uint32_t stream = 0; stream < geometry_.streams(); ++stream) {
    auto rec = catalog_->ReadRouterIndex(stream);
    if (!rec.ok()) {
      spdlog::warn("router: {}; rebuilding the index of stream {}", rec.status().ToString(), stream);
      continue;
    }
    if (!rec->has_value()) continue;
    const RouterIndexRecord& r = **rec;
    const std::string file = RouterIndexPath(stream, r.generation);
    Status st = [&]() -> Status {
      MSA_ASSIGN_OR_RETURN(const std::vector<uint8_t> bytes, ReadRecordedFile(file, r.file_bytes, r.checksum));
      return router_.LoadIndex(stream, bytes, r.blocks, r.trained_vectors);
    }();
    // Remembered even when unusable: the rebuilt index is saved under the
    // next generation, and this file is removed then.
    saved_indexes_[stream] = r;
    if (!st.ok()) {
      spdlog::warn("router: index file {} is unusable ({}); rebuilding it from the catalog", file,
                   st.ToString());
    }
  }
  if (options_.read_only) return;
  // Files no record names: left by a crash between writing and recording.
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator(path_ + "/router", ec)) {
    const std::string name = entry.path().filename().string();
    bool referenced = false;
    for (uint32_t stream = 0; stream < geometry_.streams(); ++stream) {
      referenced = referenced || (saved_indexes_[stream].generation != 0 &&
                                  RouterIndexPath(stream, saved_indexes_[stream].generation) ==
                                      path_ + "/router/" + name);
    }
    if (!referenced) std::filesystem::remove(entry.path(), ec);
  }
}

Result<int> Store::SegmentFd(uint32_t segment) const {
  std::lock_guard<std::mutex> lock(fd_mu_);
  auto it = read_fds_.find(segment);
  if (it != read_fds_.end()) return it->second;
  bool direct = false;
  MSA_ASSIGN_OR_RETURN(const int fd, io::OpenSegmentForRead(SegmentPath(path_, segment), &direct));
  if (!direct) {
    spdlog::warn("{}: the file system refuses O_DIRECT; reading through the page cache",
                 SegmentPath(path_, segment));
  }
  read_fds_[segment] = fd;
  reader_->RegisterFile(fd);  // forgotten before it is closed (Compact)
  return fd;
}

std::string Store::SegmentFilePath(uint32_t segment) const { return SegmentPath(path_, segment); }

Status Store::FetchBlocks(const std::vector<BlockId>& ids, const std::vector<BlockLocation>& locs,
                          float* keys, float* values, int32_t* len, AttendStats* stats,
                          bool use_cache, std::vector<std::shared_ptr<const CachedBlock>>* records) const {
  const auto t0 = Clock::now();
  const size_t d = geometry_.head_dim;
  const size_t block_elems = static_cast<size_t>(geometry_.block_tokens) * d;
  // 1. Cache hits are copied into their slots; the rest are read.
  std::vector<size_t> misses;
  std::vector<float> dequant_scratch;
  uint64_t hits = 0;
  for (size_t j = 0; j < ids.size(); ++j) {
    const uint32_t stream = geometry_.StreamOf(ids[j].layer, ids[j].kv_head);
    auto cached = use_cache ? cache_.Lookup(stream, ids[j].block) : nullptr;
    if (!cached || (records != nullptr && cached->Record().empty())) {
      misses.push_back(j);
      continue;
    }
    if (records != nullptr) {
      (*records)[j] = cached;
      if (len != nullptr) len[j] = static_cast<int32_t>(cached->tokens);
      ++hits;
      continue;
    }
    if (keys == nullptr) {  // a prefetch: already there is all it needs
      ++hits;
      continue;
    }
    if (!cached->record.empty()) {
      // Verified when it was read: decoded without the checks.
      const uint8_t* r = cached->record.data();
      quantized::Decode(static_cast<Codec>(r[6]), r + kBlockRecordHeaderSize, cached->tokens,
                        geometry_.head_dim, keys + j * block_elems, values + j * block_elems,
                        &dequant_scratch);
    } else {
      std::copy(cached->keys.begin(), cached->keys.end(), keys + j * block_elems);
      std::copy(cached->values.begin(), cached->values.end(), values + j * block_elems);
    }
    len[j] = static_cast<int32_t>(cached->tokens);
    ++hits;
  }
  std::vector<io::ReadRequest> requests(misses.size());
  uint64_t total = 0;
  for (size_t j : misses) total += io::AlignUp(locs[j].record_bytes);
  // Registered memory when enough is free; shared, since a block read for
  // `records` and not cached is handed out where it lies.
  const auto buffer = std::make_shared<io::StagingBuffer>(reader_->Staging(total));
  uint64_t at = 0;
  for (size_t m = 0; m < misses.size(); ++m) {
    const BlockLocation& loc = locs[misses[m]];
    MSA_ASSIGN_OR_RETURN(const int fd, SegmentFd(loc.segment));
    const uint32_t padded = static_cast<uint32_t>(io::AlignUp(loc.record_bytes));
    requests[m] = io::ReadRequest{fd, loc.offset, padded, buffer->data() + at};
    at += padded;
  }
  // 2. Decode (checksums verified) into the slots, and keep a copy in the
  // cache: read m's block, on whichever thread runs it.
  const bool keep = use_cache && cache_.capacity() > 0;
  // Without output slots (keys == nullptr: a prefetch, or records wanted) a
  // lossless block is decoded straight into its cache entry, a quantised one
  // only checked (the entry, and `records`, keep the record: a copy for the
  // cache, else the staging buffer's bytes, borrowed).
  auto decode = [&](size_t m) -> Status {
    thread_local BlockDecoder decoder;
    const size_t j = misses[m];
    const BlockLocation& loc = locs[j];
    const bool quantised = quantized::Handles(static_cast<Codec>(requests[m].dest[6]));  // the header's codec
    std::shared_ptr<CachedBlock> entry;
    float* k;
    float* v;
    if (records != nullptr && static_cast<Codec>(requests[m].dest[6]) != geometry_.codec) {
      return Status::Corruption(DescribeBlock(ids[j]) + " is stored with codec " +
                                std::to_string(requests[m].dest[6]) + ", not the store's " +
                                CodecName(geometry_.codec));
    }
    if (keys != nullptr) {
      k = keys + j * block_elems;
      v = values + j * block_elems;
    } else if (quantised) {
      k = v = nullptr;  // checked only
    } else {
      entry = std::make_shared<CachedBlock>();
      entry->keys.resize(loc.tokens * d);
      entry->values.resize(loc.tokens * d);
      k = entry->keys.data();
      v = entry->values.data();
    }
    const std::span<const uint8_t> record(requests[m].dest, loc.record_bytes);
    Status s = k == nullptr ? decoder.Verify(record, ids[j], loc.checksum, loc.tokens, geometry_.head_dim)
                            : decoder.Decode(record, ids[j], loc.checksum, loc.tokens, geometry_.head_dim, k, v);
    if (!s.ok()) {
      return s.WithContext(SegmentPath(path_, loc.segment) + " offset " + std::to_string(loc.offset));
    }
    if (len != nullptr) len[j] = static_cast<int32_t>(loc.tokens);
    if (keep || records != nullptr) {
      if (!entry) {
        entry = std::make_shared<CachedBlock>();
        if (quantised && !keep) {
          entry->borrowed = record;
          entry->borrowed_from = buffer;
        } else if (quantised) {
          entry->record.assign(requests[m].dest, requests[m].dest + loc.record_bytes);
        } else {
          entry->keys.assign(k, k + loc.tokens * d);
          entry->values.assign(v, v + loc.tokens * d);
        }
      }
      entry->tokens = loc.tokens;
      if (records != nullptr) (*records)[j] = entry;
      if (keep) cache_.Insert(geometry_.StreamOf(ids[j].layer, ids[j].kv_head), ids[j].block, std::move(entry));
    }
    return Status::OK();
  };
  // With decoders, each block is decoded as soon as its read completes,
  // while the others are still in flight; a block or two is not worth the
  // hand-off.
  std::shared_ptr<WorkPool::Batch> batch;
  if (decoders_ && misses.size() >= 4) batch = decoders_->Start(misses.size(), decode);
  // All hits: not even an empty ReadAll, which would wait for the reader's
  // lock while another query's (a prefetch's) reads are in flight.
  Status read = requests.empty() ? Status::OK()
                : batch          ? reader_->ReadAll(requests, [&batch](size_t m) { batch->Ready(m); })
                                 : reader_->ReadAll(requests);
  const auto t1 = Clock::now();
  disk_blocks_read_.fetch_add(misses.size(), std::memory_order_relaxed);
  disk_bytes_read_.fetch_add(total, std::memory_order_relaxed);
  if (!read.ok()) {
    if (batch) batch->Cancel();  // no decoder touches the buffer after this
    if (reader_->abandoned()) buffer->Leak();  // the kernel may still write into it
    // Name the block and file, not just the descriptor.
    return read.WithContext("fetching " + std::to_string(misses.size()) + " blocks from " +
                            SegmentDir(path_));
  }
  if (batch) {
    MSA_RETURN_IF_ERROR(batch->Finish());
  } else {
    for (size_t m = 0; m < misses.size(); ++m) MSA_RETURN_IF_ERROR(decode(m));
  }
  if (stats) {
    // With decoders, decode_ms is what was left to decode after the reads.
    stats->fetch_ms += std::chrono::duration<double, std::milli>(t1 - t0).count();
    stats->decode_ms += MsSince(t1);
    stats->blocks_read += misses.size();
    stats->cache_hits += hits;
    stats->bytes_read += total;
  }
  return Status::OK();
}

Status Store::CheckQuery(uint32_t layer, const float* q, uint32_t n, uint32_t q_heads) const {
  const Geometry& g = geometry_;
  if (layer >= g.layers) {
    return Status::InvalidArgument("layer " + std::to_string(layer) + " is out of range (store has " +
                                   std::to_string(g.layers) + " layers)");
  }
  if (q_heads == 0 || q_heads % g.kv_heads != 0) {
    return Status::InvalidArgument("q_heads = " + std::to_string(q_heads) +
                                   " must be a positive multiple of kv_heads = " +
                                   std::to_string(g.kv_heads));
  }
  if (n > 0 && q == nullptr) return Status::InvalidArgument("q is null");
  return Status::OK();
}

Result<Store::QueryPlan> Store::PlanQuery(uint32_t layer, const float* q, uint32_t n,
                                          uint32_t q_heads, const AttendOptions& options,
                                          AttendStats* st, bool keep_scores) const {
  const Geometry& g = geometry_;
  QueryPlan plan;
  // Routing and the directory are read under the state lock; the locations
  // of the chosen blocks are copied out so that the slow part (I/O, decode,
  // attention) runs without it and never holds up a commit.
  std::shared_lock<std::shared_mutex> state(state_mu_);
  plan.io_lock = std::shared_lock<std::shared_mutex>(io_mu_);
  const uint32_t group = q_heads / g.kv_heads;
  const size_t d = g.head_dim;
  // The block ranges the query may use: every live document's, or the
  // requested documents'.
  std::vector<std::pair<uint64_t, uint64_t>> ranges;  // [first, end), sorted, disjoint
  if (options.documents.empty()) {
    ranges = live_ranges_;
  } else {
    for (uint64_t id : options.documents) {
      auto it = doc_blocks_.find(id);
      if (it == doc_blocks_.end()) {
        return Status::NotFound("document id " + std::to_string(id) + " is not in store " + path_);
      }
      ranges.push_back({it->second.first, it->second.first + it->second.second});
    }
    std::sort(ranges.begin(), ranges.end());
    std::vector<std::pair<uint64_t, uint64_t>> merged;
    for (const auto& r : ranges) {
      if (!merged.empty() && r.first <= merged.back().second) {
        merged.back().second = std::max(merged.back().second, r.second);
      } else {
        merged.push_back(r);
      }
    }
    ranges = std::move(merged);
  }
  uint64_t blocks = 0;  // blocks the query may use
  for (const auto& r : ranges) blocks += r.second - r.first;
  if (options.document_sinks) {  // the first block of each document queried
    for (const auto& [id, doc] : doc_blocks_) {
      const bool asked = options.documents.empty() ||
                         std::find(options.documents.begin(), options.documents.end(), id) !=
                             options.documents.end();
      if (asked && doc.second > 0) plan.document_sinks.push_back(doc.first);
    }
    std::sort(plan.document_sinks.begin(), plan.document_sinks.end());
  }
  const auto& doc_sinks = plan.document_sinks;
  auto is_doc_sink = [&](uint64_t b) { return std::binary_search(doc_sinks.begin(), doc_sinks.end(), b); };

  // 1. Route: per (row, KV head) the chosen blocks, ascending.
  const auto t0 = Clock::now();
  auto& chosen = plan.chosen;
  chosen.resize(static_cast<size_t>(n) * g.kv_heads);
  const bool all = options.exact || uint64_t{options.top_k} + 2 + doc_sinks.size() >= blocks;
  plan.all = all;
  if (keep_scores) plan.routed.resize(chosen.size());
  RouteOptions route;
  const bool whole_stream = ranges.size() == 1 && ranges[0].first == 0 &&
                            ranges[0].second == committed_.blocks_per_stream;
  if (!whole_stream) route.ranges = &ranges;  // documents asked for, or some deleted
  // With document sinks the router ranks past them, so that top_k blocks
  // besides them remain.
  route.top_k = static_cast<uint32_t>(std::min<uint64_t>(uint64_t{options.top_k} + doc_sinks.size(), blocks));
  route.combine = options.combine;
  route.exact_scan = options.exact_routing;
  route.nprobe = options.nprobe;
  route.candidates = options.candidates;
  route.channels = options.channels;
  route.coarse_groups = options.coarse_groups;
  for (uint32_t i = 0; i < n; ++i) {
    for (uint32_t kv = 0; kv < g.kv_heads; ++kv) {
      auto& sel = chosen[static_cast<size_t>(i) * g.kv_heads + kv];
      if (blocks == 0) continue;
      if (all) {
        for (const auto& r : ranges) {
          for (uint64_t b = r.first; b < r.second; ++b) sel.push_back(b);
        }
        continue;
      }
      const float* qg = q + (static_cast<size_t>(i) * q_heads + static_cast<size_t>(kv) * group) * d;
      RouteStats rs;
      std::vector<ScoredBlock> found =
          router_.Search(g.StreamOf(layer, kv), qg, static_cast<int>(group), route, &rs);
      if (!doc_sinks.empty()) {  // best first: keep the top_k that are not forced
        found.erase(std::remove_if(found.begin(), found.end(),
                                   [&](const ScoredBlock& s) { return is_doc_sink(s.block); }),
                    found.end());
        if (found.size() > options.top_k) found.resize(options.top_k);
      }
      for (const ScoredBlock& s : found) sel.push_back(s.block);
      if (keep_scores) plan.routed[static_cast<size_t>(i) * g.kv_heads + kv] = std::move(found);
      st->routed_fraction += rs.scanned_fraction / (static_cast<double>(n) * g.kv_heads);
      plan.sink = ranges.front().first;
      plan.recent = ranges.back().second - 1;
      sel.push_back(plan.sink);
      sel.push_back(plan.recent);
      sel.insert(sel.end(), doc_sinks.begin(), doc_sinks.end());
      std::sort(sel.begin(), sel.end());
      sel.erase(std::unique(sel.begin(), sel.end()), sel.end());
    }
  }
  st->route_ms = MsSince(t0);

  // 2. The distinct (KV head, block) pairs, to be fetched in one batch: per
  // KV head the union of its rows' selections (each ascending), ascending.
  // A flat sorted vector rather than a map: this runs on every query, and
  // the warm GPU path's whole budget is ~100 us.
  plan.slot_of.resize(g.kv_heads);
  plan.ids.reserve(chosen.empty() ? 0 : chosen[0].size() * g.kv_heads);
  plan.locs.reserve(plan.ids.capacity());
  std::vector<uint64_t> blocks_of_kv;
  for (uint32_t kv = 0; kv < g.kv_heads; ++kv) {
    const std::vector<uint64_t>* one = &chosen[kv];  // row 0's, when it is the only row
    if (n > 1) {
      blocks_of_kv.clear();
      for (uint32_t i = 0; i < n; ++i) {
        const auto& sel = chosen[static_cast<size_t>(i) * g.kv_heads + kv];
        blocks_of_kv.insert(blocks_of_kv.end(), sel.begin(), sel.end());
      }
      std::sort(blocks_of_kv.begin(), blocks_of_kv.end());
      blocks_of_kv.erase(std::unique(blocks_of_kv.begin(), blocks_of_kv.end()), blocks_of_kv.end());
      one = &blocks_of_kv;
    }
    auto& slots = plan.slot_of[kv];
    slots.reserve(one->size());
    const auto& dir = directory_[g.StreamOf(layer, kv)];
    for (uint64_t b : *one) {
      slots.emplace_back(b, static_cast<int32_t>(plan.ids.size()));
      plan.ids.push_back(BlockId{layer, kv, b});
      plan.locs.push_back(dir[b]);
    }
  }
  return plan;
}

Status Store::Attend(uint32_t layer, const float* q, uint32_t n, uint32_t q_heads,
                     const AttendOptions& options, float* out, float* lse, AttendStats* stats,
                     std::vector<std::vector<uint64_t>>* selected) const {
  const auto t_start = Clock::now();
  const Geometry& g = geometry_;
  MSA_RETURN_IF_ERROR(CheckQuery(layer, q, n, q_heads));
  if (n == 0) return Status::OK();
  if (out == nullptr) return Status::InvalidArgument("out is null");
  AttendStats local;
  AttendStats& st = stats ? *stats : local;
  st = AttendStats{};
  const size_t d = g.head_dim;

  // The GPU when asked for or suitable (GpuMode); decided before routing
  // so that kRequire fails early.
  bool gpu = false;
  if (options.gpu != GpuMode::kOff) {
    const Status suits = GpuSuits(options, q, static_cast<size_t>(n) * q_heads * d);
    if (!suits.ok() && options.gpu == GpuMode::kRequire) return suits;
    gpu = suits.ok();
  }
  const auto t_plan = Clock::now();
  MSA_ASSIGN_OR_RETURN(QueryPlan plan, PlanQuery(layer, q, n, q_heads, options, &st));
  st.plan_ms = MsSince(t_plan);
  if (gpu) {
    const Status done = AttendOnGpu(plan, q, n, q_heads, options, out, lse, /*device_io=*/false,
                                    nullptr, &st);
    // kAuto falls back to the CPU when the pool cannot take the call
    // (NotSupported comes before any work is done).
    if (done.ok() || options.gpu == GpuMode::kRequire || done.code() != Status::Code::kNotSupported) {
      st.total_ms = MsSince(t_start);
      if (done.ok() && selected) *selected = std::move(plan.chosen);
      return done;
    }
  }
  const auto& chosen = plan.chosen;
  // A quantised store's blocks stay codes (the cache's records), dequantised
  // inside the attention loop, when each is attended once (one row, or rows
  // that chose different blocks): a block several rows attend would be
  // dequantised once per row, so those calls decode every block into a
  // float slot once, as a lossless store's are.
  size_t selections = 0;
  for (const auto& sel : chosen) selections += sel.size();
  const bool over_codes = quantized::Handles(g.codec) && selections <= plan.ids.size();
  const size_t block_elems = over_codes ? 0 : static_cast<size_t>(g.block_tokens) * d;
  std::vector<float> keys(plan.ids.size() * block_elems), values(plan.ids.size() * block_elems);
  std::vector<int32_t> len(plan.ids.size());
  std::vector<std::shared_ptr<const CachedBlock>> records(over_codes ? plan.ids.size() : 0);
  // Exact mode reads the whole layer: it would only flush the cache.
  MSA_RETURN_IF_ERROR(FetchBlocks(plan.ids, plan.locs, over_codes ? nullptr : keys.data(),
                                  over_codes ? nullptr : values.data(), len.data(), &st,
                                  options.use_cache && !options.exact, over_codes ? &records : nullptr));
  plan.io_lock.unlock();  // the blocks are read
  std::vector<attention::QuantizedBlock> codes(records.size());
  for (size_t j = 0; j < records.size(); ++j) {  // of the store's codec (FetchBlocks checks)
    codes[j] = quantized::View(g.codec, records[j]->Record().data() + kBlockRecordHeaderSize, records[j]->tokens,
                               geometry_.head_dim);
  }

  // 3. Attend.
  const auto t0 = Clock::now();
  size_t max_blocks = 0;
  for (const auto& sel : chosen) max_blocks = std::max(max_blocks, sel.size());
  std::vector<int32_t> index(chosen.size() * std::max<size_t>(max_blocks, 1), -1);
  std::vector<int32_t> count(chosen.size());
  for (size_t r = 0; r < chosen.size(); ++r) {
    const uint32_t kv = static_cast<uint32_t>(r % g.kv_heads);
    count[r] = static_cast<int32_t>(chosen[r].size());
    const auto& slots = plan.slot_of[kv];
    for (size_t j = 0; j < chosen[r].size(); ++j) {
      const auto it = std::lower_bound(slots.begin(), slots.end(), std::make_pair(chosen[r][j], INT32_MIN));
      index[r * max_blocks + j] = it->second;  // present: slot_of holds every chosen block
    }
  }
  attention::AttentionShape shape;
  shape.n_queries = static_cast<int>(n);
  shape.q_heads = static_cast<int>(q_heads);
  shape.kv_heads = static_cast<int>(g.kv_heads);
  shape.head_dim = static_cast<int>(d);
  shape.block_tokens = static_cast<int>(g.block_tokens);
  shape.scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(d)));
  attention::Selection selection{static_cast<int>(max_blocks), index.data(), count.data()};
  if (over_codes) {
    attention::QuantizedBlockTable table = quantized::TableShape(g.codec, g.block_tokens, g.head_dim);
    table.num_blocks = static_cast<int>(codes.size());
    table.blocks = codes.data();
    attention::SparseAttentionCpu(shape, table, selection, q, out, lse);
  } else {
    const attention::BlockTable<float> table{static_cast<int>(plan.ids.size()), keys.data(), values.data(),
                                             len.data()};
    attention::SparseAttentionCpu(shape, table, selection, q, out, lse);
  }
  st.attend_ms = MsSince(t0);
  st.total_ms = MsSince(t_start);
  if (selected) *selected = std::move(plan.chosen);
  return Status::OK();
}

Status Store::GpuSuits(const AttendOptions& options, const float* q, size_t q_elems) const {
  const Geometry& g = geometry_;
  if (options_.gpu_pool_bytes == 0) return Status::NotSupported("the store's GPU pool is off (gpu_pool_bytes 0)");
  if (options.exact) return Status::NotSupported("exact mode reads the whole layer: it runs on the CPU");
  if (g.head_dim % 8 != 0 || g.head_dim > 256) {
    return Status::NotSupported("head_dim " + std::to_string(g.head_dim) +
                                ": the CUDA kernel takes multiples of 8 up to 256");
  }
  if (g.codec == Codec::kBF16ShuffleZstd) {
    return Status::NotSupported("the bf16 codec's range exceeds fp16, which the CUDA kernel reads");
  }
  MSA_RETURN_IF_ERROR(GpuPool().status());
  for (size_t i = 0; i < q_elems; ++i) {
    if (!(std::fabs(q[i]) < 65504.0f)) {
      return Status::NotSupported("q[" + std::to_string(i) + "] is outside fp16's range, which the CUDA kernel needs");
    }
  }
  return Status::OK();
}

Result<attention::GpuBlockPool*> Store::GpuPool() const {
  std::lock_guard<std::mutex> lock(gpu_mu_);
  if (gpu_pool_) return gpu_pool_.get();
  if (!gpu_error_.ok()) return gpu_error_;
  std::string why;
  if (!attention::CudaAvailable(&why)) {
    gpu_error_ = Status::NotSupported(why);
    return gpu_error_;
  }
  attention::GpuPoolOptions po;
  po.block_tokens = static_cast<int>(geometry_.block_tokens);
  po.head_dim = static_cast<int>(geometry_.head_dim);
  if (quantized::Handles(geometry_.codec) && options_.gpu_quantized_pages &&
      geometry_.block_tokens <= static_cast<uint32_t>(attention::kMaxQuantizedPageTokens)) {
    po.page_bits = geometry_.codec == Codec::kInt8 ? 8 : 4;
  }
  po.pool_bytes = options_.gpu_pool_bytes;
  auto created = attention::GpuBlockPool::Create(po);
  if (!created.ok()) {
    gpu_error_ = Status::NotSupported("no GPU pool: " + created.status().ToString());
    spdlog::warn("{}: {}; attention runs on the CPU", path_, gpu_error_.message());
    return gpu_error_;
  }
  gpu_pool_ = std::move(*created);
  spdlog::info("{}: GPU pool of {} pages ({} MiB)", path_, gpu_pool_->pages(), options_.gpu_pool_bytes >> 20);
  return gpu_pool_.get();
}

void Store::ClearGpuPool() const {
  std::lock_guard<std::mutex> lock(gpu_mu_);
  if (gpu_pool_) gpu_pool_->Clear();
}

Status Store::AttendOnGpu(const QueryPlan& plan, const float* q, uint32_t n,
                          uint32_t q_heads, const AttendOptions& options, float* out, float* lse,
                          bool device_io, void* stream, AttendStats* st, bool upload_only) const {
  const Geometry& g = geometry_;
  const size_t d = g.head_dim;
  MSA_ASSIGN_OR_RETURN(attention::GpuBlockPool * pool, GpuPool());
  // The call's arrays in the staging slot, 256-byte aligned:
  //   index [n * kv_heads, max_blocks] int32 page numbers | count [n * kv_heads] int32
  //   and, for host I/O: q [rows, d] | out [rows, d] | lse [rows] float32.
  const size_t n_sel = static_cast<size_t>(n) * g.kv_heads;
  const size_t rows = static_cast<size_t>(n) * q_heads;
  size_t max_blocks = 1;
  for (const auto& sel : plan.chosen) max_blocks = std::max(max_blocks, sel.size());
  auto align = [](size_t x) { return (x + 255) / 256 * 256; };
  const size_t off_count = align(n_sel * max_blocks * sizeof(int32_t));
  const size_t off_q = off_count + align(n_sel * sizeof(int32_t));
  const size_t off_out = off_q + align(rows * d * sizeof(float));
  const size_t off_lse = off_out + rows * d * sizeof(float);
  const size_t io_bytes = upload_only ? 0 : device_io ? off_q : off_lse + align(rows * sizeof(float));

  const auto t_pool = Clock::now();
  std::vector<attention::GpuPoolKey> keys(plan.ids.size());
  for (size_t j = 0; j < keys.size(); ++j) {
    keys[j] = {g.StreamOf(plan.ids[j].layer, plan.ids[j].kv_head), plan.ids[j].block};
  }
  attention::GpuBlockPool::BatchPtr batch;
  std::vector<int32_t> pages;
  std::vector<size_t> misses;
  MSA_RETURN_IF_ERROR(pool->Begin(keys, options.use_cache, io_bytes, &batch, &pages, &misses));
  st->on_gpu = true;
  st->gpu_pool_hits = keys.size() - misses.size();
  void* host_io = nullptr;
  void* dev_io = nullptr;
  pool->Io(*batch, &host_io, &dev_io);
  auto* h = static_cast<uint8_t*>(host_io);
  auto* dv = static_cast<uint8_t*>(dev_io);
  void* s = device_io ? stream : pool->SlotStream(*batch);

  const Status result = [&]() -> Status {
    // 1. The page table: each selection's blocks as page numbers. Both a
    // selection and slot_of are in ascending block order: one forward walk
    // finds every block's slot without a lookup.
    auto* index = reinterpret_cast<int32_t*>(h);
    auto* count = reinterpret_cast<int32_t*>(h + off_count);
    for (size_t r = 0; r < (upload_only ? 0 : n_sel); ++r) {
      const auto& sel = plan.chosen[r];
      const auto& slots = plan.slot_of[r % g.kv_heads];
      count[r] = static_cast<int32_t>(sel.size());
      auto it = slots.begin();
      for (size_t j = 0; j < sel.size(); ++j) {
        while (it != slots.end() && it->first < sel[j]) ++it;
        if (it == slots.end() || it->first != sel[j]) {
          return Status::Internal("block " + std::to_string(sel[j]) + " missing from the fetch plan");
        }
        index[r * max_blocks + j] = pages[it->second];
      }
    }
    if (!device_io && !upload_only) std::memcpy(h + off_q, q, rows * d * sizeof(float));
    st->pool_ms += MsSince(t_pool);

    // 2. Blocks missing from the pool: host cache or disk, staged as fp16
    // (decoded) or, for quantised pages, as their codes and parameters.
    if (!misses.empty() && pool->page_bits() != 0) {
      std::vector<BlockId> ids(misses.size());
      std::vector<BlockLocation> locs(misses.size());
      for (size_t m = 0; m < misses.size(); ++m) {
        ids[m] = plan.ids[misses[m]];
        locs[m] = plan.locs[misses[m]];
      }
      std::vector<std::shared_ptr<const CachedBlock>> records(misses.size());
      std::vector<int32_t> len(misses.size());
      MSA_RETURN_IF_ERROR(FetchBlocks(ids, locs, nullptr, nullptr, len.data(), st, options.use_cache, &records));
      const auto t_stage = Clock::now();
      for (size_t m = 0; m < misses.size(); ++m) {
        // Verified when read, of the store's codec (FetchBlocks checks), as the pool's format.
        quantized::PayloadToPages(g.codec, records[m]->Record().data() + kBlockRecordHeaderSize, records[m]->tokens,
                                  g.head_dim, g.block_tokens, reinterpret_cast<uint8_t*>(pool->StagedKeys(*batch, m)),
                                  reinterpret_cast<uint8_t*>(pool->StagedValues(*batch, m)));
        pool->SetStagedTokens(*batch, m, len[m]);
      }
      st->upload_ms += MsSince(t_stage);
    } else if (!misses.empty()) {
      const size_t block_elems = static_cast<size_t>(g.block_tokens) * d;
      std::vector<BlockId> ids(misses.size());
      std::vector<BlockLocation> locs(misses.size());
      for (size_t m = 0; m < misses.size(); ++m) {
        ids[m] = plan.ids[misses[m]];
        locs[m] = plan.locs[misses[m]];
      }
      // Decoded float32 scratch, kept per thread up to 64 MiB each: a fresh
      // 2 x 16 MiB for 512 blocks would cost its page faults on every call.
      constexpr size_t kKeepElems = (size_t{64} << 20) / sizeof(float);
      thread_local std::vector<float> kept_k, kept_v;
      std::vector<float> big_k, big_v;
      const size_t elems = misses.size() * block_elems;
      std::vector<float>& k = elems <= kKeepElems ? kept_k : big_k;
      std::vector<float>& v = elems <= kKeepElems ? kept_v : big_v;
      if (k.size() < elems) {
        k.resize(elems);
        v.resize(elems);
      }
      std::vector<int32_t> len(misses.size());
      MSA_RETURN_IF_ERROR(FetchBlocks(ids, locs, k.data(), v.data(), len.data(), st, options.use_cache));
      const auto t_stage = Clock::now();
      for (size_t m = 0; m < misses.size(); ++m) {
        const size_t valid = static_cast<size_t>(len[m]) * d;
        attention::FloatToHalfArray(k.data() + m * block_elems, pool->StagedKeys(*batch, m), valid);
        attention::FloatToHalfArray(v.data() + m * block_elems, pool->StagedValues(*batch, m), valid);
        pool->SetStagedTokens(*batch, m, len[m]);
      }
      st->upload_ms += MsSince(t_stage);
    }
    const auto t_enqueue = Clock::now();
    MSA_RETURN_IF_ERROR(pool->Upload(*batch, s));
    st->upload_ms += MsSince(t_enqueue);
    if (upload_only) return Status::OK();

    // 3. The kernel over the pool's pages.
    const auto t_attend = Clock::now();
    attention::AttentionShape shape;
    shape.n_queries = static_cast<int>(n);
    shape.q_heads = static_cast<int>(q_heads);
    shape.kv_heads = static_cast<int>(g.kv_heads);
    shape.head_dim = static_cast<int>(d);
    shape.block_tokens = static_cast<int>(g.block_tokens);
    shape.scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(d)));
    const attention::Selection selection{static_cast<int>(max_blocks), reinterpret_cast<const int32_t*>(dv),
                                         reinterpret_cast<const int32_t*>(dv + off_count)};
    // The kernel over the pool's pages (quantised pages dequantised inside it).
    auto run_kernel = [&](const float* q_dev, float* out_dev, float* lse_dev) {
      const attention::BlockTable<uint16_t> t = pool->table();
      if (pool->page_bits() == 0) {
        return attention::SparseAttentionCudaF16(shape, t, selection, q_dev, out_dev, lse_dev, s);
      }
      const attention::BlockTable<uint8_t> bytes{t.num_blocks, reinterpret_cast<const uint8_t*>(t.keys),
                                                 reinterpret_cast<const uint8_t*>(t.values), t.block_len};
      return attention::SparseAttentionCudaQuantized(
          shape, bytes, attention::QuantizedPages(pool->page_bits(), g.block_tokens, g.head_dim), selection, q_dev,
          out_dev, lse_dev, s);
    };
    if (device_io) {
      MSA_RETURN_IF_ERROR(run_kernel(q, out, lse));
    } else {
      auto* d_out = reinterpret_cast<float*>(dv + off_out);
      auto* d_lse = reinterpret_cast<float*>(dv + off_lse);
      MSA_RETURN_IF_ERROR(run_kernel(reinterpret_cast<const float*>(dv + off_q), d_out, d_lse));
      // out and lse are adjacent: one copy back, then wait for it.
      MSA_RETURN_IF_ERROR(attention::CudaCopyToHostAsync(h + off_out, d_out, off_lse - off_out + rows * sizeof(float), s));
      MSA_RETURN_IF_ERROR(attention::CudaSynchronize(s, "running sparse attention on the GPU"));
      std::memcpy(out, h + off_out, rows * d * sizeof(float));
      if (lse != nullptr) std::memcpy(lse, h + off_lse, rows * sizeof(float));
    }
    st->attend_ms = MsSince(t_attend);
    return Status::OK();
  }();
  // The batch ends on every path: pages unpinned, misses published on success.
  const auto t_finish = Clock::now();
  const Status finished = pool->Finish(std::move(batch), s, result.ok());
  st->pool_ms += MsSince(t_finish);
  return result.ok() ? finished : result;
}

Status Store::AttendDevice(uint32_t layer, const float* q, uint32_t n, uint32_t q_heads,
                           const AttendOptions& options, float* out, float* lse, void* stream,
                           AttendStats* stats) const {
  const auto t_start = Clock::now();
  const Geometry& g = geometry_;
  MSA_RETURN_IF_ERROR(CheckQuery(layer, q, n, q_heads));
  if (n == 0) return Status::OK();
  if (out == nullptr) return Status::InvalidArgument("out is null");
  AttendStats local;
  AttendStats& st = stats ? *stats : local;
  st = AttendStats{};
  MSA_ASSIGN_OR_RETURN(attention::GpuBlockPool * pool, GpuPool());
  // The router runs on the CPU: it needs q on the host.
  const size_t q_elems = static_cast<size_t>(n) * q_heads * g.head_dim;
  std::vector<float> q_host(q_elems);
  MSA_RETURN_IF_ERROR(pool->ReadToHost(q, q_elems * sizeof(float), q_host.data(), stream)
                          .WithContext("reading q from the GPU"));
  MSA_RETURN_IF_ERROR(GpuSuits(options, q_host.data(), q_elems));
  const auto t_plan = Clock::now();
  MSA_ASSIGN_OR_RETURN(QueryPlan plan, PlanQuery(layer, q_host.data(), n, q_heads, options, &st));
  st.plan_ms = MsSince(t_plan);
  const Status done = AttendOnGpu(plan, q, n, q_heads, options, out, lse,
                                  /*device_io=*/true, stream, &st);
  st.total_ms = MsSince(t_start);
  return done;
}

bool Store::PrefetchToGpu(uint32_t layer, const float* q, uint32_t n, uint32_t q_heads,
                          const AttendOptions& options, std::shared_future<Status>* done) const {
  if (options.gpu == GpuMode::kOff || options.exact || !options.use_cache || n == 0) return false;
  if (!CheckQuery(layer, q, n, q_heads).ok()) return false;  // the host prefetch reports it
  if (!GpuSuits(options, q, static_cast<size_t>(n) * q_heads * geometry_.head_dim).ok()) return false;
  auto promise = std::make_shared<std::promise<Status>>();
  *done = promise->get_future().share();
  std::vector<float> q_copy(q, q + static_cast<size_t>(n) * q_heads * geometry_.head_dim);
  prefetcher_.Post([this, layer, n, q_heads, options, promise, q_copy = std::move(q_copy)]() {
    try {
      AttendStats st;
      auto planned = PlanQuery(layer, q_copy.data(), n, q_heads, options, &st);
      if (!planned.ok()) {
        promise->set_value(planned.status());
        return;
      }
      Status s = AttendOnGpu(*planned, q_copy.data(), n, q_heads, options, nullptr, nullptr,
                             /*device_io=*/false, nullptr, &st, /*upload_only=*/true);
      if (s.code() == Status::Code::kNotSupported && options.gpu == GpuMode::kAuto &&
          cache_.capacity() > 0) {
        // The pool cannot take it: Attend will run on the CPU, so warm the host cache.
        s = FetchBlocks(planned->ids, planned->locs, nullptr, nullptr, nullptr, nullptr, /*use_cache=*/true);
      }
      promise->set_value(s);
    } catch (const std::exception& e) {
      promise->set_value(Status::Internal(std::string("prefetch: ") + e.what()));
    }
  });
  return true;
}

std::shared_future<Status> Store::Prefetch(uint32_t layer, const float* q, uint32_t n,
                                           uint32_t q_heads, const AttendOptions& options) const {
  std::shared_future<Status> to_gpu;
  if (PrefetchToGpu(layer, q, n, q_heads, options, &to_gpu)) return to_gpu;
  const LayerQueries one{layer, q, n};
  return PrefetchLayers(std::span<const LayerQueries>(&one, 1), q_heads, options);
}

std::shared_future<Status> Store::PrefetchLayers(std::span<const LayerQueries> layers, uint32_t q_heads,
                                                 const AttendOptions& options) const {
  auto promise = std::make_shared<std::promise<Status>>();
  std::shared_future<Status> done = promise->get_future().share();
  for (const LayerQueries& l : layers) {
    if (Status check = CheckQuery(l.layer, l.q, l.n, q_heads); !check.ok()) {
      promise->set_value(check.WithContext("prefetch of layer " + std::to_string(l.layer)));
      return done;
    }
  }
  // Nothing to do ahead of time: exact mode and cacheless reads bypass the cache.
  if (options.exact || !options.use_cache || cache_.capacity() == 0) {
    promise->set_value(Status::OK());
    return done;
  }
  const size_t row = static_cast<size_t>(q_heads) * geometry_.head_dim;
  std::vector<std::pair<LayerQueries, std::vector<float>>> copies;
  for (const LayerQueries& l : layers) {
    if (l.n > 0) copies.push_back({l, std::vector<float>(l.q, l.q + l.n * row)});
  }
  if (copies.empty()) {
    promise->set_value(Status::OK());
    return done;
  }
  prefetcher_.Post([this, q_heads, options, promise, copies = std::move(copies)]() {
    try {
      // Every layer planned first (each plan's lock keeps compaction from
      // removing what it will read), then one fetch for the union.
      std::vector<QueryPlan> plans;
      std::vector<BlockId> ids;
      std::vector<BlockLocation> locs;
      for (const auto& [l, q] : copies) {
        AttendStats st;
        auto planned = PlanQuery(l.layer, q.data(), l.n, q_heads, options, &st);
        if (!planned.ok()) {
          promise->set_value(planned.status().WithContext("prefetch of layer " + std::to_string(l.layer)));
          return;
        }
        ids.insert(ids.end(), planned->ids.begin(), planned->ids.end());
        locs.insert(locs.end(), planned->locs.begin(), planned->locs.end());
        plans.push_back(std::move(*planned));
      }
      promise->set_value(FetchBlocks(ids, locs, nullptr, nullptr, nullptr, nullptr, /*use_cache=*/true));
    } catch (const std::exception& e) {
      promise->set_value(Status::Internal(std::string("prefetch: ") + e.what()));
    }
  });
  return done;
}

Status Store::ReadStream(uint32_t layer, uint32_t kv_head, std::vector<float>* keys,
                         std::vector<float>* values) const {
  if (layer >= geometry_.layers || kv_head >= geometry_.kv_heads) {
    return Status::InvalidArgument("stream (layer " + std::to_string(layer) + ", kv-head " +
                                   std::to_string(kv_head) + ") is out of range");
  }
  // Live documents' blocks only, in block order.
  std::shared_lock<std::shared_mutex> state(state_mu_);
  std::shared_lock<std::shared_mutex> io(io_mu_);  // until the reads are done
  const uint64_t tokens = committed_.tokens;
  const auto& dir = directory_[geometry_.StreamOf(layer, kv_head)];
  std::vector<BlockId> ids;
  std::vector<BlockLocation> locs;
  for (const auto& [first, end] : live_ranges_) {
    for (uint64_t b = first; b < end; ++b) {
      ids.push_back(BlockId{layer, kv_head, b});
      locs.push_back(dir[b]);
    }
  }
  state.unlock();
  const uint64_t blocks = ids.size();
  const size_t block_elems = static_cast<size_t>(geometry_.block_tokens) * geometry_.head_dim;
  std::vector<float> k(blocks * block_elems), v(blocks * block_elems);
  std::vector<int32_t> len(blocks);
  // A whole-stream scan would only flush the cache: it bypasses it.
  MSA_RETURN_IF_ERROR(FetchBlocks(ids, locs, k.data(), v.data(), len.data(), nullptr, false));
  // Compact away the padding of partial blocks (a document's last block).
  keys->clear();
  values->clear();
  keys->reserve(tokens * geometry_.head_dim);
  values->reserve(tokens * geometry_.head_dim);
  for (uint64_t b = 0; b < blocks; ++b) {
    const size_t used = static_cast<size_t>(len[b]) * geometry_.head_dim;
    keys->insert(keys->end(), k.begin() + b * block_elems, k.begin() + b * block_elems + used);
    values->insert(values->end(), v.begin() + b * block_elems, v.begin() + b * block_elems + used);
  }
  return Status::OK();
}

Status Store::Verify(VerifyReport* report, const ProgressFn& progress) const {
  *report = VerifyReport{};
  // The documents first: ListDocuments takes state_mu_, which must not be
  // waited for while io_mu_ is held (compaction takes them in that order).
  MSA_ASSIGN_OR_RETURN(auto docs, ListDocuments());
  MSA_ASSIGN_OR_RETURN(auto deleted, catalog_->ListDeletedDocuments());
  std::shared_lock<std::shared_mutex> state(state_mu_);
  std::shared_lock<std::shared_mutex> io(io_mu_);  // segment files stay while we read them
  const CatalogCounters committed = committed_;
  const auto directory = directory_;  // a snapshot: the checks run unlocked
  state.unlock();
  auto problem = [&](std::string what) { report->problems.push_back(std::move(what)); };
  const Geometry& g = geometry_;
  std::map<uint32_t, uint64_t> segment_length;
  const uint64_t to_check = uint64_t{g.streams()} * committed.blocks_per_stream;
  uint64_t checked_blocks = 0, bytes_read = 0;  // for progress
  for (uint32_t stream = 0; stream < g.streams(); ++stream) {
    const uint32_t layer = stream / g.kv_heads, head = stream % g.kv_heads;
    const auto& dir = directory[stream];
    if (dir.size() < committed.blocks_per_stream) {
      problem("layer " + std::to_string(layer) + " kv-head " + std::to_string(head) + ": " +
              std::to_string(dir.size()) + " blocks, the catalog says " + std::to_string(committed.blocks_per_stream));
    }
    const uint64_t blocks = std::min<uint64_t>(dir.size(), committed.blocks_per_stream);
    // Batches of 256 blocks; each block decoded on its own so that one bad
    // block does not hide the others.
    constexpr uint64_t kBatch = 256;
    for (uint64_t b0 = 0; b0 < blocks; b0 += kBatch) {
      const uint64_t n = std::min(kBatch, blocks - b0);
      uint64_t total = 0;
      for (uint64_t b = b0; b < b0 + n; ++b) {
        if (dir[b].segment != 0) total += io::AlignUp(dir[b].record_bytes);
      }
      io::AlignedBuffer buffer(total);
      std::vector<io::ReadRequest> requests;
      std::vector<uint64_t> requested;
      uint64_t at = 0;
      for (uint64_t b = b0; b < b0 + n; ++b) {
        const BlockLocation& loc = dir[b];
        if (loc.segment == 0) continue;  // a deleted document's, compacted away
        const std::string where = "block " + std::to_string(b) + " of layer " + std::to_string(layer) +
                                  " kv-head " + std::to_string(head) + " (" +
                                  SegmentPath(path_, loc.segment) + " offset " + std::to_string(loc.offset) + ")";
        auto len_it = segment_length.find(loc.segment);
        if (len_it == segment_length.end()) {
          MSA_ASSIGN_OR_RETURN(const uint64_t len, catalog_->ReadSegmentLength(loc.segment));
          len_it = segment_length.emplace(loc.segment, len).first;
        }
        if (loc.offset + io::AlignUp(loc.record_bytes) > len_it->second) {
          problem(where + ": lies past the segment's committed length " + std::to_string(len_it->second));
          continue;
        }
        auto fd = SegmentFd(loc.segment);
        if (!fd.ok()) {
          problem(where + ": " + fd.status().ToString());
          continue;
        }
        const uint32_t padded = static_cast<uint32_t>(io::AlignUp(loc.record_bytes));
        requests.push_back(io::ReadRequest{*fd, loc.offset, padded, buffer.data() + at});
        requested.push_back(b);
        at += padded;
      }
      Status read = reader_->ReadAll(requests);
      bytes_read += at;
      if (!read.ok()) {
        if (reader_->abandoned()) buffer.Leak();
        // Read one by one to name each unreadable block.
        for (size_t i = 0; i < requests.size(); ++i) {
          Status one = reader_->ReadAll({&requests[i], 1});
          if (!one.ok()) {
            const BlockLocation& loc = dir[requested[i]];
            problem("block " + std::to_string(requested[i]) + " of layer " + std::to_string(layer) +
                    " kv-head " + std::to_string(head) + " (" + SegmentPath(path_, loc.segment) +
                    " offset " + std::to_string(loc.offset) + "): " + one.ToString());
            requests[i].length = 0;  // skip its decode
          }
        }
      }
      BlockDecoder decoder;
      std::vector<float> k(static_cast<size_t>(g.block_tokens) * g.head_dim), v(k.size());
      for (size_t i = 0; i < requests.size(); ++i) {
        if (requests[i].length == 0) continue;
        const uint64_t b = requested[i];
        const BlockLocation& loc = dir[b];
        Status s = decoder.Decode(std::span<const uint8_t>(requests[i].dest, loc.record_bytes),
                                  BlockId{layer, head, b}, loc.checksum, loc.tokens, g.head_dim, k.data(),
                                  v.data());
        if (!s.ok()) {
          problem(SegmentPath(path_, loc.segment) + " offset " + std::to_string(loc.offset) + ": " + s.ToString());
        }
        ++report->blocks_checked;
      }
      checked_blocks += n;
      if (progress) progress(checked_blocks, to_check, bytes_read);
    }
  }
  io.unlock();  // the segment files are read; what follows reads the catalog and other files
  // Documents, live and deleted, tile [0, blocks_per_stream) in block
  // order, each with the tokens its blocks hold (stream 0's blocks; every
  // stream has the same counts); the counters count the live ones.
  const size_t live_docs = docs.size();
  uint64_t live_tokens = 0;
  for (const DocumentRecord& doc : docs) live_tokens += doc.tokens;
  std::set<uint64_t> deleted_ids;
  for (DocumentRecord& doc : deleted) {
    deleted_ids.insert(doc.id);
    docs.push_back(std::move(doc));
  }
  std::sort(docs.begin(), docs.end(),
            [](const DocumentRecord& a, const DocumentRecord& b) { return a.first_block < b.first_block; });
  uint64_t next_block = 0;
  for (const DocumentRecord& doc : docs) {
    ++report->documents_checked;
    const bool is_deleted = deleted_ids.count(doc.id) > 0;
    const std::string name = std::string(is_deleted ? "deleted " : "") + "document " +
                             std::to_string(doc.id) + " '" + doc.name + "'";
    if (doc.first_block != next_block) {
      problem(name + ": starts at block " + std::to_string(doc.first_block) + ", expected " + std::to_string(next_block));
    }
    uint64_t held = 0;
    for (uint64_t b = doc.first_block; b < doc.first_block + doc.blocks && !directory.empty() && b < directory[0].size(); ++b) {
      held += directory[0][b].tokens;
      if (directory[0][b].doc_id != doc.id) {
        problem(name + ": block " + std::to_string(b) + " says it belongs to document " +
                std::to_string(directory[0][b].doc_id));
      }
      if (!is_deleted) {
        const BlockLocation& first = directory[0][b];
        for (uint32_t stream = 0; stream < g.streams(); ++stream) {
          if (b >= directory[stream].size()) continue;
          const BlockLocation& loc = directory[stream][b];
          if (loc.segment == 0) {
            problem(name + ": block " + std::to_string(b) + " of stream " + std::to_string(stream) +
                    " has no record (removed as if deleted)");
          } else if (loc.doc_id != first.doc_id || loc.tokens != first.tokens ||
                     loc.first_position != first.first_position) {
            // A document spans the same blocks, tokens and positions in
            // every stream (layer, KV head).
            problem(name + ": block " + std::to_string(b) + " of stream " + std::to_string(stream) +
                    " (layer " + std::to_string(stream / g.kv_heads) + " kv-head " +
                    std::to_string(stream % g.kv_heads) + ") says document " + std::to_string(loc.doc_id) + ", " +
                    std::to_string(loc.tokens) + " tokens from position " + std::to_string(loc.first_position) +
                    "; stream 0 says document " + std::to_string(first.doc_id) + ", " + std::to_string(first.tokens) +
                    " tokens from position " + std::to_string(first.first_position));
          }
        }
      }
    }
    if (held != doc.tokens) {
      problem(name + ": " + std::to_string(doc.tokens) + " tokens, its blocks hold " + std::to_string(held));
    }
    if (!is_deleted) {  // its token ids / text, if stored, decode and fit it
      auto tokens = catalog_->ReadDocumentTokens(doc.id);
      Status fits = tokens.ok() ? (tokens->has_value() ? ValidateDocumentTokens(**tokens, doc.tokens) : Status::OK())
                                : tokens.status();
      if (!fits.ok()) problem(name + ": token ids / text: " + fits.ToString());
    }
    next_block = doc.first_block + doc.blocks;
  }
  if (next_block != committed.blocks_per_stream || live_tokens != committed.tokens ||
      live_docs != committed.documents) {
    problem("catalog counters say " + std::to_string(committed.documents) + " documents, " +
            std::to_string(committed.blocks_per_stream) + " blocks and " + std::to_string(committed.tokens) +
            " tokens per stream; the documents add up to " + std::to_string(live_docs) + ", " +
            std::to_string(next_block) + " and " + std::to_string(live_tokens));
  }
  VerifyRebuildableFiles(report);
  return Status::OK();
}

void Store::VerifyRebuildableFiles(VerifyReport* report) const {
  // Takes no lock but a moment's state_mu_: the caller holds none. A writer
  // may meanwhile save a router index under a new generation (and remove
  // the old file) or replace summary pieces; a failed check is therefore
  // reported only if the catalog still records the same file after it.
  auto why = [](const Status& st) {
    return st.code() == Status::Code::kNotFound ? std::string("missing")
           : st.code() == Status::Code::kCorruption ? st.message()
                                                    : st.ToString();
  };
  constexpr int kAttempts = 4;
  for (uint32_t stream = 0; stream < geometry_.streams(); ++stream) {
    const std::string where = "layer " + std::to_string(stream / geometry_.kv_heads) + " kv-head " +
                              std::to_string(stream % geometry_.kv_heads);
    // The saved router index (STORE/router/S.G.ivf).
    for (int attempt = 1;; ++attempt) {
      auto rec = catalog_->ReadRouterIndex(stream);
      if (!rec.ok()) {
        report->problems.push_back("router index record of " + where + ": " + rec.status().ToString());
        break;
      }
      if (!rec->has_value()) break;
      const RouterIndexRecord& r = **rec;
      const std::string file = RouterIndexPath(stream, r.generation);
      const Status st = ReadRecordedFile(file, r.file_bytes, r.checksum).status();
      if (!st.ok() && attempt < kAttempts) {
        auto now = catalog_->ReadRouterIndex(stream);
        if (now.ok() && (!now->has_value() || (**now).generation != r.generation)) continue;  // replaced
      }
      ++report->files_checked;
      if (!st.ok()) {
        report->problems.push_back("router index " + file + " (" + where + "): " + why(st) +
                                   "; rebuildable: the next open ignores it and rebuilds the index "
                                   "from the catalog (nothing is lost)");
      }
      break;
    }
    // The saved summary pieces (STORE/summaries/S.FIRST.f16), which tile
    // the stream's first blocks in order.
    const size_t chunk_bytes = router_.summaries(stream).chunk_bytes();  // geometry: constant
    auto same = [](const std::vector<SummaryPieceRecord>& a, const std::vector<SummaryPieceRecord>& b) {
      return std::equal(a.begin(), a.end(), b.begin(), b.end(), [](const auto& x, const auto& y) {
        return x.first_block == y.first_block && x.blocks == y.blocks && x.file_bytes == y.file_bytes &&
               x.checksum == y.checksum;
      });
    };
    for (int attempt = 1;; ++attempt) {
      auto pieces = catalog_->ListSummaryPieces(stream);
      if (!pieces.ok()) {
        report->problems.push_back("summary piece records of " + where + ": " + pieces.status().ToString());
        break;
      }
      // Read after the records: a commit is published before its pieces
      // are recorded, so no sound piece lies past this.
      uint64_t committed_blocks;
      {
        std::shared_lock<std::shared_mutex> state(state_mu_);
        committed_blocks = committed_.blocks_per_stream;
      }
      std::vector<std::string> found;
      uint64_t expected_first = 0;
      for (const SummaryPieceRecord& p : *pieces) {
        const std::string file = SummaryPiecePath(stream, p.first_block);
        Status st = CheckSummaryPieceRecord(p, expected_first, committed_blocks, chunk_bytes);
        if (st.ok()) st = ReadRecordedFile(file, p.file_bytes, p.checksum).status();
        if (!st.ok()) {
          found.push_back("summary piece " + file + " (" + where + ", blocks [" + std::to_string(p.first_block) +
                          ", " + std::to_string(p.first_block + p.blocks) + ")): " + why(st) +
                          "; rebuildable: opening reads these summaries from the catalog instead, and "
                          "the next writable open saves the piece again (nothing is lost)");
        }
        expected_first = p.first_block + p.blocks;
      }
      if (!found.empty() && attempt < kAttempts) {
        auto now = catalog_->ListSummaryPieces(stream);
        if (now.ok() && !same(*now, *pieces)) continue;  // replaced meanwhile
      }
      report->files_checked += pieces->size();
      report->problems.insert(report->problems.end(), found.begin(), found.end());
      break;
    }
  }
}

Result<std::vector<DocumentRecord>> Store::ListDocuments() const {
  // The catalog holds a commit a moment before it is published to queries;
  // list only what queries can see.
  uint64_t visible_ids;
  {
    std::shared_lock<std::shared_mutex> state(state_mu_);
    visible_ids = committed_.next_doc_id;
  }
  MSA_ASSIGN_OR_RETURN(auto docs, catalog_->ListDocuments());
  std::erase_if(docs, [&](const DocumentRecord& doc) { return doc.id >= visible_ids; });
  return docs;
}

StoreStats Store::Stats() const {
  std::shared_lock<std::shared_mutex> state(state_mu_);
  StoreStats s;
  s.geometry = geometry_;
  s.documents = committed_.documents;
  s.tokens = committed_.tokens;
  s.blocks_per_stream = committed_.blocks_per_stream;
  for (uint64_t end : pieces_end_) s.summary_piece_blocks += end;
  s.streams.resize(directory_.size());
  for (size_t stream = 0; stream < directory_.size(); ++stream) {
    StreamBytes& b = s.streams[stream];
    for (const BlockLocation& loc : directory_[stream]) {
      if (loc.segment == 0) continue;  // a deleted document's, compacted away
      b.stored_bytes += loc.record_bytes;
      b.segment_bytes += io::AlignUp(loc.record_bytes);
      b.raw_bytes += 4ull * loc.tokens * geometry_.head_dim;
    }
    s.stored_bytes += b.stored_bytes;
    s.segment_bytes += b.segment_bytes;
    s.raw_bytes += b.raw_bytes;
  }
  s.reader = reader_->name();
  s.reader_detail = reader_->detail() + ", " + std::to_string(decoders_ ? decoders_->threads() : 0) +
                    " decode threads";
  s.reader_counters = reader_->counters();
  s.disk_blocks_read = disk_blocks_read_.load(std::memory_order_relaxed);
  s.disk_bytes_read = disk_bytes_read_.load(std::memory_order_relaxed);
  s.cache = cache_.Stats();
  {
    std::lock_guard<std::mutex> lock(gpu_mu_);
    if (gpu_pool_) s.gpu_pool = gpu_pool_->Stats();
  }
  for (uint32_t stream = 0; stream < geometry_.streams(); ++stream) s.ivf_streams += router_.has_ivf(stream);
  return s;
}

}  // namespace msa
