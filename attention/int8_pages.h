// GPU pages of int8 blocks: what the GPU block pool holds and the CUDA
// kernel reads for a store of the int8 codec, so that K/V stay 8-bit in GPU
// memory and are dequantised inside the kernel (half the bytes of fp16 pages
// in HBM, in the pool and over PCIe).
//
// The codes and parameters are the int8 codec's (store/codec_quantized.h:
// keys one (scale, min) per channel, values one per token, fp16 each),
// rearranged so that parameters start 16-byte aligned and every code row
// 8-byte aligned (the kernel's asynchronous copies):
//   key page:   key scales fp16 [head_dim] | key mins fp16 [head_dim] | pad |
//               key codes u8 [block_tokens][head_dim] at code_offset
//   value page: value scales fp16 [block_tokens] | value mins fp16 [block_tokens] |
//               pad | value codes u8 [block_tokens][head_dim] at code_offset
// Both pages of a block have the same size, page_bytes (a multiple of 16).
// An element decodes as fmaf(scale, code, min) in float32, as the CPU
// decoder does, then rounds to fp16 for the tensor cores: the result is the
// fp16 page an f16 upload of the decoded block would have held.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>

namespace msa::attention {

// What the kernel can address: it packs (page, token) into 32 bits.
inline constexpr int kMaxInt8PageTokens = 256;
inline constexpr int kMaxInt8Pages = (1 << 23) - 1;

struct Int8PageLayout {
  uint32_t code_offset = 0;  // bytes from a page's start to its first code row
  uint32_t page_bytes = 0;   // bytes of one page (key or value)
};

inline Int8PageLayout Int8Pages(uint32_t block_tokens, uint32_t head_dim) {
  auto up16 = [](uint64_t x) { return static_cast<uint32_t>((x + 15) / 16 * 16); };
  Int8PageLayout l;
  l.code_offset = up16(std::max<uint64_t>(4ull * head_dim, 4ull * block_tokens));
  l.page_bytes = up16(uint64_t{l.code_offset} + uint64_t{block_tokens} * head_dim);
  return l;
}

}  // namespace msa::attention
