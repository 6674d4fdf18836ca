// CPU sparse attention against the float64 dense reference.
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

#include "attention/dequantize.h"
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

// Full selection over odd sizes, GQA 6 -> 2 and 18 -> 2 (groups of 3 and of
// 9 = 4 + 4 + 1 heads), partial last block, through the portable loops and
// the AVX2 + FMA ones (where the CPU has them), head dims that exercise
// every part of the vector loops (32- and 16-wide steps, an 8-wide step, a
// scalar tail). The float32 path's error bound: each score carries ~d ulps
// of float32 rounding of sum |q_c k_c| / sqrt(d), the softmax and weighted
// sum ~tokens ulps; 1e-4 is far above that for q of scale 2 and far below
// any real bug (a wrong head or token is O(1)). q of scale 25 spreads the
// scores over ~100 (weights under e^-87, which the vector exp flushes to 0)
// and scales the score error by 12: 1e-3 there.
TEST(SparseAttentionCpu, MatchesDenseReferenceWithGqa) {
  for (const auto& [qh, q_scale] : {std::pair{6, 2.0f}, {18, 2.0f}, {6, 25.0f}}) {
    for (const int d : {40, 13, 136}) {
      for (const bool avx2 : {false, true}) {
        SCOPED_TRACE(::testing::Message() << "head_dim " << d << " q_heads " << qh << " q scale " << q_scale
                                          << (avx2 ? " avx2" : " portable"));
        const int n = 3, kvh = 2, bt = 13, blocks = 7, last_len = 5;
        const double tol = q_scale > 2.0f ? 1e-3 : 1e-4;
        const int tokens = (blocks - 1) * bt + last_len;
        auto k = msa::testing::RandomVector(static_cast<size_t>(kvh) * blocks * bt * d, 1);
        auto v = msa::testing::RandomVector(k.size(), 2);
        auto q = msa::testing::RandomVector(static_cast<size_t>(n) * qh * d, 3, q_scale);
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
            for (int c = 0; c < d; ++c) {
              ASSERT_NEAR(out[(i * qh + h) * d + c], ref[c], tol) << i << " " << h << " " << c;
            }
            ASSERT_NEAR(lse[i * qh + h], ref_lse, tol * std::max(1.0, std::fabs(ref_lse)));
          }
        }
      }
    }
  }
}

// Quantised blocks of random codes and fp16 parameters, laid out as the
// codecs do (attention/block_table.h), and the same blocks dequantised row by
// row as the codec's decoder does (store/codec_quantized.cc).
struct QuantizedBlocks {
  std::vector<std::vector<uint16_t>> params;  // per block: key scale, key min, value scale, value min
  std::vector<std::vector<uint8_t>> codes;    // per block: key codes, value codes
  std::vector<QuantizedBlock> blocks;
  std::vector<float> keys, values;  // decoded, [block][block_tokens][d]
};

QuantizedBlocks MakeQuantizedBlocks(int bits, int key_group, int value_group, int d, int bt,
                                    const std::vector<int32_t>& len, uint64_t seed) {
  QuantizedBlocks qb;
  const int nb = static_cast<int>(len.size());
  const size_t row_bytes = bits == 8 ? d : (d + 1) / 2;
  qb.params.resize(nb);
  qb.codes.resize(nb);
  qb.blocks.resize(nb);
  qb.keys.assign(static_cast<size_t>(nb) * bt * d, 0.0f);
  qb.values.assign(qb.keys.size(), 0.0f);
  std::mt19937_64 rng(seed);
  const float levels = static_cast<float>((1 << bits) - 1);
  std::uniform_real_distribution<float> scale(1.0f / levels, 3.0f / levels), min(-1.5f, -0.5f);
  std::uniform_int_distribution<int> byte(0, 255);
  for (int b = 0; b < nb; ++b) {
    const int t = len[b], kg = (t + key_group - 1) / key_group, vg = (d + value_group - 1) / value_group;
    std::vector<uint16_t>& p = qb.params[b];
    const size_t kp = static_cast<size_t>(kg) * d, vp = static_cast<size_t>(t) * vg;
    p.resize(2 * kp + 2 * vp);  // a scale such that the codes span up to 3 units
    for (size_t i = 0; i < kp; ++i) p[i] = FloatToHalf(scale(rng)), p[kp + i] = FloatToHalf(min(rng));
    for (size_t i = 0; i < vp; ++i) p[2 * kp + i] = FloatToHalf(scale(rng)), p[2 * kp + vp + i] = FloatToHalf(min(rng));
    std::vector<uint8_t>& c = qb.codes[b];
    c.resize(2 * t * row_bytes);
    for (uint8_t& x : c) x = static_cast<uint8_t>(byte(rng));
    std::vector<float> params(p.size());
    HalfToFloatArray(p.data(), params.data(), p.size());
    for (int r = 0; r < t; ++r) {
      const uint8_t* krow = c.data() + r * row_bytes;
      const uint8_t* vrow = c.data() + (t + r) * row_bytes;
      float* kout = qb.keys.data() + (static_cast<size_t>(b) * bt + r) * d;
      float* vout = qb.values.data() + (static_cast<size_t>(b) * bt + r) * d;
      const float* ks = params.data() + static_cast<size_t>(r / key_group) * d;
      if (bits == 8) {
        DequantizeU8(krow, ks, ks + kp, d, kout);
      } else {
        DequantizeU4(krow, ks, ks + kp, d, kout);
      }
      for (int g = 0; g < vg; ++g) {
        const int c0 = g * value_group, n = std::min(value_group, d - c0);
        const float vs = params[2 * kp + r * vg + g], vm = params[2 * kp + vp + r * vg + g];
        if (bits == 8) {
          DequantizeU8(vrow + c0, vs, vm, n, vout + c0);
        } else {
          DequantizeU4(vrow + c0 / 2, vs, vm, n, vout + c0);
        }
      }
    }
    qb.blocks[b] = QuantizedBlock{t, p.data(), p.data() + kp, p.data() + 2 * kp, p.data() + 2 * kp + vp,
                                  c.data(), c.data() + t * row_bytes};
  }
  return qb;
}

// The quantised loops give bit for bit the float loops' result over the
// decoded blocks, and that is the float64 reference's within the float
// path's own tolerance (above): int8 (a block's key channel is one group, a
// token's values one group) and int4 (key groups of 32 tokens, the last
// short; value groups of 32 channels, the last short; odd and even head
// dims), GQA 6 -> 2, partial last blocks, ragged selections in a shuffled
// order, portable and AVX2 row loops.
TEST(SparseAttentionCpu, QuantisedBlocksAttendBitForBitAsTheirDecodedValues) {
  struct Case {
    int bits, key_group, value_group, d;
  };
  const int bt = 70;
  for (const Case& c : {Case{8, bt, 13, 13}, Case{8, bt, 40, 40}, Case{8, bt, 136, 136}, Case{4, 32, 32, 13},
                        Case{4, 32, 32, 40}, Case{4, 32, 32, 136}, Case{4, 32, 32, 64}}) {
    for (const bool avx2 : {false, true}) {
      SCOPED_TRACE(::testing::Message() << "int" << c.bits << " head_dim " << c.d << (avx2 ? " avx2" : " portable"));
      const int d = c.d, n = 3, qh = 6, kvh = 2, per_head = 4;
      std::vector<int32_t> len(kvh * per_head, bt);
      len[per_head - 1] = 37;  // head 0's last block: key groups of 32 and 5
      len[2 * per_head - 1] = 1;
      const QuantizedBlocks qb = MakeQuantizedBlocks(c.bits, c.key_group, c.value_group, d, bt, len, 7 + d);
      const QuantizedBlockTable table{kvh * per_head, c.bits, c.key_group, c.value_group, qb.blocks.data()};
      const BlockTable<float> decoded{kvh * per_head, qb.keys.data(), qb.values.data(), len.data()};
      auto q = msa::testing::RandomVector(static_cast<size_t>(n) * qh * d, 3, 2.0f);
      // Row i, KV head g: g's blocks but block i % per_head, last first.
      const int max_blocks = per_head;
      std::vector<int32_t> index(n * kvh * max_blocks, -1), count(n * kvh);
      for (int i = 0; i < n; ++i) {
        for (int g = 0; g < kvh; ++g) {
          int k = 0;
          for (int b = per_head - 1; b >= 0; --b) {
            if (b != i % per_head) index[(i * kvh + g) * max_blocks + k++] = g * per_head + b;
          }
          count[i * kvh + g] = k;
        }
      }
      AttentionShape shape{n, qh, kvh, d, bt, static_cast<float>(1.0 / std::sqrt(d))};
      const Selection selection{max_blocks, index.data(), count.data()};
      std::vector<float> out(n * qh * d), lse(n * qh), want(out.size()), want_lse(lse.size());
      if (!SparseAttentionCpuOn(avx2, shape, table, selection, q.data(), out.data(), lse.data())) {
        continue;  // no AVX2 + FMA here
      }
      ASSERT_TRUE(SparseAttentionCpuOn(avx2, shape, decoded, selection, q.data(), want.data(), want_lse.data()));
      for (size_t i = 0; i < out.size(); ++i) ASSERT_EQ(out[i], want[i]) << i;
      for (size_t i = 0; i < lse.size(); ++i) ASSERT_EQ(lse[i], want_lse[i]) << i;
      for (int i = 0; i < n; ++i) {
        for (int h = 0; h < qh; ++h) {
          const int g = h / (qh / kvh);
          std::vector<float> k, v;  // the selected blocks' valid rows, in selection order
          for (int j = 0; j < count[i * kvh + g]; ++j) {
            const int b = index[(i * kvh + g) * max_blocks + j];
            const size_t at = static_cast<size_t>(b) * bt * d, rows = static_cast<size_t>(len[b]) * d;
            k.insert(k.end(), qb.keys.begin() + at, qb.keys.begin() + at + rows);
            v.insert(v.end(), qb.values.begin() + at, qb.values.begin() + at + rows);
          }
          std::vector<double> ref(d);
          double ref_lse;
          msa::testing::DenseReference(&q[(i * qh + h) * d], k.data(), v.data(), k.size() / d, d, ref.data(),
                                       &ref_lse);
          for (int ch = 0; ch < d; ++ch) ASSERT_NEAR(out[(i * qh + h) * d + ch], ref[ch], 1e-4) << i << " " << h;
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
