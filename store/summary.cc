#include "store/summary.h"

#include <algorithm>
#include <limits>
#include <vector>

#include "store/encode_kernel.h"

namespace msa {

namespace {

float Dot(const float* a, const float* b, uint32_t n) {
  float s = 0.0f;
  for (uint32_t i = 0; i < n; ++i) s += a[i] * b[i];
  return s;
}

// Lloyd's k-means (squared L2) of the block's keys into c centroids, seeded
// with evenly spaced tokens: deterministic, so a rebuilt summary is
// bit-identical. A block of fewer tokens than centroids repeats tokens.
void KMeans(const float* keys, uint32_t tokens, uint32_t d, uint32_t c, float* centroids) {
  for (uint32_t j = 0; j < c; ++j) {
    const uint32_t t = static_cast<uint32_t>((static_cast<uint64_t>(j) * tokens) / c);
    std::copy(keys + static_cast<size_t>(t) * d, keys + static_cast<size_t>(t + 1) * d,
              centroids + static_cast<size_t>(j) * d);
  }
  if (tokens <= c) return;
  std::vector<uint32_t> assign(tokens, 0);
  std::vector<float> sum(static_cast<size_t>(c) * d);
  std::vector<uint32_t> count(c);
  constexpr int kIterations = 8;
  for (int it = 0; it < kIterations; ++it) {
    bool changed = false;
    for (uint32_t t = 0; t < tokens; ++t) {
      const float* k = keys + static_cast<size_t>(t) * d;
      float best = std::numeric_limits<float>::infinity();
      uint32_t arg = 0;
      for (uint32_t j = 0; j < c; ++j) {
        const float* m = centroids + static_cast<size_t>(j) * d;
        float dist = 0.0f;
        for (uint32_t i = 0; i < d; ++i) dist += (k[i] - m[i]) * (k[i] - m[i]);
        if (dist < best) {
          best = dist;
          arg = j;
        }
      }
      changed = changed || assign[t] != arg || it == 0;
      assign[t] = arg;
    }
    if (!changed) break;
    std::fill(sum.begin(), sum.end(), 0.0f);
    std::fill(count.begin(), count.end(), 0u);
    for (uint32_t t = 0; t < tokens; ++t) {
      const float* k = keys + static_cast<size_t>(t) * d;
      float* s = sum.data() + static_cast<size_t>(assign[t]) * d;
      for (uint32_t i = 0; i < d; ++i) s[i] += k[i];
      count[assign[t]]++;
    }
    for (uint32_t j = 0; j < c; ++j) {
      if (count[j] == 0) continue;  // an empty cluster keeps its centroid
      for (uint32_t i = 0; i < d; ++i) {
        centroids[static_cast<size_t>(j) * d + i] = sum[static_cast<size_t>(j) * d + i] / count[j];
      }
    }
  }
}

}  // namespace

uint32_t IndexVectorsPerBlock(const Geometry& g) {
  switch (g.summary) {
    case SummaryKind::kCentroids: return g.summary_centroids;
    case SummaryKind::kHybrid: return 2;
    default: return 1;
  }
}

uint32_t IndexVectorDim(const Geometry& g) {
  return g.summary == SummaryKind::kBound || g.summary == SummaryKind::kHybrid ? 2 * g.head_dim
                                                                                : g.head_dim;
}

void Summarize(const Geometry& g, const float* keys, uint32_t tokens, float* out) {
  const uint32_t d = g.head_dim;
  switch (g.summary) {
    case SummaryKind::kMean: {
      std::fill(out, out + d, 0.0f);
      ColumnSum(keys, tokens, d, out);
      for (uint32_t c = 0; c < d; ++c) out[c] /= static_cast<float>(tokens);
      return;
    }
    case SummaryKind::kBound: {
      float* mx = out;
      float* mn = out + d;
      std::copy(keys, keys + d, mx);
      std::copy(keys, keys + d, mn);
      if (tokens > 1) ColumnRange(keys + d, tokens - 1, d, mn, mx);
      return;
    }
    case SummaryKind::kCentroids:
      KMeans(keys, tokens, d, g.summary_centroids, out);
      return;
    case SummaryKind::kHybrid: {
      // [max, min] then [mean, mean]: with the probe [q+, q-] the second
      // vector scores q . mean.
      Geometry bound = g;
      bound.summary = SummaryKind::kBound;
      Summarize(bound, keys, tokens, out);
      Geometry mean = g;
      mean.summary = SummaryKind::kMean;
      Summarize(mean, keys, tokens, out + 2 * d);
      std::copy(out + 2 * d, out + 3 * d, out + 3 * d);
      return;
    }
  }
}

void MakeProbe(const Geometry& g, const float* q, float* probe) {
  const uint32_t d = g.head_dim;
  if (g.summary == SummaryKind::kBound || g.summary == SummaryKind::kHybrid) {
    for (uint32_t c = 0; c < d; ++c) {
      probe[c] = std::max(q[c], 0.0f);      // pairs with max
      probe[d + c] = std::min(q[c], 0.0f);  // pairs with min
    }
    return;
  }
  std::copy(q, q + d, probe);
}

float ScoreSummary(const Geometry& g, const float* probe, const float* summary) {
  const uint32_t dim = IndexVectorDim(g);
  float best = -std::numeric_limits<float>::infinity();
  for (uint32_t j = 0; j < IndexVectorsPerBlock(g); ++j) {
    best = std::max(best, Dot(probe, summary + static_cast<size_t>(j) * dim, dim));
  }
  return best;
}

}  // namespace msa
