#include "store/geometry.h"

namespace msa {

const char* CodecName(Codec codec) {
  switch (codec) {
    case Codec::kF16ShuffleZstd: return "f16";
    case Codec::kBF16ShuffleZstd: return "bf16";
    case Codec::kInt8: return "int8";
    case Codec::kInt4: return "int4";
  }
  return "unknown";
}

Result<Codec> ParseCodec(const std::string& name) {
  if (name == "f16") return Codec::kF16ShuffleZstd;
  if (name == "bf16") return Codec::kBF16ShuffleZstd;
  if (name == "int8") return Codec::kInt8;
  if (name == "int4") return Codec::kInt4;
  return Status::InvalidArgument("unknown codec '" + name + "' (available: f16, bf16, int8, int4)");
}

bool IsKnownCodec(uint8_t value) {
  return value >= static_cast<uint8_t>(Codec::kF16ShuffleZstd) &&
         value <= static_cast<uint8_t>(Codec::kInt4);
}

const char* SummaryName(SummaryKind kind) {
  switch (kind) {
    case SummaryKind::kMean: return "mean";
    case SummaryKind::kBound: return "bound";
    case SummaryKind::kCentroids: return "centroids";
    case SummaryKind::kHybrid: return "hybrid";
  }
  return "unknown";
}

Result<SummaryKind> ParseSummary(const std::string& name) {
  if (name == "mean") return SummaryKind::kMean;
  if (name == "bound") return SummaryKind::kBound;
  if (name == "centroids") return SummaryKind::kCentroids;
  if (name == "hybrid") return SummaryKind::kHybrid;
  return Status::InvalidArgument("unknown summary '" + name + "' (available: mean, bound, centroids, hybrid)");
}

uint32_t Geometry::summary_width() const {
  switch (summary) {
    case SummaryKind::kMean: return head_dim;
    case SummaryKind::kBound: return 2 * head_dim;
    case SummaryKind::kCentroids: return summary_centroids * head_dim;
    case SummaryKind::kHybrid: return 4 * head_dim;
  }
  return head_dim;
}

Status Geometry::Validate() const {
  auto check = [](const char* field, uint32_t v, uint32_t lo, uint32_t hi) -> Status {
    if (v < lo || v > hi) {
      return Status::InvalidArgument(std::string(field) + " = " + std::to_string(v) +
                                     " is out of range [" + std::to_string(lo) + ", " +
                                     std::to_string(hi) + "]");
    }
    return Status::OK();
  };
  MSA_RETURN_IF_ERROR(check("layers", layers, 1, 1024));
  MSA_RETURN_IF_ERROR(check("kv_heads", kv_heads, 1, 1024));
  MSA_RETURN_IF_ERROR(check("head_dim", head_dim, 1, 1024));
  MSA_RETURN_IF_ERROR(check("block_tokens", block_tokens, 1, 4096));
  if (!IsKnownCodec(static_cast<uint8_t>(codec))) {
    return Status::InvalidArgument("codec " + std::to_string(static_cast<int>(codec)) +
                                   " is unknown");
  }
  if (summary != SummaryKind::kMean && summary != SummaryKind::kBound &&
      summary != SummaryKind::kCentroids && summary != SummaryKind::kHybrid) {
    return Status::InvalidArgument("summary kind " + std::to_string(static_cast<int>(summary)) +
                                   " is unknown");
  }
  MSA_RETURN_IF_ERROR(check("summary_centroids", summary_centroids, 1, 64));
  return Status::OK();
}

std::string Geometry::ToString() const {
  return "layers=" + std::to_string(layers) + " kv_heads=" + std::to_string(kv_heads) +
         " head_dim=" + std::to_string(head_dim) + " block_tokens=" + std::to_string(block_tokens) +
         " codec=" + CodecName(codec) + " summary=" + SummaryName(summary) +
         (summary == SummaryKind::kCentroids ? "x" + std::to_string(summary_centroids) : "");
}

}  // namespace msa
