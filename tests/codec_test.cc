// Block codecs (store/codec.h, store/codec_quantized.h): lossless round
// trips, the quantised codecs' per-element error bound at odd shapes and
// with outlier channels, the vectorised dequantisation against its formula,
// refusals of input a codec cannot hold, and damaged records.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <tuple>
#include <vector>

#include "attention/dequantize.h"
#include "attention/half.h"
#include "attention/quantized_pages.h"
#include "store/codec.h"
#include "store/codec_quantized.h"
#include "store/store.h"
#include "tests/test_util.h"

namespace msa {
namespace {

using testing::RandomVector;
using testing::TempDir;

constexpr Codec kAllCodecs[] = {Codec::kF16ShuffleZstd, Codec::kBF16ShuffleZstd, Codec::kInt8,
                                Codec::kInt4};

// K/V like a model's: Gaussian, a few key channels 20x larger (outliers
// live in channels), a per-token offset on the values.
void ModelLikeKv(uint32_t tokens, uint32_t d, uint64_t seed, std::vector<float>* k,
                 std::vector<float>* v) {
  *k = RandomVector(size_t{tokens} * d, seed);
  *v = RandomVector(size_t{tokens} * d, seed + 1);
  for (uint32_t t = 0; t < tokens; ++t) {
    for (uint32_t c = 0; c < d; c += 7) (*k)[size_t{t} * d + c] *= 20.0f;
    for (uint32_t c = 0; c < d; ++c) (*v)[size_t{t} * d + c] += 0.5f * static_cast<float>(t % 5);
  }
}

struct Decoded {
  Status status;
  std::vector<float> keys, values;
};

Decoded RoundTrip(Codec codec, uint32_t tokens, uint32_t d, const std::vector<float>& k,
                  const std::vector<float>& v, std::vector<float>* keys_as_stored = nullptr) {
  const BlockId id{2, 1, 9};
  BlockEncoder encoder;
  BlockRecordHeader h;
  if (keys_as_stored) keys_as_stored->assign(k.size(), NAN);
  auto record = encoder.Encode(codec, id, tokens, d, k.data(), v.data(), &h,
                               keys_as_stored ? keys_as_stored->data() : nullptr);
  Decoded out;
  if (!record.ok()) {
    out.status = record.status();
    return out;
  }
  EXPECT_EQ(h.codec, codec);
  if (quantized::Handles(codec)) {
    EXPECT_EQ(h.payload_bytes, FixedPayloadBytes(codec, tokens, d));
  }
  out.keys.assign(k.size(), NAN);
  out.values.assign(v.size(), NAN);
  BlockDecoder decoder;
  out.status = decoder.Decode(*record, id, h.checksum, tokens, d, out.keys.data(), out.values.data());
  return out;
}

// The bound of store/codec_quantized.h for one group: half a step, the step
// being the range over the levels, widened by the fp16 rounding of min
// (down) and of the scale (up), plus float32 rounding of the decode.
double QuantBound(const std::vector<double>& group, uint32_t levels) {
  const double lo = *std::min_element(group.begin(), group.end());
  const double hi = *std::max_element(group.begin(), group.end());
  const double min_rounding = std::abs(lo) / 1024.0 + 6e-8;
  const double step = (hi - lo + min_rounding) / levels * (1.0 + 1.0 / 512) + 6e-8;
  return 0.5 * step + 4e-7 * std::max(std::abs(lo), std::abs(hi));
}

// Checks every element of the quantised decode against its group's bound.
void ExpectWithinQuantBound(Codec codec, uint32_t tokens, uint32_t d, const std::vector<float>& k,
                            const std::vector<float>& v, const Decoded& got) {
  const uint32_t levels = codec == Codec::kInt8 ? 255 : 15;
  const uint32_t key_group = codec == Codec::kInt8 ? tokens : 32;
  const uint32_t value_group = codec == Codec::kInt8 ? d : 32;
  size_t worst_keys = 0, worst_values = 0;
  for (uint32_t t0 = 0; t0 < tokens; t0 += key_group) {
    const uint32_t t1 = std::min(tokens, t0 + key_group);
    for (uint32_t c = 0; c < d; ++c) {
      std::vector<double> group;
      for (uint32_t t = t0; t < t1; ++t) group.push_back(k[size_t{t} * d + c]);
      const double bound = QuantBound(group, levels);
      for (uint32_t t = t0; t < t1; ++t) {
        const size_t i = size_t{t} * d + c;
        if (!(std::abs(got.keys[i] - k[i]) <= bound)) ++worst_keys;
      }
    }
  }
  for (uint32_t t = 0; t < tokens; ++t) {
    for (uint32_t c0 = 0; c0 < d; c0 += value_group) {
      const uint32_t c1 = std::min(d, c0 + value_group);
      std::vector<double> group(v.begin() + size_t{t} * d + c0, v.begin() + size_t{t} * d + c1);
      const double bound = QuantBound(group, levels);
      for (uint32_t c = c0; c < c1; ++c) {
        const size_t i = size_t{t} * d + c;
        if (!(std::abs(got.values[i] - v[i]) <= bound)) ++worst_values;
      }
    }
  }
  EXPECT_EQ(worst_keys, 0u) << CodecName(codec) << " keys over the bound, " << tokens << "x" << d;
  EXPECT_EQ(worst_values, 0u) << CodecName(codec) << " values over the bound, " << tokens << "x" << d;
}

// The checksum of bytes in parts is the checksum of them whole, wherever
// the cuts fall (inside XXH3's 64-byte stripes and across its 1 KiB blocks).
TEST(CodecTest, ChecksumInPartsIsTheChecksumOfTheWhole) {
  std::vector<uint8_t> bytes(5000);
  for (size_t i = 0; i < bytes.size(); ++i) bytes[i] = static_cast<uint8_t>(i * 131 + 7);
  for (size_t part : {size_t{1}, size_t{63}, size_t{1024}, size_t{4999}, size_t{5000}}) {
    ChecksumStream stream;
    for (size_t at = 0; at < bytes.size(); at += part) stream.Update(bytes.data() + at, std::min(part, bytes.size() - at));
    EXPECT_EQ(stream.Digest(), Checksum(bytes.data(), bytes.size())) << part;
  }
  const uint64_t before = Checksum(bytes.data(), bytes.size());
  bytes[4000] ^= 1;
  ChecksumStream stream;
  stream.Update(bytes.data(), bytes.size());
  EXPECT_NE(stream.Digest(), before);
}

TEST(CodecTest, NamesParseBack) {
  for (Codec c : kAllCodecs) {
    auto parsed = ParseCodec(CodecName(c));
    ASSERT_TRUE(parsed.ok()) << CodecName(c);
    EXPECT_EQ(*parsed, c);
  }
  auto bad = ParseCodec("int3");
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("int4"), std::string::npos) << "lists the codecs";
}

TEST(CodecTest, SixteenBitCodecsAreLosslessForTheirOwnDtype) {
  const uint32_t tokens = 37, d = 24;
  std::vector<float> k, v;
  ModelLikeKv(tokens, d, 11, &k, &v);
  // Make every value representable in fp16 and in bf16 (8 significant bits):
  // multiples of 1/4 below 32 in magnitude.
  for (auto* a : {&k, &v}) {
    for (float& x : *a) x = std::ldexp(std::round(std::ldexp(std::clamp(x, -31.0f, 31.0f), 2)), -2);
  }
  for (Codec codec : {Codec::kF16ShuffleZstd, Codec::kBF16ShuffleZstd}) {
    Decoded got = RoundTrip(codec, tokens, d, k, v);
    ASSERT_TRUE(got.status.ok()) << got.status.ToString();
    EXPECT_EQ(0, std::memcmp(got.keys.data(), k.data(), k.size() * 4)) << CodecName(codec);
    EXPECT_EQ(0, std::memcmp(got.values.data(), v.data(), v.size() * 4)) << CodecName(codec);
  }
}

TEST(CodecTest, SixteenBitCodecsStoreIncompressibleBlocksPlain) {
  // Full-entropy fp16 values: zstd cannot save a page, so the record holds
  // them plain (payload exactly 4 * n bytes), and they read back bit-exact.
  const uint32_t tokens = 64, d = 32;
  std::mt19937 rng(3);
  std::vector<float> k(tokens * d), v(tokens * d);
  for (auto* a : {&k, &v}) {
    for (float& x : *a) {
      uint16_t h;
      do h = static_cast<uint16_t>(rng()); while ((h & 0x7c00) == 0x7c00);  // finite
      x = attention::HalfToFloat(h);
    }
  }
  BlockEncoder encoder;
  BlockRecordHeader h;
  auto record = encoder.Encode(Codec::kF16ShuffleZstd, {0, 0, 0}, tokens, d, k.data(), v.data(), &h);
  ASSERT_TRUE(record.ok());
  EXPECT_EQ(h.payload_bytes, 4u * tokens * d);
  Decoded got = RoundTrip(Codec::kF16ShuffleZstd, tokens, d, k, v);
  ASSERT_TRUE(got.status.ok()) << got.status.ToString();
  EXPECT_EQ(0, std::memcmp(got.keys.data(), k.data(), k.size() * 4));
  EXPECT_EQ(0, std::memcmp(got.values.data(), v.data(), v.size() * 4));
}

TEST(CodecTest, SixteenBitCodecsRoundToNearest) {
  const uint32_t tokens = 5, d = 16;
  std::vector<float> k = RandomVector(tokens * d, 3, 100.0f), v = RandomVector(tokens * d, 4);
  for (Codec codec : {Codec::kF16ShuffleZstd, Codec::kBF16ShuffleZstd}) {
    const double rel = codec == Codec::kF16ShuffleZstd ? std::ldexp(1.0, -11) : std::ldexp(1.0, -8);
    Decoded got = RoundTrip(codec, tokens, d, k, v);
    ASSERT_TRUE(got.status.ok());
    for (size_t i = 0; i < k.size(); ++i) {
      EXPECT_LE(std::abs(got.keys[i] - k[i]), rel * std::abs(k[i]) + 1e-7) << CodecName(codec);
      EXPECT_LE(std::abs(got.values[i] - v[i]), rel * std::abs(v[i]) + 1e-7) << CodecName(codec);
    }
  }
  // bf16 keeps float32's range; fp16 cannot.
  std::vector<float> big(4, 1e20f);
  Decoded got = RoundTrip(Codec::kBF16ShuffleZstd, 1, 4, big, big);
  ASSERT_TRUE(got.status.ok());
  EXPECT_NEAR(got.keys[0], 1e20, 1e20 * std::ldexp(1.0, -8));
}

TEST(CodecTest, QuantisedCodecsStayWithinTheirBoundAtOddShapes) {
  for (Codec codec : {Codec::kInt8, Codec::kInt4}) {
    for (uint32_t tokens : {1u, 2u, 31u, 33u, 64u}) {
      for (uint32_t d : {1u, 3u, 32u, 33u, 64u, 128u}) {
        std::vector<float> k, v;
        ModelLikeKv(tokens, d, 100 + tokens * 7 + d, &k, &v);
        std::vector<float> keys_as_stored;
        Decoded got = RoundTrip(codec, tokens, d, k, v, &keys_as_stored);
        ASSERT_TRUE(got.status.ok()) << got.status.ToString();
        ExpectWithinQuantBound(codec, tokens, d, k, v, got);
        // The router summarises exactly what attention will read.
        EXPECT_EQ(0, std::memcmp(keys_as_stored.data(), got.keys.data(), k.size() * 4))
            << CodecName(codec) << " " << tokens << "x" << d;
      }
    }
  }
}

TEST(CodecTest, QuantisedCodecsHandleConstantAndTinyRanges) {
  for (Codec codec : {Codec::kInt8, Codec::kInt4}) {
    const uint32_t tokens = 40, d = 40;
    std::vector<float> k(tokens * d, 3.14159f), v(tokens * d, -2.5e-6f);
    v[7] = -2.5e-6f + 1e-9f;
    Decoded got = RoundTrip(codec, tokens, d, k, v);
    ASSERT_TRUE(got.status.ok());
    ExpectWithinQuantBound(codec, tokens, d, k, v, got);
  }
}

TEST(CodecTest, QuantisedPayloadsAreAsSmallAsDocumented) {
  // 64 x 128: int8 = 2 * 8192 codes + fp16 params; int4 = half the codes,
  // params per 32. Against 32 KiB of fp16.
  const double raw = 64.0 * 128 * 2 * 2;
  EXPECT_NEAR(raw / FixedPayloadBytes(Codec::kInt8, 64, 128), 1.91, 0.01);
  EXPECT_NEAR(raw / FixedPayloadBytes(Codec::kInt4, 64, 128), 3.2, 0.01);
  EXPECT_EQ(FixedPayloadBytes(Codec::kF16ShuffleZstd, 64, 128), 0u) << "data-dependent size";
}

TEST(CodecTest, QuantisedCodecsRefuseWhatFp16ParametersCannotHold) {
  for (Codec codec : {Codec::kInt8, Codec::kInt4}) {
    for (float bad : {std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity(),
                      1e6f}) {
      std::vector<float> k(4 * 8, 1.0f), v(4 * 8, 1.0f);
      v[13] = bad;
      Decoded got = RoundTrip(codec, 4, 8, k, v);
      ASSERT_FALSE(got.status.ok()) << CodecName(codec) << " took " << bad;
      EXPECT_EQ(got.status.code(), Status::Code::kInvalidArgument);
      EXPECT_NE(got.status.message().find("layer 2 kv-head 1 block 9 values"), std::string::npos)
          << got.status.message();
    }
  }
}

TEST(CodecTest, DamagedQuantisedRecordsAreCorruption) {
  const uint32_t tokens = 8, d = 16;
  std::vector<float> k, v;
  ModelLikeKv(tokens, d, 5, &k, &v);
  const BlockId id{0, 0, 3};
  for (Codec codec : {Codec::kInt8, Codec::kInt4}) {
    BlockEncoder encoder;
    BlockRecordHeader h;
    auto record = encoder.Encode(codec, id, tokens, d, k.data(), v.data(), &h);
    ASSERT_TRUE(record.ok());
    std::vector<uint8_t> bytes(record->begin(), record->end());
    std::vector<float> keys(k.size()), values(v.size());
    BlockDecoder decoder;
    // A flipped code byte: the checksum catches it.
    std::vector<uint8_t> flipped = bytes;
    flipped.back() ^= 0x10;
    Status s = decoder.Decode(flipped, id, h.checksum, tokens, d, keys.data(), values.data());
    EXPECT_EQ(s.code(), Status::Code::kCorruption) << s.ToString();
    // A payload length that is not the codec's (header and checksum made to
    // agree, as a bug in a writer would): refused before any decoding.
    std::vector<uint8_t> shorter(bytes.begin(), bytes.end() - 2);
    const uint32_t payload = static_cast<uint32_t>(shorter.size() - kBlockRecordHeaderSize);
    std::memcpy(shorter.data() + 32, &payload, 4);
    const uint64_t sum = Checksum(shorter.data() + kBlockRecordHeaderSize, payload);
    std::memcpy(shorter.data() + 40, &sum, 8);
    s = decoder.Decode(shorter, id, sum, tokens, d, keys.data(), values.data());
    EXPECT_EQ(s.code(), Status::Code::kCorruption);
    EXPECT_NE(s.message().find("expected"), std::string::npos) << s.message();
    // An unknown codec byte.
    std::vector<uint8_t> unknown = bytes;
    unknown[6] = 9;
    s = decoder.Decode(unknown, id, h.checksum, tokens, d, keys.data(), values.data());
    EXPECT_EQ(s.code(), Status::Code::kCorruption);
    EXPECT_NE(s.message().find("codec 9"), std::string::npos) << s.message();
    // The checks without the decoding: the sound record passes, the damaged
    // ones fail the same way.
    EXPECT_TRUE(decoder.Verify(bytes, id, h.checksum, tokens, d).ok());
    EXPECT_EQ(decoder.Verify(flipped, id, h.checksum, tokens, d).code(), Status::Code::kCorruption);
    EXPECT_EQ(decoder.Verify(shorter, id, sum, tokens, d).code(), Status::Code::kCorruption);
    EXPECT_EQ(decoder.Verify(bytes, BlockId{0, 0, 4}, h.checksum, tokens, d).code(), Status::Code::kCorruption);
  }
}

TEST(DequantizeTest, VectorLoopsMatchTheFormulaAtEveryLength) {
  std::mt19937 rng(7);
  std::uniform_int_distribution<int> byte(0, 255);
  for (size_t n = 0; n <= 70; ++n) {
    std::vector<uint8_t> codes(n + 1), packed(n / 2 + 1);
    for (auto& c : codes) c = static_cast<uint8_t>(byte(rng));
    for (auto& c : packed) c = static_cast<uint8_t>(byte(rng));
    std::vector<float> scale = RandomVector(n + 1, n), min = RandomVector(n + 1, n + 99);
    std::vector<float> out(n + 1, 1234.0f);
    attention::DequantizeU8(codes.data(), scale.data(), min.data(), n, out.data());
    for (size_t i = 0; i < n; ++i) {
      EXPECT_FLOAT_EQ(out[i], std::fma(scale[i], static_cast<float>(codes[i]), min[i])) << n << " " << i;
    }
    EXPECT_EQ(out[n], 1234.0f) << "wrote past n = " << n;
    attention::DequantizeU8(codes.data(), 0.5f, -3.0f, n, out.data());
    for (size_t i = 0; i < n; ++i) EXPECT_EQ(out[i], -3.0f + 0.5f * codes[i]);
    attention::DequantizeU4(packed.data(), scale.data(), min.data(), n, out.data());
    for (size_t i = 0; i < n; ++i) {
      const float code = static_cast<float>((packed[i / 2] >> (4 * (i % 2))) & 15);
      EXPECT_FLOAT_EQ(out[i], std::fma(scale[i], code, min[i])) << n << " " << i;
    }
    EXPECT_EQ(out[n], 1234.0f) << "wrote past n = " << n;
    attention::DequantizeU4(packed.data(), 0.25f, 1.0f, n, out.data());
    for (size_t i = 0; i < n; ++i) {
      EXPECT_EQ(out[i], 1.0f + 0.25f * ((packed[i / 2] >> (4 * (i % 2))) & 15));
    }
  }
  SUCCEED() << "ran the " << attention::DequantizeIsa() << " loops";
}

// A store of `codec` holding one committed document (k, v: [layers *
// kv_heads * tokens, d]), reopened: what a later session reads.
Result<std::unique_ptr<Store>> OneDocumentStore(const std::string& path, Codec codec, uint32_t layers,
                                                uint32_t kv_heads, uint32_t d, const std::vector<float>& k,
                                                const std::vector<float>& v, uint32_t tokens) {
  Geometry g;
  g.layers = layers;
  g.kv_heads = kv_heads;
  g.head_dim = d;
  g.codec = codec;
  {
    MSA_ASSIGN_OR_RETURN(std::unique_ptr<Store> store, Store::Create(path, g));
    MSA_RETURN_IF_ERROR(store->AppendDocument("doc", {k.data(), v.data(), tokens}).status());
    MSA_RETURN_IF_ERROR(store->Commit());
  }
  return Store::Open(path);
}

// Through the store: every codec ingests, survives a reopen, reads back
// within its bound, attends close to the float64 reference, and reports its
// bytes per stream.
TEST(CodecStoreTest, EveryCodecIngestsReopensAndAttends) {
  const uint32_t layers = 1, kv_heads = 2, d = 64, tokens = 300;
  std::vector<float> k, v;
  ModelLikeKv(kv_heads * tokens, d, 21, &k, &v);
  for (Codec codec : kAllCodecs) {
    TempDir dir;
    auto store = OneDocumentStore(dir.Sub("s"), codec, layers, kv_heads, d, k, v, tokens);
    ASSERT_TRUE(store.ok()) << store.status().ToString();
    EXPECT_EQ((*store)->geometry().codec, codec);
    const StoreStats stats = (*store)->Stats();
    ASSERT_EQ(stats.streams.size(), 2u);
    for (const StreamBytes& b : stats.streams) {
      EXPECT_EQ(b.raw_bytes, uint64_t{tokens} * d * 4);
      EXPECT_GT(b.stored_bytes, 0u);
      EXPECT_GE(b.segment_bytes, b.stored_bytes);
    }
    if (codec == Codec::kInt4) {
      EXPECT_GT(static_cast<double>(stats.raw_bytes) / stats.stored_bytes, 3.0);
    }
    for (uint32_t head = 0; head < kv_heads; ++head) {
      std::vector<float> keys, values;
      ASSERT_TRUE((*store)->ReadStream(0, head, &keys, &values).ok());
      ASSERT_EQ(keys.size(), size_t{tokens} * d);
      const std::vector<float> k_in(k.begin() + head * tokens * d, k.begin() + (head + 1) * tokens * d);
      const std::vector<float> v_in(v.begin() + head * tokens * d, v.begin() + (head + 1) * tokens * d);
      if (quantized::Handles(codec)) {
        // The store cuts the stream into blocks of 64: check per block.
        for (uint32_t t0 = 0; t0 < tokens; t0 += 64) {
          const uint32_t n = std::min(64u, tokens - t0);
          auto slice = [&](const std::vector<float>& a) {
            return std::vector<float>(a.begin() + t0 * d, a.begin() + (t0 + n) * d);
          };
          Decoded got{Status::OK(), slice(keys), slice(values)};
          ExpectWithinQuantBound(codec, n, d, slice(k_in), slice(v_in), got);
        }
      }
      // Exact attention against float64 over the input: the codec's error
      // shows here; int4 is the loosest.
      std::vector<float> q = RandomVector(2 * d, 40 + head, 0.3f);
      std::vector<float> q_all(2 * kv_heads * d, 0.0f);
      std::copy(q.begin(), q.begin() + d, q_all.begin() + head * d);
      std::vector<float> out(2 * kv_heads * d);
      AttendOptions options;
      options.exact = true;
      ASSERT_TRUE((*store)->Attend(0, q_all.data(), 1, kv_heads, options, out.data(), nullptr).ok());
      std::vector<double> ref(d);
      double lse;
      testing::DenseReference(q_all.data() + head * d, k_in.data(), v_in.data(), tokens, d,
                              ref.data(), &lse);
      double err = 0, norm = 0;
      for (uint32_t c = 0; c < d; ++c) {
        err += std::pow(out[head * d + c] - ref[c], 2);
        norm += ref[c] * ref[c];
      }
      const double rel = std::sqrt(err / norm);
      const double allowed = codec == Codec::kInt4 ? 0.08 : codec == Codec::kInt8 ? 0.01 : 0.005;
      EXPECT_LT(rel, allowed) << CodecName(codec) << " head " << head;
    }
  }
}

// A quantised store attends over its blocks' codes (the cache keeps the
// records, the CPU attention dequantises inside its loop) or, when rows share
// blocks, over the blocks decoded once: either way the result is attention
// over the blocks as the decoder returns them, up to float32 rounding, read
// from disk (exact mode, routed cold) or from the cache (routed warm). Head
// dim 72: int4's last value group is short.
TEST(CodecStoreTest, QuantisedStoresAttendOverTheirCodesAsOverTheDecodedBlocks) {
  const uint32_t kv_heads = 2, q_heads = 4, d = 72, tokens = 300;
  std::vector<float> k, v;
  ModelLikeKv(kv_heads * tokens, d, 23, &k, &v);
  for (Codec codec : {Codec::kInt8, Codec::kInt4}) {
    SCOPED_TRACE(CodecName(codec));
    TempDir dir;
    auto store = OneDocumentStore(dir.Sub("s"), codec, 1, kv_heads, d, k, v, tokens);
    ASSERT_TRUE(store.ok()) << store.status().ToString();
    std::vector<std::vector<float>> keys(kv_heads), values(kv_heads);
    for (uint32_t head = 0; head < kv_heads; ++head) {
      ASSERT_TRUE((*store)->ReadStream(0, head, &keys[head], &values[head]).ok());
    }
    // Two query rows: alone, each attends its blocks once (over the codes);
    // together, both attend every block (decoded once into float slots).
    constexpr uint32_t kRows = 2;
    const std::vector<float> q = RandomVector(size_t{kRows} * q_heads * d, 60, 0.5f);
    std::vector<double> ref(size_t{kRows} * q_heads * d), ref_lse(size_t{kRows} * q_heads);
    for (uint32_t h = 0; h < kRows * q_heads; ++h) {
      const uint32_t head = h % q_heads / (q_heads / kv_heads);
      testing::DenseReference(q.data() + h * d, keys[head].data(), values[head].data(), tokens, d,
                              ref.data() + h * d, &ref_lse[h]);
    }
    AttendOptions exact;
    exact.exact = true;
    AttendOptions routed;
    routed.top_k = 64;  // every block
    routed.gpu = GpuMode::kOff;
    exact.gpu = GpuMode::kOff;
    for (const uint32_t rows : {1u, kRows}) {
      for (const auto& [options, what] :
           {std::pair{exact, "exact"}, {routed, "routed, uncached"}, {routed, "routed, cold"}, {routed, "routed, warm"}}) {
        SCOPED_TRACE(::testing::Message() << rows << " rows, " << what);
        std::vector<float> out(size_t{rows} * q_heads * d), lse(size_t{rows} * q_heads);
        AttendStats stats;
        AttendOptions o = options;
        // Uncached: one row's blocks attended where the read left them (borrowed
        // staging bytes); rows 2: cold first, from the disk.
        o.use_cache = std::string(what) != "routed, uncached" && (rows == 1 || std::string(what) == "routed, warm");
        ASSERT_TRUE((*store)->Attend(0, q.data(), rows, q_heads, o, out.data(), lse.data(), &stats).ok());
        if (std::string(what) == "routed, warm") {
          EXPECT_GT(stats.cache_hits, 0u);
          EXPECT_EQ(stats.blocks_read, 0u);
        }
        for (size_t i = 0; i < out.size(); ++i) {
          ASSERT_NEAR(out[i], ref[i], 2e-5 * std::max(1.0, std::fabs(ref[i]))) << i;
        }
        for (size_t h = 0; h < lse.size(); ++h) ASSERT_NEAR(lse[h], ref_lse[h], 2e-5 * std::fabs(ref_lse[h])) << h;
      }
    }
  }
}

// The GPU pages of a quantised payload (attention/quantized_pages.h), read
// back on the CPU as the kernel reads them (scale and min of the element's
// key group or value group, fmaf), equal the decoder's output: the page
// layout is checked here, where CI runs, and the kernel against it on a GPU
// (CudaAttention.QuantizedPagesEqualTheDecodedFp16Blocks). Odd sizes: short
// last key and value groups, a block shorter than the page.
TEST(CodecTest, QuantisedPagesHoldWhatTheDecoderReturns) {
  for (Codec codec : {Codec::kInt8, Codec::kInt4}) {
    for (const auto& [tokens, block_tokens, d] : {std::tuple{70u, 70u, 72u}, {37u, 70u, 72u}, {13u, 13u, 40u},
                                                   {64u, 64u, 128u}, {1u, 256u, 8u}}) {
      SCOPED_TRACE(::testing::Message() << CodecName(codec) << " " << tokens << " of " << block_tokens << " x " << d);
      std::vector<float> k, v;
      ModelLikeKv(tokens, d, tokens + d, &k, &v);
      std::vector<uint8_t> payload(quantized::PayloadBytes(codec, tokens, d));
      ASSERT_TRUE(quantized::Encode(codec, k.data(), v.data(), tokens, d, payload.data(), nullptr, "block").ok());
      std::vector<float> want_k(size_t{tokens} * d), want_v(want_k.size()), scratch;
      quantized::Decode(codec, payload.data(), tokens, d, want_k.data(), want_v.data(), &scratch);
      const attention::QuantizedPageLayout l =
          attention::QuantizedPages(codec == Codec::kInt8 ? 8 : 4, block_tokens, d);
      std::vector<uint8_t> key_page(l.page_bytes, 0xAB), value_page(l.page_bytes, 0xAB);
      quantized::PayloadToPages(codec, payload.data(), tokens, d, block_tokens, key_page.data(), value_page.data());
      auto half_at = [](const std::vector<uint8_t>& page, size_t i) {
        uint16_t h;
        std::memcpy(&h, page.data() + 2 * i, 2);
        return attention::HalfToFloat(h);
      };
      auto code_at = [&](const std::vector<uint8_t>& page, uint32_t t, uint32_t c) {
        const uint8_t* row = page.data() + l.code_offset + size_t{t} * l.row_bytes;
        return static_cast<float>(l.bits == 8 ? row[c] : (row[c / 2] >> (4 * (c % 2))) & 15);
      };
      // An fp16 scale times a code of at most 8 bits is exact in float32,
      // so the decoder's fused and unfused loops and the kernel's fmaf agree.
      auto decode = [](float scale, float code, float min) { return std::fma(scale, code, min); };
      for (uint32_t t = 0; t < tokens; ++t) {
        for (uint32_t c = 0; c < d; ++c) {
          const size_t kp = size_t{l.bits == 8 ? 0 : t / attention::kInt4Group} * d + c;
          const float key = decode(half_at(key_page, kp), code_at(key_page, t, c),
                                   half_at(key_page, size_t{l.key_groups} * d + kp));
          const size_t vp = size_t{t} * l.value_groups + (l.bits == 8 ? 0 : c / attention::kInt4Group);
          const float value = decode(half_at(value_page, vp), code_at(value_page, t, c),
                                     half_at(value_page, size_t{block_tokens} * l.value_groups + vp));
          ASSERT_EQ(key, want_k[size_t{t} * d + c]) << "key " << t << " " << c;
          ASSERT_EQ(value, want_v[size_t{t} * d + c]) << "value " << t << " " << c;
        }
      }
    }
  }
}

TEST(CodecStoreTest, Bf16InputIsStoredBitExactByTheBf16Codec) {
  TempDir dir;
  Geometry g;
  g.layers = 1;
  g.kv_heads = 1;
  g.head_dim = 8;
  g.codec = Codec::kBF16ShuffleZstd;
  const uint32_t tokens = 70;
  std::vector<uint16_t> k(tokens * 8), v(tokens * 8);
  for (size_t i = 0; i < k.size(); ++i) {
    k[i] = static_cast<uint16_t>(0x3f80 + (i * 37) % 500);   // around 1.0
    v[i] = static_cast<uint16_t>(0xc100 + (i * 11) % 300);   // around -8.0
  }
  auto store = Store::Create(dir.Sub("s"), g);
  ASSERT_TRUE(store.ok());
  ASSERT_TRUE((*store)->AppendDocument("doc", {k.data(), v.data(), tokens, ElementType::kBFloat16}).ok());
  ASSERT_TRUE((*store)->Commit().ok());
  std::vector<float> keys, values;
  ASSERT_TRUE((*store)->ReadStream(0, 0, &keys, &values).ok());
  for (size_t i = 0; i < k.size(); ++i) {
    uint32_t kb, vb;
    std::memcpy(&kb, &keys[i], 4);
    std::memcpy(&vb, &values[i], 4);
    ASSERT_EQ(kb, uint32_t{k[i]} << 16) << i;
    ASSERT_EQ(vb, uint32_t{v[i]} << 16) << i;
  }
}

TEST(CodecStoreTest, AQuantisedStoreRefusesOutOfRangeInputNamingTheDocument) {
  TempDir dir;
  Geometry g;
  g.layers = 1;
  g.kv_heads = 1;
  g.head_dim = 4;
  g.codec = Codec::kInt8;
  auto store = Store::Create(dir.Sub("s"), g);
  ASSERT_TRUE(store.ok());
  std::vector<float> k(8, 1.0f), v(8, 1.0f);
  k[5] = 1e9f;
  auto id = (*store)->AppendDocument("loud", {k.data(), v.data(), 2});
  ASSERT_FALSE(id.ok());
  EXPECT_EQ(id.status().code(), Status::Code::kInvalidArgument);
  EXPECT_NE(id.status().message().find("document loud"), std::string::npos) << id.status().message();
  // Nothing was staged: a good document still goes in.
  k[5] = 1.0f;
  ASSERT_TRUE((*store)->AppendDocument("quiet", {k.data(), v.data(), 2}).ok());
  ASSERT_TRUE((*store)->Commit().ok());
  EXPECT_EQ((*store)->Stats().documents, 1u);
}

}  // namespace
}  // namespace msa
