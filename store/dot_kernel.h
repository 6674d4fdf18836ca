// The router's inner loop: inner products of a few probes with many vectors.
// Debian's FAISS is a generic build whose fvec_inner_products_ny is scalar;
// this one is compiled for AVX-512, AVX2 and plain x86-64 and picked at run
// time (GCC target_clones), reading each vector once for all probes.
#pragma once

#include <cstddef>

namespace msa {

// out[i * n_probes + h] = probes[h] . vectors[i], vectors [n, dim],
// probes [n_probes, dim], n_probes in [1, 16].
void InnerProductsMany(const float* probes, int n_probes, const float* vectors, size_t n,
                       size_t dim, float* out);

}  // namespace msa
