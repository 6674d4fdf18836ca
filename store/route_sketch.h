// An 8-bit copy of a stream's summary columns, for the approximate scan.
//
// The approximate scan (store/router.h, RouteOptions::channels) reads only
// a few columns per query head. In SummaryTable's layout those are 256-byte
// pieces of 128-block chunks strided far apart, so a scan of 8 columns
// costs more than 8/256 of the exact one (page walks and cut-off
// prefetch). Here each column of a run of kRunBlocks blocks is one
// contiguous 8-bit array (4 KiB), quantised symmetrically with one scale per
// (run, column): half the bytes of fp16, read as long sequential streams.
// Codes are kept as store/sketch_scan.h's kernel reads them (biased to
// unsigned, and permuted within groups of 64 blocks).
// The sketch only proposes candidates; they are rescored from the fp16
// summaries, so its rounding never reaches a returned score.
//
// It covers whole runs only: a run is quantised when its last block has
// arrived (scale = the run's largest magnitude in the column), and the
// blocks after the last whole run are scanned from the fp16 table.
//
// The hybrid summary's second index vector is [mean, mean]: its two halves
// are one column stored once.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <vector>

namespace msa {

class SummaryTable;

class RouteSketch {
 public:
  static constexpr size_t kRunBlocks = 4096;  // 32 SummaryTable chunks

  // vectors_per_block and dim as in SummaryTable; mirrored_vector: the
  // index vector whose second half repeats its first (-1: none).
  RouteSketch(uint32_t vectors_per_block, uint32_t dim, int mirrored_vector);

  // Room for the runs that `blocks` more blocks will complete, so that a
  // CatchUp after as many allocates nothing.
  void Reserve(uint64_t current_blocks, uint64_t more);
  // Quantises every run of `table` that is complete and not yet here.
  void CatchUp(const SummaryTable& table);

  uint64_t blocks() const { return runs_done_ * kRunBlocks; }
  size_t runs() const { return runs_done_; }
  // Where column (vector j, dim c) is stored (mirrored halves share one).
  uint32_t Slot(uint32_t j, uint32_t c) const;
  // The codes of slot `slot` for the blocks of run r (stored as
  // StoreSketchColumn writes them), and their scale: value ~= scale * code.
  const uint8_t* Codes(size_t run, uint32_t slot) const { return runs_[run].get() + slot * kRunBlocks; }
  float Scale(size_t run, uint32_t slot) const { return scales_[run * slots_ + slot]; }

  uint64_t memory_bytes() const {
    return runs_.size() * slots_ * kRunBlocks + scales_.capacity() * sizeof(float);
  }

 private:
  const uint32_t per_block_, dim_;
  const int mirrored_;
  const uint32_t slots_;
  struct Free { void operator()(uint8_t* p) const { std::free(p); } };
  std::vector<std::unique_ptr<uint8_t[], Free>> runs_;  // slots_ * kRunBlocks codes each
  std::vector<float> scales_;                    // [run][slot]
  size_t runs_done_ = 0;
};

}  // namespace msa
