#include "store/dot_kernel.h"

#include <immintrin.h>

#include <algorithm>
#include <cassert>
#include <cmath>

#include "attention/half.h"

namespace msa {

namespace {

enum class Isa { kAvx512, kAvx2, kPortable };

Isa Detect() {
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f")) return Isa::kAvx512;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && attention::CpuHasF16c()) {
    return Isa::kAvx2;
  }
  return Isa::kPortable;
}

const Isa kIsa = Detect();

__attribute__((target("avx512f"))) void AxpyAvx512(float a, const uint16_t* x, float* y, size_t n) {
  const __m512 va = _mm512_set1_ps(a);
  size_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m512 vx = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(x + i)));
    _mm512_storeu_ps(y + i, _mm512_fmadd_ps(va, vx, _mm512_loadu_ps(y + i)));
  }
  for (; i < n; ++i) y[i] += a * attention::HalfToFloat(x[i]);
}

__attribute__((target("avx2,fma,f16c"))) void AxpyAvx2(float a, const uint16_t* x, float* y, size_t n) {
  const __m256 va = _mm256_set1_ps(a);
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 vx = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(x + i)));
    _mm256_storeu_ps(y + i, _mm256_fmadd_ps(va, vx, _mm256_loadu_ps(y + i)));
  }
  for (; i < n; ++i) y[i] += a * attention::HalfToFloat(x[i]);
}

__attribute__((target("avx512f"))) void ColumnsAvx512(const float* coef, const uint32_t* cols,
                                                        size_t ncols, const uint16_t* base,
                                                        size_t stride, float* out) {
  __m512 acc[8];
  for (auto& a : acc) a = _mm512_setzero_ps();
  for (size_t k = 0; k < ncols; ++k) {
    const __m512 a = _mm512_set1_ps(coef[k]);
    const uint16_t* x = base + cols[k] * stride;
    for (int t = 0; t < 8; ++t) {
      const __m512 v = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(x + 16 * t)));
      acc[t] = _mm512_fmadd_ps(a, v, acc[t]);
    }
  }
  for (int t = 0; t < 8; ++t) _mm512_storeu_ps(out + 16 * t, acc[t]);
}

// 16 blocks at a time, each piece's multiply-adds in column order as
// ColumnsAvx512 does them, so a block's sum is the same bits whether its
// whole tile or only its piece is scored.
__attribute__((target("avx512f"))) void ColumnSpanAvx512(const float* coef, const uint32_t* cols, size_t ncols,
                                                           const uint16_t* base, size_t stride, size_t blocks,
                                                           float* out) {
  for (size_t p = 0; p < blocks; p += 16) {
    __m512 acc = _mm512_setzero_ps();
    for (size_t k = 0; k < ncols; ++k) {
      const __m512 v =
          _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(base + cols[k] * stride + p)));
      acc = _mm512_fmadd_ps(_mm512_set1_ps(coef[k]), v, acc);
    }
    _mm512_storeu_ps(out + p, acc);
  }
}

__attribute__((target("avx2,fma,f16c"))) void ColumnsAvx2(const float* coef, const uint32_t* cols,
                                                          size_t ncols, const uint16_t* base,
                                                          size_t stride, float* out) {
  for (int half = 0; half < 2; ++half) {  // 2 x 64: 8 accumulators fit the 16 ymm registers
    __m256 acc[8];
    for (auto& a : acc) a = _mm256_setzero_ps();
    for (size_t k = 0; k < ncols; ++k) {
      const __m256 a = _mm256_set1_ps(coef[k]);
      const uint16_t* x = base + cols[k] * stride + 64 * half;
      for (int t = 0; t < 8; ++t) {
        const __m256 v = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(x + 8 * t)));
        acc[t] = _mm256_fmadd_ps(a, v, acc[t]);
      }
    }
    for (int t = 0; t < 8; ++t) _mm256_storeu_ps(out + 64 * half + 8 * t, acc[t]);
  }
}

__attribute__((target("avx512f"))) float DotAvx512(const float* a, const float* b, size_t n) {
  __m512 acc = _mm512_setzero_ps();
  size_t i = 0;
  for (; i + 16 <= n; i += 16) acc = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), acc);
  float sum = _mm512_reduce_add_ps(acc);
  for (; i < n; ++i) sum += a[i] * b[i];
  return sum;
}

__attribute__((target("avx2,fma"))) float DotAvx2(const float* a, const float* b, size_t n) {
  __m256 acc = _mm256_setzero_ps();
  size_t i = 0;
  for (; i + 8 <= n; i += 8) acc = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc);
  alignas(32) float lanes[8];
  _mm256_store_ps(lanes, acc);
  float sum = 0.0f;
  for (float v : lanes) sum += v;
  for (; i < n; ++i) sum += a[i] * b[i];
  return sum;
}

__attribute__((target("avx512f"))) size_t IndicesAtLeastAvx512(const float* x, size_t n, float bar,
                                                               uint32_t* idx) {
  const __m512 b = _mm512_set1_ps(bar);
  size_t m = 0, i = 0;
  for (; i + 16 <= n; i += 16) {
    for (__mmask16 k = _mm512_cmp_ps_mask(_mm512_loadu_ps(x + i), b, _CMP_GE_OQ); k != 0; k &= k - 1) {
      idx[m++] = static_cast<uint32_t>(i + __builtin_ctz(k));
    }
  }
  for (; i < n; ++i) {
    if (x[i] >= bar) idx[m++] = static_cast<uint32_t>(i);
  }
  return m;
}

__attribute__((target("avx2"))) size_t IndicesAtLeastAvx2(const float* x, size_t n, float bar, uint32_t* idx) {
  const __m256 b = _mm256_set1_ps(bar);
  size_t m = 0, i = 0;
  for (; i + 8 <= n; i += 8) {
    for (unsigned k = static_cast<unsigned>(_mm256_movemask_ps(_mm256_cmp_ps(_mm256_loadu_ps(x + i), b, _CMP_GE_OQ)));
         k != 0; k &= k - 1) {
      idx[m++] = static_cast<uint32_t>(i + __builtin_ctz(k));
    }
  }
  for (; i < n; ++i) {
    if (x[i] >= bar) idx[m++] = static_cast<uint32_t>(i);
  }
  return m;
}

// The portable sketch quantisers; the vector loops below finish their
// tails with them.
float MaxAbsPortable(const float* x, size_t n) {
  float m = 0.0f;
  for (size_t i = 0; i < n; ++i) m = std::abs(x[i]) > m ? std::abs(x[i]) : m;
  return m;
}

void QuantizePortable(const float* x, size_t n, float inverse, int8_t* out) {
  for (size_t i = 0; i < n; ++i) {
    const float v = std::nearbyint(std::min(127.0f, std::max(-127.0f, x[i] * inverse)));
    out[i] = std::isnan(x[i]) ? 0 : static_cast<int8_t>(v);
  }
}

__attribute__((target("avx512f"))) float MaxAbsAvx512(const float* x, size_t n) {
  __m512 peak = _mm512_setzero_ps();
  size_t i = 0;
  // MAXPS returns its second operand when either is NaN: a NaN keeps the peak.
  for (; i + 16 <= n; i += 16) peak = _mm512_max_ps(_mm512_abs_ps(_mm512_loadu_ps(x + i)), peak);
  float m = _mm512_reduce_max_ps(peak);
  const float tail = MaxAbsPortable(x + i, n - i);
  return tail > m ? tail : m;
}

__attribute__((target("avx512f"))) void QuantizeAvx512(const float* x, size_t n, float inverse, int8_t* out) {
  const __m512 scale = _mm512_set1_ps(inverse), hi = _mm512_set1_ps(127.0f), lo = _mm512_set1_ps(-127.0f);
  size_t i = 0;
  for (; i + 16 <= n; i += 16) {
    __m512 v = _mm512_mul_ps(_mm512_loadu_ps(x + i), scale);
    v = _mm512_min_ps(_mm512_max_ps(v, lo), hi);  // NaN operands: max/min return the second (lo, then clamped)
    const __mmask16 nan = _mm512_cmp_ps_mask(_mm512_loadu_ps(x + i), _mm512_loadu_ps(x + i), _CMP_UNORD_Q);
    v = _mm512_mask_blend_ps(nan, v, _mm512_setzero_ps());
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out + i), _mm512_cvtsepi32_epi8(_mm512_cvtps_epi32(v)));
  }
  QuantizePortable(x + i, n - i, inverse, out + i);
}

__attribute__((target("avx2"))) float MaxAbsAvx2(const float* x, size_t n) {
  const __m256 magnitude = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
  __m256 peak = _mm256_setzero_ps();
  size_t i = 0;
  // MAXPS returns its second operand when either is NaN: a NaN keeps the peak.
  for (; i + 8 <= n; i += 8) peak = _mm256_max_ps(_mm256_and_ps(_mm256_loadu_ps(x + i), magnitude), peak);
  alignas(32) float lanes[8];
  _mm256_store_ps(lanes, peak);
  float m = 0.0f;
  for (float v : lanes) m = v > m ? v : m;
  const float tail = MaxAbsPortable(x + i, n - i);
  return tail > m ? tail : m;
}

// Eight codes of QuantizeAvx2. Without FMA in the target, so the multiply
// and the adds round as the portable loop's do (no contraction), and every
// ISA gives the same codes.
__attribute__((target("avx2"))) inline __m256i Int8CodesAvx2(const float* p, __m256 scale) {
  const __m256 in = _mm256_loadu_ps(p);
  __m256 v = _mm256_min_ps(_mm256_max_ps(_mm256_mul_ps(in, scale), _mm256_set1_ps(-127.0f)),  // NaN: max gives -127
                           _mm256_set1_ps(127.0f));
  v = _mm256_and_ps(v, _mm256_cmp_ps(in, in, _CMP_ORD_Q));  // NaN -> 0
  return _mm256_cvtps_epi32(v);                              // round to nearest even, as nearbyint
}

__attribute__((target("avx2"))) void QuantizeAvx2(const float* x, size_t n, float inverse, int8_t* out) {
  const __m256 scale = _mm256_set1_ps(inverse);
  size_t i = 0;
  for (; i + 32 <= n; i += 32) {
    const __m256i a = Int8CodesAvx2(x + i, scale), b = Int8CodesAvx2(x + i + 8, scale),
                  c = Int8CodesAvx2(x + i + 16, scale), d = Int8CodesAvx2(x + i + 24, scale);
    // packs work within 128-bit lanes: bytes come out as a0-3 b0-3 c0-3
    // d0-3 | a4-7 b4-7 c4-7 d4-7; the permute puts them in order.
    const __m256i bytes = _mm256_packs_epi16(_mm256_packs_epi32(a, b), _mm256_packs_epi32(c, d));
    const __m256i ordered = _mm256_permutevar8x32_epi32(bytes, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + i), ordered);
  }
  QuantizePortable(x + i, n - i, inverse, out + i);
}

size_t IndicesAtLeastPortable(const float* x, size_t n, float bar, uint32_t* idx) {
  size_t m = 0;
  for (size_t i = 0; i < n; ++i) {
    if (x[i] >= bar) idx[m++] = static_cast<uint32_t>(i);
  }
  return m;
}

// The nibble quantiser's two passes (see QuantizeNibbles): clamp (NaN to 0)
// with the extremes, then the codes. Portable and AVX2 (no FMA, as above)
// compute the same floats in the same order.
void NibblesPortable(const float* x, size_t n, float* scratch, float* lo_out, float* hi_out) {
  float lo = 65504.0f, hi = -65504.0f;
  for (size_t i = 0; i < n; ++i) {
    const float v = x[i] == x[i] ? std::clamp(x[i], -65504.0f, 65504.0f) : 0.0f;
    scratch[i] = v;
    lo = std::min(lo, v);
    hi = std::max(hi, v);
  }
  *lo_out = lo;
  *hi_out = hi;
}
void NibbleCodesPortable(const float* scratch, size_t n, float lo, float inverse, uint8_t* codes) {
  for (size_t i = 0; i < n; ++i) {
    // Non-negative, so truncation after adding a half rounds to nearest.
    const float level = std::min((scratch[i] - lo) * inverse + 0.5f, 15.0f);
    codes[i] = static_cast<uint8_t>(static_cast<int32_t>(level));
  }
}

__attribute__((target("avx2"))) void NibblesAvx2(const float* x, size_t n, float* scratch, float* lo_out,
                                                 float* hi_out) {
  const __m256 top = _mm256_set1_ps(65504.0f), bottom = _mm256_set1_ps(-65504.0f);
  __m256 lo = top, hi = bottom;
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 in = _mm256_loadu_ps(x + i);
    __m256 v = _mm256_min_ps(_mm256_max_ps(in, bottom), top);  // NaN: max returns bottom
    v = _mm256_and_ps(v, _mm256_cmp_ps(in, in, _CMP_ORD_Q));    // NaN -> 0
    _mm256_storeu_ps(scratch + i, v);
    lo = _mm256_min_ps(lo, v);
    hi = _mm256_max_ps(hi, v);
  }
  alignas(32) float los[8], his[8];
  _mm256_store_ps(los, lo);
  _mm256_store_ps(his, hi);
  float l = 65504.0f, h = -65504.0f;
  for (int k = 0; k < 8; ++k) {
    l = std::min(l, los[k]);
    h = std::max(h, his[k]);
  }
  for (; i < n; ++i) {
    const float v = x[i] == x[i] ? std::clamp(x[i], -65504.0f, 65504.0f) : 0.0f;
    scratch[i] = v;
    l = std::min(l, v);
    h = std::max(h, v);
  }
  *lo_out = l;
  *hi_out = h;
}
__attribute__((target("avx2"))) void NibbleCodesAvx2(const float* scratch, size_t n, float lo, float inverse,
                                                     uint8_t* codes) {
  const __m256 base = _mm256_set1_ps(lo), scale = _mm256_set1_ps(inverse), half = _mm256_set1_ps(0.5f),
               top = _mm256_set1_ps(15.0f);
  size_t i = 0;
  for (; i + 32 <= n; i += 32) {
    __m256i w[4];
    for (int k = 0; k < 4; ++k) {
      const __m256 level = _mm256_min_ps(
          _mm256_add_ps(_mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(scratch + i + 8 * k), base), scale), half), top);
      w[k] = _mm256_cvttps_epi32(level);
    }
    const __m256i bytes = _mm256_packus_epi16(_mm256_packs_epi32(w[0], w[1]), _mm256_packs_epi32(w[2], w[3]));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(codes + i),
                        _mm256_permutevar8x32_epi32(bytes, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7)));
  }
  NibbleCodesPortable(scratch + i, n - i, lo, inverse, codes + i);
}

bool Available(DotIsa isa) {
  switch (isa) {
    case DotIsa::kAvx512: return kIsa == Isa::kAvx512;
    case DotIsa::kAvx2: return kIsa != Isa::kPortable;  // an AVX-512 CPU has AVX2 too
    case DotIsa::kPortable: return true;
  }
  return false;
}

DotIsa Best() {
  return kIsa == Isa::kAvx512 ? DotIsa::kAvx512 : kIsa == Isa::kAvx2 ? DotIsa::kAvx2 : DotIsa::kPortable;
}

float MaxAbsWith(DotIsa isa, const float* x, size_t n) {
  switch (isa) {
    case DotIsa::kAvx512: return MaxAbsAvx512(x, n);
    case DotIsa::kAvx2: return MaxAbsAvx2(x, n);
    case DotIsa::kPortable: break;
  }
  return MaxAbsPortable(x, n);
}

void QuantizeInt8With(DotIsa isa, const float* x, size_t n, float inverse, int8_t* out) {
  switch (isa) {
    case DotIsa::kAvx512: return QuantizeAvx512(x, n, inverse, out);
    case DotIsa::kAvx2: return QuantizeAvx2(x, n, inverse, out);
    case DotIsa::kPortable: break;
  }
  QuantizePortable(x, n, inverse, out);
}

std::pair<float, float> QuantizeNibblesWith(DotIsa isa, const float* x, size_t n, float* scratch, uint8_t* codes) {
  // No AVX-512 loop of its own: the AVX2 one serves AVX-512 CPUs too.
  const bool avx2 = isa != DotIsa::kPortable;
  float lo, hi;
  if (avx2) {
    NibblesAvx2(x, n, scratch, &lo, &hi);
  } else {
    NibblesPortable(x, n, scratch, &lo, &hi);
  }
  // A range so narrow that 1 / step would overflow (no fp16 summary has
  // one) gets the smallest step whose inverse is finite, so no code is
  // computed from 0 x inf on any path.
  constexpr float kMinStep = 1e-30f;
  const float step = hi > lo ? std::max((hi - lo) / 15.0f, kMinStep) : 1.0f;
  const float inverse = 1.0f / step;
  if (avx2) {
    NibbleCodesAvx2(scratch, n, lo, inverse, codes);
  } else {
    NibbleCodesPortable(scratch, n, lo, inverse, codes);
  }
  return {lo + 8.0f * step, step};
}

size_t IndicesAtLeastWith(DotIsa isa, const float* x, size_t n, float bar, uint32_t* idx) {
  switch (isa) {
    case DotIsa::kAvx512: return IndicesAtLeastAvx512(x, n, bar, idx);
    case DotIsa::kAvx2: return IndicesAtLeastAvx2(x, n, bar, idx);
    case DotIsa::kPortable: break;
  }
  return IndicesAtLeastPortable(x, n, bar, idx);
}

const DotIsa kBest = Best();

}  // namespace

float MaxAbs(const float* x, size_t n) { return MaxAbsWith(kBest, x, n); }

void QuantizeInt8(const float* x, size_t n, float inverse, int8_t* out) { QuantizeInt8With(kBest, x, n, inverse, out); }

std::pair<float, float> QuantizeNibbles(const float* x, size_t n, float* scratch, uint8_t* codes) {
  return QuantizeNibblesWith(kBest, x, n, scratch, codes);
}

size_t IndicesAtLeast(const float* x, size_t n, float bar, uint32_t* idx) {
  return IndicesAtLeastWith(kBest, x, n, bar, idx);
}

bool MaxAbsOn(DotIsa isa, const float* x, size_t n, float* out) {
  if (!Available(isa)) return false;
  *out = MaxAbsWith(isa, x, n);
  return true;
}

bool QuantizeInt8On(DotIsa isa, const float* x, size_t n, float inverse, int8_t* out) {
  if (!Available(isa)) return false;
  QuantizeInt8With(isa, x, n, inverse, out);
  return true;
}

bool QuantizeNibblesOn(DotIsa isa, const float* x, size_t n, float* scratch, uint8_t* codes,
                       std::pair<float, float>* base_step) {
  if (!Available(isa)) return false;
  *base_step = QuantizeNibblesWith(isa, x, n, scratch, codes);
  return true;
}

bool IndicesAtLeastOn(DotIsa isa, const float* x, size_t n, float bar, uint32_t* idx, size_t* count) {
  if (!Available(isa)) return false;
  *count = IndicesAtLeastWith(isa, x, n, bar, idx);
  return true;
}

float DotF32(const float* a, const float* b, size_t n) {
  if (kIsa == Isa::kAvx512) return DotAvx512(a, b, n);
  if (kIsa == Isa::kAvx2) return DotAvx2(a, b, n);
  float sum = 0.0f;
  for (size_t i = 0; i < n; ++i) sum += a[i] * b[i];
  return sum;
}

void WeightedColumnSumSpan(const float* coef, const uint32_t* cols, size_t ncols, const uint16_t* base,
                           size_t stride, size_t blocks, float* out) {
  assert(blocks % 16 == 0 && blocks <= kColumnTile);
  if (kIsa == Isa::kAvx512) return ColumnSpanAvx512(coef, cols, ncols, base, stride, blocks, out);
  std::fill(out, out + blocks, 0.0f);
  for (size_t k = 0; k < ncols; ++k) AxpyF16(coef[k], base + cols[k] * stride, out, blocks);
}

void WeightedColumnSum(const float* coef, const uint32_t* cols, size_t ncols, const uint16_t* base,
                       size_t stride, float* out) {
  if (kIsa == Isa::kAvx512) return ColumnsAvx512(coef, cols, ncols, base, stride, out);
  if (kIsa == Isa::kAvx2) return ColumnsAvx2(coef, cols, ncols, base, stride, out);
  std::fill(out, out + kColumnTile, 0.0f);
  for (size_t k = 0; k < ncols; ++k) AxpyF16(coef[k], base + cols[k] * stride, out, kColumnTile);
}

void AxpyF16(float a, const uint16_t* x, float* y, size_t n) {
  if (kIsa == Isa::kAvx512) return AxpyAvx512(a, x, y, n);
  if (kIsa == Isa::kAvx2) return AxpyAvx2(a, x, y, n);
  for (size_t i = 0; i < n; ++i) y[i] += a * attention::HalfToFloat(x[i]);
}

const char* F16KernelIsa() {
  switch (kIsa) {
    case Isa::kAvx512: return "avx512";
    case Isa::kAvx2: return "avx2";
    case Isa::kPortable: return "portable";
  }
  return "portable";
}

}  // namespace msa
