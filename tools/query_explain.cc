#include "tools/query_explain.h"

#include <algorithm>
#include <cstdio>
#include <map>

namespace msa::cli {

namespace {

const char* Why(const ExplainedBlock& e) {
  if (e.all) return "all";  // exact, or a budget that covers every block
  if (e.rank >= 0) return e.sink ? "routed, sink" : e.recent ? "routed, recent" : "routed";
  if (e.sink) return e.recent ? "sink, recent" : "sink";
  return e.document_sink ? (e.recent ? "document sink, recent" : "document sink") : "recent";
}

}  // namespace

// What a routed block's score is: the summary kind, or for hybrid the
// ranking that picked it.
const char* ScoredBy(SummaryKind kind, const ExplainedBlock& e) {
  if (kind == SummaryKind::kHybrid) return e.ranking == 0 ? "bound" : "mean";
  return SummaryName(kind);
}

Result<nlohmann::json> ExplainRouting(const Store& store, uint32_t layer, const float* q, uint32_t n,
                                      uint32_t q_heads, const AttendOptions& options,
                                      const std::vector<std::vector<uint64_t>>& selected) {
  std::vector<std::vector<ExplainedBlock>> explained;
  MSA_RETURN_IF_ERROR(store.ExplainQuery(layer, q, n, q_heads, options, &explained));
  MSA_ASSIGN_OR_RETURN(const std::vector<DocumentRecord> docs, store.ListDocuments());
  std::map<uint64_t, std::string> names;
  for (const DocumentRecord& d : docs) names[d.id] = d.name;
  const uint32_t kv_heads = store.geometry().kv_heads, group = q_heads / kv_heads;
  const SummaryKind kind = store.geometry().summary;
  if (explained.size() != selected.size()) {
    return Status::Internal("explain: " + std::to_string(explained.size()) + " (row, KV head) pairs, the query had " +
                            std::to_string(selected.size()));
  }
  nlohmann::json out = nlohmann::json::array();
  for (size_t r = 0; r < explained.size(); ++r) {
    std::vector<uint64_t> blocks;
    for (const ExplainedBlock& e : explained[r]) blocks.push_back(e.block);
    std::sort(blocks.begin(), blocks.end());
    if (blocks != selected[r]) {
      return Status::Internal("explain: row " + std::to_string(r / kv_heads) + " kv-head " +
                              std::to_string(r % kv_heads) +
                              ": the explained blocks differ from the ones the query read (the store changed?)");
    }
    const uint32_t kv = static_cast<uint32_t>(r % kv_heads);
    nlohmann::json rows = nlohmann::json::array();
    for (const ExplainedBlock& e : explained[r]) {
      auto name = names.find(e.doc_id);
      rows.push_back({{"block", e.block},
                      {"rank", e.rank >= 0 ? nlohmann::json(e.rank + 1) : nlohmann::json(nullptr)},
                      {"score", e.rank >= 0 ? nlohmann::json(e.score) : nlohmann::json(nullptr)},
                      {"scored_by", e.rank >= 0 ? nlohmann::json(ScoredBy(kind, e)) : nlohmann::json(nullptr)},
                      {"why", Why(e)},
                      {"forced", e.sink || e.recent || e.document_sink},
                      {"doc_id", e.doc_id},
                      {"doc", name != names.end() ? nlohmann::json(name->second) : nlohmann::json(nullptr)},
                      {"doc_tokens", {e.first_position, e.first_position + e.tokens}}});
    }
    out.push_back({{"row", r / kv_heads},
                   {"kv_head", kv},
                   {"q_heads", {kv * group, (kv + 1) * group}},
                   {"blocks", std::move(rows)}});
  }
  return out;
}

void PrintExplanation(const nlohmann::json& explained) {
  for (const auto& g : explained) {
    const uint32_t h0 = g["q_heads"][0], h1 = g["q_heads"][1];
    std::printf("row %llu kv-head %u (query heads %u..%u): %zu blocks\n", g["row"].get<unsigned long long>(),
                g["kv_head"].get<uint32_t>(), h0, h1 - 1, g["blocks"].size());
    std::printf("  %5s %10s %10s %-6s  %-14s %-28s %s\n", "rank", "block", "score", "by", "why", "document",
                "tokens");
    for (const auto& b : g["blocks"]) {
      char rank[16] = "-", score[32] = "-";
      std::string by = "-";
      if (!b["rank"].is_null()) {
        by = b["scored_by"].get<std::string>();
        std::snprintf(rank, sizeof(rank), "%d", b["rank"].get<int>());
        std::snprintf(score, sizeof(score), "%.4f", b["score"].get<double>());
      }
      const std::string doc = std::to_string(b["doc_id"].get<uint64_t>()) + " " +
                              (b["doc"].is_null() ? std::string("?") : b["doc"].get<std::string>());
      std::printf("  %5s %10llu %10s %-6s  %-14s %-28s %llu..%llu\n", rank, b["block"].get<unsigned long long>(),
                  score, by.c_str(), b["why"].get<std::string>().c_str(), doc.c_str(), b["doc_tokens"][0].get<unsigned long long>(),
                  b["doc_tokens"][1].get<unsigned long long>() - 1);
    }
  }
}

}  // namespace msa::cli
