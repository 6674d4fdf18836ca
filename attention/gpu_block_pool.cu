// GpuBlockPool (see gpu_block_pool.h for the design and the contract).
#include "attention/gpu_block_pool.h"
#include "attention/quantized_pages.h"

#include <cuda_runtime.h>
#include <sys/mman.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <condition_variable>
#include <cstring>
#include <atomic>
#include <deque>
#include <mutex>
#include <string>
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
  std::atomic<bool> complete{false};  // set once a query saw it done: no more driver calls
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
  if (!ev || ev->complete.load(std::memory_order_relaxed)) return false;
  const cudaError_t err = cudaEventQuery(ev->e);
  if (err == cudaSuccess) {
    ev->complete.store(true, std::memory_order_relaxed);
    return false;
  }
  if (err == cudaErrorNotReady) {
    (void)cudaGetLastError();  // NotReady is no error; don't leave it for a later check
    return true;
  }
  return CudaStatus(err, "querying a pool event");
}

// Moves staged block m (keys for blockIdx.y == 0, values for 1) into its
// page; meta[2m] is the page, meta[2m + 1] the token count. Only the valid
// rows are copied (row_vec 0: the whole page, for quantised pages); 16 bytes per
// thread (rows are 16-byte multiples).
__global__ void ScatterBlocksKernel(const uint4* __restrict__ staged, const int32_t* __restrict__ meta,
                                    size_t block_vec, int row_vec, uint4* __restrict__ keys,
                                    uint4* __restrict__ values, int32_t* __restrict__ lens) {
  const size_t m = blockIdx.x;
  const int which = blockIdx.y;
  const int32_t page = meta[2 * m];
  const int32_t tokens = meta[2 * m + 1];
  const uint4* src = staged + (2 * m + which) * block_vec;
  uint4* dst = (which == 0 ? keys : values) + static_cast<size_t>(page) * block_vec;
  const size_t n = row_vec == 0 ? block_vec : static_cast<size_t>(tokens) * row_vec;
  for (size_t i = threadIdx.x; i < n; i += blockDim.x) dst[i] = src[i];
  if (which == 0 && threadIdx.x == 0) lens[page] = tokens;
}

size_t HashKey(uint32_t stream, uint64_t block) {
  uint64_t x = (block * 0x9E3779B97F4A7C15ull) ^ (uint64_t{stream} * 0xC2B2AE3D27D4EB4Full);
  return static_cast<size_t>(x ^ (x >> 29));
}

// (stream, block) -> page: open addressing with linear probing and
// backward-shift deletion, at most half full. A warm call looks up every
// block it attends (512 for 8 KV heads x 64 blocks), so this is on the
// critical path: one probe into a flat array, no node allocation.
class PageIndex {
 public:
  explicit PageIndex(size_t pages) {
    size_t cap = 16;
    while (cap < 2 * pages) cap *= 2;
    slots_.assign(cap, Entry{});
    mask_ = cap - 1;
  }
  int32_t Find(uint32_t stream, uint64_t block) const {
    for (size_t i = HashKey(stream, block) & mask_;; i = (i + 1) & mask_) {
      const Entry& e = slots_[i];
      if (e.page < 0) return -1;
      if (e.block == block && e.stream == stream) return e.page;
    }
  }
  // The key must be absent.
  void Insert(uint32_t stream, uint64_t block, int32_t page) {
    size_t i = HashKey(stream, block) & mask_;
    while (slots_[i].page >= 0) i = (i + 1) & mask_;
    slots_[i] = Entry{block, stream, page};
    ++size_;
  }
  void Erase(uint32_t stream, uint64_t block) {
    size_t i = HashKey(stream, block) & mask_;
    while (slots_[i].page >= 0 && !(slots_[i].block == block && slots_[i].stream == stream)) i = (i + 1) & mask_;
    if (slots_[i].page < 0) return;
    --size_;
    // Backward shift: move later entries of the cluster into the hole when
    // their home slot does not lie cyclically in (hole, j].
    for (size_t j = (i + 1) & mask_; slots_[j].page >= 0; j = (j + 1) & mask_) {
      const size_t home = HashKey(slots_[j].stream, slots_[j].block) & mask_;
      const bool stays = i <= j ? (home > i && home <= j) : (home > i || home <= j);
      if (stays) continue;
      slots_[i] = slots_[j];
      i = j;
    }
    slots_[i].page = -1;
  }
  size_t size() const { return size_; }

 private:
  struct Entry {
    uint64_t block = 0;
    uint32_t stream = 0;
    int32_t page = -1;  // < 0: empty
  };
  std::vector<Entry> slots_;
  size_t mask_ = 0;
  size_t size_ = 0;
};

}  // namespace

struct GpuBlockPool::Batch {
  int slot = -1;
  bool lookup = true;
  std::vector<GpuPoolKey> miss_keys;  // per miss
  std::vector<int32_t> pages;         // per key
  std::vector<size_t> misses;         // indices into the keys
  uint64_t waited_gen = 0;            // release events up to this generation are in waits
  std::vector<EventPtr> waits;      // GPU-side waits before the upload / kernel
  EventPtr uploaded;                // recorded after the scatter (misses only)
  size_t io_bytes = 0;
  size_t blocks_offset = 0, meta_offset = 0, total_bytes = 0;
};

struct GpuBlockPool::Impl {
  // Constant after construction.
  GpuPoolOptions options;
  int device = 0;  // current at creation; callers must keep it current
  int pages = 0;
  size_t block_bytes = 0;  // one of K or V of one page
  uint16_t* keys = nullptr;
  uint16_t* values = nullptr;
  int32_t* lens = nullptr;

  struct Page {
    GpuPoolKey key;
    bool keyed = false;
    int pins = 0;
    int32_t prev = -1, next = -1;  // LRU list links (keyed pages)
    EventPtr ready;                // the upload that wrote it, until seen complete
    uint64_t last_use_gen = 0;     // the last batch that read it (0: none)
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
  std::unique_ptr<PageIndex> index;
  int32_t lru_head = -1, lru_tail = -1;  // keyed pages; head: most recent
  std::vector<int32_t> free_pages;
  // Release events of finished batches, in generation order, until seen
  // complete (popped from the front only: events on different streams may
  // complete out of order). A page read by batch generation g may be
  // rewritten once every event of generation <= g still listed is done --
  // conservative (it also waits for older batches), but it covers a page
  // read by several batches at once, whose readers end in any order.
  std::deque<std::pair<uint64_t, EventPtr>> releases;
  uint64_t next_gen = 1;
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
    // Reads of pages on callers' streams: their batches' release events.
    for (auto& r : releases) (void)cudaEventSynchronize(r.second->e);
    for (Page& p : page) {
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

  // Under mu: the intrusive LRU list of keyed pages.
  void LinkFront(int32_t p) {
    page[p].prev = -1;
    page[p].next = lru_head;
    if (lru_head >= 0) page[lru_head].prev = p;
    lru_head = p;
    if (lru_tail < 0) lru_tail = p;
  }
  void Unlink(int32_t p) {
    Page& pg = page[p];
    (pg.prev >= 0 ? page[pg.prev].next : lru_head) = pg.next;
    (pg.next >= 0 ? page[pg.next].prev : lru_tail) = pg.prev;
    pg.prev = pg.next = -1;
  }
  // Under mu: drops a keyed page's key (it becomes a plain page).
  void ForgetLocked(int32_t p) {
    Page& pg = page[p];
    index->Erase(pg.key.stream, pg.key.block);
    Unlink(p);
    pg.keyed = false;
    pg.ready.reset();
  }

  // Under mu: the release events a rewrite of page p must wait for, added
  // to the batch's waits (each once per batch).
  void AddReleaseWaitsLocked(int32_t p, Batch* b) {
    const uint64_t gen = page[p].last_use_gen;
    if (gen <= b->waited_gen) return;
    for (const auto& r : releases) {
      if (r.first > gen) break;
      if (r.first > b->waited_gen) b->waits.push_back(r.second);
    }
    b->waited_gen = gen;
  }

  // Under mu: a page for a miss -- a free one, else the least recently used
  // unpinned keyed page (evicted). -1 when every page is pinned.
  int32_t TakePageLocked(Batch* b) {
    int32_t p = -1;
    if (!free_pages.empty()) {
      p = free_pages.back();
      free_pages.pop_back();
    } else {
      for (int32_t q = lru_tail; q >= 0; q = page[q].prev) {
        if (page[q].pins == 0) {
          p = q;
          break;
        }
      }
      if (p < 0) return -1;
      ForgetLocked(p);
      ++stats.evictions;
    }
    // The new contents must not land before the last readers of the old are done.
    AddReleaseWaitsLocked(p, b);
    return p;
  }

  // Under mu: forgets release events seen complete, from the front.
  void PruneReleasesLocked() {
    while (!releases.empty()) {
      Event& e = *releases.front().second;
      if (!e.complete.load(std::memory_order_relaxed)) {
        if (cudaEventQuery(e.e) != cudaSuccess) {
          (void)cudaGetLastError();  // NotReady (or a broken context, which the next call reports)
          break;
        }
        e.complete.store(true, std::memory_order_relaxed);
      }
      releases.pop_front();
    }
  }

  // Under mu: undoes a batch's pins; its misses' pages are published (ok &&
  // lookup) or freed. done: the event after the batch's work (null when the
  // caller's stream was synchronised instead).
  void ReleaseLocked(Batch& b, const EventPtr& done, bool ok) {
    uint64_t gen = 0;
    if (done) {
      gen = next_gen++;
      releases.emplace_back(gen, done);
    }
    for (const int32_t p : b.pages) {
      if (p < 0) continue;
      Page& pg = page[p];
      --pg.pins;
      if (gen != 0) pg.last_use_gen = gen;  // generations only grow: the latest reader covers the older
    }
    for (size_t m = 0; m < b.misses.size(); ++m) {
      const int32_t p = b.pages[b.misses[m]];
      if (p < 0) continue;
      const GpuPoolKey& key = b.miss_keys[m];
      if (ok && b.lookup && b.uploaded && index->Find(key.stream, key.block) < 0) {
        Page& pg = page[p];
        pg.key = key;
        pg.keyed = true;
        pg.ready = b.uploaded;
        LinkFront(p);
        index->Insert(key.stream, key.block, p);
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
  if (o.page_bits != 0 && o.page_bits != 8 && o.page_bits != 4) {
    return Status::InvalidArgument("GPU block pool: page_bits " + std::to_string(o.page_bits) +
                                   " (0 for fp16 pages, 8 or 4 for quantised ones)");
  }
  if (o.page_bits != 0 && o.block_tokens > kMaxQuantizedPageTokens) {
    return Status::InvalidArgument("GPU block pool: quantised pages hold at most " +
                                   std::to_string(kMaxQuantizedPageTokens) + " tokens, not " +
                                   std::to_string(o.block_tokens));
  }
  auto impl = std::make_unique<Impl>();
  impl->options = o;
  MSA_RETURN_IF_ERROR(CudaStatus(cudaGetDevice(&impl->device), "cudaGetDevice"));
  impl->block_bytes = o.page_bits != 0 ? QuantizedPages(o.page_bits, o.block_tokens, o.head_dim).page_bytes
                                      : static_cast<size_t>(o.block_tokens) * o.head_dim * sizeof(uint16_t);
  const uint64_t per_page = 2 * impl->block_bytes + sizeof(int32_t);
  // No more pages than the kernel can address (quantised: 2^23 - 1; fp16: rows
  // of 32-bit numbers).
  const uint64_t addressable =
      o.page_bits != 0 ? uint64_t{kMaxQuantizedPages} : uint64_t{INT32_MAX} / o.block_tokens;
  const uint64_t pages = std::min<uint64_t>(o.pool_bytes / per_page, addressable);
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
  impl->index = std::make_unique<PageIndex>(pages);
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
int GpuBlockPool::page_bits() const { return impl_->options.page_bits; }

BlockTable<uint16_t> GpuBlockPool::table() const {
  return {impl_->pages, impl_->keys, impl_->values, impl_->lens};
}

GpuPoolStats GpuBlockPool::Stats() const {
  std::lock_guard<std::mutex> lock(impl_->mu);
  GpuPoolStats s = impl_->stats;
  s.resident = impl_->index->size();
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
    im.PruneReleasesLocked();
    // Hits: pinned, and moved to the front. A hit whose upload (by another
    // call) may still be in flight is waited for on the GPU.
    for (size_t i = 0; i < keys.size(); ++i) {
      const int32_t p = lookup ? im.index->Find(keys[i].stream, keys[i].block) : -1;
      if (p < 0) {
        b->misses.push_back(i);
        b->miss_keys.push_back(keys[i]);
        continue;
      }
      Impl::Page& pg = im.page[p];
      ++pg.pins;
      if (im.lru_head != p) {
        im.Unlink(p);
        im.LinkFront(p);
      }
      b->pages[i] = p;
      if (pg.ready) {
        if (pg.ready->complete.load(std::memory_order_relaxed)) {
          pg.ready.reset();
        } else if (b->waits.empty() || b->waits.back() != pg.ready) {
          b->waits.push_back(pg.ready);
        }
      }
    }
    im.stats.hits += keys.size() - b->misses.size();
    im.stats.misses += b->misses.size();
    // Misses: free or evicted pages, pinned and private until Finish.
    for (size_t m : b->misses) {
      const int32_t p = im.TakePageLocked(b.get());
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
  const int row_vec = im.options.page_bits != 0
                          ? 0
                          : im.options.head_dim * static_cast<int>(sizeof(uint16_t)) / static_cast<int>(sizeof(uint4));
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
  for (int32_t p = im.lru_head; p >= 0;) {
    const int32_t next = im.page[p].next;
    if (im.page[p].pins == 0) {
      im.ForgetLocked(p);
      im.free_pages.push_back(p);
    }
    p = next;
  }
}

}  // namespace msa::attention
