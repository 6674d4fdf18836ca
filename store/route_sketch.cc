#include "store/route_sketch.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <new>
#include <utility>

#include "attention/half.h"
#include "store/dot_kernel.h"
#include "store/sketch_scan.h"
#include "store/summary_table.h"

namespace msa {

static_assert(RouteSketch::kRunBlocks % SummaryTable::kChunkBlocks == 0);

namespace {

// 4-bit codes of n values between their extremes: value ~= base + step *
// (code - 8). Returns {base, step}. Written to vectorise (it runs for every
// bound column at open): NaN counts as 0, infinities saturate.
std::pair<float, float> QuantizeNibbles(const float* x, size_t n, float* scratch, uint8_t* codes) {
  float lo = 65504.0f, hi = -65504.0f;
  for (size_t i = 0; i < n; ++i) {
    const float v = x[i] == x[i] ? std::clamp(x[i], -65504.0f, 65504.0f) : 0.0f;
    scratch[i] = v;
    lo = std::min(lo, v);
    hi = std::max(hi, v);
  }
  const float step = hi > lo ? (hi - lo) / 15.0f : 1.0f;
  const float inverse = 1.0f / step;
  for (size_t i = 0; i < n; ++i) {
    // Non-negative, so truncation after adding a half rounds to nearest.
    const float level = std::min((scratch[i] - lo) * inverse + 0.5f, 15.0f);
    codes[i] = static_cast<uint8_t>(static_cast<int32_t>(level));
  }
  return {lo + 8.0f * step, step};
}

}  // namespace

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
  runs_.reserve(need);
  scales_.reserve(need * columns_ * 2);
  bases_.reserve(need * columns_ * 2);
  // Page-aligned: the scan loads 64 bytes of a column at a time, one cache
  // line only if the column starts on one (a large malloc starts 16 bytes
  // into a page).
  while (runs_.size() < need) {
    auto* run = static_cast<uint8_t*>(std::aligned_alloc(4096, columns_ * kRunBlocks));
    if (run == nullptr) throw std::bad_alloc();  // as make_unique would
    runs_.emplace_back(run);
  }
}

void RouteSketch::CatchUp(const SummaryTable& table) {
  constexpr size_t kChunksPerRun = kRunBlocks / SummaryTable::kChunkBlocks;
  static_assert(kRunBlocks % kSketchGroup == 0);
  std::vector<float> values(kRunBlocks);
  std::vector<int8_t> codes(kRunBlocks);
  std::vector<uint8_t> low(kRunBlocks), high(kRunBlocks);
  std::vector<float> scratch(kRunBlocks);
  auto load = [&](uint32_t j, uint32_t c) {
    for (size_t k = 0; k < kChunksPerRun; ++k) {
      attention::HalfToFloatArray(table.Column(runs_done_ * kChunksPerRun + k, j, c),
                                  values.data() + k * SummaryTable::kChunkBlocks, SummaryTable::kChunkBlocks);
    }
  };
  while ((runs_done_ + 1) * kRunBlocks <= table.blocks()) {
    if (runs_.size() <= runs_done_) Reserve(runs_done_ * kRunBlocks, kRunBlocks);
    uint8_t* run = runs_[runs_done_].get();
    scales_.resize((runs_done_ + 1) * columns_ * 2);
    bases_.resize((runs_done_ + 1) * columns_ * 2);
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
          bases_[Index(runs_done_, at)] = low_base;
          scales_[Index(runs_done_, at)] = low_step;
          const Location high_at{at.column, Part::kHigh};
          bases_[Index(runs_done_, high_at)] = high_base;
          scales_[Index(runs_done_, high_at)] = high_step;
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
        scales_[Index(runs_done_, at)] = scale;
        bases_[Index(runs_done_, at)] = 0.0f;
      }
    }
    ++runs_done_;
  }
}

}  // namespace msa
