#include "attention/sparse_attention_cpu.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

namespace msa::attention {

namespace {

float Dot(const float* a, const float* b, int n) {
  float acc = 0.0f;
  for (int c = 0; c < n; ++c) acc += a[c] * b[c];
  return acc;
}

// One query head over one selection: two passes (scores, then weighted sum)
// so the softmax is exact in float32 without the rescaling error of an
// online softmax. `scores` is scratch of at least count*block_tokens.
// Its dot products and weighted sum are vector loops (CMakeLists.txt lets
// them reassociate). Not target_clones: its ifunc resolver runs before
// ThreadSanitizer's runtime is up and crashes instrumented binaries.
void AttendOneHead(const AttentionShape& s, const BlockTable<float>& table, const int32_t* blocks,
                   int count, const float* q, float* out, float* lse, std::vector<float>& scores) {
  const int d = s.head_dim;
  scores.clear();
  float max_score = -std::numeric_limits<float>::infinity();
  for (int j = 0; j < count; ++j) {
    const int b = blocks[j];
    const float* k = table.keys + static_cast<size_t>(b) * s.block_tokens * d;
    for (int t = 0; t < table.block_len[b]; ++t) {
      const float score = s.scale * Dot(q, k + static_cast<size_t>(t) * d, d);
      scores.push_back(score);
      max_score = std::max(max_score, score);
    }
  }
  std::fill(out, out + d, 0.0f);
  if (scores.empty()) {
    if (lse) *lse = -std::numeric_limits<float>::infinity();
    return;
  }
  double denom = 0.0;
  size_t i = 0;
  for (int j = 0; j < count; ++j) {
    const int b = blocks[j];
    const float* v = table.values + static_cast<size_t>(b) * s.block_tokens * d;
    for (int t = 0; t < table.block_len[b]; ++t, ++i) {
      const float w = std::exp(scores[i] - max_score);
      denom += w;
      const float* vt = v + static_cast<size_t>(t) * d;
      for (int c = 0; c < d; ++c) out[c] += w * vt[c];
    }
  }
  const float inv = static_cast<float>(1.0 / denom);
  for (int c = 0; c < d; ++c) out[c] *= inv;
  if (lse) *lse = max_score + static_cast<float>(std::log(denom));
}

}  // namespace

void SparseAttentionCpu(const AttentionShape& shape, const BlockTable<float>& table,
                        const Selection& selection, const float* q, float* out, float* lse) {
  std::vector<float> scores;
  const int d = shape.head_dim;
  for (int i = 0; i < shape.n_queries; ++i) {
    for (int h = 0; h < shape.q_heads; ++h) {
      const int g = KvHeadOf(h, shape.q_heads, shape.kv_heads);
      const size_t sel = static_cast<size_t>(i) * shape.kv_heads + g;
      const size_t row = static_cast<size_t>(i) * shape.q_heads + h;
      AttendOneHead(shape, table, selection.block_index + sel * selection.max_blocks,
                    selection.count[sel], q + row * d, out + row * d, lse ? lse + row : nullptr,
                    scores);
    }
  }
}

}  // namespace msa::attention
