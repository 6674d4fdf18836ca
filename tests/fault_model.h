// The model the fault and power-loss tests check a store against (LevelDB's
// reference-model tests): documents kept outside the store, and what the
// store must hold after a fault, a crash or a power loss.
#pragma once

#include <gtest/gtest.h>
#include <stdlib.h>

#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <vector>

#include "attention/half.h"
#include "store/store.h"
#include "test_util.h"

namespace msa::testing {

struct Doc {
  std::string name;
  uint64_t tokens = 0;
  std::vector<float> keys, values;  // [streams, tokens, head_dim], fp16-exact
};

inline Doc MakeDoc(const Geometry& g, const std::string& name, uint64_t tokens, uint64_t seed) {
  Doc d{name, tokens, RandomVector(g.streams() * tokens * g.head_dim, seed),
        RandomVector(g.streams() * tokens * g.head_dim, seed + 7919)};
  for (auto* v : {&d.keys, &d.values})
    for (auto& x : *v) x = attention::HalfToFloat(attention::FloatToHalf(x));
  return d;
}

inline Status Append(Store& s, const Doc& d) {
  return s.AppendDocument(d.name, DocumentKV{d.keys.data(), d.values.data(), d.tokens, ElementType::kFloat32})
      .status();
}

inline std::vector<float> StreamOf(const Geometry& g, const std::vector<Doc>& docs, uint32_t stream, bool keys) {
  std::vector<float> out;
  for (const Doc& d : docs) {
    const auto& src = keys ? d.keys : d.values;
    const size_t at = static_cast<size_t>(stream) * d.tokens * g.head_dim;
    out.insert(out.end(), src.begin() + at, src.begin() + at + d.tokens * g.head_dim);
  }
  return out;
}

// The store holds exactly `docs`, in order, bit-exact, and verifies clean.
// dead_blocks: blocks per stream of deleted documents not yet compacted
// away (Verify still reads them); negative where the caller cannot know
// (a deletion or compaction whose outcome is open). Call with no faults
// being injected.
inline void ExpectHolds(const Store& s, const std::vector<Doc>& docs, const std::string& where,
                 int64_t dead_blocks = 0) {
  SCOPED_TRACE(where);
  const Geometry& g = s.geometry();
  auto listed = s.ListDocuments();
  ASSERT_TRUE(listed.ok()) << listed.status().ToString();
  ASSERT_EQ(listed->size(), docs.size());
  uint64_t tokens = 0;
  for (size_t i = 0; i < docs.size(); ++i) {
    EXPECT_EQ((*listed)[i].name, docs[i].name);
    EXPECT_EQ((*listed)[i].tokens, docs[i].tokens);
    tokens += docs[i].tokens;
  }
  EXPECT_EQ(s.Stats().tokens, tokens);
  for (uint32_t stream = 0; stream < g.streams(); ++stream) {
    std::vector<float> k, v;
    Status st = s.ReadStream(stream / g.kv_heads, stream % g.kv_heads, &k, &v);
    ASSERT_TRUE(st.ok()) << st.ToString();
    ASSERT_TRUE(k == StreamOf(g, docs, stream, true)) << "keys of stream " << stream << " differ";
    ASSERT_TRUE(v == StreamOf(g, docs, stream, false)) << "values of stream " << stream << " differ";
  }
  VerifyReport report;
  ASSERT_TRUE(s.Verify(&report).ok());
  EXPECT_TRUE(report.problems.empty()) << report.problems.front();
  uint64_t live_blocks = 0;  // deleted documents' blocks are not read
  for (const Doc& d : docs) live_blocks += (d.tokens + g.block_tokens - 1) / g.block_tokens;
  if (dead_blocks >= 0) {
    EXPECT_EQ(report.blocks_checked, (live_blocks + static_cast<uint64_t>(dead_blocks)) * g.streams());
  } else {
    EXPECT_GE(report.blocks_checked, live_blocks * g.streams());
  }
}


// The write sweeps run hundreds of small ingests, each with a dozen
// fdatasyncs; on tmpfs (/dev/shm) a sync is free, and what is tested (the
// store's handling of each call's result) does not depend on the file
// system. MSA_FAULT_TEST_DIR overrides; without /dev/shm, the test temp dir.
class SweepDir {
 public:
  SweepDir() {
    const char* env = std::getenv("MSA_FAULT_TEST_DIR");
    std::string base = env != nullptr ? env : "/dev/shm";
    if (!std::filesystem::is_directory(base)) base = ::testing::TempDir();
    std::string tmpl = base + "/msa_fault_XXXXXX";
    path_ = ::mkdtemp(tmpl.data()) != nullptr ? tmpl : "";
  }
  ~SweepDir() {
    std::error_code ec;
    if (!path_.empty()) std::filesystem::remove_all(path_, ec);
  }
  std::string Sub(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

}  // namespace msa::testing
