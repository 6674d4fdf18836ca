// The fetch path through a Store (issue 4): the cache and disk counters add
// up, decoding on worker threads gives the very same answers and errors,
// and registered files follow compaction (a removed segment's descriptor is
// dropped from the ring before it is closed, so a reused number reads the
// new file).
#include <gtest/gtest.h>

#include <fcntl.h>
#include <unistd.h>

#include <sys/wait.h>

#include <cstdlib>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "store/store.h"
#include "test_util.h"
#include "tools/npy_file.h"

namespace msa {
namespace {

Geometry SmallGeometry(uint32_t layers = 1) {
  Geometry g;
  g.layers = layers;
  g.kv_heads = 2;
  g.head_dim = 16;
  g.block_tokens = 8;
  return g;
}

// Appends and commits documents of `tokens` random tokens each.
void AddDocuments(Store& s, int count, uint64_t tokens, uint64_t seed) {
  const Geometry& g = s.geometry();
  for (int i = 0; i < count; ++i) {
    auto k = msa::testing::RandomVector(g.streams() * tokens * g.head_dim, seed + 2 * i);
    auto v = msa::testing::RandomVector(k.size(), seed + 2 * i + 1);
    auto id = s.AppendDocument("doc" + std::to_string(seed) + "_" + std::to_string(i),
                               DocumentKV{k.data(), v.data(), tokens});
    ASSERT_TRUE(id.ok()) << id.status().ToString();
  }
  ASSERT_TRUE(s.Commit().ok());
}

TEST(Fetch, CacheAndDiskCountersAddUp) {
  msa::testing::TempDir dir;
  auto created = Store::Create(dir.Sub("store"), SmallGeometry());
  ASSERT_TRUE(created.ok());
  Store& s = **created;
  AddDocuments(s, 1, 400, 1);
  const Geometry g = s.geometry();
  auto q = msa::testing::RandomVector(3 * 4 * g.head_dim, 3);
  AttendOptions opts;
  opts.top_k = 5;
  opts.gpu = GpuMode::kOff;  // the host cache's counters (on a GPU the pool would serve the warm call)
  std::vector<float> out(q.size());
  StoreStats before = s.Stats();
  EXPECT_EQ(before.cache.hits + before.cache.misses + before.disk_blocks_read, 0u);
  EXPECT_FALSE(before.reader_detail.empty());

  AttendStats cold;
  ASSERT_TRUE(s.Attend(0, q.data(), 3, 4, opts, out.data(), nullptr, &cold).ok());
  ASSERT_GT(cold.blocks_read, 0u);
  StoreStats st = s.Stats();
  EXPECT_EQ(st.cache.misses, cold.blocks_read);
  EXPECT_EQ(st.cache.hits, 0u);
  EXPECT_EQ(st.disk_blocks_read, cold.blocks_read);
  EXPECT_EQ(st.disk_bytes_read, cold.bytes_read);
  EXPECT_EQ(st.disk_bytes_read % 4096, 0u);
  EXPECT_EQ(st.cache.entries, cold.blocks_read);
  EXPECT_GT(st.cache.used_bytes, 0u);
  EXPECT_EQ(st.cache.hit_bytes, 0u);

  AttendStats warm;
  ASSERT_TRUE(s.Attend(0, q.data(), 3, 4, opts, out.data(), nullptr, &warm).ok());
  EXPECT_EQ(warm.cache_hits, cold.blocks_read);
  st = s.Stats();
  EXPECT_EQ(st.cache.hits, cold.blocks_read);
  EXPECT_EQ(st.disk_blocks_read, cold.blocks_read) << "a warm query reads nothing";
  EXPECT_EQ(st.cache.hit_bytes, st.cache.used_bytes) << "every entry served exactly once";

  // Dropped: nothing resident, counters kept, the next query reads again.
  s.DropCache();
  st = s.Stats();
  EXPECT_EQ(st.cache.used_bytes, 0u);
  EXPECT_EQ(st.cache.entries, 0u);
  EXPECT_EQ(st.cache.hits, cold.blocks_read);
  AttendStats again;
  ASSERT_TRUE(s.Attend(0, q.data(), 3, 4, opts, out.data(), nullptr, &again).ok());
  EXPECT_EQ(again.blocks_read, cold.blocks_read);
  EXPECT_EQ(s.Stats().disk_blocks_read, 2 * cold.blocks_read);

  // With io_uring, every read goes through the registered file table into
  // the registered buffer (a query's batch fits it).
  if (st.reader == "io_uring") {
    const io::ReaderCounters c = s.Stats().reader_counters;
    EXPECT_EQ(c.reads, 2 * cold.blocks_read);
    EXPECT_EQ(c.registered_file_reads, c.reads) << st.reader_detail;
    EXPECT_EQ(c.registered_buffer_reads, c.reads) << st.reader_detail;
  }
  // Stream reads bypass the cache but count as disk reads.
  std::vector<float> keys, values;
  ASSERT_TRUE(s.ReadStream(0, 1, &keys, &values).ok());
  EXPECT_EQ(s.Stats().disk_blocks_read, 2 * cold.blocks_read + (400 + 7) / 8);
}

TEST(Fetch, SmallCacheEvictsAndStaysWithinItsBound) {
  msa::testing::TempDir dir;
  StoreOptions o;
  o.cache_bytes = 16 * 8 * 16 * 4 * 2 * 4;  // 16 shards x one decoded block (8 tokens, d 16, K+V, f32) x 4
  auto created = Store::Create(dir.Sub("store"), SmallGeometry(), o);
  ASSERT_TRUE(created.ok());
  Store& s = **created;
  AddDocuments(s, 1, 2000, 5);
  const Geometry g = s.geometry();
  AttendOptions opts;
  opts.top_k = 40;
  std::vector<float> out(8 * 4 * g.head_dim);
  for (int i = 0; i < 8; ++i) {
    auto q = msa::testing::RandomVector(8 * 4 * g.head_dim, 100 + i);
    ASSERT_TRUE(s.Attend(0, q.data(), 8, 4, opts, out.data(), nullptr).ok());
  }
  const StoreStats st = s.Stats();
  EXPECT_GT(st.cache.evictions, 0u);
  EXPECT_LE(st.cache.used_bytes, st.cache.capacity_bytes);
  EXPECT_EQ(st.cache.capacity_bytes, o.cache_bytes);
}

// Decoding on worker threads as reads complete gives bit-identical answers,
// cold, warm and exact, with both readers, and the same errors.
class DecodeThreadsTest : public ::testing::TestWithParam<bool> {};

TEST_P(DecodeThreadsTest, SameAnswersAndErrorsAsDecodingInline) {
  msa::testing::TempDir dir;
  {
    auto created = Store::Create(dir.Sub("store"), SmallGeometry(2));
    ASSERT_TRUE(created.ok());
    AddDocuments(**created, 3, 300, 9);
  }
  StoreOptions inline_opts, threaded_opts;
  inline_opts.read_only = threaded_opts.read_only = true;
  inline_opts.decode_threads = 0;
  inline_opts.allow_io_uring = threaded_opts.allow_io_uring = GetParam();
  threaded_opts.decode_threads = 2;
  auto a = Store::Open(dir.Sub("store"), inline_opts);
  auto b = Store::Open(dir.Sub("store"), threaded_opts);
  ASSERT_TRUE(a.ok() && b.ok());
  const Geometry g = (*a)->geometry();
  auto q = msa::testing::RandomVector(5 * 4 * g.head_dim, 21);
  std::vector<float> out_a(q.size()), out_b(q.size()), lse_a(20), lse_b(20);
  for (bool exact : {false, true}) {
    AttendOptions opts;
    opts.top_k = 12;
    opts.exact = exact;
    for (int pass = 0; pass < 2; ++pass) {  // cold, then warm
      for (uint32_t layer = 0; layer < g.layers; ++layer) {
        AttendStats sa, sb;
        ASSERT_TRUE((*a)->Attend(layer, q.data(), 5, 4, opts, out_a.data(), lse_a.data(), &sa).ok());
        ASSERT_TRUE((*b)->Attend(layer, q.data(), 5, 4, opts, out_b.data(), lse_b.data(), &sb).ok());
        EXPECT_EQ(out_a, out_b) << "layer " << layer << " exact " << exact << " pass " << pass;
        EXPECT_EQ(lse_a, lse_b);
        EXPECT_EQ(sa.blocks_read, sb.blocks_read);
      }
    }
  }
  a->reset();
  b->reset();
  // A flipped byte in one record (layer 0, kv-head 0, block 0): the same
  // Corruption, naming the block and file, either way.
  {
    const std::string seg = dir.Sub("store/segments/000001.seg");
    const int fd = ::open(seg.c_str(), O_RDWR);
    ASSERT_GE(fd, 0);
    uint8_t byte;
    ASSERT_EQ(::pread(fd, &byte, 1, 100), 1);
    byte ^= 0x20;
    ASSERT_EQ(::pwrite(fd, &byte, 1, 100), 1);
    ::close(fd);
  }
  a = Store::Open(dir.Sub("store"), inline_opts);
  b = Store::Open(dir.Sub("store"), threaded_opts);
  ASSERT_TRUE(a.ok() && b.ok());
  AttendOptions exact;
  exact.exact = true;
  Status sa = (*a)->Attend(0, q.data(), 5, 4, exact, out_a.data(), nullptr);
  Status sb = (*b)->Attend(0, q.data(), 5, 4, exact, out_b.data(), nullptr);
  ASSERT_EQ(sa.code(), Status::Code::kCorruption) << sa.ToString();
  EXPECT_EQ(sa.ToString(), sb.ToString());
  EXPECT_NE(sb.message().find("layer 0 kv-head 0 block 0"), std::string::npos) << sb.ToString();
  EXPECT_NE(sb.message().find("000001.seg"), std::string::npos) << sb.ToString();
  // Nothing bad was cached: layer 1 answers, layer 0 still fails.
  EXPECT_TRUE((*b)->Attend(1, q.data(), 5, 4, exact, out_b.data(), nullptr).ok());
  EXPECT_EQ((*b)->Attend(0, q.data(), 5, 4, exact, out_b.data(), nullptr).code(), Status::Code::kCorruption);
}

INSTANTIATE_TEST_SUITE_P(Readers, DecodeThreadsTest, ::testing::Values(true, false),
                         [](const auto& info) { return info.param ? "io_uring" : "pread"; });

// Segments roll over, are read (registered with the ring), and compaction
// removes some of them; later segments' descriptors reuse the numbers.
// Every answer must still come from the right file.
TEST(Fetch, RegisteredSegmentsFollowCompaction) {
  msa::testing::TempDir dir;
  StoreOptions o;
  o.segment_bytes = 48 << 10;  // a document or two per segment
  o.cache_bytes = 0;           // every query reads its blocks
  auto created = Store::Create(dir.Sub("store"), SmallGeometry(), o);
  ASSERT_TRUE(created.ok());
  Store& s = **created;
  if (s.Stats().reader != "io_uring") GTEST_SKIP() << "reads use " << s.Stats().reader_detail;
  AddDocuments(s, 6, 120, 31);
  const Geometry g = s.geometry();
  auto q = msa::testing::RandomVector(2 * 4 * g.head_dim, 41);
  AttendOptions exact;
  exact.exact = true;
  std::vector<float> out(q.size()), want(q.size());
  ASSERT_TRUE(s.Attend(0, q.data(), 2, 4, exact, out.data(), nullptr).ok());  // opens every segment
  for (int round = 0; round < 3; ++round) {
    auto docs = s.ListDocuments();
    ASSERT_TRUE(docs.ok());
    ASSERT_GE(docs->size(), 2u);
    ASSERT_TRUE(s.DeleteDocument((*docs)[0].id).ok());
    ASSERT_TRUE(s.DeleteDocument((*docs)[1].id).ok());
    ASSERT_TRUE(s.Commit().ok());
    CompactStats cs;
    ASSERT_TRUE(s.Compact(&cs).ok());
    EXPECT_GT(cs.segments_removed, 0u) << "round " << round;
    AddDocuments(s, 2, 120, 100 + 10 * round);  // new segments: new descriptors, reused numbers
    ASSERT_TRUE(s.Attend(0, q.data(), 2, 4, exact, out.data(), nullptr).ok());
    // The same answer from a fresh handle (fresh descriptors, read-only).
    StoreOptions ro;
    ro.read_only = true;
    ro.cache_bytes = 0;
    auto fresh = Store::Open(dir.Sub("store"), ro);
    ASSERT_TRUE(fresh.ok());
    ASSERT_TRUE((*fresh)->Attend(0, q.data(), 2, 4, exact, want.data(), nullptr).ok());
    EXPECT_EQ(out, want) << "round " << round;
    VerifyReport report;
    ASSERT_TRUE(s.Verify(&report).ok());
    EXPECT_TRUE(report.problems.empty()) << report.problems[0];
  }
}

// `msa stats` shows the reader (and why the fallback, when it is used) and
// the cache counters, in text and JSON.
TEST(Fetch, StatsCommandShowsReaderAndCacheCounters) {
  msa::testing::TempDir dir;
  {
    auto created = Store::Create(dir.Sub("store"), SmallGeometry());
    ASSERT_TRUE(created.ok());
    AddDocuments(**created, 1, 50, 3);
  }
  auto run = [&](const std::string& env, const std::string& args) {
    const std::string out = dir.Sub("out.txt");
    const int rc = std::system((env + " " + MSA_CLI_PATH + " stats " + dir.Sub("store") + " " + args + " > " +
                                out + " 2>/dev/null").c_str());
    EXPECT_TRUE(WIFEXITED(rc) && WEXITSTATUS(rc) == 0) << args;
    std::ifstream in(out);
    return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  };
  const std::string json = run("", "--json");
  for (const char* key : {"\"reader_detail\"", "\"cache\"", "\"capacity_bytes\": 268435456", "\"resident_bytes\"",
                          "\"hits\": 0", "\"misses\": 0", "\"hit_bytes\"", "\"evictions\"",
                          "\"disk_blocks_read\": 0", "\"disk_bytes_read\": 0"}) {
    EXPECT_NE(json.find(key), std::string::npos) << key << " missing from\n" << json;
  }
  const std::string forced = run("MSA_IO_URING=0", "--json");
  EXPECT_NE(forced.find("\"reader\": \"pread\""), std::string::npos) << forced;
  EXPECT_NE(forced.find("fallback: MSA_IO_URING=0"), std::string::npos) << forced;
  const std::string text = run("MSA_IO_URING=0", "");
  EXPECT_NE(text.find("reader        pread, 8 threads (fallback: MSA_IO_URING=0), "), std::string::npos) << text;
  EXPECT_NE(text.find(" decode threads\n"), std::string::npos) << text;
  EXPECT_NE(text.find("cache         0 of 268435456 bytes resident"), std::string::npos) << text;
}

// `msa query --repeats N --json` reports each call's time and the block
// cache's counters: the repeats find the first call's blocks in the cache.
TEST(Fetch, QueryCommandReportsTheCacheAcrossRepeats) {
  msa::testing::TempDir dir;
  const Geometry g = SmallGeometry();
  {
    auto created = Store::Create(dir.Sub("store"), g);
    ASSERT_TRUE(created.ok());
    AddDocuments(**created, 1, 80, 5);
  }
  const auto q = msa::testing::RandomVector(2 * 4 * g.head_dim, 9);
  ASSERT_TRUE(formats::WriteNpyFloat32(dir.Sub("q.npy"), {2, 4, g.head_dim}, q.data()).ok());
  auto query = [&](const std::string& args) {
    const std::string out = dir.Sub("out.json");
    const std::string cmd = std::string(MSA_CLI_PATH) + " query " + dir.Sub("store") + " --layer 0 --queries " +
                            dir.Sub("q.npy") + " --out " + dir.Sub("o.npy") + " --top-k 2 --gpu off --json " +
                            args + " > " + out + " 2>/dev/null";
    const int rc = std::system(cmd.c_str());
    EXPECT_TRUE(WIFEXITED(rc) && WEXITSTATUS(rc) == 0) << cmd;
    std::ifstream in(out);
    return nlohmann::json::parse(in);
  };
  const nlohmann::json three = query("--repeats 3");
  EXPECT_EQ(three["repeats"], 3);
  EXPECT_EQ(three["total_ms_per_call"].size(), 3u);
  const nlohmann::json& cache = three["cache"];
  EXPECT_EQ(cache["capacity_bytes"], uint64_t{256} << 20);
  EXPECT_GT(cache["misses"].get<uint64_t>(), 0u);
  EXPECT_EQ(cache["hits"].get<uint64_t>(), 2 * cache["misses"].get<uint64_t>());  // calls 2 and 3 hit all
  EXPECT_EQ(cache["disk_blocks_read"], cache["misses"]);
  EXPECT_EQ(three["cache_hits"], cache["misses"]);  // the last call's
  EXPECT_TRUE(three["reader"] == "io_uring" || three["reader"] == "pread");
  // Without a cache every call reads from disk.
  const nlohmann::json none = query("--repeats 2 --cache-mb 0");
  EXPECT_EQ(none["cache"]["capacity_bytes"], 0);
  EXPECT_EQ(none["cache"]["hits"], 0);
  EXPECT_EQ(none["cache"]["disk_blocks_read"].get<uint64_t>(), 2 * none["blocks_read"].get<uint64_t>());
}

}  // namespace
}  // namespace msa
