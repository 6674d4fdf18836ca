// CUDA sparse attention over gathered fp16 blocks (see sparse_attention_cuda.h
// for the contract and sparse_attention_cpu.h for the function computed).
//
// Kernel layout. One CTA per (query row i, KV head g, chunk of up to kHeads
// query heads of g's GQA group): the heads of a chunk share every K/V load,
// which is what makes GQA cheap. The CTA's 4 warps are cut into "token groups"
// of kTg lanes, kTg = the power of two >= head_dim/8: lane c of a group holds
// channels [8c, 8c+8) of one token (one 16-byte load of K, one of V), so a
// group reads a whole K row and a whole V row, coalesced. Groups stride over
// the tokens of the selection (the selected blocks flattened, so short blocks
// leave no lanes idle) and keep, per head, an online softmax: running max m,
// running sum l and the unnormalised output acc of their 8 channels. At the
// end every group parks (m, l, acc) in shared memory and the CTA merges them
// exactly as flash-attention merges partial softmaxes.
//
// Precision: K/V are widened to float on load; scores, exponentials, sums and
// the output are float32 throughout (expf, not the fast intrinsic).
//
// Not done yet (a first kernel): splitting one selection over several CTAs
// (flash-decoding), which a decode step with few rows x KV heads needs to
// fill the GPU; tensor cores for prefill chunks with many rows.
#include "attention/sparse_attention_cuda.h"

#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <climits>
#include <cstddef>
#include <cstdint>
#include <string>

namespace msa::attention {

namespace {

constexpr int kWarps = 4;
constexpr int kThreads = kWarps * 32;
// Blocks of the selection staged in shared memory at a time (index and
// token prefix), one per thread so one load round fills the tile.
constexpr int kTile = kThreads;
constexpr int kMaxHeadDim = 256;
constexpr int kMaxHeadsPerCta = 8;
// Shared memory a CTA may use without cudaFuncSetAttribute.
constexpr size_t kDefaultSmemLimit = 48 * 1024;

struct KernelParams {
  int q_heads;
  int kv_heads;
  int group;        // query heads per KV head
  int head_chunks;  // ceil(group / kHeads)
  int head_dim;
  int nchunks;      // head_dim / 8: 16-byte chunks of a K/V row
  int tg;           // lanes per token group, power of two >= nchunks
  int tg_log2;
  int block_tokens;
  int num_blocks;
  float scale;
  const __half* keys;
  const __half* values;
  const int32_t* block_len;
  int max_blocks;
  const int32_t* block_index;
  const int32_t* count;
  const float* q;
  float* out;
  float* lse;  // may be null
};

__device__ __forceinline__ void Widen8(const uint4& raw, float (&f)[8]) {
  const __half2* h = reinterpret_cast<const __half2*>(&raw);
#pragma unroll
  for (int e = 0; e < 4; ++e) {
    const float2 p = __half22float2(h[e]);
    f[2 * e] = p.x;
    f[2 * e + 1] = p.y;
  }
}

// Flat token f of the current tile -> row of the K/V table (block * block_tokens + t).
__device__ __forceinline__ size_t TokenRow(const int* s_block, const int* s_start, int n_tile,
                                           int block_tokens, int f) {
  // Last k with s_start[k] <= f; s_start[0] == 0 <= f. Blocks of length 0
  // (ignored entries) share their start with the next block, so the last
  // such k is always a block that really holds f.
  int lo = 0, hi = n_tile;
  while (hi - lo > 1) {
    const int mid = (lo + hi) >> 1;
    if (s_start[mid] <= f) {
      lo = mid;
    } else {
      hi = mid;
    }
  }
  return static_cast<size_t>(s_block[lo]) * block_tokens + (f - s_start[lo]);
}

template <int kHeads>
__global__ void __launch_bounds__(kThreads) SparseAttentionKernel(KernelParams p) {
  __shared__ int s_block[kTile];
  __shared__ int s_start[kTile + 1];
  extern __shared__ float smem[];

  const int tid = threadIdx.x;
  const int lane = tid & 31;
  const int chunk = lane & (p.tg - 1);  // this lane's 8 channels: [8*chunk, 8*chunk+8)
  const int groups_per_warp = 32 >> p.tg_log2;
  const int n_groups = kWarps * groups_per_warp;
  const int gid = (tid >> 5) * groups_per_warp + (lane >> p.tg_log2);
  const bool chunk_active = chunk < p.nchunks;
  const int d = p.head_dim;

  const int row = blockIdx.x;
  const int kv = blockIdx.y / p.head_chunks;
  const int head_chunk = blockIdx.y % p.head_chunks;
  const int first_head = kv * p.group + head_chunk * kHeads;  // global query head
  const int n_heads = min(kHeads, p.group - head_chunk * kHeads);

  // This lane's slice of q for each head of the chunk; absent heads get 0
  // (their scores are computed and discarded: cheaper than divergence).
  float q[kHeads][8];
#pragma unroll
  for (int h = 0; h < kHeads; ++h) {
    const float* qh = p.q + (static_cast<size_t>(row) * p.q_heads + first_head + h) * d + chunk * 8;
#pragma unroll
    for (int e = 0; e < 8; ++e) q[h][e] = (h < n_heads && chunk_active) ? qh[e] : 0.0f;
  }

  float m[kHeads], l[kHeads], acc[kHeads][8];
#pragma unroll
  for (int h = 0; h < kHeads; ++h) {
    m[h] = -INFINITY;
    l[h] = 0.0f;
#pragma unroll
    for (int e = 0; e < 8; ++e) acc[h][e] = 0.0f;
  }

  const size_t sel = static_cast<size_t>(row) * p.kv_heads + kv;
  const int count = min(max(p.count[sel], 0), p.max_blocks);
  const int32_t* blocks = p.block_index + sel * p.max_blocks;
  const uint4* keys = reinterpret_cast<const uint4*>(p.keys);
  const uint4* values = reinterpret_cast<const uint4*>(p.values);

  for (int j0 = 0; j0 < count; j0 += kTile) {
    const int n_tile = min(kTile, count - j0);
    __syncthreads();  // the previous tile is no longer read
    if (tid < n_tile) {
      const int b = blocks[j0 + tid];
      // The contract says indices are valid; an invalid one is skipped rather
      // than read out of bounds, which would poison the whole CUDA context.
      const bool ok = b >= 0 && b < p.num_blocks;
      s_block[tid] = ok ? b : 0;
      s_start[tid + 1] = ok ? min(max(p.block_len[b], 0), p.block_tokens) : 0;
    }
    __syncthreads();
    if (tid == 0) {  // prefix sum of at most kTile lengths: negligible next to the tile's tokens
      s_start[0] = 0;
      for (int k = 1; k <= n_tile; ++k) s_start[k] += s_start[k - 1];
    }
    __syncthreads();
    const int total = s_start[n_tile];

    // Software pipeline: the next token's K/V are in flight while this one is used.
    uint4 k_next = make_uint4(0, 0, 0, 0), v_next = make_uint4(0, 0, 0, 0);
    if (gid < total && chunk_active) {
      const size_t r = TokenRow(s_block, s_start, n_tile, p.block_tokens, gid);
      k_next = __ldg(keys + r * p.nchunks + chunk);
      v_next = __ldg(values + r * p.nchunks + chunk);
    }
    // t0 is uniform across the CTA, so every lane runs the same iterations and
    // the shuffles below see the whole warp.
    for (int t0 = 0; t0 < total; t0 += n_groups) {
      const bool valid = t0 + gid < total;
      const uint4 k_raw = k_next, v_raw = v_next;
      const int f_next = t0 + n_groups + gid;
      if (f_next < total && chunk_active) {
        const size_t r = TokenRow(s_block, s_start, n_tile, p.block_tokens, f_next);
        k_next = __ldg(keys + r * p.nchunks + chunk);
        v_next = __ldg(values + r * p.nchunks + chunk);
      }
      float kf[8], vf[8];
      Widen8(k_raw, kf);
      Widen8(v_raw, vf);

      float s[kHeads];
#pragma unroll
      for (int h = 0; h < kHeads; ++h) {
        float part = 0.0f;
#pragma unroll
        for (int e = 0; e < 8; ++e) part = fmaf(q[h][e], kf[e], part);
        for (int off = p.tg >> 1; off > 0; off >>= 1) part += __shfl_xor_sync(0xffffffffu, part, off);
        s[h] = p.scale * part;
      }
      if (valid) {
#pragma unroll
        for (int h = 0; h < kHeads; ++h) {
          // One exponential per token: e = exp(-|s - m|) is the weight of the
          // new token when s <= m, else the rescale of the old state. The
          // first token has m = -inf: e = 0, the empty state vanishes.
          const float e = expf(-fabsf(s[h] - m[h]));
          const bool new_max = s[h] > m[h];
          const float alpha = new_max ? e : 1.0f;
          const float w = new_max ? 1.0f : e;
          m[h] = new_max ? s[h] : m[h];
          l[h] = fmaf(l[h], alpha, w);
#pragma unroll
          for (int c = 0; c < 8; ++c) acc[h][c] = fmaf(acc[h][c], alpha, w * vf[c]);
        }
      }
    }
  }

  // Merge the token groups. Shared layout: acc [n_groups][kHeads][d], then
  // m [n_groups][kHeads] (reused for each group's final weight), l likewise.
  float* s_acc = smem;
  float* s_m = s_acc + static_cast<size_t>(n_groups) * kHeads * d;
  float* s_l = s_m + n_groups * kHeads;
  if (chunk_active) {
#pragma unroll
    for (int h = 0; h < kHeads; ++h) {
      float* dst = s_acc + (static_cast<size_t>(gid) * kHeads + h) * d + chunk * 8;
#pragma unroll
      for (int e = 0; e < 8; ++e) dst[e] = acc[h][e];
    }
  }
  if (chunk == 0) {
#pragma unroll
    for (int h = 0; h < kHeads; ++h) {
      s_m[gid * kHeads + h] = m[h];
      s_l[gid * kHeads + h] = l[h];
    }
  }
  __syncthreads();
  if (tid < kHeads) {
    const int h = tid;
    float mx = -INFINITY;
    for (int g = 0; g < n_groups; ++g) mx = fmaxf(mx, s_m[g * kHeads + h]);
    float sum = 0.0f;
    if (mx != -INFINITY) {
      for (int g = 0; g < n_groups; ++g) {
        const float mg = s_m[g * kHeads + h];
        if (mg != -INFINITY) sum += s_l[g * kHeads + h] * expf(mg - mx);
      }
    }
    // Weight of each group's acc in the output; 0 for empty groups and for an
    // empty selection, whose output is then 0 as in the CPU path.
    for (int g = 0; g < n_groups; ++g) {
      const float mg = s_m[g * kHeads + h];
      s_m[g * kHeads + h] = (mg == -INFINITY) ? 0.0f : expf(mg - mx) / sum;
    }
    if (p.lse != nullptr && h < n_heads) {
      p.lse[static_cast<size_t>(row) * p.q_heads + first_head + h] =
          (mx == -INFINITY) ? -INFINITY : mx + logf(sum);
    }
  }
  __syncthreads();
  for (int idx = tid; idx < n_heads * d; idx += kThreads) {
    const int h = idx / d;
    const int c = idx - h * d;
    float o = 0.0f;
    for (int g = 0; g < n_groups; ++g) {
      o = fmaf(s_acc[(static_cast<size_t>(g) * kHeads + h) * d + c], s_m[g * kHeads + h], o);
    }
    p.out[(static_cast<size_t>(row) * p.q_heads + first_head + h) * d + c] = o;
  }
}

// "<what>: <cudaErrorName> (<description>)" as a Status. Errors meaning this
// build or driver cannot use the device at all are NotSupported; the rest are
// failures of a call that should have worked.
Status CudaStatus(cudaError_t err, const std::string& what) {
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

int HeadsPerCta(int group) {
  if (group <= 1) return 1;
  if (group <= 2) return 2;
  if (group <= 4) return 4;
  return kMaxHeadsPerCta;
}

Status ValidateArguments(const AttentionShape& s, const BlockTable<uint16_t>& table,
                         const Selection& selection, const float* q, const float* out) {
  if (s.n_queries < 0) return Status::InvalidArgument("n_queries < 0: " + std::to_string(s.n_queries));
  if (s.q_heads <= 0 || s.kv_heads <= 0 || s.q_heads % s.kv_heads != 0) {
    return Status::InvalidArgument("q_heads " + std::to_string(s.q_heads) +
                                   " must be a positive multiple of kv_heads " +
                                   std::to_string(s.kv_heads));
  }
  if (s.head_dim <= 0 || s.head_dim % 8 != 0 || s.head_dim > kMaxHeadDim) {
    return Status::InvalidArgument("head_dim " + std::to_string(s.head_dim) +
                                   ": the CUDA kernel needs a multiple of 8 in [8, 256]");
  }
  // The kernel sums block lengths of a tile of kTile blocks in an int.
  if (s.block_tokens <= 0 || s.block_tokens > INT_MAX / kTile) {
    return Status::InvalidArgument("block_tokens out of range: " + std::to_string(s.block_tokens));
  }
  if (table.num_blocks < 0 || selection.max_blocks < 0) {
    return Status::InvalidArgument("negative num_blocks or max_blocks");
  }
  const int head_chunks = (s.q_heads / s.kv_heads + kMaxHeadsPerCta - 1) / kMaxHeadsPerCta;
  if (static_cast<long long>(s.kv_heads) * head_chunks > 65535) {
    return Status::InvalidArgument("too many KV heads for one grid column: " +
                                   std::to_string(s.kv_heads));
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

template <int kHeads>
Status Launch(const KernelParams& params, int n_queries, int kv_heads, cudaStream_t stream) {
  const int groups_per_warp = 32 / params.tg;
  const size_t n_groups = static_cast<size_t>(kWarps) * groups_per_warp;
  const size_t smem =
      (n_groups * kHeads * params.head_dim + 2 * n_groups * kHeads) * sizeof(float);
  // head_dim <= 256 bounds n_groups * head_dim by kThreads * 8, so this holds.
  if (smem > kDefaultSmemLimit) {
    return Status::Internal("sparse attention kernel needs " + std::to_string(smem) +
                            " bytes of shared memory");
  }
  const dim3 grid(static_cast<unsigned>(n_queries), static_cast<unsigned>(kv_heads * params.head_chunks));
  SparseAttentionKernel<kHeads><<<grid, kThreads, smem, stream>>>(params);
  return CudaStatus(cudaGetLastError(), "launching the sparse attention kernel");
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
Status ValidateHostSelection(const AttentionShape& s, const BlockTable<uint16_t>& table,
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
  err = cudaFuncGetAttributes(&attr, SparseAttentionKernel<1>);
  if (err != cudaSuccess) {
    if (why) *why = std::string("CUDA device unusable by this build: ") + cudaGetErrorString(err);
    (void)cudaGetLastError();
    return false;
  }
  return true;
}

Status SparseAttentionCudaF16(const AttentionShape& shape, const BlockTable<uint16_t>& table,
                              const Selection& selection, const float* q, float* out, float* lse,
                              void* stream) {
  MSA_RETURN_IF_ERROR(ValidateArguments(shape, table, selection, q, out));
  if (shape.n_queries == 0) return Status::OK();

  KernelParams p{};
  p.q_heads = shape.q_heads;
  p.kv_heads = shape.kv_heads;
  p.group = shape.q_heads / shape.kv_heads;
  const int heads = HeadsPerCta(p.group);
  p.head_chunks = (p.group + heads - 1) / heads;
  p.head_dim = shape.head_dim;
  p.nchunks = shape.head_dim / 8;
  p.tg = 1;
  p.tg_log2 = 0;
  while (p.tg < p.nchunks) {
    p.tg <<= 1;
    ++p.tg_log2;
  }
  p.block_tokens = shape.block_tokens;
  p.num_blocks = table.num_blocks;
  p.scale = shape.scale;
  p.keys = reinterpret_cast<const __half*>(table.keys);
  p.values = reinterpret_cast<const __half*>(table.values);
  p.block_len = table.block_len;
  p.max_blocks = selection.max_blocks;
  p.block_index = selection.block_index;
  p.count = selection.count;
  p.q = q;
  p.out = out;
  p.lse = lse;

  auto s = static_cast<cudaStream_t>(stream);
  switch (heads) {
    case 1: return Launch<1>(p, shape.n_queries, shape.kv_heads, s);
    case 2: return Launch<2>(p, shape.n_queries, shape.kv_heads, s);
    case 4: return Launch<4>(p, shape.n_queries, shape.kv_heads, s);
    default: return Launch<kMaxHeadsPerCta>(p, shape.n_queries, shape.kv_heads, s);
  }
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

}  // namespace msa::attention
