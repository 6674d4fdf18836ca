#include "store/dot_kernel.h"

namespace msa {

namespace {

// Lanes summed separately, so the compiler vectorises without reassociating.
constexpr int kLanes = 16;

template <int kProbes>
inline void Kernel(const float* probes, const float* vectors, size_t n, size_t dim, float* out) {
  for (size_t i = 0; i < n; ++i) {
    const float* v = vectors + i * dim;
    float acc[kProbes][kLanes] = {};
    size_t c = 0;
    for (; c + kLanes <= dim; c += kLanes) {
      for (int h = 0; h < kProbes; ++h) {
        const float* p = probes + h * dim + c;
        for (int l = 0; l < kLanes; ++l) acc[h][l] += p[l] * v[c + l];
      }
    }
    for (int h = 0; h < kProbes; ++h) {
      float s = 0.0f;
      for (int l = 0; l < kLanes; ++l) s += acc[h][l];
      for (size_t r = c; r < dim; ++r) s += probes[h * dim + r] * v[r];
      out[i * kProbes + h] = s;
    }
  }
}

}  // namespace

__attribute__((target_clones("avx512f", "avx2", "default")))
void InnerProductsMany(const float* probes, int n_probes, const float* vectors, size_t n,
                       size_t dim, float* out) {
  switch (n_probes) {
    case 1: return Kernel<1>(probes, vectors, n, dim, out);
    case 2: return Kernel<2>(probes, vectors, n, dim, out);
    case 4: return Kernel<4>(probes, vectors, n, dim, out);
    case 8: return Kernel<8>(probes, vectors, n, dim, out);
    default: break;
  }
  // Other group sizes: one probe at a time.
  for (size_t i = 0; i < n; ++i) {
    for (int h = 0; h < n_probes; ++h) {
      Kernel<1>(probes + h * dim, vectors + i * dim, 1, dim, out + i * n_probes + h);
    }
  }
}

}  // namespace msa
