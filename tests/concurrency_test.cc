// Queries while ingesting: Store::Attend (exact and top-k), ReadStream and
// Stats from several threads while one thread appends and commits; exact
// queries while one thread deletes and compacts; exact and top-k queries
// while one thread appends, deletes and compacts, interleaved.
//
// Every answer must equal a dense float64 reference over a committed
// snapshot. The documents are only ever appended, so a snapshot is a prefix
// of the document sequence, i.e. a block count B at a document boundary.
// Attend reports the blocks it chose (`selected`): in exact mode they are
// 0..B-1, in top-k mode they include B-1 (the most recent block, always
// chosen), so B is known exactly, and it must lie between the block counts
// Stats() gave just before and just after the call. The reference is then
// computed over exactly the chosen blocks' tokens. Run under ThreadSanitizer
// (tools/test_sanitizers.sh) this is also the data-race test of the query
// path against the commit path.
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <functional>
#include <cmath>
#include <cstdio>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "attention/half.h"
#include "store/store.h"
#include "test_util.h"

namespace msa {
namespace {

using msa::testing::TempDir;

constexpr uint32_t kKvHeads = 2, kHeadDim = 16, kBlockTokens = 8;
constexpr uint32_t kQHeads = 4;  // GQA: 2 query heads per KV head

// The stores of these tests: one layer of kKvHeads streams.
Geometry TestGeometry() {
  Geometry g;
  g.layers = 1;
  g.kv_heads = kKvHeads;
  g.head_dim = kHeadDim;
  g.block_tokens = kBlockTokens;
  return g;
}
constexpr uint32_t kRows = 2;
constexpr int kDocs = 24;
constexpr int kReaders = 3;
constexpr int kQueriesAfterIngest = 10;  // per reader, once every document is visible

// Everything the writer will ingest, made before any thread starts (so the
// readers may read it without synchronisation), and its block layout.
struct Corpus {
  // Per document: fp16 bits [kv_heads, tokens, head_dim] for K and V (one layer).
  std::vector<std::vector<uint16_t>> keys, values;
  std::vector<uint64_t> tokens;
  // The concatenated streams as float: stream_keys[kv][t * head_dim + c].
  std::vector<std::vector<float>> stream_keys, stream_values;
  // Per block: its first token in the stream and its length.
  std::vector<uint64_t> block_start, block_len;
  // Block counts at document boundaries: 0, after doc 0, after doc 1, ...
  std::vector<uint64_t> boundaries;
};

Corpus MakeCorpus(uint64_t seed, int docs = kDocs) {
  Corpus c;
  c.stream_keys.resize(kKvHeads);
  c.stream_values.resize(kKvHeads);
  c.boundaries.push_back(0);
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  uint64_t stream_tokens = 0;
  for (int d = 0; d < docs; ++d) {
    const uint64_t tokens = 1 + rng() % 29;  // partial last blocks on purpose
    c.tokens.push_back(tokens);
    std::vector<uint16_t> k(kKvHeads * tokens * kHeadDim), v(k.size());
    for (size_t i = 0; i < k.size(); ++i) {
      k[i] = attention::FloatToHalf(normal(rng));
      v[i] = attention::FloatToHalf(normal(rng));
    }
    for (uint32_t kv = 0; kv < kKvHeads; ++kv) {
      for (size_t i = 0; i < tokens * kHeadDim; ++i) {
        c.stream_keys[kv].push_back(attention::HalfToFloat(k[kv * tokens * kHeadDim + i]));
        c.stream_values[kv].push_back(attention::HalfToFloat(v[kv * tokens * kHeadDim + i]));
      }
    }
    for (uint64_t t = 0; t < tokens; t += kBlockTokens) {
      c.block_start.push_back(stream_tokens + t);
      c.block_len.push_back(std::min<uint64_t>(kBlockTokens, tokens - t));
    }
    stream_tokens += tokens;
    c.boundaries.push_back(c.block_start.size());
    c.keys.push_back(std::move(k));
    c.values.push_back(std::move(v));
  }
  return c;
}

// The answer against the float64 reference over each (row, KV head)'s
// chosen blocks. Returns "" or what is wrong.
std::string CompareWithReference(const Corpus& c, const std::vector<float>& q,
                                 const std::vector<float>& out, const std::vector<float>& lse,
                                 const std::vector<std::vector<uint64_t>>& selected) {
  for (uint32_t i = 0; i < kRows; ++i) {
    for (uint32_t kv = 0; kv < kKvHeads; ++kv) {
      const std::vector<uint64_t>& sel = selected[i * kKvHeads + kv];
      if (sel.empty()) continue;
      // The chosen blocks' tokens, in the stream of this KV head.
      std::vector<float> k, v;
      for (uint64_t blk : sel) {
        const size_t from = c.block_start[blk] * kHeadDim, n = c.block_len[blk] * kHeadDim;
        k.insert(k.end(), c.stream_keys[kv].begin() + from, c.stream_keys[kv].begin() + from + n);
        v.insert(v.end(), c.stream_values[kv].begin() + from, c.stream_values[kv].begin() + from + n);
      }
      for (uint32_t h = kv * (kQHeads / kKvHeads); h < (kv + 1) * (kQHeads / kKvHeads); ++h) {
        const size_t row = static_cast<size_t>(i) * kQHeads + h;
        std::vector<double> ref(kHeadDim);
        double ref_lse;
        msa::testing::DenseReference(&q[row * kHeadDim], k.data(), v.data(), k.size() / kHeadDim,
                                     kHeadDim, ref.data(), &ref_lse);
        // float32 accumulation against float64 (as store_test.cc).
        for (uint32_t ch = 0; ch < kHeadDim; ++ch) {
          if (!(std::fabs(out[row * kHeadDim + ch] - ref[ch]) <= 1e-4)) {
            return "out differs from the reference over the chosen blocks";
          }
        }
        if (!(std::fabs(lse[row] - ref_lse) <= 1e-4)) {
          return "lse differs from the reference over the chosen blocks";
        }
      }
    }
  }
  return "";
}

// Checks one Attend answer against the float64 reference over the chosen
// blocks. Returns "" or what is wrong.
std::string CheckAnswer(const Corpus& c, const std::vector<float>& q, const std::vector<float>& out,
                        const std::vector<float>& lse,
                        const std::vector<std::vector<uint64_t>>& selected, bool exact,
                        uint32_t top_k, uint64_t blocks_before, uint64_t blocks_after) {
  if (selected.size() != kRows * kKvHeads) return "selected has the wrong size";
  // The snapshot: B blocks. Every (row, KV head) saw the same one.
  const uint64_t b = selected[0].empty() ? 0 : selected[0].back() + 1;
  if (b < blocks_before || b > blocks_after) {
    return "attended over " + std::to_string(b) + " blocks, outside [" +
           std::to_string(blocks_before) + ", " + std::to_string(blocks_after) +
           "] committed around the call";
  }
  if (!std::binary_search(c.boundaries.begin(), c.boundaries.end(), b)) {
    return "attended over " + std::to_string(b) + " blocks: not a document boundary (torn commit)";
  }
  for (uint32_t i = 0; i < kRows; ++i) {
    for (uint32_t kv = 0; kv < kKvHeads; ++kv) {
      const std::vector<uint64_t>& sel = selected[i * kKvHeads + kv];
      if (b == 0) {
        if (!sel.empty()) return "blocks chosen from an empty snapshot";
        continue;
      }
      if (!std::is_sorted(sel.begin(), sel.end()) || sel.back() != b - 1) {
        return "a selection that is unsorted or misses the recent block of the snapshot";
      }
      if (exact && sel.size() != b) return "exact mode skipped blocks";
      if (!exact && (sel.size() > uint64_t{top_k} + 2 || sel.front() != 0)) {
        return "top-k chose more than top_k + 2 blocks, or not the sink";
      }
    }
  }
  if (std::string e = CompareWithReference(c, q, out, lse, selected); !e.empty()) {
    return e + " (" + std::to_string(b) + " blocks)";
  }
  if (b == 0) {
    for (float x : out) {
      if (x != 0.0f) return "nonzero output over an empty snapshot";
    }
  }
  return "";
}

// A stream read while ingesting must be a document-boundary prefix, bit-exact.
std::string CheckStream(const Corpus& c, uint32_t kv, const std::vector<float>& keys,
                        const std::vector<float>& values) {
  uint64_t tokens = 0;
  size_t docs = 0;
  while (tokens * kHeadDim < keys.size() && docs < c.tokens.size()) tokens += c.tokens[docs++];
  if (tokens * kHeadDim != keys.size() || keys.size() != values.size()) {
    return "ReadStream returned " + std::to_string(keys.size() / kHeadDim) +
           " tokens: not a document boundary";
  }
  if (!std::equal(keys.begin(), keys.end(), c.stream_keys[kv].begin()) ||
      !std::equal(values.begin(), values.end(), c.stream_values[kv].begin())) {
    return "ReadStream returned other values than were committed";
  }
  return "";
}

TEST(Concurrency, QueriesWhileIngestingSeeCommittedSnapshots) {
  TempDir dir;
  const Geometry g = TestGeometry();
  auto created = Store::Create(dir.Sub("store"), g);
  ASSERT_TRUE(created.ok()) << created.status().ToString();
  Store& store = **created;
  const Corpus corpus = MakeCorpus(7);

  std::atomic<bool> ingest_done{false};
  // Queries finished per Attend reader. Before each commit the writer waits
  // (a bounded while) until every reader has finished one more query, so the
  // readers see many snapshots however fast commits are (tmpfs: no real
  // fsync) and calls keep overlapping commits.
  std::vector<std::atomic<int>> finished(kReaders);
  auto wait_for_readers = [&] {
    std::vector<int> seen(kReaders);
    for (int r = 0; r < kReaders; ++r) seen[r] = finished[r].load();
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    for (int r = 0; r < kReaders; ++r) {
      while (finished[r].load() == seen[r] && std::chrono::steady_clock::now() < deadline) {
        std::this_thread::yield();
      }
    }
  };
  std::string writer_error;
  std::thread writer([&] {
    for (int d = 0; d < kDocs && writer_error.empty(); ++d) {
      wait_for_readers();
      DocumentKV kv{corpus.keys[d].data(), corpus.values[d].data(), corpus.tokens[d],
                    ElementType::kFloat16};
      auto id = store.AppendDocument("doc" + std::to_string(d), kv);
      Status s = id.ok() ? store.Commit() : id.status();
      if (!s.ok()) writer_error = "document " + std::to_string(d) + ": " + s.ToString();
    }
    ingest_done = true;
  });

  struct ReaderResult {
    std::string error;
    int queries = 0;
    std::vector<uint64_t> snapshots;  // distinct block counts seen
  };
  std::vector<ReaderResult> results(kReaders + 1);
  std::vector<std::thread> readers;
  for (int r = 0; r < kReaders; ++r) {
    readers.emplace_back([&, r] {
      ReaderResult& res = results[r];
      std::mt19937_64 rng(100 + r);
      std::normal_distribution<float> normal(0.0f, 1.5f);
      int after = 0;
      while (res.error.empty() && after < kQueriesAfterIngest) {
        if (ingest_done) ++after;
        std::vector<float> q(kRows * kQHeads * kHeadDim);
        for (float& x : q) x = normal(rng);
        AttendOptions options;
        options.exact = (res.queries + r) % 2 == 0;
        options.top_k = static_cast<uint32_t>(rng() % 4);
        std::vector<float> out(q.size(), NAN), lse(kRows * kQHeads, NAN);
        std::vector<std::vector<uint64_t>> selected;
        const uint64_t before = store.Stats().blocks_per_stream;
        Status s = store.Attend(0, q.data(), kRows, kQHeads, options, out.data(), lse.data(),
                                nullptr, &selected);
        const uint64_t after_blocks = store.Stats().blocks_per_stream;
        if (!s.ok()) {
          res.error = "Attend: " + s.ToString();
          break;
        }
        res.error = CheckAnswer(corpus, q, out, lse, selected, options.exact, options.top_k, before,
                                after_blocks);
        if (!res.error.empty()) res.error += options.exact ? " (exact)" : " (top-k)";
        const uint64_t b = selected[0].empty() ? 0 : selected[0].back() + 1;
        if (std::find(res.snapshots.begin(), res.snapshots.end(), b) == res.snapshots.end()) {
          res.snapshots.push_back(b);
        }
        ++res.queries;
        ++finished[r];
      }
    });
  }
  // One more reader of whole streams, documents and counters.
  readers.emplace_back([&] {
    ReaderResult& res = results[kReaders];
    int after = 0;
    while (res.error.empty() && after < kQueriesAfterIngest) {
      if (ingest_done) ++after;
      const uint32_t kv = res.queries % kKvHeads;
      std::vector<float> k, v;
      Status s = store.ReadStream(0, kv, &k, &v);
      if (!s.ok()) {
        res.error = "ReadStream: " + s.ToString();
        break;
      }
      res.error = CheckStream(corpus, kv, k, v);
      auto docs = store.ListDocuments();
      const StoreStats st = store.Stats();
      if (res.error.empty() && (!docs.ok() || docs->size() > st.documents)) {
        res.error = "ListDocuments shows more documents than the later Stats()";
      }
      if (res.error.empty() &&
          !std::binary_search(corpus.boundaries.begin(), corpus.boundaries.end(), st.blocks_per_stream)) {
        res.error = "Stats() counts a torn commit";
      }
      ++res.queries;
    }
  });

  writer.join();
  for (auto& t : readers) t.join();
  ASSERT_EQ(writer_error, "");
  for (int r = 0; r <= kReaders; ++r) {
    EXPECT_EQ(results[r].error, "") << "reader " << r;
    EXPECT_GE(results[r].queries, kQueriesAfterIngest) << "reader " << r;
    // The test is only worth its name if the store changed under the readers.
    if (r < kReaders) {
      EXPECT_GT(results[r].snapshots.size(), 2u) << "reader " << r;
    }
  }
  EXPECT_EQ(store.Stats().blocks_per_stream, corpus.boundaries.back());
}


// Queries while one thread deletes the oldest document, commits, and every
// third time compacts (segment files rewritten and removed under the
// readers). Every state is a suffix of the documents, so an exact answer's
// blocks must be exactly [boundaries[i], end) for some i -- one committed
// state, never a torn one -- and equal the reference over those blocks.
TEST(Concurrency, QueriesWhileDeletingAndCompactingSeeCommittedSnapshots) {
  TempDir dir;
  const Geometry g = TestGeometry();
  StoreOptions options;
  options.segment_bytes = 16 << 10;  // several segments: compaction removes files
  auto created = Store::Create(dir.Sub("store"), g, options);
  ASSERT_TRUE(created.ok()) << created.status().ToString();
  Store& store = **created;
  const Corpus corpus = MakeCorpus(11);
  std::vector<uint64_t> ids;
  for (int d = 0; d < kDocs; ++d) {
    auto id = store.AppendDocument("doc" + std::to_string(d),
                                   {corpus.keys[d].data(), corpus.values[d].data(), corpus.tokens[d],
                                    ElementType::kFloat16});
    ASSERT_TRUE(id.ok());
    ids.push_back(*id);
  }
  ASSERT_TRUE(store.Commit().ok());
  const uint64_t end = corpus.boundaries.back();

  std::atomic<bool> done{false};
  std::atomic<int> compactions{0};
  std::string writer_error;
  std::thread writer([&] {
    for (int d = 0; d + 1 < kDocs && writer_error.empty(); ++d) {
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
      Status s = store.DeleteDocument(ids[d]);
      if (s.ok()) s = store.Commit();
      if (s.ok() && d % 3 == 2) {
        s = store.Compact();
        ++compactions;
      }
      if (!s.ok()) writer_error = "step " + std::to_string(d) + ": " + s.ToString();
    }
    done = true;
  });
  std::vector<std::string> errors(kReaders);
  std::vector<std::set<uint64_t>> states(kReaders);  // first live block of each state seen
  std::vector<std::thread> readers;
  for (int r = 0; r < kReaders; ++r) {
    readers.emplace_back([&, r] {
      std::mt19937_64 rng(300 + r);
      std::normal_distribution<float> normal(0.0f, 1.5f);
      while (errors[r].empty() && !done) {
        std::vector<float> q(kRows * kQHeads * kHeadDim);
        for (float& x : q) x = normal(rng);
        AttendOptions o;
        o.exact = true;
        std::vector<float> out(q.size(), NAN), lse(kRows * kQHeads, NAN);
        std::vector<std::vector<uint64_t>> selected;
        Status s = store.Attend(0, q.data(), kRows, kQHeads, o, out.data(), lse.data(), nullptr, &selected);
        if (!s.ok()) {
          errors[r] = "Attend: " + s.ToString();
          break;
        }
        const std::vector<uint64_t>& sel = selected[0];
        const uint64_t first = sel.empty() ? end : sel.front();
        bool suffix = std::binary_search(corpus.boundaries.begin(), corpus.boundaries.end(), first) &&
                      sel.size() == end - first;
        for (size_t j = 0; suffix && j < sel.size(); ++j) suffix = sel[j] == first + j;
        for (const auto& other : selected) suffix = suffix && other == sel;
        if (!suffix) {
          errors[r] = "exact mode attended over blocks that are no committed state";
          break;
        }
        errors[r] = CompareWithReference(corpus, q, out, lse, selected);
        states[r].insert(first);
      }
    });
  }
  writer.join();
  for (auto& t : readers) t.join();
  ASSERT_EQ(writer_error, "");
  EXPECT_GT(compactions.load(), 0);
  for (int r = 0; r < kReaders; ++r) {
    EXPECT_EQ(errors[r], "") << "reader " << r;
    EXPECT_GT(states[r].size(), 2u) << "reader " << r << " saw too few states to be worth the name";
  }
  VerifyReport report;
  ASSERT_TRUE(store.Verify(&report).ok());
  EXPECT_TRUE(report.problems.empty()) << report.problems.front();
}

// The writer's part of the mixed test: one commit per step (an append, a
// deletion of a committed document, or both in one commit), then maybe a
// compaction. Deterministic, so the same schedule can be replayed.
struct MixedStep {
  int append = -1;  // document to append, or none
  int remove = -1;  // committed document to delete, or none
  bool compact = false;
};

constexpr int kMixedDocs = 32;
constexpr int kMixedFirstDocs = 4;  // appended and committed before the threads start

// The steps, and the live documents after each commit (state 0: the first
// kMixedFirstDocs documents; state k: after step k-1).
std::vector<MixedStep> MixedSchedule(std::vector<std::vector<int>>* states) {
  std::mt19937_64 rng(2024);
  std::vector<int> live;
  for (int d = 0; d < kMixedFirstDocs; ++d) live.push_back(d);
  states->assign(1, live);
  std::vector<MixedStep> steps;
  auto take_one = [&] {  // a random committed live document, never the last two
    if (live.size() <= 2) return -1;
    const size_t at = rng() % live.size();
    const int d = live[at];
    live.erase(live.begin() + static_cast<ptrdiff_t>(at));
    return d;
  };
  for (int d = kMixedFirstDocs; d < kMixedDocs; ++d) {
    MixedStep step;
    step.append = d;
    if (d % 3 == 0) step.remove = take_one();  // an append and a deletion in one commit
    step.compact = d % 5 == 2;
    live.push_back(d);
    steps.push_back(step);
    states->push_back(live);
    if (d % 4 == 1) {  // a deletion on its own
      MixedStep del;
      del.remove = take_one();
      if (del.remove >= 0) {
        del.compact = d % 8 == 5;
        steps.push_back(del);
        states->push_back(live);
      }
    }
  }
  return steps;
}

// Runs the first documents and then the steps on `store`; before_commit and
// after_commit (the state just committed) are called around each commit.
// Returns "" or what failed.
std::string RunMixedSchedule(Store& store, const Corpus& c, const std::vector<MixedStep>& steps,
                             const std::function<void()>& before_commit,
                             const std::function<void(size_t)>& after_commit) {
  std::vector<uint64_t> ids(kMixedDocs, UINT64_MAX);
  auto append = [&](int d) {
    auto id = store.AppendDocument("doc" + std::to_string(d),
                                   {c.keys[d].data(), c.values[d].data(), c.tokens[d], ElementType::kFloat16});
    if (id.ok()) ids[d] = *id;
    return id.status();
  };
  for (int d = 0; d < kMixedFirstDocs; ++d) {
    if (Status s = append(d); !s.ok()) return "document " + std::to_string(d) + ": " + s.ToString();
  }
  if (Status s = store.Commit(); !s.ok()) return "first commit: " + s.ToString();
  after_commit(0);
  for (size_t k = 0; k < steps.size(); ++k) {
    const MixedStep& step = steps[k];
    Status s;
    if (step.append >= 0) s = append(step.append);
    if (s.ok() && step.remove >= 0) s = store.DeleteDocument(ids[step.remove]);
    if (s.ok()) {
      before_commit();
      s = store.Commit();
    }
    if (s.ok()) after_commit(k + 1);
    if (s.ok() && step.compact) s = store.Compact();
    if (!s.ok()) return "step " + std::to_string(k) + ": " + s.ToString();
  }
  return "";
}

// Exact and top-k queries (with and without document sinks) from several
// threads while one thread appends documents, deletes some (alone, or with
// an append in the same commit) and compacts, interleaved. The queries are
// made beforehand and the writer's schedule is deterministic, so the same
// schedule replayed first on a second store, with no one else about, gives
// what each query must choose in each committed state. A query under the
// writer must choose exactly what it chose in one of the states committed
// around the call (a counter the writer bumps after each commit: state k is
// visible from before the bump to k), never a mix, and its answer must
// equal the float64 dense reference over those blocks.
TEST(Concurrency, TopKQueriesWhileAppendingDeletingAndCompactingSeeCommittedSnapshots) {
  TempDir dir;
  const Geometry g = TestGeometry();
  StoreOptions options;
  options.segment_bytes = 16 << 10;  // several segments: compaction removes files
  const Corpus corpus = MakeCorpus(13, kMixedDocs);
  std::vector<std::vector<int>> states;
  const std::vector<MixedStep> steps = MixedSchedule(&states);
  ASSERT_GT(std::count_if(steps.begin(), steps.end(), [](const MixedStep& s) { return s.compact; }), 3);
  ASSERT_GT(std::count_if(steps.begin(), steps.end(),
                          [](const MixedStep& s) { return s.append >= 0 && s.remove >= 0; }),
            3);

  // The queries: exact ones, top-k ones of budgets from 0 to 7 blocks, some
  // with document sinks.
  constexpr int kQueries = 16;
  std::vector<std::vector<float>> queries(kQueries);
  std::vector<AttendOptions> query_options(kQueries);
  {
    std::mt19937_64 rng(17);
    std::normal_distribution<float> normal(0.0f, 1.5f);
    for (int j = 0; j < kQueries; ++j) {
      queries[j].resize(kRows * kQHeads * kHeadDim);
      for (float& x : queries[j]) x = normal(rng);
      query_options[j].exact = j % 4 == 0;
      query_options[j].top_k = static_cast<uint32_t>(rng() % 8);
      query_options[j].document_sinks = j % 3 == 1;
    }
  }
  auto ask = [&](const Store& store, int j, std::vector<float>* out, std::vector<float>* lse,
                 std::vector<std::vector<uint64_t>>* selected) {
    out->assign(kRows * kQHeads * kHeadDim, NAN);
    lse->assign(kRows * kQHeads, NAN);
    return store.Attend(0, queries[j].data(), kRows, kQHeads, query_options[j], out->data(), lse->data(),
                        nullptr, selected);
  };
  // expected[k][j]: query j's blocks in state k, from the replay.
  std::vector<std::vector<std::vector<std::vector<uint64_t>>>> expected(states.size());
  int top_k_answers = 0, routed_answers = 0;  // in the replay: top-k, and top-k reading fewer than all blocks
  {
    auto replay = Store::Create(dir.Sub("replay"), g, options);
    ASSERT_TRUE(replay.ok()) << replay.status().ToString();
    std::string error;
    const std::string run = RunMixedSchedule(**replay, corpus, steps, [] {}, [&](size_t k) {
      for (int j = 0; j < kQueries && error.empty(); ++j) {
        std::vector<float> out, lse;
        std::vector<std::vector<uint64_t>> selected;
        Status s = ask(**replay, j, &out, &lse, &selected);
        if (!s.ok()) error = "state " + std::to_string(k) + " query " + std::to_string(j) + ": " + s.ToString();
        expected[k].push_back(std::move(selected));
      }
      // An exact query's blocks are every block of the live documents.
      std::vector<uint64_t> live_blocks;
      std::vector<int> live = states[k];
      std::sort(live.begin(), live.end());
      for (int d : live) {
        for (uint64_t b = corpus.boundaries[d]; b < corpus.boundaries[d + 1]; ++b) live_blocks.push_back(b);
      }
      if (error.empty() && expected[k][0] != std::vector<std::vector<uint64_t>>(kRows * kKvHeads, live_blocks)) {
        error = "state " + std::to_string(k) + ": the replay's exact query did not read the live documents";
      }
      for (int j = 0; j < kQueries && error.empty(); ++j) {
        if (query_options[j].exact) continue;
        ++top_k_answers;
        routed_answers += expected[k][j][0].size() < live_blocks.size();
      }
    });
    ASSERT_EQ(run, "");
    ASSERT_EQ(error, "");
    // Most top-k answers must be routed (not every block), or the test
    // would check little more than the exact queries do.
    EXPECT_GT(routed_answers, top_k_answers / 2) << routed_answers << " of " << top_k_answers;
  }

  auto created = Store::Create(dir.Sub("store"), g, options);
  ASSERT_TRUE(created.ok()) << created.status().ToString();
  Store& store = **created;
  std::atomic<int> published{-1};  // the last state whose Commit returned
  std::atomic<bool> done{false};
  std::vector<std::atomic<int>> finished(kReaders);
  std::atomic<bool> reader_failed{false};
  // As in QueriesWhileIngestingSeeCommittedSnapshots: before each commit,
  // every reader finishes one more query (a bounded while).
  auto wait_for_readers = [&] {
    std::vector<int> seen(kReaders);
    for (int r = 0; r < kReaders; ++r) seen[r] = finished[r].load();
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    for (int r = 0; r < kReaders; ++r) {
      while (finished[r].load() == seen[r] && !reader_failed && std::chrono::steady_clock::now() < deadline) {
        std::this_thread::yield();
      }
    }
  };
  std::string writer_error;
  std::thread writer([&] {
    writer_error = RunMixedSchedule(store, corpus, steps, wait_for_readers, [&](size_t k) {
      published = static_cast<int>(k);
    });
    done = true;
  });
  std::vector<std::string> errors(kReaders);
  std::vector<std::set<int>> seen_states(kReaders);
  std::vector<int> top_k_queries(kReaders);
  std::vector<std::thread> readers;
  for (int r = 0; r < kReaders; ++r) {
    readers.emplace_back([&, r] {
      int after = 0;
      for (int n = 0; errors[r].empty() && after < kQueriesAfterIngest; ++n) {
        if (done) ++after;
        const int j = (n * kReaders + r) % kQueries;
        const int before = published.load();
        std::vector<float> out, lse;
        std::vector<std::vector<uint64_t>> selected;
        Status s = ask(store, j, &out, &lse, &selected);
        const int last = std::min<int>(published.load() + 1, static_cast<int>(states.size()) - 1);
        if (!s.ok()) {
          errors[r] = "query " + std::to_string(j) + ": Attend: " + s.ToString();
          break;
        }
        int state = -1;
        for (int k = std::max(before, 0); k <= last && state < 0; ++k) {
          if (selected == expected[k][j]) state = k;
        }
        if (state < 0) {
          if (before < 0 && std::all_of(selected.begin(), selected.end(), [](const auto& x) { return x.empty(); })) {
            ++finished[r];
            continue;  // the empty store before the first commit
          }
          errors[r] = "query " + std::to_string(j) + (query_options[j].exact ? " (exact)" : " (top-k)") +
                      " chose blocks that no state committed in [" + std::to_string(before) + ", " +
                      std::to_string(last) + "] would choose";
          break;
        }
        errors[r] = CompareWithReference(corpus, queries[j], out, lse, selected);
        if (!errors[r].empty()) {
          errors[r] += " (query " + std::to_string(j) + ", state " + std::to_string(state) + ")";
          break;
        }
        seen_states[r].insert(state);
        if (!query_options[j].exact) ++top_k_queries[r];
        ++finished[r];
      }
      if (!errors[r].empty()) reader_failed = true;
    });
  }
  writer.join();
  for (auto& t : readers) t.join();
  ASSERT_EQ(writer_error, "");
  for (int r = 0; r < kReaders; ++r) {
    std::printf("reader %d: %d top-k queries, %zu of %zu states seen\n", r, top_k_queries[r],
                seen_states[r].size(), states.size());
    EXPECT_EQ(errors[r], "") << "reader " << r;
    EXPECT_GT(top_k_queries[r], 0) << "reader " << r;
    EXPECT_GT(seen_states[r].size(), states.size() / 4)
        << "reader " << r << " saw too few states to be worth the name";
  }
  // The end state: the last state's documents, and a sound store.
  auto docs = store.ListDocuments();
  ASSERT_TRUE(docs.ok());
  std::set<std::string> names, want;
  for (const DocumentRecord& d : *docs) names.insert(d.name);
  for (int d : states.back()) want.insert("doc" + std::to_string(d));
  EXPECT_EQ(names, want);
  VerifyReport report;
  ASSERT_TRUE(store.Verify(&report).ok());
  EXPECT_TRUE(report.problems.empty()) << report.problems.front();
}

}  // namespace
}  // namespace msa
