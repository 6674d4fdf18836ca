#include "attention/dequantize.h"

#include <immintrin.h>

namespace msa::attention {

namespace {

// kPortable first: a call during static initialisation, before kIsa's
// initialiser has run, sees the zero value and takes the portable loops.
enum class Isa { kPortable, kAvx2, kAvx512 };

Isa Detect() {
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw")) return Isa::kAvx512;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return Isa::kAvx2;
  return Isa::kPortable;
}

const Isa kIsa = Detect();

inline uint8_t Nibble(const uint8_t* packed, size_t i) {
  return static_cast<uint8_t>((packed[i >> 1] >> ((i & 1) * 4)) & 0xf);
}

// Parameters per element (P = const float*) or one for the run (P = float).
inline float At(const float* p, size_t i) { return p[i]; }
inline float At(float p, size_t) { return p; }

template <typename P>
void U8Portable(const uint8_t* codes, P scale, P min, size_t from, size_t n, float* out) {
  for (size_t i = from; i < n; ++i) out[i] = At(min, i) + At(scale, i) * static_cast<float>(codes[i]);
}
template <typename P>
void U4Portable(const uint8_t* packed, P scale, P min, size_t from, size_t n, float* out) {
  for (size_t i = from; i < n; ++i) {
    out[i] = At(min, i) + At(scale, i) * static_cast<float>(Nibble(packed, i));
  }
}

// 16 nibbles of 8 bytes, widened to 16 bytes in element order.
__attribute__((target("avx2"))) inline __m128i SpreadNibbles(const uint8_t* p) {
  const __m128i bytes = _mm_cvtepu8_epi16(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p)));
  const __m128i lo = _mm_and_si128(bytes, _mm_set1_epi16(0x0f));
  const __m128i hi = _mm_and_si128(_mm_srli_epi16(bytes, 4), _mm_set1_epi16(0x0f));
  return _mm_or_si128(lo, _mm_slli_epi16(hi, 8));
}

__attribute__((target("avx512f"))) inline __m512 Load16(const float* p, size_t i) {
  return _mm512_loadu_ps(p + i);
}
__attribute__((target("avx512f"))) inline __m512 Load16(float p, size_t) { return _mm512_set1_ps(p); }
__attribute__((target("avx2"))) inline __m256 Load8(const float* p, size_t i) {
  return _mm256_loadu_ps(p + i);
}
__attribute__((target("avx2"))) inline __m256 Load8(float p, size_t) { return _mm256_set1_ps(p); }

template <typename P>
__attribute__((target("avx512f,avx512bw,avx2,fma"))) void U8Avx512(const uint8_t* codes, P scale,
                                                                    P min, size_t n, float* out) {
  size_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m128i c = _mm_loadu_si128(reinterpret_cast<const __m128i*>(codes + i));
    const __m512 x = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(c));
    _mm512_storeu_ps(out + i, _mm512_fmadd_ps(x, Load16(scale, i), Load16(min, i)));
  }
  U8Portable(codes, scale, min, i, n, out);
}

template <typename P>
__attribute__((target("avx512f,avx512bw,avx2,fma"))) void U4Avx512(const uint8_t* packed, P scale,
                                                                    P min, size_t n, float* out) {
  size_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m512 x = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(SpreadNibbles(packed + i / 2)));
    _mm512_storeu_ps(out + i, _mm512_fmadd_ps(x, Load16(scale, i), Load16(min, i)));
  }
  U4Portable(packed, scale, min, i, n, out);
}

template <typename P>
__attribute__((target("avx2,fma"))) void U8Avx2(const uint8_t* codes, P scale, P min, size_t n,
                                                float* out) {
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m128i c = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(codes + i));
    const __m256 x = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(c));
    _mm256_storeu_ps(out + i, _mm256_fmadd_ps(x, Load8(scale, i), Load8(min, i)));
  }
  U8Portable(codes, scale, min, i, n, out);
}

template <typename P>
__attribute__((target("avx2,fma"))) void U4Avx2(const uint8_t* packed, P scale, P min, size_t n,
                                                float* out) {
  size_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m128i c = SpreadNibbles(packed + i / 2);
    const __m256 a = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(c));
    const __m256 b = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(c, 8)));
    _mm256_storeu_ps(out + i, _mm256_fmadd_ps(a, Load8(scale, i), Load8(min, i)));
    _mm256_storeu_ps(out + i + 8, _mm256_fmadd_ps(b, Load8(scale, i + 8), Load8(min, i + 8)));
  }
  U4Portable(packed, scale, min, i, n, out);
}

template <typename P>
void U8(const uint8_t* codes, P scale, P min, size_t n, float* out) {
  switch (kIsa) {
    case Isa::kAvx512: return U8Avx512(codes, scale, min, n, out);
    case Isa::kAvx2: return U8Avx2(codes, scale, min, n, out);
    case Isa::kPortable: return U8Portable(codes, scale, min, 0, n, out);
  }
}

template <typename P>
void U4(const uint8_t* packed, P scale, P min, size_t n, float* out) {
  switch (kIsa) {
    case Isa::kAvx512: return U4Avx512(packed, scale, min, n, out);
    case Isa::kAvx2: return U4Avx2(packed, scale, min, n, out);
    case Isa::kPortable: return U4Portable(packed, scale, min, 0, n, out);
  }
}

}  // namespace

void DequantizeU8(const uint8_t* codes, const float* scale, const float* min, size_t n, float* out) {
  U8(codes, scale, min, n, out);
}
void DequantizeU8(const uint8_t* codes, float scale, float min, size_t n, float* out) {
  U8(codes, scale, min, n, out);
}
void DequantizeU4(const uint8_t* packed, const float* scale, const float* min, size_t n, float* out) {
  U4(packed, scale, min, n, out);
}
void DequantizeU4(const uint8_t* packed, float scale, float min, size_t n, float* out) {
  U4(packed, scale, min, n, out);
}

const char* DequantizeIsa() {
  switch (kIsa) {
    case Isa::kAvx512: return "avx512";
    case Isa::kAvx2: return "avx2";
    case Isa::kPortable: return "portable";
  }
  return "portable";
}

}  // namespace msa::attention
