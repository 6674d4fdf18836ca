// The CUDA entry points of a build without CUDA (MSA_WITH_CUDA=OFF): they
// exist so callers need no #ifdef, and say plainly why they cannot run.
#include "attention/sparse_attention_cuda.h"

namespace msa::attention {

namespace {
constexpr const char* kNoCuda = "msa built without CUDA (MSA_WITH_CUDA=OFF)";
}  // namespace

bool CudaAvailable(std::string* why) {
  if (why) *why = kNoCuda;
  return false;
}

Status SparseAttentionCudaF16(const AttentionShape&, const BlockTable<uint16_t>&, const Selection&,
                              const float*, float*, float*, void*) {
  return Status::NotSupported(kNoCuda);
}

Status SparseAttentionCudaQuantized(const AttentionShape&, const BlockTable<uint8_t>&, const QuantizedPageLayout&,
                                    const Selection&, const float*, float*, float*, void*) {
  return Status::NotSupported(kNoCuda);
}

Status SparseAttentionCudaQuantizedHost(const AttentionShape&, const BlockTable<uint8_t>&,
                                        const QuantizedPageLayout&, const Selection&, const float*, float*, float*) {
  return Status::NotSupported(kNoCuda);
}

Status SparseAttentionCudaF16Host(const AttentionShape&, const BlockTable<uint16_t>&,
                                  const Selection&, const float*, float*, float*) {
  return Status::NotSupported(kNoCuda);
}

Status CudaCopyToHostAsync(void*, const void*, size_t, void*) { return Status::NotSupported(kNoCuda); }

Status CudaSynchronize(void*, const char*) { return Status::NotSupported(kNoCuda); }

}  // namespace msa::attention
