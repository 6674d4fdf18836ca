// Ingest's encoding loops (store/encode_kernel.h): every vector path this
// CPU runs gives the portable loop's bits, at odd sizes and on edge values
// (signed zeros, NaN, infinities, subnormals); and block records and
// summaries are byte for byte what the scalar code before the vector loops
// wrote (golden checksums), so stores do not change with the ISA or the
// version that ingested them.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "attention/dequantize.h"
#include "store/codec.h"
#include "store/encode_kernel.h"
#include "store/summary.h"

namespace msa {
namespace {

constexpr KernelIsa kVectorIsas[] = {KernelIsa::kAvx2, KernelIsa::kAvx512};

// A reproducible generator independent of the standard library's
// distributions (whose algorithms are implementation-defined).
class Lcg {
 public:
  explicit Lcg(uint64_t seed) : s_(seed * 0x9e3779b97f4a7c15ull + 1) {}
  uint32_t Next() {
    s_ = s_ * 6364136223846793005ull + 1442695040888963407ull;
    return static_cast<uint32_t>(s_ >> 33);
  }
  float Uniform(float lo, float hi) { return lo + (hi - lo) * static_cast<float>(Next() % (1u << 24)) / (1u << 24); }

 private:
  uint64_t s_;
};

// Random floats with a share of edge values sprinkled in when `edges`.
std::vector<float> Data(size_t n, uint64_t seed, bool edges) {
  Lcg rng(seed);
  std::vector<float> x(n);
  const float specials[] = {0.0f, -0.0f, std::numeric_limits<float>::infinity(),
                            -std::numeric_limits<float>::infinity(), std::numeric_limits<float>::quiet_NaN(),
                            std::numeric_limits<float>::denorm_min(), -1e-40f, 65504.0f};
  for (auto& v : x) {
    v = rng.Uniform(-8.0f, 8.0f);
    if (edges && rng.Next() % 7 == 0) v = specials[rng.Next() % 8];
  }
  return x;
}

// Bit for bit, except that any NaN equals any NaN: which payload and sign
// a sum of NaNs carries depends on the operand order the compiler picked
// (x86 keeps the first operand's), and no reader looks at it.
bool SameBits(const std::vector<float>& a, const std::vector<float>& b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i) {
    if (std::isnan(a[i]) && std::isnan(b[i])) continue;
    if (std::memcmp(&a[i], &b[i], sizeof(float)) != 0) return false;
  }
  return true;
}

uint64_t Hash(const std::vector<float>& x) { return Checksum(x.data(), x.size() * sizeof(float)); }

TEST(EncodeKernelTest, ColumnRangeAndSumMatchThePortableLoopBitForBit) {
  int compared = 0;
  for (KernelIsa isa : kVectorIsas) {
    if (!KernelIsaSupported(isa)) continue;
    for (size_t d : {1, 7, 8, 15, 16, 17, 33, 64, 100, 128, 130, 256}) {
      for (size_t rows : {1, 2, 31, 64}) {
        for (bool edges : {false, true}) {
          SCOPED_TRACE(std::string(KernelIsaName(isa)) + " d " + std::to_string(d) + " rows " +
                       std::to_string(rows) + (edges ? " with edge values" : ""));
          const auto x = Data(rows * d, d * 1000 + rows + edges, edges);
          // Start from +-inf (the quantiser) and from a first row (the bound).
          for (bool from_row : {false, true}) {
            std::vector<float> lo0(d, std::numeric_limits<float>::infinity()), hi0(d, -lo0[0]);
            if (from_row) lo0 = hi0 = Data(d, d + 7, edges);
            auto lo_p = lo0, hi_p = hi0, lo_v = lo0, hi_v = hi0;
            const bool nan_p = ColumnRange(x.data(), rows, d, lo_p.data(), hi_p.data(), KernelIsa::kPortable);
            const bool nan_v = ColumnRange(x.data(), rows, d, lo_v.data(), hi_v.data(), isa);
            EXPECT_EQ(nan_p, nan_v);
            EXPECT_TRUE(SameBits(lo_p, lo_v));
            EXPECT_TRUE(SameBits(hi_p, hi_v));
          }
          std::vector<float> sum_p(d, 0.25f), sum_v(d, 0.25f);
          ColumnSum(x.data(), rows, d, sum_p.data(), KernelIsa::kPortable);
          ColumnSum(x.data(), rows, d, sum_v.data(), isa);
          EXPECT_TRUE(SameBits(sum_p, sum_v));
          compared++;
        }
      }
    }
  }
  if (compared == 0) GTEST_SKIP() << "this CPU has neither AVX2 nor AVX-512: only the portable loops run";
}

TEST(EncodeKernelTest, RowRangeMatchesThePortableLoopIncludingTheSignOfZero) {
  int compared = 0;
  for (KernelIsa isa : kVectorIsas) {
    if (!KernelIsaSupported(isa)) continue;
    for (size_t n : {1, 5, 8, 16, 31, 32, 33, 128, 129}) {
      for (int variant = 0; variant < 6; ++variant) {
        auto x = Data(n, n * 10 + variant, variant == 1);
        if (variant == 2) {  // all >= 0 with -0 and +0 in different orders: lo is a zero
          for (auto& v : x) v = std::fabs(v);
          x[n / 2] = -0.0f;
          x[0] = 0.0f;
        }
        if (variant == 3) {  // all <= 0: hi is a zero
          for (auto& v : x) v = -std::fabs(v);
          x[n - 1] = -0.0f;
          x[n / 3] = 0.0f;
        }
        if (variant == 4) std::fill(x.begin(), x.end(), std::numeric_limits<float>::quiet_NaN());
        if (variant == 5) std::fill(x.begin(), x.end(), 3.5f);
        SCOPED_TRACE(std::string(KernelIsaName(isa)) + " n " + std::to_string(n) + " variant " +
                     std::to_string(variant));
        float lo_p, hi_p, lo_v, hi_v;
        const bool nan_p = RowRange(x.data(), n, &lo_p, &hi_p, KernelIsa::kPortable);
        const bool nan_v = RowRange(x.data(), n, &lo_v, &hi_v, isa);
        EXPECT_EQ(nan_p, nan_v);
        EXPECT_EQ(std::memcmp(&lo_p, &lo_v, 4), 0) << lo_p << " vs " << lo_v;
        EXPECT_EQ(std::memcmp(&hi_p, &hi_v, 4), 0) << hi_p << " vs " << hi_v;
        compared++;
      }
    }
  }
  if (compared == 0) GTEST_SKIP() << "this CPU has neither AVX2 nor AVX-512: only the portable loops run";
}

TEST(EncodeKernelTest, QuantizeCodesMatchesThePortableLoop) {
  int compared = 0;
  for (KernelIsa isa : kVectorIsas) {
    if (!KernelIsaSupported(isa)) continue;
    for (size_t n : {1, 7, 16, 31, 32, 33, 64, 100, 128, 131}) {
      for (float levels : {15.0f, 255.0f}) {
        SCOPED_TRACE(std::string(KernelIsaName(isa)) + " n " + std::to_string(n) + " levels " +
                     std::to_string(levels));
        const auto x = Data(n, n + static_cast<uint64_t>(levels), false);
        // Per element: min at or below x (x == min on some), inv from a range.
        Lcg rng(n);
        std::vector<float> min(n), inv(n);
        for (size_t i = 0; i < n; ++i) {
          min[i] = i % 5 == 0 ? x[i] : x[i] - rng.Uniform(0.0f, 4.0f);
          inv[i] = i % 11 == 0 ? 0.0f : levels / rng.Uniform(0.5f, 8.0f);  // 0: a constant group
        }
        std::vector<uint8_t> p(n), v(n);
        QuantizeCodes(x.data(), min.data(), inv.data(), levels, n, p.data(), KernelIsa::kPortable);
        QuantizeCodes(x.data(), min.data(), inv.data(), levels, n, v.data(), isa);
        EXPECT_EQ(p, v);
        // One (min, inv) for the run, including the codes at the clamp.
        const float run_min = *std::min_element(x.begin(), x.end());
        const float run_max = *std::max_element(x.begin(), x.end());
        const float run_inv = run_max > run_min ? levels / (run_max - run_min) * 1.01f : 0.0f;
        QuantizeCodes(x.data(), run_min, run_inv, levels, n, p.data(), KernelIsa::kPortable);
        QuantizeCodes(x.data(), run_min, run_inv, levels, n, v.data(), isa);
        EXPECT_EQ(p, v);
        compared++;
      }
    }
  }
  if (compared == 0) GTEST_SKIP() << "this CPU has neither AVX2 nor AVX-512: only the portable loops run";
}

// Group ranges as the quantiser meets them (lo <= hi; equal, signed zeros,
// float and fp16 subnormals, fp16 rounding ties, near fp16's limit), ranges
// whose first scale falls short of hi by float rounding and must be raised
// a step, and ranges it must refuse (NaN bounds, beyond 65504), inside a
// vector block and in the tail after one: the same parameters and the same
// verdict on every path.
TEST(EncodeKernelTest, FitRangesMatchesThePortableLoop) {
  int compared = 0;
  const float kEdges[] = {0.0f,     -0.0f,     1e-7f,      -1e-7f,  6.1e-5f,  -6.1e-5f,    65504.0f,
                          -65504.0f, 1.0f,     -3.0f,      1e-40f, -1e-40f,  1e-9f,       -1e-9f,
                          2.98023224e-8f /* 2^-25: half the smallest fp16 subnormal */};
  constexpr uint32_t kEdgeCount = sizeof(kEdges) / sizeof(kEdges[0]);
  for (KernelIsa isa : kVectorIsas) {
    if (!KernelIsaSupported(isa)) continue;
    for (size_t n : {1, 7, 8, 9, 31, 64, 128, 133}) {
      for (uint32_t levels : {15u, 255u}) {
        for (int kind = 0; kind < 4; ++kind) {  // in range; edge values; one refused; scales to raise
          SCOPED_TRACE(std::string(KernelIsaName(isa)) + " n " + std::to_string(n) + " levels " +
                       std::to_string(levels) + " kind " + std::to_string(kind));
          Lcg rng(n * 31 + levels + kind);
          std::vector<float> lo(n), hi(n);
          for (size_t i = 0; i < n; ++i) {
            const float scale = std::pow(2.0f, rng.Uniform(-20.0f, 14.0f));
            float a = rng.Uniform(-1.0f, 1.0f) * scale, b = rng.Uniform(-1.0f, 1.0f) * scale;
            if (kind >= 1 && rng.Next() % 3 == 0) a = kEdges[rng.Next() % kEdgeCount];
            if (kind >= 1 && rng.Next() % 3 == 0) b = kEdges[rng.Next() % kEdgeCount];
            if (i % 9 == 4) b = a;  // a constant group
            lo[i] = std::min(a, b);
            hi[i] = std::max(a, b);
            // (hi - min) / levels lands on an fp16 exactly (256 or 4096) and
            // min + levels * scale = 0 < hi: the scale must rise one step.
            if (kind == 3 && i % 3 != 1) {
              lo[i] = levels == 255 ? -65280.0f : -61440.0f;
              hi[i] = 0.001f;
            }
            if (kind == 2 && i == (n % 8 == 1 ? n - 1 : n / 2)) {  // refused: NaN on either side, or beyond fp16
              switch (rng.Next() % 4) {
                case 0: lo[i] = std::numeric_limits<float>::quiet_NaN(); break;
                case 1: hi[i] = std::numeric_limits<float>::quiet_NaN(); break;
                case 2: hi[i] = 70000.0f; break;
                default: lo[i] = -65520.0f; break;
              }
            }
          }
          std::vector<uint16_t> ps(n), pm(n), vs(n), vm(n);
          std::vector<float> psf(n), pmf(n), vsf(n), vmf(n);
          const bool p_ok = FitRanges(lo.data(), hi.data(), n, levels, ps.data(), pm.data(), psf.data(), pmf.data(),
                                      KernelIsa::kPortable);
          const bool v_ok =
              FitRanges(lo.data(), hi.data(), n, levels, vs.data(), vm.data(), vsf.data(), vmf.data(), isa);
          ASSERT_EQ(p_ok, v_ok);
          EXPECT_EQ(p_ok, kind != 2);
          if (!p_ok) continue;
          EXPECT_EQ(ps, vs);
          EXPECT_EQ(pm, vm);
          EXPECT_TRUE(SameBits(psf, vsf));
          EXPECT_TRUE(SameBits(pmf, vmf));
          for (size_t i = 0; i < n; ++i) {  // the definition, on the portable result
            EXPECT_LE(pmf[i], lo[i]);
            EXPECT_GE(std::fma(psf[i], static_cast<float>(levels), pmf[i]), hi[i]);
            if (kind == 3 && i % 3 != 1) EXPECT_GT(psf[i], levels == 255 ? 256.0f : 4096.0f);  // raised
          }
          compared++;
        }
      }
    }
  }
  if (compared == 0) GTEST_SKIP() << "this CPU has neither AVX2 nor AVX-512: only the portable loops run";
}

struct Golden {
  uint32_t tokens;
  Codec codec;
  uint64_t record, bound, mean, hybrid;  // XXH3-64 of the record and of each summary's floats
};
constexpr Golden kGolden[] = {
    {64, Codec::kInt8, 0x204874a8dcab406full, 0x51826db781581a09ull, 0xebf67f2015d0f2d7ull, 0xfc2375f4f744ab0bull},
    {64, Codec::kInt4, 0x7f5316e5c0a36228ull, 0x3775b2b0829e4a4dull, 0xfbee76e173cfc345ull, 0x395b23e3abcd5b45ull},
    {64, Codec::kF16ShuffleZstd, 0x38cdc8e93fba6d97ull, 0x48e95ecd941fe672ull, 0x5c860bffdf0ee3dcull, 0x370c2b6f6b29c45cull},
    {37, Codec::kInt8, 0x65e4a7feea1294a9ull, 0xef5c994e74b0c461ull, 0xa9114b37d768fe00ull, 0xb06602f5ebaf60c2ull},
    {37, Codec::kInt4, 0x18f895bbc38b6668ull, 0xe3d9f3c4bf528e07ull, 0xbf98b81e5da3786dull, 0x5f627e1ead384973ull},
    {37, Codec::kF16ShuffleZstd, 0xf2f222541b8e82deull, 0xbcd0a716e3e6b428ull, 0x4469e402a3069bfcull, 0xa78ec454ae32ac9eull},
};

// The records and summaries of a fixed block, as checksums taken with the
// scalar encoder before the vector loops (commit efffe1f): a change here is
// a change of what stores hold.
TEST(EncodeKernelTest, RecordsAndSummariesAreWhatTheScalarCodeWrote) {
  for (uint32_t tokens : {64u, 37u}) {
    const uint32_t d = 128;
    std::vector<float> k = Data(size_t{tokens} * d, 42 + tokens, false);
    std::vector<float> v = Data(size_t{tokens} * d, 43 + tokens, false);
    for (uint32_t t = 0; t < tokens; ++t) k[size_t{t} * d + 5] *= 20.0f;  // an outlier channel
    k[3] = -0.0f;
    v[7] = 0.0f;
    for (Codec codec : {Codec::kInt8, Codec::kInt4, Codec::kF16ShuffleZstd}) {
      BlockEncoder encoder;
      BlockRecordHeader h;
      std::vector<float> stored(k.size());
      auto record = encoder.Encode(codec, BlockId{0, 0, 7}, tokens, d, k.data(), v.data(), &h, stored.data());
      ASSERT_TRUE(record.ok()) << record.status().ToString();
      const uint64_t record_sum = Checksum(record->data(), record->size());
      uint64_t summary_sum[3];
      int i = 0;
      for (SummaryKind kind : {SummaryKind::kBound, SummaryKind::kMean, SummaryKind::kHybrid}) {
        Geometry g;
        g.layers = g.kv_heads = 1;
        g.head_dim = d;
        g.codec = codec;
        g.summary = kind;
        std::vector<float> summary(g.summary_width());
        Summarize(g, stored.data(), tokens, summary.data());
        summary_sum[i++] = Hash(summary);
      }
      const Golden* want = nullptr;
      for (const Golden& gold : kGolden) {
        if (gold.tokens == tokens && gold.codec == codec) want = &gold;
      }
      ASSERT_NE(want, nullptr);
      SCOPED_TRACE(std::to_string(tokens) + " tokens, " + CodecName(codec));
      EXPECT_EQ(record_sum, want->record);
      // The summaries are of the keys as decoded, and the int8/int4
      // decoders fuse their multiply-add only on the AVX paths
      // (attention/dequantize.cc): the golden sums are those of an AVX machine.
      if (codec == Codec::kF16ShuffleZstd || std::strcmp(attention::DequantizeIsa(), "portable") != 0) {
        EXPECT_EQ(summary_sum[0], want->bound);
        EXPECT_EQ(summary_sum[1], want->mean);
        EXPECT_EQ(summary_sum[2], want->hybrid);
      }
    }
  }
}

}  // namespace
}  // namespace msa
