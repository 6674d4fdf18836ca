// A stream's block summaries in memory, laid out for scanning: fp16, in
// chunks of 128 blocks, each chunk column-major ([index vector][dim][block
// in chunk]) and contiguous. A scan reads, per head, only the columns of its
// non-zero probe coefficients (half of a Quest bound's probe is zero) or,
// approximately, those of its largest ones (store/router.h); a chunk is one
// scan tile, so the columns all heads read stay in L1 meanwhile. Rows are
// gathered for exact rescoring and for the IVF.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include "store/table_memory.h"

namespace msa {

class SummaryTable {
 public:
  static constexpr size_t kChunkBlocks = 128;  // = kColumnTile (store/dot_kernel.h)

  SummaryTable(uint32_t vectors_per_block, uint32_t dim);

  // Allocates room for `more` blocks beyond the current ones, so that an
  // Append of as many allocates nothing. Room comes in slabs of whole
  // chunks (store/table_memory.h), at least a quarter of the table more at
  // a time, so that a table growing by small appends has few mappings.
  void Reserve(uint64_t more);
  // Appends n blocks: summaries[(b * vectors_per_block + j) * dim + c].
  void Append(const float* summaries, uint64_t n);

  uint64_t blocks() const { return blocks_; }
  size_t chunks() const { return (blocks_ + kChunkBlocks - 1) / kChunkBlocks; }
  size_t blocks_in_chunk(size_t chunk) const {
    return static_cast<size_t>(std::min<uint64_t>(kChunkBlocks, blocks_ - chunk * kChunkBlocks));
  }
  // Value (vector j, dim c) of the blocks of `chunk`, fp16 bits.
  const uint16_t* Column(size_t chunk, uint32_t j, uint32_t c) const {
    return chunks_[chunk] + (static_cast<size_t>(j) * dim_ + c) * kChunkBlocks;
  }
  // Values (vector j, dim cols[k]) of n blocks: out[i * ncols + k], in
  // float. For rescoring a few candidates with the columns their probes
  // need: each value is its own cache line in this layout, so the loads of
  // later blocks are issued ahead (prefetched) while earlier ones convert.
  void Gather(const uint64_t* blocks, size_t n, uint32_t j, const uint32_t* cols, size_t ncols,
              float* out) const;
  // Blocks [first, first + n) as rows of vectors_per_block * dim floats.
  void Rows(uint64_t first, uint64_t n, float* out) const;

  // Whole chunks as they lie in memory, for saving summaries to a file and
  // loading them back without conversion (Store's summary pieces).
  size_t chunk_bytes() const { return chunk_values() * sizeof(uint16_t); }
  const uint16_t* ChunkData(size_t chunk) const { return chunks_[chunk]; }
  // Appends `n_chunks` whole chunks (kChunkBlocks blocks each) from `data`;
  // requires blocks() to be a multiple of kChunkBlocks.
  void AppendChunks(const uint16_t* data, size_t n_chunks);
  // The same without a copy: `memory` (a saved piece mapped, see
  // store/table_memory.h) holds whole chunks, which become the table's
  // next ones and stay where they are. Requires blocks() to be a multiple
  // of kChunkBlocks.
  void AppendMappedChunks(TableMemory memory);

  uint64_t memory_bytes() const { return chunks() * chunk_bytes(); }  // in use, not reserved

 private:
  size_t chunk_values() const { return static_cast<size_t>(per_block_) * dim_ * kChunkBlocks; }
  const uint32_t per_block_, dim_;
  std::vector<TableMemory> slabs_;  // allocated or mapped
  std::vector<uint16_t*> chunks_;   // into slabs_, in block order; those past blocks_ reserved
  uint64_t blocks_ = 0;
};

}  // namespace msa
