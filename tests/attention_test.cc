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
  AttentionShape shape{1, 2, 1, 8, 4, 0.35f};
  std::vector<float> k(32), v(32), q(16, 1.0f), out(16, 7.0f), lse(2);
  int32_t len = 4, index = 0, count = 0;
  SparseAttentionCpu(shape, {1, k.data(), v.data(), &len}, {1, &index, &count}, q.data(), out.data(), lse.data());
  for (float x : out) EXPECT_EQ(x, 0.0f);
  EXPECT_TRUE(std::isinf(lse[0]) && lse[0] < 0);
}

}  // namespace
}  // namespace msa::attention
