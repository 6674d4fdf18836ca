#include "store/geometry.h"

namespace msa {

const char* CodecName(Codec codec) {
  switch (codec) {
    case Codec::kF16ShuffleZstd: return "f16";
  }
  return "unknown";
}

Result<Codec> ParseCodec(const std::string& name) {
  if (name == "f16") return Codec::kF16ShuffleZstd;
  return Status::InvalidArgument("unknown codec '" + name + "' (available: f16)");
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
  if (codec != Codec::kF16ShuffleZstd) {
    return Status::InvalidArgument("codec " + std::to_string(static_cast<int>(codec)) +
                                   " is unknown");
  }
  return Status::OK();
}

std::string Geometry::ToString() const {
  return "layers=" + std::to_string(layers) + " kv_heads=" + std::to_string(kv_heads) +
         " head_dim=" + std::to_string(head_dim) + " block_tokens=" + std::to_string(block_tokens) +
         " codec=" + CodecName(codec);
}

}  // namespace msa
