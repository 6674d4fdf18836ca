// CUDA sparse attention over gathered blocks: the same function as
// SparseAttentionCpu (see sparse_attention_cpu.h), with K/V in fp16 on the
// device. Built when MSA_WITH_CUDA is on; otherwise CudaAvailable() is false
// and the entry points return NotSupported.
//
// Thread safety: the entry points may be called from several threads; each
// call runs on the given stream.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "attention/block_table.h"
#include "attention/quantized_pages.h"
#include "msa/status.h"

namespace msa::attention {

// True when msa was built with CUDA and a device is usable. `why` (optional)
// receives the reason when it is not ("built without CUDA", "no CUDA device").
bool CudaAvailable(std::string* why = nullptr);

// All pointers are device pointers. keys/values are IEEE fp16 stored as
// uint16_t (layout as BlockTable), 16-byte aligned. `stream` is a cudaStream_t
// (nullptr: the default stream). Returns after the kernels are enqueued; errors
// of the launch are reported, errors of execution at the next synchronisation.
// head_dim: a positive multiple of 8 (else InvalidArgument) up to 256 (above:
// NotSupported); it is padded to 64, 128 or 256 inside. q must lie within the
// fp16 range (|q| < 65504): the tensor cores take it as two fp16 terms.
// A call may allocate a workspace stream-ordered (cudaMallocFromPoolAsync) from
// a memory pool msa keeps per device for the life of the process.
Status SparseAttentionCudaF16(const AttentionShape& shape, const BlockTable<uint16_t>& table,
                              const Selection& selection, const float* q, float* out, float* lse,
                              void* stream);

// The same over quantised pages (attention/quantized_pages.h: int8 or int4
// codes), dequantised inside the kernel: table.keys / table.values point at
// key / value page 0 (device memory, 16-byte aligned), page b at + b *
// layout.page_bytes; the layout must be QuantizedPages(bits, block_tokens,
// head_dim). Results equal SparseAttentionCudaF16's over the fp16 rounding of
// the decoded blocks.
Status SparseAttentionCudaQuantized(const AttentionShape& shape, const BlockTable<uint8_t>& table,
                                    const QuantizedPageLayout& layout, const Selection& selection, const float* q,
                                    float* out, float* lse, void* stream);

// Host convenience: copies the inputs to the device, runs the kernel,
// synchronises and copies out/lse back. Used by tests and the CLI.
Status SparseAttentionCudaF16Host(const AttentionShape& shape, const BlockTable<uint16_t>& table,
                                  const Selection& selection, const float* q, float* out,
                                  float* lse);

// The same for quantised pages (tests): table.keys/values hold num_blocks
// pages of layout.page_bytes each, on the host.
Status SparseAttentionCudaQuantizedHost(const AttentionShape& shape, const BlockTable<uint8_t>& table,
                                        const QuantizedPageLayout& layout, const Selection& selection,
                                        const float* q, float* out, float* lse);

// Stream helpers for callers compiled without the CUDA headers (store/).
// `stream` is a cudaStream_t (nullptr: the legacy default stream).
// Enqueues a copy of `bytes` from device memory to host memory.
Status CudaCopyToHostAsync(void* host, const void* device, size_t bytes, void* stream);
// Waits for everything enqueued on `stream`; `what` names the work in errors.
Status CudaSynchronize(void* stream, const char* what);

}  // namespace msa::attention
