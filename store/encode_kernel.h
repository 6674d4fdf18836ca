// The inner loops of ingest's encoding (store/codec_quantized.cc, the block
// summaries of store/summary.cc): ranges of columns and rows, column sums,
// and float-to-code quantisation, vectorised with AVX-512 or AVX2 when the
// CPU has them (chosen once at start-up, like attention/dequantize.cc; no
// target_clones: its ifunc resolver crashes ThreadSanitizer binaries), with
// a portable loop otherwise.
//
// Every path returns exactly what the portable loop returns, bit for bit
// (the tests compare them on random and edge-case input): the vector code
// does the same IEEE operations per element in the same order, this file
// is compiled with -ffp-contract=off so that no multiply-add is fused, and
// a row range whose result is a zero (whose sign depends on which of +0 and
// -0 came first) is recomputed by the portable loop. So a store's bytes and
// summaries do not depend on the machine that ingested it.
//
// Arrays are float32, row-major: x[r * d + c] is row r, column c.
//
// Thread safety: pure functions.
#pragma once

#include <cstddef>
#include <cstdint>

namespace msa {

enum class KernelIsa { kPortable, kAvx2, kAvx512 };

// The best this CPU runs (what the functions use by default).
KernelIsa DetectedKernelIsa();
// Whether this CPU can run `isa` (tests compare every path it can).
bool KernelIsaSupported(KernelIsa isa);
const char* KernelIsaName(KernelIsa isa);  // "avx512", "avx2", "portable"

// Per-column running range of `rows` rows of d columns, as the scalar loop
//   lo[c] = std::min(lo[c], x[r * d + c]); hi[c] = std::max(hi[c], x[r * d + c])
// over r in order (the caller initialises lo and hi: +-infinity, or a first
// row). Returns true when any element is NaN (std::min/std::max then keep
// the running value, as here).
bool ColumnRange(const float* x, size_t rows, size_t d, float* lo, float* hi,
                 KernelIsa isa = DetectedKernelIsa());

// sum[c] += x[r * d + c] for r = 0 .. rows - 1 in that order (the same
// float rounding as the scalar loop).
void ColumnSum(const float* x, size_t rows, size_t d, float* sum, KernelIsa isa = DetectedKernelIsa());

// The range of n elements as the scalar loop lo = std::min(lo, x[i]),
// hi = std::max(hi, x[i]) from lo = +inf, hi = -inf. Returns true when any
// element is NaN.
bool RowRange(const float* x, size_t n, float* lo, float* hi, KernelIsa isa = DetectedKernelIsa());

// codes[i] = uint8(std::min((x[i] - min[i]) * inv[i] + 0.5f, levels)), no
// fused multiply-add: the nearest code of x[i] in its group's (min, 1 /
// scale). Requires x[i] >= min[i], finite (what the quantised codecs
// check), and levels <= 255.
void QuantizeCodes(const float* x, const float* min, const float* inv, float levels, size_t n,
                   uint8_t* codes, KernelIsa isa = DetectedKernelIsa());
// The same with one (min, inv) for the run.
void QuantizeCodes(const float* x, float min, float inv, float levels, size_t n, uint8_t* codes,
                   KernelIsa isa = DetectedKernelIsa());

// The fp16 parameters of n quantisation groups from their ranges, as the
// scalar loop of each group i:
//   min16 = the largest fp16 <= lo[i];  min = its value
//   scale16 = the smallest fp16 >= (hi[i] - min) / levels, raised one fp16
//   step at a time while std::fma(scale, levels, min) < hi[i];  scale = its value
// Returns false when a group has a NaN bound, lo < -65504, hi > 65504 or a
// scale that is not finite (the outputs are then unspecified: the caller
// reports the group, store/codec_quantized.cc's FitGroups). The vector paths
// also need F16C and FMA (every AVX2 CPU has them); without, the portable loop.
bool FitRanges(const float* lo, const float* hi, size_t n, uint32_t levels, uint16_t* scale16, uint16_t* min16,
               float* scale, float* min, KernelIsa isa = DetectedKernelIsa());

}  // namespace msa
