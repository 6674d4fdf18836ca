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

namespace msa {

struct Router::Stream {
  std::vector<uint16_t> summaries;  // [blocks, summary_width] fp16
  uint64_t blocks = 0;
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

std::vector<float> Widen(const uint16_t* half, size_t n) {
  std::vector<float> out(n);
  attention::HalfToFloatArray(half, out.data(), n);
  return out;
}

// Adds fp16 vectors to an index in float chunks of 64K vectors.
void AddInChunks(faiss::Index* index, const uint16_t* vectors, uint64_t n, size_t dim) {
  constexpr uint64_t kChunk = 1 << 16;
  for (uint64_t at = 0; at < n; at += kChunk) {
    const uint64_t len = std::min(kChunk, n - at);
    const std::vector<float> chunk = Widen(vectors + at * dim, len * dim);
    index->add(static_cast<faiss::Index::idx_t>(len), chunk.data());
  }
}

void KeepTop(std::vector<ScoredBlock>* scored, size_t k) {
  k = std::min(k, scored->size());
  std::partial_sort(scored->begin(), scored->begin() + static_cast<ptrdiff_t>(k), scored->end(),
                    [](const ScoredBlock& a, const ScoredBlock& b) {
                      return a.score > b.score || (a.score == b.score && a.block < b.block);
                    });
  scored->resize(k);
}

}  // namespace

Router::Router(const Geometry& geometry, const RouterOptions& options)
    : geometry_(geometry), options_(options) {
  streams_.reserve(geometry.streams());
  for (uint32_t s = 0; s < geometry.streams(); ++s) streams_.push_back(std::make_unique<Stream>());
}

Router::~Router() = default;

void Router::Reserve(uint32_t stream, uint64_t blocks) {
  Stream& s = *streams_[stream];
  s.summaries.reserve(s.summaries.size() + blocks * geometry_.summary_width());
}

void Router::Add(uint32_t stream, std::span<const float> summaries) {
  Stream& s = *streams_[stream];
  const uint64_t n = summaries.size() / geometry_.summary_width();
  if (n == 0) return;
  const size_t old_size = s.summaries.size();
  s.summaries.resize(old_size + summaries.size());  // within the reserved capacity
  attention::FloatToHalfArray(summaries.data(), s.summaries.data() + old_size, summaries.size());
  if (s.ivf) {
    // Summaries are [block][vector][dim], exactly the index vectors in order.
    const uint64_t per_block = IndexVectorsPerBlock(geometry_);
    try {
      const std::vector<float> rounded = Widen(s.summaries.data() + old_size, summaries.size());
      s.ivf->add(static_cast<faiss::Index::idx_t>(n * per_block), rounded.data());
    } catch (const std::exception& e) {
      spdlog::warn("router: adding to the IVF index of stream {} failed ({}); scanning it exactly",
                   stream, e.what());
      s.ivf.reset();
    }
  }
  s.blocks += n;
}

uint64_t Router::blocks(uint32_t stream) const { return streams_[stream]->blocks; }
bool Router::has_ivf(uint32_t stream) const { return streams_[stream]->ivf != nullptr; }

bool Router::RefreshIndex(uint32_t stream, std::shared_mutex& publish_mu) {
  Stream& s = *streams_[stream];
  const uint64_t vectors = s.blocks * IndexVectorsPerBlock(geometry_);
  if (vectors < options_.ivf_min_vectors) return false;
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
  const uint64_t sample = std::min<uint64_t>(vectors, 64ull * nlist);
  std::vector<float> train(sample * dim);
  for (uint64_t i = 0; i < sample; ++i) {
    const uint64_t from = i * vectors / sample;
    attention::HalfToFloatArray(s.summaries.data() + from * dim, train.data() + i * dim, dim);
  }
  ivf->cp.max_points_per_centroid = 64;
  ivf->train(static_cast<faiss::Index::idx_t>(sample), train.data());
  train = {};
  AddInChunks(ivf.get(), s.summaries.data(), vectors, dim);
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
  if (covered > s.blocks) {
    return Status::Corruption("covers " + std::to_string(covered) + " blocks but the stream has " +
                              std::to_string(s.blocks));
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
  const uint64_t missing = s.blocks - covered;
  if (missing > 0) {
    AddInChunks(ivf.get(), s.summaries.data() + covered * geometry_.summary_width(), missing * per_block,
                IndexVectorDim(geometry_));
  }
  s.ivf = std::move(ivf);
  s.trained_vectors = trained_vectors;
  return Status::OK();
}

std::vector<ScoredBlock> Router::ExactScan(const Stream& s, const std::vector<float>& probes,
                                           int group_size, const RouteOptions& options) const {
  const size_t dim = IndexVectorDim(geometry_);
  const size_t per_block = IndexVectorsPerBlock(geometry_);
  // In chunks that stay in L1/L2: all heads' dots of a chunk, then their combine.
  constexpr size_t kChunkBlocks = 256;
  std::vector<float> dots(kChunkBlocks * per_block * static_cast<size_t>(group_size));
  std::vector<ScoredBlock> scored(s.blocks);
  for (uint64_t b0 = 0; b0 < s.blocks; b0 += kChunkBlocks) {
    const uint64_t nb = std::min<uint64_t>(kChunkBlocks, s.blocks - b0);
    InnerProductsF16(probes.data(), group_size, s.summaries.data() + b0 * per_block * dim,
                     nb * per_block, dim, dots.data());
    for (uint64_t b = 0; b < nb; ++b) {
      float acc = options.combine == GqaCombine::kMax ? -std::numeric_limits<float>::infinity() : 0.0f;
      for (int h = 0; h < group_size; ++h) {
        float best = -std::numeric_limits<float>::infinity();
        for (size_t j = 0; j < per_block; ++j) {
          best = std::max(best, dots[(b * per_block + j) * group_size + h]);
        }
        acc = Combine(options.combine, acc, best);
      }
      scored[b0 + b] = {b0 + b, acc};
    }
  }
  KeepTop(&scored, options.top_k);
  return scored;
}

std::vector<ScoredBlock> Router::Search(uint32_t stream, const float* queries, int group_size,
                                        const RouteOptions& options, RouteStats* stats) const {
  const Stream& s = *streams_[stream];
  if (s.blocks == 0 || group_size <= 0 || options.top_k == 0) return {};
  const size_t dim = IndexVectorDim(geometry_);
  const size_t per_block = IndexVectorsPerBlock(geometry_);
  std::vector<float> probes(group_size * dim);
  for (int h = 0; h < group_size; ++h) {
    MakeProbe(geometry_, queries + static_cast<size_t>(h) * geometry_.head_dim,
              probes.data() + h * dim);
  }
  if (!s.ivf || options.exact_scan) {
    if (stats) *stats = RouteStats{1.0, false};
    return ExactScan(s, probes, group_size, options);
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
    attention::HalfToFloatArray(s.summaries.data() + block * width, summary.data(), width);
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
