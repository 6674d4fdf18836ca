// The GPU half of the fetch path (issue 6): the GPU block pool on its own,
// and Store::Attend / AttendDevice on the GPU against the CPU path and a
// float64 reference, cold (blocks from disk), warm (from the GPU pool) and
// with the pool too small to hold a working set (eviction).
//
// Tolerance, derived as in cuda_attention_test.cc: both paths compute in
// float32 over the same K/V, so against a float64 reference over those K/V
// the GPU's error may be at most twice the CPU path's plus a floor of 1e-5
// times the largest |v| (out) or max(1, |lse|) (lse). For int8 stores the
// GPU reads the decoded values rounded to fp16, so its reference is taken
// over those rounded values (the CPU's over the decoded float32).
//
// Every GPU test skips, saying why, where no CUDA device is usable; the
// tests of what must happen without one run everywhere.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <thread>
#include <vector>

#ifdef MSA_WITH_CUDA
#include <cuda_runtime.h>
#endif

#include "attention/gpu_block_pool.h"
#include "attention/half.h"
#include "attention/sparse_attention_cuda.h"
#include "store/store.h"
#include "test_util.h"

namespace msa {
namespace {

using msa::testing::TempDir;

#define MSA_SKIP_WITHOUT_CUDA()                                 \
  do {                                                          \
    std::string why_;                                           \
    if (!attention::CudaAvailable(&why_)) GTEST_SKIP() << why_; \
  } while (0)

struct Fixture {
  Geometry g;
  std::unique_ptr<Store> store;
};

// A store of `docs` documents of odd lengths (so last blocks are partial),
// keys and values Gaussian.
Fixture MakeStore(const std::string& path, Codec codec, uint32_t head_dim, uint32_t block_tokens,
                  uint32_t kv_heads, const std::vector<uint64_t>& doc_tokens, uint64_t gpu_pool_bytes,
                  uint64_t seed) {
  Fixture f;
  f.g.layers = 2;
  f.g.kv_heads = kv_heads;
  f.g.head_dim = head_dim;
  f.g.block_tokens = block_tokens;
  f.g.codec = codec;
  StoreOptions options;
  options.gpu_pool_bytes = gpu_pool_bytes;
  auto s = Store::Create(path, f.g, options);
  EXPECT_TRUE(s.ok()) << s.status().ToString();
  if (!s.ok()) return f;
  f.store = std::move(*s);
  for (size_t i = 0; i < doc_tokens.size(); ++i) {
    const size_t elems = f.g.streams() * doc_tokens[i] * head_dim;
    auto k = msa::testing::RandomVector(elems, seed + 2 * i);
    auto v = msa::testing::RandomVector(elems, seed + 2 * i + 1);
    auto id = f.store->AppendDocument("doc" + std::to_string(i),
                                      DocumentKV{k.data(), v.data(), doc_tokens[i], ElementType::kFloat32});
    EXPECT_TRUE(id.ok()) << id.status().ToString();
  }
  const Status c = f.store->Commit();
  EXPECT_TRUE(c.ok()) << c.ToString();
  return f;
}

// Per stream of one layer: the decoded K/V and, per block, its first token
// in them and its token count.
struct LayerData {
  std::vector<std::vector<float>> keys, values;  // [kv] -> [tokens, d]
  std::vector<uint64_t> block_start, block_len;  // [block]
  double max_abs_v = 0;
};

LayerData ReadLayer(const Fixture& f, uint32_t layer, bool round_to_half) {
  LayerData L;
  L.keys.resize(f.g.kv_heads);
  L.values.resize(f.g.kv_heads);
  for (uint32_t kv = 0; kv < f.g.kv_heads; ++kv) {
    EXPECT_TRUE(f.store->ReadStream(layer, kv, &L.keys[kv], &L.values[kv]).ok());
    if (round_to_half) {
      for (auto* a : {&L.keys[kv], &L.values[kv]}) {
        for (float& x : *a) x = attention::HalfToFloat(attention::FloatToHalf(x));
      }
    }
    for (float x : L.values[kv]) L.max_abs_v = std::max(L.max_abs_v, static_cast<double>(std::fabs(x)));
  }
  auto docs = f.store->ListDocuments();
  EXPECT_TRUE(docs.ok());
  uint64_t at = 0;
  for (const DocumentRecord& d : *docs) {
    for (uint64_t b = 0; b < d.blocks; ++b) {
      L.block_start.push_back(at);
      const uint64_t len = std::min<uint64_t>(f.g.block_tokens, d.tokens - b * f.g.block_tokens);
      L.block_len.push_back(len);
      at += len;
    }
  }
  return L;
}

struct Errors {
  double out = 0, lse = 0;
};

// Largest error of (out, lse) against float64 attention over the selected blocks.
Errors ErrorsAgainstReference(const Fixture& f, const LayerData& L, const std::vector<float>& q, uint32_t n,
                              uint32_t qh, const std::vector<std::vector<uint64_t>>& selected,
                              const std::vector<float>& out, const std::vector<float>& lse, double* max_lse) {
  const size_t d = f.g.head_dim;
  Errors e;
  for (uint32_t i = 0; i < n; ++i) {
    for (uint32_t h = 0; h < qh; ++h) {
      const uint32_t kv = h / (qh / f.g.kv_heads);
      std::vector<float> k, v;
      for (uint64_t b : selected[i * f.g.kv_heads + kv]) {
        const size_t from = L.block_start[b] * d, to = from + L.block_len[b] * d;
        k.insert(k.end(), L.keys[kv].begin() + from, L.keys[kv].begin() + to);
        v.insert(v.end(), L.values[kv].begin() + from, L.values[kv].begin() + to);
      }
      std::vector<double> ref(d);
      double ref_lse = 0;
      msa::testing::DenseReference(&q[(i * qh + h) * d], k.data(), v.data(), k.size() / d, d, ref.data(), &ref_lse);
      *max_lse = std::max(*max_lse, std::fabs(ref_lse));
      const size_t row = static_cast<size_t>(i) * qh + h;
      for (size_t c = 0; c < d; ++c) {
        const double err = std::fabs(out[row * d + c] - ref[c]);
        e.out = std::max(e.out, std::isnan(err) ? std::numeric_limits<double>::infinity() : err);
      }
      const double lerr = std::fabs(lse[row] - ref_lse);
      e.lse = std::max(e.lse, std::isnan(lerr) ? std::numeric_limits<double>::infinity() : lerr);
    }
  }
  return e;
}

struct Outcome {
  std::vector<float> out, lse;
  std::vector<std::vector<uint64_t>> selected;
  AttendStats stats;
};

Outcome Attend(const Fixture& f, uint32_t layer, const std::vector<float>& q, uint32_t n, uint32_t qh,
           AttendOptions options) {
  Outcome r;
  r.out.assign(static_cast<size_t>(n) * qh * f.g.head_dim, 123.0f);  // poisoned: every element must be written
  r.lse.assign(static_cast<size_t>(n) * qh, 123.0f);
  const Status s = f.store->Attend(layer, q.data(), n, qh, options, r.out.data(), r.lse.data(), &r.stats, &r.selected);
  EXPECT_TRUE(s.ok()) << s.ToString();
  return r;
}

// Runs one query on the CPU and on the GPU (cold, then warm), checking the
// GPU against its reference within the derived tolerance.
void CheckGpuAgainstCpu(const Fixture& f, uint32_t layer, uint32_t n, uint32_t qh, uint32_t top_k, uint64_t seed,
                        bool use_cache = true) {
  const size_t d = f.g.head_dim;
  const auto q = msa::testing::RandomVector(static_cast<size_t>(n) * qh * d, seed, 1.3f);
  AttendOptions cpu_opt;
  cpu_opt.top_k = top_k;
  cpu_opt.gpu = GpuMode::kOff;
  cpu_opt.use_cache = use_cache;
  AttendOptions gpu_opt = cpu_opt;
  gpu_opt.gpu = GpuMode::kRequire;

  const Outcome cpu = Attend(f, layer, q, n, qh, cpu_opt);
  EXPECT_FALSE(cpu.stats.on_gpu);
  const bool lossy = f.g.codec == Codec::kInt8 || f.g.codec == Codec::kInt4;
  const LayerData cpu_data = ReadLayer(f, layer, false);
  const LayerData gpu_data = lossy ? ReadLayer(f, layer, true) : cpu_data;
  double max_lse = 1.0;
  const Errors cpu_err = ErrorsAgainstReference(f, cpu_data, q, n, qh, cpu.selected, cpu.out, cpu.lse, &max_lse);
  ASSERT_TRUE(std::isfinite(cpu_err.out) && std::isfinite(cpu_err.lse)) << "CPU path broken";
  const double out_tol = 2 * cpu_err.out + 1e-5 * gpu_data.max_abs_v;
  const double lse_tol = 2 * cpu_err.lse + 1e-5 * max_lse;

  for (const char* pass : {"cold", "warm"}) {
    SCOPED_TRACE(pass);
    const Outcome gpu = Attend(f, layer, q, n, qh, gpu_opt);
    EXPECT_TRUE(gpu.stats.on_gpu);
    EXPECT_EQ(gpu.selected, cpu.selected) << "the same routing on both paths";
    const Errors gpu_err = ErrorsAgainstReference(f, gpu_data, q, n, qh, gpu.selected, gpu.out, gpu.lse, &max_lse);
    std::printf("  %s %s: out err gpu %.2e cpu %.2e (tol %.2e) | lse err gpu %.2e cpu %.2e (tol %.2e) | pool hits %llu\n",
                CodecName(f.g.codec), pass, gpu_err.out, cpu_err.out, out_tol, gpu_err.lse, cpu_err.lse, lse_tol,
                static_cast<unsigned long long>(gpu.stats.gpu_pool_hits));
    EXPECT_LE(gpu_err.out, out_tol);
    EXPECT_LE(gpu_err.lse, lse_tol);
    if (std::string(pass) == "warm" && use_cache) {
      EXPECT_EQ(gpu.stats.blocks_read, 0u) << "a warm call reads nothing";
      EXPECT_GT(gpu.stats.gpu_pool_hits, 0u);
    }
    if (!use_cache) {
      EXPECT_EQ(gpu.stats.gpu_pool_hits, 0u) << "use_cache off bypasses the GPU pool";
    }
  }
}

TEST(GpuAttend, RequireWithoutAGpuSaysWhy) {
  std::string why;
  if (attention::CudaAvailable(&why)) GTEST_SKIP() << "a GPU is present: this checks the machines without one";
  TempDir dir;
  Fixture f = MakeStore(dir.Sub("s"), Codec::kF16ShuffleZstd, 64, 16, 2, {100}, uint64_t{16} << 20, 1);
  ASSERT_TRUE(f.store);
  const auto q = msa::testing::RandomVector(4 * 64, 2);
  std::vector<float> out(4 * 64), lse(4);
  AttendOptions o;
  o.gpu = GpuMode::kRequire;
  const Status s = f.store->Attend(0, q.data(), 1, 4, o, out.data(), lse.data());
  EXPECT_EQ(s.code(), Status::Code::kNotSupported) << s.ToString();
  EXPECT_FALSE(s.message().empty());
  // kAuto falls back to the CPU.
  o.gpu = GpuMode::kAuto;
  AttendStats st;
  EXPECT_TRUE(f.store->Attend(0, q.data(), 1, 4, o, out.data(), lse.data(), &st).ok());
  EXPECT_FALSE(st.on_gpu);
  EXPECT_EQ(f.store->AttendDevice(0, q.data(), 1, 4, o, out.data(), lse.data(), nullptr).code(),
            Status::Code::kNotSupported);
}

TEST(GpuAttend, F16OddSizesColdAndWarm) {
  MSA_SKIP_WITHOUT_CUDA();
  TempDir dir;
  // d = 72 (padded to 128 inside), blocks of 13, group 3, documents of odd lengths.
  Fixture f = MakeStore(dir.Sub("s"), Codec::kF16ShuffleZstd, 72, 13, 4, {97, 250, 31}, uint64_t{64} << 20, 10);
  ASSERT_TRUE(f.store);
  CheckGpuAgainstCpu(f, 1, 5, 12, 7, 11);
  CheckGpuAgainstCpu(f, 0, 17, 4, 3, 12);  // another layer, MHA, 17 rows
}

TEST(GpuAttend, HeadDims64And256AndDecode) {
  MSA_SKIP_WITHOUT_CUDA();
  TempDir dir;
  Fixture a = MakeStore(dir.Sub("a"), Codec::kF16ShuffleZstd, 64, 64, 2, {1000, 333}, uint64_t{64} << 20, 20);
  ASSERT_TRUE(a.store);
  CheckGpuAgainstCpu(a, 0, 1, 16, 9, 21);  // decode, GQA 8:1
  Fixture b = MakeStore(dir.Sub("b"), Codec::kF16ShuffleZstd, 256, 32, 1, {450}, uint64_t{64} << 20, 22);
  ASSERT_TRUE(b.store);
  CheckGpuAgainstCpu(b, 1, 3, 8, 5, 23);
}

TEST(GpuAttend, Int8AndInt4Stores) {
  MSA_SKIP_WITHOUT_CUDA();
  TempDir dir;
  Fixture a = MakeStore(dir.Sub("a"), Codec::kInt8, 128, 64, 2, {700, 129}, uint64_t{64} << 20, 30);
  ASSERT_TRUE(a.store);
  CheckGpuAgainstCpu(a, 0, 3, 8, 6, 31);
  Fixture b = MakeStore(dir.Sub("b"), Codec::kInt4, 64, 32, 2, {500}, uint64_t{64} << 20, 32);
  ASSERT_TRUE(b.store);
  CheckGpuAgainstCpu(b, 1, 2, 6, 4, 33);
  // Int8 pages dequantised in the kernel at odd sizes: d = 72 (padded to
  // 128), blocks of 13 (page parameters of odd length), group 3.
  Fixture c = MakeStore(dir.Sub("c"), Codec::kInt8, 72, 13, 4, {97, 250, 31}, uint64_t{64} << 20, 34);
  ASSERT_TRUE(c.store);
  CheckGpuAgainstCpu(c, 1, 5, 12, 7, 35);
  // Int4 pages at odd sizes: blocks of 70 (key groups of 32, 32 and 6),
  // d = 72 (value groups of 32, 32 and 8), short last blocks.
  Fixture e = MakeStore(dir.Sub("e"), Codec::kInt4, 72, 70, 2, {301, 69}, uint64_t{64} << 20, 36);
  ASSERT_TRUE(e.store);
  CheckGpuAgainstCpu(e, 1, 3, 6, 5, 37);
}

TEST(GpuAttend, ColdPathBypassesThePool) {
  MSA_SKIP_WITHOUT_CUDA();
  TempDir dir;
  Fixture f = MakeStore(dir.Sub("s"), Codec::kF16ShuffleZstd, 128, 64, 2, {900}, uint64_t{64} << 20, 40);
  ASSERT_TRUE(f.store);
  CheckGpuAgainstCpu(f, 0, 2, 8, 5, 41, /*use_cache=*/false);
  EXPECT_EQ(f.store->Stats().gpu_pool.resident, 0u) << "cold calls leave the pool as it was";
}

// A pool of a few pages: the working sets of successive queries evict each
// other, and every answer is still right (a page is reused only after the
// kernel that read it; a hit waits for its upload).
TEST(GpuAttend, SmallPoolEvictsAndStaysCorrect) {
  MSA_SKIP_WITHOUT_CUDA();
  TempDir dir;
  // 64 tokens x 64 channels: 16 KiB per page; 40 pages.
  const uint64_t pool = 40 * (2 * 64 * 64 * 2 + 4);
  Fixture f = MakeStore(dir.Sub("s"), Codec::kF16ShuffleZstd, 64, 64, 2, {64 * 60 + 5}, pool, 50);
  ASSERT_TRUE(f.store);
  for (uint64_t seed = 0; seed < 6; ++seed) CheckGpuAgainstCpu(f, seed % 2, 2, 4, 8, 51 + seed);
  const auto st = f.store->Stats().gpu_pool;
  EXPECT_EQ(st.pages, 40u);
  EXPECT_GT(st.evictions, 0u);
  // A call needing more blocks than the pool has pages: kAuto takes the CPU, kRequire says why.
  const auto q = msa::testing::RandomVector(8 * 4 * 64, 59);
  std::vector<float> out(8 * 4 * 64), lse(8 * 4);
  AttendOptions o;
  o.top_k = 30;
  AttendStats as;
  ASSERT_TRUE(f.store->Attend(0, q.data(), 8, 4, o, out.data(), lse.data(), &as).ok());
  EXPECT_FALSE(as.on_gpu);
  o.gpu = GpuMode::kRequire;
  const Status s = f.store->Attend(0, q.data(), 8, 4, o, out.data(), lse.data(), &as);
  EXPECT_EQ(s.code(), Status::Code::kNotSupported) << s.ToString();
}

TEST(GpuAttend, ConcurrentCallsMatchSingleCalls) {
  MSA_SKIP_WITHOUT_CUDA();
  TempDir dir;
  const uint64_t pool = 200 * (2 * 64 * 64 * 2 + 4);  // small: the threads evict each other's blocks
  Fixture f = MakeStore(dir.Sub("s"), Codec::kF16ShuffleZstd, 64, 64, 2, {64 * 200}, pool, 60);
  ASSERT_TRUE(f.store);
  constexpr int kThreads = 4, kQueries = 6;
  const uint32_t n = 2, qh = 8;
  std::vector<std::vector<float>> q(kQueries);
  std::vector<Outcome> want(kQueries);
  AttendOptions o;
  o.top_k = 10;
  o.gpu = GpuMode::kRequire;
  for (int i = 0; i < kQueries; ++i) {
    q[i] = msa::testing::RandomVector(n * qh * 64, 61 + i, 2.0f);
    want[i] = Attend(f, i % 2, q[i], n, qh, o);
  }
  std::vector<int> bad(kThreads, 0);
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int rep = 0; rep < 10; ++rep) {
        const int i = (t + rep) % kQueries;
        std::vector<float> out(n * qh * 64), lse(n * qh);
        const Status s = f.store->Attend(i % 2, q[i].data(), n, qh, o, out.data(), lse.data());
        // The kernel is deterministic and the pages hold the same bits: bit-equal.
        if (!s.ok() || out != want[i].out || lse != want[i].lse) ++bad[t];
      }
    });
  }
  for (auto& th : threads) th.join();
  for (int t = 0; t < kThreads; ++t) EXPECT_EQ(bad[t], 0) << "thread " << t;
}

// Prefetch of a GPU call fills the GPU pool: the attend after it reads
// nothing and copies no block, and answers as without the prefetch.
TEST(GpuAttend, PrefetchFillsThePool) {
  MSA_SKIP_WITHOUT_CUDA();
  TempDir dir;
  Fixture f = MakeStore(dir.Sub("s"), Codec::kInt8, 64, 32, 2, {32 * 50 + 3}, uint64_t{64} << 20, 80);
  ASSERT_TRUE(f.store);
  const uint32_t n = 2, qh = 4;
  const auto q = msa::testing::RandomVector(n * qh * 64, 81);
  AttendOptions o;
  o.top_k = 7;
  o.gpu = GpuMode::kRequire;
  const Outcome plain = Attend(f, 1, q, n, qh, o);
  f.store->ClearGpuPool();
  ASSERT_TRUE(f.store->Prefetch(1, q.data(), n, qh, o).get().ok());
  const Outcome after = Attend(f, 1, q, n, qh, o);
  EXPECT_TRUE(after.stats.on_gpu);
  EXPECT_EQ(after.stats.blocks_read, 0u);
  EXPECT_GT(after.stats.gpu_pool_hits, 0u);
  EXPECT_EQ(after.out, plain.out);
  EXPECT_EQ(after.lse, plain.lse);
  // An error of the prefetch arrives at its future.
  EXPECT_EQ(f.store->Prefetch(7, q.data(), n, qh, o).get().code(), Status::Code::kInvalidArgument);
}

#ifdef MSA_WITH_CUDA
// q, out and lse in device memory on a caller's stream: the same answer as
// the host entry point, bit for bit (same kernel, same pages).
TEST(GpuAttend, DeviceEntryPointMatchesHost) {
  MSA_SKIP_WITHOUT_CUDA();
  TempDir dir;
  Fixture f = MakeStore(dir.Sub("s"), Codec::kF16ShuffleZstd, 128, 64, 2, {64 * 40 + 7}, uint64_t{64} << 20, 70);
  ASSERT_TRUE(f.store);
  const uint32_t n = 3, qh = 8, d = 128;
  const auto q = msa::testing::RandomVector(n * qh * d, 71);
  AttendOptions o;
  o.top_k = 6;
  o.gpu = GpuMode::kRequire;
  const Outcome host = Attend(f, 1, q, n, qh, o);
  cudaStream_t stream;
  ASSERT_EQ(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), cudaSuccess);
  float *dq = nullptr, *dout = nullptr, *dlse = nullptr;
  ASSERT_EQ(cudaMalloc(&dq, q.size() * sizeof(float)), cudaSuccess);
  ASSERT_EQ(cudaMalloc(&dout, q.size() * sizeof(float)), cudaSuccess);
  ASSERT_EQ(cudaMalloc(&dlse, n * qh * sizeof(float)), cudaSuccess);
  ASSERT_EQ(cudaMemcpy(dq, q.data(), q.size() * sizeof(float), cudaMemcpyHostToDevice), cudaSuccess);
  ASSERT_EQ(cudaMemset(dout, 0xff, q.size() * sizeof(float)), cudaSuccess);  // NaN poison
  for (const bool warm : {false, true}) {
    if (!warm) f.store->ClearGpuPool();
    AttendStats st;
    const Status s = f.store->AttendDevice(1, dq, n, qh, o, dout, dlse, stream, &st);
    ASSERT_TRUE(s.ok()) << s.ToString();
    std::vector<float> out(q.size()), lse(n * qh);
    ASSERT_EQ(cudaMemcpyAsync(out.data(), dout, out.size() * sizeof(float), cudaMemcpyDeviceToHost, stream), cudaSuccess);
    ASSERT_EQ(cudaMemcpyAsync(lse.data(), dlse, lse.size() * sizeof(float), cudaMemcpyDeviceToHost, stream), cudaSuccess);
    ASSERT_EQ(cudaStreamSynchronize(stream), cudaSuccess);
    EXPECT_EQ(out, host.out) << (warm ? "warm" : "cold");
    EXPECT_EQ(lse, host.lse) << (warm ? "warm" : "cold");
    EXPECT_EQ(st.gpu_pool_hits > 0, warm);
  }
  // Bad arguments are values, not crashes.
  EXPECT_EQ(f.store->AttendDevice(9, dq, n, qh, o, dout, dlse, stream).code(), Status::Code::kInvalidArgument);
  EXPECT_EQ(f.store->AttendDevice(0, dq, n, 3, o, dout, dlse, stream).code(), Status::Code::kInvalidArgument);
  cudaFree(dq);
  cudaFree(dout);
  cudaFree(dlse);
  cudaStreamDestroy(stream);
}

// The pool alone: hits, LRU eviction, lookup off, capacity, page contents.
TEST(GpuBlockPool, HitsEvictionAndPageContents) {
  MSA_SKIP_WITHOUT_CUDA();
  attention::GpuPoolOptions po;
  po.block_tokens = 4;
  po.head_dim = 8;
  po.pool_bytes = 6 * (2 * 4 * 8 * 2 + 4);  // 6 pages
  po.staging_bytes = 4096;                  // grows on demand
  auto created = attention::GpuBlockPool::Create(po);
  ASSERT_TRUE(created.ok()) << created.status().ToString();
  auto& pool = **created;
  ASSERT_EQ(pool.pages(), 6);
  auto run = [&](std::vector<uint64_t> blocks, bool lookup, std::vector<int32_t>* pages, size_t* n_miss) -> Status {
    std::vector<attention::GpuPoolKey> keys;
    for (uint64_t b : blocks) keys.push_back({7, b});
    attention::GpuBlockPool::BatchPtr batch;
    std::vector<size_t> misses;
    MSA_RETURN_IF_ERROR(pool.Begin(keys, lookup, 64, &batch, pages, &misses));
    *n_miss = misses.size();
    for (size_t m = 0; m < misses.size(); ++m) {
      const uint64_t b = blocks[misses[m]];
      for (int i = 0; i < 32; ++i) {
        pool.StagedKeys(*batch, m)[i] = attention::FloatToHalf(static_cast<float>(b * 100 + i));
        pool.StagedValues(*batch, m)[i] = attention::FloatToHalf(-static_cast<float>(b * 100 + i));
      }
      pool.SetStagedTokens(*batch, m, 1 + static_cast<int32_t>(b % 4));
    }
    void* stream = pool.SlotStream(*batch);
    MSA_RETURN_IF_ERROR(pool.Upload(*batch, stream));
    return pool.Finish(std::move(batch), stream);
  };
  std::vector<int32_t> pages;
  size_t misses = 0;
  ASSERT_TRUE(run({0, 1, 2, 3}, true, &pages, &misses).ok());
  EXPECT_EQ(misses, 4u);
  ASSERT_TRUE(run({2, 3, 0}, true, &pages, &misses).ok());
  EXPECT_EQ(misses, 0u);
  ASSERT_TRUE(run({4, 5, 6}, true, &pages, &misses).ok());  // 2 free pages, then evicts block 1 (LRU)
  EXPECT_EQ(misses, 3u);
  auto st = pool.Stats();
  EXPECT_EQ(st.resident, 6u);
  EXPECT_EQ(st.evictions, 1u);
  ASSERT_TRUE(run({1}, true, &pages, &misses).ok());
  EXPECT_EQ(misses, 1u) << "block 1 was the least recently used";
  ASSERT_TRUE(run({9, 10}, false, &pages, &misses).ok());
  EXPECT_EQ(pool.Stats().resident, 6u - 2u) << "lookup off: its pages are freed again, nothing kept";
  EXPECT_EQ(run({1, 2, 3, 4, 5, 6, 7}, true, &pages, &misses).code(), Status::Code::kNotSupported);

  // Page contents: keys, values and the token count of each resident block.
  ASSERT_TRUE(run({0, 1, 2}, true, &pages, &misses).ok());
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  const auto table = pool.table();
  for (int i = 0; i < 3; ++i) {
    std::vector<uint16_t> k(32), v(32);
    int32_t len = 0;
    ASSERT_EQ(cudaMemcpy(k.data(), table.keys + pages[i] * 32, 64, cudaMemcpyDeviceToHost), cudaSuccess);
    ASSERT_EQ(cudaMemcpy(v.data(), table.values + pages[i] * 32, 64, cudaMemcpyDeviceToHost), cudaSuccess);
    ASSERT_EQ(cudaMemcpy(&len, table.block_len + pages[i], 4, cudaMemcpyDeviceToHost), cudaSuccess);
    EXPECT_EQ(len, 1 + i % 4);
    for (int c = 0; c < len * 8; ++c) {  // only the valid rows are copied
      EXPECT_EQ(attention::HalfToFloat(k[c]), static_cast<float>(i * 100 + c));
      EXPECT_EQ(attention::HalfToFloat(v[c]), -static_cast<float>(i * 100 + c));
    }
  }
}
#endif

}  // namespace
}  // namespace msa
