#include "store/codec_quantized.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "attention/half.h"
#include "store/dequantize.h"

namespace msa::quantized {

namespace {

constexpr uint32_t kGroup = 32;  // int4's group, in tokens (keys) or channels (values)

struct Layout {
  uint32_t bits;         // 8 or 4
  uint32_t key_group;    // tokens per key group
  uint32_t value_group;  // channels per value group
  uint32_t tokens, head_dim;

  Layout(Codec codec, uint32_t t, uint32_t d)
      : bits(codec == Codec::kInt8 ? 8 : 4),
        key_group(codec == Codec::kInt8 ? std::max(t, 1u) : kGroup),
        value_group(codec == Codec::kInt8 ? std::max(d, 1u) : kGroup),
        tokens(t),
        head_dim(d) {}
  uint32_t levels() const { return (1u << bits) - 1; }
  size_t key_groups() const { return (tokens + key_group - 1) / key_group; }
  size_t value_groups() const { return (head_dim + value_group - 1) / value_group; }
  size_t row_bytes() const { return bits == 8 ? head_dim : (head_dim + 1) / 2; }
  // Offsets of the payload's parts.
  size_t key_params() const { return key_groups() * head_dim; }  // per array
  size_t value_params() const { return size_t{tokens} * value_groups(); }
  size_t key_codes_at() const { return 4 * (key_params() + value_params()); }
  size_t value_codes_at() const { return key_codes_at() + size_t{tokens} * row_bytes(); }
  size_t bytes() const { return value_codes_at() + size_t{tokens} * row_bytes(); }
};

uint16_t NextDown(uint16_t h) {
  if (h == 0x0000) return 0x8001;
  return (h & 0x8000) ? static_cast<uint16_t>(h + 1) : static_cast<uint16_t>(h - 1);
}
uint16_t NextUp(uint16_t h) {
  if (h == 0x8000) return 0x0001;
  return (h & 0x8000) ? static_cast<uint16_t>(h - 1) : static_cast<uint16_t>(h + 1);
}
// The largest fp16 <= x, and the smallest fp16 >= x (x finite, in range).
uint16_t HalfAtMost(float x) {
  const uint16_t h = attention::FloatToHalf(x);
  return attention::HalfToFloat(h) > x ? NextDown(h) : h;
}
uint16_t HalfAtLeast(float x) {
  const uint16_t h = attention::FloatToHalf(x);
  return attention::HalfToFloat(h) < x ? NextUp(h) : h;
}

void PutHalf(uint8_t* base, size_t index, uint16_t h) { std::memcpy(base + 2 * index, &h, 2); }

// One group: `count` elements x[i * stride], i < count. Fits (scale, min),
// stores them at params index `at`, and writes the codes through set(i, u).
template <typename SetCode>
Status QuantizeGroup(const float* x, size_t stride, size_t count, uint32_t levels, uint8_t* scales,
                     uint8_t* mins, size_t at, SetCode set, const std::string& what) {
  float lo = std::numeric_limits<float>::infinity(), hi = -lo;
  bool nan = false;
  for (size_t i = 0; i < count; ++i) {
    const float v = x[i * stride];
    nan |= v != v;
    lo = std::min(lo, v);
    hi = std::max(hi, v);
  }
  constexpr float kHalfMax = 65504.0f;
  if (nan || !(lo >= -kHalfMax && hi <= kHalfMax)) {
    return Status::InvalidArgument(what + ": a value outside fp16's range or not finite (min " +
                                   std::to_string(lo) + ", max " + std::to_string(hi) +
                                   "); the quantised codecs need |x| <= 65504, bf16 stores it");
  }
  const uint16_t min16 = HalfAtMost(lo);
  const float min = attention::HalfToFloat(min16);
  uint16_t scale16 = HalfAtLeast((hi - min) / static_cast<float>(levels));
  float scale = attention::HalfToFloat(scale16);
  // min + levels * scale must reach hi despite float rounding of the product.
  while (std::fma(scale, static_cast<float>(levels), min) < hi) {
    scale16 = NextUp(scale16);
    scale = attention::HalfToFloat(scale16);
  }
  if (!std::isfinite(scale)) {
    return Status::InvalidArgument(what + ": range " + std::to_string(lo) + " .. " +
                                   std::to_string(hi) + " is too wide for an fp16 scale");
  }
  PutHalf(scales, at, scale16);
  PutHalf(mins, at, min16);
  const float inv = scale > 0 ? 1.0f / scale : 0.0f;
  for (size_t i = 0; i < count; ++i) {
    const float q = std::nearbyint((x[i * stride] - min) * inv);
    set(i, static_cast<uint8_t>(std::clamp(q, 0.0f, static_cast<float>(levels))));
  }
  return Status::OK();
}

void DecodeKeys(const Layout& l, const uint8_t* payload, float* keys, std::vector<float>* scratch) {
  const size_t d = l.head_dim, n = l.key_params();
  scratch->resize(2 * n);
  float* scale = scratch->data();
  float* min = scale + n;
  attention::HalfToFloatArray(reinterpret_cast<const uint16_t*>(payload), scale, n);
  attention::HalfToFloatArray(reinterpret_cast<const uint16_t*>(payload) + n, min, n);
  const uint8_t* codes = payload + l.key_codes_at();
  for (uint32_t t = 0; t < l.tokens; ++t) {
    const size_t g = (t / l.key_group) * d;
    const uint8_t* row = codes + t * l.row_bytes();
    if (l.bits == 8) {
      DequantizeU8(row, scale + g, min + g, d, keys + t * d);
    } else {
      DequantizeU4(row, scale + g, min + g, d, keys + t * d);
    }
  }
}

void DecodeValues(const Layout& l, const uint8_t* payload, float* values, std::vector<float>* scratch) {
  const size_t d = l.head_dim, n = l.value_params(), groups = l.value_groups();
  scratch->resize(2 * n);
  float* scale = scratch->data();
  float* min = scale + n;
  const auto* halves = reinterpret_cast<const uint16_t*>(payload) + 2 * l.key_params();
  attention::HalfToFloatArray(halves, scale, n);
  attention::HalfToFloatArray(halves + n, min, n);
  const uint8_t* codes = payload + l.value_codes_at();
  for (uint32_t t = 0; t < l.tokens; ++t) {
    const uint8_t* row = codes + t * l.row_bytes();
    for (size_t gi = 0; gi < groups; ++gi) {
      const size_t c0 = gi * l.value_group;
      const size_t count = std::min<size_t>(l.value_group, d - c0);
      const size_t p = size_t{t} * groups + gi;
      float* out = values + t * d + c0;
      if (l.bits == 8) {
        DequantizeU8(row + c0, scale[p], min[p], count, out);
      } else {
        DequantizeU4(row + c0 / 2, scale[p], min[p], count, out);  // c0 is even (groups of 32)
      }
    }
  }
}

}  // namespace

bool Handles(Codec codec) { return codec == Codec::kInt8 || codec == Codec::kInt4; }

size_t PayloadBytes(Codec codec, uint32_t tokens, uint32_t head_dim) {
  return Layout(codec, tokens, head_dim).bytes();
}

Status Encode(Codec codec, const float* keys, const float* values, uint32_t tokens,
              uint32_t head_dim, uint8_t* out, float* keys_as_stored, const std::string& what) {
  const Layout l(codec, tokens, head_dim);
  const size_t d = head_dim;
  std::memset(out, 0, l.bytes());  // nibble packing ORs into zeroed bytes
  uint8_t* key_scales = out;
  uint8_t* key_mins = out + 2 * l.key_params();
  uint8_t* value_scales = out + 4 * l.key_params();
  uint8_t* value_mins = value_scales + 2 * l.value_params();
  uint8_t* key_codes = out + l.key_codes_at();
  uint8_t* value_codes = out + l.value_codes_at();
  const size_t row = l.row_bytes();
  auto set_code = [&](uint8_t* codes, size_t t, size_t c, uint8_t u) {
    if (l.bits == 8) {
      codes[t * row + c] = u;
    } else {
      codes[t * row + c / 2] |= static_cast<uint8_t>(u << ((c & 1) * 4));
    }
  };
  // Keys: per channel, groups along the tokens.
  for (size_t g = 0; g < l.key_groups(); ++g) {
    const size_t t0 = g * l.key_group;
    const size_t count = std::min<size_t>(l.key_group, tokens - t0);
    for (size_t c = 0; c < d; ++c) {
      MSA_RETURN_IF_ERROR(QuantizeGroup(
          keys + t0 * d + c, d, count, l.levels(), key_scales, key_mins, g * d + c,
          [&](size_t i, uint8_t u) { set_code(key_codes, t0 + i, c, u); }, what + " keys"));
    }
  }
  // Values: per token, groups along the channels.
  const size_t groups = l.value_groups();
  for (size_t t = 0; t < tokens; ++t) {
    for (size_t gi = 0; gi < groups; ++gi) {
      const size_t c0 = gi * l.value_group;
      const size_t count = std::min<size_t>(l.value_group, d - c0);
      MSA_RETURN_IF_ERROR(QuantizeGroup(
          values + t * d + c0, 1, count, l.levels(), value_scales, value_mins, t * groups + gi,
          [&](size_t i, uint8_t u) { set_code(value_codes, t, c0 + i, u); }, what + " values"));
    }
  }
  if (keys_as_stored) {
    std::vector<float> scratch;
    DecodeKeys(l, out, keys_as_stored, &scratch);
  }
  return Status::OK();
}

void Decode(Codec codec, const uint8_t* payload, uint32_t tokens, uint32_t head_dim, float* keys,
            float* values, std::vector<float>* scratch) {
  const Layout l(codec, tokens, head_dim);
  DecodeKeys(l, payload, keys, scratch);
  if (values) DecodeValues(l, payload, values, scratch);
}

}  // namespace msa::quantized
