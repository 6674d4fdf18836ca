// Store introspection: what one block is (InspectBlock), which blocks a
// query would read and why (ExplainQuery), and the token ids / text a
// document was ingested with (ReadDocumentTokens). Nothing here changes the
// store; `msa inspect` and `msa query --explain` print what it returns.
#include <algorithm>
#include <cstring>

#include "io/aligned_buffer.h"
#include "store/store.h"

namespace msa {

Result<std::optional<DocumentTokens>> Store::ReadDocumentTokens(uint64_t id) const {
  {
    std::shared_lock<std::shared_mutex> state(state_mu_);
    if (!doc_blocks_.count(id)) {
      return Status::NotFound("document id " + std::to_string(id) + " is not a live document of " + path_);
    }
  }
  // Written in the document's own commit, so a visible document's record
  // is complete (or absent: ingested without tokens).
  return catalog_->ReadDocumentTokens(id);
}

Result<BlockInspection> Store::InspectBlock(const BlockId& id) const {
  const Geometry& g = geometry_;
  if (id.layer >= g.layers || id.kv_head >= g.kv_heads) {
    return Status::InvalidArgument("layer " + std::to_string(id.layer) + " kv-head " + std::to_string(id.kv_head) +
                                   " is out of range (store " + path_ + " has " + std::to_string(g.layers) +
                                   " layers of " + std::to_string(g.kv_heads) + " KV heads)");
  }
  // The documents first: ListDocuments takes state_mu_, which must not be
  // waited for while io_mu_ is held (compaction takes them in that order).
  MSA_ASSIGN_OR_RETURN(const std::vector<DocumentRecord> docs, ListDocuments());
  BlockInspection r;
  r.id = id;
  std::shared_lock<std::shared_mutex> state(state_mu_);
  // Held until the record is read: compaction removes a segment file only
  // once no reader can still be in it.
  std::shared_lock<std::shared_mutex> io(io_mu_);
  const auto& dir = directory_[g.StreamOf(id.layer, id.kv_head)];
  const uint64_t blocks = std::min<uint64_t>(committed_.blocks_per_stream, dir.size());
  if (id.block >= blocks) {
    return Status::NotFound(DescribeBlock(id) + " is not in store " + path_ + ", which holds " +
                            std::to_string(blocks) + " blocks per stream");
  }
  r.location = dir[id.block];
  state.unlock();
  r.raw_bytes = 2ull * r.location.tokens * g.head_dim * 2;

  if (r.location.segment != 0) {
    r.segment_path = SegmentFilePath(r.location.segment);
    const uint32_t padded = static_cast<uint32_t>(io::AlignUp(r.location.record_bytes));
    io::AlignedBuffer buffer(padded);
    auto fd = SegmentFd(r.location.segment);
    Status read = fd.status();
    if (read.ok()) {
      io::ReadRequest request{*fd, r.location.offset, padded, buffer.data()};
      read = reader_->ReadAll({&request, 1});
      if (!read.ok() && reader_->abandoned()) buffer.Leak();  // the kernel may still write into it
    }
    if (!read.ok()) {
      r.record_error = read.ToString();
    } else {
      const std::span<const uint8_t> record(buffer.data(), r.location.record_bytes);
      Status parsed = ParseBlockRecordHeader(record, &r.header);
      if (parsed.ok()) {
        r.record_read = true;
        std::memcpy(&r.record_version, buffer.data() + 4, sizeof(r.record_version));
        // A full decode checks what a query would: identity, shape, checksum.
        BlockDecoder decoder;
        std::vector<float> k(static_cast<size_t>(g.block_tokens) * g.head_dim), v(k.size());
        parsed = decoder.Decode(record, id, r.location.checksum, r.location.tokens, g.head_dim, k.data(), v.data());
      }
      if (!parsed.ok()) r.record_error = parsed.ToString();
    }
  }
  io.unlock();

  // Its document, live or deleted, and where its tokens are.
  const uint64_t doc_id = r.location.doc_id;
  const DocumentRecord* live = nullptr;
  int64_t before = 0;  // tokens of the live documents ahead of it in the stream
  for (const DocumentRecord& d : docs) {
    if (d.id == doc_id) live = &d;
  }
  if (live != nullptr) {
    r.document = *live;
    for (const DocumentRecord& d : docs) {
      if (d.first_block < live->first_block) before += static_cast<int64_t>(d.tokens);
    }
    r.stream_position = before + static_cast<int64_t>(r.location.first_position);
    MSA_ASSIGN_OR_RETURN(r.tokens, catalog_->ReadDocumentTokens(doc_id));
  } else {
    MSA_ASSIGN_OR_RETURN(const std::vector<DocumentRecord> deleted, catalog_->ListDeletedDocuments());
    bool found = false;
    for (const DocumentRecord& d : deleted) {
      if (d.id == doc_id) {
        r.document = d;
        found = true;
      }
    }
    if (!found) {
      return Status::Corruption(DescribeBlock(id) + " of store " + path_ + " says it belongs to document " +
                                std::to_string(doc_id) + ", which the catalog does not hold");
    }
    r.document_deleted = true;
  }
  return r;
}

Status Store::ExplainQuery(uint32_t layer, const float* q, uint32_t n, uint32_t q_heads,
                           const AttendOptions& options,
                           std::vector<std::vector<ExplainedBlock>>* explained) const {
  MSA_RETURN_IF_ERROR(CheckQuery(layer, q, n, q_heads));
  if (explained == nullptr) return Status::InvalidArgument("explained is null");
  explained->clear();
  if (n == 0) return Status::OK();
  AttendStats st;
  MSA_ASSIGN_OR_RETURN(QueryPlan plan, PlanQuery(layer, q, n, q_heads, options, &st, /*keep_scores=*/true));
  const uint32_t kv_heads = geometry_.kv_heads;
  explained->resize(plan.chosen.size());
  for (size_t r = 0; r < plan.chosen.size(); ++r) {
    const uint32_t kv = static_cast<uint32_t>(r % kv_heads);
    const std::vector<uint64_t>& chosen = plan.chosen[r];
    std::vector<ExplainedBlock>& out = (*explained)[r];
    auto entry = [&](uint64_t block) {
      ExplainedBlock e;
      e.block = block;
      // Every chosen block is in the plan's fetch list, with its location.
      const auto& slots = plan.slot_of[kv];  // (block, slot), ascending
      const auto it = std::lower_bound(slots.begin(), slots.end(), std::make_pair(block, INT32_MIN));
      const BlockLocation& loc = plan.locs[static_cast<size_t>(it->second)];
      e.doc_id = loc.doc_id;
      e.first_position = loc.first_position;
      e.tokens = loc.tokens;
      if (!plan.all) {
        e.sink = block == plan.sink;
        e.recent = block == plan.recent;
        e.document_sink = std::binary_search(plan.document_sinks.begin(), plan.document_sinks.end(), block);
      }
      return e;
    };
    if (plan.all) {
      for (uint64_t b : chosen) {
        ExplainedBlock e = entry(b);
        e.all = true;
        out.push_back(e);
      }
      continue;
    }
    if (chosen.empty()) continue;  // nothing to attend over
    for (size_t rank = 0; rank < plan.routed[r].size(); ++rank) {
      ExplainedBlock e = entry(plan.routed[r][rank].block);
      e.rank = static_cast<int32_t>(rank);
      e.score = plan.routed[r][rank].score;
      e.ranking = plan.routed[r][rank].ranking;
      out.push_back(e);
    }
    std::vector<uint64_t> forced_blocks = {plan.sink, plan.recent};
    forced_blocks.insert(forced_blocks.end(), plan.document_sinks.begin(), plan.document_sinks.end());
    for (uint64_t forced : forced_blocks) {
      const bool listed = std::any_of(out.begin(), out.end(), [&](const ExplainedBlock& e) { return e.block == forced; });
      if (!listed) out.push_back(entry(forced));
    }
  }
  return Status::OK();
}

}  // namespace msa
