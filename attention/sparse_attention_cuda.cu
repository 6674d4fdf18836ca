// CUDA sparse attention over gathered fp16 blocks (see sparse_attention_cuda.h
// for the contract and sparse_attention_cpu.h for the function computed).
//
// This file plans a call and owns what surrounds the kernel: argument checks,
// the choice of tile and split, the workspace, and the merge of split
// partials. The kernel itself (flash-decoding split-K on tensor cores, one
// translation unit per head dim) is described in cuda_attention_kernel.cuh.
//
// Plan. head_dim is padded to the next of 64, 128, 256 (zero channels cost
// arithmetic, not bytes). A CTA takes 16, 32 or 64 query vectors of one KV
// head (fewer when a call has fewer, so a decode step does not pay for 64,
// and fewer when a short selection would otherwise leave SMs idle).
// The selection of each (row, KV head) is cut into num_splits pieces of at most
// kMaxBlocksPerSplit blocks, as many as fill the GPU about once: a decode step
// with 8 KV heads would otherwise run 8 CTAs on 132 SMs. With more than one
// split, MergeSplitsKernel combines the partials by log-sum-exp.
//
// Workspace: the partials live in stream-ordered memory (cudaMallocFromPoolAsync
// / cudaFreeAsync on the caller's stream) from one pool per device that msa
// creates and never frees, with a release threshold so that steady-state calls
// reuse memory instead of mapping it again. Concurrent calls on any streams
// each get their own workspace; nothing is shared but the pool, which CUDA
// makes thread-safe.
#include "attention/sparse_attention_cuda.h"

#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <climits>
#include <cstddef>
#include <cstdint>
#include <map>
#include <mutex>
#include <string>

#include "attention/cuda_attention_kernel.cuh"

namespace msa::attention {

namespace {

using cuda::CudaStatus;
using cuda::kMaxBlocksPerSplit;
using cuda::SplitParams;

constexpr int kMaxHeadDim = 256;
constexpr int kMergeWarps = 8;
// A split gets at least this many selected blocks where the selection has
// them: at small budgets (2K tokens per KV head) one block per CTA spends
// more on each CTA's start and on the merge than it gains in parallelism.
// Swept 1, 2, 4, 8, 16 on an H200 (BENCHMARKS.md, session 10): 2 is 2 us
// faster at 2K for 1 and 8 queries, and no case was slower.
constexpr int kMinBlocksPerSplit = 2;
// Pool memory above this is handed back to the driver at synchronisation;
// below it, it is kept for the next call.
constexpr uint64_t kPoolReleaseThreshold = uint64_t{256} << 20;

// Combines the splits of each query vector: out = sum_s acc_s 2^(m_s - M) / L,
// L = sum_s l_s 2^(m_s - M), lse = ln 2 * (M + log2 L); all splits empty gives
// out = 0 and lse = -inf. One CTA per query vector; each warp folds a strided
// subset of the splits in one pass (online max, loads of several splits in
// flight, lanes over channels with 16-byte loads), and the warps' states meet
// in shared memory. Launched as a programmatic dependent of the split kernel:
// its launch overlaps the split kernel's tail, and griddepcontrol.wait holds
// it until the partials are complete and visible.
__global__ void __launch_bounds__(kMergeWarps * 32)
    MergeSplitsKernel(int n_vectors, int head_dim, int num_splits, const float* __restrict__ part_acc,
                      const float* __restrict__ part_m, const float* __restrict__ part_l,
                      float* __restrict__ out, float* __restrict__ lse) {
  asm volatile("griddepcontrol.wait;\n" ::: "memory");
  __shared__ float s_m[kMergeWarps], s_l[kMergeWarps];
  __shared__ float s_o[kMergeWarps][kMaxHeadDim];
  const int tid = threadIdx.x;
  const int lane = tid & 31;
  const int warp = tid >> 5;
  const size_t qv = blockIdx.x;

  // head_dim % 8 == 0 and the workspace is 256-byte aligned: acc rows are float4-aligned.
  constexpr int kVec = kMaxHeadDim / 128;  // float4s per lane
  float m_w = -INFINITY, l_w = 0.0f;
  float4 o[kVec];
#pragma unroll
  for (int k = 0; k < kVec; ++k) o[k] = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
#pragma unroll 4
  for (int s = warp; s < num_splits; s += kMergeWarps) {
    const size_t i = s * static_cast<size_t>(n_vectors) + qv;
    const float m = part_m[i];
    const float l = part_l[i];
    const float4* a = reinterpret_cast<const float4*>(part_acc + i * head_dim);
    float4 x[kVec];
#pragma unroll
    for (int k = 0; k < kVec; ++k) {
      const int c4 = lane + 32 * k;
      x[k] = 4 * c4 < head_dim ? a[c4] : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    }
    if (m == -INFINITY) continue;  // an empty split: acc 0, l 0
    const float m_new = fmaxf(m_w, m);
    const float a_old = exp2f(m_w - m_new);  // 0 while m_w is -inf
    const float a_new = exp2f(m - m_new);
    m_w = m_new;
    l_w = l_w * a_old + l * a_new;
#pragma unroll
    for (int k = 0; k < kVec; ++k) {
      o[k].x = o[k].x * a_old + x[k].x * a_new;
      o[k].y = o[k].y * a_old + x[k].y * a_new;
      o[k].z = o[k].z * a_old + x[k].z * a_new;
      o[k].w = o[k].w * a_old + x[k].w * a_new;
    }
  }
  if (lane == 0) {
    s_m[warp] = m_w;
    s_l[warp] = l_w;
  }
#pragma unroll
  for (int k = 0; k < kVec; ++k) {
    const int c4 = lane + 32 * k;
    if (4 * c4 < head_dim) *reinterpret_cast<float4*>(&s_o[warp][4 * c4]) = o[k];
  }
  __syncthreads();
  float mx = -INFINITY;
  for (int w = 0; w < kMergeWarps; ++w) mx = fmaxf(mx, s_m[w]);
  float wt[kMergeWarps];
  float sum = 0.0f;
#pragma unroll
  for (int w = 0; w < kMergeWarps; ++w) {
    wt[w] = s_m[w] == -INFINITY ? 0.0f : exp2f(s_m[w] - mx);
    sum += s_l[w] * wt[w];
  }
  if (tid == 0 && lse != nullptr) lse[qv] = sum > 0.0f ? (mx + log2f(sum)) * 0.69314718055994531f : -INFINITY;
  const float inv = sum > 0.0f ? 1.0f / sum : 0.0f;
  for (int c = tid; c < head_dim; c += kMergeWarps * 32) {
    float v = 0.0f;
#pragma unroll
    for (int w = 0; w < kMergeWarps; ++w) v = fmaf(s_o[w][c], wt[w], v);
    out[qv * head_dim + c] = v * inv;
  }
}

template <typename T>
Status ValidateArguments(const AttentionShape& s, const BlockTable<T>& table,
                         const Selection& selection, const float* q, const float* out) {
  if (s.n_queries < 0) return Status::InvalidArgument("n_queries < 0: " + std::to_string(s.n_queries));
  if (s.q_heads <= 0 || s.kv_heads <= 0 || s.q_heads % s.kv_heads != 0) {
    return Status::InvalidArgument("q_heads " + std::to_string(s.q_heads) +
                                   " must be a positive multiple of kv_heads " +
                                   std::to_string(s.kv_heads));
  }
  if (s.head_dim <= 0 || s.head_dim % 8 != 0) {
    return Status::InvalidArgument("head_dim " + std::to_string(s.head_dim) +
                                   ": must be a positive multiple of 8 (16-byte K/V rows)");
  }
  if (s.head_dim > kMaxHeadDim) {
    return Status::NotSupported("head_dim " + std::to_string(s.head_dim) +
                                ": the CUDA kernel has tiles for head dims up to 256 (64, 128, 256; "
                                "smaller multiples of 8 are zero-padded)");
  }
  // The kernel sums the lengths of one split's blocks in an int.
  if (s.block_tokens <= 0 || s.block_tokens > INT_MAX / kMaxBlocksPerSplit) {
    return Status::InvalidArgument("block_tokens out of range: " + std::to_string(s.block_tokens));
  }
  if (table.num_blocks < 0 || selection.max_blocks < 0) {
    return Status::InvalidArgument("negative num_blocks or max_blocks");
  }
  if (s.kv_heads > 65535) {
    return Status::InvalidArgument("too many KV heads for one grid column: " + std::to_string(s.kv_heads));
  }
  if (static_cast<int64_t>(selection.max_blocks) > int64_t{65535} * kMaxBlocksPerSplit) {
    return Status::InvalidArgument("max_blocks " + std::to_string(selection.max_blocks) +
                                   " exceeds what one call can split (65535 * 128)");
  }
  if (static_cast<int64_t>(s.n_queries) * s.q_heads > INT_MAX) {
    return Status::InvalidArgument("n_queries * q_heads exceeds INT_MAX");
  }
  if (s.n_queries == 0) return Status::OK();
  if (q == nullptr || out == nullptr || selection.count == nullptr ||
      (selection.max_blocks > 0 && selection.block_index == nullptr)) {
    return Status::InvalidArgument("null q, out or selection array");
  }
  if (table.num_blocks > 0 &&
      (table.keys == nullptr || table.values == nullptr || table.block_len == nullptr)) {
    return Status::InvalidArgument("null keys, values or block_len");
  }
  // Each lane loads 16 bytes of a K/V row; rows are 16-byte multiples (head_dim % 8 == 0).
  if (reinterpret_cast<uintptr_t>(table.keys) % 16 != 0 ||
      reinterpret_cast<uintptr_t>(table.values) % 16 != 0) {
    return Status::InvalidArgument("keys and values must be 16-byte aligned");
  }
  return Status::OK();
}

// msa's workspace pool on `device`, created on first use (see the file comment).
Status WorkspacePool(int device, cudaMemPool_t* pool) {
  static std::mutex mu;
  static auto* pools = new std::map<int, cudaMemPool_t>();  // never freed: lives as long as the process
  std::lock_guard<std::mutex> lock(mu);
  auto it = pools->find(device);
  if (it != pools->end()) {
    *pool = it->second;
    return Status::OK();
  }
  cudaMemPoolProps props{};
  props.allocType = cudaMemAllocationTypePinned;
  props.location.type = cudaMemLocationTypeDevice;
  props.location.id = device;
  cudaMemPool_t created;
  MSA_RETURN_IF_ERROR(CudaStatus(cudaMemPoolCreate(&created, &props), "creating the attention workspace pool"));
  uint64_t threshold = kPoolReleaseThreshold;
  MSA_RETURN_IF_ERROR(CudaStatus(cudaMemPoolSetAttribute(created, cudaMemPoolAttrReleaseThreshold, &threshold),
                                 "setting the workspace pool's release threshold"));
  (*pools)[device] = created;
  *pool = created;
  return Status::OK();
}

Status SmCount(int device, int* sms) {
  return CudaStatus(cudaDeviceGetAttribute(sms, cudaDevAttrMultiProcessorCount, device),
                    "reading the multiprocessor count");
}

// Owns one device allocation; frees it on every path out of the Host entry point.
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  // A failing cudaFree can only report a context already broken by an earlier
  // error, which the caller has been told of; a destructor cannot return it.
  ~DeviceBuffer() {
    if (ptr_ != nullptr) (void)cudaFree(ptr_);
  }

  // Allocates `bytes` (none for 0: get() stays null) and copies `host` in when given.
  Status Init(size_t bytes, const void* host, const char* what) {
    if (bytes == 0) return Status::OK();
    MSA_RETURN_IF_ERROR(CudaStatus(cudaMalloc(&ptr_, bytes), std::string("cudaMalloc ") + what));
    if (host != nullptr) {
      MSA_RETURN_IF_ERROR(CudaStatus(cudaMemcpy(ptr_, host, bytes, cudaMemcpyHostToDevice),
                                     std::string("copying ") + what + " to the device"));
    }
    return Status::OK();
  }
  template <typename T>
  T* get() const {
    return static_cast<T*>(ptr_);
  }

 private:
  void* ptr_ = nullptr;
};

// The host arrays are readable here, so check what the device entry point can
// only take on trust: counts within max_blocks, indices within the table,
// block lengths within [1, block_tokens].
template <typename T>
Status ValidateHostSelection(const AttentionShape& s, const BlockTable<T>& table,
                             const Selection& selection) {
  for (int b = 0; b < table.num_blocks; ++b) {
    if (table.block_len[b] < 1 || table.block_len[b] > s.block_tokens) {
      return Status::InvalidArgument("block_len[" + std::to_string(b) + "] = " +
                                     std::to_string(table.block_len[b]) + " outside [1, " +
                                     std::to_string(s.block_tokens) + "]");
    }
  }
  const size_t n_sel = static_cast<size_t>(s.n_queries) * s.kv_heads;
  for (size_t i = 0; i < n_sel; ++i) {
    const int count = selection.count[i];
    if (count < 0 || count > selection.max_blocks) {
      return Status::InvalidArgument("selection count[" + std::to_string(i) + "] = " +
                                     std::to_string(count) + " outside [0, max_blocks]");
    }
    for (int j = 0; j < count; ++j) {
      const int b = selection.block_index[i * selection.max_blocks + j];
      if (b < 0 || b >= table.num_blocks) {
        return Status::InvalidArgument("selection " + std::to_string(i) + " names block " +
                                       std::to_string(b) + " of " +
                                       std::to_string(table.num_blocks));
      }
    }
  }
  return Status::OK();
}

}  // namespace

bool CudaAvailable(std::string* why) {
  int n = 0;
  cudaError_t err = cudaGetDeviceCount(&n);
  if (err != cudaSuccess) {
    if (why) *why = std::string("no CUDA device: ") + cudaGetErrorString(err);
    (void)cudaGetLastError();  // don't leave the failure for an unrelated later check
    return false;
  }
  if (n == 0) {
    if (why) *why = "no CUDA device: none found";
    return false;
  }
  // A device this binary has no code for (another architecture) is no use either.
  cudaFuncAttributes attr;
  err = cudaFuncGetAttributes(&attr, MergeSplitsKernel);
  if (err != cudaSuccess) {
    if (why) *why = std::string("CUDA device unusable by this build: ") + cudaGetErrorString(err);
    (void)cudaGetLastError();
    return false;
  }
  return true;
}

// Plans the split and launches the kernels for parameters whose K/V
// fields (keys, values, page_bits...) the caller has set.
static Status RunSplit(const AttentionShape& shape, int num_blocks, const Selection& selection, const float* q,
                       float* out, float* lse, SplitParams p, cudaStream_t cu_stream);

Status SparseAttentionCudaF16(const AttentionShape& shape, const BlockTable<uint16_t>& table,
                              const Selection& selection, const float* q, float* out, float* lse,
                              void* stream) {
  MSA_RETURN_IF_ERROR(ValidateArguments(shape, table, selection, q, out));
  if (shape.n_queries == 0) return Status::OK();
  // The kernel addresses rows of the table as int32.
  if (static_cast<int64_t>(table.num_blocks) * shape.block_tokens > INT32_MAX) {
    return Status::InvalidArgument("a table of " + std::to_string(table.num_blocks) + " blocks of " +
                                   std::to_string(shape.block_tokens) + " tokens has more than 2^31 rows");
  }
  SplitParams p{};
  p.keys = reinterpret_cast<const __half*>(table.keys);
  p.values = reinterpret_cast<const __half*>(table.values);
  p.block_len = table.block_len;
  return RunSplit(shape, table.num_blocks, selection, q, out, lse, p, static_cast<cudaStream_t>(stream));
}

Status SparseAttentionCudaQuantized(const AttentionShape& shape, const BlockTable<uint8_t>& table,
                                    const QuantizedPageLayout& layout, const Selection& selection, const float* q,
                                    float* out, float* lse, void* stream) {
  MSA_RETURN_IF_ERROR(ValidateArguments(shape, table, selection, q, out));
  if (shape.n_queries == 0) return Status::OK();
  // The kernel packs (page, token) into an int32: 23 bits and 8.
  if (shape.block_tokens > kMaxQuantizedPageTokens || table.num_blocks > kMaxQuantizedPages) {
    return Status::NotSupported("quantised pages hold at most " + std::to_string(kMaxQuantizedPageTokens) +
                                " tokens, and a table at most " + std::to_string(kMaxQuantizedPages) +
                                " pages (got " + std::to_string(shape.block_tokens) + " and " +
                                std::to_string(table.num_blocks) + ")");
  }
  if ((layout.bits != 8 && layout.bits != 4) ||
      layout != QuantizedPages(layout.bits, static_cast<uint32_t>(shape.block_tokens),
                               static_cast<uint32_t>(shape.head_dim))) {
    return Status::InvalidArgument("quantised page layout (" + std::to_string(layout.bits) +
                                   " bits) does not match block_tokens " + std::to_string(shape.block_tokens) +
                                   " and head_dim " + std::to_string(shape.head_dim));
  }
  SplitParams p{};
  p.keys = reinterpret_cast<const __half*>(table.keys);
  p.values = reinterpret_cast<const __half*>(table.values);
  p.block_len = table.block_len;
  p.page_bits = layout.bits;
  p.page_bytes = static_cast<int>(layout.page_bytes);
  p.code_offset = static_cast<int>(layout.code_offset);
  p.key_groups = static_cast<int>(layout.key_groups);
  p.value_groups = static_cast<int>(layout.value_groups);
  return RunSplit(shape, table.num_blocks, selection, q, out, lse, p, static_cast<cudaStream_t>(stream));
}

static Status RunSplit(const AttentionShape& shape, int num_blocks, const Selection& selection, const float* q,
                       float* out, float* lse, SplitParams p, cudaStream_t cu_stream) {
  p.n_queries = shape.n_queries;
  p.q_heads = shape.q_heads;
  p.kv_heads = shape.kv_heads;
  p.group = shape.q_heads / shape.kv_heads;
  p.head_dim = shape.head_dim;
  p.block_tokens = shape.block_tokens;
  p.num_blocks = num_blocks;
  p.max_blocks = selection.max_blocks;
  p.score_scale = shape.scale * 1.4426950408889634f;  // log2(e)
  p.block_index = selection.block_index;
  p.count = selection.count;
  p.q = q;
  p.out = out;
  p.lse = lse;

  const int d_pad = shape.head_dim <= 64 ? 64 : shape.head_dim <= 128 ? 128 : 256;
  // Query vectors per KV head, and per CTA: 16, 32 or 64.
  const int64_t vectors = static_cast<int64_t>(shape.n_queries) * p.group;
  int mw = vectors <= 16 ? 1 : vectors <= 32 ? 2 : 4;
  int device = 0, sms = 0, ctas_per_sm = 0;
  MSA_RETURN_IF_ERROR(CudaStatus(cudaGetDevice(&device), "cudaGetDevice"));
  MSA_RETURN_IF_ERROR(SmCount(device, &sms));
  auto occupancy = [&]() -> Status {
    switch (d_pad) {
      case 64: return cuda::SplitKernelOccupancy<64>(device, mw, &ctas_per_sm);
      case 128: return cuda::SplitKernelOccupancy<128>(device, mw, &ctas_per_sm);
      default: return cuda::SplitKernelOccupancy<256>(device, mw, &ctas_per_sm);
    }
  };
  MSA_RETURN_IF_ERROR(occupancy());
  // A short selection caps the splits (kMinBlocksPerSplit blocks each): if
  // the grid then leaves SMs idle, fewer query vectors per CTA give more
  // CTAs (the K/V a KV head's CTAs share is read from L2 again, which at
  // such budgets it holds). 8 queries over 2K tokens: 128 CTAs -> 256.
  const int64_t max_splits = std::max(1, selection.max_blocks / kMinBlocksPerSplit);
  while (mw > 1 && ((vectors + 16 * mw - 1) / (16 * mw)) * shape.kv_heads * max_splits <
                       static_cast<int64_t>(sms) * ctas_per_sm) {
    const int fits = ctas_per_sm;
    mw /= 2;
    if (!occupancy().ok()) {  // the smaller CTA does not fit this device: keep the last one
      mw *= 2;
      ctas_per_sm = fits;
      break;
    }
  }
  const int64_t m_tiles = (vectors + 16 * mw - 1) / (16 * mw);
  if (m_tiles > INT_MAX) return Status::InvalidArgument("too many query rows for one call");

  // Splits: enough CTAs to fill the GPU about once, at least kMinBlocksPerSplit
  // blocks each (where the selection has that many) and at most
  // kMaxBlocksPerSplit; then even out the pieces.
  const int64_t base = m_tiles * shape.kv_heads;
  const int64_t resident = static_cast<int64_t>(sms) * ctas_per_sm;
  int64_t splits = std::max<int64_t>(1, resident / base);
  splits = std::max<int64_t>(splits, (selection.max_blocks + kMaxBlocksPerSplit - 1) / kMaxBlocksPerSplit);
  splits = std::min<int64_t>(splits, max_splits);
  p.blocks_per_split = static_cast<int>((selection.max_blocks + splits - 1) / splits);
  p.num_splits = p.blocks_per_split == 0 ? 1
                                         : static_cast<int>((selection.max_blocks + p.blocks_per_split - 1) /
                                                            p.blocks_per_split);

  auto launch = [&]() -> Status {
    switch (d_pad) {
      case 64: return cuda::LaunchSplitKernel<64>(p, mw, static_cast<int>(m_tiles), cu_stream);
      case 128: return cuda::LaunchSplitKernel<128>(p, mw, static_cast<int>(m_tiles), cu_stream);
      default: return cuda::LaunchSplitKernel<256>(p, mw, static_cast<int>(m_tiles), cu_stream);
    }
  };
  if (p.num_splits == 1) return launch();

  const size_t n_vectors = static_cast<size_t>(shape.n_queries) * shape.q_heads;
  const size_t parts = static_cast<size_t>(p.num_splits) * n_vectors;
  const size_t bytes = parts * (static_cast<size_t>(shape.head_dim) + 2) * sizeof(float);
  cudaMemPool_t pool;
  MSA_RETURN_IF_ERROR(WorkspacePool(device, &pool));
  void* workspace = nullptr;
  MSA_RETURN_IF_ERROR(CudaStatus(cudaMallocFromPoolAsync(&workspace, bytes, pool, cu_stream),
                                 "allocating " + std::to_string(bytes) + " bytes of attention workspace"));
  p.part_acc = static_cast<float*>(workspace);
  p.part_m = p.part_acc + parts * shape.head_dim;
  p.part_l = p.part_m + parts;
  const Status st = [&]() -> Status {
    MSA_RETURN_IF_ERROR(launch());
    cudaLaunchConfig_t config{};
    config.gridDim = dim3(static_cast<unsigned>(n_vectors));
    config.blockDim = dim3(kMergeWarps * 32);
    config.stream = cu_stream;
    cudaLaunchAttribute attr[1];
    attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attr[0].val.programmaticStreamSerializationAllowed = 1;
    config.attrs = attr;
    config.numAttrs = 1;
    return CudaStatus(cudaLaunchKernelEx(&config, MergeSplitsKernel, static_cast<int>(n_vectors), shape.head_dim,
                                         p.num_splits, static_cast<const float*>(p.part_acc),
                                         static_cast<const float*>(p.part_m), static_cast<const float*>(p.part_l),
                                         out, lse),
                      "launching the split merge kernel");
  }();
  // Stream-ordered: the memory returns to the pool once the kernels are done.
  const Status freed = CudaStatus(cudaFreeAsync(workspace, cu_stream), "freeing the attention workspace");
  return st.ok() ? freed : st;
}

Status SparseAttentionCudaF16Host(const AttentionShape& shape, const BlockTable<uint16_t>& table,
                                  const Selection& selection, const float* q, float* out,
                                  float* lse) {
  MSA_RETURN_IF_ERROR(ValidateArguments(shape, table, selection, q, out));
  if (shape.n_queries == 0) return Status::OK();
  MSA_RETURN_IF_ERROR(ValidateHostSelection(shape, table, selection));

  const size_t d = shape.head_dim;
  const size_t rows = static_cast<size_t>(shape.n_queries) * shape.q_heads;
  const size_t n_sel = static_cast<size_t>(shape.n_queries) * shape.kv_heads;
  const size_t kv_elems = static_cast<size_t>(table.num_blocks) * shape.block_tokens * d;

  DeviceBuffer d_keys, d_values, d_len, d_index, d_count, d_q, d_out, d_lse;
  MSA_RETURN_IF_ERROR(d_keys.Init(kv_elems * sizeof(uint16_t), table.keys, "keys"));
  MSA_RETURN_IF_ERROR(d_values.Init(kv_elems * sizeof(uint16_t), table.values, "values"));
  MSA_RETURN_IF_ERROR(d_len.Init(table.num_blocks * sizeof(int32_t), table.block_len, "block_len"));
  MSA_RETURN_IF_ERROR(d_index.Init(n_sel * selection.max_blocks * sizeof(int32_t),
                                   selection.block_index, "block_index"));
  MSA_RETURN_IF_ERROR(d_count.Init(n_sel * sizeof(int32_t), selection.count, "count"));
  MSA_RETURN_IF_ERROR(d_q.Init(rows * d * sizeof(float), q, "q"));
  MSA_RETURN_IF_ERROR(d_out.Init(rows * d * sizeof(float), nullptr, "out"));
  if (lse != nullptr) MSA_RETURN_IF_ERROR(d_lse.Init(rows * sizeof(float), nullptr, "lse"));

  const BlockTable<uint16_t> d_table{table.num_blocks, d_keys.get<const uint16_t>(),
                                     d_values.get<const uint16_t>(), d_len.get<const int32_t>()};
  const Selection d_selection{selection.max_blocks, d_index.get<const int32_t>(),
                              d_count.get<const int32_t>()};
  // The legacy default stream: the synchronous copies around it order themselves after it.
  MSA_RETURN_IF_ERROR(SparseAttentionCudaF16(shape, d_table, d_selection, d_q.get<const float>(),
                                             d_out.get<float>(),
                                             lse != nullptr ? d_lse.get<float>() : nullptr,
                                             nullptr));
  MSA_RETURN_IF_ERROR(CudaStatus(cudaStreamSynchronize(nullptr), "running the sparse attention kernel"));
  MSA_RETURN_IF_ERROR(CudaStatus(
      cudaMemcpy(out, d_out.get<const float>(), rows * d * sizeof(float), cudaMemcpyDeviceToHost),
      "copying out to the host"));
  if (lse != nullptr) {
    MSA_RETURN_IF_ERROR(CudaStatus(
        cudaMemcpy(lse, d_lse.get<const float>(), rows * sizeof(float), cudaMemcpyDeviceToHost),
        "copying lse to the host"));
  }
  return Status::OK();
}

Status SparseAttentionCudaQuantizedHost(const AttentionShape& shape, const BlockTable<uint8_t>& table,
                                        const QuantizedPageLayout& layout, const Selection& selection,
                                        const float* q, float* out, float* lse) {
  MSA_RETURN_IF_ERROR(ValidateArguments(shape, table, selection, q, out));
  if (shape.n_queries == 0) return Status::OK();
  MSA_RETURN_IF_ERROR(ValidateHostSelection(shape, table, selection));

  const size_t d = shape.head_dim;
  const size_t rows = static_cast<size_t>(shape.n_queries) * shape.q_heads;
  const size_t n_sel = static_cast<size_t>(shape.n_queries) * shape.kv_heads;
  const size_t page_bytes = static_cast<size_t>(table.num_blocks) * layout.page_bytes;

  DeviceBuffer d_keys, d_values, d_len, d_index, d_count, d_q, d_out, d_lse;
  MSA_RETURN_IF_ERROR(d_keys.Init(page_bytes, table.keys, "key pages"));
  MSA_RETURN_IF_ERROR(d_values.Init(page_bytes, table.values, "value pages"));
  MSA_RETURN_IF_ERROR(d_len.Init(table.num_blocks * sizeof(int32_t), table.block_len, "block_len"));
  MSA_RETURN_IF_ERROR(d_index.Init(n_sel * selection.max_blocks * sizeof(int32_t),
                                   selection.block_index, "block_index"));
  MSA_RETURN_IF_ERROR(d_count.Init(n_sel * sizeof(int32_t), selection.count, "count"));
  MSA_RETURN_IF_ERROR(d_q.Init(rows * d * sizeof(float), q, "q"));
  MSA_RETURN_IF_ERROR(d_out.Init(rows * d * sizeof(float), nullptr, "out"));
  if (lse != nullptr) MSA_RETURN_IF_ERROR(d_lse.Init(rows * sizeof(float), nullptr, "lse"));

  const BlockTable<uint8_t> d_table{table.num_blocks, d_keys.get<const uint8_t>(), d_values.get<const uint8_t>(),
                                    d_len.get<const int32_t>()};
  const Selection d_selection{selection.max_blocks, d_index.get<const int32_t>(),
                              d_count.get<const int32_t>()};
  // The legacy default stream: the synchronous copies around it order themselves after it.
  MSA_RETURN_IF_ERROR(SparseAttentionCudaQuantized(shape, d_table, layout, d_selection, d_q.get<const float>(),
                                                   d_out.get<float>(), lse != nullptr ? d_lse.get<float>() : nullptr,
                                                   nullptr));
  MSA_RETURN_IF_ERROR(CudaStatus(cudaStreamSynchronize(nullptr), "running the sparse attention kernel"));
  MSA_RETURN_IF_ERROR(CudaStatus(
      cudaMemcpy(out, d_out.get<const float>(), rows * d * sizeof(float), cudaMemcpyDeviceToHost),
      "copying out to the host"));
  if (lse != nullptr) {
    MSA_RETURN_IF_ERROR(CudaStatus(
        cudaMemcpy(lse, d_lse.get<const float>(), rows * sizeof(float), cudaMemcpyDeviceToHost),
        "copying lse to the host"));
  }
  return Status::OK();
}

Status CudaCopyToHostAsync(void* host, const void* device, size_t bytes, void* stream) {
  if (bytes == 0) return Status::OK();
  return CudaStatus(cudaMemcpyAsync(host, device, bytes, cudaMemcpyDeviceToHost, static_cast<cudaStream_t>(stream)),
                    "copying " + std::to_string(bytes) + " bytes from the GPU");
}

Status CudaSynchronize(void* stream, const char* what) {
  return CudaStatus(cudaStreamSynchronize(static_cast<cudaStream_t>(stream)), what);
}

}  // namespace msa::attention
