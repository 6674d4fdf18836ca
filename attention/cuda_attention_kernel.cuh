// The split-K ("flash-decoding") kernel behind SparseAttentionCudaF16, as a
// template on the padded head dim D (64, 128, 256). Internal to attention/:
// sparse_attention_cuda.cu plans the launch and merges the partials;
// cuda_attention_d{64,128,256}.cu each instantiate one D (one translation unit
// per head dim, as FlashAttention and FlashInfer do, so the three compile
// apart).
//
// Work decomposition. For KV head g the query vectors are the pairs
// (row r, head h of g's GQA group), flattened as m = r * group + h. One CTA
// takes M = 16 * MW consecutive m (MW warps, 16 vectors each: the rows of one
// tensor-core tile) and one split: the selected blocks [j0, j0 + blocks_per_split)
// of each of its rows. grid = (ceil(n * group / M), kv_heads, num_splits).
// Consecutive rows whose selections agree on the split's blocks form a "run";
// a run streams its K/V tiles through shared memory once for all its query
// vectors (all heads of the group, all rows of the run), so GQA and rows that
// share a selection read K/V once per CTA. Rows that differ are correct too,
// as separate runs (each a pass over its own blocks).
//
// Inner loop (FlashAttention-2 style). A tile is BN tokens of the run's
// blocks flattened in selection order (short blocks leave no gaps), gathered
// with 16-byte cp.async into a double buffer; S = Q K^T and O += P V run on
// mma.sync m16n8k16 (fp16 in, fp32 accumulate), softmax online in fp32.
//
// Precision: the contract is float32 arithmetic on fp16 K/V (q and out are
// float). A tensor-core operand is fp16, so q and P are each fed as two fp16
// terms, hi = fp16(x) and lo = fp16(x - hi), and both are multiplied: the
// products carry ~22 bits of x, where fp16 alone keeps 11 and would move the
// output by ~1e-4 relative. K and V are fp16 already, so nothing else is
// split. This doubles the tensor work against a plain fp16 kernel
// (PyTorch's flash rounds q and P to fp16): bandwidth-bound shapes (decode)
// do not notice, prefill chunks with many rows do.
//
// Output: num_splits == 1 writes out/lse directly; otherwise each CTA writes
// per query vector its unnormalised acc, reference maximum m (log2 units: the
// exponents' offset, within 2^8 of the running maximum) and sum l
// to the workspace and MergeSplitsKernel combines them by log-sum-exp.
#pragma once

#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <string>

#include "msa/status.h"

namespace msa::attention::cuda {

constexpr int kSplitThreads = 128;
// A split covers at most this many selected blocks: one per thread for the
// token prefix sum and the run comparison.
constexpr int kMaxBlocksPerSplit = kSplitThreads;

struct SplitParams {
  int n_queries;
  int q_heads;
  int kv_heads;
  int group;     // q_heads / kv_heads
  int head_dim;  // real channels (multiple of 8, <= D); the rest of D is zero padding
  int block_tokens;
  int num_blocks;
  int max_blocks;
  int blocks_per_split;
  int num_splits;
  float score_scale;  // softmax scale * log2(e): scores live in log2 units
  const __half* keys;
  const __half* values;
  // page_bits 8 or 4: keys/values point at quantised pages
  // (attention/quantized_pages.h: int8 or int4 codes), page_bytes apart,
  // codes at code_offset, key_groups and value_groups parameters per
  // channel and per token; each tile is dequantised into the fp16
  // shared-memory tile the tensor cores read. 0: fp16 rows.
  int page_bits;
  int page_bytes;
  int code_offset;
  int key_groups;
  int value_groups;
  const int32_t* block_len;
  const int32_t* block_index;
  const int32_t* count;
  const float* q;
  // num_splits == 1: the results.
  float* out;
  float* lse;  // may be null
  // num_splits > 1: partials, index (split * n_queries * q_heads + query vector),
  // acc of head_dim floats each, m and l one float each.
  float* part_acc;
  float* part_m;
  float* part_l;
};

// "<what>: <cudaErrorName> (<description>)" as a Status. Errors meaning this
// build or driver cannot use the device at all are NotSupported; the rest are
// failures of a call that should have worked.
inline Status CudaStatus(cudaError_t err, const std::string& what) {
  if (err == cudaSuccess) return Status::OK();
  std::string msg = what + ": " + cudaGetErrorName(err) + " (" + cudaGetErrorString(err) + ")";
  switch (err) {
    case cudaErrorNoDevice:
    case cudaErrorInsufficientDriver:
    case cudaErrorNoKernelImageForDevice:
    case cudaErrorUnsupportedPtxVersion:
    case cudaErrorInvalidDeviceFunction:
      return Status::NotSupported(std::move(msg));
    default:
      return Status::Internal(std::move(msg));
  }
}

// CTAs of SplitKernel<D, mw> resident per SM on `device` (cached; also raises
// the kernel's dynamic shared-memory limit there, which a launch needs).
template <int D>
Status SplitKernelOccupancy(int device, int mw, int* ctas_per_sm);

// Launches SplitKernel<D, mw> on grid (m_tiles, kv_heads, num_splits).
template <int D>
Status LaunchSplitKernel(const SplitParams& p, int mw, int m_tiles, cudaStream_t stream);

extern template Status SplitKernelOccupancy<64>(int, int, int*);
extern template Status SplitKernelOccupancy<128>(int, int, int*);
extern template Status SplitKernelOccupancy<256>(int, int, int*);
extern template Status LaunchSplitKernel<64>(const SplitParams&, int, int, cudaStream_t);
extern template Status LaunchSplitKernel<128>(const SplitParams&, int, int, cudaStream_t);
extern template Status LaunchSplitKernel<256>(const SplitParams&, int, int, cudaStream_t);

}  // namespace msa::attention::cuda
