// Block summaries and the router: each summary's score means what
// store/summary.h says, the exact scan is the exact top k, the IVF index
// finds what the exact scan finds, and a store keeps its summary kind.
#include <gtest/gtest.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <limits>
#include <memory>
#include <mutex>
#include <random>
#include <set>
#include <shared_mutex>

#include "attention/half.h"
#include "store/dot_kernel.h"
#include "store/route_sketch.h"
#include "store/router.h"
#include "store/sketch_scan.h"
#include "store/store.h"
#include "store/summary.h"
#include "store/summary_table.h"
#include "store/table_memory.h"
#include "test_util.h"

namespace msa {
namespace {

Geometry OneStream(SummaryKind kind, uint32_t d = 32) {
  Geometry g;
  g.layers = 1;
  g.kv_heads = 1;
  g.head_dim = d;
  g.block_tokens = 16;
  g.summary = kind;
  return g;
}

float Dot(const float* a, const float* b, uint32_t n) {
  float s = 0;
  for (uint32_t i = 0; i < n; ++i) s += a[i] * b[i];
  return s;
}

TEST(Summary, BoundIsAnUpperBoundOfEveryKeyAndExactForOneToken) {
  const Geometry g = OneStream(SummaryKind::kBound);
  const uint32_t d = g.head_dim;
  for (uint32_t tokens : {1u, 5u, 16u}) {
    auto keys = msa::testing::RandomVector(tokens * d, tokens);
    std::vector<float> summary(g.summary_width()), probe(IndexVectorDim(g));
    Summarize(g, keys.data(), tokens, summary.data());
    for (uint64_t seed = 0; seed < 20; ++seed) {
      auto q = msa::testing::RandomVector(d, 100 + seed);
      MakeProbe(g, q.data(), probe.data());
      const float bound = ScoreSummary(g, probe.data(), summary.data());
      float best = -std::numeric_limits<float>::infinity();
      for (uint32_t t = 0; t < tokens; ++t) best = std::max(best, Dot(q.data(), &keys[t * d], d));
      EXPECT_GE(bound, best - 1e-4f);
      if (tokens == 1) {
        EXPECT_NEAR(bound, best, 1e-4f);
      }
    }
  }
}

TEST(Summary, MeanAndCentroidsScoreAsDocumented) {
  const uint32_t d = 32, tokens = 12;
  auto keys = msa::testing::RandomVector(tokens * d, 7);
  auto q = msa::testing::RandomVector(d, 8);
  {
    const Geometry g = OneStream(SummaryKind::kMean, d);
    std::vector<float> summary(g.summary_width()), probe(d);
    Summarize(g, keys.data(), tokens, summary.data());
    MakeProbe(g, q.data(), probe.data());
    float mean_dot = 0;
    for (uint32_t t = 0; t < tokens; ++t) mean_dot += Dot(q.data(), &keys[t * d], d) / tokens;
    EXPECT_NEAR(ScoreSummary(g, probe.data(), summary.data()), mean_dot, 1e-4f);
  }
  {
    // Keys drawn from 4 tight, well separated clusters: 4 centroids find
    // them, so the score is the best cluster's, close to the best key's.
    Geometry g = OneStream(SummaryKind::kCentroids, d);
    g.summary_centroids = 4;
    auto centers = msa::testing::RandomVector(4 * d, 9, 10.0f);
    std::vector<float> clustered(tokens * d);
    auto noise = msa::testing::RandomVector(tokens * d, 10, 0.01f);
    for (uint32_t t = 0; t < tokens; ++t)
      for (uint32_t c = 0; c < d; ++c) clustered[t * d + c] = centers[(t % 4) * d + c] + noise[t * d + c];
    std::vector<float> summary(g.summary_width()), probe(d);
    Summarize(g, clustered.data(), tokens, summary.data());
    MakeProbe(g, q.data(), probe.data());
    float best = -std::numeric_limits<float>::infinity();
    for (uint32_t t = 0; t < tokens; ++t) best = std::max(best, Dot(q.data(), &clustered[t * d], d));
    EXPECT_NEAR(ScoreSummary(g, probe.data(), summary.data()), best, 0.05f * std::abs(best) + 0.1f);
  }
}

TEST(DotKernel, Fp16AxpyMatchesAScalarReferenceForOddLengths) {
  SCOPED_TRACE(F16KernelIsa());
  for (size_t n : {1u, 7u, 8u, 15u, 16u, 17u, 100u, 1024u}) {
    auto x = msa::testing::RandomVector(n, n);
    auto y = msa::testing::RandomVector(n, n + 1);
    std::vector<uint16_t> x16(n);
    attention::FloatToHalfArray(x.data(), x16.data(), n);
    std::vector<float> out = y;
    AxpyF16(-1.75f, x16.data(), out.data(), n);
    for (size_t i = 0; i < n; ++i) {
      const float ref = y[i] + -1.75f * attention::HalfToFloat(x16[i]);
      ASSERT_NEAR(out[i], ref, 1e-6f * (std::abs(ref) + 1)) << "n " << n << " i " << i;
    }
  }
}

// Brute force: the top k blocks by the combined score of the group's heads.
std::vector<uint64_t> BruteForce(const Geometry& g, const std::vector<float>& summaries,
                                 uint64_t blocks, const std::vector<float>& queries, int group,
                                 GqaCombine combine, size_t k) {
  std::vector<std::pair<float, uint64_t>> scored;
  std::vector<float> probe(IndexVectorDim(g));
  for (uint64_t b = 0; b < blocks; ++b) {
    float acc = combine == GqaCombine::kMax ? -std::numeric_limits<float>::infinity() : 0.0f;
    for (int h = 0; h < group; ++h) {
      MakeProbe(g, &queries[h * g.head_dim], probe.data());
      const float s = ScoreSummary(g, probe.data(), &summaries[b * g.summary_width()]);
      acc = combine == GqaCombine::kMax ? std::max(acc, s) : acc + s;
    }
    scored.push_back({-acc, b});
  }
  std::sort(scored.begin(), scored.end());
  std::vector<uint64_t> top;
  for (size_t i = 0; i < k; ++i) top.push_back(scored[i].second);
  std::sort(top.begin(), top.end());
  return top;
}

// A routed block's exact group score: the max over the group's heads of
// its ranking's index vectors (the hybrid's ranking is one vector; other
// kinds take every vector). summaries: every block's, summary_width() apart.
float ExactGroupScore(const Geometry& g, const float* q, int group, const std::vector<float>& summaries,
                      const ScoredBlock& sb) {
  const uint32_t dim = IndexVectorDim(g), per_block = IndexVectorsPerBlock(g), width = g.summary_width();
  std::vector<float> probe(dim);
  float best = -std::numeric_limits<float>::infinity();
  for (int h = 0; h < group; ++h) {
    MakeProbe(g, q + static_cast<size_t>(h) * g.head_dim, probe.data());
    for (uint32_t j = 0; j < per_block; ++j) {
      if (g.summary == SummaryKind::kHybrid && j != sb.ranking) continue;
      best = std::max(best, Dot(probe.data(), &summaries[sb.block * width + j * dim], dim));
    }
  }
  return best;
}

std::vector<uint64_t> Blocks(const std::vector<ScoredBlock>& v) {
  std::vector<uint64_t> out;
  for (const auto& s : v) out.push_back(s.block);
  std::sort(out.begin(), out.end());
  return out;
}

TEST(DotKernel, WeightedColumnSumMatchesAScalarReference) {
  SCOPED_TRACE(F16KernelIsa());
  const size_t stride = 300, columns = 9;
  auto x = msa::testing::RandomVector(columns * stride, 31);
  std::vector<uint16_t> x16(x.size());
  attention::FloatToHalfArray(x.data(), x16.data(), x.size());
  const std::vector<uint32_t> cols = {0, 8, 3, 5};
  const std::vector<float> coef = {0.5f, -2.0f, 1.25f, 3.0f};
  std::vector<float> out(kColumnTile);
  WeightedColumnSum(coef.data(), cols.data(), cols.size(), x16.data() + 7, stride, out.data());
  for (size_t b = 0; b < kColumnTile; ++b) {
    double ref = 0;
    for (size_t k = 0; k < cols.size(); ++k) ref += coef[k] * attention::HalfToFloat(x16[cols[k] * stride + 7 + b]);
    ASSERT_NEAR(out[b], ref, 1e-5 * (std::abs(ref) + 1)) << b;
  }
}

TEST(DotKernel, WeightedColumnSumSpanMatchesTheWholeTile) {
  SCOPED_TRACE(F16KernelIsa());
  const size_t stride = 300, columns = 9;
  auto x = msa::testing::RandomVector(columns * stride, 33);
  std::vector<uint16_t> x16(x.size());
  attention::FloatToHalfArray(x.data(), x16.data(), x.size());
  const std::vector<uint32_t> cols = {0, 8, 3, 5, 1};  // odd: the kernel's last column alone
  const std::vector<float> coef = {0.5f, -2.0f, 1.25f, 3.0f, -0.75f};
  std::vector<float> whole(kColumnTile);
  WeightedColumnSum(coef.data(), cols.data(), cols.size(), x16.data() + 7, stride, whole.data());
  for (size_t first = 0; first < kColumnTile; first += 48) {
    for (size_t blocks : {16u, 32u, 80u}) {
      if (first + blocks > kColumnTile) continue;
      std::vector<float> span(blocks, -1.0f);
      WeightedColumnSumSpan(coef.data(), cols.data(), cols.size(), x16.data() + 7 + first, stride, blocks,
                            span.data());
      for (size_t b = 0; b < blocks; ++b) {
        // The same multiply-adds in the same order: the same bits.
        ASSERT_EQ(span[b], whole[first + b]) << first << " " << b;
      }
    }
  }
}

TEST(DotKernel, DotF32AndIndicesAtLeast) {
  SCOPED_TRACE(F16KernelIsa());
  const std::vector<float> a = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19};
  EXPECT_FLOAT_EQ(DotF32(a.data(), a.data(), a.size()), 2470.0f);
  std::vector<float> x(37, 0.0f);
  x[2] = x[16] = x[31] = x[36] = 5.0f;  // in the first vector, the second, the tail
  x[20] = std::numeric_limits<float>::quiet_NaN();
  x[21] = std::numeric_limits<float>::infinity();
  std::vector<uint32_t> idx(x.size());
  idx.resize(IndicesAtLeast(x.data(), x.size(), 5.0f, idx.data()));
  EXPECT_EQ(idx, (std::vector<uint32_t>{2, 16, 21, 31, 36}));
}

// Sketch columns for the kernel tests: each column's 8-bit codes and 4-bit
// code pairs, the first byte_columns stored as byte columns and the rest as
// packed ones, and the scalar reference the kernel's loops must equal.
struct TestSketch {
  size_t stride, byte_columns;
  std::vector<int8_t> codes;     // [column][block]
  std::vector<uint8_t> nibbles;  // [column][low, high][block]
  std::vector<uint8_t> stored;   // [column][block], as the kernel reads it

  TestSketch(size_t columns, size_t stride_blocks, size_t bytes)
      : stride(stride_blocks), byte_columns(bytes), codes(columns * stride_blocks),
        nibbles(2 * columns * stride_blocks), stored(columns * stride_blocks) {}

  // Fills `stored` from codes and nibbles.
  void Store() {
    for (size_t c = 0; c < codes.size() / stride; ++c) {
      if (c < byte_columns) {
        StoreSketchColumn(&codes[c * stride], stride, &stored[c * stride]);
        continue;
      }
      std::vector<uint8_t> low(stride), high(stride);
      for (size_t b = 0; b < stride; ++b) {
        low[b] = nibbles[2 * (c * stride + b)];
        high[b] = nibbles[2 * (c * stride + b) + 1];
      }
      StoreSketchPacked(low.data(), high.data(), stride, &stored[c * stride]);
    }
  }
  // Logical column k's code of block b, in block order.
  int64_t Code(const SketchProbe& p, size_t k, size_t b) const {
    if (k < p.columns.size()) return codes[p.columns[k] * stride + b] + 128;
    const size_t i = k - p.columns.size();
    return nibbles[2 * (p.packed[i / 2] * stride + b) + i % 2];
  }
  // Head h's score of block b, summed in integers.
  float Expected(const SketchProbe& p, int h, size_t b) const {
    const size_t n = p.logical();
    int64_t sum = p.bias[h];
    for (size_t k = 0; k < n; ++k) sum += p.coef[h * n + k] * Code(p, k, b);
    return std::fma(static_cast<float>(sum), p.scale[h], p.offset[h]);
  }
};

// Every loop of the sketch kernel (those this CPU has) returns exactly the
// integer sums of a scalar reference over the codes in block order, for 1
// to 6 heads (the VNNI loop batches 4), byte and packed 4-bit columns,
// padding columns, all-zero heads and per-head offsets.
TEST(SketchScan, EveryLoopEqualsTheScalarReference) {
  SCOPED_TRACE(SketchKernelIsa());
  for (uint32_t b = 0; b < kSketchGroup; ++b) ASSERT_EQ(SketchOrder(SketchOrder(b)), b);
  const size_t stride = 4096, columns = 12;  // 0-8 byte columns, 9-11 packed
  TestSketch sketch(columns, stride, 9);
  auto& codes = sketch.codes;
  auto& nibbles = sketch.nibbles;
  for (size_t i = 0; i < codes.size(); ++i) {
    codes[i] = static_cast<int8_t>(static_cast<int>((i * 2654435761u) >> 7) % 255 - 127);
    nibbles[2 * i] = static_cast<uint8_t>(((i * 2246822519u) >> 9) % 16);
    nibbles[2 * i + 1] = static_cast<uint8_t>(((i * 3266489917u) >> 11) % 16);
  }
  codes[3 * stride + 300] = -127;  // the extremes
  codes[5 * stride + 301] = 127;
  sketch.Store();
  const std::vector<uint8_t>& stored = sketch.stored;
  for (bool with_packed : {false, true}) {
    for (int heads : {1, 3, 4, 6}) {
      SketchProbe probe;
      probe.heads = heads;
      probe.columns = {5, 0, 3, 8, 2, 2, 7, 1};  // a repeat, as padding makes
      if (with_packed) probe.packed = {10, 9, 11, 10};
      const size_t n = probe.logical();
      std::vector<float> weights(heads * n), offsets(heads);
      for (size_t i = 0; i < weights.size(); ++i) weights[i] = std::sin(1.7f * static_cast<float>(i) + 0.3f) * (1 + i % 3);
      for (int h = 0; h < heads; ++h) offsets[h] = with_packed ? 0.25f * static_cast<float>(h) - 0.4f : 0.0f;
      if (heads == 3) std::fill(weights.begin() + n, weights.begin() + 2 * n, 0.0f);  // a head with no weight
      probe.Quantize(weights.data(), offsets.data());
      const size_t t0 = 256;
      std::vector<float> expected(heads * kColumnTile);
      for (int h = 0; h < heads; ++h) {
        for (size_t b = 0; b < kColumnTile; ++b) expected[h * kColumnTile + b] = sketch.Expected(probe, h, t0 + b);
      }
      for (SketchIsa isa : {SketchIsa::kAvx512Vnni, SketchIsa::kAvx2, SketchIsa::kPortable}) {
        SCOPED_TRACE(::testing::Message() << "isa " << static_cast<int>(isa) << " heads " << heads << " packed "
                                        << with_packed);
        std::vector<float> out(heads * kColumnTile, -1.0f);
        std::vector<int32_t> scratch;
        if (!SketchScoresOn(isa, probe, SketchHeads::kEach, stored.data() + t0, stride, kColumnTile, &scratch,
                            out.data())) {
          continue;
        }
        for (size_t i = 0; i < out.size(); ++i) ASSERT_EQ(out[i], expected[i]) << "at " << i;
        // The heads combined in head order.
        for (SketchHeads mode : {SketchHeads::kMax, SketchHeads::kSum}) {
          std::vector<float> combined(kColumnTile, -1.0f);
          ASSERT_TRUE(
              SketchScoresOn(isa, probe, mode, stored.data() + t0, stride, kColumnTile, &scratch, combined.data()));
          for (size_t b = 0; b < kColumnTile; ++b) {
            float c = expected[b];
            for (int h = 1; h < heads; ++h) {
              c = mode == SketchHeads::kMax ? std::max(c, expected[h * kColumnTile + b])
                                            : c + expected[h * kColumnTile + b];
            }
            ASSERT_EQ(combined[b], c) << "at " << b;
          }
        }
      }
      // The quantised coefficients keep each head's weights to 1/254 of its
      // largest, and the zero points are the codes' offsets (128, 8).
      for (int h = 0; h < heads; ++h) {
        int64_t zero_points = 0;
        for (size_t k = 0; k < n; ++k) {
          const float peak = probe.scale[h] * 127.0f;
          EXPECT_NEAR(probe.coef[h * n + k] * probe.scale[h], weights[h * n + k], peak / 254.0f + 1e-7f);
          zero_points += probe.coef[h * n + k] * (k < probe.columns.size() ? 128 : 8);
        }
        EXPECT_EQ(probe.bias[h], -zero_points);
      }
    }
  }
}

// The limits of the loops without VNNI (AVX2 takes byte codes as signed so
// its 16-bit pair sums cannot saturate): codes at -128, -127 and 127 against
// coefficients of +-127 (pair sums of +-32,512), probes long enough for two
// passes of each column kind, a probe of packed columns only and one of no
// columns, over one tile and over several groups at once.
TEST(SketchScan, ExtremeCodesPassesAndPartialProbesEqualTheReference) {
  SCOPED_TRACE(SketchKernelIsa());
  const size_t stride = 2 * kColumnTile, columns = 24;  // 0-15 byte columns, 16-23 packed
  TestSketch sketch(columns, stride, 16);
  auto& codes = sketch.codes;
  auto& nibbles = sketch.nibbles;
  for (size_t c = 0; c < columns; ++c) {
    for (size_t b = 0; b < stride; ++b) {
      const size_t i = c * stride + b;
      // The first tile holds only the extremes, in runs of pairs, so that
      // a pair of neighbouring columns often meets the same extreme.
      static constexpr int8_t kExtremes[] = {-128, 127, -127};
      codes[i] = b < kColumnTile ? kExtremes[(b / 2 + c / 2) % 3]
                                 : static_cast<int8_t>(static_cast<int>((i * 2654435761u) >> 9) % 256 - 128);
      nibbles[2 * i] = b < kColumnTile ? 15 : static_cast<uint8_t>((i * 7) % 16);
      nibbles[2 * i + 1] = b < kColumnTile ? static_cast<uint8_t>(15 * (b % 2)) : static_cast<uint8_t>((i * 11) % 16);
    }
  }
  sketch.Store();
  const std::vector<uint8_t>& stored = sketch.stored;
  std::vector<uint32_t> all_bytes(16), many_packed;
  for (uint32_t c = 0; c < 16; ++c) all_bytes[c] = c;
  for (uint32_t i = 0; i < 14; ++i) many_packed.push_back(16 + i % 8);
  struct Shape {
    const char* name;
    std::vector<uint32_t> columns, packed;
  };
  const Shape shapes[] = {{"two passes of each kind", all_bytes, many_packed},
                          {"packed only", {}, {16, 17, 23, 18}},
                          {"no columns", {}, {}}};
  for (const Shape& shape : shapes) {
    for (int heads : {1, 2, 3, 5}) {
      SketchProbe probe;
      probe.heads = heads;
      probe.columns = shape.columns;
      probe.packed = shape.packed;
      const size_t n = probe.logical();
      // Head 0: every coefficient +127; head 1: every one -127; then mixed signs.
      std::vector<float> weights(heads * n), offsets(heads);
      for (int h = 0; h < heads; ++h) {
        offsets[h] = 0.5f * static_cast<float>(h) - 0.25f;
        for (size_t k = 0; k < n; ++k) {
          weights[h * n + k] = h == 0 ? 1.0f : h == 1 ? -1.0f : ((k + h) % 3 == 0 ? -1.0f : 1.0f);
        }
      }
      probe.Quantize(weights.data(), offsets.data());
      for (size_t k = 0; k < probe.coef.size(); ++k) ASSERT_EQ(std::abs(probe.coef[k]), 127);
      std::vector<float> expected(heads * stride);
      for (int h = 0; h < heads; ++h) {
        for (size_t b = 0; b < stride; ++b) expected[h * stride + b] = sketch.Expected(probe, h, b);
      }
      for (SketchIsa isa : {SketchIsa::kAvx512Vnni, SketchIsa::kAvx2, SketchIsa::kPortable}) {
        SCOPED_TRACE(::testing::Message() << "isa " << static_cast<int>(isa) << ", " << shape.name << ", heads "
                                        << heads);
        std::vector<int32_t> scratch;
        // One tile of extremes, and both tiles in one call.
        for (size_t blocks : {kColumnTile, stride}) {
          std::vector<float> out(heads * blocks, -1.0f);
          if (!SketchScoresOn(isa, probe, SketchHeads::kEach, stored.data(), stride, blocks, &scratch, out.data())) {
            break;
          }
          for (int h = 0; h < heads; ++h) {
            for (size_t b = 0; b < blocks; ++b) {
              ASSERT_EQ(out[h * blocks + b], expected[h * stride + b]) << "head " << h << " block " << b;
            }
          }
        }
      }
    }
  }
}

// A run of the sketch gives back each summary column to within half its
// quantisation step: 8-bit symmetric columns (the mean) to peak / 254, the
// bound's max and min, packed in 4 bits, to (run max - run min) / 30.
TEST(RouteSketch, ColumnsComeBackWithinHalfAStep) {
  const uint32_t d = 8, dim = 2 * d;  // hybrid: [max, min] and [mean, mean]
  SummaryTable table(2, dim);
  const uint64_t blocks = RouteSketch::kRunBlocks + 100;
  std::vector<float> rows(blocks * 2 * dim);
  auto noise = msa::testing::RandomVector(rows.size(), 77);
  for (uint64_t b = 0; b < blocks; ++b) {
    float* row = &rows[b * 2 * dim];
    for (uint32_t c = 0; c < d; ++c) {
      row[c] = 3.0f + 0.5f * noise[b * 2 * dim + c] + static_cast<float>(c);  // max: an offset range
      row[d + c] = -3.0f + 0.5f * noise[b * 2 * dim + d + c];                 // min
      row[dim + c] = row[dim + d + c] = 0.2f * noise[b * 2 * dim + dim + c];  // mean, mirrored
    }
  }
  rows[77 * 2 * dim + 2] = 40.0f;  // an outlier sets its column's step
  for (float& x : rows) x = attention::HalfToFloat(attention::FloatToHalf(x));
  table.Append(rows.data(), blocks);
  RouteSketch sketch(2, dim, /*mirrored_vector=*/1, /*packed_vector=*/0);
  sketch.CatchUp(table);
  ASSERT_EQ(sketch.runs(), 1u);
  ASSERT_EQ(sketch.blocks(), RouteSketch::kRunBlocks);
  EXPECT_EQ(sketch.memory_bytes() / RouteSketch::kRunBlocks, static_cast<uint64_t>(d + d)) << "d packed + d bytes";
  for (uint32_t j = 0; j < 2; ++j) {
    for (uint32_t c = 0; c < dim; ++c) {
      const RouteSketch::Location at = sketch.Locate(j, c);
      EXPECT_EQ(at.part == RouteSketch::Part::kByte, j == 1);
      float lo = std::numeric_limits<float>::infinity(), hi = -lo, peak = 0.0f;
      for (uint64_t b = 0; b < RouteSketch::kRunBlocks; ++b) {
        const float v = rows[b * 2 * dim + j * dim + c];
        lo = std::min(lo, v);
        hi = std::max(hi, v);
        peak = std::max(peak, std::abs(v));
      }
      const float tolerance = (j == 0 ? (hi - lo) / 30.0f : peak / 254.0f) * 1.001f + 1e-6f;
      const uint8_t* codes = sketch.Codes(0, at.column);
      for (uint64_t b = 0; b < RouteSketch::kRunBlocks; ++b) {
        const uint8_t byte = codes[(b & ~63u) + SketchOrder(static_cast<uint32_t>(b & 63u))];
        const int code = at.part == RouteSketch::Part::kByte ? byte : at.part == RouteSketch::Part::kLow ? byte & 15 : byte >> 4;
        const float zero = at.part == RouteSketch::Part::kByte ? 128.0f : 8.0f;
        const float back = sketch.Base(0, at) + sketch.Scale(0, at) * (static_cast<float>(code) - zero);
        ASSERT_NEAR(back, rows[b * 2 * dim + j * dim + c], tolerance) << "vector " << j << " dim " << c << " block " << b;
      }
    }
  }
}

// The sketch's quantisers and the candidate cut on every loop this CPU
// has, against the portable loop, bit for bit (the sketch, hence routing,
// must not depend on the machine): lengths around the vector widths, ties
// that round to even, NaN, infinities, signed zeros and values past fp16.
TEST(DotKernel, EveryQuantiserLoopEqualsThePortableOne) {
  std::mt19937 rng(91);
  std::normal_distribution<float> normal(0.0f, 3.0f);
  for (size_t n : {0u, 7u, 31u, 32u, 33u, 100u, 4096u}) {
    std::vector<float> x(n);
    for (size_t i = 0; i < n; ++i) {
      switch (i % 11) {
        case 3: x[i] = static_cast<float>(static_cast<int>(i % 9) - 4) + 0.5f; break;  // ties at inverse 1
        case 5: x[i] = i % 2 ? -0.0f : 0.0f; break;
        default: x[i] = normal(rng);
      }
    }
    if (n > 40) {
      x[13] = std::numeric_limits<float>::quiet_NaN();
      x[17] = std::numeric_limits<float>::infinity();
      x[19] = -std::numeric_limits<float>::infinity();
      x[23] = 1e6f;  // past fp16: the nibbles saturate it
    }
    for (DotIsa isa : {DotIsa::kAvx512, DotIsa::kAvx2}) {
      SCOPED_TRACE(::testing::Message() << "n " << n << " isa " << static_cast<int>(isa));
      float peak = 0, want_peak = 0;
      if (!MaxAbsOn(isa, x.data(), n, &peak)) continue;
      ASSERT_TRUE(MaxAbsOn(DotIsa::kPortable, x.data(), n, &want_peak));
      EXPECT_EQ(std::bit_cast<uint32_t>(peak), std::bit_cast<uint32_t>(want_peak));
      for (float inverse : {1.0f, 0.37f, 127.0f / 9.0f}) {
        std::vector<int8_t> codes(n, 99), want(n, 99);
        ASSERT_TRUE(QuantizeInt8On(isa, x.data(), n, inverse, codes.data()));
        ASSERT_TRUE(QuantizeInt8On(DotIsa::kPortable, x.data(), n, inverse, want.data()));
        EXPECT_EQ(codes, want) << "inverse " << inverse;
      }
      // Finite inputs for the nibbles as well: their range sets the step.
      for (bool finite : {false, true}) {
        std::vector<float> in = x;
        if (finite) {
          for (float& v : in) v = std::isfinite(v) ? std::clamp(v, -60.0f, 60.0f) : 1.0f;
        }
        std::vector<float> scratch(n), want_scratch(n);
        std::vector<uint8_t> nibbles(n, 99), want_nibbles(n, 99);
        std::pair<float, float> base_step, want_base_step;
        ASSERT_TRUE(QuantizeNibblesOn(isa, in.data(), n, scratch.data(), nibbles.data(), &base_step));
        ASSERT_TRUE(QuantizeNibblesOn(DotIsa::kPortable, in.data(), n, want_scratch.data(), want_nibbles.data(),
                                      &want_base_step));
        EXPECT_EQ(nibbles, want_nibbles) << "finite " << finite;
        EXPECT_EQ(std::bit_cast<uint32_t>(base_step.first), std::bit_cast<uint32_t>(want_base_step.first));
        EXPECT_EQ(std::bit_cast<uint32_t>(base_step.second), std::bit_cast<uint32_t>(want_base_step.second));
        for (uint8_t c : nibbles) ASSERT_LE(c, 15);
      }
      // A range too narrow for a finite 1 / step (1e-38 wide): clamped to
      // the same step on every loop, codes within 0..15.
      {
        std::vector<float> narrow(n);
        for (size_t i = 0; i < n; ++i) narrow[i] = i % 3 == 0 ? 1e-38f : 0.0f;
        std::vector<float> scratch(n);
        std::vector<uint8_t> codes(n, 99), want(n, 99);
        std::pair<float, float> base_step, want_base_step;
        ASSERT_TRUE(QuantizeNibblesOn(isa, narrow.data(), n, scratch.data(), codes.data(), &base_step));
        ASSERT_TRUE(QuantizeNibblesOn(DotIsa::kPortable, narrow.data(), n, scratch.data(), want.data(), &want_base_step));
        EXPECT_EQ(codes, want);
        EXPECT_EQ(base_step, want_base_step);
        for (uint8_t c : codes) ASSERT_LE(c, 15);
      }
      for (float bar : {-1.0f, 0.0f, 2.5f, std::numeric_limits<float>::infinity()}) {
        std::vector<uint32_t> idx(n + 1), want_idx(n + 1);
        size_t count = 0, want_count = 0;
        ASSERT_TRUE(IndicesAtLeastOn(isa, x.data(), n, bar, idx.data(), &count));
        ASSERT_TRUE(IndicesAtLeastOn(DotIsa::kPortable, x.data(), n, bar, want_idx.data(), &want_count));
        ASSERT_EQ(count, want_count) << "bar " << bar;
        EXPECT_TRUE(std::equal(idx.begin(), idx.begin() + count, want_idx.begin())) << "bar " << bar;
      }
    }
  }
}

TEST(DotKernel, Int8QuantiserRoundsClampsAndIgnoresNan) {
  SCOPED_TRACE(F16KernelIsa());
  std::vector<float> x(37);
  for (size_t i = 0; i < x.size(); ++i) x[i] = (static_cast<float>(i) - 18.0f) * 0.37f;
  x[5] = std::numeric_limits<float>::quiet_NaN();
  x[20] = 9.0f;  // the peak
  x[30] = 1e9f;  // beyond the scale given below: clamped
  x[3] = -1e9f;
  EXPECT_FLOAT_EQ(MaxAbs(x.data() + 4, 20), 9.0f);  // the NaN at 5 ignored
  std::vector<int8_t> q(x.size());
  QuantizeInt8(x.data(), x.size(), 127.0f / 9.0f, q.data());
  for (size_t i = 0; i < x.size(); ++i) {
    if (i == 5) EXPECT_EQ(q[i], 0);
    else if (i == 30) EXPECT_EQ(q[i], 127);
    else if (i == 3) EXPECT_EQ(q[i], -127);
    else EXPECT_EQ(q[i], static_cast<int8_t>(std::nearbyint(x[i] * 127.0f / 9.0f))) << i;
  }
}

TEST(Router, ExactScanIsTheExactTopKForEverySummaryAndCombine) {
  for (SummaryKind kind : {SummaryKind::kMean, SummaryKind::kBound, SummaryKind::kCentroids}) {
    const Geometry g = OneStream(kind);
    const uint64_t blocks = 300;
    auto summaries = msa::testing::RandomVector(blocks * g.summary_width(), 1);
    for (float& x : summaries) x = attention::HalfToFloat(attention::FloatToHalf(x));  // the router keeps fp16
    Router router(g);
    router.Add(0, summaries);
    const int group = 3;
    auto queries = msa::testing::RandomVector(group * g.head_dim, 2);
    for (GqaCombine combine : {GqaCombine::kMax, GqaCombine::kSum}) {
      RouteOptions opts;
      opts.top_k = 10;
      opts.combine = combine;
      EXPECT_EQ(Blocks(router.Search(0, queries.data(), group, opts)),
                BruteForce(g, summaries, blocks, queries, group, combine, 10))
          << SummaryName(kind) << (combine == GqaCombine::kMax ? " max" : " sum");
    }
  }
}

TEST(Router, ScanAcrossChunksAndChannelScanAgreeWithBruteForce) {
  const Geometry g = OneStream(SummaryKind::kBound);
  const uint64_t blocks = 3000;  // three chunks of the summary table
  auto summaries = msa::testing::RandomVector(blocks * g.summary_width(), 21);
  for (float& x : summaries) x = attention::HalfToFloat(attention::FloatToHalf(x));
  // Block 2222 is a needle: its max channels follow the query's direction.
  auto q = msa::testing::RandomVector(g.head_dim, 22);
  for (uint32_t c = 0; c < g.head_dim; ++c) {
    float& mx = summaries[2222 * g.summary_width() + c];
    float& mn = summaries[2222 * g.summary_width() + g.head_dim + c];
    mx = attention::HalfToFloat(attention::FloatToHalf(q[c] > 0 ? 4 * q[c] : mx));
    mn = attention::HalfToFloat(attention::FloatToHalf(q[c] < 0 ? 4 * q[c] : mn));
  }
  Router router(g);
  router.Reserve(0, blocks);
  router.Add(0, summaries);
  RouteOptions opts;
  opts.top_k = 12;
  const auto exact = Blocks(router.Search(0, q.data(), 1, opts));
  EXPECT_EQ(exact, BruteForce(g, summaries, blocks, q, 1, GqaCombine::kMax, 12));
  EXPECT_TRUE(std::count(exact.begin(), exact.end(), 2222u));
  // Every non-zero coefficient: the same as the full scan.
  opts.channels = g.head_dim;
  EXPECT_EQ(Blocks(router.Search(0, q.data(), 1, opts)), exact);
  // A few channels: approximate, rescored exactly; the needle is still found.
  opts.channels = 8;
  RouteStats stats;
  const auto approx = router.Search(0, q.data(), 1, opts, &stats);
  EXPECT_LT(stats.scanned_fraction, 0.2);
  std::vector<uint64_t> found = Blocks(approx);
  EXPECT_TRUE(std::count(found.begin(), found.end(), 2222u));
  std::vector<float> probe(IndexVectorDim(g));
  MakeProbe(g, q.data(), probe.data());
  for (const ScoredBlock& sb : approx) {  // scores are the exact ones
    EXPECT_NEAR(sb.score, ScoreSummary(g, probe.data(), &summaries[sb.block * g.summary_width()]), 1e-3f);
  }
}

TEST(Router, HybridTakesTheBoundsAndTheMeansRankingsInTurn) {
  const Geometry g = OneStream(SummaryKind::kHybrid, 16);
  const uint32_t d = g.head_dim, width = g.summary_width();  // [max, min, mean, mean]
  ASSERT_EQ(width, 4 * d);
  const uint64_t blocks = 500;
  auto q = msa::testing::RandomVector(d, 41);
  std::vector<float> summaries(blocks * width);
  auto noise = msa::testing::RandomVector(blocks * width, 42, 0.1f);
  for (uint64_t b = 0; b < blocks; ++b) {
    for (uint32_t c = 0; c < d; ++c) {
      float* row = &summaries[b * width];
      row[c] = 2.0f + noise[b * width + c];           // max
      row[d + c] = -2.0f + noise[b * width + d + c];  // min
      row[2 * d + c] = row[3 * d + c] = noise[b * width + 2 * d + c];  // mean
    }
  }
  // Block 100: a sharp token lifts its bound; block 300: its mean follows q.
  for (uint32_t c = 0; c < d; ++c) {
    float* sharp = &summaries[100 * width];
    if (q[c] > 0) sharp[c] = 6.0f; else sharp[d + c] = -6.0f;
    float* spread = &summaries[300 * width];
    spread[2 * d + c] = spread[3 * d + c] = 0.8f * q[c];
  }
  for (float& x : summaries) x = attention::HalfToFloat(attention::FloatToHalf(x));
  Router router(g);
  router.Add(0, summaries);
  RouteOptions opts;
  opts.top_k = 2;
  EXPECT_EQ(Blocks(router.Search(0, q.data(), 1, opts)), (std::vector<uint64_t>{100, 300}));
  // The bound alone would rank block 100 first and never reach block 300.
  opts.top_k = 1;
  EXPECT_EQ(Blocks(router.Search(0, q.data(), 1, opts)), (std::vector<uint64_t>{100}));
}

// Past RouteSketch::kRunBlocks the approximate scan reads the 8-bit sketch
// for whole runs and the fp16 table for the rest: needles are found in
// both, by both hybrid rankings, with exact scores.
TEST(Router, SketchScanFindsNeedlesInWholeRunsAndInTheTail) {
  const Geometry g = OneStream(SummaryKind::kHybrid, 32);
  const uint32_t d = g.head_dim, width = g.summary_width();
  const uint64_t blocks = 2 * 4096 + 1000;
  auto noise = msa::testing::RandomVector(blocks * width, 51, 0.5f);
  std::vector<float> summaries(blocks * width);
  for (uint64_t b = 0; b < blocks; ++b) {
    float* row = &summaries[b * width];
    for (uint32_t c = 0; c < d; ++c) {
      row[c] = 2.0f + noise[b * width + c];
      row[d + c] = -2.0f - noise[b * width + d + c];
      row[2 * d + c] = row[3 * d + c] = 0.3f * noise[b * width + 2 * d + c];
    }
  }
  const int group = 2;
  auto q = msa::testing::RandomVector(group * d, 52);
  for (uint32_t c = 0; c < d; ++c) q[d + c] = 0.7f * q[c] + 0.3f * q[d + c];  // heads of a group agree, roughly
  // Sharp tokens (the bound) in run 0 and in the tail; a spread span (the
  // mean) in run 1.
  for (uint64_t needle : {1234ull, 8500ull}) {
    for (uint32_t c = 0; c < d; ++c) {
      float* row = &summaries[needle * width];
      if (q[c] > 0) row[c] = 2.0f + 3.0f * q[c]; else row[d + c] = -2.0f + 3.0f * q[c];
    }
  }
  for (uint32_t c = 0; c < d; ++c) summaries[5000 * width + 2 * d + c] = summaries[5000 * width + 3 * d + c] = 1.5f * q[c];
  for (float& x : summaries) x = attention::HalfToFloat(attention::FloatToHalf(x));
  Router router(g);
  router.Reserve(0, blocks);
  router.Add(0, summaries);
  RouteOptions opts;
  opts.top_k = 8;
  opts.channels = 8;
  RouteStats stats;
  const auto found = router.Search(0, q.data(), group, opts, &stats);
  EXPECT_EQ(stats.sketch_blocks, 2u * 4096);
  const auto ids = Blocks(found);
  for (uint64_t needle : {1234ull, 5000ull, 8500ull}) EXPECT_TRUE(std::count(ids.begin(), ids.end(), needle)) << needle;
  std::vector<float> probe(IndexVectorDim(g));
  for (const ScoredBlock& sb : found) {
    float best = -std::numeric_limits<float>::infinity();
    for (int h = 0; h < group; ++h) {
      MakeProbe(g, &q[h * d], probe.data());
      best = std::max(best, Dot(probe.data(), &summaries[sb.block * width + sb.ranking * 2 * d], 2 * d));
    }
    EXPECT_NEAR(sb.score, best, 1e-3f * (std::abs(best) + 1)) << sb.block;
  }
  // The exact scan agrees on the needles.
  opts.channels = 0;
  opts.exact_scan = true;
  const auto exact = Blocks(router.Search(0, q.data(), group, opts, &stats));
  EXPECT_EQ(stats.sketch_blocks, 0u);
  EXPECT_EQ(stats.channels, 0u);
  for (uint64_t needle : {1234ull, 5000ull, 8500ull}) EXPECT_TRUE(std::count(exact.begin(), exact.end(), needle)) << needle;
  // By default a stream this large is routed approximately; a smaller one,
  // or one whose router sets a higher bar, exactly.
  opts.exact_scan = false;
  EXPECT_EQ(Blocks(router.Search(0, q.data(), group, opts, &stats)), exact);
  EXPECT_EQ(stats.channels, 0u);  // 9,192 blocks: below the default bar of 65,536
  RouterOptions low;
  low.approximate_min_blocks = 8192;
  low.approximate_channels_per_head = 4;
  Router eager(g, low);
  eager.Add(0, summaries);
  EXPECT_EQ(Blocks(eager.Search(0, q.data(), group, opts, &stats)), ids);
  EXPECT_EQ(stats.channels, 8u);  // 4 per head, 2 heads
  EXPECT_EQ(stats.sketch_blocks, 2u * 4096);
}

// Every summary kind through the sketch (whole runs: byte columns, the
// bound's packed ones) and the fp16 tail: blocks planted to stand out for
// the group's queries are found by an approximate scan in both parts, with
// their exact scores, as by the exact scan.
TEST(Router, ApproximateScanOfEveryKindFindsPlantedBlocksInRunsAndTail) {
  for (SummaryKind kind : {SummaryKind::kMean, SummaryKind::kBound, SummaryKind::kCentroids, SummaryKind::kHybrid}) {
    SCOPED_TRACE(static_cast<int>(kind));
    Geometry g = OneStream(kind, 32);
    g.summary_centroids = 2;
    const uint32_t d = g.head_dim, dim = IndexVectorDim(g), per_block = IndexVectorsPerBlock(g);
    const uint32_t width = g.summary_width();
    ASSERT_EQ(width, per_block * dim);
    const uint64_t blocks = 2 * 4096 + 700;
    const int group = 4;
    auto q = msa::testing::RandomVector(group * d, 61);
    for (int h = 1; h < group; ++h) {
      for (uint32_t c = 0; c < d; ++c) q[h * d + c] = 0.6f * q[c] + 0.4f * q[h * d + c];
    }
    auto noise = msa::testing::RandomVector(blocks * width, 62, 0.4f);
    std::vector<float> summaries(blocks * width);
    const std::vector<uint64_t> planted = {100, 4095, 4096, 6000, 8191, 8192 + 3, 8192 + 699};
    for (uint64_t b = 0; b < blocks; ++b) {
      const bool needle = std::count(planted.begin(), planted.end(), b) > 0;
      for (uint32_t j = 0; j < per_block; ++j) {
        float* v = &summaries[b * width + j * dim];
        const bool bound_vector = (kind == SummaryKind::kBound || kind == SummaryKind::kHybrid) && j == 0;
        for (uint32_t c = 0; c < d; ++c) {
          const float aligned = 2.5f * q[c];
          if (bound_vector) {
            v[c] = 2.0f + std::abs(noise[b * width + j * dim + c]);
            v[d + c] = -2.0f - std::abs(noise[b * width + j * dim + d + c]);
            if (needle && q[c] > 0) v[c] = 2.0f + 2.0f * aligned;
            if (needle && q[c] < 0) v[d + c] = -2.0f + 2.0f * aligned;
          } else {
            v[c] = needle ? aligned : noise[b * width + j * dim + c];
            if (dim == 2 * d) v[d + c] = v[c];  // the hybrid's [mean, mean]
          }
        }
      }
    }
    for (float& x : summaries) x = attention::HalfToFloat(attention::FloatToHalf(x));
    Router router(g);
    router.Reserve(0, blocks);
    router.Add(0, summaries);
    RouteOptions opts;
    opts.top_k = static_cast<uint32_t>(planted.size());
    opts.exact_scan = true;
    const auto exact = Blocks(router.Search(0, q.data(), group, opts));
    opts.exact_scan = false;
    for (uint32_t channels : {8u, 16u, 32u}) {
      opts.channels = channels;
      RouteStats stats;
      const auto found = router.Search(0, q.data(), group, opts, &stats);
      EXPECT_EQ(stats.sketch_blocks, 2u * 4096);
      const auto ids = Blocks(found);
      for (uint64_t b : planted) {
        EXPECT_TRUE(std::count(ids.begin(), ids.end(), b)) << "block " << b << " channels " << channels;
        EXPECT_TRUE(std::count(exact.begin(), exact.end(), b)) << "block " << b << " (exact scan)";
      }
      // Scores are the exact ones (the max over heads of the ranking's vectors).
      for (const ScoredBlock& sb : found) {
        const float best = ExactGroupScore(g, q.data(), group, summaries, sb);
        EXPECT_NEAR(sb.score, best, 1e-3f * (std::abs(best) + 1)) << sb.block;
      }
    }
  }
}

// Coarse-to-fine: groups of 16 blocks are ranked first, from their own
// sketch run and their fp16 tail, then only the chosen groups' blocks and
// the blocks after the last whole group are scanned. Planted blocks in
// every one of those places are found, with exact scores, whether the
// summaries came block by block or as saved chunks; and the step stays out
// of the scans it does not apply to.
TEST(Router, CoarseToFineFindsPlantedBlocksInGroupRunsGroupTailAndBlockTail) {
  for (SummaryKind kind : {SummaryKind::kMean, SummaryKind::kBound, SummaryKind::kHybrid, SummaryKind::kCentroids}) {
    SCOPED_TRACE(static_cast<int>(kind));
    Geometry g = OneStream(kind, 32);
    g.summary_centroids = 2;
    const uint32_t d = g.head_dim, dim = IndexVectorDim(g), per_block = IndexVectorsPerBlock(g);
    const uint32_t width = g.summary_width();
    const uint64_t group_blocks = 16;
    const uint64_t blocks = group_blocks * (4096 + 300) + 9;  // a run of groups, a group tail, a block tail
    const int group = 4;
    auto q = msa::testing::RandomVector(group * d, 71);
    for (int h = 1; h < group; ++h) {
      for (uint32_t c = 0; c < d; ++c) q[h * d + c] = 0.6f * q[c] + 0.4f * q[h * d + c];
    }
    auto noise = msa::testing::RandomVector(blocks * width, 72, 0.4f);
    std::vector<float> summaries(blocks * width);
    // The bound's planted blocks stand out in one half of [max, min] each
    // (the first two in the min half only), so a group summary that merged
    // either half the wrong way would lose them.
    const std::vector<uint64_t> planted = {100, 16 * 4095 + 15, 16 * 4096 + 5, blocks - 1};
    for (uint64_t b = 0; b < blocks; ++b) {
      const bool needle = std::count(planted.begin(), planted.end(), b) > 0;
      const bool min_only = b == planted[0] || b == planted[1];
      for (uint32_t j = 0; j < per_block; ++j) {
        float* v = &summaries[b * width + j * dim];
        const bool bound_vector = (kind == SummaryKind::kBound || kind == SummaryKind::kHybrid) && j == 0;
        for (uint32_t c = 0; c < d; ++c) {
          const float aligned = 2.5f * q[c];
          if (bound_vector) {
            v[c] = 2.0f + std::abs(noise[b * width + j * dim + c]);
            v[d + c] = -2.0f - std::abs(noise[b * width + j * dim + d + c]);
            if (needle && !min_only && q[c] > 0) v[c] = 2.0f + 4.0f * aligned;
            if (needle && q[c] < 0) v[d + c] = -2.0f + 4.0f * aligned;
          } else {
            v[c] = needle ? aligned : noise[b * width + j * dim + c];
            if (dim == 2 * d) v[d + c] = v[c];  // the hybrid's [mean, mean]
          }
        }
      }
    }
    for (float& x : summaries) x = attention::HalfToFloat(attention::FloatToHalf(x));
    RouterOptions ro;
    ro.coarse_group_blocks = group_blocks;
    ro.coarse_channel_divisor = 1;  // the planted blocks stand out on every channel
    Router router(g, ro);
    router.Reserve(0, blocks);
    router.Add(0, summaries);
    // The same summaries arriving as an open brings them: whole saved
    // chunks, then the rest block by block.
    Router reopened(g, ro);
    const SummaryTable& table = router.summaries(0);
    const size_t whole_chunks = blocks / SummaryTable::kChunkBlocks;
    std::vector<uint16_t> chunk_data;
    for (size_t c = 0; c < whole_chunks; ++c) {
      chunk_data.insert(chunk_data.end(), table.ChunkData(c), table.ChunkData(c) + table.chunk_bytes() / 2);
    }
    reopened.AddChunks(0, chunk_data.data(), whole_chunks);
    const uint64_t rest = whole_chunks * SummaryTable::kChunkBlocks;
    reopened.Add(0, std::span<const float>(summaries).subspan(rest * width));
    // And block by block in batches of 7 (groups straddle the batches,
    // and start mid-chunk).
    Router trickled(g, ro);
    for (uint64_t b = 0; b < blocks; b += 7) {
      const uint64_t n = std::min<uint64_t>(7, blocks - b);
      trickled.Add(0, std::span<const float>(summaries).subspan(b * width, n * width));
    }

    RouteOptions opts;
    opts.top_k = static_cast<uint32_t>(planted.size());
    opts.channels = 16;
    opts.coarse_groups = 3;  // the three planted whole groups, no room to spare
    RouteStats stats;
    const auto found = router.Search(0, q.data(), group, opts, &stats);
    if (kind == SummaryKind::kCentroids) {
      EXPECT_EQ(stats.coarse_groups, 0u) << "centroids have no group summary";
      continue;
    }
    EXPECT_EQ(stats.coarse_groups, 3u);
    EXPECT_EQ(stats.sketch_blocks, 0u) << "the fine scan is restricted to the groups (no sketch runs)";
    EXPECT_EQ(Blocks(found), planted);
    for (const ScoredBlock& sb : found) {
      const float best = ExactGroupScore(g, q.data(), group, summaries, sb);
      EXPECT_NEAR(sb.score, best, 1e-3f * (std::abs(best) + 1)) << sb.block;
    }
    for (const Router* other : {&reopened, &trickled}) {
      RouteStats other_stats;
      const auto again = other->Search(0, q.data(), group, opts, &other_stats);
      ASSERT_EQ(again.size(), found.size());
      for (size_t i = 0; i < found.size(); ++i) {
        EXPECT_EQ(again[i].block, found[i].block);
        EXPECT_EQ(again[i].score, found[i].score);
      }
      EXPECT_EQ(other_stats.coarse_groups, 3u);
    }

    // Where the step does not apply, nothing is coarse.
    auto coarse_groups_of = [&](RouteOptions o, const Router& r) {
      RouteStats st;
      r.Search(0, q.data(), group, o, &st);
      return st.coarse_groups;
    };
    RouteOptions off = opts;
    off.coarse_groups = RouteOptions::kNoCoarse;
    EXPECT_EQ(coarse_groups_of(off, router), 0u);
    off = opts;
    off.exact_scan = true;
    EXPECT_EQ(coarse_groups_of(off, router), 0u);
    off = opts;
    const std::vector<std::pair<uint64_t, uint64_t>> ranges = {{0, 1000}};
    off.ranges = &ranges;
    EXPECT_EQ(coarse_groups_of(off, router), 0u);
    off = opts;
    off.coarse_groups = 4396;  // every group: no cheaper than the flat scan
    EXPECT_EQ(coarse_groups_of(off, router), 0u);
    off = opts;
    off.coarse_groups = 0;  // the default: only from RouterOptions::coarse_min_blocks
    EXPECT_EQ(coarse_groups_of(off, router), 0u);
    RouterOptions low = ro;
    low.coarse_min_blocks = blocks;
    Router by_default(g, low);
    by_default.Reserve(0, blocks);
    by_default.Add(0, summaries);
    EXPECT_EQ(coarse_groups_of(off, by_default), low.coarse_groups_per_top_k * opts.top_k);
    // Without group summaries (the default router) a query's ask changes nothing.
    Router plain(g);
    plain.Reserve(0, blocks);
    plain.Add(0, summaries);
    EXPECT_EQ(coarse_groups_of(opts, plain), 0u);
    EXPECT_EQ(Blocks(plain.Search(0, q.data(), group, opts)), planted);
  }
}

// Scan threads cut an approximate scan's sketch runs into parts scored at
// once and merge their best blocks; the answer must be the one thread's,
// blocks, scores and rankings alike. Summaries and queries are small
// integers, so scores tie often: a part that dropped a tie at the shared
// bar, or a merge that broke ties another way, would change the answer.
// The coarse step's own sketch scan (groups of 4: two runs of groups) is
// covered too.
TEST(Router, ScanThreadsGiveTheOneThreadAnswer) {
  for (SummaryKind kind : {SummaryKind::kMean, SummaryKind::kBound, SummaryKind::kHybrid, SummaryKind::kCentroids}) {
    SCOPED_TRACE(static_cast<int>(kind));
    Geometry g = OneStream(kind, 32);
    g.summary_centroids = 2;
    const uint64_t blocks = 9 * 4096 + 300;  // nine runs and a tail
    std::mt19937 rng(81);
    std::uniform_int_distribution<int> small(-3, 3);
    std::vector<float> summaries(blocks * g.summary_width());
    for (float& x : summaries) x = static_cast<float>(small(rng));
    const int group = 4;
    std::vector<float> q(group * g.head_dim);
    for (float& x : q) x = static_cast<float>(small(rng) % 3);
    auto router_with = [&](uint32_t scan_threads, uint32_t coarse_group_blocks) {
      RouterOptions ro;
      ro.scan_threads = scan_threads;
      ro.approximate_min_blocks = 4096;
      ro.coarse_group_blocks = coarse_group_blocks;
      ro.coarse_min_blocks = UINT64_MAX;  // only where a query asks
      auto router = std::make_unique<Router>(g, ro);
      router->Reserve(0, blocks);
      router->Add(0, summaries);
      return router;
    };
    const auto one = router_with(0, 4);
    for (uint32_t threads : {1u, 3u}) {
      const auto many = router_with(threads, 4);
      for (GqaCombine combine : {GqaCombine::kMax, GqaCombine::kSum}) {
        for (uint32_t channels : {0u, 8u}) {
          for (uint32_t coarse : {RouteOptions::kNoCoarse, 64u}) {
            SCOPED_TRACE(::testing::Message() << "threads " << threads << " combine " << static_cast<int>(combine)
                                            << " channels " << channels << " coarse " << coarse);
            RouteOptions opts;
            opts.top_k = 6;
            opts.candidates = 9;
            opts.combine = combine;
            opts.channels = channels;
            opts.coarse_groups = coarse;
            RouteStats want_stats, got_stats;
            const auto want = one->Search(0, q.data(), group, opts, &want_stats);
            const auto got = many->Search(0, q.data(), group, opts, &got_stats);
            EXPECT_EQ(got_stats.sketch_blocks, want_stats.sketch_blocks);
            EXPECT_EQ(got_stats.coarse_groups, want_stats.coarse_groups);
            // Flat: the blocks' sketch; coarse: the groups' (the fine step
            // then scans the chosen groups' blocks from fp16). Centroids
            // have no group summaries, so no coarse step.
            if (coarse == RouteOptions::kNoCoarse || kind == SummaryKind::kCentroids) {
              ASSERT_GT(want_stats.sketch_blocks, 0u);
            } else {
              ASSERT_GT(want_stats.coarse_groups, 0u);
            }
            ASSERT_EQ(got.size(), want.size());
            for (size_t i = 0; i < want.size(); ++i) {
              EXPECT_EQ(got[i].block, want[i].block) << i;
              EXPECT_EQ(got[i].score, want[i].score) << i;
              EXPECT_EQ(got[i].ranking, want[i].ranking) << i;
            }
          }
        }
      }
    }
  }
}

TEST(Router, IvfFindsWhatTheExactScanFinds) {
  for (SummaryKind kind : {SummaryKind::kMean, SummaryKind::kBound}) {
    const Geometry g = OneStream(kind);
    RouterOptions ro;
    ro.ivf_min_vectors = 4000;
    Router router(g, ro);
    std::shared_mutex mu;
    const uint64_t blocks = 6000;
    // Clustered summaries, as real keys are: an IVF over uniform noise is a
    // worst case no one meets.
    auto centers = msa::testing::RandomVector(50 * g.summary_width(), 3, 3.0f);
    auto noise = msa::testing::RandomVector(blocks * g.summary_width(), 4);
    std::vector<float> summaries(blocks * g.summary_width());
    for (uint64_t b = 0; b < blocks; ++b)
      for (uint32_t c = 0; c < g.summary_width(); ++c)
        summaries[b * g.summary_width() + c] = centers[(b % 50) * g.summary_width() + c] + noise[b * g.summary_width() + c];
    router.Add(0, std::span<const float>(summaries.data(), 3000 * g.summary_width()));
    EXPECT_FALSE(router.RefreshIndex(0, mu));  // below the threshold: exact scan
    router.Add(0, std::span<const float>(summaries.data() + 3000 * g.summary_width(), 3000 * g.summary_width()));
    ASSERT_TRUE(router.RefreshIndex(0, mu));
    ASSERT_TRUE(router.has_ivf(0));
    double hits = 0, total = 0;
    for (uint64_t seed = 0; seed < 20; ++seed) {
      auto q = msa::testing::RandomVector(2 * g.head_dim, 50 + seed);
      RouteOptions opts;
      opts.top_k = 16;
      RouteStats stats;
      const auto ivf = Blocks(router.Search(0, q.data(), 2, opts, &stats));
      EXPECT_TRUE(stats.used_ivf);
      EXPECT_LT(stats.scanned_fraction, 0.5);
      opts.exact_scan = true;
      const auto exact = Blocks(router.Search(0, q.data(), 2, opts));
      std::set<uint64_t> truth(exact.begin(), exact.end());
      for (uint64_t b : ivf) hits += truth.count(b);
      total += exact.size();
      // Every list probed: the IVF's candidates, rescored exactly, are the exact answer.
      opts.exact_scan = false;
      opts.nprobe = 1u << 20;
      EXPECT_EQ(Blocks(router.Search(0, q.data(), 2, opts)), exact) << SummaryName(kind);
    }
    EXPECT_GE(hits / total, 0.9) << SummaryName(kind);
  }
}

TEST(Router, StoreKeepsItsSummaryKindAcrossReopen) {
  msa::testing::TempDir dir;
  Geometry g = OneStream(SummaryKind::kBound, 16);
  g.block_tokens = 8;
  const uint64_t tokens = 80;
  auto keys = msa::testing::RandomVector(tokens * g.head_dim, 5);
  auto values = msa::testing::RandomVector(tokens * g.head_dim, 6);
  auto q = msa::testing::RandomVector(g.head_dim, 7);
  std::vector<std::vector<uint64_t>> before, after;
  std::vector<float> out(g.head_dim);
  AttendOptions opts;
  opts.top_k = 3;
  {
    auto s = Store::Create(dir.Sub("store"), g);
    ASSERT_TRUE(s.ok()) << s.status().ToString();
    ASSERT_TRUE((*s)->AppendDocument("d", DocumentKV{keys.data(), values.data(), tokens}).ok());
    ASSERT_TRUE((*s)->Commit().ok());
    ASSERT_TRUE((*s)->Attend(0, q.data(), 1, 1, opts, out.data(), nullptr, nullptr, &before).ok());
  }
  auto s = Store::Open(dir.Sub("store"));
  ASSERT_TRUE(s.ok()) << s.status().ToString();
  EXPECT_EQ((*s)->geometry().summary, SummaryKind::kBound);
  ASSERT_TRUE((*s)->Attend(0, q.data(), 1, 1, opts, out.data(), nullptr, nullptr, &after).ok());
  EXPECT_EQ(before, after);
}

TEST(Router, IndexFileIsSavedLoadedCaughtUpAndRebuiltWhenDamaged) {
  msa::testing::TempDir dir;
  Geometry g = OneStream(SummaryKind::kMean, 16);
  g.block_tokens = 4;
  StoreOptions so;
  so.router.ivf_min_vectors = 256;
  auto doc = [&](uint64_t tokens, uint64_t seed) {
    return std::make_pair(msa::testing::RandomVector(tokens * g.head_dim, seed),
                          msa::testing::RandomVector(tokens * g.head_dim, seed + 1));
  };
  auto a = doc(2000, 1), b = doc(40, 3);
  auto q = msa::testing::RandomVector(2 * g.head_dim, 9);
  AttendOptions opts;
  opts.top_k = 8;
  opts.nprobe = 4;
  std::vector<float> out(2 * g.head_dim);
  auto select = [&](Store& s) {
    std::vector<std::vector<uint64_t>> sel;
    EXPECT_TRUE(s.Attend(0, q.data(), 1, 2, opts, out.data(), nullptr, nullptr, &sel).ok());
    return sel;
  };
  std::vector<std::vector<uint64_t>> before;
  {
    auto s = Store::Create(dir.Sub("store"), g, so);
    ASSERT_TRUE(s.ok());
    ASSERT_TRUE((*s)->AppendDocument("a", DocumentKV{a.first.data(), a.second.data(), 2000}).ok());
    ASSERT_TRUE((*s)->Commit().ok());
    EXPECT_EQ((*s)->Stats().ivf_streams, 1u);
    // A small document: the index is caught up in memory, not saved again.
    ASSERT_TRUE((*s)->AppendDocument("b", DocumentKV{b.first.data(), b.second.data(), 40}).ok());
    ASSERT_TRUE((*s)->Commit().ok());
    before = select(**s);
  }
  const std::string file = dir.Sub("store/router/0.1.ivf");
  ASSERT_TRUE(std::filesystem::exists(file));
  {
    auto s = Store::Open(dir.Sub("store"), so);  // loads the file and adds block 500..509
    ASSERT_TRUE(s.ok()) << s.status().ToString();
    EXPECT_EQ((*s)->Stats().ivf_streams, 1u);
    EXPECT_EQ(select(**s), before);
  }
  // Damaged, then missing: the store still opens, rebuilds the index from
  // the catalog's summaries and saves it under a new generation.
  for (const bool remove : {false, true}) {
    const std::string current = remove ? dir.Sub("store/router/0.2.ivf") : file;
    ASSERT_TRUE(std::filesystem::exists(current)) << current;
    if (remove) {
      std::filesystem::remove(current);
    } else {
      std::fstream f(current, std::ios::in | std::ios::out | std::ios::binary);
      f.seekp(100);
      f.put('\x5a');
    }
    auto s = Store::Open(dir.Sub("store"), so);
    ASSERT_TRUE(s.ok()) << s.status().ToString();
    EXPECT_EQ((*s)->Stats().ivf_streams, 1u);
    // Every list probed, the routed blocks are the exact top k.
    AttendOptions all = opts;
    all.nprobe = 1u << 20;
    AttendOptions scan = opts;
    scan.exact_routing = true;
    std::vector<std::vector<uint64_t>> x, y;
    ASSERT_TRUE((*s)->Attend(0, q.data(), 1, 2, all, out.data(), nullptr, nullptr, &x).ok());
    ASSERT_TRUE((*s)->Attend(0, q.data(), 1, 2, scan, out.data(), nullptr, nullptr, &y).ok());
    EXPECT_EQ(x, y);
  }
  EXPECT_TRUE(std::filesystem::exists(dir.Sub("store/router/0.3.ivf")));
  EXPECT_FALSE(std::filesystem::exists(file));
}

// Table memory: anonymous regions start zeroed and big ones sit on 2 MiB
// boundaries (where a huge page can back them); a mapped file reads as its
// bytes, and a file of the wrong size is refused naming it.
TEST(TableMemory, RegionsAreZeroedAlignedAndFilesMapAsTheirBytes) {
  for (size_t bytes : {size_t{1}, size_t{5000}, TableMemory::kHugePage + 1}) {
    TableMemory m(bytes);
    ASSERT_GE(m.bytes(), bytes);
    EXPECT_EQ(std::count(m.data(), m.data() + m.bytes(), uint8_t{0}), static_cast<std::ptrdiff_t>(m.bytes()));
    if (bytes >= TableMemory::kHugePage) EXPECT_EQ(reinterpret_cast<uintptr_t>(m.data()) % TableMemory::kHugePage, 0u);
    m.data()[bytes - 1] = 7;  // writable
    TableMemory moved = std::move(m);
    EXPECT_EQ(moved.data()[bytes - 1], 7);
    EXPECT_EQ(m.data(), nullptr);
  }
  msa::testing::TempDir dir;
  const std::string file = dir.Sub("piece");
  std::vector<uint8_t> bytes(10000);
  for (size_t i = 0; i < bytes.size(); ++i) bytes[i] = static_cast<uint8_t>(i * 31 + 5);
  std::ofstream(file, std::ios::binary).write(reinterpret_cast<const char*>(bytes.data()), bytes.size());
  std::vector<uint8_t> seen;  // what the read-through gave, in order
  auto mapped = TableMemory::MapFile(file, bytes.size(),
                                     [&](const uint8_t* data, size_t n) { seen.insert(seen.end(), data, data + n); });
  ASSERT_TRUE(mapped.ok()) << mapped.status().ToString();
  ASSERT_EQ(mapped->bytes(), bytes.size());
  EXPECT_TRUE(std::equal(bytes.begin(), bytes.end(), mapped->data()));
  EXPECT_EQ(seen, bytes);
  auto ignore = [](const uint8_t*, size_t) {};
  for (size_t expected : {bytes.size() + 1, bytes.size() - 1}) {
    auto wrong = TableMemory::MapFile(file, expected, ignore);
    ASSERT_FALSE(wrong.ok());
    EXPECT_EQ(wrong.status().code(), Status::Code::kCorruption);
    EXPECT_NE(wrong.status().message().find(file), std::string::npos) << wrong.status().ToString();
    EXPECT_NE(wrong.status().message().find(expected > bytes.size() ? "truncated" : "too long"), std::string::npos)
        << wrong.status().ToString();
  }
  EXPECT_EQ(TableMemory::MapFile(dir.Sub("missing"), 1, ignore).status().code(), Status::Code::kNotFound);
}

// A table built from mapped chunks (as open builds it from saved pieces)
// holds the same values as one built by appending, and grows on from there.
TEST(SummaryTable, MappedChunksReadAsAppendedOnesAndTheTableGrowsOn) {
  const uint32_t per_block = 2, dim = 8;
  const size_t blocks = 3 * SummaryTable::kChunkBlocks + 5, width = per_block * dim;
  std::vector<float> rows(blocks * width);
  for (size_t i = 0; i < rows.size(); ++i) rows[i] = static_cast<float>(i % 251) - 100.0f;
  SummaryTable appended(per_block, dim);
  appended.Append(rows.data(), blocks);
  msa::testing::TempDir dir;
  const std::string file = dir.Sub("piece");
  {
    std::ofstream out(file, std::ios::binary);
    for (size_t c = 0; c < 2; ++c) out.write(reinterpret_cast<const char*>(appended.ChunkData(c)), appended.chunk_bytes());
  }
  SummaryTable mapped(per_block, dim);
  mapped.Reserve(blocks);  // reserved chunks the mapping then stands in for
  auto memory = TableMemory::MapFile(file, 2 * appended.chunk_bytes(), [](const uint8_t*, size_t) {});
  ASSERT_TRUE(memory.ok()) << memory.status().ToString();
  mapped.AppendMappedChunks(std::move(memory).value());
  ASSERT_EQ(mapped.blocks(), 2 * SummaryTable::kChunkBlocks);
  const size_t rest = blocks - mapped.blocks();
  mapped.Append(rows.data() + mapped.blocks() * width, rest);
  ASSERT_EQ(mapped.blocks(), blocks);
  std::vector<float> a(blocks * width), b(blocks * width);
  appended.Rows(0, blocks, a.data());
  mapped.Rows(0, blocks, b.data());
  EXPECT_EQ(a, b);
}

// Summary pieces (StoreOptions::summary_piece_blocks): commits save each
// completed run of 128 blocks per stream to a file; opening reads those and
// only the rest from the catalog, routing exactly as before; a damaged or
// missing piece falls back to the catalog and is saved again by the next
// writable open.
TEST(Router, SummaryPiecesAreSavedLoadedAndReplacedWhenDamaged) {
  msa::testing::TempDir dir;
  Geometry g = OneStream(SummaryKind::kHybrid, 16);
  g.kv_heads = 2;
  g.block_tokens = 4;
  StoreOptions so;
  so.summary_piece_blocks = 100;  // rounded up to 128
  auto doc = [&](uint64_t tokens, uint64_t seed) {
    return std::make_pair(msa::testing::RandomVector(2 * tokens * g.head_dim, seed),
                          msa::testing::RandomVector(2 * tokens * g.head_dim, seed + 1));
  };
  // 300 + 250 blocks per stream: pieces [0,128) and [128,256) after the
  // first commit, [256,384) and [384,512) after the second; 38 left over.
  auto a = doc(1200, 1), b = doc(1000, 3);
  auto q = msa::testing::RandomVector(4 * g.head_dim, 9);
  AttendOptions opts;
  opts.top_k = 6;
  std::vector<float> out(4 * g.head_dim);
  auto answer = [&](Store& s) {
    std::vector<std::vector<uint64_t>> sel;
    EXPECT_TRUE(s.Attend(0, q.data(), 1, 4, opts, out.data(), nullptr, nullptr, &sel).ok());
    return std::make_pair(sel, out);
  };
  decltype(answer(std::declval<Store&>())) before;
  {
    auto s = Store::Create(dir.Sub("store"), g, so);
    ASSERT_TRUE(s.ok());
    ASSERT_TRUE((*s)->AppendDocument("a", DocumentKV{a.first.data(), a.second.data(), 1200}).ok());
    ASSERT_TRUE((*s)->Commit().ok());
    EXPECT_EQ((*s)->Stats().summary_piece_blocks, 2u * 256);
    ASSERT_TRUE((*s)->AppendDocument("b", DocumentKV{b.first.data(), b.second.data(), 1000}).ok());
    ASSERT_TRUE((*s)->Commit().ok());
    EXPECT_EQ((*s)->Stats().summary_piece_blocks, 2u * 512);
    before = answer(**s);
  }
  for (uint32_t stream : {0u, 1u}) {
    for (uint64_t first : {0, 128, 256, 384}) {
      EXPECT_TRUE(std::filesystem::exists(dir.Sub("store/summaries/" + std::to_string(stream) + "." +
                                                  std::to_string(first) + ".f16")));
    }
  }
  StoreOptions ro = so;
  ro.read_only = true;
  {
    auto s = Store::Open(dir.Sub("store"), ro);
    ASSERT_TRUE(s.ok()) << s.status().ToString();
    EXPECT_EQ((*s)->Stats().summary_piece_blocks, 2u * 512);  // loaded from the pieces
    EXPECT_EQ(answer(**s), before);
  }
  // A flipped byte in stream 1's second piece: that stream reads [128, 550)
  // from the catalog; the answers stay the same.
  const std::string damaged = dir.Sub("store/summaries/1.128.f16");
  std::vector<char> original;
  {
    std::ifstream in(damaged, std::ios::binary);
    original.assign(std::istreambuf_iterator<char>(in), {});
    std::fstream f(damaged, std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(1000);
    f.put(static_cast<char>(original[1000] ^ 0x20));
  }
  {
    auto s = Store::Open(dir.Sub("store"), ro);
    ASSERT_TRUE(s.ok()) << s.status().ToString();
    EXPECT_EQ((*s)->Stats().summary_piece_blocks, 512u + 128);
    EXPECT_EQ(answer(**s), before);
  }
  // A writable open saves it again, whole; then a missing piece, likewise.
  {
    auto s = Store::Open(dir.Sub("store"), so);
    ASSERT_TRUE(s.ok()) << s.status().ToString();
    EXPECT_EQ((*s)->Stats().summary_piece_blocks, 2u * 512);
    EXPECT_EQ(answer(**s), before);
  }
  {
    std::ifstream in(damaged, std::ios::binary);
    EXPECT_TRUE(std::vector<char>(std::istreambuf_iterator<char>(in), {}) == original);
  }
  std::filesystem::remove(dir.Sub("store/summaries/0.0.f16"));
  {
    auto s = Store::Open(dir.Sub("store"), ro);
    ASSERT_TRUE(s.ok()) << s.status().ToString();
    EXPECT_EQ((*s)->Stats().summary_piece_blocks, 512u);  // stream 0 all from the catalog
    EXPECT_EQ(answer(**s), before);
  }
}

}  // namespace
}  // namespace msa
