// The router: per stream, which blocks matter for a group of query heads.
//
// Each stream keeps every block's summary (store/summary.h) in memory, in
// fp16 (exact for the bound of fp16 keys; a rounding of the mean and the
// centroids): the truth the router scores with. While the stream is
// small, a query scores every summary (an exact scan, vectorised). Once it
// holds RouterOptions::ivf_min_vectors index vectors, a FAISS IVF index with
// 8-bit scalar-quantised vectors (inner product; lists growing with the
// square root of the stream) proposes candidates per query head, and the
// union of the candidates is rescored exactly. The IVF is trained on the
// stream's own summaries and retrained when the stream has grown 4x since.
//
// Coarse-to-fine (opt-in, RouterOptions::coarse_group_blocks): every group
// of consecutive blocks also has a group summary (for the bound and the
// mean, which merge; not for centroids), kept like the blocks' own. An
// approximate scan then ranks the groups first and scans only the best
// groups' blocks, so its cost grows with the stream divided by the group
// size instead of with the stream, at a measured cost in weak needles.
//
// GQA: the query heads of a group share one KV head, so they share its
// blocks; a block's group score combines the heads' scores (max or sum).
// With the max and an exact scan the result is the exact top k by the
// group score.
//
// The IVF is an accelerator, never the truth: it is rebuilt from the
// summaries (which come from the catalog) on open, and if adding to it fails
// the stream falls back to the exact scan.
//
// Thread safety: Search may run concurrently with Searches and with
// RefreshIndex; Add and Reserve must be exclusive (Store holds its state
// lock exclusively for them).
#pragma once

#include <cstdint>
#include <memory>
#include <shared_mutex>
#include <span>
#include <utility>
#include <vector>

#include "msa/status.h"
#include "store/geometry.h"
#include "store/table_memory.h"

namespace faiss {
struct IndexIVF;
}

namespace msa {

class SummaryTable;
class WorkPool;

struct ScoredBlock {
  uint64_t block = 0;
  float score = 0.0f;
  // Which ranking picked it: 0, except with the hybrid summary, whose
  // picks alternate between its bound (0) and its mean (1) rankings; the
  // score is that ranking's.
  uint8_t ranking = 0;
};

enum class GqaCombine : uint8_t { kMax, kSum };

struct RouteOptions {
  uint32_t top_k = 16;
  GqaCombine combine = GqaCombine::kMax;
  bool exact_scan = false;  // score every summary even where an IVF exists
  uint32_t nprobe = 0;      // IVF lists probed per head; 0: the default (see router.cc)
  uint32_t candidates = 0;  // candidates rescored exactly; 0: 4 * top_k per head (IVF),
                            // 2 * top_k per ranking (channel scan)
  // Approximate scan: score with only the `channels` key channels where the
  // group's queries are largest (SparQ's idea applied to summaries), from
  // the compact sketch (store/route_sketch.h) where it covers the stream,
  // then rescore the best candidates exactly. 0: the router's default
  // (RouterOptions: approximate for large streams, exact below), unless
  // exact_scan or nprobe is set.
  uint32_t channels = 0;
  // Only blocks inside these [first, end) ranges (sorted, disjoint); null:
  // all. Restricted searches scan exactly (the IVF cannot filter).
  const std::vector<std::pair<uint64_t, uint64_t>>* ranges = nullptr;
  // Coarse-to-fine: an approximate scan first picks this many groups of
  // RouterOptions::coarse_group_blocks blocks from their group summaries,
  // then scans only their blocks (and those after the last whole group).
  // 0: the router's default (RouterOptions::coarse_min_blocks);
  // kNoCoarse: never. Only where the router keeps group summaries, for
  // approximate, unrestricted scans of the bound, mean and hybrid
  // summaries: a query restricted to documents, or a store with deleted
  // documents (Store passes ranges then), scans flat.
  static constexpr uint32_t kNoCoarse = UINT32_MAX;
  uint32_t coarse_groups = 0;
};

struct RouteStats {
  double scanned_fraction = 0;  // share of the summaries' values read (IVF: expected share of vectors)
  bool used_ivf = false;
  uint32_t channels = 0;       // channels of an approximate scan (0: exact scoring)
  uint64_t sketch_blocks = 0;  // blocks scored from the sketch (approximate scans)
  uint32_t coarse_groups = 0;  // groups the coarse step picked (0: no coarse step)
};

struct RouterOptions {
  // Below this many index vectors a stream is scanned exactly. High by
  // default: on the router benchmark (BENCHMARKS.md) the IVF needed to scan
  // ~60% of the lists for 0.95 recall of the exact top k (queries are not
  // distributed like keys), and Debian's generic FAISS scans its 8-bit codes
  // ~10x slower per vector than the exact AVX-512 scan of float summaries.
  uint64_t ivf_min_vectors = 1u << 21;
  // Streams of at least this many blocks are scanned approximately unless
  // a query asks otherwise: over approximate_channels_per_head channels per
  // query head of the group (at most head_dim), reading the sketch,
  // the candidates rescored exactly. Chosen from the router benchmarks
  // (BENCHMARKS.md, "Approximate routing by default"): 8 per head keeps the
  // exact scan's needle hits within 2% where every head of a group seeks
  // its own single-token needle (fewer lose up to a quarter of them), at a
  // fraction of the exact scan's time from 1M tokens on.
  uint64_t approximate_min_blocks = 1u << 16;
  uint32_t approximate_channels_per_head = 8;
  // An approximate scan of the hybrid summary scores its mean ranking over
  // this fraction (1 / divisor) of the channels its bound ranking reads,
  // the group's largest. The scan's cost is its multiply-adds (columns x
  // heads), and the two need different things: a span aligned with the
  // query raises the mean along the query's largest coefficients, which a
  // few channels catch, while a single-token needle per head needs the
  // bound's 8 per head. Chosen from the router benchmark (BENCHMARKS.md,
  // "Routing at 10M tokens under 1 ms").
  uint32_t mean_channel_divisor = 2;
  // Coarse-to-fine routing, off unless coarse_group_blocks is set (a power
  // of two up to 128; 4 kept every needle measured, 16 is faster). Every group of that many
  // consecutive blocks then also has a group summary (the bound's max of
  // maxes and min of mins, the mean of means), kept like the blocks' own
  // (fp16 table and sketch: 1/group of their memory). From
  // coarse_min_blocks on, or where a query asks (RouteOptions::
  // coarse_groups), an approximate scan first ranks the groups
  // (coarse_groups_per_top_k x top_k of them, over 1/coarse_channel_divisor
  // of the scan's channels) and then scans only their blocks. Off by
  // default: a group's max of maxes rises with its size and drowns a weak
  // single-token needle (at 10M tokens, groups of 16 found 13-15 of 16
  // such needles against the flat scan's 16, at a quarter of its routing
  // time; groups of 4 found all 16 at a third of it, but at 1e8 tokens 48-52
  // of 64 against the flat scan's 62, at a seventh), and the group
  // summaries cost memory and open time. BENCHMARKS.md, "Coarse-to-fine
  // routing".
  uint32_t coarse_group_blocks = 0;
  uint64_t coarse_min_blocks = uint64_t{1} << 20;
  uint32_t coarse_groups_per_top_k = 2;
  uint32_t coarse_channel_divisor = 2;
  // Threads that score an approximate scan's sketch alongside the querying
  // thread: each query's runs are cut into parts, scored at once, and their
  // best blocks merged (the answer does not depend on the count; 0: the
  // querying thread alone; at most 255). kAutoScanThreads: one fewer than
  // the hardware threads, at most 7. On the 2-core VM one thread halves routing at 1e8
  // tokens (BENCHMARKS.md, "Routing on two cores").
  static constexpr uint32_t kAutoScanThreads = UINT32_MAX;
  uint32_t scan_threads = kAutoScanThreads;
};

class Router {
 public:
  explicit Router(const Geometry& geometry, const RouterOptions& options = {});
  ~Router();
  Router(const Router&) = delete;
  Router& operator=(const Router&) = delete;

  // Appends summaries for the next blocks of `stream`, in block order:
  // summaries[i * summary_width + c]. After Reserve for as many blocks,
  // nothing allocates outside the IVF, and an IVF failure only drops the IVF.
  void Add(uint32_t stream, std::span<const float> summaries);
  void Reserve(uint32_t stream, uint64_t blocks);
  // Appends whole chunks of fp16 summaries as SummaryTable lays them out
  // (a saved summary piece); the stream's block count must be a multiple
  // of SummaryTable::kChunkBlocks.
  void AddChunks(uint32_t stream, const uint16_t* data, size_t n_chunks);
  // The same without a copy: `memory` (a saved piece mapped) becomes the
  // stream's next chunks (SummaryTable::AppendMappedChunks).
  void AddMappedChunks(uint32_t stream, TableMemory memory);
  // The stream's summaries, to save them (read-only; the writer's thread).
  const SummaryTable& summaries(uint32_t stream) const;
  uint64_t blocks(uint32_t stream) const;
  bool has_ivf(uint32_t stream) const;

  // Trains an IVF index over every block of `stream` when one is due (the
  // stream crossed ivf_min_vectors, or grew 4x since the last training) and
  // installs it under an exclusive lock of `publish_mu`. The training (slow:
  // k-means) runs without the lock, so queries go on meanwhile; the caller
  // must be the only one to Add. Returns whether an index was installed;
  // throws what FAISS throws.
  bool RefreshIndex(uint32_t stream, std::shared_mutex& publish_mu);

  // Persistence of the IVF (the exact summaries come from the catalog).
  // SerializeIndex: the stream's IVF as bytes, NotFound when it has none;
  // reads only, so the writer may run it while queries go on.
  Result<std::vector<uint8_t>> SerializeIndex(uint32_t stream) const;
  uint64_t trained_vectors(uint32_t stream) const;
  // Installs an IVF read back from SerializeIndex's bytes that covers the
  // first `covered` blocks, and adds the blocks after them (catch-up).
  // Exclusive. Fails, changing nothing, on bytes that are not such an index.
  Status LoadIndex(uint32_t stream, const std::vector<uint8_t>& bytes, uint64_t covered,
                   uint64_t trained_vectors);

  // queries[h * head_dim + c] for the group_size query heads of one GQA
  // group. Returns up to top_k blocks of `stream`, best group score first.
  std::vector<ScoredBlock> Search(uint32_t stream, const float* queries, int group_size,
                                  const RouteOptions& options, RouteStats* stats = nullptr) const;

 private:
  struct Stream;
  std::vector<ScoredBlock> Route(const Stream& s, const std::vector<float>& probes, int group_size,
                                 const RouteOptions& options, RouteStats* stats) const;
  // rescore false: an approximate scan's candidates keep their
  // approximate scores (the coarse step, where the exact rescoring's
  // gathers would cost more than the scan).
  std::vector<ScoredBlock> Scan(const Stream& s, const std::vector<float>& probes,
                                int group_size, const RouteOptions& options,
                                uint64_t* sketch_blocks, bool rescore = true) const;
  // The groups the coarse step picks for an approximate scan, as sorted
  // block ranges (with the blocks after the last whole group); empty when
  // the coarse step does not apply.
  std::vector<std::pair<uint64_t, uint64_t>> CoarseRanges(const Stream& s, const std::vector<float>& probes,
                                                          int group_size, const RouteOptions& options,
                                                          uint32_t* coarse_channels) const;
  // Adds the group summaries of every whole group of s's blocks not yet in
  // its coarse level.
  void CatchUpCoarse(Stream& s) const;
  // After chunks [first, first + n_chunks) joined the stream's table: the
  // sketch, the group summaries and the IVF catch up.
  void ChunksAdded(uint32_t stream, uint64_t first, size_t n_chunks);

  const Geometry geometry_;
  const RouterOptions options_;
  std::unique_ptr<WorkPool> scan_pool_;  // null: no scan threads
  std::vector<std::unique_ptr<Stream>> streams_;
};

}  // namespace msa
