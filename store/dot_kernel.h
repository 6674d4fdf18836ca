// The router's inner loop: inner products of a few probes with many vectors
// stored in fp16 (the router keeps its summaries in fp16: half the memory
// and half the bytes to scan; Quest bounds of fp16 keys are exact in fp16).
// Debian's FAISS is a generic build whose scans are scalar; this is written
// for AVX-512 and AVX2+F16C+FMA, picked at run time, with a portable path,
// and reads each vector once for all probes.
#pragma once

#include <cstddef>
#include <cstdint>

namespace msa {

// out[i * n_probes + h] = probes[h] . vectors[i]; vectors [n, dim] fp16 bits,
// probes [n_probes, dim] float32, n_probes >= 1.
void InnerProductsF16(const float* probes, int n_probes, const uint16_t* vectors, size_t n,
                      size_t dim, float* out);

// Which implementation InnerProductsF16 uses here: "avx512", "avx2" or "portable".
const char* InnerProductsF16Isa();

}  // namespace msa
