#include "store/catalog.h"
#include "store/catalog_file_system.h"

#include <rocksdb/db.h>
#include <rocksdb/options.h>
#include <rocksdb/write_batch.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>

#include <spdlog/spdlog.h>

#include "attention/half.h"
#include "store/codec.h"

namespace msa {

namespace {

// Version 1: no summary fields (mean keys). Version 2 adds the summary kind
// and its centroid count. Version 3 stores the block summaries ('S') as fp16.
constexpr uint32_t kGeometryVersion = 3;
constexpr uint32_t kFirstHalfSummaryVersion = 3;

// ---- little helpers for fixed-width encodings ----
void AppendLe32(std::string* s, uint32_t v) { s->append(reinterpret_cast<const char*>(&v), 4); }
void AppendLe64(std::string* s, uint64_t v) { s->append(reinterpret_cast<const char*>(&v), 8); }
void AppendBe32(std::string* s, uint32_t v) {
  for (int i = 3; i >= 0; --i) s->push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}
void AppendBe64(std::string* s, uint64_t v) {
  for (int i = 7; i >= 0; --i) s->push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}
uint32_t ReadBe32(const char* p) {
  uint32_t v = 0;
  for (int i = 0; i < 4; ++i) v = (v << 8) | static_cast<uint8_t>(p[i]);
  return v;
}
uint64_t ReadBe64(const char* p) {
  uint64_t v = 0;
  for (int i = 0; i < 8; ++i) v = (v << 8) | static_cast<uint8_t>(p[i]);
  return v;
}

// Reads fixed-width little-endian fields in order, remembering underflow.
class Reader {
 public:
  explicit Reader(const std::string& s) : p_(s.data()), left_(s.size()) {}
  template <typename T>
  T Next() {
    T v{};
    if (left_ < sizeof(T)) {
      short_ = true;
      return v;
    }
    std::memcpy(&v, p_, sizeof(T));
    p_ += sizeof(T);
    left_ -= sizeof(T);
    return v;
  }
  std::string Rest() { return std::string(p_, left_); }
  bool ok() const { return !short_; }

 private:
  const char* p_;
  size_t left_;
  bool short_ = false;
};

std::string StreamPrefix(char kind, uint32_t layer, uint32_t kv_head) {
  std::string k(1, kind);
  AppendBe32(&k, layer);
  AppendBe32(&k, kv_head);
  return k;
}
std::string BlockKey(char kind, const BlockId& id) {
  std::string k = StreamPrefix(kind, id.layer, id.kv_head);
  AppendBe64(&k, id.block);
  return k;
}
std::string DocKey(uint64_t id) {
  std::string k = "D";
  AppendBe64(&k, id);
  return k;
}
std::string DeletedDocKey(uint64_t id) {
  std::string k = "X";
  AppendBe64(&k, id);
  return k;
}
std::string SegmentKey(uint32_t seg) {
  std::string k = "L";
  AppendBe32(&k, seg);
  return k;
}

std::string DocTokensKey(uint64_t id) {
  std::string k = "T";
  AppendBe64(&k, id);
  return k;
}

// 'T' record, version 1: version:le32, ids:le64 count then int32 each,
// spans:le64 count then (begin:le64, end:le64) each, then the text (the
// rest of the value). Readers refuse versions they do not know, so a
// later layout gets a new version number.
constexpr uint32_t kDocTokensVersion = 1;

std::string EncodeDocTokens(const DocumentTokens& t) {
  std::string v;
  AppendLe32(&v, kDocTokensVersion);
  AppendLe64(&v, t.ids.size());
  v.append(reinterpret_cast<const char*>(t.ids.data()), t.ids.size() * sizeof(int32_t));
  AppendLe64(&v, t.spans.size());
  for (const TokenSpan& s : t.spans) {
    AppendLe64(&v, s.begin);
    AppendLe64(&v, s.end);
  }
  v += t.text;
  return v;
}

Result<DocumentTokens> DecodeDocTokens(const std::string& v, uint64_t id) {
  const std::string what = "token record of document " + std::to_string(id);
  Reader r(v);
  const uint32_t version = r.Next<uint32_t>();
  if (r.ok() && version != kDocTokensVersion) {
    return Status::NotSupported(what + ": version " + std::to_string(version) +
                                " is not one this msa understands");
  }
  DocumentTokens t;
  const uint64_t n_ids = r.Next<uint64_t>();
  if (!r.ok() || n_ids > v.size() / sizeof(int32_t)) return Status::Corruption(what + " is truncated");
  t.ids.resize(n_ids);
  for (auto& x : t.ids) x = r.Next<int32_t>();
  const uint64_t n_spans = r.Next<uint64_t>();
  if (!r.ok() || n_spans > v.size() / 16) return Status::Corruption(what + " is truncated");
  t.spans.resize(n_spans);
  for (auto& s : t.spans) {
    s.begin = r.Next<uint64_t>();
    s.end = r.Next<uint64_t>();
  }
  if (!r.ok()) return Status::Corruption(what + " is truncated");
  t.text = r.Rest();
  for (const TokenSpan& s : t.spans) {
    if (s.begin > s.end || s.end > t.text.size()) {
      return Status::Corruption(what + ": a token span [" + std::to_string(s.begin) + ", " +
                                std::to_string(s.end) + ") lies outside its " +
                                std::to_string(t.text.size()) + " bytes of text");
    }
  }
  return t;
}

std::string RouterIndexKey(uint32_t stream) {
  std::string k = "R";
  AppendBe32(&k, stream);
  return k;
}

std::string SummaryPieceKey(uint32_t stream, uint64_t first_block) {
  std::string k = "P";
  AppendBe32(&k, stream);
  AppendBe64(&k, first_block);
  return k;
}

std::string EncodeGeometry(const Geometry& g) {
  std::string v;
  AppendLe32(&v, kGeometryVersion);
  AppendLe32(&v, g.layers);
  AppendLe32(&v, g.kv_heads);
  AppendLe32(&v, g.head_dim);
  AppendLe32(&v, g.block_tokens);
  AppendLe32(&v, static_cast<uint32_t>(g.codec));
  AppendLe32(&v, static_cast<uint32_t>(g.summary));
  AppendLe32(&v, g.summary_centroids);
  return v;
}

Result<Geometry> DecodeGeometry(const std::string& v, uint32_t* version_out) {
  Reader r(v);
  const uint32_t version = r.Next<uint32_t>();
  *version_out = version;
  Geometry g;
  g.layers = r.Next<uint32_t>();
  g.kv_heads = r.Next<uint32_t>();
  g.head_dim = r.Next<uint32_t>();
  g.block_tokens = r.Next<uint32_t>();
  g.codec = static_cast<Codec>(r.Next<uint32_t>());
  if (version >= 2) {
    g.summary = static_cast<SummaryKind>(r.Next<uint32_t>());
    g.summary_centroids = r.Next<uint32_t>();
  }
  if (!r.ok()) return Status::Corruption("geometry record is truncated");
  if (version > kGeometryVersion || version == 0) {
    return Status::NotSupported("store format version " + std::to_string(version) +
                                " is newer than this msa understands");
  }
  MSA_RETURN_IF_ERROR(g.Validate().WithContext("stored geometry"));
  return g;
}

std::string EncodeLocation(const BlockLocation& l) {
  std::string v;
  AppendLe32(&v, l.segment);
  AppendLe64(&v, l.offset);
  AppendLe32(&v, l.record_bytes);
  AppendLe32(&v, l.tokens);
  AppendLe64(&v, l.checksum);
  AppendLe64(&v, l.doc_id);
  AppendLe64(&v, l.first_position);
  v.push_back(static_cast<char>(l.codec));
  return v;
}

Result<BlockLocation> DecodeLocation(const std::string& v) {
  Reader r(v);
  BlockLocation l;
  l.segment = r.Next<uint32_t>();
  l.offset = r.Next<uint64_t>();
  l.record_bytes = r.Next<uint32_t>();
  l.tokens = r.Next<uint32_t>();
  l.checksum = r.Next<uint64_t>();
  l.doc_id = r.Next<uint64_t>();
  l.first_position = r.Next<uint64_t>();
  l.codec = static_cast<Codec>(r.Next<uint8_t>());
  if (!r.ok()) return Status::Corruption("block location record is truncated");
  return l;
}

std::string EncodeCounters(const CatalogCounters& c) {
  std::string v;
  AppendLe64(&v, c.next_doc_id);
  AppendLe64(&v, c.blocks_per_stream);
  AppendLe64(&v, c.tokens);
  AppendLe32(&v, c.active_segment);
  AppendLe64(&v, c.documents);
  return v;
}

std::string EncodeDocument(const DocumentRecord& d) {
  std::string v;
  AppendLe64(&v, d.id);
  AppendLe64(&v, d.tokens);
  AppendLe64(&v, d.first_block);
  AppendLe64(&v, d.blocks);
  v += d.name;
  return v;
}

Result<DocumentRecord> DecodeDocument(const std::string& v) {
  Reader r(v);
  DocumentRecord d;
  d.id = r.Next<uint64_t>();
  d.tokens = r.Next<uint64_t>();
  d.first_block = r.Next<uint64_t>();
  d.blocks = r.Next<uint64_t>();
  if (!r.ok()) return Status::Corruption("document record is truncated");
  d.name = r.Rest();
  return d;
}

Status FromRocks(const rocksdb::Status& s, const std::string& what) {
  if (s.ok()) return Status::OK();
  if (s.IsNotFound()) return Status::NotFound(what + ": " + s.ToString());
  if (s.IsCorruption()) return Status::Corruption(what + ": " + s.ToString());
  if (s.IsInvalidArgument()) return Status::InvalidArgument(what + ": " + s.ToString());
  return Status::IOError(what + ": " + s.ToString());
}

rocksdb::Options BaseOptions() {
  rocksdb::Options o;
  o.create_if_missing = false;
  o.paranoid_checks = true;
  o.info_log_level = rocksdb::InfoLogLevel::WARN_LEVEL;
  o.keep_log_file_num = 2;
  // A failure to write the OPTIONS file is an I/O failure like any other:
  // report it rather than carry on with a disk that fails writes.
  o.fail_if_options_file_error = true;
  // Every commit syncs its WAL record before returning, so the only damage
  // a crash or power loss can leave is an incomplete last record. Anything
  // else (a record whose checksum fails, a byte the disk flipped on the way
  // in) fails the open instead of being taken for a torn tail: RocksDB's
  // default (point-in-time recovery) would stop replaying there and drop
  // every commit after it -- acknowledged ones included, for good, once the
  // open rewrites the catalog (CatalogReadFaults.EveryReadOfAnOpenFailsItOr-
  // LosesNothing found it).
  o.wal_recovery_mode = rocksdb::WALRecoveryMode::kTolerateCorruptedTailRecords;
  // RocksDB's files go through the io layer's fault-injection seam
  // (store/catalog_file_system.h); without an injector, the POSIX file system.
  o.env = CatalogEnv();
  return o;
}

bool DirectoryHasCatalog(const std::string& dir) {
  struct stat st;
  return ::stat((dir + "/CURRENT").c_str(), &st) == 0;
}

}  // namespace

Status ValidateDocumentTokens(const DocumentTokens& t, uint64_t tokens) {
  if (!t.ids.empty() && t.ids.size() != tokens) {
    return Status::InvalidArgument(std::to_string(t.ids.size()) + " token ids for a document of " +
                                   std::to_string(tokens) + " tokens");
  }
  if (!t.spans.empty() && t.spans.size() != tokens) {
    return Status::InvalidArgument(std::to_string(t.spans.size()) + " token spans for a document of " +
                                   std::to_string(tokens) + " tokens");
  }
  if (!t.spans.empty() && t.text.empty()) return Status::InvalidArgument("token spans without text");
  for (size_t i = 0; i < t.spans.size(); ++i) {
    if (t.spans[i].begin > t.spans[i].end || t.spans[i].end > t.text.size()) {
      return Status::InvalidArgument("span of token " + std::to_string(i) + " [" +
                                     std::to_string(t.spans[i].begin) + ", " + std::to_string(t.spans[i].end) +
                                     ") is not inside the " + std::to_string(t.text.size()) + " bytes of text");
    }
  }
  return Status::OK();
}

Result<std::unique_ptr<Catalog>> Catalog::Create(const std::string& dir, const Geometry& geometry) {
  MSA_RETURN_IF_ERROR(geometry.Validate());
  if (DirectoryHasCatalog(dir)) return Status::AlreadyExists(dir + " already holds a catalog");
  rocksdb::Options o = BaseOptions();
  o.create_if_missing = true;
  o.error_if_exists = true;
  rocksdb::DB* db = nullptr;
  MSA_RETURN_IF_ERROR(FromRocks(rocksdb::DB::Open(o, dir, &db), "create catalog " + dir));
  std::unique_ptr<Catalog> catalog(new Catalog(dir, db, geometry, /*half_summaries=*/true, /*read_only=*/false));
  Batch batch;
  batch.batch_->Put("G", EncodeGeometry(geometry));
  batch.PutCounters(CatalogCounters{});
  MSA_RETURN_IF_ERROR(catalog->Commit(batch));
  return catalog;
}

Result<std::unique_ptr<Catalog>> Catalog::Open(const std::string& dir, bool read_only) {
  if (!DirectoryHasCatalog(dir)) return Status::NotFound("no catalog in " + dir);
  rocksdb::DB* db = nullptr;
  rocksdb::Options o = BaseOptions();
  const rocksdb::Status s = read_only ? rocksdb::DB::OpenForReadOnly(o, dir, &db)
                                      : rocksdb::DB::Open(o, dir, &db);
  MSA_RETURN_IF_ERROR(FromRocks(s, "open catalog " + dir));
  std::string value;
  const rocksdb::Status g = db->Get(rocksdb::ReadOptions(), "G", &value);
  if (!g.ok()) {
    delete db;
    return FromRocks(g, "read geometry from " + dir).WithContext("not an msa catalog");
  }
  uint32_t version = 0;
  auto geometry = DecodeGeometry(value, &version);
  if (!geometry.ok()) {
    delete db;
    return geometry.status().WithContext(dir);
  }
  std::unique_ptr<Catalog> catalog(
      new Catalog(dir, db, *geometry, /*half_summaries=*/version >= kFirstHalfSummaryVersion, read_only));
  MSA_RETURN_IF_ERROR(catalog->CheckHighWater());
  return catalog;
}

Catalog::Catalog(std::string dir, rocksdb::DB* db, Geometry geometry, bool half_summaries, bool read_only)
    : dir_(std::move(dir)), db_(db), geometry_(geometry), half_summaries_(half_summaries), read_only_(read_only) {
  // Everything recovered was acknowledged once; the mark may already say so.
  acknowledged_ = high_water_ = db_->GetLatestSequenceNumber();
  high_water_at_ = std::chrono::steady_clock::now();
}

Catalog::~Catalog() {
  if (!read_only_ && acknowledged_ != high_water_) WriteHighWater();
  delete db_;
}

Status Catalog::Flush() {
  if (read_only_) return Status::NotSupported("catalog " + dir_ + " is open read-only; it cannot flush");
  rocksdb::FlushOptions options;
  options.wait = true;
  return FromRocks(db_->Flush(options), "flush catalog " + dir_);
}

namespace {
// HIGH-WATER: magic, the sequence, and XXH3-64 of both (little-endian).
constexpr char kHighWaterMagic[8] = {'M', 'S', 'A', 'H', 'W', 'M', '0', '1'};
constexpr size_t kHighWaterBytes = 24;
}  // namespace

Status Catalog::CheckHighWater() const {
  const std::string path = dir_ + "/" + kHighWaterFile;
  // Plain system calls, not the fault-injection seam: the mark is advisory
  // (a failure to read it must not fail an open that is otherwise sound).
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return Status::OK();  // none written yet (a new or an older store)
  uint8_t bytes[kHighWaterBytes];
  const ssize_t got = ::pread(fd, bytes, sizeof(bytes), 0);
  ::close(fd);
  uint64_t sequence = 0, checksum = 0;
  std::memcpy(&sequence, bytes + 8, 8);
  std::memcpy(&checksum, bytes + 16, 8);
  if (got != static_cast<ssize_t>(kHighWaterBytes) || std::memcmp(bytes, kHighWaterMagic, 8) != 0 ||
      checksum != Checksum(bytes, 16)) {
    spdlog::warn("{} is unreadable or damaged; not checking the catalog against it", path);
    return Status::OK();
  }
  const uint64_t recovered = db_->GetLatestSequenceNumber();
  if (recovered < sequence) {
    return Status::Corruption("catalog " + dir_ + " opens at commit sequence " + std::to_string(recovered) +
                              ", but commits up to sequence " + std::to_string(sequence) +
                              " were acknowledged (" + path +
                              "): its write-ahead log was truncated or lost. Nothing was changed on disk; "
                              "restore the catalog directory from a copy");
  }
  return Status::OK();
}

void Catalog::WriteHighWater() {
  const uint64_t sequence = acknowledged_;
  uint8_t bytes[kHighWaterBytes];
  std::memcpy(bytes, kHighWaterMagic, 8);
  std::memcpy(bytes + 8, &sequence, 8);
  const uint64_t checksum = Checksum(bytes, 16);
  std::memcpy(bytes + 16, &checksum, 8);
  // Written whole to a temporary file and renamed over the mark, so that a
  // reader sees the old mark or the new one (a torn one only after a power
  // loss, and that is read as no mark). No sync: see kHighWaterFile.
  const std::string path = dir_ + "/" + kHighWaterFile, tmp = path + ".tmp";
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  bool ok = fd >= 0 && ::pwrite(fd, bytes, sizeof(bytes), 0) == static_cast<ssize_t>(sizeof(bytes));
  if (fd >= 0) ok = ::close(fd) == 0 && ok;
  ok = ok && ::rename(tmp.c_str(), path.c_str()) == 0;
  if (!ok) {
    spdlog::warn("could not write {} ({}); the catalog's truncation check stays at sequence {}", path,
                 std::strerror(errno), high_water_);
    ::unlink(tmp.c_str());
    return;
  }
  high_water_ = sequence;
  high_water_at_ = std::chrono::steady_clock::now();
}

Result<CatalogCounters> Catalog::ReadCounters() const {
  std::string v;
  MSA_RETURN_IF_ERROR(FromRocks(db_->Get(rocksdb::ReadOptions(), "C", &v), "read counters"));
  Reader r(v);
  CatalogCounters c;
  c.next_doc_id = r.Next<uint64_t>();
  c.blocks_per_stream = r.Next<uint64_t>();
  c.tokens = r.Next<uint64_t>();
  c.active_segment = r.Next<uint32_t>();
  c.documents = r.Next<uint64_t>();
  if (!r.ok()) return Status::Corruption("counters record is truncated");
  return c;
}

Result<uint64_t> Catalog::ReadSegmentLength(uint32_t segment) const {
  std::string v;
  const rocksdb::Status s = db_->Get(rocksdb::ReadOptions(), SegmentKey(segment), &v);
  if (s.IsNotFound()) return uint64_t{0};
  MSA_RETURN_IF_ERROR(FromRocks(s, "read segment length"));
  Reader r(v);
  const uint64_t len = r.Next<uint64_t>();
  if (!r.ok()) return Status::Corruption("segment length record is truncated");
  return len;
}

Result<std::optional<RouterIndexRecord>> Catalog::ReadRouterIndex(uint32_t stream) const {
  std::string v;
  const rocksdb::Status s = db_->Get(rocksdb::ReadOptions(), RouterIndexKey(stream), &v);
  if (s.IsNotFound()) return std::optional<RouterIndexRecord>();
  MSA_RETURN_IF_ERROR(FromRocks(s, "read router index record"));
  Reader r(v);
  RouterIndexRecord rec;
  rec.generation = r.Next<uint64_t>();
  rec.blocks = r.Next<uint64_t>();
  rec.trained_vectors = r.Next<uint64_t>();
  rec.file_bytes = r.Next<uint64_t>();
  rec.checksum = r.Next<uint64_t>();
  if (!r.ok()) return Status::Corruption("router index record of stream " + std::to_string(stream) + " is truncated");
  return std::optional<RouterIndexRecord>(rec);
}

Result<std::vector<SummaryPieceRecord>> Catalog::ListSummaryPieces(uint32_t stream) const {
  std::string prefix = "P";
  AppendBe32(&prefix, stream);
  std::vector<SummaryPieceRecord> out;
  std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(rocksdb::ReadOptions()));
  for (it->Seek(prefix); it->Valid() && it->key().starts_with(prefix); it->Next()) {
    if (it->key().size() != prefix.size() + 8) return Status::Corruption("malformed summary piece key");
    SummaryPieceRecord rec;
    rec.first_block = ReadBe64(it->key().data() + prefix.size());
    const std::string v = it->value().ToString();
    Reader r(v);
    rec.blocks = r.Next<uint64_t>();
    rec.file_bytes = r.Next<uint64_t>();
    rec.checksum = r.Next<uint64_t>();
    if (!r.ok()) {
      return Status::Corruption("summary piece record of stream " + std::to_string(stream) + " is truncated");
    }
    out.push_back(rec);
  }
  MSA_RETURN_IF_ERROR(FromRocks(it->status(), "list summary pieces"));
  return out;
}

Result<std::optional<uint64_t>> Catalog::FindDocument(const std::string& name) const {
  std::string v;
  const rocksdb::Status s = db_->Get(rocksdb::ReadOptions(), "N" + name, &v);
  if (s.IsNotFound()) return std::optional<uint64_t>();
  MSA_RETURN_IF_ERROR(FromRocks(s, "look up document " + name));
  Reader r(v);
  const uint64_t id = r.Next<uint64_t>();
  if (!r.ok()) return Status::Corruption("document name record is truncated");
  return std::optional<uint64_t>(id);
}

Result<std::vector<DocumentRecord>> Catalog::ListDocuments() const {
  std::vector<DocumentRecord> docs;
  std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(rocksdb::ReadOptions()));
  for (it->Seek("D"); it->Valid() && it->key().starts_with("D"); it->Next()) {
    MSA_ASSIGN_OR_RETURN(DocumentRecord d, DecodeDocument(it->value().ToString()));
    docs.push_back(std::move(d));
  }
  MSA_RETURN_IF_ERROR(FromRocks(it->status(), "list documents"));
  return docs;
}

Result<std::vector<DocumentRecord>> Catalog::ListDeletedDocuments() const {
  std::vector<DocumentRecord> docs;
  std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(rocksdb::ReadOptions()));
  for (it->Seek("X"); it->Valid() && it->key().starts_with("X"); it->Next()) {
    MSA_ASSIGN_OR_RETURN(DocumentRecord d, DecodeDocument(it->value().ToString()));
    docs.push_back(std::move(d));
  }
  MSA_RETURN_IF_ERROR(FromRocks(it->status(), "list deleted documents"));
  return docs;
}

Result<std::optional<DocumentRecord>> Catalog::ReadDocument(uint64_t id) const {
  std::string v;
  const rocksdb::Status s = db_->Get(rocksdb::ReadOptions(), DocKey(id), &v);
  if (s.IsNotFound()) return std::optional<DocumentRecord>();
  MSA_RETURN_IF_ERROR(FromRocks(s, "read document " + std::to_string(id)));
  MSA_ASSIGN_OR_RETURN(DocumentRecord d, DecodeDocument(v));
  return std::optional<DocumentRecord>(std::move(d));
}

Result<std::optional<DocumentTokens>> Catalog::ReadDocumentTokens(uint64_t id) const {
  std::string v;
  const rocksdb::Status s = db_->Get(rocksdb::ReadOptions(), DocTokensKey(id), &v);
  if (s.IsNotFound()) return std::optional<DocumentTokens>();
  MSA_RETURN_IF_ERROR(FromRocks(s, "read tokens of document " + std::to_string(id)));
  MSA_ASSIGN_OR_RETURN(DocumentTokens t, DecodeDocTokens(v, id));
  return std::optional<DocumentTokens>(std::move(t));
}

Result<std::vector<std::pair<uint32_t, uint64_t>>> Catalog::ListSegments() const {
  std::vector<std::pair<uint32_t, uint64_t>> out;
  std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(rocksdb::ReadOptions()));
  for (it->Seek("L"); it->Valid() && it->key().starts_with("L"); it->Next()) {
    if (it->key().size() != 5 || it->value().size() != 8) {
      return Status::Corruption("malformed segment length record");
    }
    uint64_t len;
    std::memcpy(&len, it->value().data(), 8);
    out.emplace_back(ReadBe32(it->key().data() + 1), len);
  }
  MSA_RETURN_IF_ERROR(FromRocks(it->status(), "list segments"));
  return out;
}

Status Catalog::ScanBlocks(uint32_t layer, uint32_t kv_head,
                           const std::function<Status(uint64_t, const BlockLocation&)>& fn) const {
  const std::string prefix = StreamPrefix('B', layer, kv_head);
  std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(rocksdb::ReadOptions()));
  for (it->Seek(prefix); it->Valid() && it->key().starts_with(prefix); it->Next()) {
    if (it->key().size() != prefix.size() + 8) return Status::Corruption("malformed block key");
    const uint64_t block = ReadBe64(it->key().data() + prefix.size());
    MSA_ASSIGN_OR_RETURN(BlockLocation loc, DecodeLocation(it->value().ToString()));
    MSA_RETURN_IF_ERROR(fn(block, loc));
  }
  return FromRocks(it->status(), "scan block directory");
}

Status Catalog::ScanSummaries(
    uint32_t layer, uint32_t kv_head,
    const std::function<Status(uint64_t, std::span<const float>)>& fn, uint64_t from) const {
  const std::string prefix = StreamPrefix('S', layer, kv_head);
  const size_t bytes = (half_summaries_ ? sizeof(uint16_t) : sizeof(float)) * geometry_.summary_width();
  std::vector<float> summary(geometry_.summary_width());
  std::vector<uint16_t> halves(half_summaries_ ? geometry_.summary_width() : 0);
  std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(rocksdb::ReadOptions()));
  std::string start = prefix;
  AppendBe64(&start, from);
  for (it->Seek(start); it->Valid() && it->key().starts_with(prefix); it->Next()) {
    if (it->key().size() != prefix.size() + 8 || it->value().size() != bytes) {
      return Status::Corruption("malformed summary record for layer " + std::to_string(layer) +
                                " kv-head " + std::to_string(kv_head));
    }
    if (half_summaries_) {
      // Copied out first: RocksDB's value bytes have no alignment.
      std::memcpy(halves.data(), it->value().data(), bytes);
      attention::HalfToFloatArray(halves.data(), summary.data(), summary.size());
    } else {
      std::memcpy(summary.data(), it->value().data(), bytes);
    }
    MSA_RETURN_IF_ERROR(fn(ReadBe64(it->key().data() + prefix.size()), summary));
  }
  return FromRocks(it->status(), "scan summaries");
}

Catalog::Batch::Batch() : batch_(std::make_unique<rocksdb::WriteBatch>()) {}
Catalog::Batch::~Batch() = default;

void Catalog::Batch::PutBlock(const BlockId& id, const BlockLocation& loc, std::span<const float> summary,
                              bool half) {
  batch_->Put(BlockKey('B', id), EncodeLocation(loc));
  if (!half) {
    batch_->Put(BlockKey('S', id),
                rocksdb::Slice(reinterpret_cast<const char*>(summary.data()), summary.size() * sizeof(float)));
    return;
  }
  half_.resize(summary.size());
  attention::FloatToHalfArray(summary.data(), half_.data(), summary.size());
  batch_->Put(BlockKey('S', id),
              rocksdb::Slice(reinterpret_cast<const char*>(half_.data()), half_.size() * sizeof(uint16_t)));
}

void Catalog::Batch::PutDocument(const DocumentRecord& doc) {
  batch_->Put(DocKey(doc.id), EncodeDocument(doc));
  std::string id;
  AppendLe64(&id, doc.id);
  batch_->Put("N" + doc.name, id);
}

void Catalog::Batch::DeleteDocument(const DocumentRecord& doc) {
  batch_->Delete(DocKey(doc.id));
  batch_->Delete("N" + doc.name);
  batch_->Put(DeletedDocKey(doc.id), EncodeDocument(doc));
  batch_->Delete(DocTokensKey(doc.id));  // nothing to show of a deleted document
}

void Catalog::Batch::PutBlockLocation(const BlockId& id, const BlockLocation& loc) {
  batch_->Put(BlockKey('B', id), EncodeLocation(loc));
}

void Catalog::Batch::DeleteSegmentLength(uint32_t segment) { batch_->Delete(SegmentKey(segment)); }

void Catalog::Batch::PutSegmentLength(uint32_t segment, uint64_t length) {
  std::string v;
  AppendLe64(&v, length);
  batch_->Put(SegmentKey(segment), v);
}

void Catalog::Batch::PutRouterIndex(uint32_t stream, const RouterIndexRecord& rec) {
  std::string v;
  AppendLe64(&v, rec.generation);
  AppendLe64(&v, rec.blocks);
  AppendLe64(&v, rec.trained_vectors);
  AppendLe64(&v, rec.file_bytes);
  AppendLe64(&v, rec.checksum);
  batch_->Put(RouterIndexKey(stream), v);
}

void Catalog::Batch::PutSummaryPiece(uint32_t stream, const SummaryPieceRecord& rec) {
  std::string v;
  AppendLe64(&v, rec.blocks);
  AppendLe64(&v, rec.file_bytes);
  AppendLe64(&v, rec.checksum);
  batch_->Put(SummaryPieceKey(stream, rec.first_block), v);
}

void Catalog::Batch::DeleteSummaryPiece(uint32_t stream, uint64_t first_block) {
  batch_->Delete(SummaryPieceKey(stream, first_block));
}

void Catalog::Batch::PutDocumentTokens(uint64_t id, const DocumentTokens& tokens) {
  batch_->Put(DocTokensKey(id), EncodeDocTokens(tokens));
}

void Catalog::Batch::PutCounters(const CatalogCounters& counters) {
  batch_->Put("C", EncodeCounters(counters));
}

size_t Catalog::Batch::count() const { return batch_->Count(); }

Status Catalog::Commit(Batch& batch) {
  rocksdb::WriteOptions o;
  o.sync = true;
  MSA_RETURN_IF_ERROR(FromRocks(db_->Write(o, batch.batch_.get()), "commit to catalog " + dir_));
  // Commits are serialised by the store, so this is the sequence of this
  // batch: durable now. (A failed write's sequence is never recorded.)
  acknowledged_ = db_->GetLatestSequenceNumber();
  if (std::chrono::steady_clock::now() - high_water_at_ >= std::chrono::seconds(1)) WriteHighWater();
  return Status::OK();
}

}  // namespace msa
