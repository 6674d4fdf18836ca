// The synthetic corpus of `msa synth` as a reusable generator: the queries
// and planted needles up front, then one document's K/V at a time, so a
// corpus of any size can be written to files or streamed straight into a
// store (memory: one document).
//
// Keys and values are Gaussian N(0, 1). Each query row i gets, per KV head g
// (or per query head with needle_per_head), a random unit direction u; the
// group's query heads are u * |q| plus noise, and a span of needle_span
// consecutive keys at a uniformly random depth of the corpus is set to
// u * a + noise, a = needle_strength (the needle's scaled score above the
// background). Needles are planted in layer 0 only; needles() says where
// (global token positions: documents laid end to end in index order, the
// order a store must ingest them in). Outlier channels scale the chosen key
// channels of every key (needles included); key_shift adds one fixed random
// offset to every key (the query/key shift).
//
// Two noise sources (SynthOptions::rng):
//   "mt19937" (default): one std::mt19937_64 + std::normal_distribution
//     sequence through queries, needles and documents, bit-identical to what
//     `msa synth` always wrote. Documents must be made in order 0, 1, ...
//     (a skipped document still has to be generated to advance the stream).
//   "fast": queries and needles as above (same seed, same needles), document
//     noise from a per-document xoshiro256** stream through a table of the
//     65,536 fp16 Gaussian quantiles (a discretised N(0, 1), tails cut at
//     4.3 sigma). Any document can be made independently, in any order or
//     thread, ~20x faster: for corpora of 1e8 tokens.
//
// Thread safety: Document() in fast mode is const-safe from several threads;
// in mt19937 mode it mutates the shared sequence (one thread, in order).
#pragma once

#include <cstdint>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "msa/status.h"
#include "tools/commands.h"

namespace msa::cli {

class SynthCorpus {
 public:
  // Validates the options and draws the queries and needles.
  static Result<std::unique_ptr<SynthCorpus>> Make(const SynthOptions& o);

  uint32_t docs() const { return docs_; }
  uint64_t doc_tokens(uint32_t doc) const;
  uint64_t doc_start(uint32_t doc) const;  // global position of the document's first token
  std::string doc_name(uint32_t doc) const { return "doc_" + std::to_string(doc); }
  bool fast() const { return fast_; }
  const SynthOptions& options() const { return o_; }

  const std::vector<float>& queries() const { return queries_; }  // [queries, q_heads, head_dim]
  const nlohmann::json& needles() const { return needles_; }
  size_t needle_count() const { return planted_.size(); }
  nlohmann::json geometry_json() const;

  // Document `doc`'s keys and values as fp16 bits,
  // [layers, kv_heads, doc_tokens(doc), head_dim]. mt19937 mode:
  // InvalidArgument unless doc is the next document in order.
  Status Document(uint32_t doc, std::vector<uint16_t>* keys, std::vector<uint16_t>* values);

  // DIR/queries.npy, DIR/needles.json, DIR/geometry.json (creates DIR).
  Status WriteSidecars(const std::string& dir) const;

 private:
  struct Needle {
    std::vector<float> u;  // unit direction
    uint32_t kv = 0;
    uint64_t position = 0;
  };
  explicit SynthCorpus(const SynthOptions& o) : o_(o) {}
  Status DocumentMt(uint32_t doc, std::vector<uint16_t>* keys, std::vector<uint16_t>* values);
  Status DocumentFast(uint32_t doc, std::vector<uint16_t>* keys, std::vector<uint16_t>* values) const;

  SynthOptions o_;
  bool fast_ = false;
  uint32_t docs_ = 0;
  uint64_t per_doc_ = 0;  // doc_tokens > 0: every document but the last has this many
  std::mt19937_64 rng_;  // the mt19937 sequence (both modes draw queries and needles from it)
  std::normal_distribution<float> normal_{0.0f, 1.0f};
  uint32_t next_doc_ = 0;                 // mt19937 mode: the next document in order
  std::vector<float> queries_;
  std::vector<Needle> planted_;
  nlohmann::json needles_ = nlohmann::json::array();
  std::vector<float> shift_, channel_scale_;
  bool distorted_ = false;  // outliers or shift: keys go through float
};

}  // namespace msa::cli
