// The router: per stream, a FAISS inner-product index over one summary
// vector per block (the block's mean key), answering "which blocks matter for
// these query heads".
//
// GQA: the query heads of a group share one KV head, so they share its
// blocks. A block's group score is the max over the group's heads of
// q_h . summary. Searching each head for its top k and rescoring the union
// exactly gives the exact top k by that score: a block outside head h's top
// k is beaten under h, hence under the max, by k other blocks.
//
// The index is rebuilt from the catalog's summaries on open (persisted
// indexes come with the router issue).
//
// Thread safety: Search may run concurrently with other Searches; Add must
// be exclusive (Store holds its writer lock).
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "store/geometry.h"

namespace faiss {
struct IndexFlatIP;
}

namespace msa {

struct ScoredBlock {
  uint64_t block = 0;
  float score = 0.0f;
};

class Router {
 public:
  explicit Router(const Geometry& geometry);
  ~Router();
  Router(const Router&) = delete;
  Router& operator=(const Router&) = delete;

  // Appends summaries for the next blocks of `stream`, in block order:
  // summaries[i * head_dim + c] for n = summaries.size() / head_dim blocks.
  void Add(uint32_t stream, std::span<const float> summaries);
  // Makes room for `blocks` more blocks of `stream`, so that the Add that
  // follows does not allocate (Store publishes a durable commit with it).
  void Reserve(uint32_t stream, uint64_t blocks);
  uint64_t blocks(uint32_t stream) const;

  // queries[h * head_dim + c] for the group_size query heads of one GQA
  // group. Returns up to k blocks of `stream`, best group score first.
  std::vector<ScoredBlock> Search(uint32_t stream, const float* queries, int group_size,
                                  int k) const;

 private:
  const uint32_t head_dim_;
  std::vector<std::unique_ptr<faiss::IndexFlatIP>> indexes_;  // one per stream
};

}  // namespace msa
