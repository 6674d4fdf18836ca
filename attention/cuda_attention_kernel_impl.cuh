// Definitions of SplitKernel and its launch helpers (see
// cuda_attention_kernel.cuh for the design). Included only by
// cuda_attention_d{64,128,256}.cu, each of which instantiates one head dim.
#pragma once

#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cfloat>
#include <cmath>
#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <type_traits>
#include <utility>

#include "attention/cuda_attention_kernel.cuh"
#include "attention/quantized_pages.h"

namespace msa::attention::cuda {

// Tokens per K/V tile: 64 keeps two CTAs' double buffers in an SM; at D = 256
// a 32-token tile does (and keeps the fp32 output tile in registers).
template <int D>
__host__ __device__ constexpr int TileTokens() {
  return D == 256 ? 32 : 64;
}
// Shared-memory row stride in halves: 16 bytes of padding make the 8 rows an
// ldmatrix reads fall in distinct banks.
template <int D>
__host__ __device__ constexpr int RowStride() {
  return D + 8;
}

// cp.async pipeline depth: three tiles in flight where two CTAs per SM still
// fit (decode, D <= 128), else two.
template <int D, int MW>
__host__ __device__ constexpr int Stages() {
  return (MW == 1 && D <= 128) ? 3 : 2;
}

template <int D, int MW>
constexpr size_t SplitSmemBytes() {
  constexpr size_t q = 2u * 16 * MW * RowStride<D>() * sizeof(__half);           // Q hi, lo
  constexpr size_t kv = 2u * Stages<D, MW>() * TileTokens<D>() * RowStride<D>() * sizeof(__half);  // K, V
  constexpr size_t ints = (kMaxBlocksPerSplit + (kMaxBlocksPerSplit + 4) + 4 + 64 + 64) * sizeof(int);
  return q + kv + ints + Stages<D, MW>() * TileTokens<D>() * sizeof(int32_t);
}
// Two one-query CTAs (three stages) per SM on sm_90 (228 KB, 1 KB of it
// reserved per CTA): the decode path's occupancy, which a layout growing
// past this would halve silently.
static_assert(2 * (SplitSmemBytes<128, 1>() + 1024) <= 228 * 1024);

__device__ __forceinline__ uint32_t SmemAddr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// 16 bytes global -> shared, bypassing L1; src_bytes 0 writes zeros.
__device__ __forceinline__ void CpAsync16(void* dst, const void* src, int src_bytes) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(SmemAddr(dst)), "l"(src),
               "r"(src_bytes)
               : "memory");
}
// BYTES (4 or 8) global -> shared (through L1: .cg takes only 16).
template <int BYTES>
__device__ __forceinline__ void CpAsyncSmall(void* dst, const void* src) {
  asm volatile("cp.async.ca.shared.global [%0], [%1], %2;\n" ::"r"(SmemAddr(dst)), "l"(src), "n"(BYTES) : "memory");
}
__device__ __forceinline__ void PrefetchL1(const void* p) {
  asm volatile("prefetch.global.L1 [%0];\n" ::"l"(p));
}
__device__ __forceinline__ void CpAsyncCommit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void CpAsyncWait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

__device__ __forceinline__ void LdMatrixX4(uint32_t (&r)[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(SmemAddr(p)));
}
__device__ __forceinline__ void LdMatrixX4Trans(uint32_t (&r)[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(SmemAddr(p)));
}

// c += a (16x16, row) * b (16x8, col); fp16 operands, fp32 accumulators.
__device__ __forceinline__ void Mma16816(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
      "{%8, %9}, {%0, %1, %2, %3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// How far (log2 units) a score may pass a row's reference maximum before
// the reference moves: probabilities stay in (0, 2^8], far inside fp16 and
// float range.
constexpr float kRescaleSlack = 8.0f;

// 2^x in one MUFU instruction (exp2f adds a denormal fix-up around it).
// Results below 2^-126 flush to zero: a probability that small, next to the
// running maximum's 1, changes no float32 sum. exp2(-inf) is 0.
__device__ __forceinline__ float Exp2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}

__device__ __forceinline__ uint32_t AsU32(__half2 h) { return *reinterpret_cast<uint32_t*>(&h); }

// (x, y) -> fp16 hi pair and the fp16 rounding of what hi misses.
__device__ __forceinline__ void SplitHiLo(float x, float y, uint32_t* hi, uint32_t* lo) {
  const __half2 h = __floats2half2_rn(x, y);
  const float2 hf = __half22float2(h);
  *hi = AsU32(h);
  *lo = AsU32(__floats2half2_rn(x - hf.x, y - hf.y));
}

// Dequantises one stage of BITS-bit codes (keys and values, quantised
// pages: attention/quantized_pages.h) into its fp16 tiles, in place: the
// codes of row n sit in the second half of its fp16 row (bytes [D, D +
// head_dim * BITS / 8)), put there by the loads. Every thread first takes its code
// chunks (8 elements: BITS bytes) into registers, then (after a barrier)
// writes fp16; all threads call it. rows: the stage's tokens as page tokens,
// (block << 8) | token in block (-1 past the run). The parameters were
// prefetched into L1 with the codes. Channels past head_dim and rows past
// the run become 0, as the fp16 loads' zero fill makes them.
template <int D, int BN, int BITS>
__device__ __forceinline__ void DequantizeStage(const SplitParams& p, __half* tk, __half* tv, const int32_t* rows) {
  static_assert(BITS == 8 || BITS == 4);
  using Chunk = std::conditional_t<BITS == 8, uint2, uint32_t>;
  constexpr int LD = RowStride<D>();
  constexpr int CH = D / 8;
  constexpr int kPer = BN * CH / kSplitThreads;
  static_assert(BN * CH % kSplitThreads == 0);
  const int dchunks = p.head_dim / 8;
  const auto* kpages = reinterpret_cast<const unsigned char*>(p.keys);
  const auto* vpages = reinterpret_cast<const unsigned char*>(p.values);
  Chunk kc[kPer], vc[kPer];
#pragma unroll
  for (int i = 0; i < kPer; ++i) {
    const int c = threadIdx.x + i * kSplitThreads;
    const int n = c / CH;
    const int part = c - n * CH;
    kc[i] = *reinterpret_cast<const Chunk*>(reinterpret_cast<const unsigned char*>(tk + n * LD) + D + part * BITS);
    vc[i] = *reinterpret_cast<const Chunk*>(reinterpret_cast<const unsigned char*>(tv + n * LD) + D + part * BITS);
  }
  __syncthreads();
#pragma unroll
  for (int i = 0; i < kPer; ++i) {
    const int c = threadIdx.x + i * kSplitThreads;
    const int n = c / CH;
    const int part = c - n * CH;
    const int32_t r = rows[n];
    uint4 kout = make_uint4(0, 0, 0, 0), vout = make_uint4(0, 0, 0, 0);
    if (r >= 0 && part < dchunks) {
      const size_t page = static_cast<size_t>(r >> 8) * p.page_bytes;
      const int t = r & 0xff;
      // Keys: the (scale, min) of channels [8 part, 8 part + 8) in t's key
      // group; values: t's (scale, min) of the value group holding them.
      const size_t kparams = page + (BITS == 8 ? 0 : static_cast<size_t>(t / kInt4Group) * 2 * p.head_dim);
      const uint4 s8 = __ldg(reinterpret_cast<const uint4*>(kpages + kparams) + part);
      const uint4 m8 = __ldg(reinterpret_cast<const uint4*>(kpages + kparams + 2 * p.key_groups * p.head_dim) + part);
      const int vparam = BITS == 8 ? t : t * p.value_groups + part * 8 / static_cast<int>(kInt4Group);
      const auto* vpar = reinterpret_cast<const __half*>(vpages + page);
      const float vs = __half2float(vpar[vparam]);
      const float vm = __half2float(vpar[p.block_tokens * p.value_groups + vparam]);
      const __half2* s2 = reinterpret_cast<const __half2*>(&s8);
      const __half2* m2 = reinterpret_cast<const __half2*>(&m8);
      uint32_t ko[4], vo[4];
#pragma unroll
      for (int e = 0; e < 4; ++e) {  // elements 2e and 2e + 1 of the chunk
        float k0, k1, v0, v1;
        if constexpr (BITS == 8) {
          const uint32_t kw = e < 2 ? kc[i].x : kc[i].y, vw = e < 2 ? vc[i].x : vc[i].y;
          const int sh = (e & 1) * 16;
          k0 = static_cast<float>((kw >> sh) & 0xff), k1 = static_cast<float>((kw >> (sh + 8)) & 0xff);
          v0 = static_cast<float>((vw >> sh) & 0xff), v1 = static_cast<float>((vw >> (sh + 8)) & 0xff);
        } else {
          const int sh = e * 8;  // low nibble first
          k0 = static_cast<float>((kc[i] >> sh) & 0xf), k1 = static_cast<float>((kc[i] >> (sh + 4)) & 0xf);
          v0 = static_cast<float>((vc[i] >> sh) & 0xf), v1 = static_cast<float>((vc[i] >> (sh + 4)) & 0xf);
        }
        const float2 sf = __half22float2(s2[e]), mf = __half22float2(m2[e]);
        ko[e] = AsU32(__floats2half2_rn(fmaf(sf.x, k0, mf.x), fmaf(sf.y, k1, mf.y)));
        vo[e] = AsU32(__floats2half2_rn(fmaf(vs, v0, vm), fmaf(vs, v1, vm)));
      }
      kout = make_uint4(ko[0], ko[1], ko[2], ko[3]);
      vout = make_uint4(vo[0], vo[1], vo[2], vo[3]);
    }
    *reinterpret_cast<uint4*>(tk + n * LD + part * 8) = kout;
    *reinterpret_cast<uint4*>(tv + n * LD + part * 8) = vout;
  }
  __syncthreads();
}

template <int D, int MW>
__global__ void __launch_bounds__(kSplitThreads) SplitKernel(const SplitParams p) {
  constexpr int BN = TileTokens<D>();
  constexpr int M = 16 * MW;
  constexpr int LD = RowStride<D>();
  // Warps = MW row groups x TS token slices: with few query vectors (decode)
  // the four warps split each tile's tokens instead of idling, and merge their
  // softmax states at the end of a run.
  constexpr int TS = (4 / MW) < (BN / 16) ? (4 / MW) : (BN / 16);
  constexpr int SN = BN / TS;  // tokens of a warp's slice
  constexpr int NT = SN / 8;   // n8 tiles of a warp's scores
  constexpr int DT = D / 8;   // n8 tiles of the output
  constexpr int KS = D / 16;  // k16 steps of Q K^T
  constexpr int PS = SN / 16; // k16 steps of P V
  constexpr int CH = D / 8;   // 16-byte chunks of a padded K/V row
  constexpr int ST = Stages<D, MW>();
  // Tile loads: thread tid takes 16-byte chunk tid % CH of rows tid / CH +
  // RS * i, so that a warp's load instruction reads whole rows (contiguous
  // bytes: splitting a row's chunks over instructions cost 30% of the
  // bandwidth of one-query calls, the lines' sectors missing one by one).
  constexpr int RS = kSplitThreads / CH;   // rows per pass of the block
  constexpr int RPT = BN / RS;             // rows each thread loads per tile
  static_assert(kSplitThreads % CH == 0 && BN % RS == 0 && BN <= kSplitThreads);

  extern __shared__ __align__(16) unsigned char smem_raw[];
  __half* s_qhi = reinterpret_cast<__half*>(smem_raw);  // [M][LD]
  __half* s_qlo = s_qhi + M * LD;                         // [M][LD]
  __half* s_k = s_qlo + M * LD;                           // [ST][BN][LD]
  __half* s_v = s_k + ST * BN * LD;                       // [ST][BN][LD]
  int* s_block = reinterpret_cast<int*>(s_v + ST * BN * LD);  // [kMaxBlocksPerSplit]
  int* s_start = s_block + kMaxBlocksPerSplit;               // [kMaxBlocksPerSplit + 1]
  int* s_warp = s_start + kMaxBlocksPerSplit + 4;            // [4]: scan carries
  // [64 >= rows of a CTA]: s_same[i] = row r_first + i selects the same blocks
  // in this split as row r_first + i - 1.
  int* s_same = s_warp + 4;
  int* s_count = s_same + 64;  // [64]: blocks of row r_first + i in this split
  // [ST][BN]: table row of each token of each stage's tile (quantised
  // pages: page tokens), -1 past the run.
  int32_t* s_row = reinterpret_cast<int32_t*>(s_count + 64);

  // The merge kernel (a programmatic dependent launch) may start launching
  // now: every CTA of this grid has started, and it waits on griddepcontrol.wait
  // for this grid to finish, so its launch latency hides behind this kernel.
  asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");

  const int tid = threadIdx.x;
  const int lane = tid & 31;
  // Broadcast from lane 0 so that the compiler knows the warp index (and
  // everything derived from it) is warp-uniform: otherwise it guards every
  // ldmatrix and mma (.sync.aligned) with a WARPSYNC, one per instruction.
  const int warp = __shfl_sync(0xffffffffu, tid >> 5, 0);
  const int rg = warp % MW;  // row group: query vectors [16 rg, 16 rg + 16)
  const int ts = warp / MW;  // token slice: tokens [SN ts, SN ts + SN) of each tile (ts < TS)
  const int g = blockIdx.y;
  const int split = blockIdx.z;
  const int nq = p.n_queries * p.group;
  const int m0 = blockIdx.x * M;
  const int m_end = min(m0 + M, nq);
  const int j0 = split * p.blocks_per_split;
  const int j1 = j0 + p.blocks_per_split;
  const int dchunks = p.head_dim / 8;
  const int load_part = tid % CH;  // the 16-byte chunk of each row this thread loads
  const int load_row = tid / CH;   // its first row of each tile

  // Scores are scale * q.k with scale > 0 in the loop (see the softmax):
  // a negative scale's sign goes into Q (exactly), and a zero one becomes
  // the smallest normal float, whose scores round to the same uniform
  // softmax. A NaN scale stays NaN (so do the results, as on the CPU path).
  const float q_sign = p.score_scale < 0.0f ? -1.0f : 1.0f;
  const float scale = p.score_scale == 0.0f ? FLT_MIN : fabsf(p.score_scale);

  // Q of the CTA's vectors as hi/lo fp16; padding rows and channels are 0.
  // Thread tid takes channel pair c of vectors m_first + kQStep * k. The
  // loads go out kQBatch at a time before any is used: one at a time, each
  // a round trip to L2 or HBM, they cost a 64-vector CTA ~30 us.
  constexpr int kQStep = kSplitThreads / (D / 2);
  constexpr int kQIters = M / kQStep;
  constexpr int kQBatch = kQIters < 8 ? kQIters : 8;
  static_assert(kSplitThreads % (D / 2) == 0 && M % kQStep == 0 && kQIters % kQBatch == 0);
  const int q_c = (tid % (D / 2)) * 2;
  const int m_first = tid / (D / 2);
  int q_mg = m0 + m_first;                // the next vector's CTA-global index,
  int q_r = q_mg / p.group;               // its row
  int q_h = q_mg - q_r * p.group;         // and head in the group
  int any_q_lo = 0;
  for (int k0 = 0; k0 < kQIters; k0 += kQBatch) {
    float2 xy[kQBatch];
#pragma unroll
    for (int i = 0; i < kQBatch; ++i) {
      xy[i] = make_float2(0.0f, 0.0f);
      if (q_mg < m_end && q_c < p.head_dim) {
        const float* src = p.q + (static_cast<size_t>(q_r) * p.q_heads + g * p.group + q_h) * p.head_dim + q_c;
        xy[i] = make_float2(src[0], src[1]);
      }
      q_mg += kQStep;
      for (q_h += kQStep; q_h >= p.group; q_h -= p.group) ++q_r;
    }
#pragma unroll
    for (int i = 0; i < kQBatch; ++i) {
      const int m = m_first + (k0 + i) * kQStep;
      uint32_t hi, lo;
      SplitHiLo(q_sign * xy[i].x, q_sign * xy[i].y, &hi, &lo);
      *reinterpret_cast<uint32_t*>(s_qhi + m * LD + q_c) = hi;
      *reinterpret_cast<uint32_t*>(s_qlo + m * LD + q_c) = lo;
      any_q_lo |= lo != 0;
    }
  }
  // A q that fp16 holds exactly (an engine's fp16 activations) has no lo
  // part: its lo products would add zeros, so they are skipped (the same
  // sums, half the Q K^T tensor work).
  const bool q_lo = __syncthreads_or(any_q_lo) != 0;

  auto sel_of = [&](int r) { return static_cast<size_t>(r) * p.kv_heads + g; };
  // Blocks of row r in this split (the contract says count is in [0, max_blocks];
  // clamping keeps a bad count from reading outside block_index).
  auto blocks_in_split = [&](int r) {
    const int c = min(max(p.count[sel_of(r)], 0), p.max_blocks);
    return max(0, min(j1, c) - j0);
  };

  const int r_first = m0 / p.group;
  const int r_last = (m_end - 1) / p.group;
  const int n_rows = r_last - r_first + 1;  // <= M <= 64
  // Compare every row's selection with the previous row's at once (one
  // round trip of loads, not one per row): equal neighbours form runs.
  if (n_rows > 1) {
    if (tid < n_rows) s_count[tid] = blocks_in_split(r_first + tid);
    __syncthreads();
    if (tid >= 1 && tid < n_rows) s_same[tid] = s_count[tid] == s_count[tid - 1];
    __syncthreads();
    // Unrolled so that several iterations' index loads are in flight at once.
    const int bps = p.blocks_per_split;
#pragma unroll 4
    for (int idx = tid; idx < (n_rows - 1) * bps; idx += kSplitThreads) {
      const int i = idx / bps + 1;
      const int k = idx - (i - 1) * bps;
      const int r = r_first + i;
      if (k < s_count[i] && p.block_index[sel_of(r) * p.max_blocks + j0 + k] !=
                                p.block_index[sel_of(r - 1) * p.max_blocks + j0 + k]) {
        s_same[i] = 0;  // only zeros are written here: concurrent writers agree
      }
    }
    __syncthreads();
  }
  // The runs, compiled twice: with and without Q's lo products, so that no
  // tensor-core instruction sits under a run-time condition in the loop.
  auto attend_runs = [&](auto q_lo_tag) {
  constexpr bool kQLo = decltype(q_lo_tag)::value;
  for (int ra = r_first; ra <= r_last;) {
    // The previous run is done with s_block/s_start/s_row and the K/V buffers.
    // (Before the first run nothing needs ordering: the barriers of the scan
    // below also publish Q, and the Q loads overlap the selection's.)
    if (ra != r_first) __syncthreads();
    const int32_t* blocks = p.block_index + sel_of(ra) * p.max_blocks + j0;
    // Read this split's indices and their lengths before the count is known:
    // entries [j0, min(j1, max_blocks)) are inside block_index whatever count
    // says, and an entry past count is range-checked before block_len is read.
    // Two dependent round trips instead of four at every CTA's start.
    int b_spec = -1, len_spec = 0;
    if (tid < p.blocks_per_split && j0 + tid < p.max_blocks) b_spec = blocks[tid];
    const bool spec_ok = b_spec >= 0 && b_spec < p.num_blocks;
    if (spec_ok) len_spec = min(max(p.block_len[b_spec], 0), p.block_tokens);
    const int nb = blocks_in_split(ra);
    // Extend the run while the next row selects the same blocks here.
    int rb = ra;
    while (rb < r_last && s_same[rb + 1 - r_first]) ++rb;
    const int a_lo = max(m0, ra * p.group) - m0;  // the run's query vectors, CTA-local [a_lo, a_hi)
    const int a_hi = min(m_end, (rb + 1) * p.group) - m0;
    ra = rb + 1;

    // Token offsets of the run's blocks: a block-wide inclusive scan of lengths.
    int len = 0;
    if (tid < nb) {
      // An invalid index (the contract forbids it) is skipped rather than read
      // out of bounds, which would poison the whole CUDA context.
      s_block[tid] = spec_ok ? b_spec : 0;
      len = len_spec;
    }
    int incl = len;
#pragma unroll
    for (int off = 1; off < 32; off <<= 1) {
      const int y = __shfl_up_sync(0xffffffffu, incl, off);
      if (lane >= off) incl += y;
    }
    if (lane == 31) s_warp[warp] = incl;
    __syncthreads();
    for (int w = 0; w < warp; ++w) incl += s_warp[w];
    if (tid < nb) s_start[tid + 1] = incl;
    if (tid == 0) s_start[0] = 0;
    __syncthreads();
    const int total = s_start[nb];
    const int n_tiles = (total + BN - 1) / BN;

    float m_i[2] = {-INFINITY, -INFINITY};  // rows lane/4 and lane/4 + 8 of the warp's 16
    float l_i[2] = {0.0f, 0.0f};            // this lane's share of the row sums
    float acc[DT][4];
#pragma unroll
    for (int dt = 0; dt < DT; ++dt) {
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[dt][e] = 0.0f;
    }
    const bool warp_active = ts < TS && 16 * rg < a_hi && 16 * rg + 16 > a_lo;

    // Token `tid` of each tile (tid < BN) looks its table row up and
    // publishes it in s_row for the loads. Its block is found by a cursor
    // that only moves forward, as the tiles are looked up in order
    // (amortised one step per block).
    int cursor = 0;
    auto row_of = [&](int tile) -> int32_t {
      const int f = tile * BN + tid;
      if (f >= total) return -1;
      while (cursor + 1 < nb && s_start[cursor + 1] <= f) ++cursor;
      const int in_block = f - s_start[cursor];
      // Quantised pages: the page token (block << 8) | token, a page per
      // block (block_tokens <= 256 and fewer than 2^23 pages, checked at
      // launch); fp16: the row of the K/V table (< 2^31, checked at launch).
      return p.page_bits ? (s_block[cursor] << 8) | in_block : s_block[cursor] * p.block_tokens + in_block;
    };
    auto publish_row = [&](int tile) {
      if (tid < BN) s_row[(tile % ST) * BN + tid] = row_of(tile);
    };
    // After a barrier that publishes the stage's rows.
    auto issue_loads = [&](int stage) {
      __half* dk = s_k + stage * BN * LD;
      __half* dv = s_v + stage * BN * LD;
      if (p.page_bits) {
        const int32_t* rows = s_row + stage * BN;
        // Codes into the second half of each fp16 row, 16 bytes per copy
        // (16 int8 or 32 int4 codes; 8-byte copies cost twice the
        // instructions); DequantizeStage widens them.
        const auto* kp = reinterpret_cast<const unsigned char*>(p.keys);
        const auto* vp = reinterpret_cast<const unsigned char*>(p.values);
        const int bits = p.page_bits;
        const int row_bytes = p.head_dim * bits / 8;
        const int chunks = (row_bytes + 15) / 16;  // a row's 16-byte spans (the last may be short)
#pragma unroll 2
        for (int c = tid; c < BN * chunks; c += kSplitThreads) {
          const int n = c / chunks;
          const int part = c - n * chunks;
          const int32_t r = rows[n];
          if (r < 0) continue;
          const size_t page = static_cast<size_t>(r >> 8) * p.page_bytes;
          const int tok = r & 0xff;
          const size_t off = page + p.code_offset + static_cast<size_t>(tok) * row_bytes + part * 16;
          unsigned char* kdst = reinterpret_cast<unsigned char*>(dk + n * LD) + D + part * 16;
          unsigned char* vdst = reinterpret_cast<unsigned char*>(dv + n * LD) + D + part * 16;
          if (row_bytes % 16 == 0) {
            CpAsync16(kdst, kp + off, 16);
            CpAsync16(vdst, vp + off, 16);
          } else {  // rows of a multiple of 8 or of 4 bytes (head_dim % 8 == 0): copies of that size
            const int step = row_bytes % 8 == 0 ? 8 : 4;
            for (int b = 0; b < 16 && part * 16 + b < row_bytes; b += step) {
              if (step == 8) {
                CpAsyncSmall<8>(kdst + b, kp + off + b);
                CpAsyncSmall<8>(vdst + b, vp + off + b);
              } else {
                CpAsyncSmall<4>(kdst + b, kp + off + b);
                CpAsyncSmall<4>(vdst + b, vp + off + b);
              }
            }
          }
          // The parameters DequantizeStage will read: into L1 now, so that
          // their latency hides behind the tiles in flight (one line per 64
          // channels).
          const int first = part * 16 * 8 / bits;  // the copy's first channel
          if (first % 64 == 0) {
            const size_t kparams = page + (bits == 8 ? 0 : static_cast<size_t>(tok / kInt4Group) * 2 * p.head_dim);
            PrefetchL1(kp + kparams + 2 * first);
            PrefetchL1(kp + kparams + 2 * p.key_groups * p.head_dim + 2 * first);
          }
          if (part == 0) {
            PrefetchL1(vp + page + 2 * tok * p.value_groups);
            PrefetchL1(vp + page + 2 * (p.block_tokens + tok) * p.value_groups);
          }
        }
        return;
      }
      const int32_t* rows = s_row + stage * BN + load_row;
      dk += load_row * LD + load_part * 8;
      dv += load_row * LD + load_part * 8;
      const bool part_ok = load_part < dchunks;
#pragma unroll
      for (int i = 0; i < RPT; ++i) {
        const int32_t row = rows[RS * i];
        // Past the run or the real channels: zero fill, from an address that
        // is certainly inside the table.
        const bool ok = row >= 0 && part_ok;
        const size_t off =
            ok ? static_cast<size_t>(static_cast<uint32_t>(row)) * static_cast<uint32_t>(p.head_dim) + load_part * 8 : 0;
        CpAsync16(dk + RS * i * LD, p.keys + off, ok ? 16 : 0);
        CpAsync16(dv + RS * i * LD, p.values + off, ok ? 16 : 0);
      }
    };

    // Tiles 0 .. ST-2 in flight before the loop; one commit group per tile
    // (empty past the end) keeps the wait count uniform.
#pragma unroll
    for (int k = 0; k < ST - 1; ++k) {
      if (k < n_tiles) {
        publish_row(k);
        __syncthreads();
        issue_loads(k);
      }
      CpAsyncCommit();
    }
    for (int t = 0; t < n_tiles; ++t) {
      const int stage = t % ST;
      const int ahead = t + ST - 1;
      if (ahead < n_tiles) publish_row(ahead);
      __syncthreads();  // s_row holds tile `ahead`; every warp is done with its stage (tile t-1's)
      if (ahead < n_tiles) issue_loads(ahead % ST);
      CpAsyncCommit();
      CpAsyncWait<ST - 1>();
      __syncthreads();  // tile t has landed for all threads
      if (p.page_bits == 8) {
        DequantizeStage<D, BN, 8>(p, s_k + stage * BN * LD, s_v + stage * BN * LD, s_row + stage * BN);
      } else if (p.page_bits == 4) {
        DequantizeStage<D, BN, 4>(p, s_k + stage * BN * LD, s_v + stage * BN * LD, s_row + stage * BN);
      }
      if (!warp_active) continue;

      const __half* tk = s_k + (stage * BN + ts * SN) * LD;
      const __half* tv = s_v + (stage * BN + ts * SN) * LD;
      float s[NT][4];
#pragma unroll
      for (int j = 0; j < NT; ++j) {
#pragma unroll
        for (int e = 0; e < 4; ++e) s[j][e] = 0.0f;
      }
#pragma unroll
      for (int ks = 0; ks < KS; ++ks) {
        uint32_t ahi[4], alo[4];
        const int qoff = (16 * rg + (lane & 15)) * LD + ks * 16 + (lane >> 4) * 8;
        LdMatrixX4(ahi, s_qhi + qoff);
        if constexpr (kQLo) LdMatrixX4(alo, s_qlo + qoff);
#pragma unroll
        for (int j = 0; j < NT / 2; ++j) {
          uint32_t b[4];
          LdMatrixX4(b, tk + (16 * j + (lane >> 4) * 8 + (lane & 7)) * LD + ks * 16 + ((lane >> 3) & 1) * 8);
          Mma16816(s[2 * j], ahi, b[0], b[1]);
          Mma16816(s[2 * j + 1], ahi, b[2], b[3]);
          if constexpr (kQLo) {
            Mma16816(s[2 * j], alo, b[0], b[1]);
            Mma16816(s[2 * j + 1], alo, b[2], b[3]);
          }
        }
      }

      // Online softmax in log2 units; tokens past the run score -inf (only
      // a run's last slice has any: the test is warp-uniform). The scale
      // enters in the exponent's FMA (it is positive: a negative one was
      // folded into Q), so the maximum is taken over the raw scores.
      const int valid = total - t * BN - ts * SN;
      if (valid < SN) {
#pragma unroll
        for (int j = 0; j < NT; ++j) {
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            if (8 * j + (lane & 3) * 2 + (e & 1) >= valid) s[j][e] = -INFINITY;
          }
        }
      }
      float mx[2] = {-INFINITY, -INFINITY};
#pragma unroll
      for (int j = 0; j < NT; ++j) {
#pragma unroll
        for (int e = 0; e < 4; ++e) mx[e >> 1] = fmaxf(mx[e >> 1], s[j][e]);
      }
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        mx[h] = fmaxf(mx[h], __shfl_xor_sync(0xffffffffu, mx[h], 1));
        mx[h] = fmaxf(mx[h], __shfl_xor_sync(0xffffffffu, mx[h], 2));
        mx[h] *= scale;  // -inf stays -inf: scale > 0
      }
      // m_i is a reference maximum, not the running one: it moves (and the
      // accumulators are rescaled) only when a score passes it by more than
      // kRescaleSlack, so probabilities lie in (0, 2^kRescaleSlack] and
      // after the first tiles almost no tile rescales. (A rescale on every
      // new maximum ran on half the tiles of a 64-query call.)
      // (A difference, not m_i + slack: that sum rounds at large |m_i|, and
      // a probability of 2^16 overflows fp16. -inf - -inf is NaN: no growth.)
      const bool grow0 = mx[0] - m_i[0] > kRescaleSlack, grow1 = mx[1] - m_i[1] > kRescaleSlack;
      if (__any_sync(0xffffffffu, grow0 || grow1)) {
        float alpha[2];
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          const bool grow = h == 0 ? grow0 : grow1;
          alpha[h] = grow ? Exp2(m_i[h] - mx[h]) : 1.0f;  // m_i = -inf: 0, nothing to keep
          if (grow) m_i[h] = mx[h];
          l_i[h] *= alpha[h];
        }
#pragma unroll
        for (int dt = 0; dt < DT; ++dt) {
          acc[dt][0] *= alpha[0];
          acc[dt][1] *= alpha[0];
          acc[dt][2] *= alpha[1];
          acc[dt][3] *= alpha[1];
        }
      }
      // Nothing seen yet (all -inf): subtract 0 so that -inf - -inf never makes a NaN.
      const float m_use[2] = {m_i[0] == -INFINITY ? 0.0f : m_i[0], m_i[1] == -INFINITY ? 0.0f : m_i[1]};
#pragma unroll
      for (int j = 0; j < NT; ++j) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          s[j][e] = Exp2(fmaf(s[j][e], scale, -m_use[e >> 1]));
          l_i[e >> 1] += s[j][e];
        }
      }
      // O += P V: the score accumulators of n-tiles 2kk, 2kk+1 are the A fragment of k-step kk.
#pragma unroll
      for (int kk = 0; kk < PS; ++kk) {
        uint32_t phi[4], plo[4];
        SplitHiLo(s[2 * kk][0], s[2 * kk][1], &phi[0], &plo[0]);
        SplitHiLo(s[2 * kk][2], s[2 * kk][3], &phi[1], &plo[1]);
        SplitHiLo(s[2 * kk + 1][0], s[2 * kk + 1][1], &phi[2], &plo[2]);
        SplitHiLo(s[2 * kk + 1][2], s[2 * kk + 1][3], &phi[3], &plo[3]);
#pragma unroll
        for (int dj = 0; dj < DT / 2; ++dj) {
          uint32_t b[4];
          LdMatrixX4Trans(b, tv + (kk * 16 + ((lane >> 3) & 1) * 8 + (lane & 7)) * LD + dj * 16 + (lane >> 4) * 8);
          Mma16816(acc[2 * dj], phi, b[0], b[1]);
          Mma16816(acc[2 * dj], plo, b[0], b[1]);
          Mma16816(acc[2 * dj + 1], phi, b[2], b[3]);
          Mma16816(acc[2 * dj + 1], plo, b[2], b[3]);
        }
      }
    }

    // Epilogue of the run: its query vectors' results (or partials).
    if (warp_active) {
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        l_i[h] += __shfl_xor_sync(0xffffffffu, l_i[h], 1);
        l_i[h] += __shfl_xor_sync(0xffffffffu, l_i[h], 2);
      }
    }
    if constexpr (TS > 1) {
      // Token slices 1.. park their state in the (now idle) K/V buffers, in
      // register order per lane; slice 0 folds them in by log-sum-exp.
      constexpr int kSlot = DT * 4 + 4;  // floats per lane: acc, m[2], l[2]
      float* park = reinterpret_cast<float*>(s_k);
      __syncthreads();  // every warp is done with the last tile
      if (warp_active && ts > 0) {
        float* slot = park + (((ts - 1) * MW + rg) * 32 + lane) * kSlot;
#pragma unroll
        for (int dt = 0; dt < DT; ++dt) {
#pragma unroll
          for (int e = 0; e < 4; ++e) slot[dt * 4 + e] = acc[dt][e];
        }
        slot[DT * 4 + 0] = m_i[0];
        slot[DT * 4 + 1] = m_i[1];
        slot[DT * 4 + 2] = l_i[0];
        slot[DT * 4 + 3] = l_i[1];
      }
      __syncthreads();
      if (warp_active && ts == 0) {
#pragma unroll
        for (int o = 1; o < TS; ++o) {
          const float* slot = park + (((o - 1) * MW + rg) * 32 + lane) * kSlot;
          float a_self[2], a_other[2];
#pragma unroll
          for (int h = 0; h < 2; ++h) {
            const float mo = slot[DT * 4 + h];
            const float m_new = fmaxf(m_i[h], mo);
            const float m_use = m_new == -INFINITY ? 0.0f : m_new;
            a_self[h] = exp2f(m_i[h] - m_use);
            a_other[h] = exp2f(mo - m_use);
            m_i[h] = m_new;
            l_i[h] = l_i[h] * a_self[h] + slot[DT * 4 + 2 + h] * a_other[h];
          }
#pragma unroll
          for (int dt = 0; dt < DT; ++dt) {
#pragma unroll
            for (int e = 0; e < 4; ++e) {
              acc[dt][e] = acc[dt][e] * a_self[e >> 1] + slot[dt * 4 + e] * a_other[e >> 1];
            }
          }
        }
      }
      // The next run's first loads overwrite the parked state: its start barrier orders them.
    }
    if (warp_active && ts == 0) {
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int m = 16 * rg + (lane >> 2) + 8 * h;
        if (m < a_lo || m >= a_hi) continue;
        const int mg = m0 + m;
        const int r = mg / p.group;
        const size_t qv = static_cast<size_t>(r) * p.q_heads + g * p.group + (mg - r * p.group);
        float* dst;
        float mul;
        if (p.num_splits == 1) {
          dst = p.out + qv * p.head_dim;
          mul = l_i[h] > 0.0f ? 1.0f / l_i[h] : 0.0f;  // an empty selection gives 0
          if (p.lse != nullptr && (lane & 3) == 0) {
            p.lse[qv] = l_i[h] > 0.0f ? (m_i[h] + log2f(l_i[h])) * 0.69314718055994531f : -INFINITY;
          }
        } else {
          const size_t pi = static_cast<size_t>(split) * p.n_queries * p.q_heads + qv;
          dst = p.part_acc + pi * p.head_dim;
          mul = 1.0f;
          if ((lane & 3) == 0) {
            p.part_m[pi] = m_i[h];
            p.part_l[pi] = l_i[h];
          }
        }
#pragma unroll
        for (int dt = 0; dt < DT; ++dt) {
          const int col = 8 * dt + (lane & 3) * 2;
          if (col < p.head_dim) {
            dst[col] = acc[dt][2 * h] * mul;
            dst[col + 1] = acc[dt][2 * h + 1] * mul;
          }
        }
      }
    }
  }
  };
  if (q_lo) {
    attend_runs(std::true_type{});
  } else {
    attend_runs(std::false_type{});
  }
}

template <int D, int MW>
Status OccupancyOf(int device, int* ctas_per_sm) {
  static std::mutex mu;
  static std::map<int, int>* cache = new std::map<int, int>();  // device -> CTAs per SM; never freed
  std::lock_guard<std::mutex> lock(mu);
  auto it = cache->find(device);
  if (it != cache->end()) {
    *ctas_per_sm = it->second;
    return Status::OK();
  }
  constexpr size_t smem = SplitSmemBytes<D, MW>();
  MSA_RETURN_IF_ERROR(CudaStatus(
      cudaFuncSetAttribute(SplitKernel<D, MW>, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)),
      "raising the shared-memory limit of the attention kernel (D=" + std::to_string(D) + ")"));
  int n = 0;
  MSA_RETURN_IF_ERROR(CudaStatus(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, SplitKernel<D, MW>, kSplitThreads, smem),
                                 "querying the attention kernel's occupancy"));
  if (n < 1) {
    return Status::NotSupported("the attention kernel (D=" + std::to_string(D) + ", " + std::to_string(smem) +
                                " bytes of shared memory) does not fit on device " + std::to_string(device));
  }
  (*cache)[device] = n;
  *ctas_per_sm = n;
  return Status::OK();
}

template <int D>
Status SplitKernelOccupancy(int device, int mw, int* ctas_per_sm) {
  switch (mw) {
    case 1: return OccupancyOf<D, 1>(device, ctas_per_sm);
    case 2: return OccupancyOf<D, 2>(device, ctas_per_sm);
    case 4: return OccupancyOf<D, 4>(device, ctas_per_sm);
    default: return Status::Internal("SplitKernelOccupancy: bad mw " + std::to_string(mw));
  }
}

template <int D, int MW>
Status Launch(const SplitParams& p, int m_tiles, cudaStream_t stream) {
  const dim3 grid(static_cast<unsigned>(m_tiles), static_cast<unsigned>(p.kv_heads),
                  static_cast<unsigned>(p.num_splits));
  SplitKernel<D, MW><<<grid, kSplitThreads, SplitSmemBytes<D, MW>(), stream>>>(p);
  return CudaStatus(cudaGetLastError(), "launching the sparse attention kernel (D=" + std::to_string(D) + ")");
}

template <int D>
Status LaunchSplitKernel(const SplitParams& p, int mw, int m_tiles, cudaStream_t stream) {
  switch (mw) {
    case 1: return Launch<D, 1>(p, m_tiles, stream);
    case 2: return Launch<D, 2>(p, m_tiles, stream);
    case 4: return Launch<D, 4>(p, m_tiles, stream);
    default: return Status::Internal("LaunchSplitKernel: bad mw " + std::to_string(mw));
  }
}

}  // namespace msa::attention::cuda
