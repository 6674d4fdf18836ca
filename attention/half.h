// IEEE 754 binary16 <-> float32 conversion on the CPU.
//
// fp16 is how the f16 codec stores K/V and what the CUDA kernels read, so the
// conversion must be exact where the value is representable and round to
// nearest-even otherwise (what F16C's vcvtps2ph does), with inf/nan kept.
#pragma once

#include <cstddef>
#include <cstdint>

namespace msa::attention {

uint16_t FloatToHalf(float value);
float HalfToFloat(uint16_t bits);

// Whether this CPU has F16C (and AVX, which its instructions need). From
// CPUID: clang 14's __builtin_cpu_supports does not know "f16c", and the
// clang build is the fuzzing one (-DMSA_FUZZ=ON).
bool CpuHasF16c();

// Bulk conversions (vectorised with F16C when the CPU has it).
void FloatToHalfArray(const float* in, uint16_t* out, size_t n);
void HalfToFloatArray(const uint16_t* in, float* out, size_t n);

}  // namespace msa::attention
