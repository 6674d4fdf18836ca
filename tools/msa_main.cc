// msa: the command-line tool. Subcommands:
//   create  make a store with a fixed geometry
//   ingest  append documents' K/V (.npy, safetensors, a directory, stdin); exit 0 = durable
//   query   attend queries over one layer's memory
//   stats   what a store holds
//   synth   write a synthetic corpus with planted needles (for the demo)
//   eval    sparse vs dense on a store: recall, error, latency side by side
//   verify, docs, compact, inspect: checking, listing, deleting, looking inside
#include <CLI/CLI.hpp>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include <cmath>
#include <cstdio>
#include <nlohmann/json.hpp>

#include "store/log_level.h"
#include "store/store.h"
#include "tools/cli_common.h"
#include "tools/commands.h"
#include "tools/npy_file.h"
#include "tools/progress_line.h"
#include "tools/query_explain.h"
#include "tools/safetensors_file.h"

namespace msa::cli {
namespace {

int RunCreate(const std::string& path, const Geometry& g, bool json) {
  auto store = Store::Create(path, g);
  if (!store.ok()) return Fail(store.status());
  if (json) {
    nlohmann::json j = {{"store", path},          {"layers", g.layers},
                        {"kv_heads", g.kv_heads}, {"head_dim", g.head_dim},
                        {"block_tokens", g.block_tokens}, {"codec", CodecName(g.codec)},
                        {"summary", SummaryName(g.summary)}};
    std::printf("%s\n", j.dump(2).c_str());
    return kExitOk;
  }
  std::printf("created %s (%s)\n", path.c_str(), g.ToString().c_str());
  return kExitOk;
}

// The block cache's counters and the fetches from disk, as stats and query
// report them.
nlohmann::json CacheJson(const StoreStats& s) {
  return {{"capacity_bytes", s.cache.capacity_bytes},
          {"resident_bytes", s.cache.used_bytes},
          {"entries", s.cache.entries},
          {"hits", s.cache.hits},
          {"misses", s.cache.misses},
          {"hit_bytes", s.cache.hit_bytes},
          {"evictions", s.cache.evictions},
          {"disk_blocks_read", s.disk_blocks_read},
          {"disk_bytes_read", s.disk_bytes_read}};
}

struct QueryArgs {
  std::string store, q_path, out_path, lse_path;
  uint32_t layer = 0;
  AttendOptions attend;
  bool json = false, explain = false;
  uint64_t cache_mb = StoreOptions{}.cache_bytes >> 20;
  uint32_t repeats = 1;  // the same query again: the later calls find the blocks in the cache
};

int RunQuery(const QueryArgs& a) {
  const std::string& path = a.store;
  const std::string& q_path = a.q_path;
  const AttendOptions& ao = a.attend;
  const uint32_t layer = a.layer;
  const bool json = a.json, explain = a.explain;
  StoreOptions options;
  options.read_only = true;
  options.cache_bytes = a.cache_mb << 20;
  auto store = Store::Open(path, options);
  if (!store.ok()) return Fail(store.status());
  const Geometry& g = (*store)->geometry();
  auto q = formats::ReadNpy(q_path);
  if (!q.ok()) return Fail(q.status());
  if (q->shape.size() != 3 || q->shape[2] != g.head_dim || q->shape[1] <= 0 ||
      q->shape[1] % g.kv_heads != 0) {
    return Fail(Status::InvalidArgument(
        "queries " + q_path + ": shape " + formats::ShapeToString(q->shape) +
        " is not [n, q_heads, head_dim=" + std::to_string(g.head_dim) +
        "] with q_heads a multiple of kv_heads=" + std::to_string(g.kv_heads)));
  }
  auto qf = formats::ToFloat32(*q);
  if (!qf.ok()) return Fail(qf.status().WithContext("queries " + q_path));
  const uint32_t n = static_cast<uint32_t>(q->shape[0]);
  const uint32_t qh = static_cast<uint32_t>(q->shape[1]);
  std::vector<float> out(static_cast<size_t>(n) * qh * g.head_dim), lse(static_cast<size_t>(n) * qh);
  AttendStats st;
  std::vector<std::vector<uint64_t>> selected;
  Status s;
  std::vector<double> total_ms;
  for (uint32_t r = 0; r < std::max(a.repeats, 1u) && s.ok(); ++r) {
    s = (*store)->Attend(layer, qf->data(), n, qh, ao, out.data(), lse.data(), &st,
                         explain ? &selected : nullptr);
    total_ms.push_back(st.total_ms);
  }
  if (!s.ok()) return Fail(s);
  nlohmann::json explained;
  if (explain) {
    auto e = ExplainRouting(**store, layer, qf->data(), n, qh, ao, selected);
    if (!e.ok()) return Fail(e.status());
    explained = std::move(*e);
  }
  s = formats::WriteNpyFloat32(a.out_path, {n, qh, g.head_dim}, out.data());
  if (!s.ok()) return Fail(s);
  if (!a.lse_path.empty()) {
    s = formats::WriteNpyFloat32(a.lse_path, {n, qh}, lse.data());
    if (!s.ok()) return Fail(s);
  }
  if (json) {
    nlohmann::json j = {{"queries", n},          {"q_heads", qh},           {"layer", layer},
                        {"exact", ao.exact},     {"top_k", ao.top_k},       {"document_sinks", ao.document_sinks},
                        {"blocks_read", st.blocks_read},
                        {"bytes_read", st.bytes_read}, {"route_ms", st.route_ms}, {"fetch_ms", st.fetch_ms},
                        {"decode_ms", st.decode_ms}, {"attend_ms", st.attend_ms}, {"total_ms", st.total_ms},
                        {"on_gpu", st.on_gpu},
                        {"cache_hits", st.cache_hits},
                        {"repeats", total_ms.size()},
                        {"total_ms_per_call", total_ms},
                        {"reader", (*store)->Stats().reader},
                        {"cache", CacheJson((*store)->Stats())}};
    if (explain) j["explain"] = std::move(explained);
    std::printf("%s\n", j.dump().c_str());
  } else {
    std::printf("%u queries x %u heads over layer %u: %llu blocks read, %.3f ms "
                "(route %.3f, fetch %.3f, decode %.3f, attend %.3f%s)\n",
                n, qh, layer, static_cast<unsigned long long>(st.blocks_read), st.total_ms,
                st.route_ms, st.fetch_ms, st.decode_ms, st.attend_ms, st.on_gpu ? " on the GPU" : "");
    if (explain) PrintExplanation(explained);
  }
  return kExitOk;
}

int RunVerify(const std::string& path, bool json) {
  StoreOptions options;
  options.read_only = true;
  auto store = Store::Open(path, options);
  if (!store.ok()) return Fail(store.status());
  VerifyReport report;
  ProgressLine progress("verify", "blocks");
  Status s = (*store)->Verify(&report, [&](uint64_t done, uint64_t total, uint64_t bytes) {
    progress.Update(done, total, bytes);
  });
  progress.Finish();
  if (!s.ok()) return Fail(s);
  if (json) {
    nlohmann::json j = {{"store", path},
                        {"blocks_checked", report.blocks_checked},
                        {"documents_checked", report.documents_checked},
                        {"files_checked", report.files_checked},
                        {"ok", report.problems.empty()},
                        {"problems", report.problems}};
    std::printf("%s\n", j.dump(2).c_str());
  } else {
    for (const std::string& p : report.problems) std::printf("problem: %s\n", p.c_str());
    std::printf("%s: %s and %s checked, %s\n", path.c_str(), Count(report.blocks_checked, "block").c_str(),
                Count(report.documents_checked, "document").c_str(), Count(report.problems.size(), "problem").c_str());
  }
  return report.problems.empty() ? kExitOk : kExitIoError;
}

int RunStats(const std::string& path, bool json) {
  StoreOptions options;
  options.read_only = true;
  auto store = Store::Open(path, options);
  if (!store.ok()) return Fail(store.status());
  const StoreStats s = (*store)->Stats();
  auto ratio = [](uint64_t raw, uint64_t stored) {
    return stored ? static_cast<double>(raw) / static_cast<double>(stored) : 0.0;
  };
  const uint32_t kv_heads = s.geometry.kv_heads;
  if (json) {
    nlohmann::json streams = nlohmann::json::array();
    for (size_t i = 0; i < s.streams.size(); ++i) {
      const StreamBytes& b = s.streams[i];
      streams.push_back({{"layer", i / kv_heads},
                         {"kv_head", i % kv_heads},
                         {"raw_bytes", b.raw_bytes},
                         {"stored_bytes", b.stored_bytes},
                         {"segment_bytes", b.segment_bytes},
                         {"compression_ratio", ratio(b.raw_bytes, b.stored_bytes)}});
    }
    nlohmann::json j = {{"layers", s.geometry.layers},
                        {"kv_heads", s.geometry.kv_heads},
                        {"head_dim", s.geometry.head_dim},
                        {"block_tokens", s.geometry.block_tokens},
                        {"codec", CodecName(s.geometry.codec)},
                        {"summary", SummaryName(s.geometry.summary)},
                        {"ivf_streams", s.ivf_streams},
                        {"documents", s.documents},
                        {"tokens", s.tokens},
                        {"blocks_per_stream", s.blocks_per_stream},
                        {"raw_bytes", s.raw_bytes},
                        {"stored_bytes", s.stored_bytes},
                        {"segment_bytes", s.segment_bytes},
                        {"compression_ratio", ratio(s.raw_bytes, s.stored_bytes)},
                        {"segment_ratio", ratio(s.raw_bytes, s.segment_bytes)},
                        {"reader", s.reader},
                        {"reader_detail", s.reader_detail},
                        {"cache", CacheJson(s)},
                        {"streams", streams}};
    std::printf("%s\n", j.dump(2).c_str());
    return kExitOk;
  }
  std::printf("store         %s\ngeometry      %s\ndocuments     %llu\ntokens        %llu per stream\n"
              "blocks        %llu per stream\nraw fp16      %llu bytes\nstored        %llu bytes "
              "(%.2fx)\nsegments      %llu bytes (%.2fx, records padded to 4 KiB)\nreader        %s\n",
              path.c_str(), s.geometry.ToString().c_str(), (unsigned long long)s.documents,
              (unsigned long long)s.tokens, (unsigned long long)s.blocks_per_stream,
              (unsigned long long)s.raw_bytes, (unsigned long long)s.stored_bytes,
              ratio(s.raw_bytes, s.stored_bytes), (unsigned long long)s.segment_bytes,
              ratio(s.raw_bytes, s.segment_bytes), s.reader_detail.c_str());
  // This process's counters: a fresh read-only handle has served nothing yet.
  std::printf("cache         %llu of %llu bytes resident (%llu blocks); %llu hits (%llu bytes), "
              "%llu misses, %llu evictions; %llu blocks (%llu bytes) read from disk\n",
              (unsigned long long)s.cache.used_bytes, (unsigned long long)s.cache.capacity_bytes,
              (unsigned long long)s.cache.entries, (unsigned long long)s.cache.hits,
              (unsigned long long)s.cache.hit_bytes, (unsigned long long)s.cache.misses,
              (unsigned long long)s.cache.evictions, (unsigned long long)s.disk_blocks_read,
              (unsigned long long)s.disk_bytes_read);
  std::printf("per stream    layer kv-head       raw fp16         stored  ratio\n");
  for (size_t i = 0; i < s.streams.size(); ++i) {
    const StreamBytes& b = s.streams[i];
    std::printf("              %5zu %7zu %14llu %14llu %6.2fx\n", i / kv_heads, i % kv_heads,
                (unsigned long long)b.raw_bytes, (unsigned long long)b.stored_bytes,
                ratio(b.raw_bytes, b.stored_bytes));
  }
  return kExitOk;
}

}  // namespace
}  // namespace msa::cli

int main(int argc, char** argv) {
  using namespace msa::cli;
  // The log goes to stderr: stdout carries the commands' output (--json).
  spdlog::set_default_logger(spdlog::stderr_color_mt("msa"));
  msa::SetLogLevelFromEnvironment();
  CLI::App app{"msa: an out-of-core memory store with disk-backed attention"};
  app.require_subcommand(1);
  app.footer(kExitCodesHelp);
  // Before or after the subcommand: `msa --log-level info stats S` or `msa stats S --log-level info`.
  app.fallthrough();
  std::string log_level;
  app.add_option("--log-level", log_level,
                 "log to stderr from this level on: trace, debug, info, warn (default), error, off; "
                 "overrides MSA_LOG_LEVEL")
      ->check(CLI::IsMember({"trace", "debug", "info", "warn", "error", "off"}));

  std::string store;
  bool json = false;
  msa::Geometry g;
  std::string codec = "f16";
  auto* create = app.add_subcommand("create", "Create a store with a fixed geometry");
  create->footer("Example: msa create /data/mem --layers 2 --kv-heads 2 --head-dim 64 --codec int8");
  create->add_option("STORE", store, "store directory")->required();
  create->add_option("--layers", g.layers, "model layers")->required();
  create->add_option("--kv-heads", g.kv_heads, "KV heads per layer")->required();
  create->add_option("--head-dim", g.head_dim, "channels per head")->required();
  create->add_option("--block-tokens", g.block_tokens, "tokens per block")->capture_default_str();
  create->add_option("--codec", codec, "block codec: f16 | bf16 (lossless for their dtype) | int8 | int4 (quantised)")->capture_default_str();
  std::string summary = msa::SummaryName(g.summary);
  create->add_option("--summary", summary,
                     "block summary the router scores: mean (mean key), bound (Quest's "
                     "per-channel min/max), centroids (k-means) or hybrid (bound and mean)")
      ->capture_default_str();
  create->add_option("--centroids", g.summary_centroids, "centroids per block (--summary centroids)")
      ->capture_default_str();
  create->add_flag("--json", json, "JSON output");

  IngestOptions ingest_opts;
  auto* ingest = app.add_subcommand(
      "ingest", "Append documents' K/V: one (--doc), a directory of shards (--dir) or a stream (--stdin)");
  AddIngestOptions(ingest, ingest_opts);

  QueryArgs query_args;
  uint32_t layer = 0, top_k = msa::AttendOptions{}.top_k;
  std::string q_path, out_path, lse_path;
  bool exact = false, explain = false, exact_routing = false, document_sinks = false;
  uint32_t channels = 0;
  std::string gpu = "auto";
  auto* query = app.add_subcommand("query", "Attend queries over one layer's memory");
  query->footer(
      "Q: [n, q_heads, head_dim] float16/float32 .npy. Writes O [n, q_heads, head_dim] and\n"
      "LSE [n, q_heads] as float32 .npy (LSE: natural log of the softmax denominator).\n"
      "--explain lists, per query row and KV head, the blocks read: the router's picks best\n"
      "first with their scores, then the forced first (sink) and last (recent) blocks, each\n"
      "with its document and token range. Streams of 65,536 blocks or more are routed\n"
      "approximately (8 channels per query head, candidates rescored exactly) unless\n"
      "--exact-routing.\n"
      "Examples: msa query /data/mem --layer 0 --queries q.npy --out o.npy --top-k 32\n"
      "          msa query /data/mem --layer 0 --queries q.npy --out o.npy --explain --json");
  query->add_option("STORE", store, "store directory")->required();
  query->add_option("--layer", layer, "layer to attend over")->required();
  query->add_option("--queries", q_path, "queries .npy")->required();
  query->add_option("--out", out_path, "output .npy")->required();
  query->add_option("--lse", lse_path, "log-sum-exp output .npy");
  auto* topk_opt = query->add_option("--top-k", top_k, "routed blocks per KV head")->capture_default_str();
  auto* exact_opt = query->add_flag("--exact", exact, "attend over every token of the layer")->excludes(topk_opt);
  query->add_flag("--exact-routing", exact_routing, "score every block summary (large streams are routed "
                  "approximately by default)")->excludes(exact_opt);
  query->add_option("--gpu", gpu, "where to attend: auto (the GPU when one is present and the call "
                    "fits it), off, or require (fail when the GPU cannot run it)")
      ->check(CLI::IsMember({"auto", "off", "require"}))
      ->capture_default_str();
  query->add_option("--channels", channels, "approximate routing over N channels chosen from the group's queries "
                    "(0: the default)")->excludes(exact_opt)->capture_default_str();
  query->add_flag("--document-sinks", document_sinks,
                  "also attend over every document's first block (its attention sink), besides top-k");
  query->add_option("--cache-mb", query_args.cache_mb, "host block cache (decoded blocks) in MiB; 0: none")
      ->capture_default_str();
  query->add_option("--repeats", query_args.repeats,
                    "run the query N times (the later calls read from the cache; --json reports every "
                    "call's time and the cache's counters)")
      ->check(CLI::Range(1u, 1000000u))
      ->capture_default_str();
  query->add_flag("--json", json, "print timings, the block cache's counters (and --explain) as JSON");
  query->add_flag("--explain", explain, "show which blocks were chosen, their scores and documents");

  auto* stats = app.add_subcommand("stats", "Show what a store holds");
  stats->footer("Example: msa stats /data/mem --json");
  stats->add_option("STORE", store, "store directory")->required();
  stats->add_flag("--json", json, "JSON output");

  auto* verify = app.add_subcommand("verify", "Read every block and check every catalog invariant");
  verify->footer(
      "Exit 0 when the store is sound, 5 when a problem was found (each is printed, naming the\n"
      "block, file and offset or the document). Example: msa verify /data/mem --json");
  verify->add_option("STORE", store, "store directory")->required();
  verify->add_flag("--json", json, "JSON output");

  SynthOptions synth_opts;
  auto* synth = app.add_subcommand("synth", "Write a synthetic corpus with planted needles");
  synth->footer("Example: msa synth /tmp/corpus --tokens 262144 --docs 4");
  AddSynthOptions(synth, synth_opts);

  EvalOptions eval_opts;
  auto* eval = app.add_subcommand("eval", "Sparse vs dense over a store: quality and latency");
  eval->footer("Example: msa eval /data/mem --queries /tmp/corpus/queries.npy --needles /tmp/corpus/needles.json");
  AddEvalOptions(eval, eval_opts);

  DocsOptions docs_opts;
  auto* docs = app.add_subcommand("docs", "List, show or delete documents");
  AddDocsCommands(docs, docs_opts);

  CompactOptions compact_opts;
  auto* compact = app.add_subcommand("compact", "Reclaim the disk space of deleted documents");
  AddCompactOptions(compact, compact_opts);

  InspectOptions inspect_opts;
  auto* inspect = app.add_subcommand("inspect", "Show one block: record header, document, positions, tokens");
  AddInspectOptions(inspect, inspect_opts);

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    const int rc = app.exit(e);
    return rc == 0 ? kExitOk : kExitUsage;
  }
  if (!log_level.empty()) spdlog::set_level(*msa::ParseLogLevel(log_level));  // checked by IsMember
  if (*create) {
    auto c = msa::ParseCodec(codec);
    if (!c.ok()) return Fail(c.status());
    g.codec = *c;
    auto sk = msa::ParseSummary(summary);
    if (!sk.ok()) return Fail(sk.status());
    g.summary = *sk;
    return RunCreate(store, g, json);
  }
  if (*ingest) return RunIngest(ingest_opts);
  if (*query) {
    msa::AttendOptions ao;
    ao.top_k = top_k;
    ao.exact = exact;
    ao.exact_routing = exact_routing;
    ao.channels = channels;
    ao.document_sinks = document_sinks;
    ao.gpu = gpu == "off" ? msa::GpuMode::kOff : gpu == "require" ? msa::GpuMode::kRequire : msa::GpuMode::kAuto;
    query_args.store = store;
    query_args.layer = layer;
    query_args.q_path = q_path;
    query_args.out_path = out_path;
    query_args.lse_path = lse_path;
    query_args.attend = ao;
    query_args.json = json;
    query_args.explain = explain;
    return RunQuery(query_args);
  }
  if (*stats) return RunStats(store, json);
  if (*verify) return RunVerify(store, json);
  if (*synth) return RunSynth(synth_opts);
  if (*eval) return RunEval(eval_opts);
  if (*docs) return RunDocs(docs_opts);
  if (*compact) return RunCompact(compact_opts);
  if (*inspect) return RunInspect(inspect_opts);
  return kExitUsage;
}
