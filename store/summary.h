// Block summaries: what the router knows of a block without reading it.
//
// A summary is summary_width() floats computed from the block's keys as
// stored (fp16, after RoPE), and a block's score for a query q is:
//   mean       q . mean(k)                        (MoBA)
//   bound      sum_c max(q_c max_c, q_c min_c)    (Quest: an upper bound of
//              q . k over the block's keys, exact as the inner product of
//              [q+, q-] with [max, min])
//   centroids  max_j q . centroid_j               (k-means of the keys)
//   hybrid     the bound and the mean, as two rankings the router takes in
//              turn (the bound finds sharp single tokens, the mean finds
//              spans of moderately aligned keys that the bound misses)
// Every score is a maximum of inner products between a probe made from q and
// the block's index vectors, so one FAISS inner-product index serves all
// three: mean and bound have one index vector per block (the summary), the
// centroid summary has one per centroid.
#pragma once

#include <cstdint>

#include "store/geometry.h"

namespace msa {

// Index vectors per block and their dimension.
uint32_t IndexVectorsPerBlock(const Geometry& g);
uint32_t IndexVectorDim(const Geometry& g);

// Summary of one block: keys [tokens, head_dim], tokens >= 1;
// out [summary_width()].
void Summarize(const Geometry& g, const float* keys, uint32_t tokens, float* out);

// Probe of one query head: q [head_dim] -> probe [IndexVectorDim()].
void MakeProbe(const Geometry& g, const float* q, float* probe);

// The block's score for probe (the max over its index vectors; for the
// hybrid, the bound's).
float ScoreSummary(const Geometry& g, const float* probe, const float* summary);

}  // namespace msa
