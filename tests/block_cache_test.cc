// The host block cache: bounded, LRU, shared; and a Store query served from
// it gives the same answer as one read from disk.
#include <gtest/gtest.h>

#include "store/block_cache.h"
#include "store/store.h"
#include "test_util.h"

namespace msa {
namespace {

std::shared_ptr<const CachedBlock> Block(uint32_t tokens, uint32_t d, float fill) {
  auto b = std::make_shared<CachedBlock>();
  b->tokens = tokens;
  b->keys.assign(static_cast<size_t>(tokens) * d, fill);
  b->values.assign(static_cast<size_t>(tokens) * d, -fill);
  return b;
}

TEST(BlockCache, StaysWithinCapacityAndEvictsLeastRecentlyUsed) {
  // 16 shards of 1 KiB: a 512-byte block fits twice per shard.
  BlockCache cache(16 * 1024);
  for (uint64_t b = 0; b < 200; ++b) cache.Insert(0, b, Block(8, 8, float(b)));  // 8*8*4*2 = 512 B
  BlockCacheStats s = cache.Stats();
  EXPECT_LE(s.used_bytes, s.capacity_bytes);
  EXPECT_GT(s.evictions, 0u);
  EXPECT_EQ(s.inserts, 200u);
  // The most recent block of each shard is still there, bit-exact.
  auto last = cache.Lookup(0, 199);
  ASSERT_NE(last, nullptr);
  EXPECT_EQ(last->keys[0], 199.0f);
  EXPECT_EQ(last->values[5], -199.0f);
  EXPECT_EQ(cache.Lookup(0, 0), nullptr);  // long evicted
  // One shard of two blocks: a touched entry survives the next insert, the
  // untouched one is evicted.
  BlockCache lru(1024, 1);
  lru.Insert(0, 1, Block(8, 8, 1));
  lru.Insert(0, 2, Block(8, 8, 2));
  EXPECT_NE(lru.Lookup(0, 1), nullptr);
  lru.Insert(0, 3, Block(8, 8, 3));
  EXPECT_NE(lru.Lookup(0, 1), nullptr);
  EXPECT_EQ(lru.Lookup(0, 2), nullptr);
  EXPECT_NE(lru.Lookup(0, 3), nullptr);
  // Hits and misses are counted.
  BlockCache two(16 * 1024);
  two.Insert(1, 1, Block(8, 8, 1));
  EXPECT_NE(two.Lookup(1, 1), nullptr);
  EXPECT_EQ(two.Lookup(1, 2), nullptr);
  s = two.Stats();
  EXPECT_EQ(s.hits, 1u);
  EXPECT_EQ(s.misses, 1u);
}

TEST(BlockCache, TooLargeBlocksAndZeroCapacityAreNotKept) {
  BlockCache none(0);
  none.Insert(0, 1, Block(8, 8, 1));
  EXPECT_EQ(none.Lookup(0, 1), nullptr);
  BlockCache small(16 * 256);  // 256 B per shard
  small.Insert(0, 1, Block(8, 8, 1));  // 512 B
  EXPECT_EQ(small.Lookup(0, 1), nullptr);
  EXPECT_EQ(small.Stats().used_bytes, 0u);
}

// A store of `layers` layers (2 KV heads, head_dim 16, 8-token blocks)
// holding one committed document of random K/V.
std::unique_ptr<Store> StoreWithOneDocument(const std::string& path, uint32_t layers,
                                            uint64_t tokens, uint64_t seed) {
  Geometry g;
  g.layers = layers;
  g.kv_heads = 2;
  g.head_dim = 16;
  g.block_tokens = 8;
  auto k = msa::testing::RandomVector(g.streams() * tokens * g.head_dim, seed);
  auto v = msa::testing::RandomVector(g.streams() * tokens * g.head_dim, seed + 1);
  auto s = Store::Create(path, g);
  if (!s.ok() || !(*s)->AppendDocument("d", DocumentKV{k.data(), v.data(), tokens}).ok() ||
      !(*s)->Commit().ok()) {
    return nullptr;
  }
  return std::move(s).value();
}

TEST(BlockCache, StoreQueryFromCacheEqualsQueryFromDisk) {
  msa::testing::TempDir dir;
  auto s = StoreWithOneDocument(dir.Sub("store"), 1, 203, 1);
  ASSERT_NE(s, nullptr);
  const Geometry g = s->geometry();
  auto q = msa::testing::RandomVector(3 * 4 * g.head_dim, 3);
  AttendOptions opts;
  opts.top_k = 5;
  opts.gpu = GpuMode::kOff;  // the host cache's hits: the GPU pool would serve the warm call
  std::vector<float> cold(q.size()), warm(q.size()), nocache(q.size());
  std::vector<float> lse_cold(12), lse_warm(12);
  AttendStats st;
  ASSERT_TRUE(s->Attend(0, q.data(), 3, 4, opts, cold.data(), lse_cold.data(), &st).ok());
  EXPECT_GT(st.blocks_read, 0u);
  EXPECT_EQ(st.cache_hits, 0u);
  const uint64_t read_cold = st.blocks_read;
  ASSERT_TRUE(s->Attend(0, q.data(), 3, 4, opts, warm.data(), lse_warm.data(), &st).ok());
  EXPECT_EQ(st.blocks_read, 0u);
  EXPECT_EQ(st.cache_hits, read_cold);
  EXPECT_EQ(cold, warm);
  EXPECT_EQ(lse_cold, lse_warm);
  opts.use_cache = false;
  ASSERT_TRUE(s->Attend(0, q.data(), 3, 4, opts, nocache.data(), nullptr, &st).ok());
  EXPECT_EQ(st.blocks_read, read_cold);
  EXPECT_EQ(cold, nocache);
  const StoreStats stats = s->Stats();
  EXPECT_EQ(stats.cache.hits, read_cold);
  EXPECT_EQ(stats.cache.entries, read_cold);
}

TEST(BlockCache, QuantisedBlocksAreCachedAsRecordsAndDecodeTheSame) {
  for (Codec codec : {Codec::kInt8, Codec::kInt4}) {
    msa::testing::TempDir dir;
    Geometry g;
    g.layers = 1;
    g.kv_heads = 2;
    g.head_dim = 32;
    g.block_tokens = 16;
    g.codec = codec;
    const uint64_t tokens = 300;
    auto k = msa::testing::RandomVector(g.streams() * tokens * g.head_dim, 5);
    auto v = msa::testing::RandomVector(k.size(), 6);
    auto s = Store::Create(dir.Sub("store"), g);
    ASSERT_TRUE(s.ok());
    ASSERT_TRUE((*s)->AppendDocument("d", DocumentKV{k.data(), v.data(), tokens}).ok());
    ASSERT_TRUE((*s)->Commit().ok());
    auto q = msa::testing::RandomVector(2 * 4 * g.head_dim, 7);
    AttendOptions opts;
    opts.top_k = 6;
    opts.gpu = GpuMode::kOff;  // the host cache's hits: the GPU pool would serve the warm call
    std::vector<float> cold(q.size()), warm(q.size());
    AttendStats st;
    ASSERT_TRUE((*s)->Attend(0, q.data(), 2, 4, opts, cold.data(), nullptr, &st).ok());
    const uint64_t read = st.blocks_read;
    ASSERT_GT(read, 0u);
    ASSERT_TRUE((*s)->Attend(0, q.data(), 2, 4, opts, warm.data(), nullptr, &st).ok());
    EXPECT_EQ(st.cache_hits, read);
    EXPECT_EQ(cold, warm) << CodecName(codec) << ": a cached record decodes as the disk's did";
    // Records, not floats: a block of 16 x 32 floats (K and V) is 4096 bytes.
    const StoreStats stats = (*s)->Stats();
    EXPECT_LT(stats.cache.used_bytes, read * 4096 / 3) << CodecName(codec);
  }
}

TEST(BlockCache, PrefetchedLayerIsAttendedFromTheCache) {
  msa::testing::TempDir dir;
  auto s = StoreWithOneDocument(dir.Sub("store"), 3, 160, 11);
  ASSERT_NE(s, nullptr);
  const Geometry g = s->geometry();
  auto q = msa::testing::RandomVector(2 * 4 * g.head_dim, 13);
  AttendOptions opts;
  opts.top_k = 4;
  opts.gpu = GpuMode::kOff;  // the host cache's prefetch (a GPU call prefetches into the GPU pool)
  std::vector<float> out(q.size()), ref(q.size());
  // The reference answer, read from disk without the cache.
  AttendOptions nocache = opts;
  nocache.use_cache = false;
  ASSERT_TRUE(s->Attend(2, q.data(), 2, 4, nocache, ref.data(), nullptr).ok());
  // Layer by layer: prefetch the next layer, attend this one.
  std::shared_future<Status> next = s->Prefetch(0, q.data(), 2, 4, opts);
  for (uint32_t layer = 0; layer < g.layers; ++layer) {
    ASSERT_TRUE(next.get().ok()) << next.get().ToString();
    if (layer + 1 < g.layers) next = s->Prefetch(layer + 1, q.data(), 2, 4, opts);
    AttendStats st;
    ASSERT_TRUE(s->Attend(layer, q.data(), 2, 4, opts, out.data(), nullptr, &st).ok());
    EXPECT_EQ(st.blocks_read, 0u) << "layer " << layer << " was not prefetched";
    EXPECT_GT(st.cache_hits, 0u);
  }
  EXPECT_EQ(out, ref);
  // Bad arguments come back through the future, not as a crash.
  EXPECT_EQ(s->Prefetch(9, q.data(), 2, 4, opts).get().code(), Status::Code::kInvalidArgument);
  EXPECT_EQ(s->Prefetch(0, nullptr, 2, 4, opts).get().code(), Status::Code::kInvalidArgument);
}

// Several layers' blocks in one batch of reads: every layer is then
// attended from the cache, with the same answer as from disk.
TEST(BlockCache, PrefetchLayersReadsEveryLayerInOneBatch) {
  msa::testing::TempDir dir;
  auto s = StoreWithOneDocument(dir.Sub("store"), 3, 160, 21);
  ASSERT_NE(s, nullptr);
  const Geometry g = s->geometry();
  auto q = msa::testing::RandomVector(2 * 4 * g.head_dim, 23);
  AttendOptions opts;
  opts.top_k = 4;
  opts.gpu = GpuMode::kOff;
  const auto batches_before = s->Stats().reader_counters.batches;
  const auto disk_before = s->Stats().disk_blocks_read;
  std::vector<Store::LayerQueries> layers;
  for (uint32_t layer = 0; layer < g.layers; ++layer) layers.push_back({layer, q.data(), 2});
  ASSERT_TRUE(s->PrefetchLayers(layers, 4, opts).get().ok());
  const StoreStats after = s->Stats();
  EXPECT_GT(after.disk_blocks_read, disk_before);
  if (after.reader == "io_uring") {
    EXPECT_EQ(after.reader_counters.batches, batches_before + 1);
  }
  AttendOptions nocache = opts;
  nocache.use_cache = false;
  std::vector<float> out(q.size()), ref(q.size());
  for (uint32_t layer = 0; layer < g.layers; ++layer) {
    AttendStats st;
    ASSERT_TRUE(s->Attend(layer, q.data(), 2, 4, opts, out.data(), nullptr, &st).ok());
    EXPECT_EQ(st.blocks_read, 0u) << "layer " << layer << " was not prefetched";
    ASSERT_TRUE(s->Attend(layer, q.data(), 2, 4, nocache, ref.data(), nullptr).ok());
    EXPECT_EQ(out, ref) << "layer " << layer;
  }
  // A bad layer fails the whole prefetch, through its future.
  layers.push_back({7, q.data(), 2});
  const Status bad = s->PrefetchLayers(layers, 4, opts).get();
  EXPECT_EQ(bad.code(), Status::Code::kInvalidArgument);
  EXPECT_NE(bad.message().find("layer 7"), std::string::npos) << bad.ToString();
}

}  // namespace
}  // namespace msa
