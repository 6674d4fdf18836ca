// Standalone benchmark of SparseAttentionCudaF16, or with the argument
// "int8" or "int4" of SparseAttentionCudaQuantized over int8 or int4 pages
// (timing only, random data).
// Cases: n in {1,8,64}, budget in {2048,8192,32768} tokens per KV head,
// 8 KV heads, 32 q heads, head_dim 128, 64-token blocks, every (row, KV head)
// selects all the blocks of its KV head. Prints CSV
//   n,budget,kernel_us,gbps_unique,kernel_us_backtoback,kernel_us_cold,gbps_cold
// and two ceilings: the D2D memcpy bandwidth of a 1 GiB buffer (read+write)
// and a read-only stream over it (what an attention kernel does).
//   kernel_us: median of 50 single calls between two events (what
//     tools/bench_sdpa.py's sdpa_us measures); at budgets of 2K and 8K the K/V
//     (8 and 32 MiB) stay in the 50 MiB L2 between calls, so this is L2-warm.
//   kernel_us_backtoback: 50 calls between two events, divided by 50.
//   kernel_us_cold: median of 50 single calls, each after writing a 256 MiB
//     buffer to evict the K/V from L2: the number to hold against HBM bandwidth.
//   gbps_*: unique K/V bytes (8 KV heads x budget x 128 x 2 B x 2; int8: 1 B
//     per element, int4 half a byte, the pages' parameters not counted) over
//     the time.
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

#include "attention/sparse_attention_cuda.h"

using namespace msa::attention;

#define CK(x)                                                                       \
  do {                                                                              \
    cudaError_t e_ = (x);                                                           \
    if (e_ != cudaSuccess) {                                                        \
      std::fprintf(stderr, "%s:%d %s: %s\n", __FILE__, __LINE__, #x,                \
                   cudaGetErrorString(e_));                                         \
      std::exit(1);                                                                 \
    }                                                                               \
  } while (0)

// Read-only streaming ceiling: every thread sums 16-byte loads of a buffer
// (grid-stride, 4 loads in flight); the sum is written only if it matches a
// value it never takes, so the loads cannot be dropped.
__global__ void ReadOnlyKernel(const uint4* __restrict__ p, size_t n, uint4* sink) {
  uint32_t acc = 0;
  const size_t stride = size_t(gridDim.x) * blockDim.x;
  size_t i = size_t(blockIdx.x) * blockDim.x + threadIdx.x;
  for (; i + 3 * stride < n; i += 4 * stride) {
    const uint4 a = p[i], b = p[i + stride], c = p[i + 2 * stride], d = p[i + 3 * stride];
    acc += a.x ^ b.y ^ c.z ^ d.w;
  }
  for (; i < n; i += stride) acc += p[i].x;
  if (acc == 0x9e3779b9u) sink[0] = make_uint4(acc, 0, 0, 0);
}

static float Median(std::vector<float> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

int main(int argc, char** argv) {
  const int kv_heads = 8, q_heads = 32, head_dim = 128, block_tokens = 64;
  const int warmup = 10, iters = 50;
  cudaDeviceProp prop;
  CK(cudaGetDeviceProperties(&prop, 0));
  std::printf("# device: %s, SMs %d\n", prop.name, prop.multiProcessorCount);

  cudaEvent_t e0, e1;
  CK(cudaEventCreate(&e0));
  CK(cudaEventCreate(&e1));

  // Copy bandwidth: D2D cudaMemcpy of 1 GiB, bytes counted read + write.
  {
    const size_t bytes = size_t(1) << 30;
    void *a, *b;
    CK(cudaMalloc(&a, bytes));
    CK(cudaMalloc(&b, bytes));
    CK(cudaMemset(a, 1, bytes));
    for (int i = 0; i < 3; ++i) CK(cudaMemcpy(b, a, bytes, cudaMemcpyDeviceToDevice));
    std::vector<float> t;
    for (int i = 0; i < 20; ++i) {
      CK(cudaEventRecord(e0));
      CK(cudaMemcpyAsync(b, a, bytes, cudaMemcpyDeviceToDevice));
      CK(cudaEventRecord(e1));
      CK(cudaEventSynchronize(e1));
      float ms;
      CK(cudaEventElapsedTime(&ms, e0, e1));
      t.push_back(ms);
    }
    const float ms = Median(t);
    std::printf("# memcpy_d2d_1GiB: %.3f ms, %.1f GB/s (read+write)\n", ms, 2.0 * bytes / (ms * 1e6));
    // The attention kernel only reads K/V: a read-only stream is its ceiling.
    t.clear();
    for (int i = 0; i < 23; ++i) {
      CK(cudaEventRecord(e0));
      ReadOnlyKernel<<<prop.multiProcessorCount * 8, 512>>>(static_cast<const uint4*>(a), bytes / 16,
                                                           static_cast<uint4*>(b));
      CK(cudaEventRecord(e1));
      CK(cudaEventSynchronize(e1));
      CK(cudaGetLastError());
      float ms_r;
      CK(cudaEventElapsedTime(&ms_r, e0, e1));
      if (i >= 3) t.push_back(ms_r);
    }
    const float ms_read = Median(t);
    std::printf("# read_only_1GiB: %.3f ms, %.1f GB/s (read)\n", ms_read, bytes / (ms_read * 1e6));
    CK(cudaFree(a));
    CK(cudaFree(b));
  }

  // Written between cold-timed calls: larger than L2, so the K/V come from HBM.
  const size_t flush_bytes = size_t(256) << 20;
  void* flush;
  CK(cudaMalloc(&flush, flush_bytes));

  std::mt19937 rng(42);
  std::uniform_real_distribution<float> U(-1.f, 1.f);
  // Arguments, in any order: int8 or int4 (quantised pages), fp16-q (q
  // rounded to fp16, as SDPA's fp16 input is: the kernel then skips q's zero
  // lo half). only=N,BUDGET runs that one case (for a profiler).
  int bits = 0;  // 0: fp16 K/V
  bool fp16_q = false;
  int only_n = 0, only_budget = 0;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "int8") bits = 8;
    if (a == "int4") bits = 4;
    fp16_q |= a == "fp16-q";
    if (a.rfind("only=", 0) == 0 && std::sscanf(a.c_str() + 5, "%d,%d", &only_n, &only_budget) != 2) {
      std::fprintf(stderr, "only=N,BUDGET expected, got %s\n", a.c_str());
      return 2;
    }
  }
  std::printf("# K/V format: %s; q %s\n",
              bits == 8 ? "int8 pages, dequantised in the kernel"
              : bits == 4 ? "int4 pages, dequantised in the kernel"
                          : "fp16",
              fp16_q ? "rounded to fp16" : "float32 (hi + lo fp16)");
  std::printf("n,budget,kernel_us,gbps_unique,kernel_us_backtoback,kernel_us_cold,gbps_cold\n");
  for (int budget : {2048, 8192, 32768}) {
    if (only_budget != 0 && budget != only_budget) continue;
    const int nb_per_head = budget / block_tokens;
    const int num_blocks = kv_heads * nb_per_head;
    const size_t kv_elems = size_t(num_blocks) * block_tokens * head_dim;
    std::vector<__half> hk(kv_elems), hv(kv_elems);
    for (size_t i = 0; i < kv_elems; ++i) {
      hk[i] = __float2half(U(rng));
      hv[i] = __float2half(U(rng));
    }
    __half *dk, *dv;
    int32_t* dlen;
    CK(cudaMalloc(&dk, kv_elems * 2));
    CK(cudaMalloc(&dv, kv_elems * 2));
    CK(cudaMalloc(&dlen, num_blocks * 4));
    CK(cudaMemcpy(dk, hk.data(), kv_elems * 2, cudaMemcpyHostToDevice));
    CK(cudaMemcpy(dv, hv.data(), kv_elems * 2, cudaMemcpyHostToDevice));
    std::vector<int32_t> hlen(num_blocks, block_tokens);
    CK(cudaMemcpy(dlen, hlen.data(), num_blocks * 4, cudaMemcpyHostToDevice));
    // Quantised pages: random codes, every scale 2/levels and min -1 (values in [-1, 1]).
    const QuantizedPageLayout layout = QuantizedPages(bits == 0 ? 8 : bits, block_tokens, head_dim);
    unsigned char *dk8 = nullptr, *dv8 = nullptr;
    if (bits != 0) {
      std::vector<unsigned char> kp(size_t(num_blocks) * layout.page_bytes), vp(kp.size());
      std::uniform_int_distribution<int> byte(0, 255);
      for (size_t i = 0; i < kp.size(); ++i) {
        kp[i] = static_cast<unsigned char>(byte(rng));
        vp[i] = static_cast<unsigned char>(byte(rng));
      }
      const __half scale = __float2half(2.0f / ((1 << bits) - 1)), minv = __float2half(-1.0f);
      const int key_params = int(layout.key_groups) * head_dim, value_params = block_tokens * int(layout.value_groups);
      for (int b = 0; b < num_blocks; ++b) {
        auto* kpar = reinterpret_cast<__half*>(&kp[size_t(b) * layout.page_bytes]);
        auto* vpar = reinterpret_cast<__half*>(&vp[size_t(b) * layout.page_bytes]);
        for (int c = 0; c < key_params; ++c) kpar[c] = scale, kpar[key_params + c] = minv;
        for (int t = 0; t < value_params; ++t) vpar[t] = scale, vpar[value_params + t] = minv;
      }
      CK(cudaMalloc(&dk8, kp.size()));
      CK(cudaMalloc(&dv8, vp.size()));
      CK(cudaMemcpy(dk8, kp.data(), kp.size(), cudaMemcpyHostToDevice));
      CK(cudaMemcpy(dv8, vp.data(), vp.size(), cudaMemcpyHostToDevice));
    }

    for (int n : {1, 8, 64}) {
      if (only_n != 0 && n != only_n) continue;
      // Selection: row i, KV head g -> blocks [g*nb, (g+1)*nb).
      std::vector<int32_t> idx(size_t(n) * kv_heads * nb_per_head), cnt(size_t(n) * kv_heads);
      for (int i = 0; i < n; ++i)
        for (int g = 0; g < kv_heads; ++g) {
          cnt[i * kv_heads + g] = nb_per_head;
          for (int j = 0; j < nb_per_head; ++j)
            idx[(size_t(i) * kv_heads + g) * nb_per_head + j] = g * nb_per_head + j;
        }
      std::vector<float> hq(size_t(n) * q_heads * head_dim);
      for (auto& x : hq) x = fp16_q ? __half2float(__float2half(U(rng))) : U(rng);
      int32_t *didx, *dcnt;
      float *dq, *dout, *dlse;
      CK(cudaMalloc(&didx, idx.size() * 4));
      CK(cudaMalloc(&dcnt, cnt.size() * 4));
      CK(cudaMalloc(&dq, hq.size() * 4));
      CK(cudaMalloc(&dout, hq.size() * 4));
      CK(cudaMalloc(&dlse, size_t(n) * q_heads * 4));
      CK(cudaMemcpy(didx, idx.data(), idx.size() * 4, cudaMemcpyHostToDevice));
      CK(cudaMemcpy(dcnt, cnt.data(), cnt.size() * 4, cudaMemcpyHostToDevice));
      CK(cudaMemcpy(dq, hq.data(), hq.size() * 4, cudaMemcpyHostToDevice));

      AttentionShape shape;
      shape.n_queries = n;
      shape.q_heads = q_heads;
      shape.kv_heads = kv_heads;
      shape.head_dim = head_dim;
      shape.block_tokens = block_tokens;
      shape.scale = 1.0f / std::sqrt(float(head_dim));
      BlockTable<uint16_t> table;
      table.num_blocks = num_blocks;
      table.keys = reinterpret_cast<const uint16_t*>(dk);
      table.values = reinterpret_cast<const uint16_t*>(dv);
      table.block_len = dlen;
      Selection sel;
      sel.max_blocks = nb_per_head;
      sel.block_index = didx;
      sel.count = dcnt;

      const BlockTable<uint8_t> pages{num_blocks, dk8, dv8, dlen};
      auto launch = [&] {
        msa::Status s = bits != 0 ? SparseAttentionCudaQuantized(shape, pages, layout, sel, dq, dout, dlse, nullptr)
                                  : SparseAttentionCudaF16(shape, table, sel, dq, dout, dlse, nullptr);
        if (!s.ok()) {
          std::fprintf(stderr, "launch failed: %s\n", s.ToString().c_str());
          std::exit(1);
        }
      };
      for (int i = 0; i < warmup; ++i) launch();
      CK(cudaDeviceSynchronize());
      std::vector<float> t;
      for (int i = 0; i < iters; ++i) {
        CK(cudaEventRecord(e0));
        launch();
        CK(cudaEventRecord(e1));
        CK(cudaEventSynchronize(e1));
        float ms;
        CK(cudaEventElapsedTime(&ms, e0, e1));
        t.push_back(ms);
      }
      CK(cudaGetLastError());
      const float us = Median(t) * 1e3f;

      CK(cudaEventRecord(e0));
      for (int i = 0; i < iters; ++i) launch();
      CK(cudaEventRecord(e1));
      CK(cudaEventSynchronize(e1));
      float ms_b2b;
      CK(cudaEventElapsedTime(&ms_b2b, e0, e1));
      const float us_b2b = ms_b2b * 1e3f / iters;

      std::vector<float> tc;
      for (int i = 0; i < iters; ++i) {
        CK(cudaMemsetAsync(flush, i & 0xff, flush_bytes));
        CK(cudaEventRecord(e0));
        launch();
        CK(cudaEventRecord(e1));
        CK(cudaEventSynchronize(e1));
        float ms;
        CK(cudaEventElapsedTime(&ms, e0, e1));
        tc.push_back(ms);
      }
      CK(cudaGetLastError());
      const float us_cold = Median(tc) * 1e3f;
      const double bytes = double(kv_heads) * budget * head_dim * (bits == 0 ? 2.0 : bits / 8.0) * 2;  // K+V unique
      std::printf("%d,%d,%.2f,%.1f,%.2f,%.2f,%.1f\n", n, budget, us, bytes / (us * 1e3), us_b2b, us_cold,
                  bytes / (us_cold * 1e3));
      std::fflush(stdout);
      CK(cudaFree(didx));
      CK(cudaFree(dcnt));
      CK(cudaFree(dq));
      CK(cudaFree(dout));
      CK(cudaFree(dlse));
    }
    CK(cudaFree(dk));
    CK(cudaFree(dv));
    CK(cudaFree(dlen));
    if (bits != 0) {
      CK(cudaFree(dk8));
      CK(cudaFree(dv8));
    }
  }
  CK(cudaFree(flush));
  return 0;
}
