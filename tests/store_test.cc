// The store end to end: commit protocol, reopen, exact = dense, routing,
// checksums, and the CLI's contract for bad input.
#include <gtest/gtest.h>

#include <fcntl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <rocksdb/db.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <memory>

#include "attention/half.h"
#include "store/catalog.h"
#include "store/store.h"
#include "test_util.h"
#include "tools/npy_file.h"
#include "tools/safetensors_file.h"

namespace msa {
namespace {

using msa::testing::TempDir;

Geometry SmallGeometry() {
  Geometry g;
  g.layers = 2;
  g.kv_heads = 2;
  g.head_dim = 16;
  g.block_tokens = 8;
  return g;
}

// K/V for one document: [layers, kv_heads, tokens, head_dim], fp16-exact.
struct Doc {
  std::string name;
  uint64_t tokens;
  std::vector<float> keys, values;
};

Doc MakeDoc(const Geometry& g, const std::string& name, uint64_t tokens, uint64_t seed) {
  Doc d{name, tokens, msa::testing::RandomVector(g.streams() * tokens * g.head_dim, seed),
        msa::testing::RandomVector(g.streams() * tokens * g.head_dim, seed + 1000)};
  for (auto* v : {&d.keys, &d.values})
    for (auto& x : *v) x = attention::HalfToFloat(attention::FloatToHalf(x));  // make exact in fp16
  return d;
}

Status Append(Store& s, const Doc& d) {
  auto id = s.AppendDocument(d.name, DocumentKV{d.keys.data(), d.values.data(), d.tokens, ElementType::kFloat32});
  return id.status();
}

// The stream (layer, kv) of the concatenation of docs.
std::vector<float> StreamOf(const Geometry& g, const std::vector<Doc>& docs, uint32_t layer, uint32_t kv,
                            bool keys) {
  std::vector<float> out;
  for (const Doc& d : docs) {
    const auto& src = keys ? d.keys : d.values;
    const size_t at = static_cast<size_t>(g.StreamOf(layer, kv)) * d.tokens * g.head_dim;
    out.insert(out.end(), src.begin() + at, src.begin() + at + d.tokens * g.head_dim);
  }
  return out;
}

TEST(Store, RoundTripIsBitExactAfterReopenAndUncommittedIsInvisible) {
  TempDir dir;
  const Geometry g = SmallGeometry();
  std::vector<Doc> docs = {MakeDoc(g, "a", 21, 1), MakeDoc(g, "b", 8, 2), MakeDoc(g, "c", 1, 3)};
  {
    auto s = Store::Create(dir.Sub("store"), g);
    ASSERT_TRUE(s.ok()) << s.status().ToString();
    for (const Doc& d : docs) ASSERT_TRUE(Append(**s, d).ok());
    ASSERT_TRUE((*s)->Commit().ok());
    // Staged but never committed: must vanish.
    ASSERT_TRUE(Append(**s, MakeDoc(g, "uncommitted", 30, 9)).ok());
    EXPECT_EQ(Append(**s, docs[0]).code(), Status::Code::kAlreadyExists);
  }
  auto s = Store::Open(dir.Sub("store"));
  ASSERT_TRUE(s.ok()) << s.status().ToString();
  auto listed = (*s)->ListDocuments();
  ASSERT_TRUE(listed.ok());
  ASSERT_EQ(listed->size(), 3u);
  EXPECT_EQ((*listed)[1].name, "b");
  EXPECT_EQ((*s)->Stats().tokens, 30u);
  EXPECT_EQ((*s)->Stats().blocks_per_stream, 3u + 1u + 1u);  // blocks never straddle documents
  for (uint32_t layer = 0; layer < g.layers; ++layer) {
    for (uint32_t kv = 0; kv < g.kv_heads; ++kv) {
      std::vector<float> k, v;
      ASSERT_TRUE((*s)->ReadStream(layer, kv, &k, &v).ok());
      EXPECT_EQ(k, StreamOf(g, docs, layer, kv, true));
      EXPECT_EQ(v, StreamOf(g, docs, layer, kv, false));
    }
  }
  // The uncommitted document's name is free again after the restart.
  EXPECT_TRUE(Append(**s, MakeDoc(g, "uncommitted", 3, 9)).ok());
}

// --exact and a top-k covering every block must both equal dense attention
// over all tokens, to float32 rounding (1e-4; see attention_test.cc).
TEST(Store, ExactAndFullTopKEqualDenseReference) {
  TempDir dir;
  const Geometry g = SmallGeometry();
  std::vector<Doc> docs = {MakeDoc(g, "a", 37, 11), MakeDoc(g, "b", 19, 12)};
  auto s = Store::Create(dir.Sub("store"), g);
  ASSERT_TRUE(s.ok());
  for (const Doc& d : docs) ASSERT_TRUE(Append(**s, d).ok());
  ASSERT_TRUE((*s)->Commit().ok());
  const uint32_t n = 3, qh = 6, d = g.head_dim;  // GQA: 3 query heads per KV head
  auto q = msa::testing::RandomVector(n * qh * d, 5, 1.5f);
  for (const bool exact : {true, false}) {
    AttendOptions opts;
    opts.exact = exact;
    opts.top_k = exact ? 0 : 100;
    std::vector<float> out(n * qh * d), lse(n * qh);
    ASSERT_TRUE((*s)->Attend(1, q.data(), n, qh, opts, out.data(), lse.data()).ok());
    for (uint32_t i = 0; i < n; ++i) {
      for (uint32_t h = 0; h < qh; ++h) {
        const uint32_t kv = h / (qh / g.kv_heads);
        const auto k = StreamOf(g, docs, 1, kv, true), v = StreamOf(g, docs, 1, kv, false);
        std::vector<double> ref(d);
        double ref_lse;
        msa::testing::DenseReference(&q[(i * qh + h) * d], k.data(), v.data(), 56, d, ref.data(), &ref_lse);
        for (uint32_t c = 0; c < d; ++c) ASSERT_NEAR(out[(i * qh + h) * d + c], ref[c], 1e-4);
        ASSERT_NEAR(lse[i * qh + h], ref_lse, 1e-4);
      }
    }
  }
}

TEST(Store, RouterFindsTheNeedleBlockPlusSinkAndRecent) {
  TempDir dir;
  Geometry g = SmallGeometry();
  g.layers = 1;
  g.kv_heads = 1;
  Doc doc = MakeDoc(g, "haystack", 8 * 200, 21);
  // A needle: block 123 made of keys aligned with the query direction.
  auto dir_q = msa::testing::RandomVector(g.head_dim, 77);
  for (uint64_t t = 123 * 8; t < 124 * 8; ++t)
    for (uint32_t c = 0; c < g.head_dim; ++c)
      doc.keys[t * g.head_dim + c] = attention::HalfToFloat(attention::FloatToHalf(3.0f * dir_q[c]));
  auto s = Store::Create(dir.Sub("store"), g);
  ASSERT_TRUE(s.ok());
  ASSERT_TRUE(Append(**s, doc).ok());
  ASSERT_TRUE((*s)->Commit().ok());
  AttendOptions opts;
  opts.top_k = 2;
  std::vector<float> out(g.head_dim), lse(1);
  std::vector<std::vector<uint64_t>> selected;
  ASSERT_TRUE((*s)->Attend(0, dir_q.data(), 1, 1, opts, out.data(), lse.data(), nullptr, &selected).ok());
  ASSERT_EQ(selected.size(), 1u);
  const auto& sel = selected[0];
  EXPECT_LE(sel.size(), 4u);
  EXPECT_TRUE(std::count(sel.begin(), sel.end(), 123u)) << "needle block not routed";
  EXPECT_EQ(sel.front(), 0u);    // sink
  EXPECT_EQ(sel.back(), 199u);   // most recent
}

// Block summaries in the catalog: fp16 in stores of format 3 on (the
// router's precision; float32 doubled every commit's bytes), float32 in
// stores made before, which keep writing float32 so that older msa still
// reads them. Both reopen to the same routing and the same results.
TEST(Store, SummariesAreHalfInNewStoresAndStayFloatInOldOnes) {
  const Geometry g = SmallGeometry();
  const Doc a = MakeDoc(g, "a", 8 * 40, 31), b = MakeDoc(g, "b", 8 * 25 + 3, 32);
  const auto q = msa::testing::RandomVector(4 * g.head_dim, 33);  // 4 query heads over 2 KV heads
  std::vector<float> outs[2], lses[2];
  std::vector<std::vector<uint64_t>> selected[2];
  for (const bool old_format : {false, true}) {
    SCOPED_TRACE(old_format ? "format 2 (float32 summaries)" : "format 3 (fp16 summaries)");
    TempDir dir;
    ASSERT_TRUE(Store::Create(dir.Sub("store"), g).ok());
    if (old_format) {  // what an older msa wrote: the geometry record says version 2
      rocksdb::DB* raw = nullptr;
      ASSERT_TRUE(rocksdb::DB::Open(rocksdb::Options(), dir.Sub("store/catalog"), &raw).ok());
      std::unique_ptr<rocksdb::DB> db(raw);
      std::string geometry;
      ASSERT_TRUE(db->Get(rocksdb::ReadOptions(), "G", &geometry).ok());
      geometry[0] = 2;  // the version, little-endian u32
      ASSERT_TRUE(db->Put(rocksdb::WriteOptions(), "G", geometry).ok());
    }
    {
      auto s = Store::Open(dir.Sub("store"));
      ASSERT_TRUE(s.ok()) << s.status().ToString();
      ASSERT_TRUE(Append(**s, a).ok());
      ASSERT_TRUE((*s)->Commit().ok());
      ASSERT_TRUE(Append(**s, b).ok());
      ASSERT_TRUE((*s)->Commit().ok());
    }
    {
      auto catalog = Catalog::Open(dir.Sub("store/catalog"), /*read_only=*/true);
      ASSERT_TRUE(catalog.ok()) << catalog.status().ToString();
      EXPECT_EQ((*catalog)->half_summaries(), !old_format);
    }
    {  // the records' sizes, as RocksDB holds them
      rocksdb::DB* raw = nullptr;
      ASSERT_TRUE(rocksdb::DB::OpenForReadOnly(rocksdb::Options(), dir.Sub("store/catalog"), &raw).ok());
      std::unique_ptr<rocksdb::DB> db(raw);
      std::unique_ptr<rocksdb::Iterator> it(db->NewIterator(rocksdb::ReadOptions()));
      size_t records = 0;
      for (it->Seek("S"); it->Valid() && it->key().starts_with("S"); it->Next(), ++records) {
        ASSERT_EQ(it->value().size(), g.summary_width() * (old_format ? 4u : 2u));
      }
      EXPECT_EQ(records, g.streams() * (40u + 26u));
    }
    auto s = Store::Open(dir.Sub("store"));
    ASSERT_TRUE(s.ok()) << s.status().ToString();
    AttendOptions opts;
    opts.top_k = 5;
    outs[old_format].resize(4 * g.head_dim);
    lses[old_format].resize(4);
    ASSERT_TRUE((*s)->Attend(1, q.data(), 1, 4, opts, outs[old_format].data(), lses[old_format].data(), nullptr,
                             &selected[old_format])
                    .ok());
  }
  EXPECT_EQ(selected[0], selected[1]);
  EXPECT_EQ(outs[0], outs[1]);
  EXPECT_EQ(lses[0], lses[1]);
}

TEST(Store, QueriesRestrictedToDocumentsUseOnlyTheirBlocks) {
  TempDir dir;
  const Geometry g = SmallGeometry();
  std::vector<Doc> docs = {MakeDoc(g, "a", 40, 31), MakeDoc(g, "b", 27, 32), MakeDoc(g, "c", 50, 33)};
  auto s = Store::Create(dir.Sub("store"), g);
  ASSERT_TRUE(s.ok());
  std::vector<uint64_t> ids;
  for (const Doc& d : docs) {
    auto id = (*s)->AppendDocument(d.name, DocumentKV{d.keys.data(), d.values.data(), d.tokens});
    ASSERT_TRUE(id.ok());
    ids.push_back(*id);
  }
  ASSERT_TRUE((*s)->Commit().ok());
  auto listed = (*s)->ListDocuments();
  ASSERT_TRUE(listed.ok());
  const uint32_t qh = 4, d = g.head_dim;
  auto q = msa::testing::RandomVector(qh * d, 34);
  // Exact over document b alone equals dense attention over b's tokens.
  AttendOptions opts;
  opts.exact = true;
  opts.documents = {ids[1]};
  std::vector<float> out(qh * d), lse(qh);
  ASSERT_TRUE((*s)->Attend(1, q.data(), 1, qh, opts, out.data(), lse.data()).ok());
  for (uint32_t h = 0; h < qh; ++h) {
    const uint32_t kv = h / (qh / g.kv_heads);
    const auto k = StreamOf(g, {docs[1]}, 1, kv, true), v = StreamOf(g, {docs[1]}, 1, kv, false);
    std::vector<double> ref(d);
    double ref_lse;
    msa::testing::DenseReference(&q[h * d], k.data(), v.data(), docs[1].tokens, d, ref.data(), &ref_lse);
    for (uint32_t c = 0; c < d; ++c) ASSERT_NEAR(out[h * d + c], ref[c], 1e-4);
    ASSERT_NEAR(lse[h], ref_lse, 1e-4);
  }
  // Top-k over documents a and c: every chosen block is theirs, with a's
  // first block as the sink and c's last as the recent one.
  opts.exact = false;
  opts.top_k = 2;
  opts.documents = {ids[2], ids[0]};
  std::vector<std::vector<uint64_t>> selected;
  ASSERT_TRUE((*s)->Attend(0, q.data(), 1, qh, opts, out.data(), nullptr, nullptr, &selected).ok());
  const DocumentRecord& a = (*listed)[0];
  const DocumentRecord& c = (*listed)[2];
  for (const auto& sel : selected) {
    EXPECT_LE(sel.size(), 4u);  // 2 routed (which may be the sink or the recent block) + 2
    EXPECT_GE(sel.size(), 2u);
    EXPECT_EQ(sel.front(), a.first_block);
    EXPECT_EQ(sel.back(), c.first_block + c.blocks - 1);
    for (uint64_t b : sel) {
      const bool in_a = b >= a.first_block && b < a.first_block + a.blocks;
      const bool in_c = b >= c.first_block && b < c.first_block + c.blocks;
      EXPECT_TRUE(in_a || in_c) << "block " << b << " belongs to neither document";
    }
  }
  opts.documents = {999};
  EXPECT_EQ((*s)->Attend(0, q.data(), 1, qh, opts, out.data(), nullptr).code(), Status::Code::kNotFound);
  // After a restart the documents' blocks are known again.
  opts.documents = {ids[2], ids[0]};
  s->reset();
  s = Store::Open(dir.Sub("store"));
  ASSERT_TRUE(s.ok());
  std::vector<std::vector<uint64_t>> again;
  ASSERT_TRUE((*s)->Attend(0, q.data(), 1, qh, opts, out.data(), nullptr, nullptr, &again).ok());
  EXPECT_EQ(again, selected);
}

// Documents each run from position 0 start with their own attention sink:
// document_sinks forces every queried document's first block, and the
// router's top_k then goes to other blocks.
TEST(Store, DocumentSinksForceEveryDocumentsFirstBlock) {
  TempDir dir;
  Geometry g = SmallGeometry();
  g.layers = 1;
  g.kv_heads = 1;
  const uint32_t d = g.head_dim, bt = g.block_tokens;
  auto q = msa::testing::RandomVector(d, 51);
  auto aligned = [&](Doc& doc, uint64_t t, float strength) {
    for (uint32_t c = 0; c < d; ++c)
      doc.keys[t * d + c] = attention::HalfToFloat(attention::FloatToHalf(strength * q[c]));
  };
  // 6 documents of 5 blocks; each first token a sink stronger than the
  // needle, a whole block of document 3 (block 3 * 5 + 2 = 17).
  std::vector<Doc> docs;
  for (int i = 0; i < 6; ++i) {
    docs.push_back(MakeDoc(g, "doc" + std::to_string(i), 5 * bt, 60 + i));
    aligned(docs.back(), 0, 4.0f);
  }
  for (uint64_t t = 2 * bt; t < 3 * bt; ++t) aligned(docs[3], t, 3.0f);
  auto s = Store::Create(dir.Sub("store"), g);
  ASSERT_TRUE(s.ok());
  std::vector<uint64_t> ids;
  for (const Doc& doc : docs) {
    auto id = (*s)->AppendDocument(doc.name, DocumentKV{doc.keys.data(), doc.values.data(), doc.tokens});
    ASSERT_TRUE(id.ok());
    ids.push_back(*id);
  }
  ASSERT_TRUE((*s)->Commit().ok());
  const std::vector<uint64_t> firsts = {0, 5, 10, 15, 20, 25};
  auto contains = [](const std::vector<uint64_t>& v, uint64_t b) { return std::count(v.begin(), v.end(), b) > 0; };

  AttendOptions opts;
  opts.top_k = 2;
  std::vector<float> out(d), lse(1);
  std::vector<std::vector<uint64_t>> plain, with_sinks;
  ASSERT_TRUE((*s)->Attend(0, q.data(), 1, 1, opts, out.data(), lse.data(), nullptr, &plain).ok());
  EXPECT_LE(plain[0].size(), 4u);  // 2 routed + sink + recent: at most 4 of the 6 first blocks
  opts.document_sinks = true;
  ASSERT_TRUE((*s)->Attend(0, q.data(), 1, 1, opts, out.data(), lse.data(), nullptr, &with_sinks).ok());
  const auto& sel = with_sinks[0];
  for (uint64_t b : firsts) EXPECT_TRUE(contains(sel, b)) << "document sink block " << b << " missing";
  EXPECT_TRUE(contains(sel, 29u)) << "recent block missing";
  // The router ranked past the (stronger) sinks: the needle block is routed,
  // and besides the forced blocks at most top_k = 2 others were chosen.
  EXPECT_TRUE(contains(sel, 17u)) << "needle block not routed";
  size_t others = 0;
  for (uint64_t b : sel) others += !contains(firsts, b) && b != 29u;
  EXPECT_GE(others, 1u);
  EXPECT_LE(others, 2u);
  EXPECT_TRUE(std::is_sorted(sel.begin(), sel.end()));
  // The output is exact attention over exactly those blocks.
  {
    std::vector<float> k, v;
    const auto ks = StreamOf(g, docs, 0, 0, true), vs = StreamOf(g, docs, 0, 0, false);
    for (uint64_t b : sel) {
      k.insert(k.end(), ks.begin() + b * bt * d, ks.begin() + (b + 1) * bt * d);
      v.insert(v.end(), vs.begin() + b * bt * d, vs.begin() + (b + 1) * bt * d);
    }
    std::vector<double> ref(d);
    double ref_lse;
    msa::testing::DenseReference(q.data(), k.data(), v.data(), sel.size() * bt, d, ref.data(), &ref_lse);
    for (uint32_t c = 0; c < d; ++c) EXPECT_NEAR(out[c], ref[c], 1e-4);
    EXPECT_NEAR(lse[0], ref_lse, 1e-4);
  }
  // ExplainQuery: the same blocks; two routed, none a document's first; the
  // first blocks marked as document sinks.
  std::vector<std::vector<ExplainedBlock>> explained;
  ASSERT_TRUE((*s)->ExplainQuery(0, q.data(), 1, 1, opts, &explained).ok());
  ASSERT_EQ(explained.size(), 1u);
  std::vector<uint64_t> listed;
  int routed = 0;
  for (const ExplainedBlock& e : explained[0]) {
    listed.push_back(e.block);
    EXPECT_EQ(e.document_sink, contains(firsts, e.block)) << "block " << e.block;
    if (e.rank >= 0) {
      ++routed;
      EXPECT_FALSE(contains(firsts, e.block)) << "routed block " << e.block << " is a document sink";
    }
  }
  EXPECT_EQ(routed, 2);
  std::sort(listed.begin(), listed.end());
  EXPECT_EQ(listed, sel);
  // Restricted to documents 1 and 4: only their first blocks are forced.
  opts.documents = {ids[4], ids[1]};
  std::vector<std::vector<uint64_t>> restricted;
  ASSERT_TRUE((*s)->Attend(0, q.data(), 1, 1, opts, out.data(), nullptr, nullptr, &restricted).ok());
  EXPECT_TRUE(contains(restricted[0], 5u));
  EXPECT_TRUE(contains(restricted[0], 20u));
  for (uint64_t b : restricted[0]) EXPECT_TRUE((b >= 5 && b < 10) || (b >= 20 && b < 25)) << "block " << b;
  // A budget that covers every block (top_k + sink + recent + 6 first blocks >= 30): all of them.
  opts.documents.clear();
  opts.top_k = 22;
  std::vector<std::vector<uint64_t>> all;
  ASSERT_TRUE((*s)->Attend(0, q.data(), 1, 1, opts, out.data(), nullptr, nullptr, &all).ok());
  EXPECT_EQ(all[0].size(), 30u);
}

TEST(Store, ChecksumMismatchIsReportedNamingTheBlock) {
  TempDir dir;
  const Geometry g = SmallGeometry();
  {
    auto s = Store::Create(dir.Sub("store"), g);
    ASSERT_TRUE(s.ok());
    ASSERT_TRUE(Append(**s, MakeDoc(g, "a", 40, 31)).ok());
    ASSERT_TRUE((*s)->Commit().ok());
  }
  // Flip one payload byte of the first record (layer 0, kv-head 0, block 0).
  const std::string seg = dir.Sub("store/segments/000001.seg");
  {
    const int fd = ::open(seg.c_str(), O_RDWR);
    ASSERT_GE(fd, 0);
    uint8_t byte;
    ASSERT_EQ(::pread(fd, &byte, 1, 100), 1);
    byte ^= 0x40;
    ASSERT_EQ(::pwrite(fd, &byte, 1, 100), 1);
    ::close(fd);
  }
  auto s = Store::Open(dir.Sub("store"));
  ASSERT_TRUE(s.ok());
  std::vector<float> q(2 * g.head_dim, 0.1f), out(q.size());
  AttendOptions opts;
  opts.exact = true;
  Status st = (*s)->Attend(0, q.data(), 1, 2, opts, out.data(), nullptr);
  ASSERT_FALSE(st.ok());
  EXPECT_EQ(st.code(), Status::Code::kCorruption);
  EXPECT_NE(st.message().find("layer 0 kv-head 0 block 0"), std::string::npos) << st.ToString();
  EXPECT_NE(st.message().find("000001.seg"), std::string::npos) << st.ToString();
  // Another layer is intact and still answers.
  EXPECT_TRUE((*s)->Attend(1, q.data(), 1, 2, opts, out.data(), nullptr).ok());
  // Verify lists exactly the damaged block, naming it and its file, and
  // checks every other block.
  VerifyReport report;
  ASSERT_TRUE((*s)->Verify(&report).ok());
  EXPECT_EQ(report.blocks_checked, 4u * 5u);  // 4 streams x ceil(40 / 8) blocks
  EXPECT_EQ(report.documents_checked, 1u);
  ASSERT_EQ(report.problems.size(), 1u);
  EXPECT_NE(report.problems[0].find("layer 0 kv-head 0 block 0"), std::string::npos) << report.problems[0];
  EXPECT_NE(report.problems[0].find("000001.seg"), std::string::npos) << report.problems[0];
}

TEST(Cli, VerifyExitsZeroOnASoundStoreAndFiveOnADamagedOne) {
  TempDir dir;
  const Geometry g = SmallGeometry();
  {
    auto s = Store::Create(dir.Sub("store"), g);
    ASSERT_TRUE(s.ok());
    ASSERT_TRUE(Append(**s, MakeDoc(g, "a", 40, 41)).ok());
    ASSERT_TRUE(Append(**s, MakeDoc(g, "b", 13, 42)).ok());
    ASSERT_TRUE((*s)->Commit().ok());
  }
  const std::string out = dir.Sub("verify.txt");
  ASSERT_EQ(std::system((std::string(MSA_CLI_PATH) + " verify " + dir.Sub("store") + " > " + out + " 2>&1").c_str()), 0);
  {
    std::ifstream f(out);
    std::string text((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
    EXPECT_NE(text.find("28 blocks and 2 documents checked, 0 problems"), std::string::npos) << text;
  }
  // Cut the last segment short: the blocks past the cut are reported.
  std::filesystem::resize_file(dir.Sub("store/segments/000001.seg"), 4096 * 20);
  const int rc = std::system((std::string(MSA_CLI_PATH) + " verify " + dir.Sub("store") + " > " + out + " 2>&1").c_str());
  ASSERT_TRUE(WIFEXITED(rc));
  EXPECT_EQ(WEXITSTATUS(rc), 5);
  std::ifstream f(out);
  std::string text((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  EXPECT_NE(text.find("problem: "), std::string::npos) << text;
  EXPECT_NE(text.find("000001.seg"), std::string::npos) << text;
}

// The files a store keeps beside the catalog to open and route faster (the
// router's IVF index files, the summary pieces) are checked by Verify and
// `msa verify` against the size and checksum the catalog records: a
// damaged, truncated or missing one is a problem naming the file and
// saying it is rebuildable; a writable open rebuilds them and the store
// verifies clean again.
TEST(Cli, VerifyReportsDamagedTruncatedAndMissingIndexAndSummaryPieceFiles) {
  TempDir dir;
  Geometry g = SmallGeometry();
  g.layers = 1;
  g.block_tokens = 4;
  g.summary = SummaryKind::kMean;  // the hybrid summary has no IVF
  StoreOptions so;
  so.summary_piece_blocks = 128;   // 300 blocks per stream: pieces [0, 128) and [128, 256)
  so.router.ivf_min_vectors = 256; // and an IVF index per stream
  {
    auto s = Store::Create(dir.Sub("store"), g, so);
    ASSERT_TRUE(s.ok()) << s.status().ToString();
    ASSERT_TRUE(Append(**s, MakeDoc(g, "a", 1200, 51)).ok());
    ASSERT_TRUE((*s)->Commit().ok());
    EXPECT_EQ((*s)->Stats().ivf_streams, 2u);
  }
  const std::vector<std::string> files = {"router/0.1.ivf", "router/1.1.ivf", "summaries/0.0.f16",
                                          "summaries/0.128.f16", "summaries/1.0.f16", "summaries/1.128.f16"};
  for (const std::string& f : files) ASSERT_TRUE(std::filesystem::exists(dir.Sub("store/" + f))) << f;
  StoreOptions ro;
  ro.read_only = true;
  auto verify = [&](const StoreOptions& options) {
    auto s = Store::Open(dir.Sub("store"), options);
    EXPECT_TRUE(s.ok()) << s.status().ToString();
    VerifyReport report;
    if (s.ok()) EXPECT_TRUE((*s)->Verify(&report).ok());
    return report;
  };
  auto cli = [&](std::string* text) {
    const std::string out = dir.Sub("verify.txt");
    const int rc = std::system((std::string(MSA_CLI_PATH) + " verify " + dir.Sub("store") + " > " + out + " 2>&1").c_str());
    std::ifstream f(out);
    text->assign(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
    return WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
  };
  {
    const VerifyReport report = verify(ro);
    EXPECT_TRUE(report.problems.empty()) << report.problems[0];
    EXPECT_EQ(report.files_checked, files.size());
    EXPECT_EQ(report.blocks_checked, 2u * 300);
    std::string text;
    EXPECT_EQ(cli(&text), 0) << text;
  }
  auto flip = [&](const std::string& f, std::streamoff at) {
    std::fstream file(dir.Sub("store/" + f), std::ios::in | std::ios::out | std::ios::binary);
    file.seekg(at);
    const char c = static_cast<char>(file.get());
    file.seekp(at);
    file.put(static_cast<char>(c ^ 0x10));
  };
  flip("router/0.1.ivf", 100);
  std::filesystem::remove(dir.Sub("store/router/1.1.ivf"));
  flip("summaries/0.128.f16", 1000);
  std::filesystem::resize_file(dir.Sub("store/summaries/1.0.f16"),
                               std::filesystem::file_size(dir.Sub("store/summaries/1.0.f16")) / 2);
  // What each problem must say, besides naming its file.
  const std::vector<std::pair<std::string, std::string>> expected = {
      {"router/0.1.ivf", "damaged"}, {"router/1.1.ivf", "missing"},
      {"summaries/0.128.f16", "damaged"}, {"summaries/1.0.f16", "truncated"}};
  {
    const VerifyReport report = verify(ro);
    EXPECT_EQ(report.blocks_checked, 2u * 300);  // the blocks are sound
    ASSERT_EQ(report.problems.size(), expected.size());
    for (const auto& [file, what] : expected) {
      const auto it = std::find_if(report.problems.begin(), report.problems.end(), [&](const std::string& p) {
        return p.find(dir.Sub("store/" + file)) != std::string::npos;
      });
      ASSERT_NE(it, report.problems.end()) << file;
      EXPECT_NE(it->find(what), std::string::npos) << *it;
      EXPECT_NE(it->find("rebuildable"), std::string::npos) << *it;
    }
    std::string text;
    EXPECT_EQ(cli(&text), 5) << text;
    EXPECT_NE(text.find("4 problems"), std::string::npos) << text;
    for (const auto& [file, what] : expected) {
      const std::string kind = file.rfind("router/", 0) == 0 ? "router index " : "summary piece ";
      EXPECT_NE(text.find("problem: " + kind + dir.Sub("store/" + file)), std::string::npos) << file << "\n" << text;
    }
  }
  // A writable open rebuilds the index files and saves the pieces again.
  {
    const VerifyReport report = verify(so);
    EXPECT_TRUE(report.problems.empty()) << report.problems[0];
    EXPECT_EQ(report.files_checked, files.size());
  }
  std::string text;
  EXPECT_EQ(cli(&text), 0) << text;
}

// Tiny segments force a rollover every few records; commits spanning several
// segments must sync and record each, and reopening must find them all.
TEST(Store, SegmentRolloverSurvivesReopen) {
  TempDir dir;
  const Geometry g = SmallGeometry();
  StoreOptions opts;
  opts.segment_bytes = 3 * 4096;
  std::vector<Doc> docs = {MakeDoc(g, "a", 40, 71), MakeDoc(g, "b", 17, 72)};
  {
    auto s = Store::Create(dir.Sub("store"), g, opts);
    ASSERT_TRUE(s.ok());
    ASSERT_TRUE(Append(**s, docs[0]).ok());
    ASSERT_TRUE((*s)->Commit().ok());
    ASSERT_TRUE(Append(**s, docs[1]).ok());
    ASSERT_TRUE((*s)->Commit().ok());
  }
  EXPECT_TRUE(std::filesystem::exists(dir.Sub("store/segments/000005.seg")));
  auto s = Store::Open(dir.Sub("store"), opts);
  ASSERT_TRUE(s.ok()) << s.status().ToString();
  ASSERT_TRUE(Append(**s, MakeDoc(g, "c", 9, 73)).ok());  // appends continue in the last segment
  ASSERT_TRUE((*s)->Commit().ok());
  docs.push_back(MakeDoc(g, "c", 9, 73));
  for (uint32_t layer = 0; layer < g.layers; ++layer) {
    std::vector<float> k, v;
    ASSERT_TRUE((*s)->ReadStream(layer, 1, &k, &v).ok());
    EXPECT_EQ(k, StreamOf(g, docs, layer, 1, true));
    EXPECT_EQ(v, StreamOf(g, docs, layer, 1, false));
  }
}

TEST(Store, FailedRolloverKeepsTheWriterUsable) {
  // The next segment cannot be created (a directory squats on its name):
  // the append fails cleanly, and once the obstacle is gone appends go on.
  TempDir dir;
  const Geometry g = SmallGeometry();
  StoreOptions opts;
  opts.segment_bytes = 3 * 4096;
  auto s = Store::Create(dir.Sub("store"), g, opts);
  ASSERT_TRUE(s.ok());
  std::filesystem::create_directory(dir.Sub("store/segments/000002.seg"));
  std::vector<Doc> docs = {MakeDoc(g, "a", 40, 81)};
  Status failed = Append(**s, docs[0]);
  EXPECT_FALSE(failed.ok());
  EXPECT_NE(failed.ToString().find("000002.seg"), std::string::npos) << failed.ToString();
  std::filesystem::remove(dir.Sub("store/segments/000002.seg"));
  ASSERT_TRUE(Append(**s, docs[0]).ok());
  ASSERT_TRUE((*s)->Commit().ok());
  s->reset();  // release the writer lock before reopening
  s = Store::Open(dir.Sub("store"), opts);
  ASSERT_TRUE(s.ok()) << s.status().ToString();
  std::vector<float> k, v;
  ASSERT_TRUE((*s)->ReadStream(1, 0, &k, &v).ok());
  EXPECT_EQ(k, StreamOf(g, docs, 1, 0, true));
  EXPECT_EQ(v, StreamOf(g, docs, 1, 0, false));
}

TEST(Store, ExtremeArgumentsAreRejectedOrClamped) {
  TempDir dir;
  const Geometry g = SmallGeometry();
  auto s = Store::Create(dir.Sub("store"), g);
  ASSERT_TRUE(s.ok());
  // A token count whose byte size overflows is refused before anything is read.
  float dummy = 0;
  auto huge = (*s)->AppendDocument("huge", DocumentKV{&dummy, &dummy, UINT64_MAX / 8, ElementType::kFloat32});
  EXPECT_EQ(huge.status().code(), Status::Code::kInvalidArgument) << huge.status().ToString();
  std::vector<Doc> docs = {MakeDoc(g, "a", 50, 91)};
  ASSERT_TRUE(Append(**s, docs[0]).ok());
  ASSERT_TRUE((*s)->Commit().ok());
  // top_k at its maximum means every block (no overflow of top_k + 2).
  const uint32_t qh = 2, d = g.head_dim;
  auto q = msa::testing::RandomVector(qh * d, 92);
  AttendOptions opts;
  opts.top_k = UINT32_MAX;
  std::vector<float> out(qh * d), lse(qh);
  std::vector<std::vector<uint64_t>> selected;
  ASSERT_TRUE((*s)->Attend(0, q.data(), 1, qh, opts, out.data(), lse.data(), nullptr, &selected).ok());
  for (const auto& sel : selected) EXPECT_EQ(sel.size(), 7u);  // ceil(50 / 8) blocks
}

TEST(Store, OpenOfANonStoreIsNotFound) {
  TempDir dir;
  auto s = Store::Open(dir.path());
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.status().code(), Status::Code::kNotFound);
  EXPECT_NE(s.status().message().find("not an msa store"), std::string::npos);
}

TEST(Store, TruncatedUncommittedTailIsCutOnReopen) {
  TempDir dir;
  const Geometry g = SmallGeometry();
  {
    auto s = Store::Create(dir.Sub("store"), g);
    ASSERT_TRUE(s.ok());
    ASSERT_TRUE(Append(**s, MakeDoc(g, "a", 16, 41)).ok());
    ASSERT_TRUE((*s)->Commit().ok());
    ASSERT_TRUE(Append(**s, MakeDoc(g, "torn", 16, 42)).ok());  // bytes written, never committed
  }
  const std::string seg = dir.Sub("store/segments/000001.seg");
  const auto before = std::filesystem::file_size(seg);
  auto s = Store::Open(dir.Sub("store"));
  ASSERT_TRUE(s.ok());
  EXPECT_LT(std::filesystem::file_size(seg), before);
  EXPECT_EQ((*s)->Stats().documents, 1u);
}

// FlushCatalog empties the catalog's log, so that the next open (a
// read-only one too, which cannot flush) has none to replay: at 1e8 tokens
// that replay was half a second of every open. A read-only store refuses.
TEST(Store, FlushingTheCatalogEmptiesItsLog) {
  TempDir dir;
  const Geometry g = SmallGeometry();
  {
    auto s = Store::Create(dir.Sub("store"), g);
    ASSERT_TRUE(s.ok()) << s.status().ToString();
    for (int i = 0; i < 3; ++i) {
      ASSERT_TRUE(Append(**s, MakeDoc(g, "d" + std::to_string(i), 24, 70 + i)).ok());
      ASSERT_TRUE((*s)->Commit().ok());
    }
    const Status flushed = (*s)->FlushCatalog();
    ASSERT_TRUE(flushed.ok()) << flushed.ToString();
  }
  uintmax_t log_bytes = 0;
  for (const auto& e : std::filesystem::directory_iterator(dir.Sub("store/catalog"))) {
    if (e.path().extension() == ".log") log_bytes += std::filesystem::file_size(e.path());
  }
  EXPECT_EQ(log_bytes, 0u);
  StoreOptions ro;
  ro.read_only = true;
  auto s = Store::Open(dir.Sub("store"), ro);
  ASSERT_TRUE(s.ok()) << s.status().ToString();
  EXPECT_EQ((*s)->Stats().documents, 3u);
  EXPECT_EQ((*s)->FlushCatalog().code(), Status::Code::kNotSupported);
}

// A catalog whose write-ahead log lost its end (a truncated or deleted
// file, not a crash: a crash only tears an unacknowledged last record)
// would open at an older state, and the writable open would then cut the
// segments back to it. The high-water mark makes the open fail instead,
// changing nothing on disk.
TEST(Store, TruncatedCatalogLogFailsTheOpenAndDestroysNothing) {
  TempDir dir;
  const Geometry g = SmallGeometry();
  // Three commits, a reopen (which moves them out of the log), three more.
  for (int round = 0; round < 2; ++round) {
    auto s = round == 0 ? Store::Create(dir.Sub("store"), g) : Store::Open(dir.Sub("store"));
    ASSERT_TRUE(s.ok()) << s.status().ToString();
    EXPECT_EQ((*s)->Stats().documents, 3u * round);
    for (int i = 0; i < 3; ++i) {
      ASSERT_TRUE(Append(**s, MakeDoc(g, "d" + std::to_string(3 * round + i), 24, 50 + 3 * round + i)).ok());
      ASSERT_TRUE((*s)->Commit().ok());
    }
  }
  // Cut the newest log file (the catalog's commits since its last flush) in half.
  std::string log;
  for (const auto& e : std::filesystem::directory_iterator(dir.Sub("store/catalog"))) {
    const std::string name = e.path().filename().string();
    if (e.path().extension() == ".log" && (log.empty() || name > std::filesystem::path(log).filename().string())) {
      log = e.path().string();
    }
  }
  ASSERT_FALSE(log.empty());
  const auto log_bytes = std::filesystem::file_size(log);
  ASSERT_GT(log_bytes, 0u);
  std::filesystem::resize_file(log, log_bytes / 2);
  const std::string seg = dir.Sub("store/segments/000001.seg");
  const auto seg_bytes = std::filesystem::file_size(seg);
  for (bool read_only : {true, false}) {
    StoreOptions options;
    options.read_only = read_only;
    auto s = Store::Open(dir.Sub("store"), options);
    ASSERT_FALSE(s.ok()) << (read_only ? "read-only" : "writable");
    EXPECT_EQ(s.status().code(), Status::Code::kCorruption) << s.status().ToString();
    EXPECT_NE(s.status().message().find("write-ahead log was truncated or lost"), std::string::npos)
        << s.status().ToString();
    EXPECT_NE(s.status().message().find(Catalog::kHighWaterFile), std::string::npos) << s.status().ToString();
  }
  EXPECT_EQ(std::filesystem::file_size(seg), seg_bytes);  // nothing cut
}

// K/V the codec cannot store as given are refused, naming where they are:
// a NaN or infinity (any codec), and for f16 a value past its range (it
// would have become infinity); bf16 stores such a value. Nothing is staged.
TEST(Store, NonFiniteOrUnstorableKVIsRefusedNamingTheElement) {
  TempDir dir;
  Geometry g = SmallGeometry();
  for (Codec codec : {Codec::kF16ShuffleZstd, Codec::kBF16ShuffleZstd, Codec::kInt8}) {
    g.codec = codec;
    auto s = Store::Create(dir.Sub(std::string("store-") + CodecName(codec)), g);
    ASSERT_TRUE(s.ok());
    Doc d = MakeDoc(g, "bad", 20, 61);
    // layer 1, kv-head 0, token 13, channel 5 of the values.
    const size_t at = (static_cast<size_t>(g.StreamOf(1, 0)) * d.tokens + 13) * g.head_dim + 5;
    d.values[at] = std::nanf("");
    Status st = Append(**s, d);
    ASSERT_EQ(st.code(), Status::Code::kInvalidArgument) << CodecName(codec) << ": " << st.ToString();
    if (codec != Codec::kInt8) {  // the quantised codecs name the block and group (FitGroup)
      EXPECT_NE(st.message().find("values of layer 1 kv-head 0 token 13 channel 5 is nan"), std::string::npos)
          << st.ToString();
    }
    d.values[at] = 1e5f;  // finite, past fp16's range
    st = Append(**s, d);
    EXPECT_EQ(st.ok(), codec == Codec::kBF16ShuffleZstd) << CodecName(codec) << ": " << st.ToString();
    if (codec == Codec::kF16ShuffleZstd) {
      EXPECT_NE(st.message().find("65504"), std::string::npos) << st.ToString();
    }
    d.values[at] = 0.5f;
    d.name = "good";
    EXPECT_TRUE(Append(**s, d).ok()) << CodecName(codec);
    ASSERT_TRUE((*s)->Commit().ok());
    EXPECT_EQ((*s)->Stats().documents, codec == Codec::kBF16ShuffleZstd ? 2u : 1u);
  }
}

// A document spans the same blocks in every stream: a block whose catalog
// record names another document, in one stream only, is a problem Verify
// lists (naming the stream), though its record itself reads back fine.
TEST(Store, VerifyFindsAStreamWhoseBlockDisagreesWithStreamZero) {
  TempDir dir;
  const Geometry g = SmallGeometry();
  uint64_t b_id = 0;
  {
    auto s = Store::Create(dir.Sub("store"), g);
    ASSERT_TRUE(s.ok());
    ASSERT_TRUE(Append(**s, MakeDoc(g, "a", 40, 91)).ok());
    auto b = (*s)->AppendDocument("b", DocumentKV{MakeDoc(g, "b", 16, 92).keys.data(),
                                                  MakeDoc(g, "b", 16, 92).values.data(), 16});
    ASSERT_TRUE(b.ok());
    b_id = *b;
    ASSERT_TRUE((*s)->Commit().ok());
  }
  {
    auto catalog = Catalog::Open(dir.Sub("store/catalog"), /*read_only=*/false);
    ASSERT_TRUE(catalog.ok()) << catalog.status().ToString();
    BlockLocation loc;
    ASSERT_TRUE((*catalog)->ScanBlocks(1, 1, [&](uint64_t block, const BlockLocation& l) {
      if (block == 0) loc = l;
      return Status::OK();
    }).ok());
    loc.doc_id = b_id;  // block 0 of layer 1 kv-head 1 now claims document b
    Catalog::Batch batch;
    batch.PutBlockLocation(BlockId{1, 1, 0}, loc);
    ASSERT_TRUE((*catalog)->Commit(batch).ok());
  }
  auto s = Store::Open(dir.Sub("store"));
  ASSERT_TRUE(s.ok()) << s.status().ToString();
  VerifyReport report;
  ASSERT_TRUE((*s)->Verify(&report).ok());
  ASSERT_EQ(report.problems.size(), 1u) << (report.problems.empty() ? "" : report.problems[0]);
  EXPECT_NE(report.problems[0].find("block 0 of stream 3 (layer 1 kv-head 1) says document " + std::to_string(b_id)),
            std::string::npos)
      << report.problems[0];
}

// ---- the CLI contract -------------------------------------------------------

int RunCli(const std::string& args, std::string* err = nullptr) {
  const std::string errfile = ::testing::TempDir() + "msa_cli_err.txt";
  const int rc = std::system((std::string(MSA_CLI_PATH) + " " + args + " 2>" + errfile + " >/dev/null").c_str());
  if (err) {
    std::ifstream f(errfile);
    std::getline(f, *err, '\0');
  }
  return WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
}

TEST(Cli, IngestQueryAndBadInputs) {
  TempDir dir;
  const std::string store = dir.Sub("store");
  ASSERT_EQ(RunCli("create " + store + " --layers 2 --kv-heads 2 --head-dim 16 --block-tokens 8"), 0);
  const Geometry g = SmallGeometry();
  Doc d = MakeDoc(g, "doc", 20, 51);
  ASSERT_TRUE(formats::WriteNpyFloat32(dir.Sub("k.npy"), {2, 2, 20, 16}, d.keys.data()).ok());
  ASSERT_TRUE(formats::WriteNpyFloat32(dir.Sub("v.npy"), {2, 2, 20, 16}, d.values.data()).ok());
  ASSERT_EQ(RunCli("ingest " + store + " --doc doc --keys " + dir.Sub("k.npy") + " --values " + dir.Sub("v.npy")), 0);
  auto q = msa::testing::RandomVector(3 * 4 * 16, 52);
  ASSERT_TRUE(formats::WriteNpyFloat32(dir.Sub("q.npy"), {3, 4, 16}, q.data()).ok());
  ASSERT_EQ(RunCli("query " + store + " --layer 1 --queries " + dir.Sub("q.npy") + " --out " + dir.Sub("o.npy") +
                " --lse " + dir.Sub("l.npy") + " --exact"), 0);
  auto o = formats::ReadNpy(dir.Sub("o.npy"));
  ASSERT_TRUE(o.ok());
  EXPECT_EQ(o->shape, (std::vector<int64_t>{3, 4, 16}));
  auto l = formats::ReadNpy(dir.Sub("l.npy"));
  ASSERT_TRUE(l.ok());
  EXPECT_EQ(l->shape, (std::vector<int64_t>{3, 4}));

  // Safetensors: one file holding "keys" and "values" (fp16).
  {
    std::vector<uint16_t> k16(d.keys.size()), v16(d.values.size());
    attention::FloatToHalfArray(d.keys.data(), k16.data(), k16.size());
    attention::FloatToHalfArray(d.values.data(), v16.data(), v16.size());
    ASSERT_TRUE(formats::WriteSafetensors(dir.Sub("kv.safetensors"),
                                          {{"keys", formats::MakeFloat16Tensor({2, 2, 20, 16}, k16.data())},
                                           {"values", formats::MakeFloat16Tensor({2, 2, 20, 16}, v16.data())}})
                    .ok());
  }
  ASSERT_EQ(RunCli("ingest " + store + " --doc doc2 --keys " + dir.Sub("kv.safetensors")), 0);

  std::string err;
  // Duplicate document name.
  EXPECT_EQ(RunCli("ingest " + store + " --doc doc2 --keys " + dir.Sub("kv.safetensors"), &err), 3);
  EXPECT_NE(err.find("doc2"), std::string::npos) << err;
  // Wrong shape (head dim mismatch).
  ASSERT_TRUE(formats::WriteNpyFloat32(dir.Sub("bad.npy"), {2, 2, 20, 8}, d.keys.data()).ok());
  EXPECT_NE(RunCli("ingest " + store + " --doc x --keys " + dir.Sub("bad.npy") + " --values " + dir.Sub("bad.npy"), &err), 0);
  EXPECT_NE(err.find("head_dim=16"), std::string::npos) << err;
  // Wrong dtype.
  {
    std::ofstream f(dir.Sub("int.npy"), std::ios::binary);
    const std::string header = "{'descr': '<i4', 'fortran_order': False, 'shape': (2, 2, 1, 16), }";
    std::string h = header + std::string(128 - 10 - header.size() - 1, ' ') + "\n";
    f << "\x93NUMPY" << '\x01' << '\x00' << static_cast<char>(h.size() & 0xff) << static_cast<char>(h.size() >> 8) << h
      << std::string(2 * 2 * 16 * 4, '\0');
  }
  EXPECT_NE(RunCli("ingest " + store + " --doc x --keys " + dir.Sub("int.npy") + " --values " + dir.Sub("int.npy"), &err), 0);
  EXPECT_NE(err.find("int.npy"), std::string::npos) << err;
  // Truncated .npy.
  std::filesystem::copy_file(dir.Sub("k.npy"), dir.Sub("trunc.npy"));
  std::filesystem::resize_file(dir.Sub("trunc.npy"), 1000);
  EXPECT_NE(RunCli("ingest " + store + " --doc x --keys " + dir.Sub("trunc.npy") + " --values " + dir.Sub("v.npy"), &err), 0);
  EXPECT_NE(err.find("trunc.npy"), std::string::npos) << err;
  // Layer out of range.
  EXPECT_NE(RunCli("query " + store + " --layer 7 --queries " + dir.Sub("q.npy") + " --out " + dir.Sub("o.npy"), &err), 0);
  EXPECT_NE(err.find("layer 7"), std::string::npos) << err;
  // Not a store.
  EXPECT_EQ(RunCli("stats " + dir.Sub("nowhere"), &err), 4);
  EXPECT_NE(err.find("not an msa store"), std::string::npos) << err;
  // Queries with the wrong head dim.
  ASSERT_TRUE(formats::WriteNpyFloat32(dir.Sub("q8.npy"), {1, 4, 8}, q.data()).ok());
  EXPECT_EQ(RunCli("query " + store + " --layer 0 --queries " + dir.Sub("q8.npy") + " --out " + dir.Sub("o.npy"), &err), 3);
  // The store was left as it was: one document, still queryable.
  StoreOptions read_only;
  read_only.read_only = true;
  auto s = Store::Open(store, read_only);
  ASSERT_TRUE(s.ok());
  EXPECT_EQ((*s)->Stats().documents, 2u);
  EXPECT_EQ((*s)->Stats().tokens, 40u);
  // Both documents hold the same K/V: the stream is the first half twice.
  std::vector<float> k, v;
  ASSERT_TRUE((*s)->ReadStream(1, 1, &k, &v).ok());
  ASSERT_EQ(k.size(), 40u * 16);
  EXPECT_TRUE(std::equal(k.begin(), k.begin() + 320, k.begin() + 320));
}

// Where io_uring is refused (here: forced off) the pread fallback gives the
// same answers, and says which reader is in use.
TEST(Store, PreadFallbackGivesTheSameResult) {
  TempDir dir;
  const Geometry g = SmallGeometry();
  {
    auto s = Store::Create(dir.Sub("store"), g);
    ASSERT_TRUE(s.ok());
    ASSERT_TRUE(Append(**s, MakeDoc(g, "a", 50, 61)).ok());
    ASSERT_TRUE((*s)->Commit().ok());
  }
  auto q = msa::testing::RandomVector(4 * g.head_dim, 62);
  AttendOptions opts;
  opts.top_k = 2;
  std::vector<float> out_uring(q.size()), out_pread(q.size());
  auto a = Store::Open(dir.Sub("store"));
  StoreOptions pread_only;
  pread_only.read_only = true;
  pread_only.allow_io_uring = false;
  auto b = Store::Open(dir.Sub("store"), pread_only);
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_EQ((*b)->Stats().reader, "pread");
  ASSERT_TRUE((*a)->Attend(0, q.data(), 1, 4, opts, out_uring.data(), nullptr).ok());
  ASSERT_TRUE((*b)->Attend(0, q.data(), 1, 4, opts, out_pread.data(), nullptr).ok());
  EXPECT_EQ(out_uring, out_pread);
}

// MSA_LOG_LEVEL in any case sets the level; a name that is not a level keeps
// the default (warn) and says so, rather than silencing every warning.
TEST(Cli, LogLevelFromTheEnvironment) {
  TempDir dir;
  {
    auto s = Store::Create(dir.Sub("store"), SmallGeometry());
    ASSERT_TRUE(s.ok());
  }
  auto stderr_of = [&](const std::string& env) {
    const std::string err = dir.Sub("err.txt");
    const std::string cmd = env + " " + MSA_CLI_PATH + " stats " + dir.Sub("store") + " >/dev/null 2>" + err;
    EXPECT_EQ(std::system(cmd.c_str()), 0) << cmd;
    std::ifstream f(err);
    return std::string((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  };
  EXPECT_EQ(stderr_of("MSA_LOG_LEVEL="), "");                   // default: warn, and nothing to warn of
  EXPECT_NE(stderr_of("MSA_LOG_LEVEL=INFO").find("[info]"), std::string::npos);
  EXPECT_NE(stderr_of("MSA_LOG_LEVEL=info").find("[info]"), std::string::npos);
  const std::string loud = stderr_of("MSA_LOG_LEVEL=loud");
  EXPECT_NE(loud.find("MSA_LOG_LEVEL=loud is not a level"), std::string::npos) << loud;
  EXPECT_EQ(loud.find("[info]"), std::string::npos) << loud;
  // The fallback warning still comes through with an unknown level.
  EXPECT_NE(stderr_of("MSA_LOG_LEVEL=loud MSA_IO_URING=0").find("pread"), std::string::npos);
}

}  // namespace
}  // namespace msa
