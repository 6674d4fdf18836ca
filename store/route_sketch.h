// A compact copy of a stream's summary columns, for the approximate scan.
//
// The approximate scan (store/router.h, RouteOptions::channels) reads only
// a few columns per query head. In SummaryTable's layout those are 256-byte
// pieces of 128-block chunks strided far apart, so a scan of 8 columns
// costs more than 8/256 of the exact one (page walks and cut-off
// prefetch). Here each stored column of a run of kRunBlocks blocks is one
// contiguous 4 KiB array, read as a long sequential stream.
//
// Two kinds of stored column (store/sketch_scan.h reads both):
//   byte    one summary column in 8 bits, symmetric, one scale per (run,
//           column): value ~= scale * (code - 128).
//   packed  the Quest bound's max and min of one key channel in 4 bits
//           each (low and high nibble), asymmetric per (run, column):
//           value ~= base + step * (code - 8).
// Why the bound is packed: the scan is bound by memory bandwidth (~9 us per
// stored column at 10M tokens on the 2-core VM, BENCHMARKS.md), and a
// query channel reads the max and the min of its channel together, so one
// packed column replaces two byte columns. A block's max (and min) over
// 64 keys spans a narrow range within a run, which 16 levels between the
// run's extremes cover far better than 16 symmetric ones would. The mean
// stays in 8 bits: it varies little between blocks, and its ranking
// separates blocks by small differences.
//
// The sketch only proposes candidates; they are rescored from the fp16
// summaries, so its rounding never reaches a returned score.
//
// It covers whole runs only: a run is quantised when its last block has
// arrived, and the blocks after the last whole run are scanned from the
// fp16 table. It is not persisted: open builds it from the summaries.
//
// The hybrid summary's second index vector is [mean, mean]: its two halves
// are one column stored once.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <vector>

#include "store/table_memory.h"

namespace msa {

class SummaryTable;
class WorkPool;

class RouteSketch {
 public:
  static constexpr size_t kRunBlocks = 4096;  // 32 SummaryTable chunks

  // vectors_per_block and dim as in SummaryTable; mirrored_vector: the
  // index vector whose second half repeats its first; packed_vector: the
  // [max, min] vector of a Quest bound, stored as packed 4-bit pairs (-1:
  // none, or stored in bytes like the others).
  RouteSketch(uint32_t vectors_per_block, uint32_t dim, int mirrored_vector, int packed_vector);

  // Room for the runs that `blocks` more blocks will complete, so that a
  // CatchUp after as many allocates nothing; in slabs of whole runs, at
  // least a quarter of the sketch more at a time (as SummaryTable's).
  void Reserve(uint64_t current_blocks, uint64_t more);
  // Quantises every run of `table` that is complete and not yet here; with
  // a pool, several runs at once (each run is independent of the others;
  // the codes are the same either way). Never throws: runs it cannot build
  // (out of memory) are left for the next call, and the scan reads their
  // blocks from the fp16 table meanwhile.
  void CatchUp(const SummaryTable& table, WorkPool* pool = nullptr);

  uint64_t blocks() const { return runs_done_ * kRunBlocks; }
  size_t runs() const { return runs_done_; }

  // Where summary column (vector j, dim c) is stored: a stored column, and
  // which part of it (mirrored halves share one byte column).
  enum class Part : uint8_t { kByte, kLow, kHigh };
  struct Location {
    uint32_t column = 0;
    Part part = Part::kByte;
    friend bool operator==(const Location&, const Location&) = default;
  };
  Location Locate(uint32_t j, uint32_t c) const;
  // Codes of stored column `column` for the blocks of run r (as
  // StoreSketchColumn or StoreSketchPacked wrote them; columns are
  // kRunBlocks bytes apart), and how a code turns back into a value:
  // value ~= Base + Scale * (code - zero), zero 128 for bytes, 8 for nibbles.
  const uint8_t* Codes(size_t run, uint32_t column) const { return runs_[run] + column * kRunBlocks; }
  float Scale(size_t run, Location at) const { return scales_[Index(run, at)]; }
  float Base(size_t run, Location at) const { return bases_[Index(run, at)]; }

  uint64_t memory_bytes() const {
    return runs_done_ * columns_ * kRunBlocks + (scales_.capacity() + bases_.capacity()) * sizeof(float);
  }

 private:
  // Quantises run r of `table` into runs_[r], scales_ and bases_ (all sized).
  void BuildRun(const SummaryTable& table, size_t r);
  size_t Index(size_t run, Location at) const {
    return (run * columns_ + at.column) * 2 + (at.part == Part::kHigh ? 1 : 0);
  }
  const uint32_t per_block_, dim_;
  const int mirrored_, packed_;
  std::vector<uint32_t> first_;  // [j]: vector j's first stored column
  uint32_t columns_ = 0;         // stored columns per run
  std::vector<TableMemory> slabs_;  // whole runs each (store/table_memory.h)
  std::vector<uint8_t*> runs_;      // into slabs_: columns_ * kRunBlocks codes each
  std::vector<float> scales_, bases_;                   // [run][column][part: byte or low, high]
  size_t runs_done_ = 0;
};

}  // namespace msa
