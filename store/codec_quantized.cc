#include "store/codec_quantized.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "attention/dequantize.h"
#include "attention/half.h"
#include "attention/quantized_pages.h"
#include "store/encode_kernel.h"

namespace msa::quantized {

namespace {

constexpr uint32_t kGroup = attention::kInt4Group;  // int4's group, in tokens (keys) or channels (values)

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

// Groups' fp16 parameters from their ranges (FitRanges, store/encode_kernel.h:
// min rounded down and scale up, so that min + levels * scale >= max and
// every element is within half a step of a code), or the error naming the
// first group that fp16 parameters cannot hold (or whose elements hold a NaN:
// `nan` says whether any does, nan_of, if given, which).
Status FitGroups(const float* lo, const float* hi, size_t n, bool nan, const uint8_t* nan_of, uint32_t levels,
                 uint16_t* scale16, uint16_t* min16, float* scale, float* min, const std::string& block,
                 const char* part) {
  if (!nan && FitRanges(lo, hi, n, levels, scale16, min16, scale, min)) return Status::OK();
  constexpr float kHalfMax = 65504.0f;
  for (size_t i = 0; i < n; ++i) {
    if ((nan_of ? nan_of[i] != 0 : nan) || !(lo[i] >= -kHalfMax && hi[i] <= kHalfMax)) {
      return Status::InvalidArgument(block + " " + part + ": a value outside fp16's range or not finite (min " +
                                     std::to_string(lo[i]) + ", max " + std::to_string(hi[i]) +
                                     "); the quantised codecs need |x| <= 65504, bf16 stores it");
    }
    if (!FitRanges(lo + i, hi + i, 1, levels, scale16 + i, min16 + i, scale + i, min + i, KernelIsa::kPortable)) {
      return Status::InvalidArgument(block + " " + part + ": range " + std::to_string(lo[i]) + " .. " +
                                     std::to_string(hi[i]) + " is too wide for an fp16 scale");
    }
  }
  return Status::Internal(block + " " + part + ": FitRanges refused a group the scalar check accepts");
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
      attention::DequantizeU8(row, scale + g, min + g, d, keys + t * d);
    } else {
      attention::DequantizeU4(row, scale + g, min + g, d, keys + t * d);
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
        attention::DequantizeU8(row + c0, scale[p], min[p], count, out);
      } else {
        attention::DequantizeU4(row + c0 / 2, scale[p], min[p], count, out);  // c0 is even (groups of 32)
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
    MSA_RETURN_IF_ERROR(FitGroups(lo.data(), hi.data(), d, nan, nullptr, l.levels(), &key_scales[g * d],
                                  &key_mins[g * d], scale.data(), min.data(), what, "keys"));
    for (size_t c = 0; c < d; ++c) inv[c] = scale[c] > 0 ? 1.0f / scale[c] : 0.0f;
    for (size_t t = t0; t < t1; ++t) {
      uint8_t* c = codes_for(key_codes + t * row);
      QuantizeCodes(keys + t * d, min.data(), inv.data(), levels, d, c);
      if (l.bits != 8) PackRow(c, d, l.bits, key_codes + t * row);
    }
  }
  // Values: per token, groups along the channels; every group's range
  // first, so that their parameters are fitted in one vector pass.
  const size_t groups = l.value_groups(), n_groups = size_t{tokens} * groups;
  std::vector<float> glo(n_groups), ghi(n_groups), gscale(n_groups), gmin(n_groups);
  std::vector<uint8_t> gnan(n_groups);
  bool nan = false;
  for (size_t t = 0; t < tokens; ++t) {
    for (size_t gi = 0; gi < groups; ++gi) {
      const size_t c0 = gi * l.value_group, c1 = std::min<size_t>(d, c0 + l.value_group);
      gnan[t * groups + gi] = RowRange(values + t * d + c0, c1 - c0, &glo[t * groups + gi], &ghi[t * groups + gi]);
      nan |= gnan[t * groups + gi] != 0;
    }
  }
  MSA_RETURN_IF_ERROR(FitGroups(glo.data(), ghi.data(), n_groups, nan, gnan.data(), l.levels(), value_scales,
                                value_mins, gscale.data(), gmin.data(), what, "values"));
  for (size_t t = 0; t < tokens; ++t) {
    const float* x = values + t * d;
    uint8_t* c = codes_for(value_codes + t * row);
    for (size_t gi = 0; gi < groups; ++gi) {
      const size_t c0 = gi * l.value_group, c1 = std::min<size_t>(d, c0 + l.value_group);
      const float s = gscale[t * groups + gi];
      QuantizeCodes(x + c0, gmin[t * groups + gi], s > 0 ? 1.0f / s : 0.0f, levels, c1 - c0, c + c0);
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

attention::QuantizedBlockTable TableShape(Codec codec, uint32_t block_tokens, uint32_t head_dim) {
  const Layout l(codec, block_tokens, head_dim);  // int8: one key group per block, one value group per token
  attention::QuantizedBlockTable table;
  table.bits = static_cast<int>(l.bits);
  table.key_group = static_cast<int>(l.key_group);
  table.value_group = static_cast<int>(l.value_group);
  return table;
}

attention::QuantizedBlock View(Codec codec, const uint8_t* payload, uint32_t tokens, uint32_t head_dim) {
  const Layout l(codec, tokens, head_dim);
  const auto* halves = reinterpret_cast<const uint16_t*>(payload);
  attention::QuantizedBlock block;
  block.len = static_cast<int32_t>(tokens);
  block.key_scale = halves;
  block.key_min = halves + l.key_params();
  block.value_scale = halves + 2 * l.key_params();
  block.value_min = halves + 2 * l.key_params() + l.value_params();
  block.key_codes = payload + l.key_codes_at();
  block.value_codes = payload + l.value_codes_at();
  return block;
}

void PayloadToPages(Codec codec, const uint8_t* payload, uint32_t tokens, uint32_t head_dim, uint32_t block_tokens,
                    uint8_t* key_page, uint8_t* value_page) {
  const Layout l(codec, tokens, head_dim);
  const attention::QuantizedPageLayout pages = attention::QuantizedPages(static_cast<int>(l.bits), block_tokens,
                                                                         head_dim);
  // Key scales then mins: [key groups of this block][d] each in the
  // payload, [the page's key_groups][d] in the page.
  const size_t key_params = 2 * l.key_params();  // bytes of each array
  std::memcpy(key_page, payload, key_params);
  std::memcpy(key_page + 2 * size_t{pages.key_groups} * head_dim, payload + key_params, key_params);
  // Value scales then mins: [tokens][value groups] each in the payload,
  // [block_tokens][value groups] in the page.
  const uint8_t* value_params = payload + 2 * key_params;
  const size_t value_bytes = 2 * l.value_params();
  std::memcpy(value_page, value_params, value_bytes);
  std::memcpy(value_page + 2 * size_t{block_tokens} * pages.value_groups, value_params + value_bytes, value_bytes);
  const size_t code_bytes = size_t{tokens} * l.row_bytes();
  std::memcpy(key_page + pages.code_offset, payload + l.key_codes_at(), code_bytes);
  std::memcpy(value_page + pages.code_offset, payload + l.value_codes_at(), code_bytes);
}

}  // namespace msa::quantized
