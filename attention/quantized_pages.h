// GPU pages of quantised blocks: what the GPU block pool holds and the CUDA
// kernel reads for a store of the int8 or int4 codec, so that K/V stay 8- or
// 4-bit in GPU memory and are dequantised inside the kernel (half or a
// quarter of the bytes of fp16 pages in HBM, in the pool and over PCIe).
//
// The codes and parameters are the codec's (store/codec_quantized.h: keys
// one fp16 (scale, min) per channel per key group of tokens, values one per
// token per value group of channels; int8: one key group per block and one
// value group per token; int4: groups of 32), rearranged so that parameters
// start 16-byte aligned and every code row 4-byte aligned (the kernel's
// asynchronous copies), with room for a full block:
//   key page:   key scales fp16 [key_groups][head_dim] |
//               key mins fp16 [key_groups][head_dim] | pad |
//               key codes [block_tokens][row_bytes] at code_offset
//   value page: value scales fp16 [block_tokens][value_groups] |
//               value mins fp16 [block_tokens][value_groups] | pad |
//               value codes [block_tokens][row_bytes] at code_offset
// Codes: int8 one byte each; int4 two per byte, low nibble first. Both
// pages of a block have the same size, page_bytes (a multiple of 16). An
// element decodes as fmaf(scale, code, min) in float32, as the CPU decoder
// does, then rounds to fp16 for the tensor cores: the result is the fp16
// page an f16 upload of the decoded block would have held.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>

namespace msa::attention {

// What the kernel can address: it packs (page, token) into 32 bits.
inline constexpr int kMaxQuantizedPageTokens = 256;
inline constexpr int kMaxQuantizedPages = (1 << 23) - 1;
// int4's group, in tokens (keys) and channels (values): store/codec_quantized.cc's.
inline constexpr uint32_t kInt4Group = 32;

struct QuantizedPageLayout {
  int bits = 8;                // 8 (int8) or 4 (int4)
  uint32_t key_groups = 1;     // key parameter rows
  uint32_t value_groups = 1;   // value parameters per token
  uint32_t row_bytes = 0;      // bytes of one code row
  uint32_t code_offset = 0;    // bytes from a page's start to its first code row
  uint32_t page_bytes = 0;     // bytes of one page (key or value)
};

// Written out: the CUDA translation units are C++17 (no defaulted ==).
inline bool operator==(const QuantizedPageLayout& a, const QuantizedPageLayout& b) {
  return a.bits == b.bits && a.key_groups == b.key_groups && a.value_groups == b.value_groups &&
         a.row_bytes == b.row_bytes && a.code_offset == b.code_offset && a.page_bytes == b.page_bytes;
}
inline bool operator!=(const QuantizedPageLayout& a, const QuantizedPageLayout& b) { return !(a == b); }

inline QuantizedPageLayout QuantizedPages(int bits, uint32_t block_tokens, uint32_t head_dim) {
  auto up16 = [](uint64_t x) { return static_cast<uint32_t>((x + 15) / 16 * 16); };
  QuantizedPageLayout l;
  l.bits = bits;
  l.key_groups = bits == 8 ? 1 : (block_tokens + kInt4Group - 1) / kInt4Group;
  l.value_groups = bits == 8 ? 1 : (head_dim + kInt4Group - 1) / kInt4Group;
  l.row_bytes = bits == 8 ? head_dim : (head_dim + 1) / 2;
  l.code_offset = up16(std::max<uint64_t>(4ull * l.key_groups * head_dim, 4ull * block_tokens * l.value_groups));
  l.page_bytes = up16(uint64_t{l.code_offset} + uint64_t{block_tokens} * l.row_bytes);
  return l;
}

}  // namespace msa::attention
