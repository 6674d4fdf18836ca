// Block records: what one block of one stream looks like on disk.
//
// A record is a fixed 64-byte header followed by the codec's payload; the
// segment file pads it to 4096 bytes. The header repeats the block's identity
// (stream, block number) so that a misdirected read is caught, not attended.
//
// Codec f16 (Codec::kF16ShuffleZstd): K then V as fp16 [tokens, head_dim],
// byte-shuffled (all low bytes, then all high bytes: neighbouring fp16 values
// share exponents, which zstd then finds) and zstd-compressed. Lossless for
// fp16 input; float32 input is rounded to nearest fp16 first.
//
// Checksum: XXH3-64 of the payload, stored in the header and in the catalog.
//
// Thread safety: BlockEncoder/BlockDecoder hold scratch and zstd contexts; use
// one per thread.
#pragma once

#include <cstdint>
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

  // keys/values: fp16 bits, [tokens, head_dim]. Returns the whole record
  // (header + payload, unpadded) in an internal buffer valid until the next
  // call; *header receives the header as written.
  Result<std::span<const uint8_t>> Encode(Codec codec, const BlockId& id, uint32_t tokens,
                                          uint32_t head_dim, const uint16_t* keys,
                                          const uint16_t* values, BlockRecordHeader* header);

 private:
  ZSTD_CCtx_s* cctx_;
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

 private:
  ZSTD_DCtx_s* dctx_;
  std::vector<uint8_t> shuffled_;
  std::vector<uint16_t> halves_;
};

// Parses a header (no payload check). Corruption on bad magic/version/codec.
Status ParseBlockRecordHeader(std::span<const uint8_t> record, BlockRecordHeader* header);

// XXH3-64 of bytes.
uint64_t Checksum(const void* data, size_t size);

// "layer 3 kv-head 1 block 42"
std::string DescribeBlock(const BlockId& id);

}  // namespace msa
