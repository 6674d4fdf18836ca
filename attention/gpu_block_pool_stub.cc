// GpuBlockPool in a build without CUDA (MSA_WITH_CUDA=OFF): Create says why
// it cannot exist, so no other method can be reached.
#include "attention/gpu_block_pool.h"

namespace msa::attention {

struct GpuBlockPool::Batch {};
struct GpuBlockPool::Impl {};

void GpuBlockPool::BatchDeleter::operator()(Batch* b) const { delete b; }

GpuBlockPool::GpuBlockPool(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
GpuBlockPool::~GpuBlockPool() = default;

Result<std::unique_ptr<GpuBlockPool>> GpuBlockPool::Create(const GpuPoolOptions&) {
  return Status::NotSupported("msa built without CUDA (MSA_WITH_CUDA=OFF): no GPU block pool");
}

int GpuBlockPool::pages() const { return 0; }
size_t GpuBlockPool::block_bytes() const { return 0; }
int GpuBlockPool::page_bits() const { return 0; }
BlockTable<uint16_t> GpuBlockPool::table() const { return {}; }
GpuPoolStats GpuBlockPool::Stats() const { return {}; }
Status GpuBlockPool::Begin(const std::vector<GpuPoolKey>&, bool, size_t, BatchPtr*,
                           std::vector<int32_t>*, std::vector<size_t>*) {
  return Status::NotSupported("msa built without CUDA");
}
void GpuBlockPool::Io(Batch&, void** host, void** device) const { *host = *device = nullptr; }
uint16_t* GpuBlockPool::StagedKeys(Batch&, size_t) const { return nullptr; }
uint16_t* GpuBlockPool::StagedValues(Batch&, size_t) const { return nullptr; }
void GpuBlockPool::SetStagedTokens(Batch&, size_t, int32_t) const {}
void* GpuBlockPool::SlotStream(Batch&) const { return nullptr; }
Status GpuBlockPool::Upload(Batch&, void*) { return Status::NotSupported("msa built without CUDA"); }
Status GpuBlockPool::Finish(BatchPtr, void*, bool) { return Status::OK(); }
Status GpuBlockPool::ReadToHost(const void*, size_t, void*, void*) {
  return Status::NotSupported("msa built without CUDA");
}
void GpuBlockPool::Clear() {}

}  // namespace msa::attention
