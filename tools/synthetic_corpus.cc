// `msa synth`: a synthetic K/V corpus with planted needles.
//
// Keys and values are Gaussian N(0, 1). Each query row i gets, per KV head g,
// a random unit direction u; the group's query heads are u * |q| plus noise,
// and a span of needle_span consecutive keys somewhere in the corpus (a
// uniformly random depth) is set to u * a + noise, with a chosen so that the
// needle's scaled score exceeds the background's by needle_strength. The
// needles are planted in layer 0 only; needles.json records where. Options
// add the distortions of real keys: outlier channels (scaled in every key,
// needles included, as real outlier channels are) and a common key offset
// that queries do not share (the query/key shift).
//
// Output (DIR): doc_<i>_keys.npy / doc_<i>_values.npy
// [layers, kv_heads, tokens_i, head_dim] float16, queries.npy
// [queries, q_heads, head_dim] float32, needles.json, geometry.json.
//
// --into-store STORE streams the documents straight into an existing store
// (made by `msa create` with the same layers, kv_heads and head_dim) as
// doc_<i>, with no .npy files: DIR then receives only queries.npy,
// needles.json and geometry.json. Commits are batched
// (tools/ingest_pipeline.h), a generator thread runs ahead of the writer,
// and a re-run of the same command continues after the last committed
// document. The generator itself is tools/synth_generator.h; --rng fast
// makes corpora of 1e8 tokens practical.
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <memory>
#include <mutex>

#include "store/store.h"
#include "tools/cli_common.h"
#include "tools/commands.h"
#include "tools/ingest_pipeline.h"
#include "tools/npy_file.h"
#include "tools/progress_line.h"
#include "tools/synth_generator.h"

namespace msa::cli {

void AddSynthOptions(CLI::App* app, SynthOptions& o) {
  app->add_option("DIR", o.dir, "output directory")->required();
  app->add_option("--layers", o.layers, "model layers")->capture_default_str();
  app->add_option("--kv-heads", o.kv_heads, "KV heads per layer")->capture_default_str();
  app->add_option("--q-heads", o.q_heads, "query heads per layer (a multiple of --kv-heads: GQA)")->capture_default_str();
  app->add_option("--head-dim", o.head_dim, "channels per head")->capture_default_str();
  app->add_option("--tokens", o.tokens, "tokens in all documents together")->capture_default_str();
  app->add_option("--docs", o.docs, "documents the tokens are split into")->capture_default_str();
  app->add_option("--doc-tokens", o.doc_tokens,
                  "tokens per document instead of --docs (the last may be shorter)");
  app->add_option("--queries", o.queries, "query rows (one needle per row and KV head)")->capture_default_str();
  app->add_option("--needle-span", o.needle_span, "tokens per needle")->capture_default_str();
  app->add_option("--needle-strength", o.needle_strength, "needle's scaled score")->capture_default_str();
  app->add_option("--outlier-channels", o.outlier_channels, "key channels with large magnitude")
      ->capture_default_str();
  app->add_option("--outlier-scale", o.outlier_scale, "their scale")->capture_default_str();
  app->add_option("--key-shift", o.key_shift,
                  "norm of a common offset added to every key (the query/key shift)")
      ->capture_default_str();
  app->add_flag("--needle-per-head", o.needle_per_head,
               "one needle per query head (each head of a GQA group looks for its own)");
  app->add_option("--seed", o.seed, "random seed: the same seed writes the same corpus")->capture_default_str();
  app->add_option("--rng", o.rng,
                  "document noise: mt19937 (exact Gaussian, sequential) or fast (a 16-bit quantile "
                  "table, per-document streams; same queries and needles)")
      ->capture_default_str();
  app->add_option("--into-store", o.into_store,
                  "stream the documents into this store (made by msa create) instead of .npy files; "
                  "DIR gets queries.npy, needles.json, geometry.json");
  app->add_option("--commit-docs", o.commit_docs, "--into-store: commit every N documents")->capture_default_str();
  app->add_option("--commit-mb", o.commit_mb, "--into-store: ... or every M MB of K/V")->capture_default_str();
  app->add_flag("--json", o.json, "the report as JSON (--into-store: the ingest report)");
}

namespace {

int SynthIntoStore(SynthCorpus& corpus, const SynthOptions& o) {
  auto opened = Store::Open(o.into_store);
  if (!opened.ok()) return Fail(opened.status());
  Store& store = **opened;
  const Geometry& g = store.geometry();
  if (g.layers != o.layers || g.kv_heads != o.kv_heads || g.head_dim != o.head_dim) {
    return Fail(Status::InvalidArgument(
        "synth: store " + o.into_store + " is " + g.ToString() + "; the corpus has layers=" +
        std::to_string(o.layers) + ", kv_heads=" + std::to_string(o.kv_heads) + ", head_dim=" +
        std::to_string(o.head_dim)));
  }
  // Needle positions count tokens from the corpus's first document, so the
  // store must hold nothing but a prefix of this corpus (what an earlier,
  // interrupted run of the same command committed).
  auto docs = store.ListDocuments();
  if (!docs.ok()) return Fail(docs.status());
  std::sort(docs->begin(), docs->end(), [](const DocumentRecord& a, const DocumentRecord& b) {
    return a.first_block < b.first_block;
  });
  const uint32_t done = static_cast<uint32_t>(docs->size());
  for (uint32_t i = 0; i < done; ++i) {
    const DocumentRecord& doc = (*docs)[i];
    if (i >= corpus.docs() || doc.name != corpus.doc_name(i) || doc.tokens != corpus.doc_tokens(i)) {
      return Fail(Status::InvalidArgument(
          "synth: store " + o.into_store + " holds document '" + doc.name + "' (" + std::to_string(doc.tokens) +
          " tokens) where this corpus has " +
          (i < corpus.docs() ? corpus.doc_name(i) + " (" + std::to_string(corpus.doc_tokens(i)) + " tokens)"
                             : std::string("no document")) +
          "; needle positions would not match (use an empty store, or the same options to resume)"));
    }
  }
  IngestPipelineOptions p;
  p.commit_docs = std::max(1u, o.commit_docs);
  p.commit_bytes = static_cast<uint64_t>(std::max(1.0, o.commit_mb) * 1e6);
  p.progress = ::isatty(STDERR_FILENO) != 0;
  for (uint32_t i = done; i < corpus.docs(); ++i) p.expected_tokens += corpus.doc_tokens(i);
  uint32_t next = done;
  if (!corpus.fast()) next = 0;  // mt19937: the skipped documents are generated (and dropped) to advance it
  // Document buffers are recycled: a fresh 100 MB allocation per document
  // costs its page faults and zeroing again (a tenth of the ingest's CPU).
  struct Buffers {
    std::vector<uint16_t> keys, values;
  };
  std::mutex pool_mu;
  std::vector<std::unique_ptr<Buffers>> pool;  // outlives every buffer handed out
  auto get_buffers = [&]() {
    std::unique_ptr<Buffers> b;
    {
      std::lock_guard<std::mutex> lock(pool_mu);
      if (!pool.empty()) {
        b = std::move(pool.back());
        pool.pop_back();
      }
    }
    if (!b) b = std::make_unique<Buffers>();
    return std::shared_ptr<Buffers>(b.release(), [&](Buffers* done) {
      std::lock_guard<std::mutex> lock(pool_mu);
      pool.emplace_back(done);
    });
  };
  IngestProducer producer = [&]() -> Result<std::optional<IngestItem>> {
    for (;;) {
      if (next == corpus.docs()) return std::optional<IngestItem>();
      const uint32_t doc = next++;
      auto buffers = get_buffers();
      MSA_RETURN_IF_ERROR(corpus.Document(doc, &buffers->keys, &buffers->values));
      if (doc < done) continue;
      IngestItem item;
      item.name = corpus.doc_name(doc);
      item.source = "synthetic " + item.name;
      item.kv = DocumentKV{buffers->keys.data(), buffers->values.data(), corpus.doc_tokens(doc),
                           ElementType::kFloat16};
      item.input_bytes = 2 * buffers->keys.size() * sizeof(uint16_t);
      item.storage = buffers;
      return std::optional<IngestItem>(std::move(item));
    }
  };
  IngestReport report;
  Status s = RunIngestPipeline(store, producer, p, &report);
  if (o.json) {
    nlohmann::json j = report.ToJson();
    j.update({{"skipped", done}, {"ok", s.ok() && !report.interrupted}, {"rng", o.rng},
              {"needles", corpus.needle_count()}, {"corpus_docs", corpus.docs()}});
    if (!s.ok()) j["error"] = s.ToString();
    std::printf("%s\n", j.dump(2).c_str());
  } else {
    std::printf("synth into %s: %s, %llu tokens, %.1f MB of fp16 K/V in %.2f s (%.1f MB/s in, "
                "%.1f MB/s written, %s; %u already there); %zu needles and %u queries in %s\n",
                o.into_store.c_str(), Count(report.documents, "document").c_str(), (unsigned long long)report.tokens,
                report.input_bytes / 1e6, report.seconds,
                report.seconds > 0 ? report.input_bytes / 1e6 / report.seconds : 0.0,
                report.seconds > 0 ? report.written_bytes / 1e6 / report.seconds : 0.0,
                Count(report.commits, "commit").c_str(), done, corpus.needle_count(), o.queries, o.dir.c_str());
  }
  if (!s.ok()) return Fail(s);
  if (report.interrupted) {
    std::fprintf(stderr, "msa: interrupted; what was ingested is committed; run the same command again to continue\n");
    return kExitInterrupted;
  }
  return kExitOk;
}

}  // namespace

int RunSynth(const SynthOptions& o) {
  auto made = SynthCorpus::Make(o);
  if (!made.ok()) return Fail(made.status());
  SynthCorpus& corpus = **made;
  // The sidecars first: an interrupted --into-store run has them already.
  Status s = corpus.WriteSidecars(o.dir);
  if (!s.ok()) return Fail(s);
  if (!o.into_store.empty()) return SynthIntoStore(corpus, o);
  std::vector<uint16_t> k16, v16;
  ProgressLine progress("synth", "documents", "written");
  uint64_t written = 0;
  for (uint32_t doc = 0; doc < corpus.docs(); ++doc) {
    progress.Update(doc, corpus.docs(), written);
    s = corpus.Document(doc, &k16, &v16);
    if (!s.ok()) return Fail(s);
    const std::vector<int64_t> shape{o.layers, o.kv_heads, static_cast<int64_t>(corpus.doc_tokens(doc)), o.head_dim};
    const std::string base = o.dir + "/doc_" + std::to_string(doc);
    s = formats::WriteNpy(base + "_keys.npy", formats::MakeFloat16Tensor(shape, k16.data()));
    if (s.ok()) s = formats::WriteNpy(base + "_values.npy", formats::MakeFloat16Tensor(shape, v16.data()));
    if (!s.ok()) return Fail(s);
    written += 2 * k16.size() * sizeof(uint16_t);
  }
  progress.Update(corpus.docs(), corpus.docs(), written);
  progress.Finish();
  if (o.json) {
    nlohmann::json j = {{"dir", o.dir},        {"documents", corpus.docs()}, {"tokens", o.tokens},
                        {"queries", o.queries}, {"needles", corpus.needle_count()}, {"bytes_written", written}};
    std::printf("%s\n", j.dump(2).c_str());
    return kExitOk;
  }
  std::printf("wrote %s, %llu tokens, %u queries with %zu needles to %s\n", Count(corpus.docs(), "document").c_str(),
              static_cast<unsigned long long>(o.tokens), o.queries, corpus.needle_count(), o.dir.c_str());
  return kExitOk;
}

}  // namespace msa::cli
