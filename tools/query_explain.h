// `msa query --explain`: which blocks a query read and why, per query row
// and KV head (a GQA group of query heads): the router's picks best first
// with their scores, then the forced sink and recent blocks, each with its
// document and token range.
#pragma once

#include <cstdint>
#include <vector>

#include <nlohmann/json.hpp>

#include "msa/status.h"
#include "store/store.h"

namespace msa::cli {

// Explains the routing of q ([n, q_heads, head_dim]) over `layer` with
// `options`, and checks that it chose exactly the blocks in `selected`
// (Store::Attend's, for the same arguments): Internal error otherwise, so
// an explanation is never of some other selection. Returns a JSON array,
// one object per (row, KV head) in row-major order.
Result<nlohmann::json> ExplainRouting(const Store& store, uint32_t layer, const float* q, uint32_t n,
                                      uint32_t q_heads, const AttendOptions& options,
                                      const std::vector<std::vector<uint64_t>>& selected);

// The same as text, on stdout: a header line per (row, KV head), then a line per block.
void PrintExplanation(const nlohmann::json& explained);

}  // namespace msa::cli
