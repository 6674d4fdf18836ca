// CPU sparse attention over gathered blocks.
//
// For each query row i and query head h, with g = KvHeadOf(h):
//   s_t = scale * dot(q[i,h,:], k_t)  for every token t of the selected blocks
//   out[i,h,:] = sum_t softmax(s)_t * v_t
//   lse[i,h]   = log(sum_t exp(s_t))   (natural log, of the scaled scores)
// The lse lets a caller merge this partial attention with another one
// (flash-attention's merge of partial softmaxes). The heads of a GQA group
// are computed together, token by token, so each K/V row is read once per
// group; the row loops use AVX2 + FMA where the CPU has them.
//
// Thread safety: pure function of its inputs; call from any thread.
#pragma once

#include "attention/block_table.h"

namespace msa::attention {

// q   : [n_queries, q_heads, head_dim] float32
// out : [n_queries, q_heads, head_dim] float32 (written)
// lse : [n_queries, q_heads] float32 (written); may be null
void SparseAttentionCpu(const AttentionShape& shape, const BlockTable<float>& table,
                        const Selection& selection, const float* q, float* out, float* lse);

// For tests: the same through the AVX2 + FMA loops (avx2) or the portable
// ones; false (outputs untouched) where this CPU lacks AVX2 and FMA.
bool SparseAttentionCpuOn(bool avx2, const AttentionShape& shape, const BlockTable<float>& table,
                          const Selection& selection, const float* q, float* out, float* lse);

// The same over blocks kept as int8/int4 codes (attention/block_table.h),
// dequantised inside the loops: what a store of a quantised codec attends
// over, with no float copy of its blocks. Bit for bit SparseAttentionCpu
// over the blocks as the codec's decoder returns them.
void SparseAttentionCpu(const AttentionShape& shape, const QuantizedBlockTable& table,
                        const Selection& selection, const float* q, float* out, float* lse);
bool SparseAttentionCpuOn(bool avx2, const AttentionShape& shape, const QuantizedBlockTable& table,
                          const Selection& selection, const float* q, float* out, float* lse);

}  // namespace msa::attention
