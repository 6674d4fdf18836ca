#include "store/codec.h"

#include <cinttypes>
#include <cstdio>
#include <cstring>

#define XXH_INLINE_ALL
#include <xxhash.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <zstd.h>

#include "attention/half.h"
#include "io/aligned_buffer.h"
#include "store/codec_quantized.h"

namespace msa {

namespace {

// zstd's fastest standard level keeps compression off ingest's critical path;
// the codec work (issue 5) measures ratio against speed for the alternatives.
constexpr int kZstdLevel = 1;

template <typename T>
void Put(uint8_t* p, T v) {
  std::memcpy(p, &v, sizeof(T));
}
template <typename T>
T Get(const uint8_t* p) {
  T v;
  std::memcpy(&v, p, sizeof(T));
  return v;
}

// Header layout (little-endian), 64 bytes:
//   0 magic u32 | 4 version u16 | 6 codec u8 | 7 reserved u8
//   8 layer u32 | 12 kv_head u32 | 16 block u64
//  24 tokens u32 | 28 head_dim u32 | 32 payload_bytes u32 | 36 reserved u32
//  40 checksum u64 | 48 reserved (zero) 16 bytes
void WriteHeader(const BlockRecordHeader& h, uint8_t* p) {
  std::memset(p, 0, kBlockRecordHeaderSize);
  Put<uint32_t>(p + 0, kBlockRecordMagic);
  Put<uint16_t>(p + 4, kBlockRecordVersion);
  Put<uint8_t>(p + 6, static_cast<uint8_t>(h.codec));
  Put<uint32_t>(p + 8, h.id.layer);
  Put<uint32_t>(p + 12, h.id.kv_head);
  Put<uint64_t>(p + 16, h.id.block);
  Put<uint32_t>(p + 24, h.tokens);
  Put<uint32_t>(p + 28, h.head_dim);
  Put<uint32_t>(p + 32, h.payload_bytes);
  Put<uint64_t>(p + 40, h.checksum);
}

// Byte shuffle of fp16 values: low bytes of all values, then high bytes.
void Shuffle(const uint16_t* in, size_t n, uint8_t* out) {
  for (size_t i = 0; i < n; ++i) {
    out[i] = static_cast<uint8_t>(in[i] & 0xff);
    out[n + i] = static_cast<uint8_t>(in[i] >> 8);
  }
}
void Unshuffle(const uint8_t* in, size_t n, uint16_t* out) {
  for (size_t i = 0; i < n; ++i) out[i] = static_cast<uint16_t>(in[i] | (in[n + i] << 8));
}

// bfloat16: the top half of a float32, rounded to nearest-even; nan stays a
// (quiet) nan.
void FloatToBf16Array(const float* in, uint16_t* out, size_t n) {
  for (size_t i = 0; i < n; ++i) {
    uint32_t x;
    std::memcpy(&x, in + i, 4);
    if ((x & 0x7fffffffu) > 0x7f800000u) {
      out[i] = static_cast<uint16_t>((x >> 16) | 0x40u);
    } else {
      out[i] = static_cast<uint16_t>((x + 0x7fffu + ((x >> 16) & 1u)) >> 16);
    }
  }
}
void Bf16ToFloatArray(const uint16_t* in, float* out, size_t n) {
  for (size_t i = 0; i < n; ++i) {
    const uint32_t x = static_cast<uint32_t>(in[i]) << 16;
    std::memcpy(out + i, &x, 4);
  }
}

// The 16-bit codecs' element conversions.
void ToHalves(Codec codec, const float* in, uint16_t* out, size_t n) {
  if (codec == Codec::kBF16ShuffleZstd) return FloatToBf16Array(in, out, n);
  attention::FloatToHalfArray(in, out, n);
}
void FromHalves(Codec codec, const uint16_t* in, float* out, size_t n) {
  if (codec == Codec::kBF16ShuffleZstd) return Bf16ToFloatArray(in, out, n);
  attention::HalfToFloatArray(in, out, n);
}

}  // namespace

size_t FirstUnstorable(Codec codec, const float* x, size_t n) {
  // Branch-free over chunks (vectorised), then the chunk that failed is
  // searched: a NaN fails every comparison, so !(|x| <= limit) catches it.
  const float limit = codec == Codec::kF16ShuffleZstd ? 65504.0f : std::numeric_limits<float>::max();
  constexpr size_t kChunk = 256;
  for (size_t c0 = 0; c0 < n; c0 += kChunk) {
    const size_t c1 = std::min(n, c0 + kChunk);
    bool bad = false;
    for (size_t i = c0; i < c1; ++i) bad |= !(std::fabs(x[i]) <= limit);
    if (!bad) continue;
    for (size_t i = c0; i < c1; ++i) {
      if (!(std::fabs(x[i]) <= limit)) return i;
    }
  }
  return n;
}

uint64_t Checksum(const void* data, size_t size) { return XXH3_64bits(data, size); }

struct ChecksumStream::State {
  XXH3_state_t xxh;
};
ChecksumStream::ChecksumStream() : state_(std::make_unique<State>()) { XXH3_64bits_reset(&state_->xxh); }
ChecksumStream::~ChecksumStream() = default;
void ChecksumStream::Update(const void* data, size_t size) { XXH3_64bits_update(&state_->xxh, data, size); }
uint64_t ChecksumStream::Digest() const { return XXH3_64bits_digest(&state_->xxh); }

std::string ChecksumHex(uint64_t checksum) {
  char buf[17];
  std::snprintf(buf, sizeof buf, "%016" PRIx64, checksum);
  return buf;
}

std::string DescribeBlock(const BlockId& id) {
  return "layer " + std::to_string(id.layer) + " kv-head " + std::to_string(id.kv_head) +
         " block " + std::to_string(id.block);
}

BlockEncoder::BlockEncoder() : cctx_(ZSTD_createCCtx()) {}
BlockEncoder::~BlockEncoder() { ZSTD_freeCCtx(cctx_); }

Status BlockEncoder::EncodeShuffled(Codec codec, const BlockId& id, size_t n, const float* keys,
                                    const float* values, float* keys_as_stored) {
  halves_.resize(2 * n);
  ToHalves(codec, keys, halves_.data(), n);
  ToHalves(codec, values, halves_.data() + n, n);
  if (keys_as_stored) FromHalves(codec, halves_.data(), keys_as_stored, n);
  shuffled_.resize(4 * n);
  Shuffle(halves_.data(), n, shuffled_.data());
  Shuffle(halves_.data() + n, n, shuffled_.data() + 2 * n);
  const size_t bound = ZSTD_compressBound(shuffled_.size());
  record_.resize(kBlockRecordHeaderSize + bound);
  const size_t written = ZSTD_compressCCtx(cctx_, record_.data() + kBlockRecordHeaderSize, bound,
                                           shuffled_.data(), shuffled_.size(), kZstdLevel);
  if (ZSTD_isError(written)) {
    return Status::Internal("zstd compress " + DescribeBlock(id) + ": " +
                            ZSTD_getErrorName(written));
  }
  // Compressed only where it saves a 4 KiB page of the padded record (what
  // the disk stores and reads): model K/V in fp16 compress by ~7%, which
  // rarely does, and decompressing costs ~20x the time of a plain copy
  // (BENCHMARKS.md, codecs). Otherwise the fp16 K then V, unshuffled: a
  // payload of exactly 4 * n bytes means that to the decoder (a zstd frame
  // of an incompressible input is always longer than it).
  if (io::AlignUp(kBlockRecordHeaderSize + written) < io::AlignUp(kBlockRecordHeaderSize + 4 * n)) {
    record_.resize(kBlockRecordHeaderSize + written);
  } else {
    record_.resize(kBlockRecordHeaderSize + 4 * n);
    std::memcpy(record_.data() + kBlockRecordHeaderSize, halves_.data(), 4 * n);
  }
  return Status::OK();
}

Result<std::span<const uint8_t>> BlockEncoder::Encode(Codec codec, const BlockId& id,
                                                      uint32_t tokens, uint32_t head_dim,
                                                      const float* keys, const float* values,
                                                      BlockRecordHeader* header,
                                                      float* keys_as_stored) {
  const size_t n = static_cast<size_t>(tokens) * head_dim;  // values per tensor
  if (quantized::Handles(codec)) {
    record_.resize(kBlockRecordHeaderSize + quantized::PayloadBytes(codec, tokens, head_dim));
    MSA_RETURN_IF_ERROR(quantized::Encode(codec, keys, values, tokens, head_dim,
                                          record_.data() + kBlockRecordHeaderSize, keys_as_stored,
                                          DescribeBlock(id)));
  } else if (codec == Codec::kF16ShuffleZstd || codec == Codec::kBF16ShuffleZstd) {
    MSA_RETURN_IF_ERROR(EncodeShuffled(codec, id, n, keys, values, keys_as_stored));
  } else {
    return Status::NotSupported("codec " + std::to_string(static_cast<int>(codec)) +
                                " cannot encode");
  }
  const size_t payload = record_.size() - kBlockRecordHeaderSize;
  header->codec = codec;
  header->id = id;
  header->tokens = tokens;
  header->head_dim = head_dim;
  header->payload_bytes = static_cast<uint32_t>(payload);
  header->checksum = Checksum(record_.data() + kBlockRecordHeaderSize, payload);
  WriteHeader(*header, record_.data());
  return std::span<const uint8_t>(record_);
}

size_t FixedPayloadBytes(Codec codec, uint32_t tokens, uint32_t head_dim) {
  return quantized::Handles(codec) ? quantized::PayloadBytes(codec, tokens, head_dim) : 0;
}

Status ParseBlockRecordHeader(std::span<const uint8_t> record, BlockRecordHeader* h) {
  if (record.size() < kBlockRecordHeaderSize) {
    return Status::Corruption("block record shorter than its header");
  }
  const uint8_t* p = record.data();
  if (Get<uint32_t>(p) != kBlockRecordMagic) return Status::Corruption("bad block record magic");
  const uint16_t version = Get<uint16_t>(p + 4);
  if (version != kBlockRecordVersion) {
    return Status::Corruption("unknown block record version " + std::to_string(version));
  }
  const uint8_t codec = Get<uint8_t>(p + 6);
  if (!IsKnownCodec(codec)) {
    return Status::Corruption("unknown block codec " + std::to_string(codec));
  }
  h->codec = static_cast<Codec>(codec);
  h->id.layer = Get<uint32_t>(p + 8);
  h->id.kv_head = Get<uint32_t>(p + 12);
  h->id.block = Get<uint64_t>(p + 16);
  h->tokens = Get<uint32_t>(p + 24);
  h->head_dim = Get<uint32_t>(p + 28);
  h->payload_bytes = Get<uint32_t>(p + 32);
  h->checksum = Get<uint64_t>(p + 40);
  if (kBlockRecordHeaderSize + static_cast<size_t>(h->payload_bytes) > record.size()) {
    return Status::Corruption("block record payload of " + std::to_string(h->payload_bytes) +
                              " bytes runs past the record");
  }
  return Status::OK();
}

BlockDecoder::BlockDecoder() : dctx_(ZSTD_createDCtx()) {}
BlockDecoder::~BlockDecoder() { ZSTD_freeDCtx(dctx_); }

Status BlockDecoder::Decode(std::span<const uint8_t> record, const BlockId& expected_id,
                            uint64_t expected_checksum, uint32_t expected_tokens,
                            uint32_t head_dim, float* keys_out, float* values_out) {
  return CheckAndDecode(record, expected_id, expected_checksum, expected_tokens, head_dim, keys_out, values_out,
                        /*decode=*/true);
}

Status BlockDecoder::Verify(std::span<const uint8_t> record, const BlockId& expected_id,
                            uint64_t expected_checksum, uint32_t expected_tokens, uint32_t head_dim) {
  return CheckAndDecode(record, expected_id, expected_checksum, expected_tokens, head_dim, nullptr, nullptr,
                        /*decode=*/false);
}

Status BlockDecoder::CheckAndDecode(std::span<const uint8_t> record, const BlockId& expected_id,
                                    uint64_t expected_checksum, uint32_t expected_tokens, uint32_t head_dim,
                                    float* keys_out, float* values_out, bool decode) {
  const std::string what = DescribeBlock(expected_id);
  BlockRecordHeader h;
  MSA_RETURN_IF_ERROR(ParseBlockRecordHeader(record, &h).WithContext(what));
  if (h.id.layer != expected_id.layer || h.id.kv_head != expected_id.kv_head ||
      h.id.block != expected_id.block) {
    return Status::Corruption(what + ": record holds " + DescribeBlock(h.id) + " instead");
  }
  if (h.tokens != expected_tokens || h.head_dim != head_dim) {
    return Status::Corruption(what + ": record shape " + std::to_string(h.tokens) + "x" +
                              std::to_string(h.head_dim) + " differs from the catalog's " +
                              std::to_string(expected_tokens) + "x" + std::to_string(head_dim));
  }
  const uint8_t* payload = record.data() + kBlockRecordHeaderSize;
  const uint64_t sum = Checksum(payload, h.payload_bytes);
  if (sum != expected_checksum || h.checksum != expected_checksum) {
    return Status::Corruption(what + ": checksum mismatch (payload " + ChecksumHex(sum) + ", catalog " +
                              ChecksumHex(expected_checksum) + ")");
  }
  const size_t n = static_cast<size_t>(h.tokens) * head_dim;
  if (quantized::Handles(h.codec)) {
    const size_t expected = quantized::PayloadBytes(h.codec, h.tokens, head_dim);
    if (h.payload_bytes != expected) {
      return Status::Corruption(what + ": " + CodecName(h.codec) + " payload of " +
                                std::to_string(h.payload_bytes) + " bytes, expected " +
                                std::to_string(expected));
    }
    if (!decode) return Status::OK();
    quantized::Decode(h.codec, payload, h.tokens, head_dim, keys_out, values_out, &params_);
    return Status::OK();
  }
  if (!decode) return Status::OK();
  if (h.payload_bytes == 4 * n) {  // stored plain (see EncodeShuffled)
    const uint16_t* halves = reinterpret_cast<const uint16_t*>(payload);
    FromHalves(h.codec, halves, keys_out, n);
    FromHalves(h.codec, halves + n, values_out, n);
    return Status::OK();
  }
  shuffled_.resize(4 * n);
  const size_t got = ZSTD_decompressDCtx(dctx_, shuffled_.data(), shuffled_.size(), payload,
                                         h.payload_bytes);
  if (ZSTD_isError(got) || got != shuffled_.size()) {
    return Status::Corruption(what + ": payload does not decompress to " +
                              std::to_string(shuffled_.size()) + " bytes" +
                              (ZSTD_isError(got) ? std::string(" (") + ZSTD_getErrorName(got) + ")"
                                                 : std::string()));
  }
  halves_.resize(2 * n);
  Unshuffle(shuffled_.data(), n, halves_.data());
  Unshuffle(shuffled_.data() + 2 * n, n, halves_.data() + n);
  FromHalves(h.codec, halves_.data(), keys_out, n);
  FromHalves(h.codec, halves_.data() + n, values_out, n);
  return Status::OK();
}

}  // namespace msa
