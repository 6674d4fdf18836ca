// Fault injection (issue 10): the io layer's file operations fail (EIO,
// ENOSPC), come up short, hit a false end of file or return flipped bytes
// at chosen or random points (io/fault_injection.h), and the store must
//   - on ingest: return a non-OK Status naming the file and the operation,
//     refuse writes after a failed commit until reopened, and on reopen hold
//     exactly the documents committed before, bit-exact;
//   - on queries: return an error, never an OK with wrong numbers, and keep
//     nothing bad in its block cache (f16 blocks cached decoded, int8 as
//     records; both readers);
//   - continue short reads and retry EAGAIN/EINTR to the right answer.
// Every outcome is checked against a model kept outside the store (the
// documents whose Commit returned OK), as LevelDB's db_test does.
//
// The injector is process-wide, so this suite is its own binary.
//
// Environment: MSA_FAULT_SEED (random mode's seed, default 20261127) and
// MSA_FAULT_RANDOM_STEPS (operations in random mode, default 800); the
// longer soak is tools/fault_soak.sh.
#include <gtest/gtest.h>
#include <stdlib.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <random>
#include <set>
#include <string>
#include <tuple>
#include <vector>

#include "attention/half.h"
#include "io/aligned_buffer.h"
#include "io/block_reader.h"
#include "io/segment_file.h"
#include "io/fault_injection.h"
#include "store/store.h"
#include "fault_model.h"
#include "test_util.h"

namespace msa {
namespace {

using io::Fault;
using io::FaultSchedule;
using io::FileOp;
using io::FileOperation;
using io::OpMask;
using Rule = FaultSchedule::Rule;
using msa::testing::TempDir;
using namespace msa::testing;  // the model (fault_model.h)

constexpr uint64_t kEvery = UINT64_MAX;

// What the message of an error caused by `inj` must contain: the file (or
// directory) and a word for the operation.
void ExpectNamesFault(const Status& s, const FaultSchedule::Injection& inj) {
  EXPECT_NE(s.message().find(inj.path), std::string::npos)
      << "error does not name the file " << inj.path << ": " << s.ToString();
  const char* word = nullptr;
  switch (inj.op) {
    case FileOp::kWrite: word = "write"; break;
    case FileOp::kSync: word = "sync"; break;
    case FileOp::kOpen: word = s.message().find("create") != std::string::npos ? "create" : "open"; break;
    case FileOp::kTruncate: word = "truncate"; break;
    case FileOp::kRename: word = "rename"; break;
    default: break;
  }
  if (word != nullptr) {
    EXPECT_NE(s.message().find(word), std::string::npos) << s.ToString();
  }
  if (inj.fault.kind == Fault::Kind::kError) {
    EXPECT_NE(s.message().find(std::strerror(inj.fault.error)), std::string::npos) << s.ToString();
  }
}

// ------------------------------------------------------ write faults, swept

// One stream and a handful of one- and two-block documents: every kind of
// write point (create, appends, roll-overs, commits, the reopen's cut) in
// about fifty, so that every one can be failed in turn.
Geometry WriteGeometry() {
  Geometry g;
  g.layers = 1;
  g.kv_heads = 1;
  g.head_dim = 16;
  g.block_tokens = 8;
  return g;
}

StoreOptions WriteOptions() {
  StoreOptions o;
  o.segment_bytes = 16 << 10;  // 4 records: two roll-overs in the scenario
  o.allow_io_uring = false;    // reads are not what this sweep is about
  return o;
}

// The writes a fault sweep fails: everything that puts bytes or names on disk.
constexpr uint32_t kWriteOps = OpMask(FileOp::kOpen) | OpMask(FileOp::kWrite) | OpMask(FileOp::kSync) |
                               OpMask(FileOp::kFallocate) | OpMask(FileOp::kTruncate) |
                               OpMask(FileOp::kRename);

struct SweepOutcome {
  uint64_t points = 0;          // fault points reached in the scenario
  std::map<std::string, uint64_t> failed_call;  // "append", "commit", ... -> count
  uint64_t absorbed = 0;        // faults the store did not have to report (fallocate, short writes)
  uint64_t landed = 0;          // failed commits found durable after the reopen (catalog faults)
};

// A small ingest with every kind of write: create, commits over segment
// roll-overs, an uncommitted tail cut off on reopen. Runs with `sched`
// installed, stops at the first failed call, then recovers without faults
// and checks the store against the model.
// With catalog faults a failed commit may still have landed: RocksDB can
// have written the WAL record before its sync failed, and recovery then
// replays it. The store must hold either everything before that commit or
// everything after it, never part of it.
void RunIngestScenario(const std::string& path, FaultSchedule* sched, SweepOutcome* outcome,
                       const std::string& label, bool commit_may_land = false) {
  SCOPED_TRACE(label);
  const Geometry g = WriteGeometry();
  const StoreOptions opts = WriteOptions();
  // Blocks of 8 tokens, segments of 4 records: d0 d1 | commit | d2 rolls
  // over | commit | u0 stays staged in the active segment, whose tail the
  // reopen cuts | d3 d4 roll over again | commit | u1 left staged.
  const std::vector<Doc> docs = {MakeDoc(g, "d0", 12, 1), MakeDoc(g, "d1", 8, 2), MakeDoc(g, "d2", 9, 3),
                                 MakeDoc(g, "u0", 3, 4),  MakeDoc(g, "d3", 1, 5), MakeDoc(g, "d4", 17, 6),
                                 MakeDoc(g, "u1", 5, 7)};
  std::vector<Doc> committed, staged;
  std::unique_ptr<Store> store;
  std::string failed;  // the call that failed, "" if none

  auto create = [&] {
    auto s = Store::Create(path, g, opts);
    if (!s.ok()) return s.status();
    store = std::move(s).value();
    return Status::OK();
  };
  auto reopen = [&] {
    store.reset();
    staged.clear();
    auto s = Store::Open(path, opts);
    if (!s.ok()) return s.status();
    store = std::move(s).value();
    return Status::OK();
  };
  auto append = [&](size_t i) {
    Status s = Append(*store, docs[i]);
    if (s.ok()) staged.push_back(docs[i]);
    return s;
  };
  auto commit = [&] {
    Status s = store->Commit();
    if (s.ok()) {
      committed.insert(committed.end(), staged.begin(), staged.end());
      staged.clear();
    }
    return s;
  };
  struct Step {
    const char* what;
    std::function<Status()> run;
  };
  const std::vector<Step> steps = {
      {"create", create},         {"append", [&] { return append(0); }}, {"append", [&] { return append(1); }},
      {"commit", commit},         {"append", [&] { return append(2); }}, {"commit", commit},
      {"append", [&] { return append(3); }},  // u0: never committed, cut off by the reopen
      {"open", reopen},           {"append", [&] { return append(4); }}, {"append", [&] { return append(5); }},
      {"commit", commit},         {"append", [&] { return append(6); }},  // u1: left uncommitted
  };
  for (const Step& step : steps) {
    const uint64_t before = sched->injected();
    Status s = step.run();
    const auto log = sched->injections();
    if (!s.ok()) {
      failed = step.what;
      ASSERT_GT(sched->injected(), before) << step.what << " failed with no fault injected: " << s.ToString();
      EXPECT_EQ(s.code(), Status::Code::kIOError) << s.ToString();
      ExpectNamesFault(s, log.back());
      break;
    }
    // A fault that fired during a call that succeeded was absorbed: only
    // the best-effort preallocation and short writes (continued) may be;
    // in the catalog, RocksDB's trimming of the last WAL's preallocated
    // tail when it opens a database (reopen, truncate: "not a critical
    // error if fail to truncate", db_impl_open.cc).
    for (size_t i = before; i < log.size(); ++i) {
      const bool wal_trim = commit_may_land && log[i].path.ends_with(".log") &&
                            (log[i].op == FileOp::kOpen || log[i].op == FileOp::kTruncate);
      const bool absorbable = log[i].op == FileOp::kFallocate || log[i].fault.kind == Fault::Kind::kShort ||
                              (log[i].fault.kind == Fault::Kind::kError && log[i].fault.error == EINTR) ||
                              wal_trim;
      EXPECT_TRUE(absorbable) << step.what << " returned OK although " << log[i].ToString();
      ++outcome->absorbed;
    }
  }
  if (!failed.empty()) ++outcome->failed_call[failed];
  if (std::getenv("MSA_FAULT_VERBOSE") != nullptr) {
    const auto log = sched->injections();
    std::printf("%s: %s%s\n", label.c_str(), failed.empty() ? "no call failed" : (failed + " failed").c_str(),
                log.empty() ? "" : (", after " + log.back().ToString()).c_str());
  }
  sched->set_enabled(false);

  if (failed == "commit") {
    // After a failed commit the store refuses writes until reopened.
    ASSERT_NE(store, nullptr);
    const Status again = Append(*store, MakeDoc(g, "refused", 3, 99));
    EXPECT_FALSE(again.ok()) << "append accepted after a failed commit";
    EXPECT_NE(again.message().find("reopen"), std::string::npos) << again.ToString();
    EXPECT_FALSE(store->Commit().ok()) << "commit accepted after a failed commit";
    // Queries still see the last commit.
    ExpectHolds(*store, committed, "the refusing store");
  } else if (failed == "append") {
    // A failed append stages nothing of its document; what was staged
    // before it still commits, and the document can be appended again.
    ASSERT_NE(store, nullptr);
    ASSERT_TRUE(commit().ok());
    ExpectHolds(*store, committed, "after a failed append and a commit");
  }
  // Recover: reopen (create where the store never came to exist) and find
  // exactly what was committed.
  store.reset();
  auto reopened = Store::Open(path, opts);
  if (!reopened.ok() && reopened.status().code() == Status::Code::kNotFound && committed.empty()) {
    reopened = Store::Create(path, g, opts);
  }
  ASSERT_TRUE(reopened.ok()) << "recovery after " << (failed.empty() ? "no failure" : failed) << ": "
                             << reopened.status().ToString();
  if (failed == "commit" && commit_may_land) {
    auto listed = (*reopened)->ListDocuments();
    ASSERT_TRUE(listed.ok()) << listed.status().ToString();
    if (listed->size() != committed.size()) {
      committed.insert(committed.end(), staged.begin(), staged.end());  // it landed: all of it
      ++outcome->landed;
    }
  }
  ExpectHolds(**reopened, committed, "reopened after the fault");
  // New ingests work.
  const Doc after = MakeDoc(g, "after", 11, 100);
  ASSERT_TRUE(Append(**reopened, after).ok());
  ASSERT_TRUE((*reopened)->Commit().ok());
  committed.push_back(after);
  ExpectHolds(**reopened, committed, "after a new ingest");
}

// Runs the scenario once with faults counted, not injected: the number of
// write points of the ingest.
uint64_t CountWritePoints(uint32_t ops = kWriteOps, bool catalog = false) {
  SweepDir dir;
  Rule count{ops, "", nullptr, 0, 0, 0, Fault::Error(EIO)};
  count.catalog = catalog;
  FaultSchedule sched({count});
  io::ScopedFaultInjector scope(&sched);
  SweepOutcome ignored;
  RunIngestScenario(dir.Sub("store"), &sched, &ignored, "counting", catalog);
  return sched.matched(0);
}

void SweepWriteFaults(const std::string& name, const std::function<std::vector<Rule>(uint64_t)>& make,
                      uint64_t points, uint64_t stride, SweepOutcome* outcome, bool catalog = false) {
  for (uint64_t k = 0; k < points; k += stride) {
    SweepDir dir;
    FaultSchedule sched(make(k));
    io::ScopedFaultInjector scope(&sched);
    RunIngestScenario(dir.Sub("store"), &sched, outcome, name + " at write point " + std::to_string(k), catalog);
    outcome->points += sched.injected() > 0;
    if (::testing::Test::HasFatalFailure()) return;
  }
}

std::vector<Rule> ErrorAt(uint64_t k, int err) { return {Rule{kWriteOps, "", nullptr, k, 1, 0, Fault::Error(err)}}; }

// One errno per test case, so that ctest runs them side by side.
class WriteFaults : public ::testing::TestWithParam<int> {};

TEST_P(WriteFaults, ErrorAtEveryPointOfAnIngestKeepsTheLastCommit) {
  const int err = GetParam();
  const uint64_t points = CountWritePoints();
  ASSERT_GT(points, 30u) << "the scenario should reach every kind of write";
  SweepOutcome o;
  SweepWriteFaults(std::strerror(err), [err](uint64_t k) { return ErrorAt(k, err); }, points, 1, &o);
  EXPECT_EQ(o.points, points);
  for (const char* call : {"create", "append", "commit", "open"}) {
    EXPECT_GT(o.failed_call[call], 0u) << "no " << call << " failed: the scenario misses a kind of write";
  }
  std::printf("write sweep, %s: %llu points; failed calls: create %llu, append %llu, commit %llu, open %llu; "
              "absorbed (fallocate, best effort) %llu; every failure named its file and operation, every "
              "reopen held exactly the committed documents, every later ingest worked\n",
              Fault::Error(err).ToString().c_str(), static_cast<unsigned long long>(points),
              static_cast<unsigned long long>(o.failed_call["create"]),
              static_cast<unsigned long long>(o.failed_call["append"]),
              static_cast<unsigned long long>(o.failed_call["commit"]),
              static_cast<unsigned long long>(o.failed_call["open"]),
              static_cast<unsigned long long>(o.absorbed));
}

INSTANTIATE_TEST_SUITE_P(Errors, WriteFaults, ::testing::Values(EIO, ENOSPC),
                         [](const auto& info) { return info.param == EIO ? "EIO" : "ENOSPC"; });

// The same sweep over the catalog's RocksDB files (store/catalog_file_system.h):
// creating the WAL, MANIFEST, OPTIONS and table files, appending to them,
// syncing them and their directory, renaming CURRENT into place.
class CatalogWriteFaults : public ::testing::TestWithParam<int> {};

TEST_P(CatalogWriteFaults, ErrorAtEveryCatalogWritePointKeepsTheLastCommit) {
  const int err = GetParam();
  const uint64_t points = CountWritePoints(kWriteOps, /*catalog=*/true);
  ASSERT_GT(points, 20u) << "the scenario should reach the catalog's writes";
  SweepOutcome o;
  SweepWriteFaults(
      std::string("catalog ") + std::strerror(err),
      [err](uint64_t k) {
        Rule r{kWriteOps, "", nullptr, k, 1, 0, Fault::Error(err)};
        r.catalog = true;
        return std::vector<Rule>{r};
      },
      points, 1, &o, /*catalog=*/true);
  EXPECT_EQ(o.points, points);
  for (const char* call : {"create", "commit", "open"}) {
    EXPECT_GT(o.failed_call[call], 0u) << "no " << call << " failed: the scenario misses a kind of catalog write";
  }
  std::printf("catalog write sweep, %s: %llu points; failed calls: create %llu, append %llu, commit %llu "
              "(%llu of them durable after all), open %llu; absorbed %llu; every reopen held exactly the "
              "committed documents (or those and the failed commit's, whole)\n",
              Fault::Error(err).ToString().c_str(), static_cast<unsigned long long>(points),
              static_cast<unsigned long long>(o.failed_call["create"]),
              static_cast<unsigned long long>(o.failed_call["append"]),
              static_cast<unsigned long long>(o.failed_call["commit"]),
              static_cast<unsigned long long>(o.landed), static_cast<unsigned long long>(o.failed_call["open"]),
              static_cast<unsigned long long>(o.absorbed));
}

INSTANTIATE_TEST_SUITE_P(Errors, CatalogWriteFaults, ::testing::Values(EIO, ENOSPC),
                         [](const auto& info) { return info.param == EIO ? "EIO" : "ENOSPC"; });

// Faults in the catalog's reads while a store opens (RocksDB reading
// CURRENT, the MANIFEST, replaying the WAL, reading table files): each
// either fails the open, or the open holds exactly what was committed. A
// read corrupted by the disk must never let an open through with a commit
// missing (RocksDB could take a damaged WAL record for a torn tail).
class CatalogReadFaults : public ::testing::TestWithParam<bool> {};

TEST_P(CatalogReadFaults, EveryReadOfAnOpenFailsItOrLosesNothing) {
  const bool corrupt = GetParam();
  const Geometry g = WriteGeometry();
  const StoreOptions opts = WriteOptions();
  SweepDir dir;
  const std::string path = dir.Sub("store");
  std::vector<Doc> committed;
  {
    auto created = Store::Create(path, g, opts);
    ASSERT_TRUE(created.ok()) << created.status().ToString();
    for (int i = 0; i < 3; ++i) {  // three commits: three WAL records to replay
      committed.push_back(MakeDoc(g, "c" + std::to_string(i), 5 + 4 * i, 40 + i));
      ASSERT_TRUE(Append(**created, committed.back()).ok());
      ASSERT_TRUE((*created)->Commit().ok());
    }
  }
  // The reads of one open, counted without faults. The store is copied
  // first: an open that succeeds may rewrite the catalog (a flush of the
  // replayed WAL), and each point starts from the same files.
  const std::string pristine = dir.Sub("pristine");
  std::filesystem::copy(path, pristine, std::filesystem::copy_options::recursive);
  auto restore = [&] {
    std::filesystem::remove_all(path);
    std::filesystem::copy(pristine, path, std::filesystem::copy_options::recursive);
  };
  Rule count{OpMask(FileOp::kRead), "", nullptr, 0, 0, 0, Fault::None()};
  count.catalog = true;
  uint64_t points = 0;
  {
    FaultSchedule sched({count});
    io::ScopedFaultInjector scope(&sched);
    auto s = Store::Open(path, opts);
    ASSERT_TRUE(s.ok()) << s.status().ToString();
    points = sched.matched(0);
  }
  ASSERT_GT(points, 3u);
  uint64_t failed = 0, held = 0;
  for (uint64_t k = 0; k < points; ++k) {
    SCOPED_TRACE("catalog read " + std::to_string(k));
    restore();
    Rule r{OpMask(FileOp::kRead), "", nullptr, k, 1, 0, corrupt ? Fault::Corrupt(7) : Fault::Error(EIO)};
    r.catalog = true;
    FaultSchedule sched({r});
    {
      io::ScopedFaultInjector scope(&sched);
      auto s = Store::Open(path, opts);
      if (!s.ok()) {
        ++failed;
        if (!corrupt) {
          EXPECT_NE(s.status().message().find("Input/output error"), std::string::npos) << s.status().ToString();
        }
        continue;
      }
      sched.set_enabled(false);
      ExpectHolds(**s, committed, "opened through a faulty read");
      ++held;
    }
    auto again = Store::Open(path, opts);  // and the files are still whole
    ASSERT_TRUE(again.ok()) << again.status().ToString();
    ExpectHolds(**again, committed, "reopened without faults");
  }
  std::printf("catalog read faults (%s) at each of %llu reads of an open: %llu opens failed, %llu held "
              "every commit\n",
              corrupt ? "flipped byte" : "EIO", static_cast<unsigned long long>(points),
              static_cast<unsigned long long>(failed), static_cast<unsigned long long>(held));
}

INSTANTIATE_TEST_SUITE_P(Kinds, CatalogReadFaults, ::testing::Values(false, true),
                         [](const auto& info) { return info.param ? "FlippedByte" : "EIO"; });

// A short O_DIRECT write (the sweeps run on tmpfs, which has no O_DIRECT:
// here the directory is on the disk) of 100 bytes is refused by the kernel
// (EINVAL: not a multiple of the block): the writer goes on through the
// page cache, and the file holds every byte. Then a short write mid-run in
// buffered mode is continued.
TEST(FaultInjection, ShortDirectWritesAreContinuedBuffered) {
  TempDir dir;
  const std::string path = dir.Sub("1.seg");
  auto w = io::SegmentWriter::Open(path, 0);
  ASSERT_TRUE(w.ok()) << w.status().ToString();
  io::AlignedBuffer buf(5 * 4096);
  for (size_t i = 0; i < buf.size(); ++i) buf.data()[i] = static_cast<uint8_t>(i * 13 + 1);
  FaultSchedule sched({Rule{OpMask(FileOp::kWrite), "1.seg", nullptr, 0, 1, 0, Fault::Short(100)},
                       Rule{OpMask(FileOp::kWrite), "1.seg", nullptr, 0, 1, 0, Fault::Short(5000)}});
  {
    io::ScopedFaultInjector scope(&sched);
    auto at = (*w)->AppendPadded(buf.data(), buf.size());
    ASSERT_TRUE(at.ok()) << at.status().ToString();
    EXPECT_EQ(*at, 0u);
  }
  EXPECT_EQ(sched.injected(), 2u);
  ASSERT_TRUE((*w)->Sync().ok());
  std::FILE* f = std::fopen(path.c_str(), "rb");
  ASSERT_NE(f, nullptr);
  std::vector<uint8_t> got(buf.size() + 1);
  EXPECT_EQ(std::fread(got.data(), 1, got.size(), f), buf.size());
  std::fclose(f);
  EXPECT_EQ(std::memcmp(got.data(), buf.data(), buf.size()), 0);
}

TEST(FaultInjection, ShortWritesAreContinuedAndShortThenFullDiskFails) {
  const uint64_t writes = CountWritePoints(OpMask(FileOp::kWrite));
  // A document's records go to a segment in one write (Store::AppendRecords):
  // the scenario has a few writes per document and per commit.
  ASSERT_GT(writes, 6u);
  // A short write alone is continued: the ingest succeeds.
  SweepOutcome shorts;
  SweepWriteFaults("short write", [](uint64_t k) {
    return std::vector<Rule>{Rule{OpMask(FileOp::kWrite), "", nullptr, k, 1, 0, Fault::Short(100)}};
  }, writes, 1, &shorts);
  EXPECT_TRUE(shorts.failed_call.empty());
  EXPECT_GT(shorts.absorbed, 0u);
  // The usual way a disk fills: a short write, then ENOSPC on its rest.
  SweepOutcome full;
  SweepWriteFaults("short then ENOSPC", [](uint64_t k) {
    return std::vector<Rule>{Rule{OpMask(FileOp::kWrite), "", nullptr, k, 1, 0, Fault::Short(100)},
                             Rule{OpMask(FileOp::kWrite), "", nullptr, k, 1, 0, Fault::Error(ENOSPC)}};
  }, writes, 1, &full);
  EXPECT_GT(full.failed_call["append"], 0u);
  EXPECT_EQ(shorts.points, writes);
  EXPECT_EQ(full.points, writes);
  std::printf("short writes: %llu points faulted, every ingest completed; short write then ENOSPC: %llu points, "
              "%llu appends and %llu commits failed, every reopen held the committed documents\n",
              static_cast<unsigned long long>(shorts.points), static_cast<unsigned long long>(full.points),
              static_cast<unsigned long long>(full.failed_call["append"]),
              static_cast<unsigned long long>(full.failed_call["commit"]));
}

// ------------------------------------------------------- read faults, swept

Geometry ReadGeometry() {
  Geometry g;
  g.layers = 1;
  g.kv_heads = 2;
  g.head_dim = 32;
  g.block_tokens = 64;  // records of two 4 KiB pages: short reads continue aligned
  return g;
}

constexpr uint32_t kQHeads = 4;
constexpr uint32_t kRows = 3;

AttendOptions TopKOptions(uint32_t top_k, bool cache) {
  AttendOptions o;
  o.top_k = top_k;
  o.use_cache = cache;
  return o;
}
AttendOptions ExactOptions() {
  AttendOptions o;
  o.exact = true;
  return o;
}

// The calls a read fault may hit.
enum class Call { kTopKCached, kTopKUncached, kExact, kReadStream, kPrefetch };

// Parameters: the reader (io_uring or pread) and the codec: f16 blocks are
// cached decoded, int8 blocks as their verified records (store/block_cache.h).
class ReadFaults : public ::testing::TestWithParam<std::tuple<bool, Codec>> {
 protected:
  static constexpr Codec kCodecs[] = {Codec::kF16ShuffleZstd, Codec::kInt8};
  static std::string StoreName(Codec c) { return std::string("store_") + CodecName(c); }

  static void SetUpTestSuite() {
    dir_ = new TempDir();
    const Geometry g = ReadGeometry();
    docs_ = new std::vector<Doc>{MakeDoc(g, "a", 300, 11), MakeDoc(g, "b", 64, 12), MakeDoc(g, "c", 200, 13),
                                 MakeDoc(g, "d", 37, 14), MakeDoc(g, "e", 250, 15)};
    for (Codec c : kCodecs) {
      Geometry gc = g;
      gc.codec = c;
      auto s = Store::Create(dir_->Sub(StoreName(c)), gc);
      ASSERT_TRUE(s.ok()) << s.status().ToString();
      for (const Doc& d : *docs_) ASSERT_TRUE(Append(**s, d).ok());
      ASSERT_TRUE((*s)->Commit().ok());
    }
  }

  bool uring() const { return std::get<0>(GetParam()); }
  Codec codec() const { return std::get<1>(GetParam()); }
  std::string Label() const { return std::string(uring() ? "io_uring" : "pread") + ", " + CodecName(codec()); }
  static void TearDownTestSuite() {
    delete docs_;
    delete dir_;
  }

  void SetUp() override {
    if (uring()) {
      auto probe = io::MakeUringReader(8);
      if (!probe.ok()) GTEST_SKIP() << "io_uring unavailable here: " << probe.status().ToString();
    }
    store_ = OpenStore();
    ASSERT_NE(store_, nullptr);
    if (uring() && store_->Stats().reader != "io_uring") {
      GTEST_SKIP() << "the store reads with " << store_->Stats().reader << " here (MSA_IO_URING=0?)";
    }
    ASSERT_EQ(store_->Stats().reader, uring() ? "io_uring" : "pread");
    q_ = msa::testing::RandomVector(static_cast<size_t>(kRows) * kQHeads * ReadGeometry().head_dim, 77);
    // The right answers, read with no faults and no cache.
    ASSERT_TRUE(Attend(*store_, TopK(false), &want_topk_).ok());
    ASSERT_TRUE(Attend(*store_, Exact(), &want_exact_).ok());
    const Geometry g = ReadGeometry();
    want_keys_.resize(g.kv_heads);
    want_values_.resize(g.kv_heads);
    for (uint32_t kv = 0; kv < g.kv_heads; ++kv) {
      ASSERT_TRUE(store_->ReadStream(0, kv, &want_keys_[kv], &want_values_[kv]).ok());
    }
    if (codec() == Codec::kF16ShuffleZstd) {  // lossless: the input itself, and dense attention
      for (uint32_t kv = 0; kv < g.kv_heads; ++kv) {
        ASSERT_TRUE(want_keys_[kv] == StreamOf(g, *docs_, kv, true));
        ASSERT_TRUE(want_values_[kv] == StreamOf(g, *docs_, kv, false));
      }
      ExpectExactMatchesDense();
    }
  }

  // A fresh read-only handle: an empty block cache.
  std::unique_ptr<Store> OpenStore() const {
    StoreOptions o;
    o.read_only = true;
    o.allow_io_uring = uring();
    auto s = Store::Open(dir_->Sub(StoreName(codec())), o);
    EXPECT_TRUE(s.ok()) << s.status().ToString();
    return s.ok() ? std::move(s).value() : nullptr;
  }

  static AttendOptions TopK(bool cache) { return TopKOptions(2, cache); }
  static AttendOptions Exact() { return ExactOptions(); }

  struct Answer {
    std::vector<float> out, lse;
    bool operator==(const Answer&) const = default;
  };
  Status Attend(const Store& s, const AttendOptions& o, Answer* a) const {
    const size_t d = ReadGeometry().head_dim;
    a->out.assign(static_cast<size_t>(kRows) * kQHeads * d, std::nanf(""));
    a->lse.assign(static_cast<size_t>(kRows) * kQHeads, std::nanf(""));
    return s.Attend(0, q_.data(), kRows, kQHeads, o, a->out.data(), a->lse.data());
  }

  void ExpectExactMatchesDense() const {
    const Geometry g = ReadGeometry();
    const size_t d = g.head_dim;
    for (uint32_t kv = 0; kv < g.kv_heads; ++kv) {
      const auto k = StreamOf(g, *docs_, kv, true), v = StreamOf(g, *docs_, kv, false);
      const size_t tokens = k.size() / d;
      for (uint32_t i = 0; i < kRows; ++i) {
        for (uint32_t h = kv * (kQHeads / g.kv_heads); h < (kv + 1) * (kQHeads / g.kv_heads); ++h) {
          std::vector<double> out(d);
          double lse;
          msa::testing::DenseReference(&q_[(i * kQHeads + h) * d], k.data(), v.data(), tokens, d, out.data(), &lse);
          for (size_t c = 0; c < d; ++c) ASSERT_NEAR(want_exact_.out[(i * kQHeads + h) * d + c], out[c], 1e-4);
          ASSERT_NEAR(want_exact_.lse[i * kQHeads + h], lse, 1e-4);
        }
      }
    }
  }

  // Reads of block data (the catalog is RocksDB's, outside the seam).
  static Rule ReadRule(uint64_t first, uint64_t count, Fault f) {
    return Rule{OpMask(FileOp::kRead), "/segments/", nullptr, first, count, 0, f};
  }

  static const char* CallName(Call c) {
    switch (c) {
      case Call::kTopKCached: return "attend top-k, cache on";
      case Call::kTopKUncached: return "attend top-k, cache off";
      case Call::kExact: return "attend exact";
      case Call::kReadStream: return "read stream";
      case Call::kPrefetch: return "prefetch";
    }
    return "?";
  }
  // Runs `call` on `s`; on OK checks the answer is the right one.
  Status RunCall(Call call, const Store& s) const {
    Answer a;
    switch (call) {
      case Call::kTopKCached:
      case Call::kTopKUncached: {
        Status st = Attend(s, TopK(call == Call::kTopKCached), &a);
        if (st.ok()) {
          EXPECT_TRUE(a == want_topk_) << CallName(call) << " returned OK with a wrong answer";
        }
        return st;
      }
      case Call::kExact: {
        Status st = Attend(s, Exact(), &a);
        if (st.ok()) {
          EXPECT_TRUE(a == want_exact_) << "exact attend returned OK with a wrong answer";
        }
        return st;
      }
      case Call::kReadStream: {
        const Geometry g = ReadGeometry();
        for (uint32_t kv = 0; kv < g.kv_heads; ++kv) {
          std::vector<float> k, v;
          MSA_RETURN_IF_ERROR(s.ReadStream(0, kv, &k, &v));
          EXPECT_TRUE(k == want_keys_[kv] && v == want_values_[kv]) << "ReadStream returned OK with wrong data";
        }
        return Status::OK();
      }
      case Call::kPrefetch: {
        Status st = s.Prefetch(0, q_.data(), kRows, kQHeads, TopK(true)).get();
        if (st.ok()) {  // the cache then serves the attend
          EXPECT_TRUE(Attend(s, TopK(true), &a).ok());
          EXPECT_TRUE(a == want_topk_) << "attend after an OK prefetch is wrong";
        }
        return st;
      }
    }
    return Status::Internal("unknown call");
  }

  uint64_t CountReads(Call call) {
    auto s = OpenStore();
    FaultSchedule sched({ReadRule(0, 0, Fault::Error(EIO))});
    io::ScopedFaultInjector scope(&sched);
    EXPECT_TRUE(RunCall(call, *s).ok());
    return sched.matched(0);
  }

  // For every read point k of `call`: the rules of make(k) installed, the
  // call must fail (expect_ok false) or succeed with the right answer; then,
  // with faults removed, the same handle must answer right (nothing
  // poisoned in its cache, reader still usable).
  // every_point false: make ignores k, one run.
  void Sweep(Call call, const std::string& label, std::function<std::vector<Rule>(uint64_t)> make,
             bool expect_ok, uint64_t* failures, bool every_point = true) {
    const uint64_t points = every_point ? CountReads(call) : 1;
    ASSERT_GT(points, 0u);
    uint64_t skipped = 0;
    for (uint64_t k = 0; k < points; ++k) {
      SCOPED_TRACE(label + " at read " + std::to_string(k) + " of " + CallName(call));
      // Calls that use the cache get a fresh handle (an empty cache, so that
      // they read); the others bypass it and share one.
      std::unique_ptr<Store> fresh;
      if (call == Call::kTopKCached || call == Call::kPrefetch) {
        fresh = OpenStore();
        ASSERT_NE(fresh, nullptr);
      }
      const Store* s = fresh ? fresh.get() : store_.get();
      FaultSchedule sched(make(k));
      Status st;
      {
        io::ScopedFaultInjector scope(&sched);
        st = RunCall(call, *s);
      }
      injected_ += sched.injected();
      ++runs_;
      if (sched.injected() == 0) {  // a short read of a record no longer than the short length
        ++skipped;
        continue;
      }
      if (expect_ok) {
        EXPECT_TRUE(st.ok()) << st.ToString();
      } else {
        ASSERT_FALSE(st.ok()) << "returned OK although " << sched.injections().front().ToString();
        EXPECT_TRUE(st.code() == Status::Code::kIOError || st.code() == Status::Code::kCorruption)
            << st.ToString();
        // The message names the segment file (the reader's request, or the
        // decoder's block).
        EXPECT_NE(st.message().find("/segments/"), std::string::npos) << st.ToString();
        ++*failures;
      }
      // Faults gone: right answers from the same handle, through its cache.
      EXPECT_TRUE(RunCall(Call::kTopKCached, *s).ok());
      EXPECT_TRUE(RunCall(Call::kTopKCached, *s).ok());  // now from the cache
      EXPECT_TRUE(RunCall(call, *s).ok());
      if (HasFatalFailure()) return;
    }
    EXPECT_LT(skipped, points) << label << ": no read of " << CallName(call) << " could take the fault";
  }

  static TempDir* dir_;
  static std::vector<Doc>* docs_;
  std::unique_ptr<Store> store_;
  std::vector<float> q_;
  Answer want_topk_, want_exact_;
  std::vector<std::vector<float>> want_keys_, want_values_;  // [kv head], read with no faults
  uint64_t injected_ = 0, runs_ = 0;  // over all sweeps of a test
};
TempDir* ReadFaults::dir_ = nullptr;
std::vector<Doc>* ReadFaults::docs_ = nullptr;

constexpr Call kAllCalls[] = {Call::kTopKCached, Call::kTopKUncached, Call::kExact, Call::kReadStream,
                              Call::kPrefetch};

TEST_P(ReadFaults, ErrorsFailTheQueryAndPoisonNothing) {
  uint64_t failures = 0;
  const std::vector<std::pair<std::string, Fault>> faults = {
      {"EIO", Fault::Error(EIO)}, {"false end of file", Fault::Eof()}, {"flipped byte", Fault::Corrupt()}};
  for (Call call : kAllCalls) {
    for (const auto& [label, fault] : faults) {
      Sweep(call, label, [f = fault](uint64_t k) { return std::vector<Rule>{ReadRule(k, 1, f)}; }, false, &failures);
      if (HasFatalFailure()) return;
    }
    // A short read whose rest never comes (the file ends there).
    Sweep(call, "short read, then end of file",
          [](uint64_t k) { return std::vector<Rule>{ReadRule(k, 1, Fault::ShortThenEof(4096))}; }, false, &failures);
    if (HasFatalFailure()) return;
  }
  std::printf("read faults (%s): %llu calls with an EIO, false end of file, flipped byte or unfinished short read "
              "(%llu faults): every one failed, and the same handle answered right afterwards\n",
              Label().c_str(), static_cast<unsigned long long>(failures),
              static_cast<unsigned long long>(injected_));
}

TEST_P(ReadFaults, ShortReadsAndRetriesGiveTheRightAnswer) {
  uint64_t failures = 0;
  for (Call call : kAllCalls) {
    // Every read of the call comes back in 4 KiB pieces.
    Sweep(call, "short reads", [](uint64_t) { return std::vector<Rule>{ReadRule(0, kEvery, Fault::Short(4096))}; },
          true, &failures, /*every_point=*/false);
    // One read at k interrupted or told to try again.
    for (int err : {EAGAIN, EINTR}) {
      Sweep(call, std::strerror(err),
            [err](uint64_t k) { return std::vector<Rule>{ReadRule(k, 1, Fault::Error(err))}; }, true, &failures);
    }
    if (HasFatalFailure()) return;
  }
  EXPECT_EQ(failures, 0u);
  std::printf("short reads and retries (%s): %llu calls, %llu faults (4 KiB pieces, EAGAIN, EINTR), every answer "
              "right\n", Label().c_str(), static_cast<unsigned long long>(runs_),
              static_cast<unsigned long long>(injected_));
}

TEST_P(ReadFaults, VerifyNamesEveryUnreadableBlock) {
  const Geometry g = ReadGeometry();
  const uint64_t blocks = store_->Stats().blocks_per_stream;
  // One block at a time made unreadable for good (every read of its offset in
  // its stream's segment fails): Verify reports it by block, file and offset,
  // and checks every other block.
  VerifyReport clean;
  ASSERT_TRUE(store_->Verify(&clean).ok());
  ASSERT_TRUE(clean.problems.empty());
  ASSERT_EQ(clean.blocks_checked, blocks * g.streams());
  // Find each block's file offset by watching one clean pass.
  std::vector<std::pair<std::string, uint64_t>> reads;
  {
    FaultSchedule watch({Rule{OpMask(FileOp::kRead), "/segments/",
                              [&reads](const FileOperation& op) {
                                reads.emplace_back(std::string(op.path), op.offset);
                                return false;
                              },
                              0, 0, 0, Fault::Error(EIO)}});
    io::ScopedFaultInjector scope(&watch);
    VerifyReport r;
    ASSERT_TRUE(store_->Verify(&r).ok());
  }
  ASSERT_EQ(reads.size(), blocks * g.streams());
  for (const auto& [path, offset] : reads) {
    for (const Fault& f : {Fault::Error(EIO), Fault::Corrupt()}) {
      SCOPED_TRACE(f.ToString() + " at " + path + " offset " + std::to_string(offset));
      FaultSchedule sched({Rule{OpMask(FileOp::kRead), path,
                                [o = offset](const FileOperation& op) { return op.offset == o; }, 0, kEvery, 0, f}});
      VerifyReport r;
      {
        io::ScopedFaultInjector scope(&sched);
        ASSERT_TRUE(store_->Verify(&r).ok());
      }
      ASSERT_EQ(r.problems.size(), 1u);
      EXPECT_NE(r.problems[0].find(path), std::string::npos) << r.problems[0];
      EXPECT_NE(r.problems[0].find("offset " + std::to_string(offset)), std::string::npos) << r.problems[0];
      EXPECT_EQ(r.blocks_checked + (f.kind == Fault::Kind::kError ? 1 : 0), blocks * g.streams());
    }
  }
  // A transient error on any one read: Verify re-reads block by block, and
  // with the re-read good it finds nothing wrong.
  for (uint64_t k = 0; k < reads.size(); ++k) {
    FaultSchedule sched({ReadRule(k, 1, Fault::Error(EIO))});
    VerifyReport r;
    {
      io::ScopedFaultInjector scope(&sched);
      ASSERT_TRUE(store_->Verify(&r).ok());
    }
    EXPECT_TRUE(r.problems.empty()) << r.problems.front();
    EXPECT_EQ(r.blocks_checked, blocks * g.streams());
  }
  std::printf("verify (%s): %zu blocks each made unreadable and each corrupted: one problem naming file and offset "
              "every time; %zu transient errors: re-read, nothing reported\n", Label().c_str(),
              reads.size(), reads.size());
}

TEST_P(ReadFaults, FailedSubmissionLeavesTheReaderUsable) {
  if (!uring()) GTEST_SKIP() << "submissions are io_uring's";
  // The submission itself refused (ENOMEM, EFAULT...): its prepared reads
  // must not go out later into freed buffers, or be mistaken for the next
  // call's completions.
  uint64_t refused = 0;
  for (Call call : kAllCalls) {
    uint64_t submits = 0;
    {
      auto s = OpenStore();
      FaultSchedule count({Rule{OpMask(FileOp::kSubmit), "", nullptr, 0, 0, 0, Fault::Error(ENOMEM)}});
      io::ScopedFaultInjector scope(&count);
      ASSERT_TRUE(RunCall(call, *s).ok());
      submits = count.matched(0);
    }
    for (uint64_t k = 0; k < submits; ++k) {
      SCOPED_TRACE(std::string("submit ") + std::to_string(k) + " of " + CallName(call));
      auto s = OpenStore();
      FaultSchedule sched({Rule{OpMask(FileOp::kSubmit), "", nullptr, k, 1, 0, Fault::Error(ENOMEM)}});
      Status st;
      {
        io::ScopedFaultInjector scope(&sched);
        st = RunCall(call, *s);
      }
      // Submissions follow from the reads asked, never from how fast they
      // complete, so this run reaches submission k as the counting run did.
      ASSERT_GT(sched.matched(0), k) << "fewer io_uring submissions than the counting run's " << submits;
      ASSERT_FALSE(st.ok());
      EXPECT_NE(st.message().find("io_uring_submit"), std::string::npos) << st.ToString();
      for (int i = 0; i < 3; ++i) {
        EXPECT_TRUE(RunCall(Call::kExact, *s).ok());
        EXPECT_TRUE(RunCall(Call::kTopKCached, *s).ok());
      }
      ++refused;
    }
  }
  std::printf("io_uring submissions refused: %llu, each failed its call; the next calls answered right\n",
              static_cast<unsigned long long>(refused));
}

INSTANTIATE_TEST_SUITE_P(Readers, ReadFaults,
                         ::testing::Combine(::testing::Values(true, false),
                                            ::testing::Values(Codec::kF16ShuffleZstd, Codec::kInt8)),
                         [](const auto& info) {
                           return std::string(std::get<0>(info.param) ? "io_uring_" : "pread_") +
                                  CodecName(std::get<1>(info.param));
                         });

// ------------------------------------------------------------- random mode

uint64_t EnvOr(const char* name, uint64_t fallback) {
  const char* v = std::getenv(name);
  return v != nullptr && *v != '\0' ? std::strtoull(v, nullptr, 10) : fallback;
}

// Faults at random points of a random mix of appends, deletions, commits,
// compactions, queries, verifies and reopens, each outcome checked against
// the model: an OK call saw no fault it should have reported and gave the
// right answer; a failed call saw one; after a failed commit or compaction,
// writes are refused until a reopen; every reopen holds exactly the live
// committed documents.
TEST(FaultInjection, RandomFaultsAgainstAModel) {
  const uint64_t seed = EnvOr("MSA_FAULT_SEED", 20261127);
  const uint64_t steps = EnvOr("MSA_FAULT_RANDOM_STEPS", 800);
  SCOPED_TRACE("MSA_FAULT_SEED=" + std::to_string(seed) + " MSA_FAULT_RANDOM_STEPS=" + std::to_string(steps));
  const bool uring = io::MakeUringReader(8).ok();
  const Geometry g = ReadGeometry();
  SweepDir dir;
  const std::string path = dir.Sub("store");
  std::mt19937_64 rng(seed);
  auto chance = [&](double p) { return std::uniform_real_distribution<double>(0, 1)(rng) < p; };

  auto rule = [](uint32_t ops, double p, Fault f, const char* path_contains = "") {
    return Rule{ops, path_contains, nullptr, 0, 0, p, f};
  };
  const uint32_t kRead = OpMask(FileOp::kRead), kWrite = OpMask(FileOp::kWrite);
  // Each step draws how hard the disk fails: a whole-layer read of a few
  // hundred blocks must sometimes get through, a top-k read of ten must
  // sometimes fail.
  auto rules = [&](double scale) {
    return std::vector<Rule>{
        rule(kWrite, 0.01 * scale, Fault::Error(EIO)), rule(kWrite, 0.01 * scale, Fault::Error(ENOSPC)),
        rule(kWrite, 0.03 * scale, Fault::Short(100)), rule(kWrite, 0.01 * scale, Fault::Error(EINTR)),
        rule(OpMask(FileOp::kSync), 0.05 * scale, Fault::Error(EIO)),
        rule(OpMask(FileOp::kSync), 0.02 * scale, Fault::Error(ENOSPC)),
        rule(OpMask(FileOp::kOpen), 0.02 * scale, Fault::Error(EIO)),
        rule(OpMask(FileOp::kTruncate), 0.1 * scale, Fault::Error(EIO)),
        rule(OpMask(FileOp::kFallocate), 0.2 * scale, Fault::Error(ENOSPC)),
        rule(OpMask(FileOp::kRename), 0.1 * scale, Fault::Error(EIO)),
        rule(kRead, 0.01 * scale, Fault::Error(EIO), "/segments/"),
        rule(kRead, 0.005 * scale, Fault::Eof(), "/segments/"),
        rule(kRead, 0.005 * scale, Fault::ShortThenEof(4096), "/segments/"),
        rule(kRead, 0.005 * scale, Fault::Corrupt(), "/segments/"),
        rule(kRead, 0.03 * scale, Fault::Short(4096), "/segments/"),
        rule(kRead, 0.01 * scale, Fault::Error(EAGAIN), "/segments/"),
        rule(OpMask(FileOp::kSubmit), 0.01 * scale, Fault::Error(ENOMEM))};
  };
  FaultSchedule sched(rules(1), seed);
  auto draw_intensity = [&] {
    const int r = std::uniform_int_distribution<int>(0, 9)(rng);
    sched.Reset(rules(r < 3 ? 0.0 : r < 6 ? 0.1 : r < 9 ? 1.0 : 4.0));
  };
  io::ScopedFaultInjector scope(&sched);

  StoreOptions opts;
  opts.segment_bytes = 96 << 10;  // roll-overs every dozen records
  std::vector<Doc> committed, staged;
  std::set<std::string> deleting;  // names of committed documents whose deletion is staged
  uint64_t dead_blocks = 0;        // per stream: of committed deletions, until a compaction
  bool refusing = false;  // a commit or compaction failed: writes refused until reopen
  std::unique_ptr<Store> store;
  uint64_t next_doc = 0;
  std::map<std::string, uint64_t> ok_calls, failed_calls;
  uint64_t reopen_checks = 0;
  const std::vector<float> q = msa::testing::RandomVector(static_cast<size_t>(kRows) * kQHeads * g.head_dim, 5);

  // Opens the store (any reader), faults on; a failed open must have had a
  // fault, and then opens with faults off. Checks it against the model.
  auto reopen = [&] {
    store.reset();
    staged.clear();
    deleting.clear();
    refusing = false;
    opts.allow_io_uring = uring && chance(0.5);
    const uint64_t before = sched.injected();
    auto s = Store::Open(path, opts);
    if (!s.ok() && s.status().code() == Status::Code::kNotFound && committed.empty()) {
      s = Store::Create(path, g, opts);
    }
    if (!s.ok()) {
      ++failed_calls["open"];
      EXPECT_GT(sched.injected(), before) << "open failed with no fault: " << s.status().ToString();
      sched.set_enabled(false);
      s = Store::Open(path, opts);
      if (!s.ok() && s.status().code() == Status::Code::kNotFound && committed.empty()) {
        s = Store::Create(path, g, opts);
      }
      sched.set_enabled(true);
    } else {
      ++ok_calls["open"];
    }
    ASSERT_TRUE(s.ok()) << "recovery open: " << s.status().ToString();
    store = std::move(s).value();
    sched.set_enabled(false);
    ExpectHolds(*store, committed, "after reopen", static_cast<int64_t>(dead_blocks));
    sched.set_enabled(true);
    ++reopen_checks;
  };
  // The faults injected since `before`: any the call must have reported?
  auto hard_since = [&](uint64_t before) {
    const auto log = sched.injections();
    for (size_t i = before; i < log.size(); ++i) {
      if (log[i].fault.hard() && log[i].op != FileOp::kFallocate) return true;
    }
    return false;
  };
  // The right answer of an attend: the same call with faults off and no cache.
  auto reference = [&](AttendOptions o, std::vector<float>* out, std::vector<float>* lse) {
    sched.set_enabled(false);
    o.use_cache = false;
    out->assign(static_cast<size_t>(kRows) * kQHeads * g.head_dim, 0);
    lse->assign(static_cast<size_t>(kRows) * kQHeads, 0);
    Status st = store->Attend(0, q.data(), kRows, kQHeads, o, out->data(), lse->data());
    sched.set_enabled(true);
    return st;
  };

  reopen();
  if (HasFatalFailure()) return;
  for (uint64_t step = 0; step < steps; ++step) {
    SCOPED_TRACE("step " + std::to_string(step));
    draw_intensity();
    const uint64_t before = sched.injected();
    const int op = std::uniform_int_distribution<int>(0, 99)(rng);
    std::string call;
    Status st;
    if (op < 30) {
      call = "append";
      const uint64_t tokens = 1 + std::uniform_int_distribution<uint64_t>(0, 200)(rng);
      const uint64_t n = next_doc++;
      Doc d = MakeDoc(g, "doc" + std::to_string(n), tokens, 1000 + n);
      st = Append(*store, d);
      if (st.ok()) {
        EXPECT_FALSE(refusing) << "append accepted after a failed commit";
        staged.push_back(std::move(d));
      } else if (refusing) {
        EXPECT_NE(st.message().find("reopen"), std::string::npos) << st.ToString();
      }
    } else if (op < 43) {
      call = "commit";
      st = store->Commit();
      if (st.ok()) {
        EXPECT_TRUE(!refusing || (staged.empty() && deleting.empty())) << "commit accepted after a failed commit";
        for (const Doc& d : committed) {
          if (deleting.count(d.name)) dead_blocks += (d.tokens + g.block_tokens - 1) / g.block_tokens;
        }
        std::erase_if(committed, [&](const Doc& d) { return deleting.count(d.name) > 0; });
        committed.insert(committed.end(), staged.begin(), staged.end());
        staged.clear();
        deleting.clear();
      } else if (!refusing) {
        refusing = true;
        staged.clear();  // gone: a reopen cuts them off
        deleting.clear();
      }
    } else if (op < 48) {
      // Delete a committed document (its deletion staged until a commit).
      std::vector<const Doc*> live;
      for (const Doc& d : committed) {
        if (!deleting.count(d.name)) live.push_back(&d);
      }
      if (live.empty() || refusing) continue;
      call = "delete";
      const Doc& victim = *live[std::uniform_int_distribution<size_t>(0, live.size() - 1)(rng)];
      sched.set_enabled(false);  // the id comes from the catalog (RocksDB: no faults there anyway)
      auto listed = store->ListDocuments();
      sched.set_enabled(true);
      ASSERT_TRUE(listed.ok()) << listed.status().ToString();
      uint64_t id = UINT64_MAX;
      for (const DocumentRecord& r : *listed) {
        if (r.name == victim.name) id = r.id;
      }
      ASSERT_NE(id, UINT64_MAX) << victim.name << " is committed but not listed";
      st = store->DeleteDocument(id);
      if (st.ok()) deleting.insert(victim.name);
    } else if (op < 52) {
      // Compaction copies live records out of segments with deleted ones:
      // reads, writes and syncs, then one catalog commit. Only with nothing
      // staged (else it refuses, as documented).
      if (!staged.empty() || !deleting.empty()) continue;
      call = "compact";
      CompactStats cs;
      st = store->Compact(&cs);
      if (st.ok()) {
        dead_blocks = 0;
      } else if (!refusing) {
        refusing = true;  // as after a failed commit; nothing committed changed
      }
    } else if (op < 80) {
      AttendOptions o = op < 72 ? TopKOptions(2, true) : ExactOptions();
      call = o.exact ? "attend exact" : "attend top-k";
      std::vector<float> out(static_cast<size_t>(kRows) * kQHeads * g.head_dim, std::nanf(""));
      std::vector<float> lse(static_cast<size_t>(kRows) * kQHeads, std::nanf(""));
      st = store->Attend(0, q.data(), kRows, kQHeads, o, out.data(), lse.data());
      if (st.ok()) {
        std::vector<float> want_out, want_lse;
        ASSERT_TRUE(reference(o, &want_out, &want_lse).ok());
        EXPECT_TRUE(out == want_out && lse == want_lse) << call << " returned OK with a wrong answer";
      }
    } else if (op < 88) {
      call = "read stream";
      const uint32_t kv = std::uniform_int_distribution<uint32_t>(0, g.kv_heads - 1)(rng);
      std::vector<float> k, v;
      st = store->ReadStream(0, kv, &k, &v);
      if (st.ok()) {
        EXPECT_TRUE(k == StreamOf(g, committed, kv, true) && v == StreamOf(g, committed, kv, false))
            << "ReadStream returned OK with wrong data";
      }
    } else if (op < 93) {
      call = "verify";
      VerifyReport r;
      st = store->Verify(&r);
      EXPECT_TRUE(st.ok()) << st.ToString();
      // A problem only where a fault made a block unreadable or wrong.
      if (!r.problems.empty()) {
        EXPECT_TRUE(hard_since(before)) << r.problems.front();
      }
      ++(r.problems.empty() ? ok_calls : failed_calls)[call];
      continue;
    } else {
      call = "reopen";
      reopen();
      if (HasFatalFailure()) return;
      continue;
    }
    // Outcome against the faults the call saw: an OK call saw none it had
    // to report; a failed one (a refused write aside) saw one.
    if (st.ok()) {
      ++ok_calls[call];
      EXPECT_FALSE(hard_since(before)) << call << " returned OK although " << sched.injections().back().ToString();
    } else {
      ++failed_calls[call];
      EXPECT_TRUE(st.code() == Status::Code::kIOError || st.code() == Status::Code::kCorruption) << st.ToString();
      const bool write = call == "append" || call == "commit" || call == "delete" || call == "compact";
      if (!(refusing && write && sched.injected() == before)) {
        EXPECT_TRUE(hard_since(before)) << call << " failed with no fault injected: " << st.ToString();
      }
    }
    if (HasFailure()) return;
  }
  reopen();
  if (HasFatalFailure()) return;

  std::map<std::string, uint64_t> by_fault;
  for (const auto& inj : sched.injections()) ++by_fault[std::string(io::FileOpName(inj.op)) + " " + inj.fault.ToString()];
  std::string faults, calls;
  for (const auto& [k, n] : by_fault) faults += " " + k + ":" + std::to_string(n);
  std::set<std::string> names;
  for (const auto& [k, n] : ok_calls) names.insert(k);
  for (const auto& [k, n] : failed_calls) names.insert(k);
  for (const auto& k : names) {
    calls += " " + k + " " + std::to_string(ok_calls[k]) + " ok/" + std::to_string(failed_calls[k]) + " failed;";
  }
  std::printf("random faults: seed %llu, %llu steps, %llu faults injected (%s ), calls:%s %llu reopens "
              "checked bit-exact, %zu live documents at the end; every outcome matched the model\n",
              static_cast<unsigned long long>(seed), static_cast<unsigned long long>(steps),
              static_cast<unsigned long long>(sched.injected()), faults.c_str(), calls.c_str(),
              static_cast<unsigned long long>(reopen_checks), committed.size());
  uint64_t ok_total = 0, failed_total = 0;
  for (const auto& [k, n] : ok_calls) ok_total += n;
  for (const auto& [k, n] : failed_calls) failed_total += n;
  // For tools/fault_soak.sh.
  std::printf("random totals: faults=%llu ok_calls=%llu failed_calls=%llu reopens=%llu documents=%zu\n",
              static_cast<unsigned long long>(sched.injected()), static_cast<unsigned long long>(ok_total),
              static_cast<unsigned long long>(failed_total), static_cast<unsigned long long>(reopen_checks),
              committed.size());
}

}  // namespace
}  // namespace msa
