// A bounded host cache of decoded blocks, shared by all queries of a Store.
//
// Keyed by (stream, block). A block of a lossless codec is kept decoded
// (keys and values widened to float32, ready for the CPU attention: what a
// query would otherwise read, checksum and decompress again); a block of a
// quantised codec (int8, int4) is kept as its verified record, 4-8x
// smaller, since it decodes at copy speed (BENCHMARKS.md, codecs). Capacity
// is in bytes of what is kept; eviction is least-recently-used within each of 16 shards by default (a key's
// shard is a hash of it), so concurrent queries rarely share a lock.
// Blocks are immutable once committed, so a cached block never goes stale;
// entries are handed out as shared pointers, so eviction never pulls data
// from under a query that is using it.
#pragma once

#include <atomic>
#include <cstdint>
#include <list>
#include <memory>
#include <mutex>
#include <span>
#include <unordered_map>
#include <vector>

namespace msa {

struct CachedBlock {
  std::vector<float> keys, values;  // [tokens, head_dim]; empty when a record is kept or borrowed
  std::vector<uint8_t> record;      // the block record (header + payload), checksum verified
  uint32_t tokens = 0;
  // Or, for a block read for one query and not cached, the record where the
  // read left it (Store::FetchBlocks: a staging buffer, kept alive by
  // `borrowed_from`): no copy, and no fresh memory for one (on this VM a
  // fresh page's first touch could cost 5 ms a query; BENCHMARKS.md, 1e8).
  // Never in the cache.
  std::span<const uint8_t> borrowed;
  std::shared_ptr<const void> borrowed_from;
  // The verified record, kept or borrowed; empty when decoded floats are kept.
  std::span<const uint8_t> Record() const { return borrowed.empty() ? std::span<const uint8_t>(record) : borrowed; }
  size_t bytes() const { return (keys.size() + values.size()) * sizeof(float) + record.size(); }
};

struct BlockCacheStats {
  uint64_t capacity_bytes = 0, used_bytes = 0, entries = 0;
  uint64_t hits = 0, misses = 0, inserts = 0, evictions = 0;
  uint64_t hit_bytes = 0;  // bytes of the entries served by hits (as kept: decoded floats or records)
};

class BlockCache {
 public:
  // capacity_bytes == 0 disables the cache (every Lookup misses).
  // shards: lock stripes (tests use 1 to see the LRU order).
  explicit BlockCache(uint64_t capacity_bytes, int shards = 16);
  BlockCache(const BlockCache&) = delete;
  BlockCache& operator=(const BlockCache&) = delete;

  std::shared_ptr<const CachedBlock> Lookup(uint32_t stream, uint64_t block);
  // Inserts (or replaces) and evicts least-recently-used entries of the
  // shard until it fits; a block larger than a shard's share is not kept.
  void Insert(uint32_t stream, uint64_t block, std::shared_ptr<const CachedBlock> value);
  BlockCacheStats Stats() const;
  // Drops every entry (not counted as evictions); counters stay.
  void Clear();
  uint64_t capacity() const { return capacity_; }

 private:
  struct Key {
    uint32_t stream;
    uint64_t block;
    bool operator==(const Key& o) const { return stream == o.stream && block == o.block; }
  };
  struct KeyHash {
    size_t operator()(const Key& k) const {
      uint64_t x = (k.block * 0x9E3779B97F4A7C15ull) ^ (uint64_t{k.stream} * 0xC2B2AE3D27D4EB4Full);
      return static_cast<size_t>(x ^ (x >> 29));
    }
  };
  struct Entry {
    Key key;
    std::shared_ptr<const CachedBlock> value;
  };
  struct Shard {
    std::mutex mu;
    std::list<Entry> lru;  // front: most recently used
    std::unordered_map<Key, std::list<Entry>::iterator, KeyHash> map;
    uint64_t used = 0;
  };
  Shard& ShardOf(const Key& k) { return shards_[KeyHash()(k) % shards_.size()]; }

  const uint64_t capacity_;
  std::vector<Shard> shards_;
  std::atomic<uint64_t> hits_{0}, misses_{0}, inserts_{0}, evictions_{0}, hit_bytes_{0};
};

}  // namespace msa
