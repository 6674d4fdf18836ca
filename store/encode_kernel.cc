#include "store/encode_kernel.h"

#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <limits>

#include "attention/half.h"

namespace msa {

namespace {

KernelIsa Detect() {
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw")) return KernelIsa::kAvx512;
  if (__builtin_cpu_supports("avx2")) return KernelIsa::kAvx2;
  return KernelIsa::kPortable;
}

const KernelIsa kIsa = Detect();
const bool kF16cFma = [] {
  __builtin_cpu_init();
  return attention::CpuHasF16c() && __builtin_cpu_supports("fma");
}();

// ---- portable: the definitions every other path must reproduce ------------

bool ColumnRangePortable(const float* x, size_t rows, size_t d, size_t c0, float* lo, float* hi) {
  bool nan = false;
  for (size_t r = 0; r < rows; ++r) {
    const float* row = x + r * d;
    for (size_t c = c0; c < d; ++c) {
      nan |= row[c] != row[c];
      lo[c] = std::min(lo[c], row[c]);
      hi[c] = std::max(hi[c], row[c]);
    }
  }
  return nan;
}

void ColumnSumPortable(const float* x, size_t rows, size_t d, size_t c0, float* sum) {
  for (size_t r = 0; r < rows; ++r) {
    for (size_t c = c0; c < d; ++c) sum[c] += x[r * d + c];
  }
}

bool RowRangePortable(const float* x, size_t n, float* lo, float* hi) {
  float l = std::numeric_limits<float>::infinity(), h = -l;
  bool nan = false;
  for (size_t i = 0; i < n; ++i) {
    nan |= x[i] != x[i];
    l = std::min(l, x[i]);
    h = std::max(h, x[i]);
  }
  *lo = l;
  *hi = h;
  return nan;
}

uint16_t NextDown(uint16_t h) {
  if (h == 0x0000) return 0x8001;
  return (h & 0x8000) ? static_cast<uint16_t>(h + 1) : static_cast<uint16_t>(h - 1);
}
uint16_t NextUp(uint16_t h) {
  if (h == 0x8000) return 0x0001;
  return (h & 0x8000) ? static_cast<uint16_t>(h - 1) : static_cast<uint16_t>(h + 1);
}
// The largest fp16 <= x, and the smallest fp16 >= x (x finite, in range).
uint16_t HalfAtMost(float x) {
  const uint16_t h = attention::FloatToHalf(x);
  return attention::HalfToFloat(h) > x ? NextDown(h) : h;
}
uint16_t HalfAtLeast(float x) {
  const uint16_t h = attention::FloatToHalf(x);
  return attention::HalfToFloat(h) < x ? NextUp(h) : h;
}
constexpr float kHalfMax = 65504.0f;

// min + levels * scale must reach hi despite float rounding of the product.
// Returns whether the scale is finite.
bool RaiseScale(float hi, float levels, float min, uint16_t* scale16, float* scale) {
  while (std::fma(*scale, levels, min) < hi) {
    *scale16 = NextUp(*scale16);
    *scale = attention::HalfToFloat(*scale16);
  }
  return std::isfinite(*scale);
}

bool FitRangesPortable(const float* lo, const float* hi, size_t from, size_t n, uint32_t levels, uint16_t* scale16,
                       uint16_t* min16, float* scale, float* min) {
  const float lv = static_cast<float>(levels);
  for (size_t i = from; i < n; ++i) {
    if (!(lo[i] >= -kHalfMax && hi[i] <= kHalfMax)) return false;  // NaN fails too
    min16[i] = HalfAtMost(lo[i]);
    min[i] = attention::HalfToFloat(min16[i]);
    scale16[i] = HalfAtLeast((hi[i] - min[i]) / lv);
    scale[i] = attention::HalfToFloat(scale16[i]);
    if (!RaiseScale(hi[i], lv, min[i], &scale16[i], &scale[i])) return false;
  }
  return true;
}

inline float At(const float* p, size_t i) { return p[i]; }
inline float At(float p, size_t) { return p; }

template <typename P>
void QuantizePortable(const float* x, P min, P inv, float levels, size_t from, size_t n, uint8_t* codes) {
  for (size_t i = from; i < n; ++i) {
    codes[i] = static_cast<uint8_t>(std::min((x[i] - At(min, i)) * At(inv, i) + 0.5f, levels));
  }
}

// ---- AVX-512 ----------------------------------------------------------------
// Min16(v, run) (_mm512_min_ps) is (v < run) ? v : run, which is std::min(run, v)
// including NaN (keeps run) and signed zeros (keeps run); Max16(v,
// run) likewise std::max(run, v). So per column the vector loop makes the
// scalar loop's choices.

#define MSA_AVX512 __attribute__((target("avx512f,avx512bw,avx2")))
#define MSA_AVX2 __attribute__((target("avx2")))

// _mm512_min_ps/_max_ps/_cvttps_epi32 with an all-ones mask and an explicit
// source: the same instructions, without GCC 12's spurious "uninitialized"
// warning about the unmasked forms' undefined source.
constexpr __mmask16 kAll = 0xffff;
MSA_AVX512 inline __m512 Min16(__m512 a, __m512 b) { return _mm512_mask_min_ps(a, kAll, a, b); }
MSA_AVX512 inline __m512 Max16(__m512 a, __m512 b) { return _mm512_mask_max_ps(a, kAll, a, b); }

MSA_AVX512 bool ColumnRangeAvx512(const float* x, size_t rows, size_t d, float* lo, float* hi) {
  __mmask16 nan = 0;
  size_t c = 0;
  for (; c + 64 <= d; c += 64) {  // four independent chains per row
    __m512 l0 = _mm512_loadu_ps(lo + c), l1 = _mm512_loadu_ps(lo + c + 16);
    __m512 l2 = _mm512_loadu_ps(lo + c + 32), l3 = _mm512_loadu_ps(lo + c + 48);
    __m512 h0 = _mm512_loadu_ps(hi + c), h1 = _mm512_loadu_ps(hi + c + 16);
    __m512 h2 = _mm512_loadu_ps(hi + c + 32), h3 = _mm512_loadu_ps(hi + c + 48);
    for (size_t r = 0; r < rows; ++r) {
      const float* p = x + r * d + c;
      const __m512 v0 = _mm512_loadu_ps(p), v1 = _mm512_loadu_ps(p + 16);
      const __m512 v2 = _mm512_loadu_ps(p + 32), v3 = _mm512_loadu_ps(p + 48);
      nan |= _mm512_cmp_ps_mask(v0, v1, _CMP_UNORD_Q) | _mm512_cmp_ps_mask(v2, v3, _CMP_UNORD_Q);
      l0 = Min16(v0, l0), l1 = Min16(v1, l1), l2 = Min16(v2, l2), l3 = Min16(v3, l3);
      h0 = Max16(v0, h0), h1 = Max16(v1, h1), h2 = Max16(v2, h2), h3 = Max16(v3, h3);
    }
    _mm512_storeu_ps(lo + c, l0), _mm512_storeu_ps(lo + c + 16, l1);
    _mm512_storeu_ps(lo + c + 32, l2), _mm512_storeu_ps(lo + c + 48, l3);
    _mm512_storeu_ps(hi + c, h0), _mm512_storeu_ps(hi + c + 16, h1);
    _mm512_storeu_ps(hi + c + 32, h2), _mm512_storeu_ps(hi + c + 48, h3);
  }
  for (; c + 16 <= d; c += 16) {
    __m512 l = _mm512_loadu_ps(lo + c), h = _mm512_loadu_ps(hi + c);
    for (size_t r = 0; r < rows; ++r) {
      const __m512 v = _mm512_loadu_ps(x + r * d + c);
      nan |= _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
      l = Min16(v, l);
      h = Max16(v, h);
    }
    _mm512_storeu_ps(lo + c, l);
    _mm512_storeu_ps(hi + c, h);
  }
  const bool tail_nan = c < d && ColumnRangePortable(x, rows, d, c, lo, hi);
  return nan != 0 || tail_nan;
}

MSA_AVX512 void ColumnSumAvx512(const float* x, size_t rows, size_t d, float* sum) {
  size_t c = 0;
  for (; c + 64 <= d; c += 64) {
    __m512 s0 = _mm512_loadu_ps(sum + c), s1 = _mm512_loadu_ps(sum + c + 16);
    __m512 s2 = _mm512_loadu_ps(sum + c + 32), s3 = _mm512_loadu_ps(sum + c + 48);
    for (size_t r = 0; r < rows; ++r) {
      const float* p = x + r * d + c;
      s0 = _mm512_add_ps(s0, _mm512_loadu_ps(p)), s1 = _mm512_add_ps(s1, _mm512_loadu_ps(p + 16));
      s2 = _mm512_add_ps(s2, _mm512_loadu_ps(p + 32)), s3 = _mm512_add_ps(s3, _mm512_loadu_ps(p + 48));
    }
    _mm512_storeu_ps(sum + c, s0), _mm512_storeu_ps(sum + c + 16, s1);
    _mm512_storeu_ps(sum + c + 32, s2), _mm512_storeu_ps(sum + c + 48, s3);
  }
  for (; c + 16 <= d; c += 16) {
    __m512 s = _mm512_loadu_ps(sum + c);
    for (size_t r = 0; r < rows; ++r) s = _mm512_add_ps(s, _mm512_loadu_ps(x + r * d + c));
    _mm512_storeu_ps(sum + c, s);
  }
  if (c < d) ColumnSumPortable(x, rows, d, c, sum);
}

MSA_AVX512 bool RowRangeAvx512(const float* x, size_t n, float* lo, float* hi) {
  __m512 l = _mm512_set1_ps(std::numeric_limits<float>::infinity());
  __m512 h = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
  __mmask16 nan = 0;
  size_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m512 v = _mm512_loadu_ps(x + i);
    nan |= _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
    l = Min16(v, l);
    h = Max16(v, h);
  }
  // Lanes hold no NaN (never chosen), so the lanes' minimum is the minimum;
  // only a zero's sign depends on the order (below).
  // (Reduced through memory: GCC 12's _mm512_reduce_min_ps warns.)
  alignas(64) float ls[16], hs[16];
  _mm512_store_ps(ls, l);
  _mm512_store_ps(hs, h);
  float lv = ls[0], hv = hs[0];
  for (int k = 1; k < 16; ++k) {
    lv = std::min(lv, ls[k]);
    hv = std::max(hv, hs[k]);
  }
  bool any_nan = nan != 0;
  for (; i < n; ++i) {
    any_nan |= x[i] != x[i];
    lv = std::min(lv, x[i]);
    hv = std::max(hv, x[i]);
  }
  if (lv == 0.0f || hv == 0.0f) return RowRangePortable(x, n, lo, hi);
  *lo = lv;
  *hi = hv;
  return any_nan;
}

template <typename P>
MSA_AVX512 inline __m512 Param16(P p, size_t i) {
  if constexpr (std::is_same_v<P, float>) {
    return _mm512_set1_ps(p);
  } else {
    return _mm512_loadu_ps(p + i);
  }
}

template <typename P>
MSA_AVX512 void QuantizeAvx512(const float* x, P min, P inv, float levels, size_t n, uint8_t* codes) {
  const __m512 half = _mm512_set1_ps(0.5f), top = _mm512_set1_ps(levels);
  size_t i = 0;
  for (; i + 16 <= n; i += 16) {
    __m512 v = _mm512_sub_ps(_mm512_loadu_ps(x + i), Param16(min, i));
    v = _mm512_add_ps(_mm512_mul_ps(v, Param16(inv, i)), half);
    v = Min16(v, top);  // x >= min: v is finite and >= 0.5, never NaN
    const __m512i c = _mm512_mask_cvttps_epi32(_mm512_setzero_si512(), kAll, v);
    _mm512_mask_cvtepi32_storeu_epi8(codes + i, kAll, c);
  }
  QuantizePortable(x, min, inv, levels, i, n, codes);
}

// ---- AVX2 -------------------------------------------------------------------

MSA_AVX2 bool ColumnRangeAvx2(const float* x, size_t rows, size_t d, float* lo, float* hi) {
  __m256 nan = _mm256_setzero_ps();
  size_t c = 0;
  for (; c + 32 <= d; c += 32) {
    __m256 l0 = _mm256_loadu_ps(lo + c), l1 = _mm256_loadu_ps(lo + c + 8);
    __m256 l2 = _mm256_loadu_ps(lo + c + 16), l3 = _mm256_loadu_ps(lo + c + 24);
    __m256 h0 = _mm256_loadu_ps(hi + c), h1 = _mm256_loadu_ps(hi + c + 8);
    __m256 h2 = _mm256_loadu_ps(hi + c + 16), h3 = _mm256_loadu_ps(hi + c + 24);
    for (size_t r = 0; r < rows; ++r) {
      const float* p = x + r * d + c;
      const __m256 v0 = _mm256_loadu_ps(p), v1 = _mm256_loadu_ps(p + 8);
      const __m256 v2 = _mm256_loadu_ps(p + 16), v3 = _mm256_loadu_ps(p + 24);
      nan = _mm256_or_ps(nan, _mm256_or_ps(_mm256_cmp_ps(v0, v1, _CMP_UNORD_Q), _mm256_cmp_ps(v2, v3, _CMP_UNORD_Q)));
      l0 = _mm256_min_ps(v0, l0), l1 = _mm256_min_ps(v1, l1), l2 = _mm256_min_ps(v2, l2), l3 = _mm256_min_ps(v3, l3);
      h0 = _mm256_max_ps(v0, h0), h1 = _mm256_max_ps(v1, h1), h2 = _mm256_max_ps(v2, h2), h3 = _mm256_max_ps(v3, h3);
    }
    _mm256_storeu_ps(lo + c, l0), _mm256_storeu_ps(lo + c + 8, l1);
    _mm256_storeu_ps(lo + c + 16, l2), _mm256_storeu_ps(lo + c + 24, l3);
    _mm256_storeu_ps(hi + c, h0), _mm256_storeu_ps(hi + c + 8, h1);
    _mm256_storeu_ps(hi + c + 16, h2), _mm256_storeu_ps(hi + c + 24, h3);
  }
  for (; c + 8 <= d; c += 8) {
    __m256 l = _mm256_loadu_ps(lo + c), h = _mm256_loadu_ps(hi + c);
    for (size_t r = 0; r < rows; ++r) {
      const __m256 v = _mm256_loadu_ps(x + r * d + c);
      nan = _mm256_or_ps(nan, _mm256_cmp_ps(v, v, _CMP_UNORD_Q));
      l = _mm256_min_ps(v, l);
      h = _mm256_max_ps(v, h);
    }
    _mm256_storeu_ps(lo + c, l);
    _mm256_storeu_ps(hi + c, h);
  }
  const bool tail_nan = c < d && ColumnRangePortable(x, rows, d, c, lo, hi);
  return _mm256_movemask_ps(nan) != 0 || tail_nan;
}

MSA_AVX2 void ColumnSumAvx2(const float* x, size_t rows, size_t d, float* sum) {
  size_t c = 0;
  for (; c + 32 <= d; c += 32) {
    __m256 s0 = _mm256_loadu_ps(sum + c), s1 = _mm256_loadu_ps(sum + c + 8);
    __m256 s2 = _mm256_loadu_ps(sum + c + 16), s3 = _mm256_loadu_ps(sum + c + 24);
    for (size_t r = 0; r < rows; ++r) {
      const float* p = x + r * d + c;
      s0 = _mm256_add_ps(s0, _mm256_loadu_ps(p)), s1 = _mm256_add_ps(s1, _mm256_loadu_ps(p + 8));
      s2 = _mm256_add_ps(s2, _mm256_loadu_ps(p + 16)), s3 = _mm256_add_ps(s3, _mm256_loadu_ps(p + 24));
    }
    _mm256_storeu_ps(sum + c, s0), _mm256_storeu_ps(sum + c + 8, s1);
    _mm256_storeu_ps(sum + c + 16, s2), _mm256_storeu_ps(sum + c + 24, s3);
  }
  for (; c + 8 <= d; c += 8) {
    __m256 s = _mm256_loadu_ps(sum + c);
    for (size_t r = 0; r < rows; ++r) s = _mm256_add_ps(s, _mm256_loadu_ps(x + r * d + c));
    _mm256_storeu_ps(sum + c, s);
  }
  if (c < d) ColumnSumPortable(x, rows, d, c, sum);
}

MSA_AVX2 bool RowRangeAvx2(const float* x, size_t n, float* lo, float* hi) {
  __m256 l = _mm256_set1_ps(std::numeric_limits<float>::infinity());
  __m256 h = _mm256_set1_ps(-std::numeric_limits<float>::infinity());
  __m256 nan = _mm256_setzero_ps();
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 v = _mm256_loadu_ps(x + i);
    nan = _mm256_or_ps(nan, _mm256_cmp_ps(v, v, _CMP_UNORD_Q));
    l = _mm256_min_ps(v, l);
    h = _mm256_max_ps(v, h);
  }
  alignas(32) float ls[8], hs[8];
  _mm256_store_ps(ls, l);
  _mm256_store_ps(hs, h);
  float lv = ls[0], hv = hs[0];
  for (int k = 1; k < 8; ++k) {
    lv = std::min(lv, ls[k]);
    hv = std::max(hv, hs[k]);
  }
  bool any_nan = _mm256_movemask_ps(nan) != 0;
  for (; i < n; ++i) {
    any_nan |= x[i] != x[i];
    lv = std::min(lv, x[i]);
    hv = std::max(hv, x[i]);
  }
  if (lv == 0.0f || hv == 0.0f) return RowRangePortable(x, n, lo, hi);
  *lo = lv;
  *hi = hv;
  return any_nan;
}

template <typename P>
MSA_AVX2 inline __m256 Param8(P p, size_t i) {
  if constexpr (std::is_same_v<P, float>) {
    return _mm256_set1_ps(p);
  } else {
    return _mm256_loadu_ps(p + i);
  }
}

template <typename P>
MSA_AVX2 inline __m256i Codes8(const float* x, P min, P inv, __m256 half, __m256 top, size_t i) {
  __m256 v = _mm256_sub_ps(_mm256_loadu_ps(x + i), Param8(min, i));
  v = _mm256_add_ps(_mm256_mul_ps(v, Param8(inv, i)), half);
  return _mm256_cvttps_epi32(_mm256_min_ps(v, top));
}

template <typename P>
MSA_AVX2 void QuantizeAvx2(const float* x, P min, P inv, float levels, size_t n, uint8_t* codes) {
  const __m256 half = _mm256_set1_ps(0.5f), top = _mm256_set1_ps(levels);
  const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
  size_t i = 0;
  for (; i + 32 <= n; i += 32) {
    const __m256i a = Codes8(x, min, inv, half, top, i), b = Codes8(x, min, inv, half, top, i + 8);
    const __m256i c = Codes8(x, min, inv, half, top, i + 16), d = Codes8(x, min, inv, half, top, i + 24);
    // The packs work per 128-bit lane: a0-3 b0-3 c0-3 d0-3 | a4-7 b4-7 c4-7 d4-7.
    const __m256i bytes = _mm256_packus_epi16(_mm256_packus_epi32(a, b), _mm256_packus_epi32(c, d));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(codes + i), _mm256_permutevar8x32_epi32(bytes, order));
  }
  QuantizePortable(x, min, inv, levels, i, n, codes);
}

// F16C's conversions rounding down and up are HalfAtMost and HalfAtLeast
// (for finite values in fp16's range, signed zeros included), and vfmadd is
// std::fma; lanes whose scale must still rise take the scalar steps.
__attribute__((target("avx2,f16c,fma"))) bool FitRangesAvx2(const float* lo, const float* hi, size_t n,
                                                             uint32_t levels, uint16_t* scale16, uint16_t* min16,
                                                             float* scale, float* min) {
  const float lv = static_cast<float>(levels);
  const __m256 lv8 = _mm256_set1_ps(lv), lowest = _mm256_set1_ps(-kHalfMax), highest = _mm256_set1_ps(kHalfMax);
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 l = _mm256_loadu_ps(lo + i), h = _mm256_loadu_ps(hi + i);
    const __m256 in_range = _mm256_and_ps(_mm256_cmp_ps(l, lowest, _CMP_GE_OQ), _mm256_cmp_ps(h, highest, _CMP_LE_OQ));
    if (_mm256_movemask_ps(in_range) != 0xff) return false;
    const __m128i m16 = _mm256_cvtps_ph(l, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
    const __m256 m = _mm256_cvtph_ps(m16);
    const __m128i s16 = _mm256_cvtps_ph(_mm256_div_ps(_mm256_sub_ps(h, m), lv8), _MM_FROUND_TO_POS_INF | _MM_FROUND_NO_EXC);
    const __m256 s = _mm256_cvtph_ps(s16);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(min16 + i), m16);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(scale16 + i), s16);
    _mm256_storeu_ps(min + i, m);
    _mm256_storeu_ps(scale + i, s);
    const int short_of = _mm256_movemask_ps(_mm256_cmp_ps(_mm256_fmadd_ps(s, lv8, m), h, _CMP_LT_OQ));
    // Not finite (isfinite's test: |s| < inf, false for NaN): refused.
    const __m256 abs_s = _mm256_andnot_ps(_mm256_set1_ps(-0.0f), s);
    if (_mm256_movemask_ps(_mm256_cmp_ps(abs_s, _mm256_set1_ps(std::numeric_limits<float>::infinity()), _CMP_LT_OQ)) != 0xff) {
      return false;
    }
    if (short_of) {
      for (int k = 0; k < 8; ++k) {
        if (((short_of >> k) & 1) && !RaiseScale(hi[i + k], lv, min[i + k], &scale16[i + k], &scale[i + k])) return false;
      }
    }
  }
  return FitRangesPortable(lo, hi, i, n, levels, scale16, min16, scale, min);
}

template <typename P>
void Quantize(const float* x, P min, P inv, float levels, size_t n, uint8_t* codes, KernelIsa isa) {
  switch (isa) {
    case KernelIsa::kAvx512: return QuantizeAvx512(x, min, inv, levels, n, codes);
    case KernelIsa::kAvx2: return QuantizeAvx2(x, min, inv, levels, n, codes);
    case KernelIsa::kPortable: return QuantizePortable(x, min, inv, levels, 0, n, codes);
  }
}

}  // namespace

KernelIsa DetectedKernelIsa() { return kIsa; }

bool KernelIsaSupported(KernelIsa isa) {
  switch (isa) {
    case KernelIsa::kPortable: return true;
    case KernelIsa::kAvx2: return kIsa != KernelIsa::kPortable;
    case KernelIsa::kAvx512: return kIsa == KernelIsa::kAvx512;
  }
  return false;
}

const char* KernelIsaName(KernelIsa isa) {
  switch (isa) {
    case KernelIsa::kAvx512: return "avx512";
    case KernelIsa::kAvx2: return "avx2";
    case KernelIsa::kPortable: return "portable";
  }
  return "portable";
}

bool ColumnRange(const float* x, size_t rows, size_t d, float* lo, float* hi, KernelIsa isa) {
  switch (isa) {
    case KernelIsa::kAvx512: return ColumnRangeAvx512(x, rows, d, lo, hi);
    case KernelIsa::kAvx2: return ColumnRangeAvx2(x, rows, d, lo, hi);
    case KernelIsa::kPortable: break;
  }
  return ColumnRangePortable(x, rows, d, 0, lo, hi);
}

void ColumnSum(const float* x, size_t rows, size_t d, float* sum, KernelIsa isa) {
  switch (isa) {
    case KernelIsa::kAvx512: return ColumnSumAvx512(x, rows, d, sum);
    case KernelIsa::kAvx2: return ColumnSumAvx2(x, rows, d, sum);
    case KernelIsa::kPortable: return ColumnSumPortable(x, rows, d, 0, sum);
  }
}

bool RowRange(const float* x, size_t n, float* lo, float* hi, KernelIsa isa) {
  switch (isa) {
    case KernelIsa::kAvx512: return RowRangeAvx512(x, n, lo, hi);
    case KernelIsa::kAvx2: return RowRangeAvx2(x, n, lo, hi);
    case KernelIsa::kPortable: break;
  }
  return RowRangePortable(x, n, lo, hi);
}

void QuantizeCodes(const float* x, const float* min, const float* inv, float levels, size_t n,
                   uint8_t* codes, KernelIsa isa) {
  Quantize(x, min, inv, levels, n, codes, isa);
}

void QuantizeCodes(const float* x, float min, float inv, float levels, size_t n, uint8_t* codes,
                   KernelIsa isa) {
  Quantize(x, min, inv, levels, n, codes, isa);
}

bool FitRanges(const float* lo, const float* hi, size_t n, uint32_t levels, uint16_t* scale16, uint16_t* min16,
               float* scale, float* min, KernelIsa isa) {
  if (isa != KernelIsa::kPortable && KernelIsaSupported(isa) && kF16cFma) {
    return FitRangesAvx2(lo, hi, n, levels, scale16, min16, scale, min);
  }
  return FitRangesPortable(lo, hi, 0, n, levels, scale16, min16, scale, min);
}

}  // namespace msa
