// Subcommands with their own files: `msa synth` writes a synthetic corpus
// (or streams it into a store), `msa ingest` adds documents, `msa eval`
// measures sparse attention on a store against dense attention.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace CLI {
class App;
}

namespace msa::cli {

struct SynthOptions {
  std::string dir;
  uint32_t layers = 2, kv_heads = 2, q_heads = 8, head_dim = 64;
  uint64_t tokens = 262144;    // total over all documents
  uint32_t docs = 4;
  uint32_t queries = 16;       // query rows, each with one needle per KV head
  uint32_t needle_span = 16;   // consecutive needle tokens
  float needle_strength = 10;  // needle logit (scaled score) above the noise
  uint32_t outlier_channels = 0;  // key channels scaled by outlier_scale (every token)
  float outlier_scale = 8;
  bool needle_per_head = false;  // one needle per query head instead of per KV head
  float key_shift = 0;  // every key gets key_shift * w, w a fixed random unit vector
  uint64_t seed = 42;
  std::string rng = "mt19937";  // document noise: mt19937 (as always) or fast (tools/synth_generator.h)
  uint64_t doc_tokens = 0;      // > 0: documents of this many tokens (the last may be shorter); overrides docs
  std::string into_store;       // stream the documents into this store instead of writing .npy files
  uint32_t commit_docs = 64;    // --into-store: commit every N documents ...
  double commit_mb = 1024;      // ... or every M MB of K/V, whichever comes first
  bool json = false;            // --into-store: the ingest report as JSON
};
void AddSynthOptions(CLI::App* app, SynthOptions& o);
int RunSynth(const SynthOptions& o);

// `msa ingest`: one document (--doc), every shard of a directory (--dir) or
// a raw stream (--stdin); tools/cmd_ingest.cc.
struct IngestOptions {
  std::string store;
  std::string doc, keys, values;  // one document
  std::string dir;                // NAME_keys.npy + NAME_values.npy pairs and NAME.safetensors
  bool from_stdin = false;        // raw K/V documents on stdin
  uint64_t doc_tokens = 0;        // --stdin: tokens per document (the last may be shorter)
  std::string dtype = "f16";      // --stdin: f16, bf16 or f32
  std::string prefix = "stdin";   // --stdin: documents are PREFIX_00000000, PREFIX_00000001, ...
  uint32_t commit_docs = 64;      // commit every N documents ...
  double commit_mb = 1024;        // ... or every M MB of input, whichever comes first
  bool json = false;
  // --doc: what the tokens were, kept in the catalog for `msa inspect`.
  std::string token_ids;          // .npy int32/int64 [tokens]
  std::string text;               // the document's text (any bytes; UTF-8 for display)
  std::string token_spans;        // .npy int32/int64 [tokens, 2]: byte [begin, end) in --text
};
void AddIngestOptions(CLI::App* app, IngestOptions& o);
int RunIngest(const IngestOptions& o);

struct EvalOptions {
  std::string store, queries, needles;
  uint32_t layer = 0;
  uint32_t top_k = 16;
  uint32_t repeats = 5;  // latency samples per query
  uint32_t exact_samples = 8;  // query rows timed in the store's exact (read everything) mode
  std::string combine = "max";  // GQA combine of head scores: max or sum
  std::string nprobe = "default";  // a list of routing settings: numbers, default, scan
  uint32_t candidates = 0;
  uint64_t ivf_min_vectors = 0;  // 0: the store's default
  uint32_t coarse_group_blocks = 0;  // group summaries for coarse-to-fine routing (0: none)
  bool document_sinks = false;   // AttendOptions::document_sinks
  bool json = false;
};
void AddEvalOptions(CLI::App* app, EvalOptions& o);
int RunEval(const EvalOptions& o);

// `msa docs list|show|delete` and `msa compact`; tools/cmd_docs.cc.
struct DocsOptions {
  std::string store;
  std::string action;                // list, show or delete (set by the subcommand)
  std::vector<std::string> targets;  // document ids or names
  bool deleted = false;              // list: the deleted documents
  bool json = false;
};
void AddDocsCommands(CLI::App* docs, DocsOptions& o);
int RunDocs(const DocsOptions& o);

// `msa inspect`: one block, its record, document, positions and tokens;
// tools/cmd_inspect.cc.
struct InspectOptions {
  std::string store;
  uint32_t layer = 0, kv_head = 0;
  int64_t block = -1;        // a block number of the stream ...
  std::string doc;           // ... or a document (id or name) ...
  int64_t block_in_doc = -1; // ... and the block's index within it
  bool json = false;
};
void AddInspectOptions(CLI::App* app, InspectOptions& o);
int RunInspect(const InspectOptions& o);

struct CompactOptions {
  std::string store;
  bool json = false;
};
void AddCompactOptions(CLI::App* compact, CompactOptions& o);
int RunCompact(const CompactOptions& o);

}  // namespace msa::cli
