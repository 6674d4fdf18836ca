#include "store/codec_quantized.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "attention/half.h"
#include "attention/int8_pages.h"
#include "store/dequantize.h"
#include "store/encode_kernel.h"

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

// A group's fp16 parameters from its range: min rounded down and scale up,
// so that min + levels * scale >= max and every element is within half a
// step of a code. Refuses NaN and what fp16 parameters cannot hold.
Status FitGroup(float lo, float hi, bool nan, uint32_t levels, uint16_t* scale16, uint16_t* min16,
                float* scale, float* min, const std::string& block, const char* part) {
  const auto what = [&] { return block + " " + part; };  // built only for an error
  constexpr float kHalfMax = 65504.0f;
  if (nan || !(lo >= -kHalfMax && hi <= kHalfMax)) {
    return Status::InvalidArgument(what() + ": a value outside fp16's range or not finite (min " +
                                   std::to_string(lo) + ", max " + std::to_string(hi) +
                                   "); the quantised codecs need |x| <= 65504, bf16 stores it");
  }
  *min16 = HalfAtMost(lo);
  *min = attention::HalfToFloat(*min16);
  *scale16 = HalfAtLeast((hi - *min) / static_cast<float>(levels));
  *scale = attention::HalfToFloat(*scale16);
  // min + levels * scale must reach hi despite float rounding of the product.
  while (std::fma(*scale, static_cast<float>(levels), *min) < hi) {
    *scale16 = NextUp(*scale16);
    *scale = attention::HalfToFloat(*scale16);
  }
  if (!std::isfinite(*scale)) {
    return Status::InvalidArgument(what() + ": range " + std::to_string(lo) + " .. " +
                                   std::to_string(hi) + " is too wide for an fp16 scale");
  }
  return Status::OK();
}

// One row of codes (n of them) into its packed form.
void PackRow(const uint8_t* codes, size_t n, uint32_t bits, uint8_t* out) {
  if (bits == 8) {
    std::memcpy(out, codes, n);
    return;
  }
  for (size_t c = 0; c + 1 < n; c += 2) out[c / 2] = static_cast<uint8_t>(codes[c] | (codes[c + 1] << 4));
  if (n % 2) out[n / 2] = codes[n - 1];
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
  const size_t d = head_dim, row = l.row_bytes();
  const float levels = static_cast<float>(l.levels());
  uint16_t* key_scales = reinterpret_cast<uint16_t*>(out);
  uint16_t* key_mins = key_scales + l.key_params();
  uint16_t* value_scales = key_mins + l.key_params();
  uint16_t* value_mins = value_scales + l.value_params();
  uint8_t* key_codes = out + l.key_codes_at();
  uint8_t* value_codes = out + l.value_codes_at();
  // Row-wise passes (contiguous, vectorised: store/encode_kernel.h) rather
  // than a strided walk down each key channel.
  std::vector<float> lo(d), hi(d), min(d), inv(d), scale(d);
  std::vector<uint8_t> codes(d);
  // int8 codes are their packed form: written in place.
  auto codes_for = [&](uint8_t* packed) { return l.bits == 8 ? packed : codes.data(); };
  // Keys: per channel, groups along the tokens.
  for (size_t g = 0; g < l.key_groups(); ++g) {
    const size_t t0 = g * l.key_group, t1 = std::min<size_t>(tokens, t0 + l.key_group);
    std::fill(lo.begin(), lo.end(), std::numeric_limits<float>::infinity());
    std::fill(hi.begin(), hi.end(), -std::numeric_limits<float>::infinity());
    const bool nan = ColumnRange(keys + t0 * d, t1 - t0, d, lo.data(), hi.data());
    for (size_t c = 0; c < d; ++c) {
      MSA_RETURN_IF_ERROR(FitGroup(lo[c], hi[c], nan, l.levels(), &key_scales[g * d + c],
                                   &key_mins[g * d + c], &scale[c], &min[c], what, "keys"));
      inv[c] = scale[c] > 0 ? 1.0f / scale[c] : 0.0f;
    }
    for (size_t t = t0; t < t1; ++t) {
      uint8_t* c = codes_for(key_codes + t * row);
      QuantizeCodes(keys + t * d, min.data(), inv.data(), levels, d, c);
      if (l.bits != 8) PackRow(c, d, l.bits, key_codes + t * row);
    }
  }
  // Values: per token, groups along the channels.
  const size_t groups = l.value_groups();
  for (size_t t = 0; t < tokens; ++t) {
    const float* x = values + t * d;
    uint8_t* c = codes_for(value_codes + t * row);
    for (size_t gi = 0; gi < groups; ++gi) {
      const size_t c0 = gi * l.value_group, c1 = std::min<size_t>(d, c0 + l.value_group);
      float glo, ghi;
      const bool nan = RowRange(x + c0, c1 - c0, &glo, &ghi);
      float gscale, gmin;
      MSA_RETURN_IF_ERROR(FitGroup(glo, ghi, nan, l.levels(), &value_scales[t * groups + gi],
                                   &value_mins[t * groups + gi], &gscale, &gmin, what, "values"));
      const float ginv = gscale > 0 ? 1.0f / gscale : 0.0f;
      QuantizeCodes(x + c0, gmin, ginv, levels, c1 - c0, c + c0);
    }
    if (l.bits != 8) PackRow(c, d, l.bits, value_codes + t * row);
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

void Int8PayloadToPages(const uint8_t* payload, uint32_t tokens, uint32_t head_dim, uint32_t block_tokens,
                        uint8_t* key_page, uint8_t* value_page) {
  const Layout l(Codec::kInt8, tokens, head_dim);
  const attention::Int8PageLayout pages = attention::Int8Pages(block_tokens, head_dim);
  const size_t d = head_dim, t = tokens;
  // Key scales and mins ([1, d] each) are adjacent in both layouts.
  std::memcpy(key_page, payload, 4 * d);
  std::memcpy(key_page + pages.code_offset, payload + l.key_codes_at(), t * d);
  // Value scales then mins: [t] each in the payload, [block_tokens] in the page.
  std::memcpy(value_page, payload + 4 * d, 2 * t);
  std::memcpy(value_page + 2 * size_t{block_tokens}, payload + 4 * d + 2 * t, 2 * t);
  std::memcpy(value_page + pages.code_offset, payload + l.value_codes_at(), t * d);
}

}  // namespace msa::quantized
