#include "store/router.h"

#include <faiss/IndexFlat.h>
#include <faiss/IndexIVF.h>
#include <faiss/IndexScalarQuantizer.h>
#include <faiss/impl/io.h>
#include <faiss/index_io.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <unordered_set>

#include <spdlog/spdlog.h>

#include "attention/half.h"
#include "store/dot_kernel.h"
#include "store/summary.h"
#include "store/summary_table.h"

namespace msa {

struct Router::Stream {
  explicit Stream(const Geometry& g) : summaries(IndexVectorsPerBlock(g), IndexVectorDim(g)) {}
  SummaryTable summaries;  // its block count is the stream's
  std::unique_ptr<faiss::IndexIVF> ivf;  // null: exact scan
  uint64_t trained_vectors = 0;          // vectors the IVF was trained on
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

// Streaming top k.
class TopK {
 public:
  explicit TopK(uint64_t k) : k_(k) { heap_.reserve(static_cast<size_t>(std::min<uint64_t>(k, 1u << 20))); }
  void Offer(uint64_t block, float score) {
    if (k_ == 0) return;
    const ScoredBlock sb{block, score};
    if (heap_.size() < k_) {
      heap_.push_back(sb);
      std::push_heap(heap_.begin(), heap_.end(), Better);  // root: the worst kept
    } else if (Better(sb, heap_.front())) {
      std::pop_heap(heap_.begin(), heap_.end(), Better);
      heap_.back() = sb;
      std::push_heap(heap_.begin(), heap_.end(), Better);
    }
  }
  std::vector<ScoredBlock> Take() { return std::move(heap_); }

 private:
  const uint64_t k_;
  std::vector<ScoredBlock> heap_;
};

void KeepTop(std::vector<ScoredBlock>* scored, size_t k) {
  k = std::min(k, scored->size());
  std::partial_sort(scored->begin(), scored->begin() + static_cast<ptrdiff_t>(k), scored->end(), Better);
  scored->resize(k);
}

}  // namespace

Router::Router(const Geometry& geometry, const RouterOptions& options)
    : geometry_(geometry), options_(options) {
  streams_.reserve(geometry.streams());
  for (uint32_t s = 0; s < geometry.streams(); ++s) streams_.push_back(std::make_unique<Stream>(geometry));
}

Router::~Router() = default;

void Router::Reserve(uint32_t stream, uint64_t blocks) {
  streams_[stream]->summaries.Reserve(blocks);
}

void Router::Add(uint32_t stream, std::span<const float> summaries) {
  Stream& s = *streams_[stream];
  const uint64_t n = summaries.size() / geometry_.summary_width();
  if (n == 0) return;
  const uint64_t first = s.summaries.blocks();
  s.summaries.Append(summaries.data(), n);  // within the reserved chunks
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
                                      int group_size, const RouteOptions& options) const {
  const size_t dim = IndexVectorDim(geometry_);
  const uint32_t per_block = IndexVectorsPerBlock(geometry_);
  // The columns each head reads: those of its non-zero coefficients (half of
  // a bound's probe is zero), or only the `channels` largest in magnitude.
  std::vector<std::vector<uint32_t>> columns(group_size);
  for (int h = 0; h < group_size; ++h) {
    const float* p = probes.data() + h * dim;
    for (uint32_t c = 0; c < dim; ++c) {
      if (p[c] != 0.0f) columns[h].push_back(c);
    }
    if (options.channels > 0 && options.channels < columns[h].size()) {
      std::partial_sort(columns[h].begin(), columns[h].begin() + options.channels, columns[h].end(),
                        [&](uint32_t a, uint32_t b) { return std::abs(p[a]) > std::abs(p[b]); });
      columns[h].resize(options.channels);
    }
  }
  std::vector<std::vector<float>> coefs(group_size);
  for (int h = 0; h < group_size; ++h) {
    for (uint32_t c : columns[h]) coefs[h].push_back(probes[h * dim + c]);
  }
  const float identity = options.combine == GqaCombine::kMax ? -std::numeric_limits<float>::infinity() : 0.0f;
  // The best `keep` blocks, selected while scanning: a min-heap whose root
  // is the bar a block must clear (one comparison for almost every block,
  // instead of sorting the whole stream).
  // The hybrid summary ranks blocks twice, by its bound and by its mean
  // (index vectors 0 and 1), and takes the two rankings in turn; the other
  // kinds take the max over their index vectors, one ranking.
  const bool hybrid = geometry_.summary == SummaryKind::kHybrid;
  const uint32_t rankings = hybrid ? per_block : 1;
  const bool approximate = options.channels > 0 && !hybrid;
  const uint64_t keep = !approximate
                            ? options.top_k
                            : std::max<uint64_t>(options.candidates ? options.candidates : 8ull * options.top_k,
                                                 options.top_k);
  std::vector<TopK> tops;
  for (uint32_t i = 0; i < rankings; ++i) tops.emplace_back(keep);
  float dots[kColumnTile], best[kColumnTile], totals[2][kColumnTile];
  // Tiles of 128 blocks: the tile's columns (at most 32 KiB) stay in L1
  // while every head reads them. Chunks are allocated whole and zeroed, so a
  // tile may run past the last block; those sums are never used.
  static_assert(SummaryTable::kChunkBlocks % kColumnTile == 0);
  // With ranges, only the tiles that meet one are scanned (r: the first
  // range that may still meet the current tile).
  size_t r = 0;
  for (size_t chunk = 0; chunk < s.summaries.chunks(); ++chunk) {
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
      for (uint32_t i = 0; i < rankings; ++i) std::fill(totals[i], totals[i] + nt, identity);
      for (int h = 0; h < group_size; ++h) {
        std::fill(best, best + nt, -std::numeric_limits<float>::infinity());
        for (uint32_t j = 0; j < per_block; ++j) {
          WeightedColumnSum(coefs[h].data(), columns[h].data(), columns[h].size(),
                            s.summaries.Column(chunk, j, 0) + t0, SummaryTable::kChunkBlocks, dots);
          if (hybrid) {
            for (size_t b = 0; b < nt; ++b) totals[j][b] = Combine(options.combine, totals[j][b], dots[b]);
          } else {
            for (size_t b = 0; b < nt; ++b) best[b] = std::max(best[b], dots[b]);
          }
        }
        if (!hybrid) {
          for (size_t b = 0; b < nt; ++b) totals[0][b] = Combine(options.combine, totals[0][b], best[b]);
        }
      }
      const uint64_t b0 = tile_first;
      for (uint32_t i = 0; i < rankings; ++i) {
        if (options.ranges) {
          size_t rr = r;
          for (size_t b = 0; b < nt; ++b) {
            while (rr < options.ranges->size() && (*options.ranges)[rr].second <= b0 + b) ++rr;
            if (rr < options.ranges->size() && (*options.ranges)[rr].first <= b0 + b) tops[i].Offer(b0 + b, totals[i][b]);
          }
        } else {
          for (size_t b = 0; b < nt; ++b) tops[i].Offer(b0 + b, totals[i][b]);
        }
      }
    }
  }
  if (hybrid) {
    // In turn from each ranking, best first, skipping blocks already taken.
    std::vector<std::vector<ScoredBlock>> lists;
    for (TopK& t : tops) {
      lists.push_back(t.Take());
      KeepTop(&lists.back(), lists.back().size());
    }
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
  std::vector<ScoredBlock> scored = tops[0].Take();
  if (!approximate) {
    KeepTop(&scored, options.top_k);
    return scored;
  }
  // Approximate scores: the wider set is rescored exactly.
  std::vector<float> summary(geometry_.summary_width());
  for (ScoredBlock& sb : scored) {
    s.summaries.Rows(sb.block, 1, summary.data());
    float score = identity;
    for (int h = 0; h < group_size; ++h) {
      score = Combine(options.combine, score, ScoreSummary(geometry_, probes.data() + h * dim, summary.data()));
    }
    sb.score = score;
  }
  KeepTop(&scored, options.top_k);
  return scored;
}

std::vector<ScoredBlock> Router::Search(uint32_t stream, const float* queries, int group_size,
                                        const RouteOptions& options, RouteStats* stats) const {
  const Stream& s = *streams_[stream];
  if (s.summaries.blocks() == 0 || group_size <= 0 || options.top_k == 0) return {};
  const size_t dim = IndexVectorDim(geometry_);
  const size_t per_block = IndexVectorsPerBlock(geometry_);
  std::vector<float> probes(group_size * dim);
  for (int h = 0; h < group_size; ++h) {
    MakeProbe(geometry_, queries + static_cast<size_t>(h) * geometry_.head_dim,
              probes.data() + h * dim);
  }
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
    }
    return Scan(s, probes, group_size, options);
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
