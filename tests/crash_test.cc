// Crash safety: a child process ingests documents and acknowledges each
// commit on a pipe (the record kept outside the store); the parent kills it
// with SIGKILL at a random moment, reopens the store and checks that every
// acknowledged document is there bit-exact, that at most the one document
// whose commit was in flight is also there (it may have reached RocksDB
// before the ack), that nothing else is visible, and that the store opens
// without repair. The same store accumulates over all iterations.
//
// The child is this test binary re-executed (fork alone would copy a
// multi-threaded process), running CrashChild.Ingest.
#include <gtest/gtest.h>

#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <random>
#include <thread>

#include "attention/half.h"
#include "store/store.h"
#include "test_util.h"

namespace msa {
namespace {

constexpr int kIterations = 200;

// The kill comes 5..60 ms after the child starts, times this factor.
// Sanitizer builds start and run several times slower, so
// tools/test_sanitizers.sh sets MSA_CRASH_TEST_SLOWDOWN to stretch the window
// (otherwise no child would commit before its kill, and the test would fail
// as having exercised nothing).
int Slowdown() {
  const char* s = std::getenv("MSA_CRASH_TEST_SLOWDOWN");
  const int factor = s != nullptr ? std::atoi(s) : 1;
  return factor >= 1 ? factor : 1;
}

Geometry CrashGeometry() {
  Geometry g;
  g.layers = 2;
  g.kv_heads = 1;
  g.head_dim = 8;
  g.block_tokens = 4;
  return g;
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
  const char* path = std::getenv("MSA_CRASH_CHILD_STORE");
  const char* fd_env = std::getenv("MSA_CRASH_CHILD_FD");
  if (path == nullptr || fd_env == nullptr) GTEST_SKIP() << "runs only as the crash test's child";
  const int ack_fd = std::atoi(fd_env);
  const Geometry g = CrashGeometry();
  auto store = Store::Open(path);
  if (!store.ok()) store = Store::Create(path, g);
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
  for (int iter = 0; iter < kIterations; ++iter) {
    int fds[2];
    ASSERT_EQ(::pipe2(fds, O_CLOEXEC), 0);
    const pid_t pid = ::fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
      ::dup2(fds[1], 100);  // dup2 clears O_CLOEXEC on the copy
      ::setenv("MSA_CRASH_CHILD_STORE", store_path.c_str(), 1);
      ::setenv("MSA_CRASH_CHILD_FD", "100", 1);
      const int devnull = ::open("/dev/null", O_WRONLY);
      ::dup2(devnull, 1);
      ::execl("/proc/self/exe", "msa_tests", "--gtest_filter=CrashChild.Ingest", nullptr);
      ::_exit(127);
    }
    ::close(fds[1]);
    std::this_thread::sleep_for(std::chrono::microseconds(
        std::uniform_int_distribution<int>(5000, 60000)(rng) * Slowdown()));
    ::kill(pid, SIGKILL);
    int status = 0;
    ::waitpid(pid, &status, 0);
    uint64_t value;
    const uint64_t before = acked;
    while (::read(fds[0], &value, sizeof(value)) == sizeof(value)) acked = std::max(acked, value);
    ::close(fds[0]);
    if (acked > before) ++kills_after_progress;
    ASSERT_TRUE(WIFSIGNALED(status)) << "child ended on its own (status " << status << ") in iteration " << iter;

    if (acked == 0 && !std::filesystem::exists(store_path + "/catalog/CURRENT")) continue;
    auto store = Store::Open(store_path);
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
  }
  EXPECT_GT(acked, 0u) << "no child ever committed: the test exercised nothing";
  std::printf("crash test: %d kills, %d after progress, %llu documents committed and verified\n",
              kIterations, kills_after_progress, static_cast<unsigned long long>(acked));
}

}  // namespace
}  // namespace msa
