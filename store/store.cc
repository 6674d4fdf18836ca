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
#include "io/aligned_buffer.h"
#include "io/atomic_file.h"
#include "store/codec.h"
#include "store/codec_quantized.h"
#include "store/summary.h"

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

}  // namespace

Store::Store(std::string path, std::unique_ptr<Catalog> catalog, const StoreOptions& options)
    : path_(std::move(path)),
      catalog_(std::move(catalog)),
      geometry_(catalog_->geometry()),
      options_(options),
      reader_(io::MakeBlockReader({options.queue_depth, options.allow_io_uring, options.registered_files,
                                   options.registered_buffer_bytes})),
      cache_(options.cache_bytes),
      decoders_(DecodeThreads(options) > 0 ? std::make_unique<DecodePool>(DecodeThreads(options)) : nullptr),
      directory_(geometry_.streams()),
      router_(geometry_, options.router),
      staged_locations_(geometry_.streams()),
      staged_summaries_(geometry_.streams()),
      saved_indexes_(geometry_.streams()) {}

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
  auto catalog = Catalog::Open(CatalogDir(path), options.read_only);
  if (!catalog.ok()) return catalog.status().WithContext("open store " + path);
  std::unique_ptr<Store> store(new Store(path, std::move(catalog).value(), options));
  MSA_RETURN_IF_ERROR(store->Load().WithContext("open store " + path));
  return store;
}

Status Store::Load() {
  const auto t0 = Clock::now();
  MSA_ASSIGN_OR_RETURN(committed_, catalog_->ReadCounters());
  std::vector<float> summaries;
  for (uint32_t layer = 0; layer < geometry_.layers; ++layer) {
    for (uint32_t head = 0; head < geometry_.kv_heads; ++head) {
      const uint32_t stream = geometry_.StreamOf(layer, head);
      auto& dir = directory_[stream];
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
      // Into the router in batches: the whole stream's float summaries at
      // once would be gigabytes at 100M tokens.
      constexpr uint64_t kBatch = 4096;
      router_.Reserve(stream, committed_.blocks_per_stream);
      summaries.clear();
      uint64_t count = 0;
      MSA_RETURN_IF_ERROR(catalog_->ScanSummaries(layer, head, [&](uint64_t block, std::span<const float> s) {
        if (block != count++) return Status::Corruption("summaries skip a block");
        summaries.insert(summaries.end(), s.begin(), s.end());
        if (count % kBatch == 0) {
          router_.Add(stream, summaries);
          summaries.clear();
        }
        return Status::OK();
      }));
      if (dir.size() != committed_.blocks_per_stream || count != committed_.blocks_per_stream) {
        return Status::Corruption("layer " + std::to_string(layer) + " kv-head " +
                                  std::to_string(head) + " has " + std::to_string(dir.size()) +
                                  " blocks and " + std::to_string(count) +
                                  " summaries; the catalog says " +
                                  std::to_string(committed_.blocks_per_stream));
      }
      router_.Add(stream, summaries);
    }
  }
  MSA_ASSIGN_OR_RETURN(const auto docs, catalog_->ListDocuments());
  for (const DocumentRecord& doc : docs) doc_blocks_[doc.id] = {doc.first_block, doc.blocks};
  live_ranges_ = LiveRanges(doc_blocks_);
  LoadRouterIndexes();
  RefreshRouterIndexes();
  spdlog::info("opened {}: {} documents, {} tokens per stream, router rebuilt in {:.1f} ms",
               path_, committed_.documents, committed_.tokens, MsSince(t0));
  staged_ = committed_;
  if (!options_.read_only) {
    RemoveOrphanSegments();
    MSA_ASSIGN_OR_RETURN(const uint64_t len, catalog_->ReadSegmentLength(committed_.active_segment));
    MSA_RETURN_IF_ERROR(OpenWriter(committed_.active_segment, len));
  }
  return Status::OK();
}

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

Status Store::AppendRecord(std::span<const uint8_t> record, uint32_t* segment, uint64_t* offset) {
  if (writer_->length() > 0 && writer_->length() + record.size() > options_.segment_bytes) {
    // Roll over: the full segment is synced at the next commit. The next
    // writer is opened before the current one is retired, so a failure
    // here leaves the writer as it was.
    const uint32_t next = staged_.active_segment + 1;
    MSA_ASSIGN_OR_RETURN(auto next_writer,
                         io::SegmentWriter::Open(SegmentPath(path_, next), 0, PreallocateBytes()));
    dirty_segments_[staged_.active_segment] = writer_.get();
    retired_writers_.push_back(std::move(writer_));
    writer_ = std::move(next_writer);
    staged_.active_segment = next;
  }
  MSA_ASSIGN_OR_RETURN(*offset, writer_->Append(record.data(), record.size()));
  dirty_segments_[staged_.active_segment] = writer_.get();
  *segment = staged_.active_segment;
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
  if (options_.read_only) return Status::InvalidArgument("store " + path_ + " is open read-only");
  std::lock_guard<std::mutex> lock(write_mu_);
  MSA_RETURN_IF_ERROR(write_error_);
  if (name.empty()) return Status::InvalidArgument("document name is empty");
  if (kv.tokens == 0) return Status::InvalidArgument("document " + name + " has no tokens");
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

  // Encode into local lists first: a failure part-way leaves nothing staged.
  // The encoding (quantisation or zstd, and the summaries) is the CPU-bound
  // part of ingest and runs on several threads; the records are then
  // appended in (stream, block) order, so the layout does not depend on the
  // thread count.
  struct EncodedBlock {
    std::vector<uint8_t> record;
    uint64_t checksum = 0;
    uint32_t tokens = 0;
  };
  const uint64_t items = uint64_t{g.streams()} * n_blocks;  // item = stream * n_blocks + block
  std::vector<EncodedBlock> encoded(items);
  std::vector<std::vector<float>> summaries(g.streams(), std::vector<float>(n_blocks * width));
  auto encode_range = [&](uint64_t from, uint64_t to) -> Status {
    try {
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
        BlockRecordHeader header;
        auto record = encoder.Encode(g.codec, id, tokens, g.head_dim, kin.data(), vin.data(),
                                     &header, kf.data());
        if (!record.ok()) return record.status().WithContext("document " + name);
        encoded[item].record.assign(record->begin(), record->end());
        encoded[item].checksum = header.checksum;
        encoded[item].tokens = tokens;
        // Summary, from the keys as stored (what attention will see).
        Summarize(g, kf.data(), tokens, summaries[stream].data() + b * width);
      }
      return Status::OK();
    } catch (const std::exception& e) {
      return Status::Internal("document " + name + ": encoding failed: " + e.what());
    }
  };
  const unsigned threads = static_cast<unsigned>(
      std::min<uint64_t>(EncodeThreads(), std::max<uint64_t>(1, items / kBlocksPerEncodeThread)));
  if (threads <= 1) {
    MSA_RETURN_IF_ERROR(encode_range(0, items));
  } else {
    std::vector<Status> results(threads);
    std::vector<std::thread> pool;
    for (unsigned t = 0; t < threads; ++t) {
      pool.emplace_back([&, t] { results[t] = encode_range(items * t / threads, items * (t + 1) / threads); });
    }
    for (auto& th : pool) th.join();
    for (const Status& r : results) MSA_RETURN_IF_ERROR(r);
  }
  std::vector<std::vector<BlockLocation>> locations(g.streams());
  for (uint64_t item = 0; item < items; ++item) {
    const uint32_t stream = static_cast<uint32_t>(item / n_blocks);
    const uint64_t b = item % n_blocks;
    EncodedBlock& e = encoded[item];
    uint32_t segment;
    uint64_t offset;
    MSA_RETURN_IF_ERROR(AppendRecord(e.record, &segment, &offset));
    BlockLocation loc;
    loc.segment = segment;
    loc.offset = offset;
    loc.record_bytes = static_cast<uint32_t>(e.record.size());
    loc.tokens = e.tokens;
    loc.checksum = e.checksum;
    loc.doc_id = doc_id;
    loc.first_position = b * bt;
    loc.codec = g.codec;
    locations[stream].push_back(loc);
    std::vector<uint8_t>().swap(e.record);  // appended: give the memory back early
  }
  // Stage: everything below is in memory and cannot fail.
  if (!batch_) batch_ = std::make_unique<Catalog::Batch>();
  for (uint32_t stream = 0; stream < g.streams(); ++stream) {
    const BlockId base{stream / g.kv_heads, stream % g.kv_heads, 0};
    for (size_t j = 0; j < locations[stream].size(); ++j) {
      BlockId id = base;
      id.block = first_block + j;
      batch_->PutBlock(id, locations[stream][j],
                       std::span<const float>(summaries[stream].data() + j * width, width));
    }
    auto& sl = staged_locations_[stream];
    sl.insert(sl.end(), locations[stream].begin(), locations[stream].end());
    auto& ss = staged_summaries_[stream];
    ss.insert(ss.end(), summaries[stream].begin(), summaries[stream].end());
  }
  DocumentRecord doc{doc_id, name, kv.tokens, first_block, n_blocks};
  batch_->PutDocument(doc);
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
  return Status::OK();
}

Status Store::Compact(CompactStats* out) {
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
  for (uint32_t stream = 0; stream < g.streams(); ++stream) {
    const auto& dir = directory_[stream];
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
      }
    }
  }
  if (Status s = copy_batch(); !s.ok()) return fail(s);
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
      MSA_ASSIGN_OR_RETURN(const std::vector<uint8_t> bytes, io::ReadWholeFile(file));
      if (bytes.size() != r.file_bytes || Checksum(bytes.data(), bytes.size()) != r.checksum) {
        return Status::Corruption("size or checksum does not match the catalog");
      }
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

Status Store::FetchBlocks(const std::vector<BlockId>& ids, const std::vector<BlockLocation>& locs,
                          float* keys, float* values, int32_t* len, AttendStats* stats,
                          bool use_cache) const {
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
    if (!cached) {
      misses.push_back(j);
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
  io::StagingBuffer buffer = reader_->Staging(total);  // registered memory when enough is free
  uint64_t at = 0;
  for (size_t m = 0; m < misses.size(); ++m) {
    const BlockLocation& loc = locs[misses[m]];
    MSA_ASSIGN_OR_RETURN(const int fd, SegmentFd(loc.segment));
    const uint32_t padded = static_cast<uint32_t>(io::AlignUp(loc.record_bytes));
    requests[m] = io::ReadRequest{fd, loc.offset, padded, buffer.data() + at};
    at += padded;
  }
  // 2. Decode (checksums verified) into the slots, and keep a copy in the
  // cache: read m's block, on whichever thread runs it.
  const bool keep = use_cache && cache_.capacity() > 0;
  // Without output slots (keys == nullptr: a prefetch) a lossless block is
  // decoded straight into its cache entry, a quantised one into scratch
  // (to verify it; the entry keeps the record).
  auto decode = [&](size_t m) -> Status {
    thread_local BlockDecoder decoder;
    thread_local std::vector<float> scratch;
    const size_t j = misses[m];
    const BlockLocation& loc = locs[j];
    const bool quantised = quantized::Handles(static_cast<Codec>(requests[m].dest[6]));  // the header's codec
    std::shared_ptr<CachedBlock> entry;
    float* k;
    float* v;
    if (keys != nullptr) {
      k = keys + j * block_elems;
      v = values + j * block_elems;
    } else if (quantised) {
      scratch.resize(2 * block_elems);
      k = scratch.data();
      v = scratch.data() + block_elems;
    } else {
      entry = std::make_shared<CachedBlock>();
      entry->keys.resize(loc.tokens * d);
      entry->values.resize(loc.tokens * d);
      k = entry->keys.data();
      v = entry->values.data();
    }
    Status s = decoder.Decode(std::span<const uint8_t>(requests[m].dest, loc.record_bytes), ids[j],
                              loc.checksum, loc.tokens, geometry_.head_dim, k, v);
    if (!s.ok()) {
      return s.WithContext(SegmentPath(path_, loc.segment) + " offset " + std::to_string(loc.offset));
    }
    if (len != nullptr) len[j] = static_cast<int32_t>(loc.tokens);
    if (keep) {
      if (!entry) {
        entry = std::make_shared<CachedBlock>();
        if (quantised) {
          entry->record.assign(requests[m].dest, requests[m].dest + loc.record_bytes);
        } else {
          entry->keys.assign(k, k + loc.tokens * d);
          entry->values.assign(v, v + loc.tokens * d);
        }
      }
      entry->tokens = loc.tokens;
      cache_.Insert(geometry_.StreamOf(ids[j].layer, ids[j].kv_head), ids[j].block, std::move(entry));
    }
    return Status::OK();
  };
  // With decoders, each block is decoded as soon as its read completes,
  // while the others are still in flight; a block or two is not worth the
  // hand-off.
  std::shared_ptr<DecodePool::Batch> batch;
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
    if (reader_->abandoned()) buffer.Leak();  // the kernel may still write into it
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
                                          AttendStats* st) const {
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

  // 1. Route: per (row, KV head) the chosen blocks, ascending.
  const auto t0 = Clock::now();
  auto& chosen = plan.chosen;
  chosen.resize(static_cast<size_t>(n) * g.kv_heads);
  const bool all = options.exact || uint64_t{options.top_k} + 2 >= blocks;
  RouteOptions route;
  const bool whole_stream = ranges.size() == 1 && ranges[0].first == 0 &&
                            ranges[0].second == committed_.blocks_per_stream;
  if (!whole_stream) route.ranges = &ranges;  // documents asked for, or some deleted
  route.top_k = static_cast<uint32_t>(std::min<uint64_t>(options.top_k, blocks));
  route.combine = options.combine;
  route.exact_scan = options.exact_routing;
  route.nprobe = options.nprobe;
  route.candidates = options.candidates;
  route.channels = options.channels;
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
      for (const ScoredBlock& s :
           router_.Search(g.StreamOf(layer, kv), qg, static_cast<int>(group), route, &rs)) {
        sel.push_back(s.block);
      }
      st->routed_fraction += rs.scanned_fraction / (static_cast<double>(n) * g.kv_heads);
      sel.push_back(ranges.front().first);       // sink
      sel.push_back(ranges.back().second - 1);   // most recent
      std::sort(sel.begin(), sel.end());
      sel.erase(std::unique(sel.begin(), sel.end()), sel.end());
    }
  }
  st->route_ms = MsSince(t0);

  // 2. The distinct (KV head, block) pairs, to be fetched in one batch.
  plan.slot_of.resize(g.kv_heads);
  for (uint32_t i = 0; i < n; ++i) {
    for (uint32_t kv = 0; kv < g.kv_heads; ++kv) {
      for (uint64_t b : chosen[static_cast<size_t>(i) * g.kv_heads + kv]) {
        if (plan.slot_of[kv].emplace(b, static_cast<int32_t>(plan.ids.size())).second) {
          plan.ids.push_back(BlockId{layer, kv, b});
          plan.locs.push_back(directory_[g.StreamOf(layer, kv)][b]);
        }
      }
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

  MSA_ASSIGN_OR_RETURN(QueryPlan plan, PlanQuery(layer, q, n, q_heads, options, &st));
  const auto& chosen = plan.chosen;
  const size_t block_elems = static_cast<size_t>(g.block_tokens) * d;
  std::vector<float> keys(plan.ids.size() * block_elems), values(plan.ids.size() * block_elems);
  std::vector<int32_t> len(plan.ids.size());
  // Exact mode reads the whole layer: it would only flush the cache.
  MSA_RETURN_IF_ERROR(FetchBlocks(plan.ids, plan.locs, keys.data(), values.data(), len.data(), &st,
                                  options.use_cache && !options.exact));
  plan.io_lock.unlock();  // the blocks are read

  // 3. Attend.
  const auto t0 = Clock::now();
  size_t max_blocks = 0;
  for (const auto& sel : chosen) max_blocks = std::max(max_blocks, sel.size());
  std::vector<int32_t> index(chosen.size() * std::max<size_t>(max_blocks, 1), -1);
  std::vector<int32_t> count(chosen.size());
  for (size_t r = 0; r < chosen.size(); ++r) {
    const uint32_t kv = static_cast<uint32_t>(r % g.kv_heads);
    count[r] = static_cast<int32_t>(chosen[r].size());
    for (size_t j = 0; j < chosen[r].size(); ++j) index[r * max_blocks + j] = plan.slot_of[kv][chosen[r][j]];
  }
  attention::AttentionShape shape;
  shape.n_queries = static_cast<int>(n);
  shape.q_heads = static_cast<int>(q_heads);
  shape.kv_heads = static_cast<int>(g.kv_heads);
  shape.head_dim = static_cast<int>(d);
  shape.block_tokens = static_cast<int>(g.block_tokens);
  shape.scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(d)));
  attention::BlockTable<float> table{static_cast<int>(plan.ids.size()), keys.data(), values.data(), len.data()};
  attention::Selection selection{static_cast<int>(max_blocks), index.data(), count.data()};
  attention::SparseAttentionCpu(shape, table, selection, q, out, lse);
  st.attend_ms = MsSince(t0);
  st.total_ms = MsSince(t_start);
  if (selected) *selected = std::move(plan.chosen);
  return Status::OK();
}

std::shared_future<Status> Store::Prefetch(uint32_t layer, const float* q, uint32_t n,
                                           uint32_t q_heads, const AttendOptions& options) const {
  auto promise = std::make_shared<std::promise<Status>>();
  std::shared_future<Status> done = promise->get_future().share();
  Status check = CheckQuery(layer, q, n, q_heads);
  if (!check.ok() || n == 0 || options.exact || !options.use_cache || cache_.capacity() == 0) {
    // Nothing to do ahead of time (exact mode and cacheless reads bypass the cache).
    promise->set_value(check);
    return done;
  }
  std::vector<float> q_copy(q, q + static_cast<size_t>(n) * q_heads * geometry_.head_dim);
  prefetcher_.Post([this, layer, n, q_heads, options, promise, q_copy = std::move(q_copy)]() {
    try {
      AttendStats st;
      auto planned = PlanQuery(layer, q_copy.data(), n, q_heads, options, &st);
      if (!planned.ok()) {
        promise->set_value(planned.status());
        return;
      }
      QueryPlan& plan = *planned;
      // No output slots: the blocks go straight into the cache.
      promise->set_value(FetchBlocks(plan.ids, plan.locs, nullptr, nullptr, nullptr, nullptr,
                                     /*use_cache=*/true));
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

Status Store::Verify(VerifyReport* report) const {
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
    }
  }
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
        for (uint32_t stream = 0; stream < g.streams(); ++stream) {
          if (b < directory[stream].size() && directory[stream][b].segment == 0) {
            problem(name + ": block " + std::to_string(b) + " of stream " + std::to_string(stream) +
                    " has no record (removed as if deleted)");
          }
        }
      }
    }
    if (held != doc.tokens) {
      problem(name + ": " + std::to_string(doc.tokens) + " tokens, its blocks hold " + std::to_string(held));
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
  return Status::OK();
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
  for (uint32_t stream = 0; stream < geometry_.streams(); ++stream) s.ivf_streams += router_.has_ivf(stream);
  return s;
}

}  // namespace msa
