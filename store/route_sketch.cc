#include "store/route_sketch.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <memory>
#include <new>
#include <stdexcept>
#include <string>
#include <utility>

#include <spdlog/spdlog.h>

#include "attention/half.h"
#include "store/dot_kernel.h"
#include "store/sketch_scan.h"
#include "store/summary_table.h"
#include "store/work_pool.h"

namespace msa {

static_assert(RouteSketch::kRunBlocks % SummaryTable::kChunkBlocks == 0);


RouteSketch::RouteSketch(uint32_t vectors_per_block, uint32_t dim, int mirrored_vector, int packed_vector)
    : per_block_(vectors_per_block), dim_(dim), mirrored_(mirrored_vector), packed_(packed_vector) {
  for (uint32_t j = 0; j < per_block_; ++j) {
    first_.push_back(columns_);
    const bool halved = static_cast<int>(j) == mirrored_ || static_cast<int>(j) == packed_;
    columns_ += halved ? dim_ / 2 : dim_;
  }
}

RouteSketch::Location RouteSketch::Locate(uint32_t j, uint32_t c) const {
  const uint32_t half = dim_ / 2;
  if (static_cast<int>(j) == packed_) return {first_[j] + c % half, c < half ? Part::kLow : Part::kHigh};
  if (static_cast<int>(j) == mirrored_) return {first_[j] + c % half, Part::kByte};
  return {first_[j] + c, Part::kByte};
}

void RouteSketch::Reserve(uint64_t current_blocks, uint64_t more) {
  const size_t need = static_cast<size_t>((current_blocks + more) / kRunBlocks);
  scales_.reserve(need * columns_ * 2);
  bases_.reserve(need * columns_ * 2);
  // Runs are page-aligned (a slab is, and a run is whole pages): the scan
  // loads 64 bytes of a column at a time, one cache line only if the
  // column starts on one.
  if (runs_.size() >= need) return;
  const size_t slab_runs = std::max(need - runs_.size(), runs_.size() / 4);
  const size_t run_bytes = columns_ * kRunBlocks;
  runs_.reserve(runs_.size() + slab_runs);
  slabs_.emplace_back(slab_runs * run_bytes);
  for (size_t i = 0; i < slab_runs; ++i) runs_.push_back(slabs_.back().data() + i * run_bytes);
}

void RouteSketch::CatchUp(const SummaryTable& table, WorkPool* pool) {
  const size_t end = static_cast<size_t>(table.blocks() / kRunBlocks);
  if (end <= runs_done_) return;
  // A sketch that falls behind costs speed, never answers: the scan reads
  // the blocks past runs() from the fp16 table. So a failure here (out of
  // memory for the scratch or the pool's bookkeeping) leaves the runs for
  // the next call instead of failing the caller, which may be publishing a
  // durable commit.
  try {
    if (runs_.size() < end) Reserve(runs_done_ * kRunBlocks, (end - runs_done_) * kRunBlocks);
    scales_.resize(end * columns_ * 2);
    bases_.resize(end * columns_ * 2);
    const size_t first = runs_done_, items = end - first;
    if (pool == nullptr || items == 1) {
      for (; runs_done_ < end; ++runs_done_) BuildRun(table, runs_done_);
      return;
    }
    const Status status = pool->ParallelFor(items, [&](size_t i) {
      BuildRun(table, first + i);
      return Status::OK();
    });
    if (!status.ok()) throw std::runtime_error(status.message());  // a run threw
    runs_done_ = end;
  } catch (const std::exception& e) {
    spdlog::warn("route sketch: runs {}..{} not built ({}); their blocks are scanned from the fp16 summaries",
                 runs_done_, end, e.what());
  }
}

void RouteSketch::BuildRun(const SummaryTable& table, size_t r) {
  constexpr size_t kChunksPerRun = kRunBlocks / SummaryTable::kChunkBlocks;
  static_assert(kRunBlocks % kSketchGroup == 0);
  std::vector<float> values(kRunBlocks);
  std::vector<int8_t> codes(kRunBlocks);
  std::vector<uint8_t> low(kRunBlocks), high(kRunBlocks);
  std::vector<float> scratch(kRunBlocks);
  auto load = [&](uint32_t j, uint32_t c) {
    for (size_t k = 0; k < kChunksPerRun; ++k) {
      attention::HalfToFloatArray(table.Column(r * kChunksPerRun + k, j, c),
                                  values.data() + k * SummaryTable::kChunkBlocks, SummaryTable::kChunkBlocks);
    }
  };
  uint8_t* run = runs_[r];
  for (uint32_t j = 0; j < per_block_; ++j) {
    for (uint32_t c = 0; c < dim_; ++c) {
      const Location at = Locate(j, c);
      if (at.part == Part::kHigh || (static_cast<int>(j) == mirrored_ && c >= dim_ / 2)) continue;
      uint8_t* out = run + static_cast<size_t>(at.column) * kRunBlocks;
      if (at.part == Part::kLow) {
        load(j, c);
        const auto [low_base, low_step] = QuantizeNibbles(values.data(), kRunBlocks, scratch.data(), low.data());
        load(j, c + dim_ / 2);
        const auto [high_base, high_step] = QuantizeNibbles(values.data(), kRunBlocks, scratch.data(), high.data());
        StoreSketchPacked(low.data(), high.data(), kRunBlocks, out);
        bases_[Index(r, at)] = low_base;
        scales_[Index(r, at)] = low_step;
        const Location high_at{at.column, Part::kHigh};
        bases_[Index(r, high_at)] = high_base;
        scales_[Index(r, high_at)] = high_step;
        continue;
      }
      load(j, c);
      float peak = MaxAbs(values.data(), kRunBlocks);
      // Infinite summaries (an overflowed fp16 mean) saturate rather than
      // poisoning the run's scale; the rescoring sees the true value.
      if (!std::isfinite(peak)) peak = 65504.0f;
      const float scale = peak > 0.0f ? peak / 127.0f : 1.0f;
      QuantizeInt8(values.data(), kRunBlocks, 1.0f / scale, codes.data());
      StoreSketchColumn(codes.data(), kRunBlocks, out);
      scales_[Index(r, at)] = scale;
      bases_[Index(r, at)] = 0.0f;
    }
  }
}

}  // namespace msa
