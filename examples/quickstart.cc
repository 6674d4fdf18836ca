// The C API from C++: handles owned by std::unique_ptr, errors thrown as
// exceptions, the documents listed, and the next layer's blocks prefetched
// while this layer attends. tests/ builds and runs it; README shows it.
#include <cmath>
#include <cstdio>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "msa.h"

namespace {

void Check(msa_status_t status, const char* what) {
  if (status != MSA_OK) throw std::runtime_error(std::string(what) + ": " + msa_last_error());
}

template <auto Free>
struct Deleter {
  template <typename T>
  void operator()(T* p) const { Free(p); }
};
using Store = std::unique_ptr<msa_store_t, Deleter<msa_store_close>>;
using Prefetch = std::unique_ptr<msa_prefetch_t, Deleter<msa_prefetch_free>>;
using Documents = std::unique_ptr<msa_document_t, Deleter<msa_documents_free>>;

constexpr uint32_t kLayers = 2, kKvHeads = 2, kHeadDim = 64, kQHeads = 8;

// K or V of a document: [layers, kv_heads, tokens, head_dim], float32.
std::vector<float> Tensor(uint64_t tokens, float frequency) {
  std::vector<float> x(kLayers * kKvHeads * tokens * kHeadDim);
  for (size_t i = 0; i < x.size(); ++i) x[i] = std::sin(frequency * static_cast<float>(i));
  return x;
}

}  // namespace

int main(int argc, char** argv) try {
  const std::string path = argc > 1 ? argv[1] : "quickstart-store";
  {
    msa_geometry_t geometry = msa_geometry_default_params();
    geometry.layers = kLayers;
    geometry.kv_heads = kKvHeads;
    geometry.head_dim = kHeadDim;
    msa_store_t* raw = nullptr;
    Check(msa_store_create(path.c_str(), &geometry, &raw), "create");
    Store store(raw);
    for (const auto& [name, tokens] : {std::pair{"intro", 200}, std::pair{"body", 700}}) {
      const std::vector<float> keys = Tensor(tokens, 0.37f), values = Tensor(tokens, 0.11f);
      Check(msa_append_document(store.get(), name, keys.data(), values.data(), tokens,
                                MSA_FLOAT32, nullptr), "append");
    }
    Check(msa_commit(store.get()), "commit");
  }  // closed

  msa_store_t* raw = nullptr;
  Check(msa_store_open(path.c_str(), /*read_only=*/1, &raw), "open");
  Store store(raw);
  msa_document_t* listed = nullptr;
  size_t count = 0;
  Check(msa_list_documents(store.get(), &listed, &count), "list");
  Documents documents(listed);
  for (size_t i = 0; i < count; ++i) {
    std::printf("document %llu '%s': %llu tokens\n", (unsigned long long)listed[i].id,
                listed[i].name, (unsigned long long)listed[i].tokens);
  }

  // One query row per layer: [1, q_heads, head_dim]. Layer 1's blocks are
  // read from disk while layer 0 attends; layer 1 then finds them cached.
  std::vector<float> q0(kQHeads * kHeadDim, 0.5f), q1(kQHeads * kHeadDim, -0.25f);
  std::vector<float> out(kQHeads * kHeadDim), lse(kQHeads);
  const msa_attend_params_t params = msa_attend_default_params();
  msa_prefetch_t* started = nullptr;
  Check(msa_prefetch(store.get(), 1, q1.data(), 1, kQHeads, &params, &started), "prefetch");
  Prefetch next(started);
  Check(msa_attend(store.get(), 0, q0.data(), 1, kQHeads, &params, out.data(), lse.data()),
        "attend layer 0");
  Check(msa_prefetch_wait(next.get()), "prefetch layer 1");
  Check(msa_attend(store.get(), 1, q1.data(), 1, kQHeads, &params, out.data(), lse.data()),
        "attend layer 1");
  msa_stats_t stats;
  Check(msa_store_stats(store.get(), &stats), "stats");
  std::printf("layer 1: lse[0] %.4f, %llu blocks from the cache, %llu from disk\n", lse[0],
              (unsigned long long)stats.cache_hits, (unsigned long long)stats.cache_misses);
  // With a GPU the prefetch fills the GPU pool instead of the host cache,
  // whose counters these are.
  const bool prefetched = stats.cache_hits > 0 || msa_gpu_available(nullptr);
  return prefetched && std::isfinite(lse[0]) ? 0 : 1;
} catch (const std::exception& e) {
  std::fprintf(stderr, "quickstart: %s\n", e.what());
  return 1;
}
