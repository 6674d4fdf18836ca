// CPU sparse attention against the float64 dense reference.
#include <gtest/gtest.h>

#include <cmath>

#include "attention/half.h"
#include "attention/sparse_attention_cpu.h"
#include "test_util.h"

namespace msa::attention {
namespace {

TEST(Half, RoundTripsEveryHalfValue) {
  for (uint32_t bits = 0; bits < 65536; ++bits) {
    const float f = HalfToFloat(static_cast<uint16_t>(bits));
    if (std::isnan(f)) continue;
    ASSERT_EQ(FloatToHalf(f), bits) << bits;
  }
  std::vector<float> xs = msa::testing::RandomVector(1001, 3, 100.0f);
  std::vector<uint16_t> bulk(xs.size());
  FloatToHalfArray(xs.data(), bulk.data(), xs.size());
  for (size_t i = 0; i < xs.size(); ++i) ASSERT_EQ(bulk[i], FloatToHalf(xs[i])) << xs[i];
}

// Full selection over odd sizes, GQA 6 -> 2, partial last block, through
// the portable loops and the AVX2 + FMA ones (where the CPU has them), head
// dims that exercise every part of the vector loops (16-wide steps, an
// 8-wide step, a scalar tail). The float32 path's error bound: each score
// carries ~d ulps of float32 rounding, the softmax and weighted sum ~tokens
// ulps; 1e-4 relative is far above that for these sizes and far below any
// real bug (a wrong head or token is O(1)).
TEST(SparseAttentionCpu, MatchesDenseReferenceWithGqa) {
  for (const int d : {40, 13, 136}) {
    for (const bool avx2 : {false, true}) {
      SCOPED_TRACE(::testing::Message() << "head_dim " << d << (avx2 ? " avx2" : " portable"));
      const int n = 3, qh = 6, kvh = 2, bt = 13, blocks = 7, last_len = 5;
      const int tokens = (blocks - 1) * bt + last_len;
      auto k = msa::testing::RandomVector(static_cast<size_t>(kvh) * blocks * bt * d, 1);
      auto v = msa::testing::RandomVector(k.size(), 2);
      auto q = msa::testing::RandomVector(static_cast<size_t>(n) * qh * d, 3, 2.0f);
      std::vector<int32_t> len(kvh * blocks, bt);
      for (int g = 0; g < kvh; ++g) len[g * blocks + blocks - 1] = last_len;
      std::vector<int32_t> index(n * kvh * blocks), count(n * kvh, blocks);
      for (int i = 0; i < n; ++i)
        for (int g = 0; g < kvh; ++g)
          for (int b = 0; b < blocks; ++b) index[(i * kvh + g) * blocks + b] = g * blocks + b;
      AttentionShape shape{n, qh, kvh, d, bt, static_cast<float>(1.0 / std::sqrt(d))};
      std::vector<float> out(n * qh * d), lse(n * qh);
      if (!SparseAttentionCpuOn(avx2, shape, {kvh * blocks, k.data(), v.data(), len.data()},
                                {blocks, index.data(), count.data()}, q.data(), out.data(), lse.data())) {
        continue;  // no AVX2 + FMA here
      }
      for (int i = 0; i < n; ++i) {
        for (int h = 0; h < qh; ++h) {
          const int g = h / (qh / kvh);  // GQA mapping
          std::vector<double> ref(d);
          double ref_lse;
          msa::testing::DenseReference(&q[(i * qh + h) * d], &k[g * blocks * bt * d], &v[g * blocks * bt * d],
                                       tokens, d, ref.data(), &ref_lse);
          for (int c = 0; c < d; ++c) ASSERT_NEAR(out[(i * qh + h) * d + c], ref[c], 1e-4) << i << " " << h << " " << c;
          ASSERT_NEAR(lse[i * qh + h], ref_lse, 1e-4 * std::max(1.0, std::fabs(ref_lse)));
        }
      }
    }
  }
}

TEST(SparseAttentionCpu, EmptySelectionGivesZeroAndMinusInfinity) {
  for (const bool avx2 : {false, true}) {
    AttentionShape shape{1, 2, 1, 8, 4, 0.35f};
    std::vector<float> k(32), v(32), q(16, 1.0f), out(16, 7.0f), lse(2, 7.0f);
    int32_t len = 4, index = 0, count = 0;
    if (!SparseAttentionCpuOn(avx2, shape, {1, k.data(), v.data(), &len}, {1, &index, &count}, q.data(), out.data(),
                              lse.data())) {
      continue;
    }
    for (float x : out) EXPECT_EQ(x, 0.0f);
    for (float x : lse) EXPECT_TRUE(std::isinf(x) && x < 0);
  }
}

// Selections of different lengths per (row, KV head), one with an empty
// block (length 0) in it, and no lse asked for: each output row equals the
// float64 reference over its own selection, on both loops.
TEST(SparseAttentionCpu, RaggedSelectionsWithoutLse) {
  const int n = 2, qh = 4, kvh = 2, d = 24, bt = 8, blocks = 5;
  auto k = msa::testing::RandomVector(static_cast<size_t>(blocks) * bt * d, 11);
  auto v = msa::testing::RandomVector(k.size(), 12);
  auto q = msa::testing::RandomVector(static_cast<size_t>(n) * qh * d, 13);
  std::vector<int32_t> len = {8, 0, 5, 8, 3};
  const int max_blocks = 3;
  // (row, kv head) -> its blocks, in order; -1 pads.
  std::vector<int32_t> index = {0, 1, 2, /**/ 3, -1, -1, /**/ 4, 2, -1, /**/ 1, 3, 0};
  std::vector<int32_t> count = {3, 1, 2, 3};
  AttentionShape shape{n, qh, kvh, d, bt, static_cast<float>(1.0 / std::sqrt(d))};  // DenseReference's scale
  for (const bool avx2 : {false, true}) {
    std::vector<float> out(static_cast<size_t>(n) * qh * d, 7.0f);
    if (!SparseAttentionCpuOn(avx2, shape, {blocks, k.data(), v.data(), len.data()}, {max_blocks, index.data(), count.data()},
                              q.data(), out.data(), nullptr)) {
      continue;
    }
    for (int i = 0; i < n; ++i) {
      for (int h = 0; h < qh; ++h) {
        const int sel = i * kvh + h / (qh / kvh);
        std::vector<float> keys, values;  // the selection's tokens, gathered
        for (int j = 0; j < count[sel]; ++j) {
          const int b = index[sel * max_blocks + j];
          keys.insert(keys.end(), k.begin() + b * bt * d, k.begin() + (b * bt + len[b]) * d);
          values.insert(values.end(), v.begin() + b * bt * d, v.begin() + (b * bt + len[b]) * d);
        }
        std::vector<double> ref(d);
        double ref_lse;
        msa::testing::DenseReference(&q[(i * qh + h) * d], keys.data(), values.data(), static_cast<int>(keys.size() / d), d,
                                     ref.data(), &ref_lse);
        for (int c = 0; c < d; ++c) {
          ASSERT_NEAR(out[(i * qh + h) * d + c], ref[c], 1e-4) << (avx2 ? "avx2 " : "portable ") << i << " " << h;
        }
      }
    }
  }
}

}  // namespace
}  // namespace msa::attention
