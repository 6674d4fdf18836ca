// Bulk ingest for the CLI (`msa ingest --dir/--stdin`, `msa synth
// --into-store`): documents come from a producer running on its own thread
// (reading shards, generating a corpus) a few documents ahead of the one
// writer thread that encodes and appends them (Store::AppendDocument), and
// commits are batched: every `commit_docs` documents or `commit_bytes` of
// input, and at the end. Memory stays bounded by the queue depth plus one
// commit's staged summaries, whatever the corpus size.
//
// Failure semantics (what makes a re-run resume):
//   - the producer fails (a bad shard, a short stream): the documents
//     appended before it are committed, then the error is returned. The
//     store holds every document before the bad one; nothing after it.
//   - the store fails (AppendDocument or Commit): the error is returned with
//     no further commit; the store keeps its last commit.
//   - SIGINT or SIGTERM (when handle_signals): the document in hand is
//     finished, the batch committed, and OK returned with
//     IngestReport::interrupted set. A second signal kills the process (the
//     last commit survives).
// Callers skip documents whose names the store already holds, so running
// the same command again after any of these continues where it stopped.
//
// Progress: with progress on (callers pass isatty(stderr)), one line on
// stderr rewritten twice a second: documents, tokens, input MB/s, ETA.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>

#include <nlohmann/json.hpp>

#include "msa/status.h"
#include "store/store.h"

namespace msa::cli {

// One document handed from the producer to the writer. `kv` points into
// `storage` (which keeps the buffers alive until the document is appended).
struct IngestItem {
  std::string name;
  std::string source;  // what it came from, for messages ("DIR/x_keys.npy")
  DocumentKV kv;
  uint64_t input_bytes = 0;  // K and V bytes as given
  std::shared_ptr<void> storage;
};

// Called repeatedly on the producer thread: the next document, std::nullopt
// at the end, or an error (which names the file or stream).
using IngestProducer = std::function<Result<std::optional<IngestItem>>()>;

struct IngestPipelineOptions {
  uint32_t commit_docs = 64;             // commit after this many documents ...
  uint64_t commit_bytes = 1ull << 30;    // ... or this many input bytes, whichever first
  uint32_t queue_depth = 2;              // documents produced ahead of the writer
  bool progress = false;                 // the progress line on stderr
  uint64_t expected_tokens = 0;          // for the ETA (0: unknown)
  uint64_t expected_bytes = 0;           // for the ETA when tokens are unknown
  bool handle_signals = true;            // SIGINT/SIGTERM: finish, commit, stop
};

struct IngestReport {
  uint64_t documents = 0, tokens = 0, input_bytes = 0, commits = 0;
  double seconds = 0;
  double append_s = 0;  // in Store::AppendDocument (widen, summarise, encode, write)
  double commit_s = 0;  // in Store::Commit (fdatasync, RocksDB batch, router)
  double wait_s = 0;    // the writer waiting for the producer
  uint64_t written_bytes = 0;  // segment bytes added (4096-padded records)
  bool interrupted = false;    // stopped early by SIGINT/SIGTERM (what was appended is committed)
  nlohmann::json ToJson() const;
};

// Runs the producer against `store` as described above. On error the
// report (if given) still says what was ingested and committed.
Status RunIngestPipeline(Store& store, const IngestProducer& producer,
                         const IngestPipelineOptions& options, IngestReport* report);

// Peak resident set of this process (VmHWM), bytes.
uint64_t PeakRssBytes();

}  // namespace msa::cli
