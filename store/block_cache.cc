#include "store/block_cache.h"

#include <cassert>

namespace msa {

BlockCache::BlockCache(uint64_t capacity_bytes, int shards)
    : capacity_(capacity_bytes), shards_(static_cast<size_t>(shards < 1 ? 1 : shards)) {}

std::shared_ptr<const CachedBlock> BlockCache::Lookup(uint32_t stream, uint64_t block) {
  if (capacity_ == 0) {
    misses_.fetch_add(1, std::memory_order_relaxed);
    return nullptr;
  }
  const Key key{stream, block};
  Shard& shard = ShardOf(key);
  std::lock_guard<std::mutex> lock(shard.mu);
  auto it = shard.map.find(key);
  if (it == shard.map.end()) {
    misses_.fetch_add(1, std::memory_order_relaxed);
    return nullptr;
  }
  shard.lru.splice(shard.lru.begin(), shard.lru, it->second);
  hits_.fetch_add(1, std::memory_order_relaxed);
  hit_bytes_.fetch_add(it->second->value->bytes(), std::memory_order_relaxed);
  return it->second->value;
}

void BlockCache::Insert(uint32_t stream, uint64_t block, std::shared_ptr<const CachedBlock> value) {
  const uint64_t share = capacity_ / shards_.size();
  // A borrowed record lives only as long as one query's read (CachedBlock).
  assert(!value || value->borrowed.empty());
  if (!value || value->bytes() > share) return;
  const Key key{stream, block};
  Shard& shard = ShardOf(key);
  std::lock_guard<std::mutex> lock(shard.mu);
  auto it = shard.map.find(key);
  if (it != shard.map.end()) {
    shard.used -= it->second->value->bytes();
    shard.lru.erase(it->second);
    shard.map.erase(it);
  }
  while (shard.used + value->bytes() > share && !shard.lru.empty()) {
    Entry& victim = shard.lru.back();
    shard.used -= victim.value->bytes();
    shard.map.erase(victim.key);
    shard.lru.pop_back();
    evictions_.fetch_add(1, std::memory_order_relaxed);
  }
  shard.used += value->bytes();
  shard.lru.push_front(Entry{key, std::move(value)});
  shard.map[key] = shard.lru.begin();
  inserts_.fetch_add(1, std::memory_order_relaxed);
}

BlockCacheStats BlockCache::Stats() const {
  BlockCacheStats s;
  s.capacity_bytes = capacity_;
  for (const Shard& shard : shards_) {
    std::lock_guard<std::mutex> lock(const_cast<std::mutex&>(shard.mu));
    s.used_bytes += shard.used;
    s.entries += shard.map.size();
  }
  s.hits = hits_.load();
  s.misses = misses_.load();
  s.inserts = inserts_.load();
  s.evictions = evictions_.load();
  s.hit_bytes = hit_bytes_.load();
  return s;
}

void BlockCache::Clear() {
  for (Shard& shard : shards_) {
    std::lock_guard<std::mutex> lock(shard.mu);
    shard.map.clear();
    shard.lru.clear();
    shard.used = 0;
  }
}

}  // namespace msa
