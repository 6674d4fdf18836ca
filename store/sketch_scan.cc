#include "store/sketch_scan.h"

#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstring>

namespace msa {

namespace {

using Isa = SketchIsa;

bool Supports(Isa isa) {
  __builtin_cpu_init();
  switch (isa) {
    case Isa::kAvx512Vnni:
      return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
             __builtin_cpu_supports("avx512vnni");
    case Isa::kAvx2: return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    case Isa::kPortable: return true;
  }
  return false;
}

const Isa kIsa = Supports(Isa::kAvx512Vnni) ? Isa::kAvx512Vnni : Supports(Isa::kAvx2) ? Isa::kAvx2 : Isa::kPortable;

// acc += four u8 x s8 products per 32-bit lane. GCC 12's intrinsic for
// this ties its accumulator in a way that copies every accumulator on every
// use (about 3x the instructions of the loop); the one instruction, asm'd.
#define MSA_VNNI_TARGET __attribute__((target("avx512f,avx512bw,avx512vnni")))
MSA_VNNI_TARGET __attribute__((always_inline)) inline void DotBytes(__m512i& acc, __m512i u8,
                                                                                 __m512i s8) {
  asm("vpdpbusd %2, %1, %0" : "+v"(acc) : "v"(u8), "v"(s8));
}

// One head's four accumulators (blocks 0-15, 16-31, 32-47, 48-63 of a group).
struct Acc4 {
  __m512i a0, a1, a2, a3;
};

MSA_VNNI_TARGET __attribute__((always_inline)) inline void Head(Acc4& r, const int8_t* four_coefs, __m512i d0,
                                                                __m512i d1, __m512i d2, __m512i d3) {
  int32_t four;
  std::memcpy(&four, four_coefs, sizeof(four));
  const __m512i w = _mm512_set1_epi32(four);
  DotBytes(r.a0, d0, w);
  DotBytes(r.a1, d1, w);
  DotBytes(r.a2, d2, w);
  DotBytes(r.a3, d3, w);
}

// One pass of H heads (at most 4: their 16 accumulators, the four
// interleaved lanes and the loads fill the 32 vector registers) over
// columns [k0, k1) of every group of the blocks, adding to the integer sums in
// `sums` ([head][block]; `first`: start from zero). Named accumulators,
// not an array: GCC keeps an array of vectors touched by asm on the stack.
MSA_VNNI_TARGET __attribute__((always_inline)) inline Acc4 LoadSums(bool first, const int32_t* at) {
  if (first) return {_mm512_setzero_si512(), _mm512_setzero_si512(), _mm512_setzero_si512(), _mm512_setzero_si512()};
  return {_mm512_loadu_si512(at), _mm512_loadu_si512(at + 16), _mm512_loadu_si512(at + 32),
          _mm512_loadu_si512(at + 48)};
}

MSA_VNNI_TARGET __attribute__((always_inline)) inline void StoreSums(const Acc4& r, int32_t* at) {
  _mm512_storeu_si512(at, r.a0);
  _mm512_storeu_si512(at + 16, r.a1);
  _mm512_storeu_si512(at + 32, r.a2);
  _mm512_storeu_si512(at + 48, r.a3);
}

// One pass of H heads (at most 4: their 16 accumulators, the four
// interleaved lanes and the loads fill the 32 vector registers) over groups
// [q0, q1) of four logical columns, adding to the integer sums in `sums`
// ([head][block]; `first`: start from zero). A group is four stored byte
// columns or, kPacked, two stored packed columns split into their halves.
template <int H, bool kPacked>
MSA_VNNI_TARGET void PassVnni(const SketchProbe& p, int h0, size_t q0, size_t q1, const uint8_t* base,
                              size_t stride, size_t blocks, bool first, int32_t* sums) {
  const size_t n = p.logical();
  const int8_t* coef = p.coef.data() + h0 * n;
  const __m512i nibble = _mm512_set1_epi8(0x0F);
  for (size_t g = 0; g < blocks; g += kSketchGroup) {
    int32_t* at = sums + h0 * blocks + g;
    Acc4 r0 = LoadSums(first, at), r1, r2, r3;
    if constexpr (H > 1) r1 = LoadSums(first, at + blocks);
    if constexpr (H > 2) r2 = LoadSums(first, at + 2 * blocks);
    if constexpr (H > 3) r3 = LoadSums(first, at + 3 * blocks);
    for (size_t q = q0; q < q1; ++q) {
      __m512i c0, c1, c2, c3;
      size_t k;  // the group's first logical column
      if constexpr (kPacked) {
        k = p.columns.size() + 4 * q;
        const __m512i x0 = _mm512_loadu_si512(base + p.packed[2 * q] * stride + g);
        const __m512i x1 = _mm512_loadu_si512(base + p.packed[2 * q + 1] * stride + g);
        c0 = _mm512_and_si512(x0, nibble);
        c1 = _mm512_and_si512(_mm512_srli_epi16(x0, 4), nibble);
        c2 = _mm512_and_si512(x1, nibble);
        c3 = _mm512_and_si512(_mm512_srli_epi16(x1, 4), nibble);
      } else {
        k = 4 * q;
        c0 = _mm512_loadu_si512(base + p.columns[k] * stride + g);
        c1 = _mm512_loadu_si512(base + p.columns[k + 1] * stride + g);
        c2 = _mm512_loadu_si512(base + p.columns[k + 2] * stride + g);
        c3 = _mm512_loadu_si512(base + p.columns[k + 3] * stride + g);
      }
      // Per 128-bit lane L: d_i holds the four columns' codes of stored
      // positions 16L + 4i .. 16L + 4i + 3, that is blocks 16i + 4L .. + 3.
      const __m512i t0 = _mm512_unpacklo_epi8(c0, c1), t1 = _mm512_unpackhi_epi8(c0, c1);
      const __m512i t2 = _mm512_unpacklo_epi8(c2, c3), t3 = _mm512_unpackhi_epi8(c2, c3);
      const __m512i d0 = _mm512_unpacklo_epi16(t0, t2), d1 = _mm512_unpackhi_epi16(t0, t2);
      const __m512i d2 = _mm512_unpacklo_epi16(t1, t3), d3 = _mm512_unpackhi_epi16(t1, t3);
      Head(r0, coef + k, d0, d1, d2, d3);
      if constexpr (H > 1) Head(r1, coef + n + k, d0, d1, d2, d3);
      if constexpr (H > 2) Head(r2, coef + 2 * n + k, d0, d1, d2, d3);
      if constexpr (H > 3) Head(r3, coef + 3 * n + k, d0, d1, d2, d3);
    }
    StoreSums(r0, at);
    if constexpr (H > 1) StoreSums(r1, at + blocks);
    if constexpr (H > 2) StoreSums(r2, at + 2 * blocks);
    if constexpr (H > 3) StoreSums(r3, at + 3 * blocks);
  }
}

template <bool kPacked>
MSA_VNNI_TARGET void PassHeads(const SketchProbe& p, int h0, size_t q0, size_t q1, const uint8_t* base,
                               size_t stride, size_t blocks, bool first, int32_t* sums) {
  switch (std::min(4, p.heads - h0)) {
    case 4: return PassVnni<4, kPacked>(p, h0, q0, q1, base, stride, blocks, first, sums);
    case 3: return PassVnni<3, kPacked>(p, h0, q0, q1, base, stride, blocks, first, sums);
    case 2: return PassVnni<2, kPacked>(p, h0, q0, q1, base, stride, blocks, first, sums);
    default: return PassVnni<1, kPacked>(p, h0, q0, q1, base, stride, blocks, first, sums);
  }
}

// Stored columns per pass. Reading many column streams at once loses the
// hardware prefetcher: on the 2-core Zen 4 VM, a plain read of 44 columns
// of 1.56M blocks ran at 10 GB/s all at once and 21 GB/s in passes of 12;
// the kernel itself (4 heads, hybrid, 32 channels, 80 columns) 13.8 ms in
// one pass, 11.6 ms in passes of 12, 13.0 in passes of 8 (software
// prefetch made it slower at every distance tried).
constexpr size_t kPassColumns = 12;

MSA_VNNI_TARGET void RunVnni(const SketchProbe& p, SketchHeads heads, const uint8_t* base, size_t stride,
                             size_t blocks, int32_t* sums, float* out) {
  const size_t byte_groups = p.columns.size() / 4, packed_groups = p.packed.size() / 2;
  for (int h = 0; h < p.heads; h += 4) {
    bool first = true;
    for (size_t q0 = 0; q0 < byte_groups; q0 += kPassColumns / 4, first = false) {
      PassHeads<false>(p, h, q0, std::min(byte_groups, q0 + kPassColumns / 4), base, stride, blocks, first, sums);
    }
    for (size_t q0 = 0; q0 < packed_groups; q0 += kPassColumns / 2, first = false) {
      PassHeads<true>(p, h, q0, std::min(packed_groups, q0 + kPassColumns / 2), base, stride, blocks, first, sums);
    }
    if (first) std::fill(sums + h * blocks, sums + std::min(p.heads, h + 4) * blocks, 0);
  }
  // Sums to scores, the heads merged in head order.
  for (size_t b = 0; b < blocks; b += 16) {
    __m512 merged = _mm512_setzero_ps();
    for (int h = 0; h < p.heads; ++h) {
      const __m512i sum = _mm512_add_epi32(_mm512_loadu_si512(sums + h * blocks + b), _mm512_set1_epi32(p.bias[h]));
      const __m512 score =
          _mm512_fmadd_ps(_mm512_cvtepi32_ps(sum), _mm512_set1_ps(p.scale[h]), _mm512_set1_ps(p.offset[h]));
      if (heads == SketchHeads::kEach) {
        _mm512_storeu_ps(out + h * blocks + b, score);
      } else if (h == 0) {
        merged = score;
      } else {
        merged = heads == SketchHeads::kMax ? _mm512_max_ps(merged, score) : _mm512_add_ps(merged, score);
      }
    }
    if (heads != SketchHeads::kEach) _mm512_storeu_ps(out + b, merged);
  }
}

// Where logical column k of a probe lies, and how its codes come out of
// the stored bytes: (byte >> shift) & mask.
struct LogicalColumn {
  const uint8_t* at;
  int shift;
  uint8_t mask;
};

LogicalColumn Logical(const SketchProbe& p, size_t k, const uint8_t* base, size_t stride) {
  if (k < p.columns.size()) return {base + p.columns[k] * stride, 0, 0xFF};
  const size_t i = k - p.columns.size();
  return {base + p.packed[i / 2] * stride, static_cast<int>(i % 2) * 4, 0x0F};
}

// Stored order back to block order, the integer sum to a score, and the
// heads merged in order as the VNNI loop does.
void Finish(const SketchProbe& p, SketchHeads heads, int h, const float* stored, size_t out_stride, float* out) {
  for (size_t b = 0; b < kColumnTile; ++b) {
    const size_t g = b & ~(kSketchGroup - 1);
    const float sum = stored[g + SketchOrder(static_cast<uint32_t>(b - g))] + static_cast<float>(p.bias[h]);
    const float score = std::fma(sum, p.scale[h], p.offset[h]);
    if (heads == SketchHeads::kEach) {
      out[h * out_stride + b] = score;
    } else if (h == 0) {
      out[b] = score;
    } else {
      out[b] = heads == SketchHeads::kMax ? std::max(out[b], score) : out[b] + score;
    }
  }
}

// AVX2 has no vpdpbusd. Its pair of maddubs (u8 x s8, adjacent products
// summed to int16, saturating) and madd with ones (int16 pairs to int32)
// does the same four products per 32-bit lane in two instructions, with one
// catch: a byte column's full-range codes (0..255) against coefficients up
// to 127 make pair sums up to 64,770, past int16. So byte columns are taken
// as signed codes s = u - 128 (|s| <= 128, pairs <= 32,512) with s's sign
// moved onto the coefficient (sign_epi8) and |s| as the unsigned operand;
// the 128 x (sum of the byte columns' coefficients) this drops is added
// back with the bias at the end, so the integer sums equal the VNNI loop's.
// Packed codes (0..15) cannot saturate and go in as they are. Passes as
// in RunVnni; two heads per pass (their eight accumulators, the four
// interleaved lanes and the loads fill the 16 vector registers); a group
// of 64 blocks in two halves of 32.
#define MSA_AVX2_TARGET __attribute__((target("avx2,fma")))

// One head's accumulators for half a group: a_i holds blocks 16i + 8 half + 0..7.
struct Acc4Avx2 {
  __m256i a0, a1, a2, a3;
};

MSA_AVX2_TARGET __attribute__((always_inline)) inline Acc4Avx2 LoadSumsAvx2(bool first, const int32_t* at) {
  if (first) return {_mm256_setzero_si256(), _mm256_setzero_si256(), _mm256_setzero_si256(), _mm256_setzero_si256()};
  return {_mm256_loadu_si256(reinterpret_cast<const __m256i*>(at)),
          _mm256_loadu_si256(reinterpret_cast<const __m256i*>(at + 16)),
          _mm256_loadu_si256(reinterpret_cast<const __m256i*>(at + 32)),
          _mm256_loadu_si256(reinterpret_cast<const __m256i*>(at + 48))};
}

MSA_AVX2_TARGET __attribute__((always_inline)) inline void StoreSumsAvx2(const Acc4Avx2& r, int32_t* at) {
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(at), r.a0);
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(at + 16), r.a1);
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(at + 32), r.a2);
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(at + 48), r.a3);
}

// acc += the four products of each 32-bit lane: magnitude x signed coefficient
// (kSigned: the codes are signed, |code| and the coefficients carrying the
// code's sign), or code x coefficient (packed codes, unsigned already).
template <bool kSigned>
MSA_AVX2_TARGET __attribute__((always_inline)) inline void DotBytesAvx2(__m256i& acc, __m256i codes, __m256i magnitude,
                                                                        __m256i w) {
  const __m256i ones = _mm256_set1_epi16(1);
  const __m256i pairs = kSigned ? _mm256_maddubs_epi16(magnitude, _mm256_sign_epi8(w, codes))
                                : _mm256_maddubs_epi16(codes, w);
  acc = _mm256_add_epi32(acc, _mm256_madd_epi16(pairs, ones));
}

MSA_AVX2_TARGET __attribute__((always_inline)) inline __m256i LoadColumnAvx2(const uint8_t* base, size_t offset) {
  return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(base + offset));
}

MSA_AVX2_TARGET __attribute__((always_inline)) inline __m256i FourCoefsAvx2(const int8_t* four_coefs) {
  int32_t four;
  std::memcpy(&four, four_coefs, sizeof(four));
  return _mm256_set1_epi32(four);
}

// One lane group d of interleaved codes into the heads' accumulators.
template <int H, bool kPacked>
MSA_AVX2_TARGET __attribute__((always_inline)) inline void StepAvx2(__m256i d, __m256i w0, __m256i w1,
                                                                    __m256i& acc0, __m256i& acc1) {
  const __m256i magnitude = kPacked ? d : _mm256_abs_epi8(d);
  DotBytesAvx2<!kPacked>(acc0, d, magnitude, w0);
  if constexpr (H > 1) DotBytesAvx2<!kPacked>(acc1, d, magnitude, w1);
}

template <int H, bool kPacked>
MSA_AVX2_TARGET void PassAvx2(const SketchProbe& p, int h0, size_t q0, size_t q1, const uint8_t* base,
                              size_t stride, size_t blocks, bool first, int32_t* sums) {
  const size_t n = p.logical();
  const int8_t* coef = p.coef.data() + h0 * n;
  const __m256i nibble = _mm256_set1_epi8(0x0F);
  const __m256i flip = _mm256_set1_epi8(static_cast<char>(0x80));
  for (size_t g = 0; g < blocks; g += kSketchGroup) {
    for (size_t half = 0; half < 2; ++half) {
      int32_t* at = sums + h0 * blocks + g + 8 * half;
      Acc4Avx2 r0 = LoadSumsAvx2(first, at), r1;
      if constexpr (H > 1) r1 = LoadSumsAvx2(first, at + blocks);
      for (size_t q = q0; q < q1; ++q) {
        __m256i c0, c1, c2, c3;
        size_t k;  // the group's first logical column
        if constexpr (kPacked) {
          k = p.columns.size() + 4 * q;
          const __m256i x0 = LoadColumnAvx2(base, p.packed[2 * q] * stride + g + 32 * half);
          const __m256i x1 = LoadColumnAvx2(base, p.packed[2 * q + 1] * stride + g + 32 * half);
          c0 = _mm256_and_si256(x0, nibble);
          c1 = _mm256_and_si256(_mm256_srli_epi16(x0, 4), nibble);
          c2 = _mm256_and_si256(x1, nibble);
          c3 = _mm256_and_si256(_mm256_srli_epi16(x1, 4), nibble);
        } else {
          k = 4 * q;
          c0 = _mm256_xor_si256(LoadColumnAvx2(base, p.columns[k] * stride + g + 32 * half), flip);
          c1 = _mm256_xor_si256(LoadColumnAvx2(base, p.columns[k + 1] * stride + g + 32 * half), flip);
          c2 = _mm256_xor_si256(LoadColumnAvx2(base, p.columns[k + 2] * stride + g + 32 * half), flip);
          c3 = _mm256_xor_si256(LoadColumnAvx2(base, p.columns[k + 3] * stride + g + 32 * half), flip);
        }
        // As in PassVnni, per 128-bit lane: d_i holds the four columns'
        // codes of 4 consecutive blocks, lanes in block order.
        const __m256i t0 = _mm256_unpacklo_epi8(c0, c1), t1 = _mm256_unpackhi_epi8(c0, c1);
        const __m256i t2 = _mm256_unpacklo_epi8(c2, c3), t3 = _mm256_unpackhi_epi8(c2, c3);
        const __m256i w0 = FourCoefsAvx2(coef + k);
        const __m256i w1 = H > 1 ? FourCoefsAvx2(coef + n + k) : w0;
        StepAvx2<H, kPacked>(_mm256_unpacklo_epi16(t0, t2), w0, w1, r0.a0, r1.a0);
        StepAvx2<H, kPacked>(_mm256_unpackhi_epi16(t0, t2), w0, w1, r0.a1, r1.a1);
        StepAvx2<H, kPacked>(_mm256_unpacklo_epi16(t1, t3), w0, w1, r0.a2, r1.a2);
        StepAvx2<H, kPacked>(_mm256_unpackhi_epi16(t1, t3), w0, w1, r0.a3, r1.a3);
      }
      StoreSumsAvx2(r0, at);
      if constexpr (H > 1) StoreSumsAvx2(r1, at + blocks);
    }
  }
}

MSA_AVX2_TARGET void RunAvx2(const SketchProbe& p, SketchHeads heads, const uint8_t* base, size_t stride,
                             size_t blocks, int32_t* sums, float* out) {
  const size_t byte_groups = p.columns.size() / 4, packed_groups = p.packed.size() / 2;
  for (int h = 0; h < p.heads; h += 2) {
    const bool two = p.heads - h >= 2;
    bool first = true;
    for (size_t q0 = 0; q0 < byte_groups; q0 += kPassColumns / 4, first = false) {
      const size_t q1 = std::min(byte_groups, q0 + kPassColumns / 4);
      two ? PassAvx2<2, false>(p, h, q0, q1, base, stride, blocks, first, sums)
          : PassAvx2<1, false>(p, h, q0, q1, base, stride, blocks, first, sums);
    }
    for (size_t q0 = 0; q0 < packed_groups; q0 += kPassColumns / 2, first = false) {
      const size_t q1 = std::min(packed_groups, q0 + kPassColumns / 2);
      two ? PassAvx2<2, true>(p, h, q0, q1, base, stride, blocks, first, sums)
          : PassAvx2<1, true>(p, h, q0, q1, base, stride, blocks, first, sums);
    }
    if (first) std::fill(sums + h * blocks, sums + std::min(p.heads, h + 2) * blocks, 0);
  }
  // The byte columns' 128 x coefficients, dropped by the signed codes, go
  // back in with the bias: the same integer sums as the VNNI loop's.
  const size_t n = p.logical();
  // Sums to scores head by head (the caller sizes `blocks` so that the sums
  // and scores stay in L1), the heads merged in head order.
  for (int h = 0; h < p.heads; ++h) {
    int32_t dropped = 0;
    for (size_t k = 0; k < p.columns.size(); ++k) dropped += 128 * p.coef[h * n + k];
    const __m256i bias = _mm256_set1_epi32(p.bias[h] + dropped);
    const __m256 scale = _mm256_set1_ps(p.scale[h]), offset = _mm256_set1_ps(p.offset[h]);
    const int32_t* s = sums + h * blocks;
    float* o = heads == SketchHeads::kEach ? out + h * blocks : out;
    for (size_t b = 0; b < blocks; b += 8) {
      const __m256i sum = _mm256_add_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(s + b)), bias);
      const __m256 score = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sum), scale, offset);
      if (heads == SketchHeads::kEach || h == 0) {
        _mm256_storeu_ps(o + b, score);
      } else {
        const __m256 prev = _mm256_loadu_ps(o + b);
        _mm256_storeu_ps(o + b, heads == SketchHeads::kMax ? _mm256_max_ps(prev, score) : _mm256_add_ps(prev, score));
      }
    }
  }
}

void TilePortable(const SketchProbe& p, SketchHeads heads, const uint8_t* base, size_t stride, size_t out_stride,
                  float* out) {
  const size_t n = p.logical();
  float stored[kColumnTile];
  for (int h = 0; h < p.heads; ++h) {
    int32_t sum[kColumnTile] = {};
    for (size_t k = 0; k < n; ++k) {
      const int32_t w = p.coef[h * n + k];
      const LogicalColumn col = Logical(p, k, base, stride);
      for (size_t b = 0; b < kColumnTile; ++b) sum[b] += w * ((col.at[b] >> col.shift) & col.mask);
    }
    for (size_t b = 0; b < kColumnTile; ++b) stored[b] = static_cast<float>(sum[b]);
    Finish(p, heads, h, stored, out_stride, out);
  }
}

void RunOn(Isa isa, const SketchProbe& probe, SketchHeads heads, const uint8_t* base, size_t stride, size_t blocks,
           std::vector<int32_t>* scratch, float* out) {
  if (isa == Isa::kAvx512Vnni) {
    scratch->resize(static_cast<size_t>(probe.heads) * blocks);
    return RunVnni(probe, heads, base, stride, blocks, scratch->data(), out);
  }
  if (isa == Isa::kAvx2) {
    scratch->resize(static_cast<size_t>(probe.heads) * blocks);
    return RunAvx2(probe, heads, base, stride, blocks, scratch->data(), out);
  }
  for (size_t t = 0; t < blocks; t += kColumnTile) TilePortable(probe, heads, base + t, stride, blocks, out + t);
}

}  // namespace

void StoreSketchColumn(const int8_t* codes, size_t n, uint8_t* out) {
  for (size_t g = 0; g < n; g += kSketchGroup) {
    for (uint32_t b = 0; b < kSketchGroup; ++b) {
      out[g + SketchOrder(b)] = static_cast<uint8_t>(static_cast<uint8_t>(codes[g + b]) ^ 0x80u);
    }
  }
}

void StoreSketchPacked(const uint8_t* low, const uint8_t* high, size_t n, uint8_t* out) {
  for (size_t g = 0; g < n; g += kSketchGroup) {
    for (uint32_t b = 0; b < kSketchGroup; ++b) {
      out[g + SketchOrder(b)] = static_cast<uint8_t>((low[g + b] & 0x0Fu) | (high[g + b] << 4));
    }
  }
}

void SketchProbe::Quantize(const float* weights, const float* offsets) {
  const size_t n = logical();
  coef.assign(static_cast<size_t>(heads) * n, 0);
  scale.assign(heads, 0.0f);
  bias.assign(heads, 0);
  offset.assign(heads, 0.0f);
  for (int h = 0; h < heads; ++h) {
    if (offsets != nullptr) offset[h] = offsets[h];
    const float* w = weights + h * n;
    float peak = 0.0f;
    for (size_t k = 0; k < n; ++k) {
      if (std::isfinite(w[k])) peak = std::max(peak, std::abs(w[k]));
    }
    if (peak == 0.0f) continue;  // the head scores its offset everywhere
    const float inverse = 127.0f / peak;
    int32_t zero_points = 0;
    for (size_t k = 0; k < n; ++k) {
      // An infinite weight saturates; a NaN counts as 0.
      const float v = std::isnan(w[k]) ? 0.0f : std::clamp(w[k] * inverse, -127.0f, 127.0f);
      coef[h * n + k] = static_cast<int8_t>(std::nearbyint(v));
      zero_points += coef[h * n + k] * (k < columns.size() ? 128 : 8);
    }
    scale[h] = peak / 127.0f;
    bias[h] = -zero_points;
  }
}


void SketchScores(const SketchProbe& probe, SketchHeads heads, const uint8_t* base, size_t stride, size_t blocks,
                  std::vector<int32_t>* scratch, float* out) {
  RunOn(kIsa, probe, heads, base, stride, blocks, scratch, out);
}

bool SketchScoresOn(SketchIsa isa, const SketchProbe& probe, SketchHeads heads, const uint8_t* base, size_t stride,
                    size_t blocks, std::vector<int32_t>* scratch, float* out) {
  if (!Supports(isa)) return false;
  RunOn(isa, probe, heads, base, stride, blocks, scratch, out);
  return true;
}

const char* SketchKernelIsa() {
  switch (kIsa) {
    case Isa::kAvx512Vnni: return "avx512-vnni";
    case Isa::kAvx2: return "avx2";
    case Isa::kPortable: return "portable";
  }
  return "portable";
}

}  // namespace msa
