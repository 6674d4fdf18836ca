// `msa ingest`: documents into a store.
//
//   --doc NAME --keys K --values V   one document, committed (exit 0 = durable)
//   --dir DIR                        every shard of DIR, in natural name order
//   --stdin --doc-tokens N           raw K/V documents, one after another
//
// Directory shards: NAME_keys.npy with NAME_values.npy, or NAME.safetensors
// holding tensors "keys" and "values"; the document is named NAME. Other
// files (queries.npy, needles.json) are ignored. Order is natural (digit
// runs compare as numbers: doc_2 before doc_10), the order `msa synth`
// numbers its documents in, so needle positions stay right. Documents whose
// names the store already holds are skipped without being read: after an
// interruption, the same command continues where the last commit ended and
// never duplicates a document. Commits are batched (tools/ingest_pipeline.h):
// every --commit-docs documents or --commit-mb MB, and at the end.
//
// Raw stdin: each document is its keys then its values, each
// [layers, kv_heads, T, head_dim] in C order, little-endian --dtype; T is
// --doc-tokens except for the last document, which may be shorter (its
// length says how many tokens). Documents are named PREFIX_00000000, ... in
// stream order; re-feeding the same stream skips those already present.
#include <CLI/CLI.hpp>
#include <dirent.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iterator>
#include <limits>
#include <map>
#include <mutex>
#include <set>

#include "store/store.h"
#include "tools/cli_common.h"
#include "tools/commands.h"
#include "tools/ingest_pipeline.h"
#include "tools/npy_file.h"
#include "tools/safetensors_file.h"

namespace msa::cli {

namespace {

bool EndsWith(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// Natural order: runs of digits compare as numbers ("doc_2" < "doc_10"),
// everything else byte by byte; ties (leading zeros) fall back to bytes.
bool NaturalLess(const std::string& a, const std::string& b) {
  size_t i = 0, j = 0;
  while (i < a.size() && j < b.size()) {
    const bool da = std::isdigit(static_cast<unsigned char>(a[i])) != 0;
    const bool db = std::isdigit(static_cast<unsigned char>(b[j])) != 0;
    if (da && db) {
      size_t i1 = i, j1 = j;
      while (i1 < a.size() && std::isdigit(static_cast<unsigned char>(a[i1]))) ++i1;
      while (j1 < b.size() && std::isdigit(static_cast<unsigned char>(b[j1]))) ++j1;
      size_t i0 = i, j0 = j;  // skip leading zeros
      while (i0 + 1 < i1 && a[i0] == '0') ++i0;
      while (j0 + 1 < j1 && b[j0] == '0') ++j0;
      if (i1 - i0 != j1 - j0) return i1 - i0 < j1 - j0;
      const int c = a.compare(i0, i1 - i0, b, j0, j1 - j0);
      if (c != 0) return c < 0;
      i = i1;
      j = j1;
      continue;
    }
    if (a[i] != b[j]) return static_cast<unsigned char>(a[i]) < static_cast<unsigned char>(b[j]);
    ++i;
    ++j;
  }
  if (i < a.size() || j < b.size()) return j < b.size();
  return a < b;
}

// Loads a K or V tensor and checks it against the geometry.
// storage: a buffer to read an .npy into (see formats::ReadNpy).
Result<formats::Tensor> LoadKv(const std::string& path, const std::string& tensor_name,
                               const Geometry& g, const char* what, std::vector<uint8_t>&& storage = {}) {
  formats::Tensor t;
  if (EndsWith(path, ".safetensors")) {
    MSA_ASSIGN_OR_RETURN(auto file, formats::ReadSafetensors(path));
    MSA_ASSIGN_OR_RETURN(t, file.Take(tensor_name));
  } else {
    MSA_ASSIGN_OR_RETURN(t, formats::ReadNpy(path, std::move(storage)));
  }
  const std::string where = std::string(what) + " " + path;
  if (t.shape.size() != 4) {
    return Status::InvalidArgument(where + ": shape " + formats::ShapeToString(t.shape) +
                                   " is not [layers, kv_heads, tokens, head_dim]");
  }
  if (t.shape[0] != g.layers || t.shape[1] != g.kv_heads || t.shape[3] != g.head_dim) {
    return Status::InvalidArgument(where + ": shape " + formats::ShapeToString(t.shape) +
                                   " does not match the store's [layers=" + std::to_string(g.layers) +
                                   ", kv_heads=" + std::to_string(g.kv_heads) + ", tokens, head_dim=" +
                                   std::to_string(g.head_dim) + "]");
  }
  if (t.shape[2] == 0) return Status::InvalidArgument(where + ": no tokens");
  return t;
}

ElementType ElementTypeOf(formats::DType dtype) {
  return dtype == formats::DType::kFloat16    ? ElementType::kFloat16
         : dtype == formats::DType::kBFloat16 ? ElementType::kBFloat16
                                              : ElementType::kFloat32;
}

// One document's K and V from their files, checked against each other.
struct LoadedKv {
  formats::Tensor keys, values;
};
// kv: where to load (a fresh or a recycled LoadedKv, whose buffers are
// reused for .npy files).
Status LoadDocumentInto(const std::string& keys_path, const std::string& values_path, const Geometry& g,
                        LoadedKv* kv) {
  // Safetensors: one file may hold both, under the names "keys" and "values".
  MSA_ASSIGN_OR_RETURN(kv->keys, LoadKv(keys_path, "keys", g, "keys", std::move(kv->keys.data)));
  MSA_ASSIGN_OR_RETURN(kv->values, LoadKv(values_path.empty() ? keys_path : values_path, "values", g, "values",
                                          std::move(kv->values.data)));
  if (kv->keys.shape != kv->values.shape || kv->keys.dtype != kv->values.dtype) {
    return Status::InvalidArgument("keys " + keys_path + " " + formats::ShapeToString(kv->keys.shape) + " " +
                                   formats::DTypeName(kv->keys.dtype) + " and values " +
                                   (values_path.empty() ? keys_path : values_path) + " " +
                                   formats::ShapeToString(kv->values.shape) + " " +
                                   formats::DTypeName(kv->values.dtype) + " differ");
  }
  return Status::OK();
}
Result<std::shared_ptr<LoadedKv>> LoadDocument(const std::string& keys_path, const std::string& values_path,
                                               const Geometry& g) {
  auto kv = std::make_shared<LoadedKv>();
  MSA_RETURN_IF_ERROR(LoadDocumentInto(keys_path, values_path, g, kv.get()));
  return kv;
}

// What --token-ids, --text and --token-spans give for a document of
// `tokens` tokens, checked against it (each error names its file).
Result<DocumentTokens> LoadTokens(const IngestOptions& o, uint64_t tokens) {
  DocumentTokens t;
  if (!o.token_ids.empty()) {
    MSA_ASSIGN_OR_RETURN(formats::IntegerArray ids, formats::ReadNpyIntegers(o.token_ids));
    if (ids.shape.size() != 1 || static_cast<uint64_t>(ids.shape[0]) != tokens) {
      return Status::InvalidArgument("--token-ids " + o.token_ids + ": shape " + formats::ShapeToString(ids.shape) +
                                     " is not [tokens=" + std::to_string(tokens) + "] (one id per token of the keys)");
    }
    t.ids.reserve(ids.values.size());
    for (size_t i = 0; i < ids.values.size(); ++i) {
      const int64_t v = ids.values[i];
      if (v < std::numeric_limits<int32_t>::min() || v > std::numeric_limits<int32_t>::max()) {
        return Status::InvalidArgument("--token-ids " + o.token_ids + ": id " + std::to_string(v) + " of token " +
                                       std::to_string(i) + " does not fit in int32");
      }
      t.ids.push_back(static_cast<int32_t>(v));
    }
  }
  if (!o.text.empty()) {
    std::ifstream f(o.text, std::ios::binary);
    if (!f) return Status::NotFound("--text " + o.text + ": cannot open the file");
    t.text.assign(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
    if (f.bad()) return Status::IOError("--text " + o.text + ": read failed");
    if (t.text.empty()) return Status::InvalidArgument("--text " + o.text + ": the file is empty");
  }
  if (!o.token_spans.empty()) {
    if (o.text.empty()) return Status::InvalidArgument("--token-spans " + o.token_spans + " needs --text");
    MSA_ASSIGN_OR_RETURN(formats::IntegerArray spans, formats::ReadNpyIntegers(o.token_spans));
    if (spans.shape.size() != 2 || static_cast<uint64_t>(spans.shape[0]) != tokens || spans.shape[1] != 2) {
      return Status::InvalidArgument("--token-spans " + o.token_spans + ": shape " +
                                     formats::ShapeToString(spans.shape) + " is not [tokens=" +
                                     std::to_string(tokens) + ", 2] (byte begin and end of each token in --text)");
    }
    for (size_t i = 0; i < tokens; ++i) {
      const int64_t b = spans.values[2 * i], e = spans.values[2 * i + 1];
      if (b < 0 || e < b || static_cast<uint64_t>(e) > t.text.size()) {
        return Status::InvalidArgument("--token-spans " + o.token_spans + ": token " + std::to_string(i) + " spans [" +
                                       std::to_string(b) + ", " + std::to_string(e) + "), not inside the " +
                                       std::to_string(t.text.size()) + " bytes of " + o.text);
      }
      t.spans.push_back(TokenSpan{static_cast<uint64_t>(b), static_cast<uint64_t>(e)});
    }
  }
  return t;
}

int RunIngestOne(const IngestOptions& o) {
  auto store = Store::Open(o.store);
  if (!store.ok()) return Fail(store.status());
  auto kv = LoadDocument(o.keys, o.values, (*store)->geometry());
  if (!kv.ok()) return Fail(kv.status());
  const formats::Tensor& keys = (*kv)->keys;
  DocumentKV doc{keys.data.data(), (*kv)->values.data.data(), static_cast<uint64_t>(keys.shape[2]),
                 ElementTypeOf(keys.dtype)};
  auto tokens = LoadTokens(o, doc.tokens);
  if (!tokens.ok()) return Fail(tokens.status());
  auto id = (*store)->AppendDocument(o.doc, doc, *tokens);
  if (!id.ok()) return Fail(id.status());
  Status s = (*store)->Commit();
  if (!s.ok()) return Fail(s);
  if (o.json) {
    nlohmann::json j = {{"document", *id},
                        {"name", o.doc},
                        {"tokens", doc.tokens},
                        {"token_ids", !tokens->ids.empty()},
                        {"text_bytes", tokens->text.size()},
                        {"token_spans", !tokens->spans.empty()}};
    std::printf("%s\n", j.dump(2).c_str());
    return kExitOk;
  }
  std::printf("ingested %s: document %llu, %lld tokens%s%s\n", o.doc.c_str(), static_cast<unsigned long long>(*id),
              static_cast<long long>(doc.tokens), tokens->ids.empty() ? "" : ", with token ids",
              tokens->text.empty() ? "" : tokens->spans.empty() ? ", with text" : ", with text and token spans");
  return kExitOk;
}

// A shard of a directory: one document's files.
struct Shard {
  std::string name;
  std::string keys, values;  // values empty: keys is a .safetensors with both
  uint64_t bytes = 0;        // file sizes together
};

// The shards of DIR in natural name order. A _keys.npy without its
// _values.npy (or the reverse), or a name given twice, is an error naming
// the files: nothing is ingested from a directory that does not add up.
Result<std::vector<Shard>> ScanShards(const std::string& dir) {
  DIR* d = ::opendir(dir.c_str());
  if (d == nullptr) {
    const int err = errno;
    if (err == ENOENT) return Status::NotFound(dir + ": no such directory");
    return Status::FromErrno(dir + ": open directory", err);
  }
  struct Files {
    std::string keys_npy, values_npy, safetensors;
    uint64_t bytes = 0;
  };
  std::map<std::string, Files> by_name;
  while (struct dirent* e = ::readdir(d)) {
    const std::string file = e->d_name;
    const std::string path = dir + "/" + file;
    struct stat st;
    if (file[0] == '.' || ::stat(path.c_str(), &st) != 0 || !S_ISREG(st.st_mode)) continue;
    for (const std::string suffix : {"_keys.npy", "_values.npy", ".safetensors"}) {
      if (!EndsWith(file, suffix) || file.size() == suffix.size()) continue;
      Files& f = by_name[file.substr(0, file.size() - suffix.size())];
      (suffix == "_keys.npy" ? f.keys_npy : suffix == "_values.npy" ? f.values_npy : f.safetensors) = path;
      f.bytes += static_cast<uint64_t>(st.st_size);
      break;
    }
  }
  ::closedir(d);
  std::vector<Shard> shards;
  for (const auto& [name, f] : by_name) {
    if (!f.safetensors.empty() && (!f.keys_npy.empty() || !f.values_npy.empty())) {
      return Status::InvalidArgument("document " + name + " is given twice in " + dir + ": " + f.safetensors +
                                     " and " + (f.keys_npy.empty() ? f.values_npy : f.keys_npy));
    }
    if (f.safetensors.empty() && f.values_npy.empty()) {
      return Status::InvalidArgument(f.keys_npy + " has no " + name + "_values.npy beside it");
    }
    if (f.safetensors.empty() && f.keys_npy.empty()) {
      return Status::InvalidArgument(f.values_npy + " has no " + name + "_keys.npy beside it");
    }
    Shard s;
    s.name = name;
    s.keys = f.safetensors.empty() ? f.keys_npy : f.safetensors;
    s.values = f.values_npy;
    s.bytes = f.bytes;
    shards.push_back(std::move(s));
  }
  std::sort(shards.begin(), shards.end(), [](const Shard& a, const Shard& b) { return NaturalLess(a.name, b.name); });
  return shards;
}

IngestPipelineOptions PipelineOptions(const IngestOptions& o) {
  IngestPipelineOptions p;
  p.commit_docs = std::max(1u, o.commit_docs);
  p.commit_bytes = static_cast<uint64_t>(std::max(1.0, o.commit_mb) * 1e6);
  p.progress = ::isatty(STDERR_FILENO) != 0;
  return p;
}

// The closing line (or JSON) of a bulk ingest; the exit code.
int Finish(const Status& s, const IngestReport& r, uint64_t skipped, bool json) {
  if (json) {
    nlohmann::json j = r.ToJson();
    j["skipped"] = skipped;
    j["ok"] = s.ok() && !r.interrupted;
    if (!s.ok()) j["error"] = s.ToString();
    std::printf("%s\n", j.dump(2).c_str());
  } else {
    std::printf("ingested %s, %llu tokens, %.1f MB of K/V in %.2f s (%.1f MB/s in, %.1f MB/s "
                "written, %s); %llu already in the store, skipped\n",
                Count(r.documents, "document").c_str(), (unsigned long long)r.tokens, r.input_bytes / 1e6, r.seconds,
                r.seconds > 0 ? r.input_bytes / 1e6 / r.seconds : 0.0,
                r.seconds > 0 ? r.written_bytes / 1e6 / r.seconds : 0.0, Count(r.commits, "commit").c_str(),
                (unsigned long long)skipped);
  }
  if (!s.ok()) return Fail(s);
  if (r.interrupted) {
    std::fprintf(stderr, "msa: interrupted; the %s ingested %s committed; run the same "
                         "command again to continue\n", Count(r.documents, "document").c_str(),
                 r.documents == 1 ? "is" : "are");
    return kExitInterrupted;
  }
  return kExitOk;
}

Result<std::set<std::string>> ExistingNames(const Store& store) {
  MSA_ASSIGN_OR_RETURN(auto docs, store.ListDocuments());
  std::set<std::string> names;
  for (const auto& doc : docs) names.insert(doc.name);
  return names;
}

int RunIngestDir(const IngestOptions& o) {
  auto shards = ScanShards(o.dir);
  if (!shards.ok()) return Fail(shards.status());
  auto opened = Store::Open(o.store);
  if (!opened.ok()) return Fail(opened.status());
  Store& store = **opened;
  auto existing = ExistingNames(store);
  if (!existing.ok()) return Fail(existing.status());
  std::vector<Shard> pending;
  for (Shard& s : *shards) {
    if (!existing->count(s.name)) pending.push_back(std::move(s));
  }
  const uint64_t skipped = shards->size() - pending.size();
  IngestPipelineOptions p = PipelineOptions(o);
  for (const Shard& s : pending) p.expected_bytes += s.bytes;
  const Geometry g = store.geometry();
  size_t next = 0;
  // Document buffers are recycled (as in synth --into-store): a fresh
  // allocation per shard costs its zeroing and page faults, a fifth of the
  // CPU of an ingest from the page cache.
  std::mutex pool_mu;
  std::vector<std::unique_ptr<LoadedKv>> pool;  // outlives every buffer handed out
  auto get_buffers = [&]() {
    std::unique_ptr<LoadedKv> b;
    {
      std::lock_guard<std::mutex> lock(pool_mu);
      if (!pool.empty()) {
        b = std::move(pool.back());
        pool.pop_back();
      }
    }
    if (!b) b = std::make_unique<LoadedKv>();
    return std::shared_ptr<LoadedKv>(b.release(), [&](LoadedKv* done) {
      std::lock_guard<std::mutex> lock(pool_mu);
      pool.emplace_back(done);
    });
  };
  IngestProducer producer = [&]() -> Result<std::optional<IngestItem>> {
    if (next == pending.size()) return std::optional<IngestItem>();
    const Shard& s = pending[next++];
    auto kv = get_buffers();
    MSA_RETURN_IF_ERROR(LoadDocumentInto(s.keys, s.values, g, kv.get()));
    IngestItem item;
    item.name = s.name;
    item.source = s.keys;
    item.kv = DocumentKV{kv->keys.data.data(), kv->values.data.data(),
                         static_cast<uint64_t>(kv->keys.shape[2]), ElementTypeOf(kv->keys.dtype)};
    item.input_bytes = kv->keys.data.size() + kv->values.data.size();
    item.storage = kv;
    return std::optional<IngestItem>(std::move(item));
  };
  IngestReport report;
  Status s = RunIngestPipeline(store, producer, p, &report);
  return Finish(s, report, skipped, o.json);
}

// Reads up to n bytes of stdin; returns how many (less only at EOF).
Result<size_t> ReadStdin(uint8_t* out, size_t n) {
  size_t done = 0;
  while (done < n) {
    const ssize_t got = ::read(STDIN_FILENO, out + done, n - done);
    if (got < 0) {
      if (errno == EINTR) continue;
      return Status::FromErrno("stdin: read", errno);
    }
    if (got == 0) break;
    done += static_cast<size_t>(got);
  }
  return done;
}

int RunIngestStdin(const IngestOptions& o) {
  if (o.doc_tokens == 0) return Fail(Status::InvalidArgument("--stdin needs --doc-tokens N (N >= 1)"));
  ElementType dtype;
  size_t element = 2;
  if (o.dtype == "f16") {
    dtype = ElementType::kFloat16;
  } else if (o.dtype == "bf16") {
    dtype = ElementType::kBFloat16;
  } else if (o.dtype == "f32") {
    dtype = ElementType::kFloat32;
    element = 4;
  } else {
    return Fail(Status::InvalidArgument("--dtype must be f16, bf16 or f32, not '" + o.dtype + "'"));
  }
  auto opened = Store::Open(o.store);
  if (!opened.ok()) return Fail(opened.status());
  Store& store = **opened;
  auto existing = ExistingNames(store);
  if (!existing.ok()) return Fail(existing.status());
  const Geometry g = store.geometry();
  const size_t token_bytes = static_cast<size_t>(g.streams()) * g.head_dim * element;  // K or V, one token
  const size_t doc_bytes = 2 * token_bytes * o.doc_tokens;
  uint64_t index = 0, skipped = 0, offset = 0;
  bool ended = false;
  IngestProducer producer = [&]() -> Result<std::optional<IngestItem>> {
    for (;;) {
      if (ended) return std::optional<IngestItem>();
      auto buffer = std::make_shared<std::vector<uint8_t>>(doc_bytes);
      MSA_ASSIGN_OR_RETURN(const size_t got, ReadStdin(buffer->data(), doc_bytes));
      if (got == 0) return std::optional<IngestItem>();
      uint64_t tokens = o.doc_tokens;
      if (got < doc_bytes) {  // the last document: whole tokens of K then V
        ended = true;
        if (got % (2 * token_bytes) != 0) {
          return Status::InvalidArgument(
              "stdin: the stream ends " + std::to_string(got) + " bytes into document " + std::to_string(index) +
              " (byte " + std::to_string(offset + got) + "), which is not a whole number of tokens of K and V (" +
              std::to_string(2 * token_bytes) + " bytes each)");
        }
        tokens = got / (2 * token_bytes);
      }
      char suffix[32];
      std::snprintf(suffix, sizeof(suffix), "_%08llu", static_cast<unsigned long long>(index));
      IngestItem item;
      item.name = o.prefix + suffix;
      item.source = "stdin document " + std::to_string(index) + " at byte " + std::to_string(offset);
      index++;
      offset += got;
      if (existing->count(item.name)) {
        skipped++;
        continue;
      }
      item.kv = DocumentKV{buffer->data(), buffer->data() + tokens * token_bytes, tokens, dtype};
      item.input_bytes = got;
      item.storage = buffer;
      return std::optional<IngestItem>(std::move(item));
    }
  };
  IngestReport report;
  Status s = RunIngestPipeline(store, producer, PipelineOptions(o), &report);
  return Finish(s, report, skipped, o.json);
}

}  // namespace

void AddIngestOptions(CLI::App* app, IngestOptions& o) {
  app->footer(
      "One document: --doc NAME --keys K.npy --values V.npy, or --keys KV.safetensors (tensors\n"
      "'keys' and 'values'); K and V [layers, kv_heads, tokens, head_dim], float16 or float32\n"
      "(.safetensors: also bfloat16).\n"
      "A directory: --dir DIR ingests every NAME_keys.npy + NAME_values.npy pair and every\n"
      "NAME.safetensors as document NAME, in natural name order (doc_2 before doc_10), skipping\n"
      "names the store already holds: after an interruption, run the same command again.\n"
      "A stream: --stdin --doc-tokens N reads documents of N tokens (the last may be shorter),\n"
      "each its keys then its values, [layers, kv_heads, N, head_dim] raw --dtype, named\n"
      "PREFIX_00000000, ... Commits every --commit-docs documents or --commit-mb MB; progress\n"
      "on stderr when it is a terminal; SIGINT commits what was ingested, then stops.\n"
      "With --doc, --token-ids ids.npy (int32/int64 [tokens]) and --text FILE with --token-spans\n"
      "spans.npy ([tokens, 2] byte begin/end in FILE) are kept for `msa inspect` to show.\n"
      "Examples: msa ingest /data/mem --doc chapter1 --keys k.npy --values v.npy\n"
      "          msa ingest /data/mem --doc chapter1 --keys k.npy --values v.npy --token-ids ids.npy\n"
      "          msa ingest /data/mem --dir /data/shards --json");
  app->add_option("STORE", o.store, "store directory")->required();
  app->add_option("--doc", o.doc, "document name (unique), with --keys");
  app->add_option("--keys", o.keys, "keys .npy (or .safetensors with 'keys' and 'values': F16, BF16 or F32)");
  app->add_option("--values", o.values, "values .npy (omit with a .safetensors --keys)");
  app->add_option("--dir", o.dir, "ingest every shard of this directory");
  app->add_flag("--stdin", o.from_stdin, "ingest raw documents from stdin");
  app->add_option("--doc-tokens", o.doc_tokens, "--stdin: tokens per document");
  app->add_option("--dtype", o.dtype, "--stdin: f16, bf16 or f32")->capture_default_str();
  app->add_option("--prefix", o.prefix, "--stdin: document name prefix")->capture_default_str();
  app->add_option("--commit-docs", o.commit_docs, "commit every N documents (--dir, --stdin)")
      ->capture_default_str();
  app->add_option("--commit-mb", o.commit_mb, "... or every M MB of K/V (--dir, --stdin)")->capture_default_str();
  app->add_flag("--json", o.json, "the ingest report as JSON");
  app->add_option("--token-ids", o.token_ids, "--doc: the tokens' ids, .npy int32/int64 [tokens]");
  app->add_option("--text", o.text, "--doc: the document's text, a file");
  app->add_option("--token-spans", o.token_spans, "--doc: .npy [tokens, 2], byte [begin, end) of each token in --text");
}

int RunIngest(const IngestOptions& o) {
  const int modes = !o.doc.empty() + !o.dir.empty() + o.from_stdin;
  if (modes != 1) {
    std::fprintf(stderr, "msa: ingest takes one of --doc NAME (with --keys), --dir DIR or --stdin\n");
    return kExitUsage;
  }
  if (!o.doc.empty()) {
    if (o.keys.empty()) {
      std::fprintf(stderr, "msa: ingest --doc needs --keys\n");
      return kExitUsage;
    }
    return RunIngestOne(o);
  }
  if (!o.keys.empty() || !o.values.empty()) {
    std::fprintf(stderr, "msa: --keys and --values go with --doc\n");
    return kExitUsage;
  }
  if (!o.token_ids.empty() || !o.text.empty() || !o.token_spans.empty()) {
    std::fprintf(stderr, "msa: --token-ids, --text and --token-spans go with --doc\n");
    return kExitUsage;
  }
  return o.from_stdin ? RunIngestStdin(o) : RunIngestDir(o);
}

}  // namespace msa::cli
