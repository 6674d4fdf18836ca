// Bulk ingest through the CLI (issue 7): `msa ingest --dir` resumes after an
// interruption without duplicating a document, a bad shard fails naming its
// file and leaves what was committed intact, `--stdin` streams raw
// documents, and `msa synth --into-store` builds the same store as files +
// ingest, resuming the same way.
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "attention/half.h"
#include "store/store.h"
#include "cli_runner.h"
#include "test_util.h"

namespace msa {
namespace {

using msa::testing::Cli;
using msa::testing::CliResult;
using msa::testing::TempDir;
namespace fs = std::filesystem;

// A small corpus: 1 layer, 1 KV head, head dim 32, `docs` documents.
const char kGeometry[] = " --layers 1 --kv-heads 1 --head-dim 32";
void Synth(const std::string& dir, int docs, int tokens_per_doc, const std::string& extra = "") {
  const CliResult r = Cli("synth " + dir + kGeometry + " --q-heads 2 --queries 4 --tokens " +
                          std::to_string(docs * tokens_per_doc) + " --doc-tokens " + std::to_string(tokens_per_doc) +
                          " " + extra);
  ASSERT_EQ(r.code, 0) << r.err;
}
void Create(const std::string& store) {
  const CliResult r = Cli("create " + store + kGeometry + " --block-tokens 16");
  ASSERT_EQ(r.code, 0) << r.err;
}

// The store's documents in stream order.
std::vector<DocumentRecord> Documents(const std::string& path) {
  StoreOptions options;
  options.read_only = true;
  auto store = Store::Open(path, options);
  EXPECT_TRUE(store.ok()) << store.status().ToString();
  if (!store.ok()) return {};
  auto docs = (*store)->ListDocuments();
  EXPECT_TRUE(docs.ok());
  std::sort(docs->begin(), docs->end(), [](const auto& a, const auto& b) { return a.first_block < b.first_block; });
  return *docs;
}

std::vector<std::string> Names(const std::vector<DocumentRecord>& docs) {
  std::vector<std::string> names;
  for (const auto& d : docs) names.push_back(d.name);
  return names;
}

std::vector<std::string> DocNames(int n) {
  std::vector<std::string> names;
  for (int i = 0; i < n; ++i) names.push_back("doc_" + std::to_string(i));
  return names;
}

// Every committed token of the store's one stream, keys then values.
std::vector<float> Contents(const std::string& path) {
  StoreOptions options;
  options.read_only = true;
  auto store = Store::Open(path, options);
  EXPECT_TRUE(store.ok());
  std::vector<float> k, v;
  EXPECT_TRUE((*store)->ReadStream(0, 0, &k, &v).ok());
  k.insert(k.end(), v.begin(), v.end());
  return k;
}

void LinkShard(const std::string& from, const std::string& to, int doc) {
  for (const char* half : {"_keys.npy", "_values.npy"}) {
    const std::string name = "doc_" + std::to_string(doc) + half;
    fs::copy_file(from + "/" + name, to + "/" + name);
  }
}

bool Verified(const std::string& store) { return Cli("verify " + store).code == 0; }

TEST(CliIngest, DirectoryResumesWithoutDuplicates) {
  TempDir dir;
  const std::string corpus = dir.Sub("corpus"), partial = dir.Sub("partial"), store = dir.Sub("store");
  Synth(corpus, 12, 100);  // doc_0 .. doc_11: natural order puts doc_2 before doc_10
  Create(store);
  // An interrupted run: only the first shards had arrived (or been reached).
  fs::create_directory(partial);
  for (int i = 0; i < 5; ++i) LinkShard(corpus, partial, i);
  CliResult r = Cli("ingest " + store + " --dir " + partial + " --commit-docs 2");
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(Names(Documents(store)), std::vector<std::string>(DocNames(5)));
  // The same command over the whole directory continues after doc_4.
  r = Cli("ingest " + store + " --dir " + corpus + " --commit-docs 2 --json");
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("\"skipped\": 5"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("\"documents\": 7"), std::string::npos) << r.out;
  // And once more: nothing to do, nothing duplicated.
  r = Cli("ingest " + store + " --dir " + corpus);
  ASSERT_EQ(r.code, 0) << r.err;
  const auto docs = Documents(store);
  EXPECT_EQ(Names(docs), DocNames(12));
  for (const auto& d : docs) EXPECT_EQ(d.tokens, 100u);
  EXPECT_TRUE(Verified(store));
  // Bit for bit what one uninterrupted run builds.
  const std::string whole = dir.Sub("whole");
  Create(whole);
  ASSERT_EQ(Cli("ingest " + whole + " --dir " + corpus).code, 0);
  EXPECT_EQ(Contents(store), Contents(whole));
  // Progress goes to a terminal only: none in a redirected stderr.
  EXPECT_EQ(r.err, "");
}

// --dir reuses its document buffers from shard to shard: shards of
// different sizes in turn (smaller after larger and back) land exactly as
// one `msa ingest --doc` per file puts them, in both codecs' stores.
TEST(CliIngest, DirectoryOfUnevenShardsMatchesOneIngestPerFile) {
  TempDir dir;
  const std::string big = dir.Sub("big"), small = dir.Sub("small"), mixed = dir.Sub("mixed");
  Synth(big, 3, 300);
  Synth(small, 3, 37, "--seed 5");
  fs::create_directory(mixed);
  for (int i = 0; i < 6; ++i) {
    const std::string from = (i % 2 == 0 ? big : small) + "/doc_" + std::to_string(i / 2);
    for (const char* half : {"_keys.npy", "_values.npy"}) {
      fs::copy_file(from + half, mixed + "/doc_" + std::to_string(i) + half);
    }
  }
  for (const char* codec : {"f16", "int8"}) {
    SCOPED_TRACE(codec);
    const std::string by_dir = dir.Sub(std::string("dir_") + codec), by_file = dir.Sub(std::string("file_") + codec);
    for (const std::string& store : {by_dir, by_file}) {
      ASSERT_EQ(Cli("create " + store + kGeometry + " --block-tokens 16 --codec " + codec).code, 0);
    }
    CliResult r = Cli("ingest " + by_dir + " --dir " + mixed + " --commit-docs 4");
    ASSERT_EQ(r.code, 0) << r.err;
    for (int i = 0; i < 6; ++i) {
      const std::string base = mixed + "/doc_" + std::to_string(i);
      r = Cli("ingest " + by_file + " --doc doc_" + std::to_string(i) + " --keys " + base + "_keys.npy --values " +
              base + "_values.npy");
      ASSERT_EQ(r.code, 0) << r.err;
    }
    EXPECT_EQ(Names(Documents(by_dir)), DocNames(6));
    const auto docs = Documents(by_dir);
    for (int i = 0; i < 6; ++i) EXPECT_EQ(docs[i].tokens, i % 2 == 0 ? 300u : 37u);
    EXPECT_EQ(Contents(by_dir), Contents(by_file));
    EXPECT_TRUE(Verified(by_dir));
  }
}

TEST(CliIngest, BadShardFailsNamingItAndKeepsCommittedDocuments) {
  TempDir dir;
  const std::string corpus = dir.Sub("corpus"), store = dir.Sub("store");
  Synth(corpus, 5, 100);
  Create(store);
  const std::string bad = corpus + "/doc_2_keys.npy", saved = dir.Sub("saved.npy");
  fs::copy_file(bad, saved);
  fs::resize_file(bad, fs::file_size(bad) - 100);  // truncated mid-data
  // doc_0 and doc_1 are staged (not yet a batch of 10) when doc_2 fails: they
  // are committed before the error is reported.
  CliResult r = Cli("ingest " + store + " --dir " + corpus + " --commit-docs 10");
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.err.find("doc_2_keys.npy"), std::string::npos) << r.err;
  EXPECT_EQ(Names(Documents(store)), DocNames(2));
  EXPECT_TRUE(Verified(store));
  // A shard whose shape does not fit the store also names its file.
  fs::remove(bad);
  const CliResult other = Cli("synth " + dir.Sub("wide") + " --layers 1 --kv-heads 1 --head-dim 16 --q-heads 2 "
                              "--queries 1 --tokens 100 --docs 1");
  ASSERT_EQ(other.code, 0) << other.err;
  fs::copy_file(dir.Sub("wide/doc_0_keys.npy"), bad);
  r = Cli("ingest " + store + " --dir " + corpus);
  EXPECT_EQ(r.code, 3) << r.err;
  EXPECT_NE(r.err.find("doc_2_keys.npy"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("does not match"), std::string::npos) << r.err;
  EXPECT_EQ(Names(Documents(store)), DocNames(2));
  // Repaired, the same command finishes the job.
  fs::remove(bad);
  fs::copy_file(saved, bad);
  r = Cli("ingest " + store + " --dir " + corpus);
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(Names(Documents(store)), DocNames(5));
  EXPECT_TRUE(Verified(store));
}

TEST(CliIngest, DirectoryThatDoesNotAddUpIsRefusedBeforeAnything) {
  TempDir dir;
  const std::string corpus = dir.Sub("corpus"), store = dir.Sub("store");
  Synth(corpus, 3, 64);
  Create(store);
  fs::remove(corpus + "/doc_1_values.npy");
  CliResult r = Cli("ingest " + store + " --dir " + corpus);
  EXPECT_EQ(r.code, 3);
  EXPECT_NE(r.err.find("doc_1_keys.npy has no doc_1_values.npy"), std::string::npos) << r.err;
  EXPECT_TRUE(Documents(store).empty());
  EXPECT_EQ(Cli("ingest " + store + " --dir " + dir.Sub("missing")).code, 4);
  EXPECT_EQ(Cli("ingest " + store + " --dir " + corpus + " --doc x --keys y").code, 2);
  EXPECT_EQ(Cli("ingest " + store).code, 2);
}

TEST(CliIngest, StdinStreamsRawDocumentsAndResumes) {
  TempDir dir;
  const std::string store = dir.Sub("store"), raw = dir.Sub("raw.bin");
  Create(store);
  // 2.5 documents of 40 tokens: each is K then V, [1, 1, T, 32] fp16.
  const int d = 32;
  std::vector<uint16_t> bytes;
  const std::vector<int> tokens = {40, 40, 20};
  std::vector<float> expected_keys;
  for (size_t doc = 0; doc < tokens.size(); ++doc) {
    for (int half = 0; half < 2; ++half) {
      const auto x = msa::testing::RandomVector(static_cast<size_t>(tokens[doc]) * d, 100 + doc * 2 + half);
      std::vector<uint16_t> h(x.size());
      attention::FloatToHalfArray(x.data(), h.data(), x.size());
      bytes.insert(bytes.end(), h.begin(), h.end());
      if (half == 0) {
        for (uint16_t b : h) expected_keys.push_back(attention::HalfToFloat(b));
      }
    }
  }
  {
    std::ofstream f(raw, std::ios::binary);
    f.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size() * 2));
  }
  CliResult r = Cli("ingest " + store + " --stdin --doc-tokens 40 --prefix s --commit-docs 1", raw);
  ASSERT_EQ(r.code, 0) << r.err;
  auto docs = Documents(store);
  ASSERT_EQ(Names(docs), (std::vector<std::string>{"s_00000000", "s_00000001", "s_00000002"}));
  EXPECT_EQ(docs[2].tokens, 20u);
  const std::vector<float> contents = Contents(store);
  EXPECT_TRUE(std::equal(expected_keys.begin(), expected_keys.end(), contents.begin()));
  // The same stream again: all three are there already.
  r = Cli("ingest " + store + " --stdin --doc-tokens 40 --prefix s --json", raw);
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("\"skipped\": 3"), std::string::npos) << r.out;
  EXPECT_EQ(Documents(store).size(), 3u);
  // A stream cut inside a token: the whole documents before it are kept.
  fs::resize_file(raw, 2 * 2 * 40 * d * 2 + 100);
  r = Cli("ingest " + store + " --stdin --doc-tokens 40 --prefix t --commit-docs 10", raw);
  EXPECT_EQ(r.code, 3);
  EXPECT_NE(r.err.find("stdin: the stream ends 100 bytes into document 2"), std::string::npos) << r.err;
  EXPECT_EQ(Documents(store).size(), 5u);
  EXPECT_EQ(Cli("ingest " + store + " --stdin --prefix u", raw).code, 3);  // no --doc-tokens
  EXPECT_TRUE(Verified(store));
}

TEST(CliIngest, SynthIntoStoreMatchesFilesAndResumes) {
  TempDir dir;
  const std::string opts = " --needle-span 2 --needle-strength 12";
  Synth(dir.Sub("files"), 6, 80, opts);
  const std::string from_files = dir.Sub("from_files");
  Create(from_files);
  ASSERT_EQ(Cli("ingest " + from_files + " --dir " + dir.Sub("files")).code, 0);
  // Streamed into a store that already holds the first two documents (an
  // interrupted earlier run): it continues, and ends up identical.
  const std::string streamed = dir.Sub("streamed"), first = dir.Sub("first");
  Create(streamed);
  fs::create_directory(first);
  for (int i = 0; i < 2; ++i) LinkShard(dir.Sub("files"), first, i);
  ASSERT_EQ(Cli("ingest " + streamed + " --dir " + first).code, 0);
  CliResult r = Cli("synth " + dir.Sub("side") + kGeometry + " --q-heads 2 --queries 4 --tokens 480 --doc-tokens 80" +
                    opts + " --into-store " + streamed + " --commit-docs 2 --json");
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("\"skipped\": 2"), std::string::npos) << r.out;
  EXPECT_EQ(Names(Documents(streamed)), DocNames(6));
  EXPECT_EQ(Contents(streamed), Contents(from_files));
  for (const char* side : {"queries.npy", "needles.json"}) {
    std::ifstream a(dir.Sub("files/") + side), b(dir.Sub("side/") + side);
    std::string sa, sb;
    std::getline(a, sa, '\0');
    std::getline(b, sb, '\0');
    EXPECT_EQ(sa, sb) << side;
  }
  // A store holding anything else is refused: needle positions would be off.
  r = Cli("synth " + dir.Sub("side2") + kGeometry + " --q-heads 2 --tokens 400 --doc-tokens 100 --into-store " +
          streamed);
  EXPECT_EQ(r.code, 3);
  EXPECT_NE(r.err.find("needle positions would not match"), std::string::npos) << r.err;
  // So is a store of another geometry.
  r = Cli("synth " + dir.Sub("side3") + " --layers 1 --kv-heads 1 --head-dim 16 --q-heads 2 --tokens 400 "
          "--into-store " + streamed);
  EXPECT_EQ(r.code, 3);
}

TEST(CliIngest, SynthFastRngIsDeterministicWithTheSameNeedles) {
  TempDir dir;
  std::vector<std::vector<float>> contents;
  for (const char* name : {"a", "b"}) {
    const std::string store = dir.Sub(name);
    Create(store);
    const CliResult r = Cli("synth " + dir.Sub(std::string(name) + "_side") + kGeometry +
                            " --q-heads 2 --queries 4 --tokens 1000 --doc-tokens 300 --rng fast --key-shift 1 "
                            "--outlier-channels 2 --into-store " + store);
    ASSERT_EQ(r.code, 0) << r.err;
    contents.push_back(Contents(store));
  }
  EXPECT_EQ(contents[0], contents[1]);
  ASSERT_EQ(contents[0].size(), 2u * 1000 * 32);
  // Roughly N(0, 1) values (keys are shifted and scaled, so look at values).
  double sum = 0, sq = 0;
  for (size_t i = 1000 * 32; i < contents[0].size(); ++i) {
    sum += contents[0][i];
    sq += contents[0][i] * contents[0][i];
  }
  const double n = 1000.0 * 32, mean = sum / n, var = sq / n - mean * mean;
  EXPECT_NEAR(mean, 0.0, 0.03);
  EXPECT_NEAR(var, 1.0, 0.05);
  // Queries and needles do not depend on the noise source.
  Synth(dir.Sub("mt"), 4, 250);
  Synth(dir.Sub("fast"), 4, 250, "--rng fast");
  std::ifstream a(dir.Sub("mt/needles.json")), b(dir.Sub("fast/needles.json"));
  std::string sa, sb;
  std::getline(a, sa, '\0');
  std::getline(b, sb, '\0');
  EXPECT_EQ(sa, sb);
}

}  // namespace
}  // namespace msa
