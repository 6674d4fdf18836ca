#include "store/summary_table.h"

#include <algorithm>
#include <cassert>
#include <cstring>
#include <utility>
#include <vector>

#include "attention/half.h"

namespace msa {

SummaryTable::SummaryTable(uint32_t vectors_per_block, uint32_t dim)
    : per_block_(vectors_per_block), dim_(dim) {}

void SummaryTable::Reserve(uint64_t more) {
  const uint64_t need = (blocks_ + more + kChunkBlocks - 1) / kChunkBlocks;
  if (chunks_.size() >= need) return;
  const size_t slab_chunks = std::max<size_t>(need - chunks_.size(), chunks_.size() / 4);
  chunks_.reserve(chunks_.size() + slab_chunks);
  slabs_.emplace_back(slab_chunks * chunk_bytes());
  auto* slab = reinterpret_cast<uint16_t*>(slabs_.back().data());
  for (size_t i = 0; i < slab_chunks; ++i) chunks_.push_back(slab + i * chunk_values());
}

void SummaryTable::Append(const float* summaries, uint64_t n) {
  Reserve(n);  // a no-op after the caller's Reserve
  const size_t width = static_cast<size_t>(per_block_) * dim_;
  // The conversion in bulk (F16C), then the transposing scatter: converting
  // value by value was a fifth of a 100M-token store's open time.
  std::vector<uint16_t> halves(width);
  for (uint64_t i = 0; i < n; ++i, ++blocks_) {
    uint16_t* chunk = chunks_[blocks_ / kChunkBlocks];
    const size_t at = blocks_ % kChunkBlocks;
    attention::FloatToHalfArray(summaries + i * width, halves.data(), width);
    for (size_t v = 0; v < width; ++v) chunk[v * kChunkBlocks + at] = halves[v];
  }
}

void SummaryTable::AppendChunks(const uint16_t* data, size_t n_chunks) {
  Reserve(n_chunks * kChunkBlocks);
  for (size_t i = 0; i < n_chunks; ++i, blocks_ += kChunkBlocks) {
    std::memcpy(chunks_[blocks_ / kChunkBlocks], data + i * chunk_values(), chunk_bytes());
  }
}

void SummaryTable::AppendMappedChunks(TableMemory memory) {
  assert(blocks_ % kChunkBlocks == 0 && memory.bytes() % chunk_bytes() == 0);
  const size_t n_chunks = memory.bytes() / chunk_bytes();
  const size_t first = static_cast<size_t>(blocks_ / kChunkBlocks);
  auto* data = reinterpret_cast<uint16_t*>(memory.data());
  slabs_.push_back(std::move(memory));
  // Over reserved chunks, if any: their memory is then never touched.
  for (size_t i = 0; i < n_chunks; ++i) {
    if (first + i < chunks_.size()) {
      chunks_[first + i] = data + i * chunk_values();
    } else {
      chunks_.push_back(data + i * chunk_values());
    }
  }
  blocks_ += n_chunks * kChunkBlocks;
}

void SummaryTable::Gather(const uint64_t* blocks, size_t n, uint32_t j, const uint32_t* cols, size_t ncols,
                          float* out) const {
  auto base = [&](uint64_t block) {
    return chunks_[block / kChunkBlocks] + static_cast<size_t>(j) * dim_ * kChunkBlocks + block % kChunkBlocks;
  };
  constexpr size_t kAhead = 4;  // blocks in flight: ~4 x ncols outstanding lines
  for (size_t i = 0; i < std::min(n, kAhead); ++i) {
    for (size_t k = 0; k < ncols; ++k) __builtin_prefetch(base(blocks[i]) + cols[k] * kChunkBlocks);
  }
  std::vector<uint16_t> halves(ncols);
  for (size_t i = 0; i < n; ++i) {
    if (i + kAhead < n) {
      const uint16_t* ahead = base(blocks[i + kAhead]);
      for (size_t k = 0; k < ncols; ++k) __builtin_prefetch(ahead + cols[k] * kChunkBlocks);
    }
    const uint16_t* at = base(blocks[i]);
    for (size_t k = 0; k < ncols; ++k) halves[k] = at[cols[k] * kChunkBlocks];
    attention::HalfToFloatArray(halves.data(), out + i * ncols, ncols);
  }
}

void SummaryTable::Rows(uint64_t first, uint64_t n, float* out) const {
  const size_t width = static_cast<size_t>(per_block_) * dim_;
  for (uint64_t i = 0; i < n; ++i) {
    const uint64_t b = first + i;
    const uint16_t* chunk = chunks_[b / kChunkBlocks];
    const size_t at = b % kChunkBlocks;
    for (size_t v = 0; v < width; ++v) out[i * width + v] = attention::HalfToFloat(chunk[v * kChunkBlocks + at]);
  }
}

}  // namespace msa
