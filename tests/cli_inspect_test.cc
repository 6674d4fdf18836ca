// The user's surface (issue 8): `msa inspect` (a block's record, document,
// positions, token ids and text), token ids / text kept per document,
// `msa query --explain` (which blocks, why, with the router's scores), the
// exit codes, every subcommand's --help example, and the progress line's
// silence off a terminal.
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <regex>
#include <sstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "attention/sparse_attention_cuda.h"
#include "store/store.h"
#include "cli_runner.h"
#include "test_util.h"
#include "tools/npy_file.h"

namespace msa {
namespace {

using msa::testing::Cli;
using msa::testing::CliResult;
using msa::testing::TempDir;
namespace fs = std::filesystem;

// A .npy of int32 or int64 (tools/ writes only floats): numpy's layout,
// header padded so the data starts at byte 64.
template <typename T>
void WriteNpyInt(const std::string& path, const std::vector<int64_t>& shape, const std::vector<T>& values) {
  std::string dims;
  for (size_t i = 0; i < shape.size(); ++i) dims += (i ? ", " : "") + std::to_string(shape[i]);
  if (shape.size() == 1) dims += ",";
  std::string dict = std::string("{'descr': '<i") + std::to_string(sizeof(T)) + "', 'fortran_order': False, 'shape': (" +
                     dims + "), }";
  while ((10 + dict.size() + 1) % 64 != 0) dict += ' ';
  dict += '\n';
  std::ofstream f(path, std::ios::binary);
  f.write("\x93NUMPY\x01\x00", 8);
  const uint16_t len = static_cast<uint16_t>(dict.size());
  f.write(reinterpret_cast<const char*>(&len), 2);
  f << dict;
  f.write(reinterpret_cast<const char*>(values.data()), values.size() * sizeof(T));
  ASSERT_TRUE(f.good());
}

constexpr uint32_t kHeadDim = 32, kBlock = 16;

// K/V [1, 2, tokens, 32] float32 of a document whose block `needle` (if
// >= 0) has keys along the unit vector `direction` (KV head 0), the rest
// noise of scale 0.3.
void WriteDoc(const std::string& dir, const std::string& name, uint64_t tokens, uint64_t seed, int needle = -1,
              const std::vector<float>& direction = {}) {
  std::vector<float> k = msa::testing::RandomVector(2 * tokens * kHeadDim, seed, 0.3f);
  std::vector<float> v = msa::testing::RandomVector(2 * tokens * kHeadDim, seed + 1000);
  if (needle >= 0) {
    for (uint64_t t = needle * kBlock; t < (needle + 1) * kBlock && t < tokens; ++t) {
      // Strong enough that even the bound ranking (an upper bound, high for
      // noise blocks too) puts it first.
      for (uint32_t c = 0; c < kHeadDim; ++c) k[t * kHeadDim + c] = 6.0f * direction[c];
    }
  }
  const std::vector<int64_t> shape = {1, 2, static_cast<int64_t>(tokens), kHeadDim};
  ASSERT_TRUE(formats::WriteNpyFloat32(dir + "/" + name + "_k.npy", shape, k.data()).ok());
  ASSERT_TRUE(formats::WriteNpyFloat32(dir + "/" + name + "_v.npy", shape, v.data()).ok());
}

std::string Create(const TempDir& dir, const std::string& extra = "") {
  const std::string store = dir.Sub("store");
  const CliResult r = Cli("create " + store + " --layers 1 --kv-heads 2 --head-dim 32 --block-tokens 16 " + extra);
  EXPECT_EQ(r.code, 0) << r.err;
  return store;
}

std::string IngestArgs(const TempDir& dir, const std::string& store, const std::string& name) {
  return "ingest " + store + " --doc " + name + " --keys " + dir.Sub(name + "_k.npy") + " --values " +
         dir.Sub(name + "_v.npy");
}

TEST(DocumentTokensTest, KeptPerDocumentCheckedAndDeletedWithIt) {
  TempDir dir;
  Geometry g;
  g.layers = 1;
  g.kv_heads = 1;
  g.head_dim = 8;
  g.block_tokens = 4;
  const uint64_t tokens = 10;
  std::vector<float> kv(tokens * g.head_dim, 0.5f);
  const DocumentKV doc{kv.data(), kv.data(), tokens, ElementType::kFloat32};
  DocumentTokens t;
  for (uint64_t i = 0; i < tokens; ++i) t.ids.push_back(static_cast<int32_t>(1000 + i));
  t.text = "0123456789";
  for (uint64_t i = 0; i < tokens; ++i) t.spans.push_back({i, i + 1});
  uint64_t with = 0, without = 0;
  {
    auto store = Store::Create(dir.Sub("s"), g);
    ASSERT_TRUE(store.ok());
    DocumentTokens bad = t;
    bad.ids.pop_back();
    auto r = (*store)->AppendDocument("bad", doc, bad);
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(r.status().code(), Status::Code::kInvalidArgument);
    EXPECT_NE(r.status().message().find("9 token ids for a document of 10 tokens"), std::string::npos)
        << r.status().ToString();
    bad = t;
    bad.spans[3].end = 11;  // past the text
    EXPECT_EQ((*store)->AppendDocument("bad", doc, bad).status().code(), Status::Code::kInvalidArgument);
    bad = t;
    bad.text.clear();  // spans without text
    EXPECT_EQ((*store)->AppendDocument("bad", doc, bad).status().code(), Status::Code::kInvalidArgument);
    auto a = (*store)->AppendDocument("with", doc, t);
    auto b = (*store)->AppendDocument("without", doc);
    ASSERT_TRUE(a.ok() && b.ok());
    with = *a;
    without = *b;
    ASSERT_TRUE((*store)->Commit().ok());
  }
  auto store = Store::Open(dir.Sub("s"));
  ASSERT_TRUE(store.ok());
  auto docs = (*store)->ListDocuments();
  ASSERT_TRUE(docs.ok());
  EXPECT_EQ(docs->size(), 2u) << "the refused appends staged nothing";
  auto got = (*store)->ReadDocumentTokens(with);
  ASSERT_TRUE(got.ok()) << got.status().ToString();
  ASSERT_TRUE(got->has_value());
  EXPECT_EQ((*got)->ids, t.ids);
  EXPECT_EQ((*got)->text, t.text);
  ASSERT_EQ((*got)->spans.size(), tokens);
  EXPECT_EQ((*got)->spans[7].begin, 7u);
  EXPECT_EQ((*got)->spans[7].end, 8u);
  VerifyReport report;
  ASSERT_TRUE((*store)->Verify(&report).ok());
  EXPECT_TRUE(report.problems.empty()) << report.problems.front();
  auto none = (*store)->ReadDocumentTokens(without);
  ASSERT_TRUE(none.ok());
  EXPECT_FALSE(none->has_value());
  ASSERT_TRUE((*store)->DeleteDocument(with).ok());
  ASSERT_TRUE((*store)->Commit().ok());
  EXPECT_EQ((*store)->ReadDocumentTokens(with).status().code(), Status::Code::kNotFound);
  // A deleted document's block shows no tokens (the record went with it).
  auto inspected = (*store)->InspectBlock(BlockId{0, 0, 1});
  ASSERT_TRUE(inspected.ok()) << inspected.status().ToString();
  EXPECT_TRUE(inspected->document_deleted);
  EXPECT_FALSE(inspected->tokens.has_value());
  EXPECT_EQ(inspected->stream_position, -1);
  EXPECT_TRUE(inspected->record_read) << "its record is still there until compaction";
  // Compacted away: no record to read, and that is not an error.
  ASSERT_TRUE((*store)->Compact().ok());
  inspected = (*store)->InspectBlock(BlockId{0, 0, 1});
  ASSERT_TRUE(inspected.ok()) << inspected.status().ToString();
  EXPECT_EQ(inspected->location.segment, 0u);
  EXPECT_FALSE(inspected->record_read);
  EXPECT_TRUE(inspected->segment_path.empty());
  EXPECT_TRUE(inspected->record_error.empty());
  // The live document's block after it: positions in the stream start at 0.
  inspected = (*store)->InspectBlock(BlockId{0, 0, 3});
  ASSERT_TRUE(inspected.ok());
  EXPECT_EQ(inspected->document.name, "without");
  EXPECT_EQ(inspected->stream_position, 0);
  EXPECT_TRUE(inspected->record_read && inspected->record_error.empty()) << inspected->record_error;
}

TEST(InspectCliTest, ShowsHeaderDocumentPositionsTokenIdsAndText) {
  TempDir dir;
  const std::string store = Create(dir);
  WriteDoc(dir.path(), "first", 40, 1);  // blocks 0..2 (16 + 16 + 8 tokens)
  WriteDoc(dir.path(), "second", 50, 2);  // blocks 3..6
  ASSERT_EQ(Cli(IngestArgs(dir, store, "first")).code, 0);
  // Token ids 500.., text "t0 t1 t2 ...", each token its "tN" word.
  std::vector<int64_t> ids;
  std::vector<int32_t> spans;
  std::string text;
  for (int i = 0; i < 50; ++i) {
    ids.push_back(500 + i);
    if (i) text += ' ';
    spans.push_back(static_cast<int32_t>(text.size()));
    text += "t" + std::to_string(i);
    spans.push_back(static_cast<int32_t>(text.size()));
  }
  WriteNpyInt(dir.Sub("ids.npy"), {50}, ids);
  WriteNpyInt(dir.Sub("spans.npy"), {50, 2}, spans);
  {
    std::ofstream(dir.Sub("text.txt")) << text;
  }
  const std::string tokens_args = " --token-ids " + dir.Sub("ids.npy") + " --text " + dir.Sub("text.txt") +
                                  " --token-spans " + dir.Sub("spans.npy");
  // Wrong length: refused naming the file (exit 3), nothing ingested.
  WriteNpyInt(dir.Sub("short.npy"), {49}, std::vector<int32_t>(49, 1));
  CliResult r = Cli(IngestArgs(dir, store, "second") + " --token-ids " + dir.Sub("short.npy"));
  EXPECT_EQ(r.code, 3);
  EXPECT_NE(r.err.find("short.npy: shape [49] is not [tokens=50]"), std::string::npos) << r.err;
  r = Cli(IngestArgs(dir, store, "second") + " --token-ids " + dir.Sub("second_k.npy"));
  EXPECT_EQ(r.code, 3);
  EXPECT_NE(r.err.find("expected integers"), std::string::npos) << r.err;
  r = Cli(IngestArgs(dir, store, "second") + " --text " + dir.Sub("text.txt") + " --token-spans " +
          dir.Sub("ids.npy"));
  EXPECT_EQ(r.code, 3);
  EXPECT_NE(r.err.find("is not [tokens=50, 2]"), std::string::npos) << r.err;
  EXPECT_EQ(Cli("docs show " + store + " second").code, 4) << "nothing was ingested by the refused commands";
  r = Cli(IngestArgs(dir, store, "second") + tokens_args);
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("with token ids, with text and token spans"), std::string::npos) << r.out;

  // Block 1 of "second" = stream block 4, KV head 1: tokens 16..31 of the
  // document, 56..71 of the stream (after the 40 of "first").
  r = Cli("inspect " + store + " --doc second --block-in-doc 1 --kv-head 1 --json");
  ASSERT_EQ(r.code, 0) << r.err;
  const nlohmann::json j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j["block"], 4);
  EXPECT_EQ(j["kv_head"], 1);
  EXPECT_EQ(j["tokens"], 16);
  EXPECT_EQ(j["codec"], "f16");
  EXPECT_EQ(j["record"]["format_version"], 1);
  EXPECT_EQ(j["record"]["block"], 4);
  EXPECT_EQ(j["record"]["kv_head"], 1);
  EXPECT_EQ(j["record"]["checksum"], j["checksum"]);
  // 64-bit checksums are hex strings (16 digits, as the text output shows
  // them): a JSON number would lose bits in jq and other double-based parsers.
  ASSERT_TRUE(j["checksum"].is_string()) << j.dump();
  const std::string checksum = j["checksum"].get<std::string>();
  EXPECT_EQ(checksum.size(), 16u) << checksum;
  EXPECT_EQ(checksum.find_first_not_of("0123456789abcdef"), std::string::npos) << checksum;
  EXPECT_EQ(j["record_ok"], true);
  EXPECT_EQ(j["raw_bytes"], 2 * 16 * 32 * 2);
  EXPECT_EQ(j["stored_bytes"].get<uint64_t>(), 64 + j["record"]["payload_bytes"].get<uint64_t>());
  EXPECT_EQ(j["document"]["name"], "second");
  EXPECT_EQ(j["block_in_doc"], 1);
  EXPECT_EQ(j["doc_positions"], nlohmann::json::array({16, 32}));
  EXPECT_EQ(j["stream_positions"], nlohmann::json::array({56, 72}));
  std::vector<int> expected_ids;
  for (int i = 16; i < 32; ++i) expected_ids.push_back(500 + i);
  EXPECT_EQ(j["token_ids"].get<std::vector<int>>(), expected_ids);
  EXPECT_EQ(j["text"], text.substr(spans[32], spans[63] - spans[32]));
  EXPECT_EQ(j["text"].get<std::string>().substr(0, 7), "t16 t17");
  EXPECT_TRUE(fs::exists(j["segment_file"].get<std::string>()));

  // The same block by its number, as text.
  r = Cli("inspect " + store + " --layer 0 --kv-head 1 --block 4");
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("format version 1, codec f16"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("checksum " + checksum + "\n"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("tokens 16..31 of the document, 56..71 of the stream"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("token ids     516 517"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("\"t16 t17"), std::string::npos) << r.out;
  // A document ingested without tokens says so.
  r = Cli("inspect " + store + " --block 0");
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("token ids     not stored"), std::string::npos) << r.out;

  // Not found (4), bad usage (2), out of range (3).
  EXPECT_EQ(Cli("inspect " + store + " --block 7").code, 4);
  EXPECT_EQ(Cli("inspect " + store + " --doc nosuch --block-in-doc 0").code, 4);
  EXPECT_EQ(Cli("inspect " + store + " --doc second --block-in-doc 4").code, 4);
  EXPECT_EQ(Cli("inspect " + store).code, 2);
  EXPECT_EQ(Cli("inspect " + store + " --block 1 --doc second --block-in-doc 0").code, 2);
  EXPECT_EQ(Cli("inspect " + store + " --kv-head 2 --block 0").code, 3);
  EXPECT_EQ(Cli("inspect " + dir.Sub("nothing") + " --block 0").code, 4);

  // A flipped payload byte: inspect shows the damage and exits 5, as verify does.
  const uint64_t offset = j["offset"].get<uint64_t>() + 64 + 5;
  {
    std::fstream f(j["segment_file"].get<std::string>(), std::ios::in | std::ios::out | std::ios::binary);
    f.seekg(static_cast<std::streamoff>(offset));
    char c = 0;
    f.read(&c, 1);
    c ^= 0x5a;
    f.seekp(static_cast<std::streamoff>(offset));
    f.write(&c, 1);
    ASSERT_TRUE(f.good());
  }
  r = Cli("inspect " + store + " --kv-head 1 --block 4 --json");
  EXPECT_EQ(r.code, 5) << r.err;
  const nlohmann::json bad = nlohmann::json::parse(r.out);
  EXPECT_EQ(bad["record_ok"], false);
  EXPECT_NE(bad["record_error"].get<std::string>().find("checksum"), std::string::npos) << bad.dump();
  // verify names both checksums in hex, the catalog's as inspect showed it.
  r = Cli("verify " + store);
  EXPECT_EQ(r.code, 5);
  EXPECT_NE(r.out.find(", catalog " + checksum + ")"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find(" documents checked, 1 problem\n"), std::string::npos) << r.out;
  r = Cli("verify " + store + " --json");
  EXPECT_EQ(r.code, 5);
  const nlohmann::json v = nlohmann::json::parse(r.out);
  ASSERT_EQ(v["problems"].size(), 1u) << r.out;
  EXPECT_NE(v["problems"][0].get<std::string>().find("checksum mismatch (payload "), std::string::npos) << r.out;
  EXPECT_NE(v["problems"][0].get<std::string>().find(", catalog " + checksum + ")"), std::string::npos) << r.out;
}

// The queries: row 0 points along the needle direction (KV head 0's query
// heads), row 1 is noise.
void WriteQueries(const std::string& path, const std::vector<float>& direction) {
  std::vector<float> q = msa::testing::RandomVector(2 * 4 * kHeadDim, 77, 0.1f);  // [2, 4 heads, 32]
  for (int h = 0; h < 2; ++h) {
    for (uint32_t c = 0; c < kHeadDim; ++c) q[h * kHeadDim + c] = 4.0f * direction[c];
  }
  ASSERT_TRUE(formats::WriteNpyFloat32(path, {2, 4, kHeadDim}, q.data()).ok());
}

TEST(ExplainCliTest, RoutedBlocksBestFirstWithScoresThenForcedSinkAndRecent) {
  for (const std::string summary : {"mean", "hybrid"}) {
    SCOPED_TRACE(summary);
    TempDir dir;
    const std::string store = Create(dir, "--summary " + summary);
    std::vector<float> direction = msa::testing::RandomVector(kHeadDim, 5);
    float norm = 0;
    for (float x : direction) norm += x * x;
    for (float& x : direction) x /= std::sqrt(norm);
    WriteDoc(dir.path(), "a", 100, 11);                // blocks 0..6
    WriteDoc(dir.path(), "b", 100, 12, 3, direction);  // blocks 7..13; the needle is block 10
    WriteDoc(dir.path(), "c", 100, 13);                // blocks 14..20
    for (const char* name : {"a", "b", "c"}) ASSERT_EQ(Cli(IngestArgs(dir, store, name)).code, 0);
    WriteQueries(dir.Sub("q.npy"), direction);
    const std::string query = "query " + store + " --layer 0 --queries " + dir.Sub("q.npy") + " --out " + dir.Sub("o.npy");
    CliResult r = Cli(query + " --top-k 3 --explain --json");
    ASSERT_EQ(r.code, 0) << r.err;
    const nlohmann::json j = nlohmann::json::parse(r.out);
    ASSERT_EQ(j["explain"].size(), 4u) << "2 rows x 2 KV heads";

    // The blocks Attend read, to compare with.
    StoreOptions so;
    so.read_only = true;
    auto opened = Store::Open(store, so);
    ASSERT_TRUE(opened.ok());
    auto q = formats::ReadNpy(dir.Sub("q.npy"));
    ASSERT_TRUE(q.ok());
    AttendOptions ao;
    ao.top_k = 3;
    std::vector<float> out(2 * 4 * kHeadDim);
    std::vector<std::vector<uint64_t>> selected;
    ASSERT_TRUE((*opened)->Attend(0, reinterpret_cast<const float*>(q->data.data()), 2, 4, ao, out.data(),
                                  nullptr, nullptr, &selected).ok());
    for (size_t i = 0; i < 4; ++i) {
      const nlohmann::json& e = j["explain"][i];
      EXPECT_EQ(e["row"], i / 2);
      EXPECT_EQ(e["kv_head"], i % 2);
      EXPECT_EQ(e["q_heads"], nlohmann::json::array({(i % 2) * 2, (i % 2) * 2 + 2}));
      std::vector<uint64_t> blocks;
      int routed = 0;
      std::map<std::string, double> last_score{{"bound", INFINITY}, {"mean", INFINITY}};
      bool seen_forced_only = false;
      for (const auto& b : e["blocks"]) {
        blocks.push_back(b["block"]);
        if (!b["rank"].is_null()) {
          EXPECT_FALSE(seen_forced_only) << "routed blocks come first";
          EXPECT_EQ(b["rank"], ++routed);
          // Best first within each ranking (hybrid alternates bound and mean).
          const std::string by = b["scored_by"];
          EXPECT_EQ(by, summary == "mean" ? "mean" : routed % 2 == 1 ? "bound" : "mean") << b.dump();
          EXPECT_LE(b["score"].get<double>(), last_score[by]) << "best first: " << e.dump();
          last_score[by] = b["score"].get<double>();
        } else {
          seen_forced_only = true;
          EXPECT_TRUE(b["forced"].get<bool>());
        }
        const std::string why = b["why"];
        EXPECT_EQ(why.find("sink") != std::string::npos, b["block"] == 0) << b.dump();
        EXPECT_EQ(why.find("recent") != std::string::npos, b["block"] == 20) << b.dump();
        const uint64_t block = b["block"];
        EXPECT_EQ(b["doc"], block < 7 ? "a" : block < 14 ? "b" : "c");
        EXPECT_EQ(b["doc_tokens"][0], (block % 7) * 16);
      }
      EXPECT_EQ(routed, 3);
      std::sort(blocks.begin(), blocks.end());
      EXPECT_EQ(blocks, selected[i]) << "the explanation is of the blocks the query read";
    }
    // Row 0, KV head 0: the needle block is the router's first pick.
    EXPECT_EQ(j["explain"][0]["blocks"][0]["block"], 10) << j["explain"][0].dump();
    EXPECT_EQ(j["explain"][0]["blocks"][0]["doc_tokens"], nlohmann::json::array({48, 64}));

    // Text: one header per (row, KV head) and a line per block.
    r = Cli(query + " --top-k 3 --explain");
    ASSERT_EQ(r.code, 0) << r.err;
    EXPECT_NE(r.out.find("row 0 kv-head 0 (query heads 0..1): 5 blocks"), std::string::npos) << r.out;
    EXPECT_NE(r.out.find("routed"), std::string::npos);
    EXPECT_NE(r.out.find("sink"), std::string::npos);
    EXPECT_NE(r.out.find(" 2 b      "), std::string::npos) << "document id and name:\n" << r.out;
    // Exact mode: every block, each "all".
    r = Cli(query + " --exact --explain --json");
    ASSERT_EQ(r.code, 0) << r.err;
    const nlohmann::json exact = nlohmann::json::parse(r.out);
    ASSERT_EQ(exact["explain"][3]["blocks"].size(), 21u);
    EXPECT_EQ(exact["explain"][3]["blocks"][5]["why"], "all");
    EXPECT_TRUE(exact["explain"][3]["blocks"][5]["score"].is_null());
    // Where it attends: --gpu off stays on the CPU; require fails, naming
    // the GPU or CUDA, on a machine without one (and runs there on one).
    r = Cli(query + " --top-k 3 --gpu off --json");
    ASSERT_EQ(r.code, 0) << r.err;
    EXPECT_FALSE(nlohmann::json::parse(r.out)["on_gpu"].get<bool>());
    r = Cli(query + " --top-k 3 --gpu require --json");
    if (attention::CudaAvailable()) {
      ASSERT_EQ(r.code, 0) << r.err;
      EXPECT_TRUE(nlohmann::json::parse(r.out)["on_gpu"].get<bool>());
    } else {
      EXPECT_NE(r.code, 0);
      EXPECT_TRUE(r.err.find("GPU") != std::string::npos || r.err.find("CUDA") != std::string::npos) << r.err;
    }
    EXPECT_EQ(Cli(query + " --gpu sometimes").code, 2) << "not one of auto, off, require";
    // Routing switches: exact scoring, or a channel count.
    EXPECT_EQ(Cli(query + " --top-k 3 --exact-routing").code, 0);
    EXPECT_EQ(Cli(query + " --top-k 3 --channels 4").code, 0);
  }
}

TEST(CliSurfaceTest, ExitCodesHelpExamplesAndQuietProgressOffTerminal) {
  TempDir dir;
  // 2: bad usage (CLI11 parse errors and bad option combinations).
  EXPECT_EQ(Cli("stats").code, 2);
  EXPECT_EQ(Cli("stats " + dir.Sub("s") + " --no-such-option").code, 2);
  EXPECT_EQ(Cli("nosuchcommand").code, 2);
  EXPECT_EQ(Cli("ingest " + dir.Sub("s") + " --doc x").code, 2);
  // 3: bad input.
  CliResult r = Cli("create " + dir.Sub("s") + " --layers 1 --kv-heads 1 --head-dim 32 --codec zip");
  EXPECT_EQ(r.code, 3);
  EXPECT_NE(r.err.find("zip"), std::string::npos) << r.err;
  // 4: not found.
  r = Cli("stats " + dir.Sub("nothing"));
  EXPECT_EQ(r.code, 4);
  EXPECT_NE(r.err.find(dir.Sub("nothing")), std::string::npos) << r.err;
  // `msa --help` lists the exit codes; every subcommand's help has an example.
  r = Cli("--help");
  EXPECT_EQ(r.code, 0);
  EXPECT_NE(r.out.find("Exit codes: 0 ok, 1 other failure, 2 bad usage, 3 bad input"), std::string::npos) << r.out;
  for (const std::string cmd : {"create", "ingest", "query", "stats", "verify", "synth", "eval", "docs", "docs list",
                                "docs show", "docs delete", "compact", "inspect"}) {
    r = Cli(cmd + " --help");
    EXPECT_EQ(r.code, 0) << cmd;
    EXPECT_NE(r.out.find("Example"), std::string::npos) << cmd << ":\n" << r.out;
    // Every option says what it is for: CLI11 prints "--name TYPE=default"
    // then the description on the same line; a line of the name, type and
    // default alone is an option without one.
    static const std::regex bare(R"(^  +-[-,\w]*( [A-Z]+)?(=\S*| \[[^\]]*\])?( REQUIRED)?$)");
    std::istringstream lines(r.out);
    for (std::string line; std::getline(lines, line);) {
      line.erase(line.find_last_not_of(' ') + 1);
      EXPECT_FALSE(std::regex_match(line, bare)) << cmd << ": option without a description: '" << line << "'";
    }
  }
  EXPECT_NE(Cli("ingest --help").out.find("bfloat16"), std::string::npos) << "ingest takes BF16 safetensors";
  // --json on the commands that report; the progress line stays off a
  // non-terminal stderr (the harness redirects it to a file).
  const std::string store = dir.Sub("s");
  r = Cli("create " + store + " --layers 1 --kv-heads 2 --head-dim 32 --block-tokens 16 --json");
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(nlohmann::json::parse(r.out)["codec"], "f16");
  WriteDoc(dir.path(), "d", 300, 3);
  r = Cli(IngestArgs(dir, store, "d") + " --json");
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(nlohmann::json::parse(r.out)["tokens"], 300);
  EXPECT_EQ(r.err, "");
  // The log: quiet by default, --log-level before or after the subcommand.
  r = Cli("stats " + store);
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(r.err, "");
  for (const std::string args : {"--log-level info stats " + store, "stats " + store + " --log-level info"}) {
    r = Cli(args);
    ASSERT_EQ(r.code, 0) << args << ": " << r.err;
    EXPECT_NE(r.err.find("[info] opened"), std::string::npos) << args << ": " << r.err;
  }
  EXPECT_EQ(Cli("--log-level loud stats " + store).code, 2);
  r = Cli("verify " + store + " --json");
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(nlohmann::json::parse(r.out)["blocks_checked"], 2 * 19);
  EXPECT_EQ(r.err, "") << "no progress line into a file";
  r = Cli("compact " + store + " --json");
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(r.err, "");
  // 3: a name already taken.
  EXPECT_EQ(Cli(IngestArgs(dir, store, "d")).code, 3);
  r = Cli("synth " + dir.Sub("corpus") + " --layers 1 --kv-heads 1 --q-heads 2 --head-dim 32 --tokens 256 --docs 2 "
          "--queries 2 --json");
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(nlohmann::json::parse(r.out)["documents"], 2);
  EXPECT_EQ(nlohmann::json::parse(r.out)["bytes_written"], 2 * 256 * 32 * 2);
  EXPECT_EQ(r.err, "");
}

// On a terminal the progress line appears (blocks, MB/s, ETA), and ends
// with a newline before the command's own output.
TEST(CliSurfaceTest, ProgressLineOnATerminal) {
  if (std::system("script --version >/dev/null 2>&1") != 0) {
    GTEST_SKIP() << "util-linux `script` is not installed: no pseudo-terminal to run msa on";
  }
  TempDir dir;
  const std::string store = Create(dir);
  WriteDoc(dir.path(), "d", 300, 3);
  ASSERT_EQ(Cli(IngestArgs(dir, store, "d")).code, 0);
  const std::string log = dir.Sub("tty.log");
  const std::string cmd = "script -qec '" + std::string(MSA_CLI_PATH) + " verify " + store + "' /dev/null > " + log;
  ASSERT_EQ(std::system(cmd.c_str()), 0);
  std::ifstream f(log);
  std::string out;
  std::getline(f, out, '\0');
  EXPECT_NE(out.find("verify: 38 / 38 blocks (100%)"), std::string::npos) << out;
  EXPECT_NE(out.find("MB/s, ETA"), std::string::npos) << out;
  EXPECT_NE(out.find("\n" + store + ": 38 blocks and 1 document checked, 0 problems"), std::string::npos) << out;
}

}  // namespace
}  // namespace msa
