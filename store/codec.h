// Block records: what one block of one stream looks like on disk.
//
// A record is a fixed 64-byte header followed by the codec's payload; the
// segment file pads it to 4096 bytes. The header repeats the block's identity
// (stream, block number) so that a misdirected read is caught, not attended.
//
// The codec is chosen per store (Geometry::codec) and written in every
// record's header, so a decoder needs nothing but the record:
//   f16  (kF16ShuffleZstd): K then V as fp16 [tokens, head_dim], byte-shuffled
//        (all low bytes, then all high bytes: neighbouring values share
//        exponents, which zstd then finds) and zstd-compressed -- where that
//        saves a 4 KiB page of the padded record; otherwise K then V plain
//        (payload exactly 4 * tokens * head_dim bytes), which decodes at
//        copy speed. Lossless for fp16 input; other input is rounded to
//        nearest fp16 (relative error <= 2^-11; beyond +-65504, +-inf).
//   bf16 (kBF16ShuffleZstd): the same with bfloat16. Lossless for bf16 input;
//        other input is rounded to nearest bf16 (relative error <= 2^-8),
//        float32's whole range.
//   int8, int4: asymmetric scalar quantisation, keys per channel and values
//        per token; layouts and error bounds in store/codec_quantized.h.
// Decoding always yields float32 [tokens, head_dim] for K and V.
//
// Checksum: XXH3-64 of the payload, stored in the header and in the catalog.
//
// Thread safety: BlockEncoder/BlockDecoder hold scratch and zstd contexts; use
// one per thread.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "msa/status.h"
#include "store/geometry.h"

struct ZSTD_CCtx_s;
struct ZSTD_DCtx_s;

namespace msa {

inline constexpr uint32_t kBlockRecordMagic = 0x4241534d;  // "MSAB" little-endian
inline constexpr uint16_t kBlockRecordVersion = 1;
inline constexpr size_t kBlockRecordHeaderSize = 64;

struct BlockRecordHeader {
  Codec codec = Codec::kF16ShuffleZstd;
  BlockId id;
  uint32_t tokens = 0;
  uint32_t head_dim = 0;
  uint32_t payload_bytes = 0;
  uint64_t checksum = 0;  // XXH3-64 of the payload
};

// A decoded block: K and V as float32, [tokens, head_dim] each.
struct DecodedBlock {
  uint32_t tokens = 0;
  std::vector<float> keys;
  std::vector<float> values;
};

class BlockEncoder {
 public:
  BlockEncoder();
  ~BlockEncoder();
  BlockEncoder(const BlockEncoder&) = delete;
  BlockEncoder& operator=(const BlockEncoder&) = delete;

  // keys/values: float32 [tokens, head_dim]. Returns the whole record
  // (header + payload, unpadded) in an internal buffer valid until the next
  // call; *header receives the header as written. keys_as_stored (may be
  // null, else [tokens, head_dim]) receives the keys exactly as a decoder
  // will return them (the router summarises those). InvalidArgument, naming
  // the block, for input the codec cannot store (store/codec_quantized.h).
  Result<std::span<const uint8_t>> Encode(Codec codec, const BlockId& id, uint32_t tokens,
                                          uint32_t head_dim, const float* keys,
                                          const float* values, BlockRecordHeader* header,
                                          float* keys_as_stored = nullptr);

 private:
  Status EncodeShuffled(Codec codec, const BlockId& id, size_t n, const float* keys,
                        const float* values, float* keys_as_stored);

  ZSTD_CCtx_s* cctx_;
  std::vector<uint16_t> halves_;
  std::vector<uint8_t> shuffled_;
  std::vector<uint8_t> record_;
};

class BlockDecoder {
 public:
  BlockDecoder();
  ~BlockDecoder();
  BlockDecoder(const BlockDecoder&) = delete;
  BlockDecoder& operator=(const BlockDecoder&) = delete;

  // Parses and checks a record read from disk against what the catalog says
  // it must be (identity and checksum), then decodes K/V into float32 at
  // keys_out/values_out ([tokens, head_dim] each). Any mismatch is
  // Corruption naming the block.
  Status Decode(std::span<const uint8_t> record, const BlockId& expected_id,
                uint64_t expected_checksum, uint32_t expected_tokens, uint32_t head_dim,
                float* keys_out, float* values_out);
  // Decode's checks (identity, shape, checksum, a quantised payload's size)
  // without the decoding: for a caller that keeps the record itself (the
  // cache's quantised entries, the GPU's quantised pages).
  Status Verify(std::span<const uint8_t> record, const BlockId& expected_id,
                uint64_t expected_checksum, uint32_t expected_tokens, uint32_t head_dim);

 private:
  Status CheckAndDecode(std::span<const uint8_t> record, const BlockId& expected_id, uint64_t expected_checksum,
                        uint32_t expected_tokens, uint32_t head_dim, float* keys_out, float* values_out,
                        bool decode);
  ZSTD_DCtx_s* dctx_;
  std::vector<uint8_t> shuffled_;
  std::vector<uint16_t> halves_;
  std::vector<float> params_;  // quantisation parameters, widened
};

// Bytes of a record's payload for the fixed-size codecs (int8, int4), 0 for
// the compressed ones (their size depends on the data).
size_t FixedPayloadBytes(Codec codec, uint32_t tokens, uint32_t head_dim);

// Parses a header (no payload check). Corruption on bad magic/version/codec.
// A record written by any version of msa so far parses (version 1; codecs
// are told apart by the header's codec byte, not by the version).
Status ParseBlockRecordHeader(std::span<const uint8_t> record, BlockRecordHeader* header);

// The first of n K/V elements that `codec` cannot store as given: one that
// is not finite, or for f16 one beyond fp16's range (it would round to
// infinity); n when every one is storable. The quantised codecs check their
// groups' ranges themselves (FitGroups).
size_t FirstUnstorable(Codec codec, const float* x, size_t n);

// XXH3-64 of bytes.
uint64_t Checksum(const void* data, size_t size);

// The same of bytes that arrive in parts: Digest() after Update()s of the
// parts in order equals Checksum() of them all.
class ChecksumStream {
 public:
  ChecksumStream();
  ~ChecksumStream();
  ChecksumStream(const ChecksumStream&) = delete;
  ChecksumStream& operator=(const ChecksumStream&) = delete;
  void Update(const void* data, size_t size);
  uint64_t Digest() const;

 private:
  struct State;
  std::unique_ptr<State> state_;
};

// A checksum as text: 16 lowercase hex digits, no prefix ("18d6e502c51362de"),
// the form every CLI output (text and JSON) and error message uses. JSON
// numbers cannot carry 64 bits through most parsers (jq reads doubles).
std::string ChecksumHex(uint64_t checksum);

// "layer 3 kv-head 1 block 42"
std::string DescribeBlock(const BlockId& id);

}  // namespace msa
