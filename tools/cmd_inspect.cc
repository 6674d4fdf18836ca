// `msa inspect`: one block of one stream, as the store holds it -- the
// catalog's location, the record header read back from its segment file
// (decoded and checksummed), the document it belongs to and the token
// positions it covers, and the token ids / text when the document was
// ingested with them (`msa ingest --doc ... --token-ids/--text`).
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <cinttypes>
#include <cstdio>
#include <optional>

#include "io/aligned_buffer.h"
#include "store/store.h"
#include "tools/cli_common.h"
#include "tools/commands.h"
#include "tools/find_document.h"

namespace msa::cli {

namespace {

// The block's slice of the document's tokens: ids and, with spans, the
// text from the first token's begin to the last one's end.
struct BlockTokens {
  std::vector<int32_t> ids;
  std::optional<std::string> text;
};
BlockTokens SliceTokens(const BlockInspection& r) {
  BlockTokens out;
  if (!r.tokens) return out;
  const uint64_t begin = r.location.first_position, end = begin + r.location.tokens;
  const DocumentTokens& t = *r.tokens;
  if (end <= t.ids.size()) out.ids.assign(t.ids.begin() + begin, t.ids.begin() + end);
  if (end <= t.spans.size() && begin < end) {
    uint64_t lo = t.spans[begin].begin, hi = t.spans[begin].end;
    for (uint64_t i = begin; i < end; ++i) {
      lo = std::min(lo, t.spans[i].begin);
      hi = std::max(hi, t.spans[i].end);
    }
    out.text = t.text.substr(lo, hi - lo);
  }
  return out;
}

nlohmann::json InspectionJson(const std::string& path, const Geometry& g, const BlockInspection& r) {
  const BlockLocation& loc = r.location;
  nlohmann::json j = {{"store", path},
                      {"layer", r.id.layer},
                      {"kv_head", r.id.kv_head},
                      {"block", r.id.block},
                      {"summary", SummaryName(g.summary)},
                      {"tokens", loc.tokens},
                      {"checksum", ChecksumHex(loc.checksum)},
                      {"codec", CodecName(loc.codec)},
                      {"raw_bytes", r.raw_bytes},
                      {"stored_bytes", loc.record_bytes},
                      {"segment", loc.segment},
                      {"segment_file", r.segment_path},
                      {"offset", loc.offset},
                      {"padded_bytes", loc.segment ? io::AlignUp(loc.record_bytes) : 0}};
  if (r.record_read) {
    j["record"] = {{"format_version", r.record_version},
                   {"codec", CodecName(r.header.codec)},
                   {"layer", r.header.id.layer},
                   {"kv_head", r.header.id.kv_head},
                   {"block", r.header.id.block},
                   {"tokens", r.header.tokens},
                   {"head_dim", r.header.head_dim},
                   {"header_bytes", kBlockRecordHeaderSize},
                   {"payload_bytes", r.header.payload_bytes},
                   {"checksum", ChecksumHex(r.header.checksum)}};
  } else {
    j["record"] = nullptr;
  }
  // null: no record to check (its deleted document's records were compacted away).
  j["record_ok"] = loc.segment == 0 ? nlohmann::json(nullptr) : nlohmann::json(r.record_read && r.record_error.empty());
  if (!r.record_error.empty()) j["record_error"] = r.record_error;
  j["document"] = {{"id", r.document.id},
                   {"name", r.document.name},
                   {"tokens", r.document.tokens},
                   {"first_block", r.document.first_block},
                   {"blocks", r.document.blocks},
                   {"deleted", r.document_deleted}};
  j["block_in_doc"] = r.id.block - r.document.first_block;
  j["doc_positions"] = {loc.first_position, loc.first_position + loc.tokens};
  j["stream_positions"] = r.stream_position >= 0
                              ? nlohmann::json::array({r.stream_position, r.stream_position + loc.tokens})
                              : nlohmann::json(nullptr);
  const BlockTokens bt = SliceTokens(r);
  j["token_ids"] = bt.ids.empty() ? nlohmann::json(nullptr) : nlohmann::json(bt.ids);
  // Text of arbitrary bytes: nlohmann refuses invalid UTF-8 at dump, so
  // the caller dumps with replacement (see RunInspect).
  j["text"] = bt.text ? nlohmann::json(*bt.text) : nlohmann::json(nullptr);
  j["document_text_bytes"] = r.tokens ? r.tokens->text.size() : 0;
  return j;
}

void PrintInspection(const std::string& path, const Geometry& g, const BlockInspection& r) {
  const BlockLocation& loc = r.location;
  std::printf("block         %s of %s\n", DescribeBlock(r.id).c_str(), path.c_str());
  if (loc.segment == 0) {
    std::printf("record        none: its document was deleted and `msa compact` removed the record\n");
  } else {
    std::printf("record        %s offset %llu, %u bytes (%llu on disk, padded to 4 KiB)\n", r.segment_path.c_str(),
                (unsigned long long)loc.offset, loc.record_bytes, (unsigned long long)io::AlignUp(loc.record_bytes));
  }
  if (r.record_read) {
    std::printf("header        format version %u, codec %s, %s, %u tokens x head dim %u, header %zu + payload "
                "%u bytes, checksum %s\n",
                r.record_version, CodecName(r.header.codec), DescribeBlock(r.header.id).c_str(), r.header.tokens,
                r.header.head_dim, kBlockRecordHeaderSize, r.header.payload_bytes, ChecksumHex(r.header.checksum).c_str());
  }
  if (loc.segment != 0) {
    std::printf("check         %s\n", r.record_error.empty() ? "ok (identity, shape and checksum match the catalog; decodes)"
                                                              : r.record_error.c_str());
  }
  std::printf("size          raw fp16 %llu bytes, stored %u bytes (%.2fx)\n", (unsigned long long)r.raw_bytes,
              loc.record_bytes, loc.record_bytes ? static_cast<double>(r.raw_bytes) / loc.record_bytes : 0.0);
  std::printf("document      %llu '%s'%s, %llu tokens in blocks %llu..%llu; this is its block %llu\n",
              (unsigned long long)r.document.id, r.document.name.c_str(), r.document_deleted ? " (deleted)" : "",
              (unsigned long long)r.document.tokens, (unsigned long long)r.document.first_block,
              (unsigned long long)(r.document.first_block + r.document.blocks - 1),
              (unsigned long long)(r.id.block - r.document.first_block));
  std::printf("positions     tokens %llu..%llu of the document", (unsigned long long)loc.first_position,
              (unsigned long long)(loc.first_position + loc.tokens - 1));
  if (r.stream_position >= 0) {
    std::printf(", %lld..%lld of the stream (live documents in order)\n", (long long)r.stream_position,
                (long long)(r.stream_position + loc.tokens - 1));
  } else {
    std::printf("\n");
  }
  std::printf("summary       %s (what the router scores this block by)\n", SummaryName(g.summary));
  const BlockTokens bt = SliceTokens(r);
  if (!r.tokens) {
    std::printf("token ids     not stored (ingest --doc ... --token-ids ids.npy keeps them)\n");
    return;
  }
  if (bt.ids.empty()) {
    std::printf("token ids     not stored\n");
  } else {
    std::printf("token ids    ");
    for (int32_t id : bt.ids) std::printf(" %d", id);
    std::printf("\n");
  }
  if (bt.text) {
    std::printf("text          %s\n", nlohmann::json(*bt.text).dump(-1, ' ', false,
                                                                     nlohmann::json::error_handler_t::replace).c_str());
  } else if (!r.tokens->text.empty()) {
    std::printf("text          %zu bytes stored for the document, without token spans (--token-spans)\n",
                r.tokens->text.size());
  }
}

}  // namespace

void AddInspectOptions(CLI::App* app, InspectOptions& o) {
  app->add_option("STORE", o.store, "store directory")->required();
  app->add_option("--layer", o.layer, "layer of the stream")->capture_default_str();
  app->add_option("--kv-head", o.kv_head, "KV head of the stream")->capture_default_str();
  auto* block = app->add_option("--block", o.block, "block number in the stream");
  auto* doc = app->add_option("--doc", o.doc, "document id or name (with --block-in-doc)");
  app->add_option("--block-in-doc", o.block_in_doc, "block index within --doc (0: its first)")->needs(doc);
  block->excludes(doc);
  app->add_flag("--json", o.json, "JSON output");
  app->footer(
      "Shows one block: its record header (format version, codec, tokens, checksum, sizes raw and\n"
      "stored), segment file and offset, its document and the token positions it covers, the\n"
      "router's summary kind, and the token ids / text if the document was ingested with them.\n"
      "The record is read from disk and checked; a bad record is shown, and the exit code is 5.\n"
      "Examples: msa inspect /data/mem --layer 0 --kv-head 1 --block 42\n"
      "          msa inspect /data/mem --doc chapter1 --block-in-doc 0 --json");
}

int RunInspect(const InspectOptions& o) {
  if ((o.block >= 0) == !o.doc.empty()) {
    std::fprintf(stderr, "msa: inspect takes --block N, or --doc NAME|ID with --block-in-doc N\n");
    return kExitUsage;
  }
  if (!o.doc.empty() && o.block_in_doc < 0) {
    std::fprintf(stderr, "msa: inspect --doc needs --block-in-doc N\n");
    return kExitUsage;
  }
  StoreOptions so;
  so.read_only = true;
  auto store = Store::Open(o.store, so);
  if (!store.ok()) return Fail(store.status());
  BlockId id{o.layer, o.kv_head, static_cast<uint64_t>(o.block)};
  if (!o.doc.empty()) {
    auto docs = (*store)->ListDocuments();
    if (!docs.ok()) return Fail(docs.status());
    auto d = FindDocument(*docs, o.doc);
    if (!d) return Fail(Status::NotFound("no document '" + o.doc + "' in " + o.store));
    if (static_cast<uint64_t>(o.block_in_doc) >= d->blocks) {
      return Fail(Status::NotFound("document '" + d->name + "' has " + std::to_string(d->blocks) +
                                   " blocks; --block-in-doc " + std::to_string(o.block_in_doc) + " is past its end"));
    }
    id.block = d->first_block + static_cast<uint64_t>(o.block_in_doc);
  }
  auto r = (*store)->InspectBlock(id);
  if (!r.ok()) return Fail(r.status());
  const Geometry& g = (*store)->geometry();
  if (o.json) {
    std::printf("%s\n", InspectionJson(o.store, g, *r).dump(2, ' ', false, nlohmann::json::error_handler_t::replace).c_str());
  } else {
    PrintInspection(o.store, g, *r);
  }
  // A record that does not read back as the catalog says is what verify
  // reports as a problem: the same exit code.
  return r->location.segment != 0 && !r->record_error.empty() ? kExitIoError : kExitOk;
}

}  // namespace msa::cli
