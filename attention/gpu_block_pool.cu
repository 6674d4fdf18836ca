// GpuBlockPool (see gpu_block_pool.h for the design and the contract).
#include "attention/gpu_block_pool.h"

#include <cuda_runtime.h>
#include <sys/mman.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <condition_variable>
#include <cstring>
#include <list>
#include <mutex>
#include <string>
#include <unordered_map>
#include <unordered_set>

#include "attention/cuda_attention_kernel.cuh"

namespace msa::attention {

namespace {

using cuda::CudaStatus;

constexpr size_t kAlign = 256;
size_t AlignUp(size_t x) { return (x + kAlign - 1) / kAlign * kAlign; }

// A CUDA event (timing off), destroyed with its last owner. Destroying an
// event whose work is pending is allowed: CUDA releases it once complete.
struct Event {
  cudaEvent_t e = nullptr;
  ~Event() {
    if (e != nullptr) (void)cudaEventDestroy(e);
  }
};
using EventPtr = std::shared_ptr<Event>;

Result<EventPtr> RecordEvent(cudaStream_t stream, const char* what) {
  auto ev = std::make_shared<Event>();
  MSA_RETURN_IF_ERROR(CudaStatus(cudaEventCreateWithFlags(&ev->e, cudaEventDisableTiming),
                                 std::string("creating an event for ") + what));
  MSA_RETURN_IF_ERROR(CudaStatus(cudaEventRecord(ev->e, stream), std::string("recording ") + what));
  return ev;
}

// True when the event's work is still pending; an error of the query is
// returned as a status (a broken context).
Result<bool> Pending(const EventPtr& ev) {
  if (!ev) return false;
  const cudaError_t err = cudaEventQuery(ev->e);
  if (err == cudaSuccess) return false;
  if (err == cudaErrorNotReady) {
    (void)cudaGetLastError();  // NotReady is no error; don't leave it for a later check
    return true;
  }
  return CudaStatus(err, "querying a pool event");
}

// Moves staged block m (keys for blockIdx.y == 0, values for 1) into its
// page; meta[2m] is the page, meta[2m + 1] the token count. Only the valid
// rows are copied; 16 bytes per thread (rows are 16-byte multiples).
__global__ void ScatterBlocksKernel(const uint4* __restrict__ staged, const int32_t* __restrict__ meta,
                                    size_t block_vec, int row_vec, uint4* __restrict__ keys,
                                    uint4* __restrict__ values, int32_t* __restrict__ lens) {
  const size_t m = blockIdx.x;
  const int which = blockIdx.y;
  const int32_t page = meta[2 * m];
  const int32_t tokens = meta[2 * m + 1];
  const uint4* src = staged + (2 * m + which) * block_vec;
  uint4* dst = (which == 0 ? keys : values) + static_cast<size_t>(page) * block_vec;
  const size_t n = static_cast<size_t>(tokens) * row_vec;
  for (size_t i = threadIdx.x; i < n; i += blockDim.x) dst[i] = src[i];
  if (which == 0 && threadIdx.x == 0) lens[page] = tokens;
}

struct KeyHash {
  size_t operator()(const GpuPoolKey& k) const {
    uint64_t x = (k.block * 0x9E3779B97F4A7C15ull) ^ (uint64_t{k.stream} * 0xC2B2AE3D27D4EB4Full);
    return static_cast<size_t>(x ^ (x >> 29));
  }
};
struct KeyEq {
  bool operator()(const GpuPoolKey& a, const GpuPoolKey& b) const {
    return a.stream == b.stream && a.block == b.block;
  }
};

}  // namespace

struct GpuBlockPool::Batch {
  int slot = -1;
  bool lookup = true;
  std::vector<GpuPoolKey> keys;
  std::vector<int32_t> pages;       // per key
  std::vector<size_t> misses;       // indices into keys
  std::vector<EventPtr> waits;      // GPU-side waits before the upload / kernel
  EventPtr uploaded;                // recorded after the scatter (misses only)
  size_t io_bytes = 0;
  size_t blocks_offset = 0, meta_offset = 0, total_bytes = 0;
};

struct GpuBlockPool::Impl {
  // Constant after construction.
  GpuPoolOptions options;
  int device = 0;
  int pages = 0;
  size_t block_bytes = 0;  // one of K or V of one page
  uint16_t* keys = nullptr;
  uint16_t* values = nullptr;
  int32_t* lens = nullptr;

  struct Page {
    GpuPoolKey key;
    bool keyed = false;
    int pins = 0;
    std::list<int32_t>::iterator lru;  // valid while keyed
    EventPtr ready;                    // the upload that wrote it (keyed pages)
    EventPtr last_use;                 // the last call that read it
  };
  struct Slot {
    uint8_t* host = nullptr;  // mmap'd, cudaHostRegister'ed
    uint8_t* dev = nullptr;
    size_t capacity = 0;
    cudaStream_t stream = nullptr;
    EventPtr done;  // the last batch's work on it
    bool busy = false;
  };

  // Guarded by mu.
  mutable std::mutex mu;
  std::condition_variable slot_free;
  std::vector<Page> page;
  std::unordered_map<GpuPoolKey, int32_t, KeyHash, KeyEq> map;
  std::list<int32_t> lru;  // keyed pages, front: most recent
  std::vector<int32_t> free_pages;
  std::vector<Slot> slots;
  GpuPoolStats stats;
  // ReadToHost's bounce buffer (only its host side is used); guarded by read_mu.
  std::mutex read_mu;
  Slot bounce;

  ~Impl() {
    FreeSlot(&bounce);
    for (Slot& s : slots) {
      if (s.done) (void)cudaEventSynchronize(s.done->e);
      FreeSlot(&s);
      if (s.stream != nullptr) (void)cudaStreamDestroy(s.stream);
    }
    // Page reads were all on slots' work or on callers' streams whose
    // Finish recorded last_use: wait for those too.
    for (Page& p : page) {
      if (p.last_use) (void)cudaEventSynchronize(p.last_use->e);
      if (p.ready) (void)cudaEventSynchronize(p.ready->e);
    }
    if (keys != nullptr) (void)cudaFree(keys);
    if (values != nullptr) (void)cudaFree(values);
    if (lens != nullptr) (void)cudaFree(lens);
  }

  static void FreeSlot(Slot* s) {
    if (s->host != nullptr) {
      (void)cudaHostUnregister(s->host);
      ::munmap(s->host, s->capacity);
    }
    if (s->dev != nullptr) (void)cudaFree(s->dev);
    s->host = nullptr;
    s->dev = nullptr;
    s->capacity = 0;
  }

  // Gives slot s at least `bytes` (its previous work is done).
  static Status GrowSlot(Slot* s, size_t bytes) {
    if (s->capacity >= bytes) return Status::OK();
    const size_t cap = (std::max<size_t>(bytes, 2 * s->capacity) + 4095) & ~size_t{4095};
    FreeSlot(s);
    void* host = ::mmap(nullptr, cap, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (host == MAP_FAILED) return Status::FromErrno("mapping " + std::to_string(cap) + " bytes of staging", errno);
    Status st = CudaStatus(cudaHostRegister(host, cap, cudaHostRegisterDefault),
                           "pinning " + std::to_string(cap) + " bytes of staging (cudaHostRegister)");
    if (!st.ok()) {
      ::munmap(host, cap);
      return st;
    }
    s->host = static_cast<uint8_t*>(host);
    s->capacity = cap;
    const Status dev = CudaStatus(cudaMalloc(&s->dev, cap), "allocating " + std::to_string(cap) + " bytes of device staging");
    if (!dev.ok()) {
      s->dev = nullptr;
      FreeSlot(s);
    }
    return dev;
  }

  // Under mu: a page for a miss -- a free one, else the least recently used
  // unpinned keyed page (evicted). -1 when every page is pinned.
  int32_t TakePageLocked(std::vector<EventPtr>* waits) {
    int32_t p = -1;
    if (!free_pages.empty()) {
      p = free_pages.back();
      free_pages.pop_back();
    } else {
      for (auto it = lru.rbegin(); it != lru.rend(); ++it) {
        if (page[*it].pins == 0) {
          p = *it;
          break;
        }
      }
      if (p < 0) return -1;
      Page& victim = page[p];
      map.erase(victim.key);
      lru.erase(victim.lru);
      victim.keyed = false;
      victim.ready.reset();
      ++stats.evictions;
    }
    // The new contents must not land before the last reader of the old is done.
    if (page[p].last_use) waits->push_back(page[p].last_use);
    return p;
  }

  // Under mu: undoes a batch's pins; its misses' pages are published (ok &&
  // lookup) or freed.
  void ReleaseLocked(Batch& b, const EventPtr& done, bool ok) {
    std::vector<bool> is_miss(b.keys.size(), false);
    for (size_t m : b.misses) is_miss[m] = true;
    for (size_t i = 0; i < b.keys.size(); ++i) {
      const int32_t p = b.pages[i];
      if (p < 0) continue;
      Page& pg = page[p];
      --pg.pins;
      if (done) pg.last_use = done;
      if (!is_miss[i]) continue;
      if (ok && b.lookup && b.uploaded && map.find(b.keys[i]) == map.end()) {
        pg.key = b.keys[i];
        pg.keyed = true;
        pg.ready = b.uploaded;
        lru.push_front(p);
        pg.lru = lru.begin();
        map.emplace(b.keys[i], p);
      } else {
        free_pages.push_back(p);
      }
    }
    if (b.slot >= 0) {
      Slot& s = slots[b.slot];
      if (done) s.done = done;
      s.busy = false;
      b.slot = -1;
      slot_free.notify_one();
    }
  }
};

void GpuBlockPool::BatchDeleter::operator()(Batch* b) const { delete b; }

GpuBlockPool::GpuBlockPool(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
GpuBlockPool::~GpuBlockPool() = default;

Result<std::unique_ptr<GpuBlockPool>> GpuBlockPool::Create(const GpuPoolOptions& o) {
  if (o.block_tokens <= 0 || o.head_dim <= 0 || o.head_dim % 8 != 0) {
    return Status::InvalidArgument("GPU block pool: block_tokens " + std::to_string(o.block_tokens) +
                                   " and head_dim " + std::to_string(o.head_dim) +
                                   " must be positive, head_dim a multiple of 8");
  }
  if (o.slots <= 0) return Status::InvalidArgument("GPU block pool: slots must be positive");
  auto impl = std::make_unique<Impl>();
  impl->options = o;
  MSA_RETURN_IF_ERROR(CudaStatus(cudaGetDevice(&impl->device), "cudaGetDevice"));
  impl->block_bytes = static_cast<size_t>(o.block_tokens) * o.head_dim * sizeof(uint16_t);
  const uint64_t per_page = 2 * impl->block_bytes + sizeof(int32_t);
  const uint64_t pages = o.pool_bytes / per_page;
  if (pages == 0 || pages > INT32_MAX) {
    return Status::InvalidArgument("GPU block pool of " + std::to_string(o.pool_bytes) + " bytes holds " +
                                   std::to_string(pages) + " pages of " + std::to_string(per_page) + " bytes");
  }
  impl->pages = static_cast<int>(pages);
  MSA_RETURN_IF_ERROR(CudaStatus(cudaMalloc(&impl->keys, pages * impl->block_bytes), "allocating the pool's key pages"));
  MSA_RETURN_IF_ERROR(CudaStatus(cudaMalloc(&impl->values, pages * impl->block_bytes), "allocating the pool's value pages"));
  MSA_RETURN_IF_ERROR(CudaStatus(cudaMalloc(&impl->lens, pages * sizeof(int32_t)), "allocating the pool's page lengths"));
  MSA_RETURN_IF_ERROR(CudaStatus(cudaMemset(impl->lens, 0, pages * sizeof(int32_t)), "clearing the page lengths"));
  impl->page.resize(pages);
  impl->free_pages.reserve(pages);
  for (int64_t p = static_cast<int64_t>(pages) - 1; p >= 0; --p) impl->free_pages.push_back(static_cast<int32_t>(p));
  impl->slots.resize(o.slots);
  for (auto& s : impl->slots) {
    MSA_RETURN_IF_ERROR(CudaStatus(cudaStreamCreateWithFlags(&s.stream, cudaStreamNonBlocking),
                                   "creating a staging stream"));
    MSA_RETURN_IF_ERROR(Impl::GrowSlot(&s, o.staging_bytes));
  }
  impl->stats.pages = pages;
  impl->stats.device_bytes = pages * per_page;
  return std::unique_ptr<GpuBlockPool>(new GpuBlockPool(std::move(impl)));
}

int GpuBlockPool::pages() const { return impl_->pages; }
size_t GpuBlockPool::block_bytes() const { return impl_->block_bytes; }

BlockTable<uint16_t> GpuBlockPool::table() const {
  return {impl_->pages, impl_->keys, impl_->values, impl_->lens};
}

GpuPoolStats GpuBlockPool::Stats() const {
  std::lock_guard<std::mutex> lock(impl_->mu);
  GpuPoolStats s = impl_->stats;
  s.resident = impl_->map.size();
  s.pinned_bytes = 0;
  for (const auto& slot : impl_->slots) s.pinned_bytes += slot.capacity;
  return s;
}

Status GpuBlockPool::Begin(const std::vector<GpuPoolKey>& keys, bool lookup, size_t io_bytes,
                           BatchPtr* out, std::vector<int32_t>* pages,
                           std::vector<size_t>* misses) {
  Impl& im = *impl_;
  BatchPtr b(new Batch);
  b->lookup = lookup;
  b->keys.assign(keys.begin(), keys.end());
  b->pages.assign(keys.size(), -1);
  b->io_bytes = io_bytes;
  {
    std::unique_lock<std::mutex> lock(im.mu);
    if (keys.size() > static_cast<size_t>(im.pages)) {
      return Status::NotSupported("a call needs " + std::to_string(keys.size()) +
                                     " blocks at once; the GPU pool has " + std::to_string(im.pages) + " pages");
    }
    // A slot first: it bounds the calls in flight.
    im.slot_free.wait(lock, [&] {
      return std::any_of(im.slots.begin(), im.slots.end(), [](const Impl::Slot& s) { return !s.busy; });
    });
    for (size_t s = 0; s < im.slots.size(); ++s) {
      if (!im.slots[s].busy) {
        b->slot = static_cast<int>(s);
        im.slots[s].busy = true;
        break;
      }
    }
    // Hits: pinned, and moved to the front.
    for (size_t i = 0; i < keys.size(); ++i) {
      auto it = lookup ? im.map.find(keys[i]) : im.map.end();
      if (it == im.map.end()) {
        b->misses.push_back(i);
        continue;
      }
      const int32_t p = it->second;
      Impl::Page& pg = im.page[p];
      ++pg.pins;
      im.lru.splice(im.lru.begin(), im.lru, pg.lru);
      b->pages[i] = p;
      if (pg.ready) b->waits.push_back(pg.ready);
    }
    im.stats.hits += keys.size() - b->misses.size();
    im.stats.misses += b->misses.size();
    // Misses: free or evicted pages, pinned and private until Finish.
    for (size_t m : b->misses) {
      const int32_t p = im.TakePageLocked(&b->waits);
      if (p < 0) {
        im.ReleaseLocked(*b, nullptr, /*ok=*/false);
        return Status::NotSupported("the GPU pool has no unpinned page left for " +
                                       std::to_string(b->misses.size()) + " new blocks (" +
                                       std::to_string(im.pages) + " pages, the rest pinned by calls in flight)");
      }
      ++im.page[p].pins;
      b->pages[m] = p;
    }
  }
  // Work of an earlier batch on this slot must be done before its memory is
  // rewritten. Pending GPU waits are filtered here, outside the lock.
  Impl::Slot& slot = im.slots[b->slot];
  b->blocks_offset = AlignUp(io_bytes);
  b->meta_offset = b->blocks_offset + b->misses.size() * 2 * im.block_bytes;
  b->total_bytes = b->meta_offset + b->misses.size() * 2 * sizeof(int32_t);
  const Status st = [&]() -> Status {
    if (slot.done) {
      MSA_RETURN_IF_ERROR(CudaStatus(cudaEventSynchronize(slot.done->e), "waiting for a staging slot"));
    }
    MSA_RETURN_IF_ERROR(Impl::GrowSlot(&slot, b->total_bytes));
    std::vector<EventPtr> pending;
    std::unordered_set<const Event*> seen;
    for (auto& ev : b->waits) {
      if (!seen.insert(ev.get()).second) continue;
      MSA_ASSIGN_OR_RETURN(const bool p, Pending(ev));
      if (p) pending.push_back(ev);
    }
    b->waits = std::move(pending);
    return Status::OK();
  }();
  if (!st.ok()) {
    std::lock_guard<std::mutex> lock(im.mu);
    im.ReleaseLocked(*b, nullptr, /*ok=*/false);
    return st;
  }
  auto* meta = reinterpret_cast<int32_t*>(slot.host + b->meta_offset);
  for (size_t m = 0; m < b->misses.size(); ++m) {
    meta[2 * m] = b->pages[b->misses[m]];
    meta[2 * m + 1] = 0;
  }
  *pages = b->pages;
  *misses = b->misses;
  *out = std::move(b);
  return Status::OK();
}

void GpuBlockPool::Io(Batch& b, void** host, void** device) const {
  Impl::Slot& s = impl_->slots[b.slot];
  *host = s.host;
  *device = s.dev;
}

uint16_t* GpuBlockPool::StagedKeys(Batch& b, size_t m) const {
  return reinterpret_cast<uint16_t*>(impl_->slots[b.slot].host + b.blocks_offset + 2 * m * impl_->block_bytes);
}
uint16_t* GpuBlockPool::StagedValues(Batch& b, size_t m) const {
  return reinterpret_cast<uint16_t*>(impl_->slots[b.slot].host + b.blocks_offset + (2 * m + 1) * impl_->block_bytes);
}
void GpuBlockPool::SetStagedTokens(Batch& b, size_t m, int32_t tokens) const {
  reinterpret_cast<int32_t*>(impl_->slots[b.slot].host + b.meta_offset)[2 * m + 1] = tokens;
}
void* GpuBlockPool::SlotStream(Batch& b) const { return impl_->slots[b.slot].stream; }

Status GpuBlockPool::Upload(Batch& b, void* stream_ptr) {
  Impl& im = *impl_;
  auto stream = static_cast<cudaStream_t>(stream_ptr);
  Impl::Slot& s = im.slots[b.slot];
  for (const auto& ev : b.waits) {
    MSA_RETURN_IF_ERROR(CudaStatus(cudaStreamWaitEvent(stream, ev->e, 0), "ordering after a pool event"));
  }
  if (b.total_bytes > 0) {
    MSA_RETURN_IF_ERROR(CudaStatus(cudaMemcpyAsync(s.dev, s.host, b.total_bytes, cudaMemcpyHostToDevice, stream),
                                   "copying " + std::to_string(b.total_bytes) + " staged bytes to the GPU"));
  }
  if (b.misses.empty()) return Status::OK();
  const size_t block_vec = im.block_bytes / sizeof(uint4);
  const int row_vec = im.options.head_dim * static_cast<int>(sizeof(uint16_t)) / static_cast<int>(sizeof(uint4));
  ScatterBlocksKernel<<<dim3(static_cast<unsigned>(b.misses.size()), 2), 256, 0, stream>>>(
      reinterpret_cast<const uint4*>(s.dev + b.blocks_offset),
      reinterpret_cast<const int32_t*>(s.dev + b.meta_offset), block_vec, row_vec,
      reinterpret_cast<uint4*>(im.keys), reinterpret_cast<uint4*>(im.values), im.lens);
  MSA_RETURN_IF_ERROR(CudaStatus(cudaGetLastError(), "launching the page scatter kernel"));
  MSA_ASSIGN_OR_RETURN(b.uploaded, RecordEvent(stream, "a pool upload"));
  std::lock_guard<std::mutex> lock(im.mu);
  im.stats.uploads += b.misses.size();
  return Status::OK();
}

Status GpuBlockPool::Finish(BatchPtr b, void* stream_ptr, bool ok) {
  if (!b) return Status::OK();
  Impl& im = *impl_;
  auto stream = static_cast<cudaStream_t>(stream_ptr);
  auto done = RecordEvent(stream, "the end of a pool batch");
  if (!done.ok()) {
    // Without an event nothing can order later reuse after this work: wait
    // for it here (a failure of that too leaves a broken context, reported).
    (void)cudaStreamSynchronize(stream);
  }
  std::lock_guard<std::mutex> lock(im.mu);
  im.ReleaseLocked(*b, done.ok() ? *done : nullptr, ok && done.ok());
  return done.status();
}

Status GpuBlockPool::ReadToHost(const void* device, size_t bytes, void* host, void* stream_ptr) {
  if (bytes == 0) return Status::OK();
  Impl& im = *impl_;
  auto stream = static_cast<cudaStream_t>(stream_ptr);
  std::lock_guard<std::mutex> lock(im.read_mu);
  MSA_RETURN_IF_ERROR(Impl::GrowSlot(&im.bounce, bytes));
  MSA_RETURN_IF_ERROR(CudaStatus(cudaMemcpyAsync(im.bounce.host, device, bytes, cudaMemcpyDeviceToHost, stream),
                                 "copying " + std::to_string(bytes) + " bytes from the GPU"));
  MSA_RETURN_IF_ERROR(CudaStatus(cudaStreamSynchronize(stream), "waiting for a copy from the GPU"));
  std::memcpy(host, im.bounce.host, bytes);
  return Status::OK();
}

void GpuBlockPool::Clear() {
  Impl& im = *impl_;
  std::lock_guard<std::mutex> lock(im.mu);
  for (auto it = im.lru.begin(); it != im.lru.end();) {
    Impl::Page& pg = im.page[*it];
    if (pg.pins != 0) {
      ++it;
      continue;
    }
    im.map.erase(pg.key);
    pg.keyed = false;
    pg.ready.reset();
    im.free_pages.push_back(*it);
    it = im.lru.erase(it);
  }
}

}  // namespace msa::attention
