// `msa docs list|show|delete` and `msa compact`: a store's documents, and
// getting the space of deleted ones back.
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <cstdio>
#include <optional>

#include "store/store.h"
#include "tools/cli_common.h"
#include "tools/commands.h"
#include "tools/find_document.h"
#include "tools/progress_line.h"

namespace msa::cli {

namespace {

nlohmann::json DocJson(const DocumentRecord& d) {
  return {{"id", d.id}, {"name", d.name}, {"tokens", d.tokens}, {"first_block", d.first_block},
          {"blocks", d.blocks}};
}

int RunList(const DocsOptions& o) {
  StoreOptions so;
  so.read_only = true;
  auto store = Store::Open(o.store, so);
  if (!store.ok()) return Fail(store.status());
  auto docs = o.deleted ? (*store)->ListDeletedDocuments() : (*store)->ListDocuments();
  if (!docs.ok()) return Fail(docs.status());
  if (o.json) {
    nlohmann::json j = nlohmann::json::array();
    for (const auto& d : *docs) j.push_back(DocJson(d));
    std::printf("%s\n", j.dump(2).c_str());
    return kExitOk;
  }
  std::printf("%10s %12s %12s %8s  %s\n", "id", "tokens", "first block", "blocks", "name");
  for (const auto& d : *docs) {
    std::printf("%10llu %12llu %12llu %8llu  %s\n", (unsigned long long)d.id, (unsigned long long)d.tokens,
                (unsigned long long)d.first_block, (unsigned long long)d.blocks, d.name.c_str());
  }
  std::printf("%s\n", Count(docs->size(), o.deleted ? "deleted document" : "document").c_str());
  return kExitOk;
}

int RunShow(const DocsOptions& o) {
  StoreOptions so;
  so.read_only = true;
  auto store = Store::Open(o.store, so);
  if (!store.ok()) return Fail(store.status());
  auto docs = (*store)->ListDocuments();
  if (!docs.ok()) return Fail(docs.status());
  nlohmann::json out = nlohmann::json::array();
  for (const std::string& key : o.targets) {
    auto d = FindDocument(*docs, key);
    if (!d) return Fail(Status::NotFound("no document '" + key + "' in " + o.store));
    const uint64_t bt = (*store)->geometry().block_tokens;
    if (o.json) {
      out.push_back(DocJson(*d));
      continue;
    }
    std::printf("id           %llu\nname         %s\ntokens       %llu\nblocks       %llu .. %llu "
                "(of %llu tokens each, in every stream)\n",
                (unsigned long long)d->id, d->name.c_str(), (unsigned long long)d->tokens,
                (unsigned long long)d->first_block, (unsigned long long)(d->first_block + d->blocks - 1),
                (unsigned long long)bt);
  }
  if (o.json) std::printf("%s\n", out.dump(2).c_str());
  return kExitOk;
}

int RunDelete(const DocsOptions& o) {
  auto store = Store::Open(o.store);
  if (!store.ok()) return Fail(store.status());
  auto docs = (*store)->ListDocuments();
  if (!docs.ok()) return Fail(docs.status());
  // Every name is resolved before anything is staged: all or nothing.
  std::vector<DocumentRecord> victims;
  for (const std::string& key : o.targets) {
    auto d = FindDocument(*docs, key);
    if (!d) return Fail(Status::NotFound("no document '" + key + "' in " + o.store + "; nothing deleted"));
    victims.push_back(*d);
  }
  uint64_t tokens = 0;
  for (const DocumentRecord& d : victims) {
    Status s = (*store)->DeleteDocument(d.id);
    if (!s.ok()) return Fail(s);
    tokens += d.tokens;
  }
  Status s = (*store)->Commit();
  if (!s.ok()) return Fail(s);
  if (o.json) {
    nlohmann::json j = {{"deleted", victims.size()}, {"tokens", tokens}};
    std::printf("%s\n", j.dump(2).c_str());
  } else {
    std::printf("deleted %s (%llu tokens per stream); `msa compact %s` reclaims %s space\n",
                Count(victims.size(), "document").c_str(), (unsigned long long)tokens, o.store.c_str(),
                victims.size() == 1 ? "its" : "their");
  }
  return kExitOk;
}

}  // namespace

void AddDocsCommands(CLI::App* docs, DocsOptions& o) {
  docs->require_subcommand(1);
  docs->footer(
      "Examples: msa docs list /data/mem --json\n"
      "          msa docs show /data/mem 17 manual.txt\n"
      "          msa docs delete /data/mem old.txt && msa compact /data/mem");
  auto* list = docs->add_subcommand("list", "List the documents (id, tokens, blocks, name)");
  list->add_option("STORE", o.store, "store directory")->required();
  list->add_flag("--deleted", o.deleted, "list deleted documents instead");
  list->add_flag("--json", o.json, "JSON output");
  list->footer("Example: msa docs list /data/mem --json");
  auto* show = docs->add_subcommand("show", "Show documents, by id or name");
  show->add_option("STORE", o.store, "store directory")->required();
  show->add_option("DOC", o.targets, "document ids or names")->required();
  show->add_flag("--json", o.json, "JSON output");
  show->footer("Example: msa docs show /data/mem 17 manual.txt");
  auto* del = docs->add_subcommand("delete", "Delete documents, by id or name, in one commit");
  del->add_option("STORE", o.store, "store directory")->required();
  del->add_option("DOC", o.targets, "document ids or names")->required();
  del->add_flag("--json", o.json, "JSON output");
  del->footer(
      "All named documents are deleted in one commit, or none (exit 4 when one is not found).\n"
      "Their disk space comes back with `msa compact`. Example: msa docs delete /data/mem 17 old.txt");
  list->callback([&o] { o.action = "list"; });
  show->callback([&o] { o.action = "show"; });
  del->callback([&o] { o.action = "delete"; });
}

int RunDocs(const DocsOptions& o) {
  if (o.action == "list") return RunList(o);
  if (o.action == "show") return RunShow(o);
  if (o.action == "delete") return RunDelete(o);
  return kExitUsage;
}

void AddCompactOptions(CLI::App* compact, CompactOptions& o) {
  compact->add_option("STORE", o.store, "store directory")->required();
  compact->add_flag("--json", o.json, "JSON output");
  compact->footer(
      "Rewrites every segment that holds a deleted document's record (the live records are\n"
      "copied unchanged) and removes it, in one commit. Example: msa compact /data/mem");
}

int RunCompact(const CompactOptions& o) {
  auto store = Store::Open(o.store);
  if (!store.ok()) return Fail(store.status());
  CompactStats cs;
  ProgressLine progress("compact", "blocks scanned", "moved");
  Status s = (*store)->Compact(&cs, [&](uint64_t done, uint64_t total, uint64_t bytes) {
    progress.Update(done, total, bytes);
  });
  progress.Finish();
  if (!s.ok()) return Fail(s);
  if (o.json) {
    nlohmann::json j = {{"segments_removed", cs.segments_removed}, {"bytes_reclaimed", cs.bytes_reclaimed},
                        {"blocks_moved", cs.blocks_moved},         {"bytes_moved", cs.bytes_moved},
                        {"blocks_dropped", cs.blocks_dropped}};
    std::printf("%s\n", j.dump(2).c_str());
  } else {
    std::printf("%s: %llu segments removed, %llu bytes reclaimed; %llu live blocks moved (%llu bytes), "
                "%llu deleted blocks dropped\n",
                o.store.c_str(), (unsigned long long)cs.segments_removed,
                (unsigned long long)cs.bytes_reclaimed, (unsigned long long)cs.blocks_moved,
                (unsigned long long)cs.bytes_moved, (unsigned long long)cs.blocks_dropped);
  }
  return kExitOk;
}

}  // namespace msa::cli
