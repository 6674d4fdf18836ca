// Deleting documents and compacting the store (store/store.h): a deletion is
// staged like an append and visible only after Commit; queries, listings and
// stream reads never see a deleted document again; Compact removes every
// segment that held one of its records without changing any answer, and a
// crash or a leftover file never loses what was committed.
#include <gtest/gtest.h>

#include <atomic>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <sys/wait.h>
#include <thread>
#include <vector>

#include "attention/half.h"
#include "store/store.h"
#include "tests/test_util.h"

namespace msa {
namespace {

using testing::RandomVector;
using testing::TempDir;

constexpr uint32_t kD = 16;

Geometry SmallGeometry() {
  Geometry g;
  g.layers = 1;
  g.kv_heads = 2;
  g.head_dim = kD;
  g.block_tokens = 8;
  return g;
}

// K/V of one document, rounded to fp16 so the store keeps them bit-exact.
struct Doc {
  std::string name;
  uint64_t tokens;
  std::vector<float> k, v;  // [kv_heads, tokens, d]
};

Doc MakeDoc(const std::string& name, uint64_t tokens, uint64_t seed) {
  Doc doc{name, tokens, RandomVector(2 * tokens * kD, seed), RandomVector(2 * tokens * kD, seed + 7)};
  for (auto* a : {&doc.k, &doc.v}) {
    for (float& x : *a) x = attention::HalfToFloat(attention::FloatToHalf(x));
  }
  return doc;
}

StoreOptions SmallSegments() {
  StoreOptions o;
  o.segment_bytes = 64 << 10;  // a few documents per segment: compaction has whole files to drop
  return o;
}

uint64_t Append(Store& store, const Doc& doc) {
  auto id = store.AppendDocument(doc.name, {doc.k.data(), doc.v.data(), doc.tokens});
  EXPECT_TRUE(id.ok()) << id.status().ToString();
  return id.ok() ? *id : 0;
}

// Exact attention over the store vs the float64 reference over `live`.
void ExpectExactOver(const Store& store, const std::vector<const Doc*>& live, uint64_t seed) {
  const std::vector<float> q = RandomVector(2 * kD, seed, 0.5f);  // one row, 2 query heads
  std::vector<float> out(2 * kD), lse(2);
  AttendOptions o;
  o.exact = true;
  ASSERT_TRUE(store.Attend(0, q.data(), 1, 2, o, out.data(), lse.data()).ok());
  for (uint32_t h = 0; h < 2; ++h) {
    std::vector<float> k, v;
    for (const Doc* doc : live) {
      k.insert(k.end(), doc->k.begin() + h * doc->tokens * kD, doc->k.begin() + (h + 1) * doc->tokens * kD);
      v.insert(v.end(), doc->v.begin() + h * doc->tokens * kD, doc->v.begin() + (h + 1) * doc->tokens * kD);
    }
    if (k.empty()) {
      EXPECT_TRUE(std::isinf(lse[h]) && lse[h] < 0) << "no live document: lse -inf";
      continue;
    }
    std::vector<double> ref(kD);
    double ref_lse;
    testing::DenseReference(q.data() + h * kD, k.data(), v.data(), k.size() / kD, kD, ref.data(), &ref_lse);
    for (uint32_t c = 0; c < kD; ++c) EXPECT_NEAR(out[h * kD + c], ref[c], 1e-4) << "head " << h;
    EXPECT_NEAR(lse[h], ref_lse, 1e-4);
  }
}

std::vector<std::string> Names(const Store& store) {
  auto docs = store.ListDocuments();
  EXPECT_TRUE(docs.ok());
  std::vector<std::string> names;
  for (const auto& d : *docs) names.push_back(d.name);
  return names;
}

size_t SegmentFiles(const std::string& store) {
  size_t n = 0;
  for (const auto& e : std::filesystem::directory_iterator(store + "/segments")) n += e.path().extension() == ".seg";
  return n;
}

TEST(DeleteTest, ADeletionIsVisibleOnlyAfterCommitAndSurvivesReopen) {
  TempDir dir;
  const Doc a = MakeDoc("a", 20, 1), b = MakeDoc("b", 13, 2), c = MakeDoc("c", 30, 3);
  uint64_t id_b;
  {
    auto store = Store::Create(dir.Sub("s"), SmallGeometry());
    ASSERT_TRUE(store.ok());
    Append(**store, a);
    id_b = Append(**store, b);
    Append(**store, c);
    ASSERT_TRUE((*store)->Commit().ok());
    ASSERT_TRUE((*store)->DeleteDocument(id_b).ok());
    // Staged only: still there for queries.
    EXPECT_EQ(Names(**store), (std::vector<std::string>{"a", "b", "c"}));
    ExpectExactOver(**store, {&a, &b, &c}, 10);
    EXPECT_EQ((*store)->DeleteDocument(id_b).code(), Status::Code::kNotFound) << "already staged";
    ASSERT_TRUE((*store)->Commit().ok());
    EXPECT_EQ(Names(**store), (std::vector<std::string>{"a", "c"}));
    ExpectExactOver(**store, {&a, &c}, 11);
    EXPECT_EQ((*store)->Stats().documents, 2u);
    EXPECT_EQ((*store)->Stats().tokens, a.tokens + c.tokens);
    EXPECT_EQ((*store)->DeleteDocument(id_b).code(), Status::Code::kNotFound);
    EXPECT_EQ((*store)->DeleteDocument(999).code(), Status::Code::kNotFound);
  }
  auto store = Store::Open(dir.Sub("s"));
  ASSERT_TRUE(store.ok());
  EXPECT_EQ(Names(**store), (std::vector<std::string>{"a", "c"}));
  ExpectExactOver(**store, {&a, &c}, 12);
  auto deleted = (*store)->ListDeletedDocuments();
  ASSERT_TRUE(deleted.ok());
  ASSERT_EQ(deleted->size(), 1u);
  EXPECT_EQ((*deleted)[0].name, "b");
  // ReadStream holds exactly the live tokens, in order.
  std::vector<float> keys, values;
  ASSERT_TRUE((*store)->ReadStream(0, 1, &keys, &values).ok());
  std::vector<float> expect(a.k.begin() + a.tokens * kD, a.k.end());
  expect.insert(expect.end(), c.k.begin() + c.tokens * kD, c.k.end());
  EXPECT_EQ(keys, expect);
  // A restriction to the deleted document is NotFound; the name is free again.
  AttendOptions o;
  o.documents = {id_b};
  std::vector<float> q(2 * kD, 0.1f), out(2 * kD);
  EXPECT_EQ((*store)->Attend(0, q.data(), 1, 2, o, out.data(), nullptr).code(), Status::Code::kNotFound);
  const Doc b2 = MakeDoc("b", 9, 4);
  Append(**store, b2);
  ASSERT_TRUE((*store)->Commit().ok());
  ExpectExactOver(**store, {&a, &c, &b2}, 13);
  VerifyReport report;
  ASSERT_TRUE((*store)->Verify(&report).ok());
  EXPECT_TRUE(report.problems.empty()) << report.problems.front();
}

TEST(DeleteTest, AnUncommittedDeletionIsLostOnClose) {
  TempDir dir;
  const Doc a = MakeDoc("a", 20, 1);
  {
    auto store = Store::Create(dir.Sub("s"), SmallGeometry());
    ASSERT_TRUE(store.ok());
    const uint64_t id = Append(**store, a);
    ASSERT_TRUE((*store)->Commit().ok());
    ASSERT_TRUE((*store)->DeleteDocument(id).ok());
  }
  auto store = Store::Open(dir.Sub("s"));
  ASSERT_TRUE(store.ok());
  EXPECT_EQ(Names(**store), (std::vector<std::string>{"a"}));
  ExpectExactOver(**store, {&a}, 1);
}

TEST(DeleteTest, SparseQueriesNeverChooseADeletedBlock) {
  TempDir dir;
  auto store = Store::Create(dir.Sub("s"), SmallGeometry());
  ASSERT_TRUE(store.ok());
  std::vector<Doc> docs;
  std::vector<uint64_t> ids;
  for (int i = 0; i < 12; ++i) {
    docs.push_back(MakeDoc("d" + std::to_string(i), 24, 100 + i));
    ids.push_back(Append(**store, docs.back()));
  }
  ASSERT_TRUE((*store)->Commit().ok());
  // Delete the first, the last and every third: the sink and the recent
  // block must come from live documents too.
  std::set<uint64_t> dead = {ids[0], ids[11], ids[3], ids[6], ids[9]};
  for (uint64_t id : dead) ASSERT_TRUE((*store)->DeleteDocument(id).ok());
  ASSERT_TRUE((*store)->Commit().ok());
  std::set<uint64_t> dead_blocks;
  for (size_t i = 0; i < docs.size(); ++i) {
    if (dead.count(ids[i])) {
      for (uint64_t b = i * 3; b < i * 3 + 3; ++b) dead_blocks.insert(b);  // 24 tokens = 3 blocks of 8
    }
  }
  for (uint64_t seed = 0; seed < 20; ++seed) {
    std::vector<float> q = RandomVector(2 * kD, seed, 2.0f), out(2 * kD);
    std::vector<std::vector<uint64_t>> selected;
    AttendOptions o;
    o.top_k = 4;
    ASSERT_TRUE((*store)->Attend(0, q.data(), 1, 2, o, out.data(), nullptr, nullptr, &selected).ok());
    for (const auto& sel : selected) {
      EXPECT_GE(sel.size(), 4u);
      EXPECT_LE(sel.size(), 6u) << "top-4 + sink + recent";
      for (uint64_t b : sel) EXPECT_FALSE(dead_blocks.count(b)) << "block " << b << " is deleted";
      // The sink is the first live block (document 1's), the recent block
      // the last live one (document 10's).
      EXPECT_EQ(sel.front(), 3u);
      EXPECT_EQ(sel.back(), 32u);
    }
  }
}

TEST(CompactTest, CompactionRemovesTheSegmentsOfDeletedDocumentsAndChangesNoAnswer) {
  TempDir dir;
  std::vector<Doc> docs;
  std::vector<uint64_t> ids;
  {
    auto store = Store::Create(dir.Sub("s"), SmallGeometry(), SmallSegments());
    ASSERT_TRUE(store.ok());
    for (int i = 0; i < 40; ++i) {
      docs.push_back(MakeDoc("d" + std::to_string(i), 40 + i, 200 + i));
      ids.push_back(Append(**store, docs.back()));
      if (i % 5 == 4) ASSERT_TRUE((*store)->Commit().ok());
    }
    ASSERT_TRUE((*store)->Commit().ok());
  }
  const size_t files_before = SegmentFiles(dir.Sub("s"));
  ASSERT_GT(files_before, 3u);
  auto store = Store::Open(dir.Sub("s"), SmallSegments());
  ASSERT_TRUE(store.ok());
  std::vector<const Doc*> live;
  for (size_t i = 0; i < docs.size(); ++i) {
    if (i % 4 == 1 || (i >= 10 && i < 20)) {
      ASSERT_TRUE((*store)->DeleteDocument(ids[i]).ok());
    } else {
      live.push_back(&docs[i]);
    }
  }
  CompactStats cs;
  EXPECT_EQ((*store)->Compact(&cs).code(), Status::Code::kInvalidArgument) << "deletions staged";
  ASSERT_TRUE((*store)->Commit().ok());
  ExpectExactOver(**store, live, 1);
  std::vector<float> q = RandomVector(2 * kD * 3, 9, 1.0f);
  std::vector<float> sparse_before(2 * kD * 3), sparse_after(2 * kD * 3);
  AttendOptions o;
  o.top_k = 5;
  ASSERT_TRUE((*store)->Attend(0, q.data(), 3, 2, o, sparse_before.data(), nullptr).ok());
  const uint64_t segment_bytes_before = (*store)->Stats().segment_bytes;

  ASSERT_TRUE((*store)->Compact(&cs).ok());
  EXPECT_GT(cs.segments_removed, 0u);
  EXPECT_GT(cs.blocks_dropped, 0u);
  EXPECT_GT(cs.bytes_reclaimed, 0u);
  EXPECT_LT(SegmentFiles(dir.Sub("s")), files_before);
  EXPECT_LT((*store)->Stats().segment_bytes, segment_bytes_before);
  ExpectExactOver(**store, live, 1);
  ASSERT_TRUE((*store)->Attend(0, q.data(), 3, 2, o, sparse_after.data(), nullptr).ok());
  EXPECT_EQ(sparse_before, sparse_after);
  // A second compaction has nothing to do.
  ASSERT_TRUE((*store)->Compact(&cs).ok());
  EXPECT_EQ(cs.segments_removed, 0u);
  // Appends go on after a compaction, and everything survives a reopen.
  const Doc late = MakeDoc("late", 33, 999);
  Append(**store, late);
  ASSERT_TRUE((*store)->Commit().ok());
  live.push_back(&late);
  store->reset();
  auto reopened = Store::Open(dir.Sub("s"));
  ASSERT_TRUE(reopened.ok()) << reopened.status().ToString();
  ExpectExactOver(**reopened, live, 2);
  VerifyReport report;
  ASSERT_TRUE((*reopened)->Verify(&report).ok());
  EXPECT_TRUE(report.problems.empty()) << report.problems.front();
  EXPECT_EQ(report.documents_checked, 40u + 1u) << "live and deleted documents tile the blocks";
}

TEST(CompactTest, DeletingEverythingLeavesAnEmptyButWorkingStore) {
  TempDir dir;
  auto store = Store::Create(dir.Sub("s"), SmallGeometry(), SmallSegments());
  ASSERT_TRUE(store.ok());
  const Doc a = MakeDoc("a", 50, 1), b = MakeDoc("b", 60, 2);
  const uint64_t ia = Append(**store, a), ib = Append(**store, b);
  ASSERT_TRUE((*store)->Commit().ok());
  ASSERT_TRUE((*store)->DeleteDocument(ia).ok());
  ASSERT_TRUE((*store)->DeleteDocument(ib).ok());
  ASSERT_TRUE((*store)->Commit().ok());
  ASSERT_TRUE((*store)->Compact().ok());
  ExpectExactOver(**store, {}, 3);
  std::vector<float> q(2 * kD, 0.3f), out(2 * kD, 7.0f);
  ASSERT_TRUE((*store)->Attend(0, q.data(), 1, 2, AttendOptions{}, out.data(), nullptr).ok());
  for (float x : out) EXPECT_EQ(x, 0.0f);
  EXPECT_EQ((*store)->Stats().stored_bytes, 0u);
  const Doc c = MakeDoc("c", 17, 3);
  Append(**store, c);
  ASSERT_TRUE((*store)->Commit().ok());
  ExpectExactOver(**store, {&c}, 4);
}

TEST(CompactTest, QueriesDuringCompactionAlwaysGiveTheRightAnswer) {
  TempDir dir;
  auto store = Store::Create(dir.Sub("s"), SmallGeometry(), SmallSegments());
  ASSERT_TRUE(store.ok());
  std::vector<Doc> docs;
  std::vector<uint64_t> ids;
  for (int i = 0; i < 30; ++i) {
    docs.push_back(MakeDoc("d" + std::to_string(i), 64, 500 + i));
    ids.push_back(Append(**store, docs.back()));
  }
  ASSERT_TRUE((*store)->Commit().ok());
  std::vector<const Doc*> live;
  for (size_t i = 0; i < docs.size(); ++i) {
    if (i % 2) {
      ASSERT_TRUE((*store)->DeleteDocument(ids[i]).ok());
    } else {
      live.push_back(&docs[i]);
    }
  }
  ASSERT_TRUE((*store)->Commit().ok());
  const std::vector<float> q = RandomVector(2 * kD, 77, 0.5f);
  std::vector<float> expected(2 * kD);
  AttendOptions o;
  o.exact = true;
  ASSERT_TRUE((*store)->Attend(0, q.data(), 1, 2, o, expected.data(), nullptr).ok());
  std::atomic<bool> done{false};
  std::atomic<int> queries{0}, wrong{0};
  std::vector<std::thread> readers;
  for (int t = 0; t < 2; ++t) {
    readers.emplace_back([&] {
      std::vector<float> out(2 * kD);
      while (!done.load()) {
        Status s = (*store)->Attend(0, q.data(), 1, 2, o, out.data(), nullptr);
        if (!s.ok() || out != expected) ++wrong;
        ++queries;
      }
    });
  }
  CompactStats cs;
  Status s = (*store)->Compact(&cs);
  done = true;
  for (auto& t : readers) t.join();
  ASSERT_TRUE(s.ok()) << s.ToString();
  EXPECT_GT(cs.segments_removed, 0u);
  EXPECT_GT(queries.load(), 0);
  EXPECT_EQ(wrong.load(), 0) << "a query during compaction failed or differed";
  ExpectExactOver(**store, live, 5);
}

TEST(CompactTest, ALeftoverSegmentFileIsRemovedOnOpenAndNothingCommittedIsLost) {
  TempDir dir;
  const Doc a = MakeDoc("a", 30, 1);
  {
    auto store = Store::Create(dir.Sub("s"), SmallGeometry());
    ASSERT_TRUE(store.ok());
    Append(**store, a);
    ASSERT_TRUE((*store)->Commit().ok());
  }
  // What a compaction that crashed after its commit would leave behind.
  const std::string stray = dir.Sub("s") + "/segments/7.seg";
  std::ofstream(stray) << "old bytes";
  ASSERT_TRUE(std::filesystem::exists(stray));
  {
    StoreOptions ro;
    ro.read_only = true;
    auto store = Store::Open(dir.Sub("s"), ro);
    ASSERT_TRUE(store.ok());
    EXPECT_TRUE(std::filesystem::exists(stray)) << "a reader never deletes";
  }
  auto store = Store::Open(dir.Sub("s"));
  ASSERT_TRUE(store.ok());
  EXPECT_FALSE(std::filesystem::exists(stray));
  ExpectExactOver(**store, {&a}, 1);
}

}  // namespace
}  // namespace msa

namespace msa {
namespace {

int Cli(const std::string& args, const std::string& out) {
  const int rc = std::system((std::string(MSA_CLI_PATH) + " " + args + " > " + out + " 2>&1").c_str());
  return WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
}

std::string ReadAll(const std::string& path) {
  std::ifstream in(path);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

TEST(DocsCliTest, DeleteByNameOrIdIsAllOrNothingAndCompactReclaims) {
  TempDir dir;
  const std::string store = dir.Sub("s"), out = dir.Sub("out.txt");
  {
    auto s = Store::Create(store, SmallGeometry());
    ASSERT_TRUE(s.ok());
    for (int i = 0; i < 4; ++i) Append(**s, MakeDoc("doc" + std::to_string(i), 40, 10 + i));
    ASSERT_TRUE((*s)->Commit().ok());
  }
  // One unknown name: exit 4 and nothing deleted.
  EXPECT_EQ(Cli("docs delete " + store + " doc1 nosuch", out), 4);
  EXPECT_NE(ReadAll(out).find("nothing deleted"), std::string::npos) << ReadAll(out);
  ASSERT_EQ(Cli("docs list " + store + " --json", out), 0);
  EXPECT_NE(ReadAll(out).find("\"doc1\""), std::string::npos);
  // By name and by id (doc2 is document 3).
  ASSERT_EQ(Cli("docs delete " + store + " doc1 3", out), 0) << ReadAll(out);
  ASSERT_EQ(Cli("docs list " + store, out), 0);
  const std::string listed = ReadAll(out);
  EXPECT_EQ(listed.find("doc1"), std::string::npos) << listed;
  EXPECT_EQ(listed.find("doc2"), std::string::npos) << listed;
  EXPECT_NE(listed.find("2 documents"), std::string::npos) << listed;
  ASSERT_EQ(Cli("docs list " + store + " --deleted", out), 0);
  EXPECT_NE(ReadAll(out).find("2 deleted documents"), std::string::npos);
  EXPECT_EQ(Cli("docs show " + store + " doc1", out), 4) << "deleted: not found";
  ASSERT_EQ(Cli("compact " + store + " --json", out), 0) << ReadAll(out);
  EXPECT_NE(ReadAll(out).find("\"segments_removed\": 1"), std::string::npos) << ReadAll(out);
  ASSERT_EQ(Cli("verify " + store, out), 0) << ReadAll(out);
  // The log never mixes into --json output, even at info level.
  ASSERT_EQ(std::system(("MSA_LOG_LEVEL=info " + std::string(MSA_CLI_PATH) + " docs list " + store +
                         " --json > " + out + " 2>/dev/null").c_str()),
            0);
  const std::string json = ReadAll(out);
  EXPECT_EQ(json.find("[info]"), std::string::npos) << json;
  EXPECT_EQ(json.front(), '[') << json;
}

}  // namespace
}  // namespace msa
