// One layer's attend, end to end (route + fetch + stage + copy + kernel),
// on the GPU and on the CPU, warm and cold (issue 6; BENCHMARKS.md "GPU
// attend end to end").
//
//   msa_bench_gpu_attend DIR [--blocks 64,1024] [--top-k 62] [--n 1,8] [--reps 200]
//                            [--codec f16|int8|int4] [--fp16-pages 0|1]
//
// For each stream length (blocks of 64 tokens per KV head) it creates a
// one-layer store in DIR (8 KV heads, head dim 128, the f16 codec unless
// told, Gaussian K/V), then times Store::Attend for 32 query heads (an int8
// or int4 store's GPU pool holds its codes unless --fp16-pages 1):
//   gpu warm        every block in the GPU pool (no copy of K/V)
//   gpu host-warm   GPU pool cleared before each call, blocks in the host cache
//   gpu cold        GPU pool and host cache bypassed (use_cache off): disk reads
//   device warm     AttendDevice, q/out/lse in GPU memory, until the stream is done
//   cpu warm/cold   the CPU path (GpuMode::kOff), host cache / disk
// Each row: p50 and p99 of the call's wall time in microseconds, and the
// medians of its stages (route, fetch+decode, stage, attend = kernel+copies).
#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <functional>
#include <sstream>
#include <string>
#include <vector>

#include "store/store.h"
#include "tests/test_util.h"

namespace {

using Clock = std::chrono::steady_clock;

std::vector<int> ParseList(const std::string& s) {
  std::vector<int> v;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, ',')) v.push_back(std::stoi(item));
  return v;
}

double Pct(std::vector<double> v, double p) {
  std::sort(v.begin(), v.end());
  return v[std::min(v.size() - 1, static_cast<size_t>(p * (v.size() - 1) + 0.5))];
}

struct Series {
  std::vector<double> total, route, plan, pool, fetch, stage, attend, hits;
  void Add(double us, const msa::AttendStats& st) {
    total.push_back(us);
    route.push_back(st.route_ms * 1e3);
    plan.push_back(st.plan_ms * 1e3);
    pool.push_back(st.pool_ms * 1e3);
    fetch.push_back((st.fetch_ms + st.decode_ms) * 1e3);
    stage.push_back(st.upload_ms * 1e3);
    attend.push_back(st.attend_ms * 1e3);
    hits.push_back(static_cast<double>(st.gpu_pool_hits));
  }
};

#define CHECK_OK(expr)                                                        \
  do {                                                                        \
    const msa::Status s_ = (expr);                                            \
    if (!s_.ok()) {                                                           \
      std::fprintf(stderr, "%s: %s\n", #expr, s_.ToString().c_str());         \
      std::exit(1);                                                           \
    }                                                                         \
  } while (0)
#define CHECK_CUDA(expr)                                                      \
  do {                                                                        \
    const cudaError_t e_ = (expr);                                            \
    if (e_ != cudaSuccess) {                                                  \
      std::fprintf(stderr, "%s: %s\n", #expr, cudaGetErrorString(e_));        \
      std::exit(1);                                                           \
    }                                                                         \
  } while (0)

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr,
                 "usage: %s DIR [--blocks 64,1024] [--top-k 62] [--n 1,8] [--reps 200] [--codec f16|int8|int4] "
                 "[--fp16-pages 0|1]\n",
                 argv[0]);
    return 2;
  }
  const std::string dir = argv[1];
  std::vector<int> blocks_list = {64, 1024}, n_list = {1, 8};
  int top_k = 62, reps = 200;
  msa::Codec codec = msa::Codec::kF16ShuffleZstd;
  bool fp16_pages = false;
  for (int i = 2; i + 1 < argc; i += 2) {
    const std::string a = argv[i];
    if (a == "--blocks") blocks_list = ParseList(argv[i + 1]);
    else if (a == "--n") n_list = ParseList(argv[i + 1]);
    else if (a == "--top-k") top_k = std::atoi(argv[i + 1]);
    else if (a == "--reps") reps = std::atoi(argv[i + 1]);
    else if (a == "--codec" && std::string(argv[i + 1]) == "int8") codec = msa::Codec::kInt8;
    else if (a == "--codec" && std::string(argv[i + 1]) == "int4") codec = msa::Codec::kInt4;
    else if (a == "--codec" && std::string(argv[i + 1]) == "f16") codec = msa::Codec::kF16ShuffleZstd;
    else if (a == "--fp16-pages") fp16_pages = std::atoi(argv[i + 1]) != 0;
    else {
      std::fprintf(stderr, "unknown argument %s\n", a.c_str());
      return 2;
    }
  }
  // Without a device (a CPU-only machine) only the CPU rows run.
  cudaDeviceProp prop;
  const bool have_gpu = cudaGetDeviceProperties(&prop, 0) == cudaSuccess;
  const bool quantised = codec == msa::Codec::kInt8 || codec == msa::Codec::kInt4;
  std::printf("device: %s; codec %s%s\n", have_gpu ? prop.name : "none (CPU rows only)", msa::CodecName(codec),
              quantised ? (fp16_pages ? ", fp16 GPU pages" : ", quantised GPU pages") : "");
  const uint32_t kv_heads = 8, q_heads = 32, d = 128, bt = 64;

  std::printf("%-6s %-3s %-14s %9s %9s | %8s %8s %8s %8s %8s %8s | %5s\n", "blocks", "n", "path", "p50 us",
              "p99 us", "route", "plan", "pool", "fetch", "stage", "attend", "hits");
  for (int blocks : blocks_list) {
    const std::string path = dir + "/store_" + std::to_string(blocks);
    std::filesystem::remove_all(path);
    msa::Geometry g;
    g.layers = 1;
    g.kv_heads = kv_heads;
    g.head_dim = d;
    g.block_tokens = bt;
    g.codec = codec;
    msa::StoreOptions so;
    so.cache_bytes = uint64_t{2} << 30;
    so.gpu_quantized_pages = !fp16_pages;
    auto created = msa::Store::Create(path, g, so);
    CHECK_OK(created.status());
    auto& store = *created;
    const uint64_t tokens = static_cast<uint64_t>(blocks) * bt;
    const size_t elems = static_cast<size_t>(kv_heads) * tokens * d;
    {
      auto k = msa::testing::RandomVector(elems, 1), v = msa::testing::RandomVector(elems, 2);
      CHECK_OK(store->AppendDocument("doc", {k.data(), v.data(), tokens, msa::ElementType::kFloat32}).status());
      CHECK_OK(store->Commit());
    }
    for (int n : n_list) {
      const size_t q_elems = static_cast<size_t>(n) * q_heads * d;
      auto q = msa::testing::RandomVector(q_elems, 3 + n);
      std::vector<float> out(q_elems), lse(static_cast<size_t>(n) * q_heads);
      float *dq = nullptr, *dout = nullptr, *dlse = nullptr;
      cudaStream_t stream = nullptr;
      if (have_gpu) {
        CHECK_CUDA(cudaMalloc(&dq, q_elems * 4));
        CHECK_CUDA(cudaMalloc(&dout, q_elems * 4));
        CHECK_CUDA(cudaMalloc(&dlse, lse.size() * 4));
        CHECK_CUDA(cudaMemcpy(dq, q.data(), q_elems * 4, cudaMemcpyHostToDevice));
        CHECK_CUDA(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
      }

      auto run = [&](const char* name, msa::GpuMode mode, bool use_cache, bool clear_pool, bool device, int count) {
        msa::AttendOptions o;
        o.top_k = static_cast<uint32_t>(top_k);
        o.gpu = mode;
        o.use_cache = use_cache;
        Series s;
        for (int r = -5; r < count; ++r) {  // 5 warm-up calls
          if (clear_pool) store->ClearGpuPool();
          msa::AttendStats st;
          const auto t0 = Clock::now();
          if (device) {
            CHECK_OK(store->AttendDevice(0, dq, n, q_heads, o, dout, dlse, stream, &st));
            CHECK_CUDA(cudaStreamSynchronize(stream));
          } else {
            CHECK_OK(store->Attend(0, q.data(), n, q_heads, o, out.data(), lse.data(), &st));
          }
          const double us = std::chrono::duration<double, std::micro>(Clock::now() - t0).count();
          if (mode != msa::GpuMode::kOff && !st.on_gpu) {
            std::fprintf(stderr, "%s: did not run on the GPU\n", name);
            std::exit(1);
          }
          if (r >= 0) s.Add(us, st);
        }
        std::printf("%-6d %-3d %-14s %9.1f %9.1f | %8.1f %8.1f %8.1f %8.1f %8.1f %8.1f | %5.0f\n", blocks, n, name,
                    Pct(s.total, 0.5), Pct(s.total, 0.99), Pct(s.route, 0.5), Pct(s.plan, 0.5), Pct(s.pool, 0.5),
                    Pct(s.fetch, 0.5), Pct(s.stage, 0.5), Pct(s.attend, 0.5), Pct(s.hits, 0.5));
        std::fflush(stdout);
      };
      if (have_gpu) {
        run("gpu warm", msa::GpuMode::kRequire, true, false, false, reps);
        run("device warm", msa::GpuMode::kRequire, true, false, true, reps);
        run("gpu host-warm", msa::GpuMode::kRequire, true, true, false, reps);
        run("gpu cold", msa::GpuMode::kRequire, false, false, false, std::max(20, reps / 5));
      }
      run("cpu warm", msa::GpuMode::kOff, true, false, false, std::max(20, reps / 5));
      run("cpu cold", msa::GpuMode::kOff, false, false, false, std::max(20, reps / 5));
      if (have_gpu) {
        CHECK_CUDA(cudaFree(dq));
        CHECK_CUDA(cudaFree(dout));
        CHECK_CUDA(cudaFree(dlse));
        CHECK_CUDA(cudaStreamDestroy(stream));
      }
    }
  }
  return 0;
}
