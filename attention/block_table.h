// The inputs shared by every attention path: gathered K/V blocks and, per
// (query, KV head), which of them to attend over.
//
// attention/ knows nothing of the store or of I/O: the caller gathers the
// selected blocks into one table (any order, no duplicates needed) and says,
// for each query row and KV head, which table entries belong to it.
#pragma once

#include <cstdint>

namespace msa::attention {

// Shapes shared by all entry points.
struct AttentionShape {
  int n_queries = 0;     // rows of q (decode batch, or prefill chunk positions)
  int q_heads = 0;       // query heads per row
  int kv_heads = 0;      // KV heads; q_heads % kv_heads == 0 (GQA)
  int head_dim = 0;      // channels per head
  int block_tokens = 0;  // capacity of one block in tokens
  float scale = 0.0f;    // softmax scale, normally 1/sqrt(head_dim)
};

// GQA: query head h reads KV head h / (q_heads / kv_heads).
inline int KvHeadOf(int q_head, int q_heads, int kv_heads) {
  return q_head / (q_heads / kv_heads);
}

// Gathered blocks, element type T (float on the CPU path, __half on the GPU).
//   keys[(b * block_tokens + t) * head_dim + c], the same for values,
//   block_len[b] in [1, block_tokens]: tokens of block b that are valid.
// Rows past block_len[b] are never read.
template <typename T>
struct BlockTable {
  int num_blocks = 0;
  const T* keys = nullptr;
  const T* values = nullptr;
  const int32_t* block_len = nullptr;
};

// Blocks kept as the int8/int4 codecs' codes (store/codec_quantized.h) and
// dequantised inside the attention loop, never into a float copy: an
// element is min + scale * code, with
//   keys   one fp16 (scale, min) per channel per group of key_group tokens
//          (params [ceil(len / key_group), head_dim]),
//   values one fp16 (scale, min) per token per group of value_group channels
//          (params [len, ceil(head_dim / value_group)]),
// codes [len, row bytes]: one byte each (bits 8, rows of head_dim bytes) or
// two per byte, low nibble first (bits 4, rows of ceil(head_dim / 2)
// bytes; value_group even, so a group starts on a byte).
struct QuantizedBlock {
  int32_t len = 0;  // valid tokens, [1, block_tokens]
  const uint16_t* key_scale = nullptr;
  const uint16_t* key_min = nullptr;
  const uint16_t* value_scale = nullptr;
  const uint16_t* value_min = nullptr;
  const uint8_t* key_codes = nullptr;
  const uint8_t* value_codes = nullptr;
};

struct QuantizedBlockTable {
  int num_blocks = 0;
  int bits = 8;         // 8 or 4
  int key_group = 0;    // tokens; >= block_tokens: one group per block (int8)
  int value_group = 0;  // channels; >= head_dim: one group per token (int8)
  const QuantizedBlock* blocks = nullptr;
};

// Per (query row, KV head) the blocks to attend over:
//   count[i * kv_heads + g] entries of
//   block_index[(i * kv_heads + g) * max_blocks + j], each in [0, num_blocks).
// An empty selection (count 0) yields out = 0 and lse = -inf.
struct Selection {
  int max_blocks = 0;
  const int32_t* block_index = nullptr;
  const int32_t* count = nullptr;
};

}  // namespace msa::attention
