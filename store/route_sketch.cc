#include "store/route_sketch.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <new>

#include "attention/half.h"
#include "store/dot_kernel.h"
#include "store/sketch_scan.h"
#include "store/summary_table.h"

namespace msa {

static_assert(RouteSketch::kRunBlocks % SummaryTable::kChunkBlocks == 0);

RouteSketch::RouteSketch(uint32_t vectors_per_block, uint32_t dim, int mirrored_vector)
    : per_block_(vectors_per_block),
      dim_(dim),
      mirrored_(mirrored_vector),
      slots_(vectors_per_block * dim - (mirrored_vector >= 0 ? dim / 2 : 0)) {}

uint32_t RouteSketch::Slot(uint32_t j, uint32_t c) const {
  // Slots in (j, c) order, the mirrored vector's second half folded onto its
  // first, and the vectors after it shifted down by the half it saved.
  const int half = static_cast<int>(dim_ / 2);
  if (mirrored_ >= 0 && static_cast<int>(j) == mirrored_ && c >= dim_ / 2) c -= dim_ / 2;
  const uint32_t slot = j * dim_ + c;
  return mirrored_ >= 0 && static_cast<int>(j) > mirrored_ ? slot - half : slot;
}

void RouteSketch::Reserve(uint64_t current_blocks, uint64_t more) {
  const size_t need = static_cast<size_t>((current_blocks + more) / kRunBlocks);
  runs_.reserve(need);
  scales_.reserve(need * slots_);
  // Page-aligned: the scan loads 64 bytes of a column at a time, one cache
  // line only if the column starts on one (a large malloc starts 16 bytes
  // into a page).
  while (runs_.size() < need) {
    auto* run = static_cast<uint8_t*>(std::aligned_alloc(4096, slots_ * kRunBlocks));
    if (run == nullptr) throw std::bad_alloc();  // as make_unique would
    runs_.emplace_back(run);
  }
}

void RouteSketch::CatchUp(const SummaryTable& table) {
  constexpr size_t kChunksPerRun = kRunBlocks / SummaryTable::kChunkBlocks;
  static_assert(kRunBlocks % kSketchGroup == 0);
  std::vector<float> values(kRunBlocks);
  std::vector<int8_t> codes(kRunBlocks);
  while ((runs_done_ + 1) * kRunBlocks <= table.blocks()) {
    if (runs_.size() <= runs_done_) Reserve(runs_done_ * kRunBlocks, kRunBlocks);
    uint8_t* run = runs_[runs_done_].get();
    scales_.resize((runs_done_ + 1) * slots_);
    for (uint32_t j = 0; j < per_block_; ++j) {
      for (uint32_t c = 0; c < dim_; ++c) {
        if (mirrored_ >= 0 && static_cast<int>(j) == mirrored_ && c >= dim_ / 2) continue;
        const uint32_t slot = Slot(j, c);
        for (size_t k = 0; k < kChunksPerRun; ++k) {
          attention::HalfToFloatArray(table.Column(runs_done_ * kChunksPerRun + k, j, c),
                                      values.data() + k * SummaryTable::kChunkBlocks,
                                      SummaryTable::kChunkBlocks);
        }
        float peak = MaxAbs(values.data(), kRunBlocks);
        // Infinite summaries (an overflowed fp16 mean) saturate rather than
        // poisoning the run's scale; the rescoring sees the true value.
        if (!std::isfinite(peak)) peak = 65504.0f;
        const float scale = peak > 0.0f ? peak / 127.0f : 1.0f;
        QuantizeInt8(values.data(), kRunBlocks, 1.0f / scale, codes.data());
        StoreSketchColumn(codes.data(), kRunBlocks, run + static_cast<size_t>(slot) * kRunBlocks);
        scales_[runs_done_ * slots_ + slot] = scale;
      }
    }
    ++runs_done_;
  }
}

}  // namespace msa
