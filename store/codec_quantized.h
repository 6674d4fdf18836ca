// The int8 and int4 payloads of a block record (store/codec.h): asymmetric
// scalar quantisation of float32 K/V, the way KIVI found works for attention
// caches: keys quantised per channel (outliers live in channels, so a channel
// gets its own range), values per token.
//
//   int8: keys   one (scale, min) per channel over the whole block;
//         values one (scale, min) per token over all channels; 8-bit codes.
//   int4: keys   one (scale, min) per channel per group of 32 tokens;
//         values one (scale, min) per token per group of 32 channels;
//         4-bit codes.
//
// Payload layout (little-endian, no padding), T tokens, D = head_dim,
// Gk = ceil(T / key_group) key groups, Gv = ceil(D / value_group) value
// groups, R = bytes per code row (D for int8, ceil(D / 2) for int4):
//   key scales  fp16 [Gk, D] | key mins  fp16 [Gk, D]
//   value scales fp16 [T, Gv] | value mins fp16 [T, Gv]
//   key codes   [T, R]        | value codes [T, R]
// A value decodes as min + scale * code (float32 fused multiply-add).
//
// Error bound (every element, checked by the tests): |x - decoded| <=
// scale / 2 plus float32 rounding, where scale = (max - min) / levels of the
// element's group (levels 255 or 15) rounded up to fp16; min is rounded down
// to fp16 and scale up, so the whole range always fits the codes.
//
// Input must be finite and within fp16's range (|x| <= 65504): the
// parameters are fp16. Anything else is refused (InvalidArgument); the bf16
// codec stores such values.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "attention/block_table.h"
#include "msa/status.h"
#include "store/geometry.h"

namespace msa::quantized {

// True for the codecs this file implements (kInt8, kInt4).
bool Handles(Codec codec);

// Exact payload size of a block of `tokens` x `head_dim`.
size_t PayloadBytes(Codec codec, uint32_t tokens, uint32_t head_dim);

// keys/values: float32 [tokens, head_dim]. Writes PayloadBytes bytes at out.
// keys_as_stored (may be null) receives the keys as Decode will return them.
// `what` names the block in errors.
Status Encode(Codec codec, const float* keys, const float* values, uint32_t tokens,
              uint32_t head_dim, uint8_t* out, float* keys_as_stored, const std::string& what);

// payload holds PayloadBytes bytes (the caller checked). keys/values
// receive float32 [tokens, head_dim]; values may be null (keys only).
// scratch is reused between calls.
void Decode(Codec codec, const uint8_t* payload, uint32_t tokens, uint32_t head_dim, float* keys,
            float* values, std::vector<float>* scratch);

// The shape (bits, groups) of `codec`'s blocks as the CPU attention's
// quantised table (attention/block_table.h), num_blocks and blocks unset.
attention::QuantizedBlockTable TableShape(Codec codec, uint32_t block_tokens, uint32_t head_dim);

// A payload (PayloadBytes bytes, the caller checked; 2-byte aligned) as one
// block of that table: pointers into it, nothing copied or decoded.
attention::QuantizedBlock View(Codec codec, const uint8_t* payload, uint32_t tokens, uint32_t head_dim);

// An int8 or int4 payload of a block of `tokens` tokens as the two GPU
// pages of attention/quantized_pages.h (capacity block_tokens >= tokens,
// block_tokens <= kMaxQuantizedPageTokens): parameters and codes copied,
// nothing decoded. Each page receives QuantizedPages(...).page_bytes bytes'
// worth of content where it matters (the rest is left as it was).
void PayloadToPages(Codec codec, const uint8_t* payload, uint32_t tokens, uint32_t head_dim, uint32_t block_tokens,
                    uint8_t* key_page, uint8_t* value_page);

}  // namespace msa::quantized
