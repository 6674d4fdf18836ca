#include "store/router.h"

#include <faiss/IndexFlat.h>

#include <algorithm>
#include <limits>
#include <unordered_set>

namespace msa {

Router::Router(const Geometry& geometry) : head_dim_(geometry.head_dim) {
  indexes_.reserve(geometry.streams());
  for (uint32_t s = 0; s < geometry.streams(); ++s) {
    indexes_.push_back(std::make_unique<faiss::IndexFlatIP>(geometry.head_dim));
  }
}

Router::~Router() = default;

void Router::Add(uint32_t stream, std::span<const float> summaries) {
  const faiss::Index::idx_t n = static_cast<faiss::Index::idx_t>(summaries.size() / head_dim_);
  if (n > 0) indexes_[stream]->add(n, summaries.data());
}

void Router::Reserve(uint32_t stream, uint64_t blocks) {
  auto& codes = indexes_[stream]->codes;
  codes.reserve(codes.size() + blocks * head_dim_ * sizeof(float));
}

uint64_t Router::blocks(uint32_t stream) const {
  return static_cast<uint64_t>(indexes_[stream]->ntotal);
}

std::vector<ScoredBlock> Router::Search(uint32_t stream, const float* queries, int group_size,
                                        int k) const {
  const faiss::IndexFlatIP& index = *indexes_[stream];
  const int64_t total = index.ntotal;
  const int64_t kk = std::min<int64_t>(k, total);
  if (kk <= 0 || group_size <= 0) return {};
  std::vector<float> distances(static_cast<size_t>(group_size * kk));
  std::vector<faiss::Index::idx_t> labels(static_cast<size_t>(group_size * kk));
  index.search(group_size, queries, kk, distances.data(), labels.data());

  // Rescore the union of the heads' candidates with the group score (max).
  const float* xb = index.get_xb();
  std::unordered_set<faiss::Index::idx_t> seen;
  std::vector<ScoredBlock> scored;
  for (const faiss::Index::idx_t id : labels) {
    if (id < 0 || !seen.insert(id).second) continue;
    const float* summary = xb + static_cast<size_t>(id) * head_dim_;
    float best = -std::numeric_limits<float>::infinity();
    for (int h = 0; h < group_size; ++h) {
      const float* q = queries + static_cast<size_t>(h) * head_dim_;
      float dot = 0.0f;
      for (uint32_t c = 0; c < head_dim_; ++c) dot += q[c] * summary[c];
      best = std::max(best, dot);
    }
    scored.push_back({static_cast<uint64_t>(id), best});
  }
  const size_t keep = std::min<size_t>(scored.size(), static_cast<size_t>(kk));
  std::partial_sort(scored.begin(), scored.begin() + keep, scored.end(),
                    [](const ScoredBlock& a, const ScoredBlock& b) {
                      return a.score > b.score || (a.score == b.score && a.block < b.block);
                    });
  scored.resize(keep);
  return scored;
}

}  // namespace msa
