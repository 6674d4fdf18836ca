// Crash safety of deletion and compaction: a child process runs a fixed
// sequence of operations -- append, append, delete the oldest live
// document, compact, repeated -- committing each and acknowledging it on a
// pipe; the parent kills it with SIGKILL at a random moment, reopens the
// store and checks that the live documents are exactly those after the
// acknowledged operations (or after the one in flight, which may have
// reached the catalog before its ack), bit-exact, and that `Verify` finds
// nothing wrong: no lost record, no leftover of a half-done compaction.
// The same store accumulates over all iterations; the child picks up where
// the store says the sequence stands.
#include <gtest/gtest.h>

#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <deque>
#include <filesystem>
#include <random>

#include "attention/half.h"
#include "store/store.h"
#include "crash_child.h"
#include "test_util.h"

namespace msa {
namespace {

using msa::testing::CrashChildRun;
using msa::testing::CrashChildStarted;
using msa::testing::CrashTestIterations;
using msa::testing::CrashChildArguments;
using msa::testing::RunCrashChild;


Geometry CrashGeometry() {
  Geometry g;
  g.layers = 1;
  g.kv_heads = 2;
  g.head_dim = 8;
  g.block_tokens = 4;
  return g;
}

StoreOptions CrashOptions() {
  StoreOptions o;
  o.segment_bytes = 8 << 10;  // a couple of documents per segment: compaction removes files
  return o;
}

// Document i: deterministic K/V, fp16-exact, 5..21 tokens.
void MakeDocument(const Geometry& g, uint64_t i, std::vector<float>* k, std::vector<float>* v,
                  uint64_t* tokens) {
  *tokens = 5 + (i * 5) % 17;
  *k = msa::testing::RandomVector(g.streams() * *tokens * g.head_dim, 3000 + i);
  *v = msa::testing::RandomVector(k->size(), 9000 + i);
  for (auto* x : {k, v})
    for (auto& f : *x) f = attention::HalfToFloat(attention::FloatToHalf(f));
}

enum class Op { kAppend, kDelete, kCompact };
Op OpAt(uint64_t j) {
  switch (j % 4) {
    case 2: return Op::kDelete;
    case 3: return Op::kCompact;
    default: return Op::kAppend;
  }
}

// The live document numbers after the first j operations, oldest first.
std::deque<uint64_t> LiveAfter(uint64_t j) {
  std::deque<uint64_t> live;
  uint64_t next = 0;
  for (uint64_t i = 0; i < j; ++i) {
    if (OpAt(i) == Op::kAppend) live.push_back(next++);
    if (OpAt(i) == Op::kDelete && !live.empty()) live.pop_front();
  }
  return live;
}

std::string Name(uint64_t i) { return "doc_" + std::to_string(i); }

TEST(CrashChild, DeleteCompact) {
  std::string path;
  int ack_fd;
  if (!CrashChildArguments(&path, &ack_fd)) GTEST_SKIP() << "runs only as the crash test's child";
  CrashChildStarted(ack_fd);
  const Geometry g = CrashGeometry();
  auto store = Store::Open(path, CrashOptions());
  if (!store.ok()) store = Store::Create(path, g, CrashOptions());
  ASSERT_TRUE(store.ok()) << store.status().ToString();
  // Where the sequence stands: the first j whose appends and deletions
  // match the store's (a compaction changes neither; redoing it is harmless).
  auto live = (*store)->ListDocuments();
  auto dead = (*store)->ListDeletedDocuments();
  ASSERT_TRUE(live.ok() && dead.ok());
  const uint64_t appended = live->size() + dead->size(), deleted = dead->size();
  uint64_t j = 0;
  for (uint64_t a = 0, d = 0;; ++j) {
    if (a == appended && d == deleted) break;
    if (OpAt(j) == Op::kAppend) ++a;
    if (OpAt(j) == Op::kDelete) ++d;
  }
  for (;; ++j) {
    const std::deque<uint64_t> before = LiveAfter(j);
    switch (OpAt(j)) {
      case Op::kAppend: {
        uint64_t n = 0;  // this append's document number
        for (uint64_t x = 0; x < j; ++x) n += OpAt(x) == Op::kAppend;
        std::vector<float> k, v;
        uint64_t tokens;
        MakeDocument(g, n, &k, &v, &tokens);
        ASSERT_TRUE((*store)->AppendDocument(Name(n), {k.data(), v.data(), tokens}).ok());
        ASSERT_TRUE((*store)->Commit().ok());
        break;
      }
      case Op::kDelete: {
        auto docs = (*store)->ListDocuments();
        ASSERT_TRUE(docs.ok());
        ASSERT_FALSE(docs->empty());
        ASSERT_EQ(docs->front().name, Name(before.front()));
        ASSERT_TRUE((*store)->DeleteDocument(docs->front().id).ok());
        ASSERT_TRUE((*store)->Commit().ok());
        break;
      }
      case Op::kCompact:
        ASSERT_TRUE((*store)->Compact().ok());
        break;
    }
    const uint64_t acked = j + 1;
    ASSERT_EQ(::write(ack_fd, &acked, sizeof(acked)), static_cast<ssize_t>(sizeof(acked)));
  }
}

TEST(CrashTest, KillNineDuringDeletionAndCompactionLosesNothingCommitted) {
  msa::testing::TempDir dir;
  const std::string store_path = dir.Sub("store");
  const Geometry g = CrashGeometry();
  std::mt19937_64 rng(20261127);
  uint64_t acked = 0;  // operations acknowledged, over all children
  int kills_after_progress = 0;
  uint64_t compactions_acked = 0;
  const int iterations = CrashTestIterations();
  for (int iter = 0; iter < iterations; ++iter) {
    // The kill comes 20..120 ms after the child has started: a commit and a
    // compaction each take a few milliseconds here, so most children get
    // some operations done.
    const CrashChildRun run = RunCrashChild("CrashChild.DeleteCompact", store_path,
                                            std::uniform_int_distribution<int>(20000, 120000)(rng));
    const uint64_t before = acked;
    acked = std::max(acked, run.max_ack);
    if (acked > before) ++kills_after_progress;
    for (uint64_t j = before; j < acked; ++j) compactions_acked += OpAt(j) == Op::kCompact;
    ASSERT_TRUE(run.killed) << "child ended on its own (status " << run.status << ") in iteration " << iter;

    if (!std::filesystem::exists(store_path + "/catalog/CURRENT")) continue;
    auto store = Store::Open(store_path, CrashOptions());
    ASSERT_TRUE(store.ok()) << "iteration " << iter << ": " << store.status().ToString();
    auto docs = (*store)->ListDocuments();
    ASSERT_TRUE(docs.ok());
    std::vector<std::string> names;
    for (const auto& d : *docs) names.push_back(d.name);
    // The live set after `acked` operations, or after the one in flight.
    uint64_t matched = UINT64_MAX;
    for (uint64_t j : {acked, acked + 1}) {
      std::vector<std::string> want;
      for (uint64_t i : LiveAfter(j)) want.push_back(Name(i));
      if (want == names) matched = j;
    }
    ASSERT_NE(matched, UINT64_MAX) << "iteration " << iter << ": the live documents match neither "
                                   << acked << " nor " << acked + 1 << " operations";
    acked = std::max(acked, matched);
    // Bit-exact contents, and a sound store.
    for (uint32_t head = 0; head < g.kv_heads; ++head) {
      std::vector<float> k, v, want_k, want_v;
      ASSERT_TRUE((*store)->ReadStream(0, head, &k, &v).ok());
      for (uint64_t i : LiveAfter(matched)) {
        std::vector<float> dk, dv;
        uint64_t tokens;
        MakeDocument(g, i, &dk, &dv, &tokens);
        const size_t at = static_cast<size_t>(head) * tokens * g.head_dim;
        want_k.insert(want_k.end(), dk.begin() + at, dk.begin() + at + tokens * g.head_dim);
        want_v.insert(want_v.end(), dv.begin() + at, dv.begin() + at + tokens * g.head_dim);
      }
      ASSERT_EQ(k, want_k) << "iteration " << iter << " head " << head;
      ASSERT_EQ(v, want_v) << "iteration " << iter << " head " << head;
    }
    VerifyReport report;
    ASSERT_TRUE((*store)->Verify(&report).ok());
    ASSERT_TRUE(report.problems.empty()) << "iteration " << iter << ": " << report.problems.front();
  }
  EXPECT_GT(compactions_acked, 0u) << "no compaction ever completed: the test exercised too little";
  std::printf("crash test (delete/compact): %d kills, %d after progress, %llu operations committed "
              "(%llu compactions) and verified\n",
              iterations, kills_after_progress, static_cast<unsigned long long>(acked),
              static_cast<unsigned long long>(compactions_acked));
}

}  // namespace
}  // namespace msa
