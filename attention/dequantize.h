// Dequantisation loops of the int8 and int4 codecs (store/codec.h): codes
// to float32 as out = min + scale * code, vectorised with AVX-512 or AVX2
// when the CPU has them (chosen once at start-up), with a portable loop
// otherwise. The CPU attention dequantises every row of a quantised block
// through these as it attends (and the decoder uses them), so they must run
// at memory speed, not at the speed of a scalar loop.
//
// Codes: u8 one per byte; u4 two per byte, element 2i in the low nibble of
// byte i and element 2i + 1 in the high nibble.
//
// Thread safety: pure functions.
#pragma once

#include <cstddef>
#include <cstdint>

namespace msa::attention {

// out[i] = min[i] + scale[i] * codes[i] for i < n: one (scale, min) per
// element (the int8/int4 keys, quantised per channel).
void DequantizeU8(const uint8_t* codes, const float* scale, const float* min, size_t n, float* out);
// out[i] = min + scale * codes[i]: one (scale, min) for the run (a value row).
void DequantizeU8(const uint8_t* codes, float scale, float min, size_t n, float* out);
// The same for packed nibbles; `packed` starts at element 0 of the run.
void DequantizeU4(const uint8_t* packed, const float* scale, const float* min, size_t n, float* out);
void DequantizeU4(const uint8_t* packed, float scale, float min, size_t n, float* out);

// Which loop runs: "avx512", "avx2" or "portable" (for benchmark reports).
const char* DequantizeIsa();

}  // namespace msa::attention
