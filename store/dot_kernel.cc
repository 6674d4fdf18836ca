#include "store/dot_kernel.h"

#include <cpuid.h>
#include <immintrin.h>

#include <algorithm>

#include "attention/half.h"

namespace msa {

namespace {

template <int kProbes>
__attribute__((target("avx512f"))) void Avx512(const float* probes, const uint16_t* vectors,
                                                size_t n, size_t dim, float* out) {
  const size_t body = dim / 16 * 16;
  for (size_t i = 0; i < n; ++i) {
    const uint16_t* v = vectors + i * dim;
    __m512 acc[kProbes];
    for (int h = 0; h < kProbes; ++h) acc[h] = _mm512_setzero_ps();
    for (size_t c = 0; c < body; c += 16) {
      const __m512 x = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(v + c)));
      for (int h = 0; h < kProbes; ++h) acc[h] = _mm512_fmadd_ps(_mm512_loadu_ps(probes + h * dim + c), x, acc[h]);
    }
    for (int h = 0; h < kProbes; ++h) {
      float s = _mm512_reduce_add_ps(acc[h]);
      for (size_t c = body; c < dim; ++c) s += probes[h * dim + c] * attention::HalfToFloat(v[c]);
      out[i * kProbes + h] = s;
    }
  }
}

__attribute__((target("avx2,fma,f16c"))) inline float Sum8(__m256 x) {
  const __m128 lo = _mm256_castps256_ps128(x), hi = _mm256_extractf128_ps(x, 1);
  __m128 s = _mm_add_ps(lo, hi);
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

template <int kProbes>
__attribute__((target("avx2,fma,f16c"))) void Avx2(const float* probes, const uint16_t* vectors,
                                                   size_t n, size_t dim, float* out) {
  const size_t body = dim / 8 * 8;
  for (size_t i = 0; i < n; ++i) {
    const uint16_t* v = vectors + i * dim;
    __m256 acc[kProbes];
    for (int h = 0; h < kProbes; ++h) acc[h] = _mm256_setzero_ps();
    for (size_t c = 0; c < body; c += 8) {
      const __m256 x = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(v + c)));
      for (int h = 0; h < kProbes; ++h) acc[h] = _mm256_fmadd_ps(_mm256_loadu_ps(probes + h * dim + c), x, acc[h]);
    }
    for (int h = 0; h < kProbes; ++h) {
      float s = Sum8(acc[h]);
      for (size_t c = body; c < dim; ++c) s += probes[h * dim + c] * attention::HalfToFloat(v[c]);
      out[i * kProbes + h] = s;
    }
  }
}

void Portable(const float* probes, int n_probes, const uint16_t* vectors, size_t n, size_t dim,
              float* out) {
  float x[1024];
  for (size_t i = 0; i < n; ++i) {
    for (size_t c0 = 0; c0 < dim; c0 += 1024) {
      const size_t len = std::min<size_t>(1024, dim - c0);
      attention::HalfToFloatArray(vectors + i * dim + c0, x, len);
      for (int h = 0; h < n_probes; ++h) {
        float s = c0 == 0 ? 0.0f : out[i * n_probes + h];
        for (size_t c = 0; c < len; ++c) s += probes[h * dim + c0 + c] * x[c];
        out[i * n_probes + h] = s;
      }
    }
  }
}

enum class Isa { kAvx512, kAvx2, kPortable };

// F16C from CPUID leaf 1 (ECX bit 29): clang 14's __builtin_cpu_supports
// does not know "f16c" (the fuzzing build, -DMSA_FUZZ=ON, is clang's).
bool CpuHasF16c() {
  unsigned eax, ebx, ecx, edx;
  return __get_cpuid(1, &eax, &ebx, &ecx, &edx) && (ecx & bit_F16C) != 0;
}

Isa Detect() {
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f")) return Isa::kAvx512;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && CpuHasF16c()) {
    return Isa::kAvx2;
  }
  return Isa::kPortable;
}

const Isa kIsa = Detect();

template <int kProbes>
void Dispatch(const float* probes, const uint16_t* vectors, size_t n, size_t dim, float* out) {
  if (kIsa == Isa::kAvx512) return Avx512<kProbes>(probes, vectors, n, dim, out);
  if (kIsa == Isa::kAvx2) return Avx2<kProbes>(probes, vectors, n, dim, out);
  return Portable(probes, kProbes, vectors, n, dim, out);
}

}  // namespace

void InnerProductsF16(const float* probes, int n_probes, const uint16_t* vectors, size_t n,
                      size_t dim, float* out) {
  switch (n_probes) {
    case 1: return Dispatch<1>(probes, vectors, n, dim, out);
    case 2: return Dispatch<2>(probes, vectors, n, dim, out);
    case 4: return Dispatch<4>(probes, vectors, n, dim, out);
    case 8: return Dispatch<8>(probes, vectors, n, dim, out);
    default: break;
  }
  // Other group sizes: one probe at a time, written into a strided output.
  float one;
  for (size_t i = 0; i < n; ++i) {
    for (int h = 0; h < n_probes; ++h) {
      Dispatch<1>(probes + h * dim, vectors + i * dim, 1, dim, &one);
      out[i * n_probes + h] = one;
    }
  }
}

const char* InnerProductsF16Isa() {
  switch (kIsa) {
    case Isa::kAvx512: return "avx512";
    case Isa::kAvx2: return "avx2";
    case Isa::kPortable: return "portable";
  }
  return "portable";
}

}  // namespace msa
