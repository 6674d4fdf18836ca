// The CUDA sparse attention against the CPU path and a float64 reference.
//
// Tolerance, derived rather than guessed (FlashAttention's tests do the same):
// both paths read the same fp16 K/V (the CPU path gets them widened back to
// float), so they compute the same function and differ only by float32
// rounding. A float64 reference on those same inputs measures each path's
// rounding; the CUDA error may be at most twice the CPU path's plus a small
// floor. The floor covers the CPU path being nearly exact by luck (one token,
// or a sum in double where the kernel sums in float32):
//   out: 1e-5 * max|v|             (~80 float32 ulps of the largest value)
//   lse: 1e-5 * max(1, max|lse|)   (likewise, of the lse magnitude)
// A real bug (a token dropped or read twice, a wrong head, a stale rescale)
// moves the result by about a token's softmax weight, orders above that.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <limits>
#include <numeric>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "attention/block_table.h"
#include "attention/half.h"
#include "attention/sparse_attention_cpu.h"
#include "attention/sparse_attention_cuda.h"
#include "store/codec_quantized.h"

namespace msa::attention {
namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();
constexpr uint16_t kHalfNan = 0x7e00;

// Skips loudly, with CudaAvailable's reason, where no CUDA device can run.
#define MSA_SKIP_WITHOUT_CUDA()                        \
  do {                                                 \
    std::string why_;                                  \
    if (!CudaAvailable(&why_)) GTEST_SKIP() << why_;   \
  } while (0)

struct Case {
  const char* what;
  int n_queries, q_heads, kv_heads, head_dim, block_tokens, num_blocks, max_blocks;
  float q_mult;  // > 1 sharpens the softmax
  uint32_t seed;
  // Consecutive rows come in runs of `share` with the same selection per KV
  // head (a prefill chunk, or a batch sharing a router decision): the kernel
  // reads K/V once for a run. 1: every row selects on its own.
  int share = 1;
};

// One random problem. K/V rows past block_len hold fp16 NaN: a path that
// reads them poisons its output.
struct Problem {
  AttentionShape shape;
  std::vector<uint16_t> keys_h, values_h;  // [num_blocks, block_tokens, head_dim] fp16
  std::vector<float> keys_f, values_f;     // the same, widened: what the CPU path reads
  std::vector<int32_t> block_len;          // [num_blocks]
  int max_blocks = 0;
  std::vector<int32_t> block_index;        // [n_queries * kv_heads, max_blocks], -1 past count
  std::vector<int32_t> count;              // [n_queries * kv_heads]
  std::vector<float> q;                    // [n_queries, q_heads, head_dim]
  double max_abs_v = 0.0;

  int NumBlocks() const { return static_cast<int>(block_len.size()); }
  BlockTable<uint16_t> HalfTable() const {
    return {NumBlocks(), keys_h.data(), values_h.data(), block_len.data()};
  }
  BlockTable<float> FloatTable() const {
    return {NumBlocks(), keys_f.data(), values_f.data(), block_len.data()};
  }
  Selection Sel() const { return {max_blocks, block_index.data(), count.data()}; }
  size_t Rows() const { return static_cast<size_t>(shape.n_queries) * shape.q_heads; }
};

Problem MakeProblem(const Case& c) {
  Problem p;
  p.shape = {c.n_queries, c.q_heads, c.kv_heads, c.head_dim, c.block_tokens,
             1.0f / std::sqrt(static_cast<float>(c.head_dim))};
  std::mt19937 rng(c.seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  const size_t d = c.head_dim;

  p.block_len.resize(c.num_blocks);
  std::uniform_int_distribution<int> len_dist(1, c.block_tokens);
  for (auto& len : p.block_len) len = len_dist(rng);
  p.block_len[0] = c.block_tokens;       // a full block
  if (c.num_blocks > 1) p.block_len[1] = 1;  // a one-token block

  const size_t kv_elems = static_cast<size_t>(c.num_blocks) * c.block_tokens * d;
  std::vector<float> k(kv_elems), v(kv_elems);
  for (auto& x : k) x = normal(rng);
  for (auto& x : v) x = normal(rng);
  p.keys_h.resize(kv_elems);
  p.values_h.resize(kv_elems);
  FloatToHalfArray(k.data(), p.keys_h.data(), kv_elems);
  FloatToHalfArray(v.data(), p.values_h.data(), kv_elems);
  for (int b = 0; b < c.num_blocks; ++b) {
    const size_t first_pad = (static_cast<size_t>(b) * c.block_tokens + p.block_len[b]) * d;
    const size_t end = static_cast<size_t>(b + 1) * c.block_tokens * d;
    std::fill(p.keys_h.begin() + first_pad, p.keys_h.begin() + end, kHalfNan);
    std::fill(p.values_h.begin() + first_pad, p.values_h.begin() + end, kHalfNan);
  }
  p.keys_f.resize(kv_elems);
  p.values_f.resize(kv_elems);
  HalfToFloatArray(p.keys_h.data(), p.keys_f.data(), kv_elems);
  HalfToFloatArray(p.values_h.data(), p.values_f.data(), kv_elems);
  for (float x : p.values_f) {
    if (!std::isnan(x)) p.max_abs_v = std::max(p.max_abs_v, static_cast<double>(std::fabs(x)));
  }

  // Distinct blocks per selection, differing counts; one selection full, one empty.
  p.max_blocks = c.max_blocks;
  const size_t n_sel = static_cast<size_t>(c.n_queries) * c.kv_heads;
  p.count.resize(n_sel);
  p.block_index.assign(n_sel * c.max_blocks, -1);
  std::uniform_int_distribution<int> count_dist(0, c.max_blocks);
  std::vector<int32_t> all(c.num_blocks);
  std::iota(all.begin(), all.end(), 0);
  for (size_t s = 0; s < n_sel; ++s) {
    const size_t row = s / c.kv_heads;
    if (row % c.share != 0) {  // same selection as the previous row of this KV head
      const size_t prev = s - c.kv_heads;
      p.count[s] = p.count[prev];
      std::copy_n(p.block_index.begin() + prev * c.max_blocks, c.max_blocks,
                  p.block_index.begin() + s * c.max_blocks);
    } else {
      int n = count_dist(rng);
      if (s == 0) n = c.max_blocks;
      std::shuffle(all.begin(), all.end(), rng);
      p.count[s] = n;
      std::copy(all.begin(), all.begin() + n, p.block_index.begin() + s * c.max_blocks);
    }
    // One empty selection, which also breaks a run of shared rows in two.
    if (n_sel > 1 && s == n_sel / 2) p.count[s] = 0;
  }

  p.q.resize(p.Rows() * d);
  for (auto& x : p.q) x = c.q_mult * normal(rng);
  return p;
}

// Two-pass softmax in double over the same (fp16-valued) inputs.
void ReferenceF64(const Problem& p, std::vector<double>* out, std::vector<double>* lse) {
  const AttentionShape& s = p.shape;
  const size_t d = s.head_dim;
  out->assign(p.Rows() * d, 0.0);
  lse->assign(p.Rows(), -std::numeric_limits<double>::infinity());
  std::vector<double> scores;
  for (int i = 0; i < s.n_queries; ++i) {
    for (int h = 0; h < s.q_heads; ++h) {
      const size_t sel = static_cast<size_t>(i) * s.kv_heads + KvHeadOf(h, s.q_heads, s.kv_heads);
      const size_t row = static_cast<size_t>(i) * s.q_heads + h;
      const float* q = p.q.data() + row * d;
      const int32_t* blocks = p.block_index.data() + sel * p.max_blocks;
      scores.clear();
      double mx = -std::numeric_limits<double>::infinity();
      for (int j = 0; j < p.count[sel]; ++j) {
        for (int t = 0; t < p.block_len[blocks[j]]; ++t) {
          const float* k = p.keys_f.data() + (static_cast<size_t>(blocks[j]) * s.block_tokens + t) * d;
          double dot = 0.0;
          for (size_t c = 0; c < d; ++c) dot += static_cast<double>(q[c]) * k[c];
          scores.push_back(static_cast<double>(s.scale) * dot);
          mx = std::max(mx, scores.back());
        }
      }
      if (scores.empty()) continue;
      double sum = 0.0;
      size_t n = 0;
      double* o = out->data() + row * d;
      for (int j = 0; j < p.count[sel]; ++j) {
        for (int t = 0; t < p.block_len[blocks[j]]; ++t, ++n) {
          const float* v = p.values_f.data() + (static_cast<size_t>(blocks[j]) * s.block_tokens + t) * d;
          const double w = std::exp(scores[n] - mx);
          sum += w;
          for (size_t c = 0; c < d; ++c) o[c] += w * v[c];
        }
      }
      for (size_t c = 0; c < d; ++c) o[c] /= sum;
      (*lse)[row] = mx + std::log(sum);
    }
  }
}

// Largest |got - want|; NaN, or a finite value where -inf is wanted, is +inf.
double MaxError(const std::vector<float>& got, const std::vector<double>& want) {
  double err = 0.0;
  for (size_t i = 0; i < got.size(); ++i) {
    double e;
    if (std::isinf(want[i])) {
      e = (got[i] == want[i]) ? 0.0 : std::numeric_limits<double>::infinity();
    } else {
      e = std::fabs(static_cast<double>(got[i]) - want[i]);
      if (std::isnan(e)) e = std::numeric_limits<double>::infinity();
    }
    err = std::max(err, e);
  }
  return err;
}

double MaxFinite(const std::vector<double>& xs) {
  double m = 0.0;
  for (double x : xs) {
    if (std::isfinite(x)) m = std::max(m, std::fabs(x));
  }
  return m;
}

const Case kCases[] = {
    // what                          n  qh kv    d   bt  nb  mb  q_mult seed
    {"decode, GQA 4:1",              1,  4, 1,  64, 64,   6,  4, 1.0f, 1},
    {"short blocks (13), GQA 4:1",   3,  8, 2, 128, 13,  20,  7, 1.0f, 2},
    {"MHA, d=72 (9 chunks)",        17,  6, 6,  72, 13,   9,  5, 1.0f, 3},
    {"d=256, GQA 8:1",               2,  8, 1, 256, 64,   5,  5, 1.0f, 4},
    {"group 3, d=24, blocks of 7",   5, 12, 4,  24,  7,  11,  6, 1.0f, 5},
    {"group 10 (two head chunks)",   4, 20, 2,  64, 16,  12,  8, 1.0f, 6},
    {"2k tokens, peaky softmax",     3, 32, 8, 128, 64,  64, 32, 3.0f, 7},
    {"d=8, one-token blocks",        2,  2, 1,   8,  1,  40, 40, 1.0f, 8},
    {"MQA 64:1, >128 blocks",        1, 64, 1,  64, 64, 200, 150, 1.0f, 9},
    {"d=136, group 6",               3, 12, 2, 136, 32,  10,  6, 2.0f, 10},
    // Split across many CTAs (128 blocks at most per split): 500 and 260 blocks.
    {"500 blocks, d=128, GQA 4:1",   2,  8, 2, 128, 64, 600, 500, 1.0f, 14},
    {"260 blocks, d=256, peaky",     3,  4, 2, 256, 32, 300, 260, 3.0f, 15},
    {"300 blocks of 1..64, d=64",    5, 16, 4,  64, 64, 400, 300, 1.0f, 16},
    // Odd sizes (FlashInfer's habit): 17 rows, group 3, d=40, blocks of 13, 97 blocks.
    {"odd: n=17 g=3 d=40 bt=13",    17,  6, 2,  40, 13,  97, 54, 1.0f, 17},
    // Rows sharing selections: runs of 7 rows, 5 tiles of 64 query vectors, one partial.
    {"prefill 70 rows, runs of 7",  70,  8, 2, 128, 64,  50, 40, 1.0f, 18, 7},
    {"shared rows, d=256, runs 5",  37,  8, 4, 256, 16,  60, 45, 2.0f, 19, 5},
    {"shared rows, d=64, MQA",      33, 16, 1,  64, 64, 140, 130, 1.0f, 20, 11},
};

TEST(CudaAttention, MatchesCpuWithinTwiceItsFloat64Error) {
  MSA_SKIP_WITHOUT_CUDA();
  for (const Case& c : kCases) {
    SCOPED_TRACE(c.what);
    const Problem p = MakeProblem(c);
    const size_t d = p.shape.head_dim;

    std::vector<double> out64, lse64;
    ReferenceF64(p, &out64, &lse64);
    std::vector<float> out_cpu(p.Rows() * d), lse_cpu(p.Rows());
    SparseAttentionCpu(p.shape, p.FloatTable(), p.Sel(), p.q.data(), out_cpu.data(), lse_cpu.data());
    std::vector<float> out_gpu(p.Rows() * d, 123.0f), lse_gpu(p.Rows(), 123.0f);
    const Status st = SparseAttentionCudaF16Host(p.shape, p.HalfTable(), p.Sel(), p.q.data(),
                                                 out_gpu.data(), lse_gpu.data());
    ASSERT_TRUE(st.ok()) << st.ToString();

    const double cpu_out_err = MaxError(out_cpu, out64);
    const double cpu_lse_err = MaxError(lse_cpu, lse64);
    ASSERT_TRUE(std::isfinite(cpu_out_err) && std::isfinite(cpu_lse_err)) << "CPU reference broken";
    const double gpu_out_err = MaxError(out_gpu, out64);
    const double gpu_lse_err = MaxError(lse_gpu, lse64);
    const double out_tol = 2.0 * cpu_out_err + 1e-5 * p.max_abs_v;
    const double lse_tol = 2.0 * cpu_lse_err + 1e-5 * std::max(1.0, MaxFinite(lse64));
    std::printf("  %-30s out err cuda %.2e cpu %.2e (tol %.2e) | lse err cuda %.2e cpu %.2e (tol %.2e)\n",
                c.what, gpu_out_err, cpu_out_err, out_tol, gpu_lse_err, cpu_lse_err, lse_tol);
    EXPECT_LE(gpu_out_err, out_tol);
    EXPECT_LE(gpu_lse_err, lse_tol);

    // Empty selections: exactly 0 and -inf (MaxError only bounds them by the tolerance).
    for (int i = 0; i < p.shape.n_queries; ++i) {
      for (int h = 0; h < p.shape.q_heads; ++h) {
        const size_t sel = static_cast<size_t>(i) * p.shape.kv_heads +
                           KvHeadOf(h, p.shape.q_heads, p.shape.kv_heads);
        if (p.count[sel] != 0) continue;
        const size_t row = static_cast<size_t>(i) * p.shape.q_heads + h;
        EXPECT_EQ(lse_gpu[row], -kInf) << "row " << i << " head " << h;
        for (size_t k = 0; k < d; ++k) ASSERT_EQ(out_gpu[row * d + k], 0.0f) << "row " << i << " head " << h;
      }
    }
  }
}

// The CUDA path on p within twice the CPU path's float64 error (the
// tolerance of the file's header).
void ExpectCudaWithinCpuTolerance(const Problem& p) {
  const size_t d = p.shape.head_dim;
  std::vector<double> out64, lse64;
  ReferenceF64(p, &out64, &lse64);
  std::vector<float> out_cpu(p.Rows() * d), lse_cpu(p.Rows());
  SparseAttentionCpu(p.shape, p.FloatTable(), p.Sel(), p.q.data(), out_cpu.data(), lse_cpu.data());
  const double cpu_out_err = MaxError(out_cpu, out64);
  const double cpu_lse_err = MaxError(lse_cpu, lse64);
  ASSERT_TRUE(std::isfinite(cpu_out_err) && std::isfinite(cpu_lse_err)) << "CPU reference broken";
  const double out_tol = 2.0 * cpu_out_err + 1e-5 * p.max_abs_v;
  const double lse_tol = 2.0 * cpu_lse_err + 1e-5 * std::max(1.0, MaxFinite(lse64));
  std::vector<float> out_gpu(p.Rows() * d, 123.0f), lse_gpu(p.Rows(), 123.0f);
  const Status st =
      SparseAttentionCudaF16Host(p.shape, p.HalfTable(), p.Sel(), p.q.data(), out_gpu.data(), lse_gpu.data());
  ASSERT_TRUE(st.ok()) << st.ToString();
  EXPECT_LE(MaxError(out_gpu, out64), out_tol);
  EXPECT_LE(MaxError(lse_gpu, lse64), lse_tol);
}

// q that fp16 holds exactly (an engine's fp16 activations): the kernel
// skips the zero lo half of q, and must land within the same tolerance.
TEST(CudaAttention, Fp16ExactQueriesSkipTheLoHalf) {
  MSA_SKIP_WITHOUT_CUDA();
  for (const Case& c : kCases) {
    SCOPED_TRACE(c.what);
    Problem p = MakeProblem(c);
    for (float& x : p.q) x = HalfToFloat(FloatToHalf(x));
    ExpectCudaWithinCpuTolerance(p);
  }
}

// The kernel keeps a reference maximum per row that moves only when a score
// passes it by 2^8 (log2 units), and takes the scale inside the exponent
// (a negative scale folded into q, zero as the smallest float). Keys along
// one direction, growing with the token, make scores climb along the
// selection (or fall, in reverse order). The steep climb passes the
// reference within every tile a warp sees, so it moves with data already
// accumulated; the gentle one leaves probabilities above 1 without moving it.
TEST(CudaAttention, ClimbingScoresAndAnyScaleStayWithinTolerance) {
  MSA_SKIP_WITHOUT_CUDA();
  struct Shape {
    const char* what;
    int n_queries, q_heads, kv_heads, blocks;
  };
  // 64-token blocks, every row selecting the first `blocks` in order.
  const Shape shapes[] = {
      {"decode: token slices", 1, 8, 2, 40},
      {"24 rows: 1-2 warps of vectors", 24, 8, 2, 40},
      {"256 rows MHA: 4 warps, 5 tiles a CTA", 256, 8, 8, 40},
      {"3 blocks: one split, results written directly", 4, 8, 2, 3},
  };
  const size_t d = 128;
  for (const Shape& sh : shapes) {
    for (const bool climbing : {true, false}) {
      for (const float slope : {1.0f / 256.0f, 1.0f / 27.0f}) {  // ~0.06 and ~0.6 log2 units a token
        Problem p =
            MakeProblem({sh.what, sh.n_queries, sh.q_heads, sh.kv_heads, 128, 64, sh.blocks, sh.blocks, 1.0f, 21});
        std::fill(p.block_len.begin(), p.block_len.end(), 64);
        std::fill(p.count.begin(), p.count.end(), sh.blocks);
        for (size_t s = 0; s < p.count.size(); ++s) {
          for (int j = 0; j < sh.blocks; ++j) p.block_index[s * sh.blocks + j] = climbing ? j : sh.blocks - 1 - j;
        }
        // q.k ~ |u|^2 t slope: with scale 1/sqrt(128), a score passing the
        // reference by 2^8 about every 125 tokens (slope 1/256) or 13 (1/27).
        std::mt19937 rng(22);
        std::normal_distribution<float> normal(0.0f, 1.0f);
        std::vector<float> u(d);
        for (auto& x : u) x = normal(rng) > 0.0f ? 1.0f : -1.0f;
        // Every token is valid now: the values past the old block lengths (NaN) too.
        for (size_t t = 0; t < static_cast<size_t>(sh.blocks) * 64; ++t) {
          for (size_t c = 0; c < d; ++c) {
            p.keys_h[t * d + c] = FloatToHalf(u[c] * static_cast<float>(t) * slope + 0.1f * normal(rng));
            p.keys_f[t * d + c] = HalfToFloat(p.keys_h[t * d + c]);
            p.values_h[t * d + c] = FloatToHalf(normal(rng));
            p.values_f[t * d + c] = HalfToFloat(p.values_h[t * d + c]);
            p.max_abs_v = std::max(p.max_abs_v, std::fabs(static_cast<double>(p.values_f[t * d + c])));
          }
        }
        for (size_t r = 0; r < p.Rows(); ++r) {
          for (size_t c = 0; c < d; ++c) p.q[r * d + c] = u[c] + 0.3f * normal(rng);
        }
        for (const float scale : {1.0f / std::sqrt(128.0f), -0.01f, 0.0f}) {
          SCOPED_TRACE(testing::Message() << sh.what << (climbing ? ", climbing" : ", falling") << ", slope "
                                          << slope << ", scale " << scale);
          p.shape.scale = scale;
          ExpectCudaWithinCpuTolerance(p);
        }
      }
    }
  }
}

// Int8 and int4 pages, dequantised in the kernel, give exactly what the fp16
// kernel gives over the fp16 rounding of the CPU decoder's output: the same
// fmaf(scale, code, min) and rounding, then the same kernel. Every case
// shape, so odd block lengths (int4: a short last key group), padded head
// dims and GQA are covered.
TEST(CudaAttention, QuantizedPagesEqualTheDecodedFp16Blocks) {
  MSA_SKIP_WITHOUT_CUDA();
  for (const Codec codec : {Codec::kInt8, Codec::kInt4}) {
    for (const Case& c : kCases) {
      SCOPED_TRACE(testing::Message() << CodecName(codec) << " " << c.what);
      const Problem p = MakeProblem(c);
      const size_t d = p.shape.head_dim, bt = p.shape.block_tokens;
      const QuantizedPageLayout layout =
          QuantizedPages(codec == Codec::kInt8 ? 8 : 4, static_cast<uint32_t>(bt), static_cast<uint32_t>(d));
      std::vector<uint8_t> key_pages(p.NumBlocks() * size_t{layout.page_bytes}, 0xAB);
      std::vector<uint8_t> value_pages(key_pages.size(), 0xAB);
      std::vector<uint16_t> keys_h(p.keys_h.size(), kHalfNan), values_h(p.values_h.size(), kHalfNan);
      std::vector<uint8_t> payload;
      std::vector<float> k(bt * d), v(bt * d), scratch;
      for (int b = 0; b < p.NumBlocks(); ++b) {
        const uint32_t tokens = static_cast<uint32_t>(p.block_len[b]);
        const size_t first = static_cast<size_t>(b) * bt * d;
        payload.resize(quantized::PayloadBytes(codec, tokens, static_cast<uint32_t>(d)));
        ASSERT_TRUE(quantized::Encode(codec, &p.keys_f[first], &p.values_f[first], tokens, static_cast<uint32_t>(d),
                                      payload.data(), nullptr, "test block")
                        .ok());
        const size_t page = b * size_t{layout.page_bytes};
        quantized::PayloadToPages(codec, payload.data(), tokens, static_cast<uint32_t>(d), static_cast<uint32_t>(bt),
                                  &key_pages[page], &value_pages[page]);
        quantized::Decode(codec, payload.data(), tokens, static_cast<uint32_t>(d), k.data(), v.data(), &scratch);
        FloatToHalfArray(k.data(), &keys_h[first], tokens * d);
        FloatToHalfArray(v.data(), &values_h[first], tokens * d);
      }
      const BlockTable<uint16_t> half{p.NumBlocks(), keys_h.data(), values_h.data(), p.block_len.data()};
      const BlockTable<uint8_t> pages{p.NumBlocks(), key_pages.data(), value_pages.data(), p.block_len.data()};
      std::vector<float> out16(p.Rows() * d), lse16(p.Rows()), out_q(p.Rows() * d, 7.0f), lse_q(p.Rows(), 7.0f);
      Status st = SparseAttentionCudaF16Host(p.shape, half, p.Sel(), p.q.data(), out16.data(), lse16.data());
      ASSERT_TRUE(st.ok()) << st.ToString();
      st = SparseAttentionCudaQuantizedHost(p.shape, pages, layout, p.Sel(), p.q.data(), out_q.data(), lse_q.data());
      ASSERT_TRUE(st.ok()) << st.ToString();
      for (size_t i = 0; i < out16.size(); ++i) ASSERT_EQ(out_q[i], out16[i]) << "out " << i;
      for (size_t i = 0; i < lse16.size(); ++i) ASSERT_EQ(lse_q[i], lse16[i]) << "lse " << i;
    }
  }
  // A layout that does not match the shape, or of another width, is refused.
  const Problem p = MakeProblem(kCases[0]);
  QuantizedPageLayout wrong = QuantizedPages(8, p.shape.block_tokens, p.shape.head_dim);
  wrong.page_bytes += 16;
  QuantizedPageLayout two_bits = QuantizedPages(8, p.shape.block_tokens, p.shape.head_dim);
  two_bits.bits = 2;
  std::vector<float> out(p.Rows() * p.shape.head_dim);
  for (const QuantizedPageLayout& layout : {wrong, two_bits}) {
    EXPECT_EQ(SparseAttentionCudaQuantized(p.shape, BlockTable<uint8_t>{}, layout, p.Sel(), p.q.data(), out.data(),
                                           nullptr, nullptr)
                  .code(),
              Status::Code::kInvalidArgument);
  }
}

TEST(CudaAttention, EmptySelectionGivesZeroAndMinusInf) {
  MSA_SKIP_WITHOUT_CUDA();
  Problem p = MakeProblem({"all empty", 3, 8, 2, 64, 16, 4, 3, 1.0f, 11});
  std::fill(p.count.begin(), p.count.end(), 0);
  std::vector<float> out(p.Rows() * 64, 123.0f), lse(p.Rows(), 123.0f);
  const Status st =
      SparseAttentionCudaF16Host(p.shape, p.HalfTable(), p.Sel(), p.q.data(), out.data(), lse.data());
  ASSERT_TRUE(st.ok()) << st.ToString();
  for (float x : lse) EXPECT_EQ(x, -kInf);
  for (float x : out) ASSERT_EQ(x, 0.0f);
}

TEST(CudaAttention, LseIsOptional) {
  MSA_SKIP_WITHOUT_CUDA();
  const Problem p = MakeProblem(kCases[1]);
  std::vector<float> out_a(p.Rows() * p.shape.head_dim), out_b(out_a.size()), lse(p.Rows());
  Status st =
      SparseAttentionCudaF16Host(p.shape, p.HalfTable(), p.Sel(), p.q.data(), out_a.data(), lse.data());
  ASSERT_TRUE(st.ok()) << st.ToString();
  st = SparseAttentionCudaF16Host(p.shape, p.HalfTable(), p.Sel(), p.q.data(), out_b.data(), nullptr);
  ASSERT_TRUE(st.ok()) << st.ToString();
  EXPECT_EQ(out_a, out_b);  // the kernel is deterministic: no atomics
}

TEST(CudaAttention, RejectsBadArguments) {
  MSA_SKIP_WITHOUT_CUDA();
  Problem p = MakeProblem({"small", 2, 4, 2, 64, 16, 4, 3, 1.0f, 12});
  // Buffers big enough for any head_dim tried, so only validation can fail.
  std::vector<float> q(p.Rows() * 512, 0.0f), out(q.size()), lse(p.Rows());
  std::vector<uint16_t> kv(static_cast<size_t>(p.NumBlocks()) * p.shape.block_tokens * 512, 0);
  const BlockTable<uint16_t> big{p.NumBlocks(), kv.data(), kv.data(), p.block_len.data()};

  for (int head_dim : {0, 4, 60, 72 + 4}) {  // not a positive multiple of 8: malformed
    AttentionShape s = p.shape;
    s.head_dim = head_dim;
    const Status st = SparseAttentionCudaF16Host(s, big, p.Sel(), q.data(), out.data(), lse.data());
    EXPECT_EQ(st.code(), Status::Code::kInvalidArgument) << "head_dim " << head_dim << ": " << st.ToString();
  }
  for (int head_dim : {264, 512}) {  // well-formed, but past the largest tile (256)
    AttentionShape s = p.shape;
    s.head_dim = head_dim;
    const Status st = SparseAttentionCudaF16Host(s, big, p.Sel(), q.data(), out.data(), lse.data());
    EXPECT_EQ(st.code(), Status::Code::kNotSupported) << "head_dim " << head_dim << ": " << st.ToString();
    EXPECT_NE(st.message().find("256"), std::string::npos) << st.ToString();
  }
  {
    AttentionShape s = p.shape;
    s.kv_heads = 3;  // 4 query heads do not split into 3 groups
    const Status st = SparseAttentionCudaF16Host(s, p.HalfTable(), p.Sel(), p.q.data(), out.data(), lse.data());
    EXPECT_EQ(st.code(), Status::Code::kInvalidArgument) << st.ToString();
  }
  {
    Problem bad = p;
    bad.count[0] = 1;
    bad.block_index[0] = bad.NumBlocks();  // one past the table
    const Status st = SparseAttentionCudaF16Host(bad.shape, bad.HalfTable(), bad.Sel(), bad.q.data(),
                                                 out.data(), lse.data());
    EXPECT_EQ(st.code(), Status::Code::kInvalidArgument) << st.ToString();
  }
  {
    Problem bad = p;
    bad.count[0] = bad.max_blocks + 1;
    const Status st = SparseAttentionCudaF16Host(bad.shape, bad.HalfTable(), bad.Sel(), bad.q.data(),
                                                 out.data(), lse.data());
    EXPECT_EQ(st.code(), Status::Code::kInvalidArgument) << st.ToString();
  }
}

// Entry points may be called from several threads: each call gets its own
// workspace from the shared pool. Same inputs, so every result is bit-equal.
TEST(CudaAttention, ConcurrentCallsAgree) {
  MSA_SKIP_WITHOUT_CUDA();
  const Problem p = MakeProblem(kCases[10]);  // split across CTAs: uses the workspace
  const size_t n_out = p.Rows() * p.shape.head_dim;
  std::vector<float> want(n_out), want_lse(p.Rows());
  Status st = SparseAttentionCudaF16Host(p.shape, p.HalfTable(), p.Sel(), p.q.data(), want.data(),
                                         want_lse.data());
  ASSERT_TRUE(st.ok()) << st.ToString();
  constexpr int kThreads = 4;
  std::vector<std::vector<float>> outs(kThreads, std::vector<float>(n_out)), lses(kThreads, std::vector<float>(p.Rows()));
  std::vector<Status> status(kThreads);
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int rep = 0; rep < 5 && status[t].ok(); ++rep) {
        status[t] = SparseAttentionCudaF16Host(p.shape, p.HalfTable(), p.Sel(), p.q.data(), outs[t].data(),
                                               lses[t].data());
      }
    });
  }
  for (auto& th : threads) th.join();
  for (int t = 0; t < kThreads; ++t) {
    ASSERT_TRUE(status[t].ok()) << status[t].ToString();
    EXPECT_EQ(outs[t], want) << "thread " << t;
    EXPECT_EQ(lses[t], want_lse) << "thread " << t;
  }
}

TEST(CudaAttention, ZeroQueriesIsANoOp) {
  MSA_SKIP_WITHOUT_CUDA();
  Problem p = MakeProblem({"small", 1, 4, 2, 64, 16, 4, 3, 1.0f, 13});
  p.shape.n_queries = 0;
  const Status st = SparseAttentionCudaF16Host(p.shape, p.HalfTable(), p.Sel(), nullptr, nullptr, nullptr);
  EXPECT_TRUE(st.ok()) << st.ToString();
}

TEST(CudaAttention, ReportsWhyUnavailable) {
  std::string why;
  if (CudaAvailable(&why)) {
    EXPECT_TRUE(why.empty());
  } else {
    EXPECT_FALSE(why.empty());
    GTEST_SKIP() << why;
  }
}

}  // namespace
}  // namespace msa::attention
