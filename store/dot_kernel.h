// The router's inner loop over fp16 summary columns (store/summary_table.h:
// fp16 halves the memory and the bytes to scan; Quest bounds of fp16 keys
// are exact in fp16). Debian's FAISS is a generic build whose scans are
// scalar; this is written for AVX-512 and AVX2+F16C+FMA, picked at run time,
// with a portable path.
#pragma once

#include <cstddef>
#include <cstdint>

namespace msa {

// y[i] += a * x[i] for n fp16 values x: the column-major scan's step.
void AxpyF16(float a, const uint16_t* x, float* y, size_t n);

// Which implementation AxpyF16 uses here: "avx512", "avx2" or "portable".
const char* F16KernelIsa();

}  // namespace msa
