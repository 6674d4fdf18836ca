// The approximate scan's inner loop over the 8-bit sketch (store/route_sketch.h):
// every query head of a GQA group scored over a run of blocks, from columns
// read and widened once for the whole group.
//
// Why integers: the scan of a float kernel (widen each code, multiply-add
// per head) spent ~12 vector operations per block for 4 heads and 16
// columns, and was compute-bound at 1e8 tokens (BENCHMARKS.md, routing).
// Here the heads' coefficients are quantised to int8 per (head, run), four
// columns are interleaved into one 32-bit lane per block, and one VNNI
// instruction (vpdpbusd) multiplies and adds four columns for 16 blocks;
// without VNNI, AVX2's maddubs + madd do the same for 8 blocks (byte codes
// taken as signed so that the 16-bit pair sums cannot saturate).
// The sums are exact integers on every path, so every ISA returns the same
// scores; the coefficients' rounding is the only approximation added, and
// the candidates are rescored from the fp16 summaries anyway.
//
// Layout: a byte column stores codes biased to unsigned (code + 128, the
// operand vpdpbusd wants), a packed column two columns' 4-bit codes (0..15,
// low and high nibble; the kernel splits two packed columns into four byte
// columns' worth), both, within each group of 64 blocks, in SketchOrder:
// the order in which byte unpacking of four columns yields lanes in block
// order, so the kernel needs no permutation at the end.
//
// Thread safety: pure functions.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "store/dot_kernel.h"

namespace msa {

inline constexpr size_t kSketchGroup = 64;
// Enough for every column of a 256-wide index vector twice; keeps the
// integer sums below 2^24, exact in float on the fallback paths.
inline constexpr size_t kMaxSketchColumns = 512;

// Where block b (< 64) of a group sits in a stored column: bits 2-3 and 4-5
// swapped. Its own inverse.
constexpr uint32_t SketchOrder(uint32_t b) { return (b & ~0x3Cu) | ((b & 0x0Cu) << 2) | ((b & 0x30u) >> 2); }

// Writes n codes (a multiple of kSketchGroup) as a stored byte column.
void StoreSketchColumn(const int8_t* codes, size_t n, uint8_t* out);
// Writes two columns' 4-bit codes (0..15) as one stored packed column: the
// first in the low nibble, the second in the high one.
void StoreSketchPacked(const uint8_t* low, const uint8_t* high, size_t n, uint8_t* out);

// One group's query against one run: per head, int8 coefficients over the
// same logical columns, and the float scale that turns the integer sum
// back into a score. Logical columns are the byte columns in order, then
// each packed column's low and high halves in order.
struct SketchProbe {
  int heads = 0;
  std::vector<uint32_t> columns;  // byte columns, a multiple of 4 (pad with any column, coefficient 0)
  std::vector<uint32_t> packed;   // packed columns, a multiple of 2 (the same padding)
  std::vector<int8_t> coef;       // [heads][logical()], each in [-127, 127] (Quantize's range; the AVX2 loop needs it)
  std::vector<float> scale;       // [heads]
  std::vector<int32_t> bias;      // [heads]: minus the codes' zero points (128, 8) times the coefficients
  std::vector<float> offset;      // [heads]: added to each score (the packed columns' bases)

  size_t logical() const { return columns.size() + 2 * packed.size(); }
  // Quantises weights [heads][logical()] (coefficient x the column's
  // sketch scale) to int8 per head; offsets [heads] (null: zero) are kept.
  void Quantize(const float* weights, const float* offsets = nullptr);
};

// What the scores come out as: every head's (out[h * blocks + b]), or the
// heads' max or sum in head order (out[b]; the GQA combine, done before
// the scores leave the kernel).
enum class SketchHeads : uint8_t { kEach, kMax, kSum };

// Head h's score of block b is scale[h] * (sum_k coef[h][k] * code(k, b) +
// bias[h]) + offset[h] over the logical columns k, for `blocks` blocks (a
// multiple of kColumnTile) from `base`: stored column c at base + c * stride. The
// blocks are scored a few columns per pass (see sketch_scan.cc for why);
// scratch holds the integer sums between passes, so a caller keeps `blocks`
// small enough for them to stay in L1 (the router passes 512 at a time).
void SketchScores(const SketchProbe& probe, SketchHeads heads, const uint8_t* base, size_t stride, size_t blocks,
                  std::vector<int32_t>* scratch, float* out);

// Which loop runs: "avx512-vnni", "avx2" or "portable".
const char* SketchKernelIsa();

// For tests: the same through one chosen loop; false (out untouched) where
// this CPU lacks it.
enum class SketchIsa { kAvx512Vnni, kAvx2, kPortable };
bool SketchScoresOn(SketchIsa isa, const SketchProbe& probe, SketchHeads heads, const uint8_t* base, size_t stride,
                    size_t blocks, std::vector<int32_t>* scratch, float* out);

}  // namespace msa
