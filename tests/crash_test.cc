// Crash safety: a child process ingests documents and acknowledges each
// commit on a pipe (the record kept outside the store); the parent kills it
// with SIGKILL at a random moment, reopens the store and checks that every
// acknowledged document is there bit-exact, that at most the one document
// whose commit was in flight is also there (it may have reached RocksDB
// before the ack), that nothing else is visible, and that the store opens
// without repair and verifies clean (Store::Verify). The same store
// accumulates over all iterations.
//
// The child is this test binary re-executed (fork alone would copy a
// multi-threaded process), running CrashChild.Ingest.
#include <gtest/gtest.h>

#include <unistd.h>

#include <chrono>
#include <cstdlib>
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
  g.layers = 2;
  g.kv_heads = 1;
  g.head_dim = 8;
  g.block_tokens = 4;
  return g;
}

// Summary pieces every 128 blocks (the least), so that the kills also land
// while a commit saves one, and Verify checks the pieces left behind.
StoreOptions CrashOptions() {
  StoreOptions o;
  o.summary_piece_blocks = 128;
  return o;
}

// Document i: deterministic K/V, fp16-exact, 1..23 tokens.
void MakeDocument(const Geometry& g, uint64_t i, std::vector<float>* k, std::vector<float>* v,
                  uint64_t* tokens) {
  *tokens = 1 + (i * 7) % 23;
  *k = msa::testing::RandomVector(g.streams() * *tokens * g.head_dim, 1000 + i);
  *v = msa::testing::RandomVector(k->size(), 5000 + i);
  for (auto* x : {k, v})
    for (auto& f : *x) f = attention::HalfToFloat(attention::FloatToHalf(f));
}

TEST(CrashChild, Ingest) {
  std::string path;
  int ack_fd;
  if (!CrashChildArguments(&path, &ack_fd)) GTEST_SKIP() << "runs only as the crash test's child";
  CrashChildStarted(ack_fd);
  const Geometry g = CrashGeometry();
  auto store = Store::Open(path, CrashOptions());
  if (!store.ok()) store = Store::Create(path, g, CrashOptions());
  ASSERT_TRUE(store.ok()) << store.status().ToString();
  for (uint64_t i = (*store)->Stats().documents;; ++i) {
    std::vector<float> k, v;
    uint64_t tokens;
    MakeDocument(g, i, &k, &v, &tokens);
    auto id = (*store)->AppendDocument("doc_" + std::to_string(i),
                                       DocumentKV{k.data(), v.data(), tokens, ElementType::kFloat32});
    ASSERT_TRUE(id.ok()) << id.status().ToString();
    ASSERT_TRUE((*store)->Commit().ok());
    const uint64_t acked = i + 1;
    ASSERT_EQ(::write(ack_fd, &acked, sizeof(acked)), static_cast<ssize_t>(sizeof(acked)));
  }
}

TEST(CrashTest, KillNineDuringIngestLosesNothingCommitted) {
  msa::testing::TempDir dir;
  const std::string store_path = dir.Sub("store");
  const Geometry g = CrashGeometry();
  std::mt19937_64 rng(20261126);
  uint64_t acked = 0;  // documents acknowledged as committed, over all children
  int kills_after_progress = 0;
  double verify_s = 0;  // time in Verify, reported
  const int iterations = CrashTestIterations();
  for (int iter = 0; iter < iterations; ++iter) {
    // The kill comes 5..60 ms after the child has started (times the
    // sanitizer slowdown, tests/crash_child.h).
    const CrashChildRun run = RunCrashChild("CrashChild.Ingest", store_path,
                                            std::uniform_int_distribution<int>(5000, 60000)(rng));
    const uint64_t before = acked;
    acked = std::max(acked, run.max_ack);
    if (acked > before) ++kills_after_progress;
    ASSERT_TRUE(run.killed) << "child ended on its own (status " << run.status << ") in iteration " << iter;

    if (acked == 0 && !std::filesystem::exists(store_path + "/catalog/CURRENT")) continue;
    auto store = Store::Open(store_path, CrashOptions());
    ASSERT_TRUE(store.ok()) << "iteration " << iter << ": " << store.status().ToString();
    auto docs = (*store)->ListDocuments();
    ASSERT_TRUE(docs.ok());
    const uint64_t n = docs->size();
    ASSERT_GE(n, acked) << "iteration " << iter << ": a committed document was lost";
    ASSERT_LE(n, acked + 1) << "iteration " << iter << ": more documents than were ever appended";
    acked = n;  // the in-flight one, if it landed, is committed now
    // Every document bit-exact, in order, nothing else.
    for (uint32_t layer = 0; layer < g.layers; ++layer) {
      std::vector<float> k, v, want_k, want_v;
      ASSERT_TRUE((*store)->ReadStream(layer, 0, &k, &v).ok());
      for (uint64_t i = 0; i < n; ++i) {
        ASSERT_EQ((*docs)[i].name, "doc_" + std::to_string(i));
        std::vector<float> dk, dv;
        uint64_t tokens;
        MakeDocument(g, i, &dk, &dv, &tokens);
        const size_t at = static_cast<size_t>(layer) * tokens * g.head_dim;
        want_k.insert(want_k.end(), dk.begin() + at, dk.begin() + at + tokens * g.head_dim);
        want_v.insert(want_v.end(), dv.begin() + at, dv.begin() + at + tokens * g.head_dim);
      }
      ASSERT_EQ(k, want_k) << "iteration " << iter << " layer " << layer;
      ASSERT_EQ(v, want_v) << "iteration " << iter << " layer " << layer;
    }
    // And a sound store: every block, catalog invariant and saved file.
    VerifyReport report;
    const auto verify_start = std::chrono::steady_clock::now();
    ASSERT_TRUE((*store)->Verify(&report).ok());
    verify_s += std::chrono::duration<double>(std::chrono::steady_clock::now() - verify_start).count();
    ASSERT_TRUE(report.problems.empty()) << "iteration " << iter << ": " << report.problems.front();
  }
  EXPECT_GT(acked, 0u) << "no child ever committed: the test exercised nothing";
  uint64_t piece_blocks = 0;
  {
    StoreOptions ro = CrashOptions();
    ro.read_only = true;
    auto store = Store::Open(store_path, ro);
    ASSERT_TRUE(store.ok()) << store.status().ToString();
    piece_blocks = (*store)->Stats().summary_piece_blocks;
  }
  std::printf("crash test: %d kills, %d after progress, %llu documents committed and verified, "
              "%llu blocks' summaries in saved pieces; %.1f s in Verify\n",
              iterations, kills_after_progress, static_cast<unsigned long long>(acked),
              static_cast<unsigned long long>(piece_blocks), verify_s);
}

}  // namespace
}  // namespace msa
