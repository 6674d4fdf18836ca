#include "attention/sparse_attention_cpu.h"

#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>
#include <vector>

#include "attention/dequantize.h"
#include "attention/half.h"

namespace msa::attention {

namespace {

// The two row operations the loops below are made of: a query head's dot
// with a key row, and a value row added to a head's output with its
// weight. Portable loops (vectorised by the compiler at the baseline ISA:
// CMakeLists.txt lets this file reassociate float sums), and AVX2 + FMA
// ones picked at run time through function pointers. Not target_clones:
// its ifunc resolver runs before ThreadSanitizer's runtime is up and
// crashes instrumented binaries.
float DotPortable(const float* a, const float* b, int n) {
  float acc = 0.0f;
  for (int c = 0; c < n; ++c) acc += a[c] * b[c];
  return acc;
}

void AxpyPortable(float w, const float* v, float* out, int n) {
  for (int c = 0; c < n; ++c) out[c] += w * v[c];
}

__attribute__((target("avx2,fma"))) float DotAvx2(const float* a, const float* b, int n) {
  __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
  int c = 0;
  for (; c + 16 <= n; c += 16) {
    acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + c), _mm256_loadu_ps(b + c), acc0);
    acc1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + c + 8), _mm256_loadu_ps(b + c + 8), acc1);
  }
  if (c + 8 <= n) {
    acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + c), _mm256_loadu_ps(b + c), acc0);
    c += 8;
  }
  const __m256 acc = _mm256_add_ps(acc0, acc1);
  __m128 sum4 = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
  sum4 = _mm_add_ps(sum4, _mm_movehl_ps(sum4, sum4));
  float sum = _mm_cvtss_f32(_mm_add_ss(sum4, _mm_movehdup_ps(sum4)));
  for (; c < n; ++c) sum += a[c] * b[c];
  return sum;
}

__attribute__((target("avx2,fma"))) void AxpyAvx2(float w, const float* v, float* out, int n) {
  const __m256 weight = _mm256_set1_ps(w);
  int c = 0;
  for (; c + 8 <= n; c += 8) {
    _mm256_storeu_ps(out + c, _mm256_fmadd_ps(weight, _mm256_loadu_ps(v + c), _mm256_loadu_ps(out + c)));
  }
  for (; c < n; ++c) out[c] += w * v[c];
}

struct RowOps {
  float (*dot)(const float*, const float*, int);
  void (*axpy)(float, const float*, float*, int);
};

constexpr RowOps kPortableOps{DotPortable, AxpyPortable};
constexpr RowOps kAvx2Ops{DotAvx2, AxpyAvx2};

bool HasAvx2Fma() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
}

const bool kAvx2Fma = HasAvx2Fma();

// The heads [0, heads) of one GQA group over their shared selection: two
// passes (scores, then weighted sums) so the softmax is exact in float32
// without the rescaling error of an online softmax. Token-major, every
// head per row, so each key and value row is read from memory once for
// the whole group (a head-major loop read the group's K/V once per head).
// q, out: heads rows of head_dim; lse: heads values (may be null).
struct GroupScratch {
  std::vector<float> scores;     // [head][token]
  std::vector<float> max_score;  // [head]
  std::vector<double> denom;     // [head]
  // The quantised loops only:
  std::vector<float> row;     // [head_dim]: one row, dequantised
  std::vector<float> params;  // a key group's scales and mins, or a token's value ones
};

// Sets out to 0 and lse to -inf for an empty selection; false then.
bool StartGroup(size_t tokens, int heads, int d, float* out, float* lse) {
  std::fill(out, out + static_cast<size_t>(heads) * d, 0.0f);
  if (tokens != 0) return true;
  if (lse) std::fill(lse, lse + heads, -std::numeric_limits<float>::infinity());
  return false;
}

// out /= denominator, and lse from the max and the denominator.
void FinishGroup(const GroupScratch& scratch, int heads, int d, float* out, float* lse) {
  for (int h = 0; h < heads; ++h) {
    const float inv = static_cast<float>(1.0 / scratch.denom[h]);
    for (int c = 0; c < d; ++c) out[static_cast<size_t>(h) * d + c] *= inv;
    if (lse) lse[h] = scratch.max_score[h] + static_cast<float>(std::log(scratch.denom[h]));
  }
}

void AttendGroup(const RowOps& ops, const AttentionShape& s, const BlockTable<float>& table, const int32_t* blocks,
                 int count, int heads, const float* q, float* out, float* lse, GroupScratch& scratch) {
  const int d = s.head_dim;
  size_t tokens = 0;
  for (int j = 0; j < count; ++j) tokens += static_cast<size_t>(table.block_len[blocks[j]]);
  if (!StartGroup(tokens, heads, d, out, lse)) return;
  std::vector<float>& scores = scratch.scores;  // scores[h * tokens + t]
  scores.resize(static_cast<size_t>(heads) * tokens);
  std::vector<float>& max_score = scratch.max_score;
  max_score.assign(heads, -std::numeric_limits<float>::infinity());
  size_t t = 0;
  for (int j = 0; j < count; ++j) {
    const int b = blocks[j];
    const float* k = table.keys + static_cast<size_t>(b) * s.block_tokens * d;
    for (int r = 0; r < table.block_len[b]; ++r, ++t) {
      const float* row = k + static_cast<size_t>(r) * d;
      for (int h = 0; h < heads; ++h) {
        const float score = s.scale * ops.dot(q + static_cast<size_t>(h) * d, row, d);
        scores[h * tokens + t] = score;
        max_score[h] = std::max(max_score[h], score);
      }
    }
  }
  std::vector<double>& denom = scratch.denom;
  denom.assign(heads, 0.0);
  t = 0;
  for (int j = 0; j < count; ++j) {
    const int b = blocks[j];
    const float* v = table.values + static_cast<size_t>(b) * s.block_tokens * d;
    for (int r = 0; r < table.block_len[b]; ++r, ++t) {
      const float* row = v + static_cast<size_t>(r) * d;
      for (int h = 0; h < heads; ++h) {
        const float w = std::exp(scores[h * tokens + t] - max_score[h]);
        denom[h] += w;
        ops.axpy(w, row, out + static_cast<size_t>(h) * d, d);
      }
    }
  }
  FinishGroup(scratch, heads, d, out, lse);
}

// AttendGroup over quantised blocks: each row is dequantised into a
// head_dim scratch row (L1-resident) by the decoder's own loops
// (attention/dequantize.h), once for every head of the group, and then goes
// through the same row operations in the same order as a decoded block's
// row would. So the result is bit for bit AttendGroup's over the decoded
// blocks, without writing the decoded blocks to memory and reading them back.
void AttendGroupQuantized(const RowOps& ops, const AttentionShape& s, const QuantizedBlockTable& table,
                          const int32_t* blocks, int count, int heads, const float* q, float* out, float* lse,
                          GroupScratch& scratch) {
  const int d = s.head_dim;
  size_t tokens = 0;
  for (int j = 0; j < count; ++j) tokens += static_cast<size_t>(table.blocks[blocks[j]].len);
  if (!StartGroup(tokens, heads, d, out, lse)) return;
  const size_t row_bytes = table.bits == 8 ? static_cast<size_t>(d) : (static_cast<size_t>(d) + 1) / 2;
  const int value_group = std::min(table.value_group, d);
  const int value_groups = (d + value_group - 1) / value_group;
  std::vector<float>& scores = scratch.scores;  // scores[h * tokens + t]
  scores.resize(static_cast<size_t>(heads) * tokens);
  std::vector<float>& max_score = scratch.max_score;
  max_score.assign(heads, -std::numeric_limits<float>::infinity());
  scratch.row.resize(d);
  scratch.params.resize(2 * static_cast<size_t>(d));  // value_groups <= d
  float* row = scratch.row.data();
  float* scale = scratch.params.data();
  float* min = scale + d;
  size_t t = 0;
  for (int j = 0; j < count; ++j) {
    const QuantizedBlock& block = table.blocks[blocks[j]];
    for (int r0 = 0; r0 < block.len; r0 += table.key_group) {
      const size_t group = static_cast<size_t>(r0 / table.key_group) * d;
      HalfToFloatArray(block.key_scale + group, scale, d);
      HalfToFloatArray(block.key_min + group, min, d);
      const int r1 = r0 + std::min(table.key_group, block.len - r0);
      for (int r = r0; r < r1; ++r, ++t) {
        const uint8_t* codes = block.key_codes + static_cast<size_t>(r) * row_bytes;
        if (table.bits == 8) {
          DequantizeU8(codes, scale, min, d, row);
        } else {
          DequantizeU4(codes, scale, min, d, row);
        }
        for (int h = 0; h < heads; ++h) {
          const float score = s.scale * ops.dot(q + static_cast<size_t>(h) * d, row, d);
          scores[h * tokens + t] = score;
          max_score[h] = std::max(max_score[h], score);
        }
      }
    }
  }
  std::vector<double>& denom = scratch.denom;
  denom.assign(heads, 0.0);
  t = 0;
  for (int j = 0; j < count; ++j) {
    const QuantizedBlock& block = table.blocks[blocks[j]];
    for (int r = 0; r < block.len; ++r, ++t) {
      const uint8_t* codes = block.value_codes + static_cast<size_t>(r) * row_bytes;
      const size_t p = static_cast<size_t>(r) * value_groups;
      HalfToFloatArray(block.value_scale + p, scale, value_groups);
      HalfToFloatArray(block.value_min + p, min, value_groups);
      for (int vg = 0; vg < value_groups; ++vg) {
        const int c0 = vg * value_group, n = std::min(value_group, d - c0);
        if (table.bits == 8) {
          DequantizeU8(codes + c0, scale[vg], min[vg], n, row + c0);
        } else {
          DequantizeU4(codes + c0 / 2, scale[vg], min[vg], n, row + c0);  // c0 even (groups of 32)
        }
      }
      for (int h = 0; h < heads; ++h) {
        const float w = std::exp(scores[h * tokens + t] - max_score[h]);
        denom[h] += w;
        ops.axpy(w, row, out + static_cast<size_t>(h) * d, d);
      }
    }
  }
  FinishGroup(scratch, heads, d, out, lse);
}

// Every (query row, KV head) through AttendGroup (float blocks) or
// AttendGroupQuantized.
template <typename Table>
void Attend(const RowOps& ops, const AttentionShape& shape, const Table& table,
            const Selection& selection, const float* q, float* out, float* lse) {
  GroupScratch scratch;
  const int d = shape.head_dim;
  const int group = shape.q_heads / shape.kv_heads;  // KvHeadOf: heads [g * group, (g + 1) * group)
  for (int i = 0; i < shape.n_queries; ++i) {
    for (int g = 0; g < shape.kv_heads; ++g) {
      const size_t sel = static_cast<size_t>(i) * shape.kv_heads + g;
      const size_t row = static_cast<size_t>(i) * shape.q_heads + static_cast<size_t>(g) * group;
      const int32_t* blocks = selection.block_index + sel * selection.max_blocks;
      if constexpr (std::is_same_v<Table, QuantizedBlockTable>) {
        AttendGroupQuantized(ops, shape, table, blocks, selection.count[sel], group, q + row * d, out + row * d,
                             lse ? lse + row : nullptr, scratch);
      } else {
        AttendGroup(ops, shape, table, blocks, selection.count[sel], group, q + row * d, out + row * d,
                    lse ? lse + row : nullptr, scratch);
      }
    }
  }
}

}  // namespace

void SparseAttentionCpu(const AttentionShape& shape, const BlockTable<float>& table,
                        const Selection& selection, const float* q, float* out, float* lse) {
  Attend(kAvx2Fma ? kAvx2Ops : kPortableOps, shape, table, selection, q, out, lse);
}

bool SparseAttentionCpuOn(bool avx2, const AttentionShape& shape, const BlockTable<float>& table,
                          const Selection& selection, const float* q, float* out, float* lse) {
  if (avx2 && !kAvx2Fma) return false;
  Attend(avx2 ? kAvx2Ops : kPortableOps, shape, table, selection, q, out, lse);
  return true;
}

void SparseAttentionCpu(const AttentionShape& shape, const QuantizedBlockTable& table,
                        const Selection& selection, const float* q, float* out, float* lse) {
  Attend(kAvx2Fma ? kAvx2Ops : kPortableOps, shape, table, selection, q, out, lse);
}

bool SparseAttentionCpuOn(bool avx2, const AttentionShape& shape, const QuantizedBlockTable& table,
                          const Selection& selection, const float* q, float* out, float* lse) {
  if (avx2 && !kAvx2Fma) return false;
  Attend(avx2 ? kAvx2Ops : kPortableOps, shape, table, selection, q, out, lse);
  return true;
}

}  // namespace msa::attention
