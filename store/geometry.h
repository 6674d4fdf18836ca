// The fixed shape of a store, chosen at `msa create` and never changed.
#pragma once

#include <cstdint>
#include <string>

#include "msa/status.h"

namespace msa {

// How a block's K/V are stored (store/codec.h has the formats and their
// error bounds). Recorded per block too, so blocks of any codec read back
// whatever the store's current one. Values are persisted: never renumber.
enum class Codec : uint8_t {
  kF16ShuffleZstd = 1,   // fp16, byte planes split (shuffle), zstd: lossless for fp16 input
  kBF16ShuffleZstd = 2,  // bfloat16, shuffled, zstd: lossless for bf16 input
  kInt8 = 3,             // 8-bit asymmetric: keys per channel, values per token (KIVI)
  kInt4 = 4,             // 4-bit asymmetric, groups of 32: keys per channel, values per token
};

const char* CodecName(Codec codec);
Result<Codec> ParseCodec(const std::string& name);  // "f16", "bf16", "int8", "int4"
bool IsKnownCodec(uint8_t value);

// How a block is summarised for the router (store/summary.h). Persisted in
// the geometry: never renumber.
enum class SummaryKind : uint8_t {
  kMean = 1,       // the mean key (MoBA)
  kBound = 2,      // per-channel max and min of the keys (Quest's bound)
  kCentroids = 3,  // a few k-means centroids of the keys
  kHybrid = 4,     // the bound and the mean key, as two rankings
};

const char* SummaryName(SummaryKind kind);
Result<SummaryKind> ParseSummary(const std::string& name);  // "mean", "bound", "centroids"

// Identity of a block: its stream (layer, KV head) and its number in it.
struct BlockId {
  uint32_t layer = 0;
  uint32_t kv_head = 0;
  uint64_t block = 0;  // block number within the stream, from 0
};

struct Geometry {
  uint32_t layers = 0;
  uint32_t kv_heads = 0;
  uint32_t head_dim = 0;
  uint32_t block_tokens = 64;
  Codec codec = Codec::kF16ShuffleZstd;
  // The default from the router benchmark (BENCHMARKS.md): the bound finds
  // single-token needles the mean washes out, the mean finds spans of
  // moderately aligned keys the bound misses; the hybrid finds both.
  SummaryKind summary = SummaryKind::kHybrid;
  uint32_t summary_centroids = 4;  // centroids per block, for SummaryKind::kCentroids

  // Floats of one block's summary: head_dim (mean), 2 * head_dim (bound:
  // max then min), summary_centroids * head_dim (centroids).
  uint32_t summary_width() const;
  uint32_t streams() const { return layers * kv_heads; }
  // Stream index of (layer, KV head): streams are numbered layer-major.
  uint32_t StreamOf(uint32_t layer, uint32_t kv_head) const { return layer * kv_heads + kv_head; }
  // Checks ranges; the message names the offending field.
  Status Validate() const;
  std::string ToString() const;
};

}  // namespace msa
