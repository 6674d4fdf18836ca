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

// The row operations the loops below are made of, each over the heads of
// a GQA group at once (so a key or value row is loaded once for all of
// them): the heads' dots with a key row, a value row added to every head's
// output with its weight, and the softmax weights exp(x - max) of a head's
// scores with their sum. Portable loops (vectorised by the compiler at the
// baseline ISA: CMakeLists.txt lets this file reassociate float sums), and
// AVX2 + FMA ones picked at run time through function pointers. Not
// target_clones: its ifunc resolver runs before ThreadSanitizer's runtime
// is up and crashes instrumented binaries.
void DotHeadsPortable(const float* q, int heads, const float* row, int d, float* dots) {
  for (int h = 0; h < heads; ++h) {
    const float* qh = q + static_cast<size_t>(h) * d;
    float acc = 0.0f;
    for (int c = 0; c < d; ++c) acc += qh[c] * row[c];
    dots[h] = acc;
  }
}

void AxpyRowsPortable(const float* w, size_t w_stride, int heads, const float* const* rows, int n, float* out,
                      int d) {
  for (int h = 0; h < heads; ++h) {
    float* oh = out + static_cast<size_t>(h) * d;
    for (int i = 0; i < n; ++i) {
      const float wi = w[h * w_stride + i];
      for (int c = 0; c < d; ++c) oh[c] += wi * rows[i][c];
    }
  }
}

void ExpSumPortable(float* x, size_t n, float max, double* sum) {
  double acc = 0.0;
  for (size_t i = 0; i < n; ++i) {
    x[i] = std::exp(x[i] - max);
    acc += x[i];
  }
  *sum = acc;
}

__attribute__((target("avx2,fma"))) inline float HorizontalSum(__m256 v) {
  __m128 sum4 = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  sum4 = _mm_add_ps(sum4, _mm_movehl_ps(sum4, sum4));
  return _mm_cvtss_f32(_mm_add_ss(sum4, _mm_movehdup_ps(sum4)));
}

// NH (1-4) heads' dots with one row: the row's floats loaded once for all
// of them, two accumulators per head so that consecutive FMAs do not wait
// on each other.
template <int NH>
__attribute__((target("avx2,fma"))) void DotHeadsAvx2Tile(const float* q, const float* row, int d, float* dots) {
  __m256 acc[NH], acc1[NH];
  for (int h = 0; h < NH; ++h) acc[h] = acc1[h] = _mm256_setzero_ps();
  int c = 0;
  for (; c + 16 <= d; c += 16) {
    const __m256 r0 = _mm256_loadu_ps(row + c), r1 = _mm256_loadu_ps(row + c + 8);
    for (int h = 0; h < NH; ++h) {
      const float* qh = q + static_cast<size_t>(h) * d + c;
      acc[h] = _mm256_fmadd_ps(_mm256_loadu_ps(qh), r0, acc[h]);
      acc1[h] = _mm256_fmadd_ps(_mm256_loadu_ps(qh + 8), r1, acc1[h]);
    }
  }
  if (c + 8 <= d) {
    const __m256 r = _mm256_loadu_ps(row + c);
    for (int h = 0; h < NH; ++h) {
      acc[h] = _mm256_fmadd_ps(_mm256_loadu_ps(q + static_cast<size_t>(h) * d + c), r, acc[h]);
    }
    c += 8;
  }
  for (int h = 0; h < NH; ++h) {
    float sum = HorizontalSum(_mm256_add_ps(acc[h], acc1[h]));
    for (int e = c; e < d; ++e) sum += q[static_cast<size_t>(h) * d + e] * row[e];
    dots[h] = sum;
  }
}

__attribute__((target("avx2,fma"))) void DotHeadsAvx2(const float* q, int heads, const float* row, int d,
                                                      float* dots) {
  int h = 0;
  for (; h + 4 <= heads; h += 4) DotHeadsAvx2Tile<4>(q + static_cast<size_t>(h) * d, row, d, dots + h);
  const float* qh = q + static_cast<size_t>(h) * d;
  switch (heads - h) {
    case 3: DotHeadsAvx2Tile<3>(qh, row, d, dots + h); break;
    case 2: DotHeadsAvx2Tile<2>(qh, row, d, dots + h); break;
    case 1: DotHeadsAvx2Tile<1>(qh, row, d, dots + h); break;
    default: break;
  }
}

// Each head's output chunk is loaded once, takes the rows' n products in
// order (the same roundings as n single-row updates) and is stored once:
// per row, a load and an FMA, where a row at a time paid a load, an FMA and
// a store of the output, each waiting on the last row's. Four chunks at a
// time, so that four FMA chains run side by side.
__attribute__((target("avx2,fma"))) void AxpyRowsAvx2(const float* w, size_t w_stride, int heads,
                                                      const float* const* rows, int n, float* out, int d) {
  for (int h = 0; h < heads; ++h) {
    float* oh = out + static_cast<size_t>(h) * d;
    const float* wh = w + h * w_stride;
    int c = 0;
    for (; c + 32 <= d; c += 32) {
      __m256 acc0 = _mm256_loadu_ps(oh + c), acc1 = _mm256_loadu_ps(oh + c + 8);
      __m256 acc2 = _mm256_loadu_ps(oh + c + 16), acc3 = _mm256_loadu_ps(oh + c + 24);
      for (int i = 0; i < n; ++i) {
        const __m256 wi = _mm256_set1_ps(wh[i]);
        const float* r = rows[i] + c;
        acc0 = _mm256_fmadd_ps(wi, _mm256_loadu_ps(r), acc0);
        acc1 = _mm256_fmadd_ps(wi, _mm256_loadu_ps(r + 8), acc1);
        acc2 = _mm256_fmadd_ps(wi, _mm256_loadu_ps(r + 16), acc2);
        acc3 = _mm256_fmadd_ps(wi, _mm256_loadu_ps(r + 24), acc3);
      }
      _mm256_storeu_ps(oh + c, acc0);
      _mm256_storeu_ps(oh + c + 8, acc1);
      _mm256_storeu_ps(oh + c + 16, acc2);
      _mm256_storeu_ps(oh + c + 24, acc3);
    }
    for (; c + 8 <= d; c += 8) {
      __m256 acc = _mm256_loadu_ps(oh + c);
      for (int i = 0; i < n; ++i) acc = _mm256_fmadd_ps(_mm256_set1_ps(wh[i]), _mm256_loadu_ps(rows[i] + c), acc);
      _mm256_storeu_ps(oh + c, acc);
    }
    for (; c < d; ++c) {
      for (int i = 0; i < n; ++i) oh[c] += wh[i] * rows[i][c];
    }
  }
}

// exp(x) for x <= 0 (a score minus its maximum), 8 at a time: x = n ln2 + r
// with |r| <= ln2 / 2, exp(r) by Cephes's expf polynomial (within 2 ulps of
// float32's exp, against std::exp's 1), times 2^n built in the exponent
// bits. Below -87 (where 2^n would leave the normal range) the weight is 0,
// where std::exp gives at most e^-87 (1.6e-38): either adds nothing next to
// the maximum's 1. NaN stays NaN.
__attribute__((target("avx2,fma"))) inline __m256 ExpNonPositive(__m256 x) {
  const __m256 floor = _mm256_set1_ps(-87.0f);
  const __m256 tiny = _mm256_cmp_ps(x, floor, _CMP_LT_OQ);  // false for NaN
  x = _mm256_max_ps(floor, x);                                // NaN kept: max_ps returns its second operand
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 p = _mm256_set1_ps(1.9875691500e-4f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
  p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
  const __m256i bits = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_andnot_ps(tiny, _mm256_mul_ps(p, _mm256_castsi256_ps(bits)));
}

__attribute__((target("avx2,fma"))) void ExpSumAvx2(float* x, size_t n, float max, double* sum) {
  const __m256 m = _mm256_set1_ps(max);
  __m256d acc0 = _mm256_setzero_pd(), acc1 = _mm256_setzero_pd();  // in double: exact mode sums millions
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 w = ExpNonPositive(_mm256_sub_ps(_mm256_loadu_ps(x + i), m));
    _mm256_storeu_ps(x + i, w);
    acc0 = _mm256_add_pd(acc0, _mm256_cvtps_pd(_mm256_castps256_ps128(w)));
    acc1 = _mm256_add_pd(acc1, _mm256_cvtps_pd(_mm256_extractf128_ps(w, 1)));
  }
  alignas(32) double lanes[4];
  _mm256_store_pd(lanes, _mm256_add_pd(acc0, acc1));
  double acc = (lanes[0] + lanes[1]) + (lanes[2] + lanes[3]);
  for (; i < n; ++i) {
    x[i] = std::exp(x[i] - max);
    acc += x[i];
  }
  *sum = acc;
}

struct RowOps {
  void (*dot_heads)(const float* q, int heads, const float* row, int d, float* dots);
  // out[h] += sum_i w[h * w_stride + i] * rows[i], i in [0, n), in order of i.
  void (*axpy_rows)(const float* w, size_t w_stride, int heads, const float* const* rows, int n, float* out, int d);
  void (*exp_sum)(float* x, size_t n, float max, double* sum);
};

constexpr RowOps kPortableOps{DotHeadsPortable, AxpyRowsPortable, ExpSumPortable};
constexpr RowOps kAvx2Ops{DotHeadsAvx2, AxpyRowsAvx2, ExpSumAvx2};

// Value rows added to the outputs this many at a time.
constexpr int kRowTile = 8;

bool HasAvx2Fma() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
}

const bool kAvx2Fma = HasAvx2Fma();

// Where AttendGroup's rows come from. Float blocks: the rows themselves.
class FloatRows {
 public:
  FloatRows(const AttentionShape& s, const BlockTable<float>& table)
      : table_(table), block_elems_(static_cast<size_t>(s.block_tokens) * s.head_dim), d_(s.head_dim) {}
  int Len(int b) const { return table_.block_len[b]; }
  const float* Key(int b, int r) { return table_.keys + b * block_elems_ + static_cast<size_t>(r) * d_; }
  const float* Value(int b, int r, int /*slot*/) {
    return table_.values + b * block_elems_ + static_cast<size_t>(r) * d_;
  }

 private:
  const BlockTable<float>& table_;
  const size_t block_elems_;
  const int d_;
};

// Quantised blocks: each row dequantised into one head_dim scratch row
// (L1-resident) by the decoder's own loops (attention/dequantize.h), so
// that it is bit for bit the row a decoded block holds, without writing the
// decoded blocks to memory and reading them back. Key and value rows must
// be asked for in order from a block's first row (a key group's parameters
// are widened at its first row, a block's value parameters at its first
// value row); value rows go to one of kRowTile slots, valid until the slot
// is used again. The table's shape (bits 8 or 4, positive
// groups) is the caller's to get right: store/codec_quantized.h's
// TableShape.
class DequantizedRows {
 public:
  DequantizedRows(const AttentionShape& s, const QuantizedBlockTable& table)
      : table_(table),
        d_(s.head_dim),
        row_bytes_(table.bits == 8 ? static_cast<size_t>(d_) : (static_cast<size_t>(d_) + 1) / 2),
        value_group_(std::min(table.value_group, d_)),
        value_groups_((d_ + value_group_ - 1) / value_group_),
        row_(static_cast<size_t>(kRowTile) * d_),
        key_scale_(d_),
        key_min_(d_),
        value_scale_(static_cast<size_t>(s.block_tokens) * value_groups_),
        value_min_(value_scale_.size()) {}
  int Len(int b) const { return table_.blocks[b].len; }
  const float* Key(int b, int r) {
    const QuantizedBlock& block = table_.blocks[b];
    if (r % table_.key_group == 0) {
      const size_t group = static_cast<size_t>(r / table_.key_group) * d_;
      HalfToFloatArray(block.key_scale + group, key_scale_.data(), d_);
      HalfToFloatArray(block.key_min + group, key_min_.data(), d_);
    }
    const uint8_t* codes = block.key_codes + static_cast<size_t>(r) * row_bytes_;
    if (table_.bits == 8) {
      DequantizeU8(codes, key_scale_.data(), key_min_.data(), d_, row_.data());
    } else {
      DequantizeU4(codes, key_scale_.data(), key_min_.data(), d_, row_.data());
    }
    return row_.data();
  }
  const float* Value(int b, int r, int slot) {
    const QuantizedBlock& block = table_.blocks[b];
    float* row = row_.data() + static_cast<size_t>(slot) * d_;
    const uint8_t* codes = block.value_codes + static_cast<size_t>(r) * row_bytes_;
    if (r == 0) {  // the block's value parameters, all its tokens' at once
      const size_t n = static_cast<size_t>(block.len) * value_groups_;
      HalfToFloatArray(block.value_scale, value_scale_.data(), n);
      HalfToFloatArray(block.value_min, value_min_.data(), n);
    }
    const float* scale = value_scale_.data() + static_cast<size_t>(r) * value_groups_;
    const float* min = value_min_.data() + static_cast<size_t>(r) * value_groups_;
    for (int g = 0; g < value_groups_; ++g) {
      const int c0 = g * value_group_, n = std::min(value_group_, d_ - c0);
      if (table_.bits == 8) {
        DequantizeU8(codes + c0, scale[g], min[g], n, row + c0);
      } else {
        DequantizeU4(codes + c0 / 2, scale[g], min[g], n, row + c0);  // c0 even (groups of 32)
      }
    }
    return row;
  }

 private:
  const QuantizedBlockTable& table_;
  const int d_;
  const size_t row_bytes_;
  const int value_group_, value_groups_;
  std::vector<float> row_, key_scale_, key_min_, value_scale_, value_min_;
};

// The heads [0, heads) of one GQA group over their shared selection: two
// passes (scores, then weighted sums) so the softmax is exact in float32
// without the rescaling error of an online softmax. Token-major, every
// head per row, so each key and value row is read from memory once for
// the whole group (a head-major loop read the group's K/V once per head).
// q, out: heads rows of head_dim; lse: heads values (may be null).
struct GroupScratch {
  std::vector<float> scores;     // [head][token]: scores, then weights
  std::vector<float> max_score;  // [head]
  std::vector<double> denom;     // [head]
  std::vector<float> per_head;   // [head]: one row's dots
};

template <typename Rows>
void AttendGroup(const RowOps& ops, const AttentionShape& s, Rows& rows, const int32_t* blocks, int count,
                 int heads, const float* q, float* out, float* lse, GroupScratch& scratch) {
  const int d = s.head_dim;
  size_t tokens = 0;
  for (int j = 0; j < count; ++j) tokens += static_cast<size_t>(rows.Len(blocks[j]));
  std::fill(out, out + static_cast<size_t>(heads) * d, 0.0f);
  if (tokens == 0) {
    if (lse) std::fill(lse, lse + heads, -std::numeric_limits<float>::infinity());
    return;
  }
  std::vector<float>& scores = scratch.scores;  // scores[h * tokens + t]
  scores.resize(static_cast<size_t>(heads) * tokens);
  std::vector<float>& max_score = scratch.max_score;
  max_score.assign(heads, -std::numeric_limits<float>::infinity());
  scratch.per_head.resize(heads);
  float* per_head = scratch.per_head.data();
  size_t t = 0;
  for (int j = 0; j < count; ++j) {
    for (int r = 0; r < rows.Len(blocks[j]); ++r, ++t) {
      ops.dot_heads(q, heads, rows.Key(blocks[j], r), d, per_head);
      for (int h = 0; h < heads; ++h) {
        const float score = s.scale * per_head[h];
        scores[h * tokens + t] = score;
        max_score[h] = std::max(max_score[h], score);
      }
    }
  }
  std::vector<double>& denom = scratch.denom;
  denom.resize(heads);
  for (int h = 0; h < heads; ++h) ops.exp_sum(scores.data() + h * tokens, tokens, max_score[h], &denom[h]);
  const float* tile[kRowTile];
  int n = 0;
  size_t t0 = 0;  // the tile's first token
  for (int j = 0; j < count; ++j) {
    for (int r = 0; r < rows.Len(blocks[j]); ++r) {
      tile[n] = rows.Value(blocks[j], r, n);
      if (++n == kRowTile) {
        ops.axpy_rows(scores.data() + t0, tokens, heads, tile, n, out, d);
        t0 += n;
        n = 0;
      }
    }
  }
  if (n > 0) ops.axpy_rows(scores.data() + t0, tokens, heads, tile, n, out, d);
  for (int h = 0; h < heads; ++h) {
    const float inv = static_cast<float>(1.0 / denom[h]);
    for (int c = 0; c < d; ++c) out[static_cast<size_t>(h) * d + c] *= inv;
    if (lse) lse[h] = max_score[h] + static_cast<float>(std::log(denom[h]));
  }
}

// Every (query row, KV head) through AttendGroup.
template <typename Table>
void Attend(const RowOps& ops, const AttentionShape& shape, const Table& table,
            const Selection& selection, const float* q, float* out, float* lse) {
  GroupScratch scratch;
  std::conditional_t<std::is_same_v<Table, QuantizedBlockTable>, DequantizedRows, FloatRows> rows(shape, table);
  const int d = shape.head_dim;
  const int group = shape.q_heads / shape.kv_heads;  // KvHeadOf: heads [g * group, (g + 1) * group)
  for (int i = 0; i < shape.n_queries; ++i) {
    for (int g = 0; g < shape.kv_heads; ++g) {
      const size_t sel = static_cast<size_t>(i) * shape.kv_heads + g;
      const size_t row = static_cast<size_t>(i) * shape.q_heads + static_cast<size_t>(g) * group;
      AttendGroup(ops, shape, rows, selection.block_index + sel * selection.max_blocks, selection.count[sel], group,
                  q + row * d, out + row * d, lse ? lse + row : nullptr, scratch);
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
