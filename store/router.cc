#include "store/router.h"

#include <faiss/IndexFlat.h>
#include <faiss/IndexIVF.h>
#include <faiss/IndexScalarQuantizer.h>
#include <faiss/impl/io.h>
#include <faiss/index_io.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <limits>
#include <memory>
#include <new>
#include <stdexcept>
#include <string>
#include <thread>
#include <unordered_set>

#include <spdlog/spdlog.h>

#include "attention/half.h"
#include "store/dot_kernel.h"
#include "store/route_sketch.h"
#include "store/sketch_scan.h"
#include "store/summary.h"
#include "store/summary_table.h"
#include "store/work_pool.h"

namespace msa {

namespace {
// The hybrid summary's index vectors: 0 is the Quest bound [max, min], 1 the
// mirrored [mean, mean] (store/summary.cc).
constexpr uint32_t kHybridMeanVector = 1;
}  // namespace

struct Router::Stream {
  explicit Stream(const Geometry& g)
      : summaries(IndexVectorsPerBlock(g), IndexVectorDim(g)),
        sketch(IndexVectorsPerBlock(g), IndexVectorDim(g),
               g.summary == SummaryKind::kHybrid ? static_cast<int>(kHybridMeanVector) : -1,
               g.summary == SummaryKind::kHybrid || g.summary == SummaryKind::kBound ? 0 : -1) {}
  SummaryTable summaries;  // its block count is the stream's
  RouteSketch sketch;      // compact columns of its whole runs, for approximate scans
  std::unique_ptr<faiss::IndexIVF> ivf;  // null: exact scan
  uint64_t trained_vectors = 0;          // vectors the IVF was trained on
  // The group summaries of the coarse step (a block of `coarse` is a group
  // of RouterOptions::coarse_group_blocks blocks here), null where the
  // summary kind has none; coarse_rows: room for one chunk's groups.
  std::unique_ptr<Stream> coarse;
  std::vector<float> coarse_rows;
};

namespace {

// Lists grow with the square root of the stream (FAISS's guidance: 4 sqrt(n)
// to 16 sqrt(n)), at least 39 training points each.
size_t ListCount(uint64_t vectors) {
  const double by_sqrt = 4.0 * std::sqrt(static_cast<double>(vectors));
  const double by_points = static_cast<double>(vectors) / 39.0;
  return static_cast<size_t>(std::clamp(std::min(by_sqrt, by_points), 1.0, 65536.0));
}

// Probing 1/16 of the lists, at least 8: chosen from the router benchmark
// (BENCHMARKS.md) as the knee of recall against latency.
size_t DefaultNprobe(size_t nlist) { return std::min(nlist, std::max<size_t>(8, nlist / 16)); }

float Combine(GqaCombine combine, float acc, float score) {
  return combine == GqaCombine::kMax ? std::max(acc, score) : acc + score;
}

// Adds blocks [first, first + n) of a table to an index, in float chunks
// of 16K blocks (never a float copy of the whole stream).
void AddInChunks(faiss::Index* index, const SummaryTable& table, uint64_t first, uint64_t n,
                 size_t width, size_t per_block) {
  constexpr uint64_t kChunk = 1 << 14;
  std::vector<float> rows;
  for (uint64_t at = 0; at < n; at += kChunk) {
    const uint64_t len = std::min(kChunk, n - at);
    rows.resize(len * width);
    table.Rows(first + at, len, rows.data());
    index->add(static_cast<faiss::Index::idx_t>(len * per_block), rows.data());
  }
}

// Better: higher score, then lower block number (a total order, so ties
// resolve the same way in every path).
bool Better(const ScoredBlock& a, const ScoredBlock& b) {
  return a.score > b.score || (a.score == b.score && a.block < b.block);
}

// Streaming top k: blocks that clear the bar are appended to a buffer of
// up to 2k, which is cut back to its best k (nth_element) when full; the
// bar is then the k-th best score. Amortised O(1) per block that enters,
// where a heap paid two O(log k) sifts: on a needle store at 10M tokens
// (perf of `msa query`) the heap's bookkeeping was ~13% of the routing
// time, the buffer's ~7%, since many blocks clear the bar there.
class TopK {
 public:
  explicit TopK(uint64_t k) : k_(static_cast<size_t>(std::min<uint64_t>(k, SIZE_MAX / 4))) {
    kept_.reserve(std::min<size_t>(2 * k_, size_t{1} << 16));
  }
  void Offer(uint64_t block, float score) {
    // NaN never enters (Better is no order with it).
    if (k_ == 0 || !(score >= bar_)) return;
    kept_.push_back({block, score});
    if (kept_.size() == 2 * k_) Cut();
  }
  size_t k() const { return k_; }
  // The lowest score that may still enter (a tie may, by block number).
  float bar() const { return k_ == 0 ? std::numeric_limits<float>::infinity() : bar_; }
  // The best k offered, in no particular order.
  std::vector<ScoredBlock> Take() {
    if (kept_.size() > k_) Cut();
    return std::move(kept_);
  }

 private:
  void Cut() {
    std::nth_element(kept_.begin(), kept_.begin() + static_cast<ptrdiff_t>(k_ - 1), kept_.end(), Better);
    kept_.resize(k_);
    bar_ = kept_.back().score;  // the k-th best: nth_element put it last
  }
  const size_t k_;
  float bar_ = -std::numeric_limits<float>::infinity();
  std::vector<ScoredBlock> kept_;
};

void KeepTop(std::vector<ScoredBlock>* scored, size_t k) {
  k = std::min(k, scored->size());
  std::partial_sort(scored->begin(), scored->begin() + static_cast<ptrdiff_t>(k), scored->end(), Better);
  scored->resize(k);
}

// The group's scores of one tile per ranking (totals[i]) from every head's:
// src[(j * group_size + h) * row + b] for index vector j, head h, block b.
// The hybrid's vector j is its ranking j, each combining the heads; the
// other kinds take each head's max over its vectors, then combine the heads.
void CombineHeads(GqaCombine combine, bool hybrid, uint32_t per_block, int group_size, size_t nt,
                  const float* src, size_t row, float (&totals)[2][kColumnTile]) {
  const float identity = combine == GqaCombine::kMax ? -std::numeric_limits<float>::infinity() : 0.0f;
  const uint32_t rankings = hybrid ? per_block : 1;
  float best[kColumnTile];
  for (uint32_t i = 0; i < rankings; ++i) std::fill(totals[i], totals[i] + nt, identity);
  for (int h = 0; h < group_size; ++h) {
    std::fill(best, best + nt, -std::numeric_limits<float>::infinity());
    for (uint32_t j = 0; j < per_block; ++j) {
      const float* d = src + (j * group_size + h) * row;
      if (hybrid) {
        for (size_t b = 0; b < nt; ++b) totals[j][b] = Combine(combine, totals[j][b], d[b]);
      } else {
        for (size_t b = 0; b < nt; ++b) best[b] = std::max(best[b], d[b]);
      }
    }
    if (!hybrid) {
      for (size_t b = 0; b < nt; ++b) totals[0][b] = Combine(combine, totals[0][b], best[b]);
    }
  }
}

// Offers the nt blocks from b0 (one tile) to the top lists, ranking i's
// scores from scores[i]. Almost every block falls below the bar: a vector
// compare finds the few that do not (the bar rises as they enter).
// shared_bars (null: none): per ranking, the highest bar any part of a
// parallel scan has reached. A block below it is below some part's k-th
// best, so it is in no top k and need not be offered; each part's lists
// stay a superset of its share of the exact top k, and the answer the same.
void OfferTile(std::vector<TopK>& tops, size_t nt, uint64_t b0, const float* const* scores,
               std::atomic<float>* shared_bars = nullptr) {
  uint32_t above[kColumnTile];
  for (size_t i = 0; i < tops.size(); ++i) {
    const float* totals_i = scores[i];
    auto bar_now = [&] {
      return shared_bars ? std::max(tops[i].bar(), shared_bars[i].load(std::memory_order_relaxed)) : tops[i].bar();
    };
    float bar = bar_now();
    const size_t m = IndicesAtLeast(totals_i, nt, bar, above);
    for (size_t k = 0; k < m; ++k) {
      const float score = totals_i[above[k]];
      if (score >= bar) {
        tops[i].Offer(b0 + above[k], score);
        bar = bar_now();
      }
    }
    if (shared_bars) {
      float seen = shared_bars[i].load(std::memory_order_relaxed);
      const float own = tops[i].bar();
      while (own > seen && !shared_bars[i].compare_exchange_weak(seen, own, std::memory_order_relaxed)) {
      }
    }
  }
}

// An approximate scan's probes over the sketch (store/sketch_scan.h), per
// index vector j: where each logical column is stored, and every head's
// coefficients over them before the run's column scales, which are folded
// in (and the probe requantised) run by run.
struct SketchPlan {
  std::vector<SketchProbe> probes;                          // [j]: columns and heads set, coefficients per run
  std::vector<std::vector<RouteSketch::Location>> logical;  // [j][k]
  std::vector<std::vector<float>> unscaled;                 // [j][h * logical + k]
  int group_size = 0;
  uint32_t per_block = 0;
  bool hybrid = false;
  GqaCombine combine = GqaCombine::kMax;
};

// Scores the sketch's runs [first, end) and offers their blocks to tops
// (one list per ranking). Touches nothing shared but the read-only sketch
// and plan, so disjoint run ranges may be scored concurrently.
void ScoreSketchRuns(const RouteSketch& sketch, const SketchPlan& plan, size_t first, size_t end,
                     std::vector<TopK>& tops, std::atomic<float>* shared_bars) {
  constexpr size_t kRun = RouteSketch::kRunBlocks;
  const int group_size = plan.group_size;
  const uint32_t per_block = plan.per_block;
  const bool hybrid = plan.hybrid;
  std::vector<SketchProbe> probes = plan.probes;  // requantised per run
  // The heads' combine happens in the kernel unless a sum must come
  // after each head's max over several vectors.
  const bool heads_in_kernel = hybrid || per_block == 1 || plan.combine == GqaCombine::kMax;
  const SketchHeads mode = plan.combine == GqaCombine::kMax ? SketchHeads::kMax : SketchHeads::kSum;
  std::vector<float> weights, offsets;
  // A run is scored in chunks of kChunk blocks, each chunk's passes, scores
  // and offers in turn, so that the kernel's integer sums (heads x kChunk)
  // and the chunk's scores stay in L1 from the first pass to the offer
  // (a whole run's round-tripped through L2 on every pass: at 1e8 tokens
  // that was a quarter of the scan).
  constexpr size_t kChunk = 512;
  static_assert(kRun % kChunk == 0 && kChunk % kColumnTile == 0);
  // A chunk's scores: per ranking (heads combined), or per vector and head.
  std::vector<float> chunk_scores(tops.size() * kChunk);
  std::vector<float> chunk_dots(heads_in_kernel ? kChunk : static_cast<size_t>(per_block) * group_size * kChunk);
  std::vector<int32_t> sums;
  float totals[2][kColumnTile];
  for (size_t run = first; run < end; ++run) {
    for (uint32_t j = 0; j < per_block; ++j) {
      SketchProbe& sp = probes[j];
      const size_t n = sp.logical();
      const std::vector<float>& unscaled = plan.unscaled[j];
      weights.resize(group_size * n);
      offsets.assign(group_size, 0.0f);
      for (int h = 0; h < group_size; ++h) {
        for (size_t u = 0; u < n; ++u) {
          weights[h * n + u] = unscaled[h * n + u] * sketch.Scale(run, plan.logical[j][u]);
          offsets[h] += unscaled[h * n + u] * sketch.Base(run, plan.logical[j][u]);
        }
      }
      sp.Quantize(weights.data(), offsets.data());
    }
    for (size_t c0 = 0; c0 < kRun; c0 += kChunk) {
      const uint8_t* base = sketch.Codes(run, 0) + c0;
      const uint64_t chunk_first = run * kRun + c0;
      if (heads_in_kernel) {
        // The kernel combines the heads (`mode`); a non-hybrid kind then takes
        // the max over its vectors (for the max, the same as per head first).
        for (uint32_t j = 0; j < per_block; ++j) {
          float* t = hybrid || j == 0 ? chunk_scores.data() + (hybrid ? j : 0) * kChunk : chunk_dots.data();
          SketchScores(probes[j], mode, base, kRun, kChunk, &sums, t);
          if (!hybrid && j > 0) {
            for (size_t b = 0; b < kChunk; ++b) chunk_scores[b] = std::max(chunk_scores[b], chunk_dots[b]);
          }
        }
        for (size_t t0 = 0; t0 < kChunk; t0 += kColumnTile) {
          const float* scores[2] = {chunk_scores.data() + t0,
                                    tops.size() > 1 ? chunk_scores.data() + kChunk + t0 : nullptr};
          OfferTile(tops, kColumnTile, chunk_first + t0, scores, shared_bars);
        }
      } else {
        for (uint32_t j = 0; j < per_block; ++j) {
          SketchScores(probes[j], SketchHeads::kEach, base, kRun, kChunk, &sums,
                       chunk_dots.data() + j * group_size * kChunk);
        }
        for (size_t t0 = 0; t0 < kChunk; t0 += kColumnTile) {
          CombineHeads(plan.combine, hybrid, per_block, group_size, kColumnTile, chunk_dots.data() + t0, kChunk,
                       totals);
          const float* scores[2] = {totals[0], totals[1]};
          OfferTile(tops, kColumnTile, chunk_first + t0, scores, shared_bars);
        }
      }
    }
  }
}

// Scores every run of the sketch into tops. With a pool, the runs are cut
// into parts that its threads and the caller score at once, each part into
// its own lists, merged after. TopK keeps the best k under Better, a total
// order, whatever order blocks are offered in, so the answer is the one a
// single thread gives.
void ScanSketch(const RouteSketch& sketch, const SketchPlan& plan, WorkPool* pool, std::vector<TopK>& tops) {
  const size_t runs = sketch.runs();
  // Four parts per thread (the caller's too) even out a pool thread that
  // wakes late or is busy with another query's parts: Finish runs here
  // whatever no pool thread has taken.
  const size_t parts = pool == nullptr ? 1 : std::min(runs, size_t{4} * (pool->threads() + 1));
  if (parts <= 1) {
    ScoreSketchRuns(sketch, plan, 0, runs, tops, nullptr);
    return;
  }
  std::vector<std::vector<TopK>> part_tops(parts);
  for (std::vector<TopK>& lists : part_tops) {
    for (const TopK& t : tops) lists.emplace_back(t.k());
  }
  std::vector<std::atomic<float>> shared_bars(tops.size());
  for (auto& bar : shared_bars) bar.store(-std::numeric_limits<float>::infinity(), std::memory_order_relaxed);
  const Status status = pool->ParallelFor(parts, [&](size_t i) {
    ScoreSketchRuns(sketch, plan, runs * i / parts, runs * (i + 1) / parts, part_tops[i], shared_bars.data());
    return Status::OK();
  });
  // A part can only fail by throwing: out of memory comes back as IOError,
  // thrown on as bad_alloc, as one thread's scan would have.
  if (status.code() == Status::Code::kIOError) throw std::bad_alloc();
  if (!status.ok()) throw std::runtime_error("router scan: " + status.message());
  for (std::vector<TopK>& lists : part_tops) {
    for (size_t i = 0; i < tops.size(); ++i) {
      for (const ScoredBlock& sb : lists[i].Take()) tops[i].Offer(sb.block, sb.score);
    }
  }
}

}  // namespace

namespace {
unsigned ScanThreads(const RouterOptions& options) {
  if (options.scan_threads != RouterOptions::kAutoScanThreads) return std::min(options.scan_threads, 255u);
  const unsigned hardware = std::thread::hardware_concurrency();
  return std::min(hardware, 8u) - std::min(hardware, 1u);
}

// A power of two that divides a summary chunk, so that a chunk holds whole groups.
uint32_t ValidGroupBlocks(uint32_t requested) {
  uint32_t g = 1;
  while (g * 2 <= std::min<uint32_t>(requested, SummaryTable::kChunkBlocks)) g *= 2;
  return g;
}
}  // namespace

Router::Router(const Geometry& geometry, const RouterOptions& options)
    : geometry_(geometry), options_([&] {
        RouterOptions o = options;
        if (o.coarse_group_blocks != 0) o.coarse_group_blocks = ValidGroupBlocks(options.coarse_group_blocks);
        return o;
      }()) {
  const unsigned scan_threads = ScanThreads(options_);
  if (scan_threads > 0) scan_pool_ = std::make_unique<WorkPool>(scan_threads);
  streams_.reserve(geometry.streams());
  // Groups have a summary where a block's can be merged: the bound's (max
  // of maxes, min of mins) and the mean's (mean of means), not centroids.
  const bool coarse = options_.coarse_group_blocks != 0 && geometry.summary != SummaryKind::kCentroids;
  for (uint32_t s = 0; s < geometry.streams(); ++s) {
    auto stream = std::make_unique<Stream>(geometry);
    if (coarse) {
      stream->coarse = std::make_unique<Stream>(geometry);
      stream->coarse_rows.resize(SummaryTable::kChunkBlocks / options_.coarse_group_blocks *
                                 geometry.summary_width());
    }
    streams_.push_back(std::move(stream));
  }
}

Router::~Router() = default;

void Router::Reserve(uint32_t stream, uint64_t blocks) {
  Stream& s = *streams_[stream];
  s.summaries.Reserve(blocks);
  s.sketch.Reserve(s.summaries.blocks(), blocks);
  if (s.coarse) {
    const uint64_t groups = (s.summaries.blocks() + blocks) / options_.coarse_group_blocks;
    const uint64_t more = groups - std::min(groups, s.coarse->summaries.blocks());
    s.coarse->summaries.Reserve(more);
    s.coarse->sketch.Reserve(s.coarse->summaries.blocks(), more);
  }
}

void Router::CatchUpCoarse(Stream& s) const {
  if (!s.coarse) return;
  Stream& c = *s.coarse;
  const uint64_t group = options_.coarse_group_blocks;
  const uint64_t whole = s.summaries.blocks() / group;
  const uint32_t per_block = IndexVectorsPerBlock(geometry_);
  const uint32_t dim = IndexVectorDim(geometry_);
  const size_t width = static_cast<size_t>(per_block) * dim;
  const uint32_t head_dim = geometry_.head_dim;
  const bool bound_first = geometry_.summary == SummaryKind::kBound || geometry_.summary == SummaryKind::kHybrid;
  constexpr size_t kChunk = SummaryTable::kChunkBlocks;
  const uint64_t per_chunk = kChunk / group;
  float column[kChunk];
  while (c.summaries.blocks() < whole) {
    const uint64_t first = c.summaries.blocks();
    const size_t chunk = static_cast<size_t>(first / per_chunk);
    const uint64_t n = std::min<uint64_t>(whole, (chunk + 1) * per_chunk) - first;
    const size_t at = static_cast<size_t>(first % per_chunk) * group;  // first block in the chunk
    for (uint32_t j = 0; j < per_block; ++j) {
      for (uint32_t d = 0; d < dim; ++d) {
        attention::HalfToFloatArray(s.summaries.Column(chunk, j, d) + at, column, n * group);
        // Vector 0 of a bound or hybrid is [max, min]; every other vector
        // is a mean (the hybrid's mirrored [mean, mean] included).
        const int how = bound_first && j == 0 ? (d < head_dim ? 1 : -1) : 0;
        for (uint64_t i = 0; i < n; ++i) {
          const float* v = column + i * group;
          float r = v[0];
          if (how > 0) {
            for (uint64_t k = 1; k < group; ++k) r = std::max(r, v[k]);
          } else if (how < 0) {
            for (uint64_t k = 1; k < group; ++k) r = std::min(r, v[k]);
          } else {
            for (uint64_t k = 1; k < group; ++k) r += v[k];
            r /= static_cast<float>(group);
          }
          s.coarse_rows[i * width + static_cast<size_t>(j) * dim + d] = r;
        }
      }
    }
    c.summaries.Append(s.coarse_rows.data(), n);
  }
  c.sketch.CatchUp(c.summaries, scan_pool_.get());
}

void Router::Add(uint32_t stream, std::span<const float> summaries) {
  Stream& s = *streams_[stream];
  const uint64_t n = summaries.size() / geometry_.summary_width();
  if (n == 0) return;
  const uint64_t first = s.summaries.blocks();
  s.summaries.Append(summaries.data(), n);  // within the reserved chunks
  s.sketch.CatchUp(s.summaries, scan_pool_.get());
  CatchUpCoarse(s);
  if (s.ivf) {
    // Summaries are [block][vector][dim], exactly the index vectors in order.
    try {
      AddInChunks(s.ivf.get(), s.summaries, first, n, geometry_.summary_width(),
                  IndexVectorsPerBlock(geometry_));
    } catch (const std::exception& e) {
      spdlog::warn("router: adding to the IVF index of stream {} failed ({}); scanning it exactly",
                   stream, e.what());
      s.ivf.reset();
    }
  }
}

void Router::AddChunks(uint32_t stream, const uint16_t* data, size_t n_chunks) {
  Stream& s = *streams_[stream];
  const uint64_t first = s.summaries.blocks();
  s.summaries.AppendChunks(data, n_chunks);
  ChunksAdded(stream, first, n_chunks);
}

void Router::AddMappedChunks(uint32_t stream, TableMemory memory) {
  Stream& s = *streams_[stream];
  const uint64_t first = s.summaries.blocks();
  const size_t n_chunks = memory.bytes() / s.summaries.chunk_bytes();
  s.summaries.AppendMappedChunks(std::move(memory));
  ChunksAdded(stream, first, n_chunks);
}

void Router::ChunksAdded(uint32_t stream, uint64_t first, size_t n_chunks) {
  Stream& s = *streams_[stream];
  s.sketch.CatchUp(s.summaries, scan_pool_.get());
  CatchUpCoarse(s);
  if (s.ivf) {
    try {
      AddInChunks(s.ivf.get(), s.summaries, first, n_chunks * SummaryTable::kChunkBlocks,
                  geometry_.summary_width(), IndexVectorsPerBlock(geometry_));
    } catch (const std::exception& e) {
      spdlog::warn("router: adding to the IVF index of stream {} failed ({}); scanning it exactly",
                   stream, e.what());
      s.ivf.reset();
    }
  }
}

const SummaryTable& Router::summaries(uint32_t stream) const { return streams_[stream]->summaries; }

uint64_t Router::blocks(uint32_t stream) const { return streams_[stream]->summaries.blocks(); }
bool Router::has_ivf(uint32_t stream) const { return streams_[stream]->ivf != nullptr; }

bool Router::RefreshIndex(uint32_t stream, std::shared_mutex& publish_mu) {
  Stream& s = *streams_[stream];
  const uint64_t vectors = s.summaries.blocks() * IndexVectorsPerBlock(geometry_);
  if (vectors < options_.ivf_min_vectors) return false;
  if (geometry_.summary == SummaryKind::kHybrid) return false;  // two rankings: exact scan only
  if (s.ivf && vectors < 4 * s.trained_vectors) return false;
  const size_t dim = IndexVectorDim(geometry_);
  const size_t nlist = ListCount(vectors);
  auto quantizer = std::make_unique<faiss::IndexFlatIP>(dim);
  auto ivf = std::make_unique<faiss::IndexIVFScalarQuantizer>(
      quantizer.get(), dim, nlist, faiss::ScalarQuantizer::QT_8bit, faiss::METRIC_INNER_PRODUCT);
  ivf->own_fields = true;
  quantizer.release();
  // Train on an evenly strided sample of at most 64 points per list, then
  // add everything in chunks: never a float copy of the whole stream.
  const uint64_t per_block = IndexVectorsPerBlock(geometry_);
  const uint64_t sample_blocks = std::min<uint64_t>(s.summaries.blocks(), (64ull * nlist + per_block - 1) / per_block);
  std::vector<float> train(sample_blocks * per_block * dim);
  for (uint64_t i = 0; i < sample_blocks; ++i) {
    s.summaries.Rows(i * s.summaries.blocks() / sample_blocks, 1, train.data() + i * per_block * dim);
  }
  ivf->cp.max_points_per_centroid = 64;
  ivf->train(static_cast<faiss::Index::idx_t>(sample_blocks * per_block), train.data());
  train = {};
  AddInChunks(ivf.get(), s.summaries, 0, s.summaries.blocks(), geometry_.summary_width(), per_block);
  std::unique_lock<std::shared_mutex> lock(publish_mu);
  s.trained_vectors = vectors;
  s.ivf = std::move(ivf);
  return true;
}

Result<std::vector<uint8_t>> Router::SerializeIndex(uint32_t stream) const {
  const Stream& s = *streams_[stream];
  if (!s.ivf) return Status::NotFound("stream " + std::to_string(stream) + " has no IVF index");
  faiss::VectorIOWriter writer;
  faiss::write_index(s.ivf.get(), &writer);
  return std::move(writer.data);
}

uint64_t Router::trained_vectors(uint32_t stream) const { return streams_[stream]->trained_vectors; }

Status Router::LoadIndex(uint32_t stream, const std::vector<uint8_t>& bytes, uint64_t covered,
                         uint64_t trained_vectors) {
  Stream& s = *streams_[stream];
  const uint64_t per_block = IndexVectorsPerBlock(geometry_);
  if (covered > s.summaries.blocks()) {
    return Status::Corruption("covers " + std::to_string(covered) + " blocks but the stream has " +
                              std::to_string(s.summaries.blocks()));
  }
  std::unique_ptr<faiss::IndexIVF> ivf;
  try {
    faiss::VectorIOReader reader;
    reader.data = bytes;
    std::unique_ptr<faiss::Index> index(faiss::read_index(&reader));
    ivf.reset(dynamic_cast<faiss::IndexIVF*>(index.get()));
    if (!ivf) return Status::Corruption("not an IVF index");
    index.release();
  } catch (const std::exception& e) {
    return Status::Corruption(std::string("unreadable index: ") + e.what());
  }
  if (ivf->d != static_cast<int>(IndexVectorDim(geometry_)) ||
      ivf->ntotal != static_cast<faiss::Index::idx_t>(covered * per_block) ||
      ivf->metric_type != faiss::METRIC_INNER_PRODUCT) {
    return Status::Corruption("index holds " + std::to_string(ivf->ntotal) + " vectors of dimension " +
                              std::to_string(ivf->d) + "; expected " + std::to_string(covered * per_block) +
                              " of dimension " + std::to_string(IndexVectorDim(geometry_)));
  }
  const uint64_t missing = s.summaries.blocks() - covered;
  if (missing > 0) {
    AddInChunks(ivf.get(), s.summaries, covered, missing, geometry_.summary_width(), per_block);
  }
  s.ivf = std::move(ivf);
  s.trained_vectors = trained_vectors;
  return Status::OK();
}

std::vector<ScoredBlock> Router::Scan(const Stream& s, const std::vector<float>& probes,
                                      int group_size, const RouteOptions& options,
                                      uint64_t* sketch_blocks, bool rescore) const {
  const size_t dim = IndexVectorDim(geometry_);
  const uint32_t per_block = IndexVectorsPerBlock(geometry_);
  // The columns each head reads: those of its non-zero coefficients (half of
  // a bound's probe is zero), or approximately, those of `channels` key
  // channels chosen for the whole group: each head's own largest
  // (channels / group_size of them, at least one: a head looking for its
  // own needle keeps its strongest channels), then the group's largest by
  // summed magnitude. Every head scores with all of them, so a tile's
  // columns (one per channel, or two where the heads' signs differ) are
  // fetched once for the group.
  const uint32_t head_dim = geometry_.head_dim;
  auto choose = [&](uint32_t channels) {
    std::vector<bool> chosen(head_dim, true);
    if (channels == 0 || channels >= head_dim) return chosen;
    std::fill(chosen.begin(), chosen.end(), false);
    uint32_t picked = 0;
    auto take_top = [&](const std::vector<float>& weight, uint32_t count) {
      std::vector<uint32_t> order(head_dim);
      for (uint32_t c = 0; c < head_dim; ++c) order[c] = c;
      std::stable_sort(order.begin(), order.end(), [&](uint32_t a, uint32_t b) { return weight[a] > weight[b]; });
      for (uint32_t i = 0; i < head_dim && count > 0 && picked < channels; ++i) {
        if (!chosen[order[i]]) {
          chosen[order[i]] = true;
          ++picked;
          --count;
        }
      }
    };
    const uint32_t per_head = std::max<uint32_t>(1, channels / static_cast<uint32_t>(group_size));
    std::vector<float> group_weight(head_dim, 0.0f), weight(head_dim);
    for (int h = 0; h < group_size; ++h) {
      std::fill(weight.begin(), weight.end(), 0.0f);
      for (size_t i = 0; i < dim; ++i) weight[i % head_dim] += std::abs(probes[h * dim + i]);
      for (uint32_t c = 0; c < head_dim; ++c) group_weight[c] += weight[c];
      take_top(weight, per_head);
    }
    take_top(group_weight, channels);
    return chosen;
  };
  // Each head's non-zero coefficients over the chosen channels.
  struct HeadColumns {
    std::vector<std::vector<uint32_t>> columns;
    std::vector<std::vector<float>> coefs;
  };
  auto head_columns = [&](const std::vector<bool>& chosen) {
    HeadColumns hc{std::vector<std::vector<uint32_t>>(group_size), std::vector<std::vector<float>>(group_size)};
    for (int h = 0; h < group_size; ++h) {
      const float* p = probes.data() + h * dim;
      for (uint32_t c = 0; c < dim; ++c) {
        if (p[c] != 0.0f && chosen[c % head_dim]) {
          hc.columns[h].push_back(c);
          hc.coefs[h].push_back(p[c]);
        }
      }
    }
    return hc;
  };
  // Approximate scores propose a wider set of candidates per ranking, which
  // is then rescored exactly.
  const bool approximate = options.channels > 0;
  const bool hybrid = geometry_.summary == SummaryKind::kHybrid;
  const HeadColumns all = head_columns(choose(options.channels));
  // An approximate scan reads fewer channels for the hybrid's mean ranking
  // than for its bound (RouterOptions::mean_channel_divisor), at least one
  // per head, in the sketch and in the fp16 tail alike.
  const HeadColumns mean_all =
      hybrid && approximate
          ? head_columns(choose(std::max<uint32_t>(static_cast<uint32_t>(group_size),
                                                   options.channels / std::max<uint32_t>(1, options_.mean_channel_divisor))))
          : HeadColumns{};
  auto columns_of = [&](uint32_t j) -> const HeadColumns& {
    return hybrid && approximate && j == kHybridMeanVector ? mean_all : all;
  };
  const float identity = options.combine == GqaCombine::kMax ? -std::numeric_limits<float>::infinity() : 0.0f;
  // The hybrid summary ranks blocks twice, by its bound and by its mean
  // (index vectors 0 and 1), and takes the two rankings in turn; the other
  // kinds take the max over their index vectors, one ranking.
  const uint32_t rankings = hybrid ? per_block : 1;
  const uint64_t keep = !approximate || !rescore
                            ? options.top_k
                            : std::max<uint64_t>(options.candidates ? options.candidates : 2ull * options.top_k,
                                                 options.top_k);
  // The best `keep` blocks, selected while scanning (TopK: a bar a block
  // must clear, one comparison for almost every block, instead of sorting
  // the whole stream).
  std::vector<TopK> tops;
  for (uint32_t i = 0; i < rankings; ++i) tops.emplace_back(keep);
  // One tile's scores: dots[(j * group_size + h) * kColumnTile + b] for
  // index vector j, head h, block b of the tile.
  std::vector<float> dots(static_cast<size_t>(group_size) * per_block * kColumnTile);
  float totals[2][kColumnTile];
  // Offers the nt blocks from b0 (one tile; ranking i's scores from
  // scores[i]) to the top lists. With ranges, only blocks inside one are
  // offered (r: the first range that may still meet the tile).
  size_t r = 0;
  auto offer_tile = [&](size_t nt, uint64_t b0, const float* const* scores) {
    if (!options.ranges) {
      OfferTile(tops, nt, b0, scores);
      return;
    }
    for (uint32_t i = 0; i < rankings; ++i) {
      size_t rr = r;
      for (size_t b = 0; b < nt; ++b) {
        while (rr < options.ranges->size() && (*options.ranges)[rr].second <= b0 + b) ++rr;
        if (rr < options.ranges->size() && (*options.ranges)[rr].first <= b0 + b) tops[i].Offer(b0 + b, scores[i][b]);
      }
    }
  };
  // An approximate scan reads the sketch where it covers the stream: per
  // index vector, the union of the heads' columns, every head with its
  // coefficients over all of them (0 where it has none; the two halves of
  // a mirrored vector summed onto their one column; a packed column's
  // halves both read), requantised per run with the run's column scales
  // folded in and the packed columns' bases summed into an offset
  // (store/sketch_scan.h).
  uint64_t from = 0;
  if (approximate && !options.ranges && s.sketch.runs() > 0) {
    using Location = RouteSketch::Location;
    SketchPlan plan;
    plan.probes.resize(per_block);
    plan.logical.resize(per_block);
    plan.unscaled.resize(per_block);
    plan.group_size = group_size;
    plan.per_block = per_block;
    plan.hybrid = hybrid;
    plan.combine = options.combine;
    for (uint32_t j = 0; j < per_block; ++j) {
      SketchProbe& sp = plan.probes[j];
      std::vector<Location>& logical = plan.logical[j];
      sp.heads = group_size;
      const HeadColumns& hc = columns_of(j);
      for (int h = 0; h < group_size; ++h) {
        for (uint32_t c : hc.columns[h]) {
          const Location at = s.sketch.Locate(j, c);
          auto& list = at.part == RouteSketch::Part::kByte ? sp.columns : sp.packed;
          if (std::find(list.begin(), list.end(), at.column) == list.end()) list.push_back(at.column);
        }
      }
      // Padding, coefficient 0.
      while (sp.columns.size() % 4 != 0) sp.columns.push_back(sp.columns.front());
      while (sp.packed.size() % 2 != 0) sp.packed.push_back(sp.packed.front());
      for (uint32_t column : sp.columns) logical.push_back({column, RouteSketch::Part::kByte});
      for (uint32_t column : sp.packed) {
        logical.push_back({column, RouteSketch::Part::kLow});
        logical.push_back({column, RouteSketch::Part::kHigh});
      }
      const size_t n = sp.logical();
      plan.unscaled[j].assign(group_size * n, 0.0f);
      for (int h = 0; h < group_size; ++h) {
        for (size_t k = 0; k < hc.columns[h].size(); ++k) {
          // The first match: padding repeats come after the column itself.
          const Location at = s.sketch.Locate(j, hc.columns[h][k]);
          const size_t u = std::find(logical.begin(), logical.end(), at) - logical.begin();
          plan.unscaled[j][h * n + u] += hc.coefs[h][k];
        }
      }
    }
    ScanSketch(s.sketch, plan, scan_pool_.get(), tops);
    from = s.sketch.blocks();
  }
  *sketch_blocks = from;
  // The rest from the fp16 table, in tiles of 128 blocks: the tile's
  // columns (at most 32 KiB) stay in L1 while every head reads them. Chunks
  // are allocated whole and zeroed, so a tile may run past the last block;
  // those sums are never used.
  static_assert(SummaryTable::kChunkBlocks % kColumnTile == 0);
  for (size_t chunk = from / SummaryTable::kChunkBlocks; chunk < s.summaries.chunks(); ++chunk) {
    const size_t nb = s.summaries.blocks_in_chunk(chunk);
    for (size_t t0 = 0; t0 < nb; t0 += kColumnTile) {
      const size_t nt = std::min(kColumnTile, nb - t0);
      const uint64_t tile_first = chunk * SummaryTable::kChunkBlocks + t0;
      if (options.ranges) {
        const auto& ranges = *options.ranges;
        while (r < ranges.size() && ranges[r].second <= tile_first) ++r;
        if (r == ranges.size()) break;
        if (ranges[r].first >= tile_first + nt) continue;
      }
      // With ranges, only the 16-block pieces of the tile that meet one
      // are scored (a coarse step's groups are such pieces); the other
      // sums are stale, and offer_tile never reads them.
      uint32_t pieces = (1u << kColumnTile / 16) - 1;
      if (options.ranges) {
        pieces = 0;
        const auto& ranges = *options.ranges;
        for (size_t rr = r; rr < ranges.size() && ranges[rr].first < tile_first + nt; ++rr) {
          const uint64_t a = std::max(ranges[rr].first, tile_first) - tile_first;
          const uint64_t b = std::min<uint64_t>(ranges[rr].second, tile_first + nt) - tile_first;
          for (uint64_t piece = a / 16; piece * 16 < b; ++piece) pieces |= 1u << piece;
        }
      }
      for (int h = 0; h < group_size; ++h) {
        for (uint32_t j = 0; j < per_block; ++j) {
          const HeadColumns& hc = columns_of(j);
          const uint16_t* column0 = s.summaries.Column(chunk, j, 0) + t0;
          float* out = dots.data() + (j * group_size + h) * kColumnTile;
          if (pieces == (1u << kColumnTile / 16) - 1) {
            WeightedColumnSum(hc.coefs[h].data(), hc.columns[h].data(), hc.columns[h].size(), column0,
                              SummaryTable::kChunkBlocks, out);
            continue;
          }
          for (uint32_t first = 0; first < kColumnTile / 16;) {
            if ((pieces >> first & 1u) == 0) {
              ++first;
              continue;
            }
            uint32_t end = first;
            while (end < kColumnTile / 16 && (pieces >> end & 1u) != 0) ++end;
            WeightedColumnSumSpan(hc.coefs[h].data(), hc.columns[h].data(), hc.columns[h].size(), column0 + 16 * first,
                                  SummaryTable::kChunkBlocks, 16 * (end - first), out + 16 * first);
            first = end;
          }
        }
      }
      CombineHeads(options.combine, hybrid, per_block, group_size, nt, dots.data(), kColumnTile, totals);
      const float* scores[2] = {totals[0], totals[1]};
      offer_tile(nt, tile_first, scores);
    }
  }
  std::vector<std::vector<ScoredBlock>> lists;
  for (TopK& t : tops) lists.push_back(t.Take());
  if (approximate && rescore) {
    // Approximate scores: each ranking's candidates are rescored exactly
    // (hybrid: ranking i is index vector i; otherwise the max over them),
    // from the columns any head needs, gathered once for all heads. Every
    // gathered value is its own cache line (SummaryTable's layout), so the
    // hybrid's mirrored [mean, mean] vector is gathered from its first half
    // only, with the probe's halves summed onto it (q+ + q- = q).
    struct Needed {
      std::vector<uint32_t> columns;
      std::vector<float> dense;  // [h][k]: each head's coefficients over `columns`
    };
    auto needed_for = [&](bool folded) {
      Needed n;
      const uint32_t width = folded ? dim / 2 : dim;
      for (uint32_t c = 0; c < width; ++c) {
        for (int h = 0; h < group_size; ++h) {
          if (probes[h * dim + c] != 0.0f || (folded && probes[h * dim + c + width] != 0.0f)) {
            n.columns.push_back(c);
            break;
          }
        }
      }
      for (int h = 0; h < group_size; ++h) {
        for (uint32_t c : n.columns) n.dense.push_back(probes[h * dim + c] + (folded ? probes[h * dim + c + width] : 0.0f));
      }
      return n;
    };
    const Needed whole = needed_for(false);
    const Needed folded = hybrid ? needed_for(true) : Needed{};
    std::vector<float> gathered, head_best;
    std::vector<uint64_t> blocks;
    for (uint32_t i = 0; i < rankings; ++i) {
      std::vector<ScoredBlock>& list = lists[i];
      blocks.clear();
      for (const ScoredBlock& sb : list) blocks.push_back(sb.block);
      head_best.assign(blocks.size() * group_size, -std::numeric_limits<float>::infinity());
      for (uint32_t j = hybrid ? i : 0; j < (hybrid ? i + 1 : per_block); ++j) {
        const Needed& needed = hybrid && j == kHybridMeanVector ? folded : whole;
        const size_t nn = needed.columns.size();
        gathered.resize(blocks.size() * nn);
        s.summaries.Gather(blocks.data(), blocks.size(), j, needed.columns.data(), nn, gathered.data());
        for (size_t b = 0; b < blocks.size(); ++b) {
          for (int h = 0; h < group_size; ++h) {
            const float dot = DotF32(needed.dense.data() + h * nn, gathered.data() + b * nn, nn);
            head_best[b * group_size + h] = std::max(head_best[b * group_size + h], dot);
          }
        }
      }
      for (size_t b = 0; b < list.size(); ++b) {
        float score = identity;
        for (int h = 0; h < group_size; ++h) score = Combine(options.combine, score, head_best[b * group_size + h]);
        list[b].score = score;
      }
    }
  }
  for (auto& list : lists) KeepTop(&list, options.top_k);
  if (!hybrid) return std::move(lists[0]);
  // In turn from each ranking, best first, skipping blocks already taken.
  std::vector<ScoredBlock> merged;
  std::unordered_set<uint64_t> taken;
  std::vector<size_t> next(lists.size(), 0);
  for (bool progress = true; merged.size() < options.top_k && progress;) {
    progress = false;
    for (size_t i = 0; i < lists.size() && merged.size() < options.top_k; ++i) {
      while (next[i] < lists[i].size() && !taken.insert(lists[i][next[i]].block).second) ++next[i];
      if (next[i] < lists[i].size()) {
        merged.push_back(lists[i][next[i]++]);
        merged.back().ranking = static_cast<uint8_t>(i);
        progress = true;
      }
    }
  }
  return merged;
}

std::vector<ScoredBlock> Router::Search(uint32_t stream, const float* queries, int group_size,
                                        const RouteOptions& options, RouteStats* stats) const {
  const Stream& s = *streams_[stream];
  if (s.summaries.blocks() == 0 || group_size <= 0 || options.top_k == 0) return {};
  const size_t dim = IndexVectorDim(geometry_);
  std::vector<float> probes(group_size * dim);
  for (int h = 0; h < group_size; ++h) {
    MakeProbe(geometry_, queries + static_cast<size_t>(h) * geometry_.head_dim,
              probes.data() + h * dim);
  }
  // Large streams are scanned approximately unless the query chose exact
  // scoring, a channel count or an IVF probe count.
  RouteOptions effective = options;
  if (!options.exact_scan && options.channels == 0 && options.nprobe == 0 &&
      s.summaries.blocks() >= options_.approximate_min_blocks) {
    effective.channels = std::min<uint32_t>(geometry_.head_dim,
                                            options_.approximate_channels_per_head * static_cast<uint32_t>(group_size));
  }
  return Route(s, probes, group_size, effective, stats);
}

std::vector<std::pair<uint64_t, uint64_t>> Router::CoarseRanges(const Stream& s, const std::vector<float>& probes,
                                                                int group_size, const RouteOptions& options,
                                                                uint32_t* coarse_channels) const {
  if (!s.coarse || options.channels == 0 || options.exact_scan || options.ranges ||
      options.coarse_groups == RouteOptions::kNoCoarse) {
    return {};
  }
  if (options.coarse_groups == 0 && s.summaries.blocks() < options_.coarse_min_blocks) return {};
  const uint64_t groups = s.coarse->summaries.blocks();
  const uint64_t want = options.coarse_groups != 0
                            ? options.coarse_groups
                            : uint64_t{options_.coarse_groups_per_top_k} * options.top_k;
  if (want >= groups) return {};  // no cheaper than scanning every block
  // The groups ranked like blocks, by their approximate scores alone,
  // then their blocks in order (rescored exactly in the fine scan).
  RouteOptions coarse = options;
  // Fewer channels than the blocks' scan: a group's max of maxes rises with
  // the group's size on every channel, and only the query's strongest
  // channels keep a single key's excess above that (measured: needle hits
  // at 10M, BENCHMARKS.md "Coarse-to-fine routing").
  coarse.channels = std::max<uint32_t>(static_cast<uint32_t>(group_size),
                                       options.channels / std::max<uint32_t>(1, options_.coarse_channel_divisor));
  *coarse_channels = coarse.channels;
  coarse.top_k = static_cast<uint32_t>(want);
  coarse.candidates = 0;
  coarse.coarse_groups = RouteOptions::kNoCoarse;
  uint64_t unused = 0;
  const std::vector<ScoredBlock> picked = Scan(*s.coarse, probes, group_size, coarse, &unused, /*rescore=*/false);
  const uint64_t group = options_.coarse_group_blocks;
  std::vector<uint64_t> firsts;
  firsts.reserve(picked.size());
  for (const ScoredBlock& p : picked) firsts.push_back(p.block * group);
  std::sort(firsts.begin(), firsts.end());
  std::vector<std::pair<uint64_t, uint64_t>> ranges;
  for (uint64_t first : firsts) {
    if (!ranges.empty() && ranges.back().second == first) {
      ranges.back().second = first + group;
    } else {
      ranges.emplace_back(first, first + group);
    }
  }
  // The blocks after the last whole group have no group summary yet.
  const uint64_t covered = groups * group;
  if (covered < s.summaries.blocks()) {
    if (!ranges.empty() && ranges.back().second == covered) {
      ranges.back().second = s.summaries.blocks();
    } else {
      ranges.emplace_back(covered, s.summaries.blocks());
    }
  }
  return ranges;
}

std::vector<ScoredBlock> Router::Route(const Stream& s, const std::vector<float>& probes, int group_size,
                                       const RouteOptions& options, RouteStats* stats) const {
  const size_t dim = IndexVectorDim(geometry_);
  const size_t per_block = IndexVectorsPerBlock(geometry_);
  if (!s.ivf || options.exact_scan || options.channels > 0 || options.ranges) {
    if (stats) {
      // Share of the summary values read (columns of non-zero coefficients).
      size_t read = 0;
      for (int h = 0; h < group_size; ++h) {
        size_t nonzero = 0;
        for (size_t c = 0; c < dim; ++c) nonzero += probes[h * dim + c] != 0.0f;
        read += options.channels > 0 ? std::min<size_t>(options.channels, nonzero) : nonzero;
      }
      *stats = RouteStats{static_cast<double>(read) / (static_cast<double>(dim) * group_size), false};
      stats->channels = options.channels;
    }
    uint32_t coarse_channels = 0;
    const std::vector<std::pair<uint64_t, uint64_t>> coarse =
        CoarseRanges(s, probes, group_size, options, &coarse_channels);
    RouteOptions fine = options;
    if (!coarse.empty()) fine.ranges = &coarse;
    uint64_t sketch_blocks = 0;
    auto found = Scan(s, probes, group_size, fine, &sketch_blocks);
    if (stats) {
      stats->sketch_blocks = sketch_blocks;
      if (!coarse.empty()) {
        // The fine scan's share of the blocks, plus the coarse pass: its
        // channels over every group.
        uint64_t blocks = 0;
        for (const auto& [first, end] : coarse) blocks += end - first;
        const double all = static_cast<double>(s.summaries.blocks());
        stats->coarse_groups = static_cast<uint32_t>(blocks / options_.coarse_group_blocks);
        stats->scanned_fraction *=
            static_cast<double>(blocks) / all + static_cast<double>(coarse_channels) / options.channels *
                                                    static_cast<double>(s.coarse->summaries.blocks()) / all;
      }
    }
    return found;
  }
  // IVF candidates per head, then the union rescored exactly.
  const faiss::IndexIVF& ivf = *s.ivf;
  faiss::SearchParametersIVF params;
  params.nprobe = options.nprobe ? std::min<size_t>(options.nprobe, ivf.nlist) : DefaultNprobe(ivf.nlist);
  const uint64_t per_head = options.candidates ? options.candidates : 4ull * options.top_k;
  const faiss::Index::idx_t kc = static_cast<faiss::Index::idx_t>(
      std::min<uint64_t>(per_head * per_block, static_cast<uint64_t>(ivf.ntotal)));
  std::vector<float> distances(static_cast<size_t>(group_size * kc));
  std::vector<faiss::Index::idx_t> labels(static_cast<size_t>(group_size * kc));
  // One head at a time: FAISS then stays on this thread (a parallel region
  // per call costs milliseconds when the cores are busy, and concurrent
  // queries are the caller's parallelism).
  for (int h = 0; h < group_size; ++h) {
    ivf.search(1, probes.data() + h * dim, kc, distances.data() + h * kc, labels.data() + h * kc, &params);
  }
  std::unordered_set<uint64_t> seen;
  std::vector<ScoredBlock> scored;
  const size_t width = geometry_.summary_width();
  std::vector<float> summary(width);
  for (const faiss::Index::idx_t label : labels) {
    if (label < 0) continue;
    const uint64_t block = static_cast<uint64_t>(label) / per_block;
    if (!seen.insert(block).second) continue;
    s.summaries.Rows(block, 1, summary.data());
    float score = options.combine == GqaCombine::kMax ? -std::numeric_limits<float>::infinity() : 0.0f;
    for (int h = 0; h < group_size; ++h) {
      score = Combine(options.combine, score, ScoreSummary(geometry_, probes.data() + h * dim, summary.data()));
    }
    scored.push_back({block, score});
  }
  KeepTop(&scored, options.top_k);
  if (stats) {
    *stats = RouteStats{static_cast<double>(params.nprobe) / static_cast<double>(ivf.nlist), true};
  }
  return scored;
}

}  // namespace msa
