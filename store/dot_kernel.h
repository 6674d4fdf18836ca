// The router's inner loop over fp16 summary columns (store/summary_table.h:
// fp16 halves the memory and the bytes to scan; Quest bounds of fp16 keys
// are exact in fp16). Debian's FAISS is a generic build whose scans are
// scalar; this is written for AVX-512 and AVX2+F16C+FMA, picked at run time,
// with a portable path.
#pragma once

#include <cstddef>
#include <cstdint>
#include <utility>

namespace msa {

// y[i] += a * x[i] for n fp16 values x: the column-major scan's step.
void AxpyF16(float a, const uint16_t* x, float* y, size_t n);

// out[b] = sum_k coef[k] * x(cols[k])[b] for b in [0, 128), where column c
// is the fp16 array base + c * stride. Reads exactly 128 values of each
// column (the caller pads); the 128 sums stay in registers while the
// columns stream by, so one tile of a summary chunk is read once per head.
inline constexpr size_t kColumnTile = 128;
void WeightedColumnSum(const float* coef, const uint32_t* cols, size_t ncols, const uint16_t* base,
                       size_t stride, float* out);

// The same for `blocks` blocks (a multiple of 16, at most kColumnTile):
// out[b] for b < blocks. For scans of a few blocks of a tile (the coarse
// step's groups, document ranges).
void WeightedColumnSumSpan(const float* coef, const uint32_t* cols, size_t ncols, const uint16_t* base,
                           size_t stride, size_t blocks, float* out);

// max_i |x[i]| (NaN ignored), and out[i] = round(x[i] * inverse) clamped
// to [-127, 127] (NaN to 0): the sketch's quantiser (store/route_sketch.h).
float MaxAbs(const float* x, size_t n);
void QuantizeInt8(const float* x, size_t n, float inverse, int8_t* out);
// 4-bit codes of n values between their extremes: value ~= base + step *
// (code - 8); returns {base, step}. NaN counts as 0, infinities saturate
// at the fp16 range. scratch: n floats.
std::pair<float, float> QuantizeNibbles(const float* x, size_t n, float* scratch, uint8_t* codes);

// Writes the indices i < n with x[i] >= bar to idx, in
// order, and returns how many: the top-k scan's filter, where almost
// every score falls below the bar.
size_t IndicesAtLeast(const float* x, size_t n, float bar, uint32_t* idx);

// sum_i a[i] * b[i] in float.
float DotF32(const float* a, const float* b, size_t n);

// Which implementation these use here: "avx512", "avx2" or "portable".
const char* F16KernelIsa();

// For tests: the sketch quantisers and the candidate cut through one
// chosen loop (every loop must give the portable one's results bit for
// bit); false (outputs untouched) where this CPU lacks it.
enum class DotIsa { kAvx512, kAvx2, kPortable };
bool MaxAbsOn(DotIsa isa, const float* x, size_t n, float* out);
bool QuantizeInt8On(DotIsa isa, const float* x, size_t n, float inverse, int8_t* out);
bool QuantizeNibblesOn(DotIsa isa, const float* x, size_t n, float* scratch, uint8_t* codes,
                       std::pair<float, float>* base_step);
bool IndicesAtLeastOn(DotIsa isa, const float* x, size_t n, float bar, uint32_t* idx, size_t* count);

}  // namespace msa
