// Power loss (issue 10): the crash tests kill the writer with SIGKILL, which
// keeps whatever reached the kernel's page cache. A power loss keeps only
// what was synced, so it is what tests the store's sync ordering. Here the
// writer runs in this process under io::PowerLossSimulator (io/power_loss.h),
// which sees every write and sync of the segment files and of the catalog's
// RocksDB files (store/catalog_file_system.h); at a random write operation
// the power goes (that operation and every later one fails), the store is
// closed, every file loses what it was written since its last sync (all of
// it, or a random tail of it: the page cache may have written some back),
// files whose directory entry was never synced disappear, and the store is
// reopened. Against a model kept outside the store:
//   - every document whose commit returned OK is there, bit-exact;
//   - every deletion whose commit returned OK is gone;
//   - the one operation the power cut (a commit, a deletion's commit, a
//     compaction) either happened whole or not at all;
//   - nothing else: no uncommitted document, and Verify finds no problem;
//   - the store opens without repair, and the next ingest works.
//
// Environment: MSA_POWER_LOSS_ITERATIONS (default 200), MSA_POWER_LOSS_SEED.
#include <gtest/gtest.h>

#include <cinttypes>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <memory>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "fault_model.h"
#include "io/fault_injection.h"
#include "io/power_loss.h"
#include "store/store.h"

namespace msa {
namespace {

using namespace msa::testing;  // the model (fault_model.h)

uint64_t EnvOr(const char* name, uint64_t fallback) {
  const char* v = std::getenv(name);
  return v != nullptr && *v != '\0' ? std::strtoull(v, nullptr, 10) : fallback;
}

// The model: live documents in commit order, and what is staged.
struct Model {
  std::vector<Doc> live;
  std::vector<Doc> staged;
  std::set<std::string> deleting;  // names whose deletion is staged

  std::vector<Doc> AfterCommit() const {
    std::vector<Doc> next;
    for (const Doc& d : live)
      if (deleting.count(d.name) == 0) next.push_back(d);
    next.insert(next.end(), staged.begin(), staged.end());
    return next;
  }
};

bool SameNames(const std::vector<DocumentRecord>& listed, const std::vector<Doc>& docs) {
  if (listed.size() != docs.size()) return false;
  for (size_t i = 0; i < docs.size(); ++i)
    if (listed[i].name != docs[i].name) return false;
  return true;
}

struct Totals {
  uint64_t iterations = 0, cuts_mid_call = 0, commits_ok = 0, deletions_ok = 0, compactions_ok = 0;
  uint64_t in_flight_landed = 0, in_flight_lost = 0, documents_checked = 0;
  uint64_t files_cut = 0, files_deleted = 0, bytes_lost = 0, bytes_kept = 0;
};

void RunOnce(uint64_t seed, Totals* totals) {
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 rng(seed);
  SweepDir dir;
  const std::string path = dir.Sub("store");
  Geometry g;
  g.layers = 1;
  g.kv_heads = 2;
  g.head_dim = 16;
  g.block_tokens = 8;
  StoreOptions opts;
  opts.segment_bytes = 16 << 10;  // roll-overs, and compactions that remove files
  opts.allow_io_uring = (rng() & 1) != 0;

  io::PowerLossSimulator sim;
  auto installed = std::make_unique<io::ScopedFaultInjector>(&sim);
  // The write operations of the whole run are about 300; a cut drawn past
  // them leaves the power to go at the end, with the store idle.
  sim.CutPowerAfter(1 + rng() % 360);

  Model model;
  std::vector<Doc> in_flight_after;  // a cut commit's state had it landed
  bool in_flight = false;
  bool created = false;
  uint64_t next_doc = 0;
  std::unique_ptr<Store> store;
  auto new_doc = [&] {
    const std::string name = "d" + std::to_string(next_doc++);
    return MakeDoc(g, name, 1 + rng() % 20, seed * 1000 + next_doc);
  };
  auto fail = [&](const Status& s, const char* what) {
    EXPECT_TRUE(sim.power_cut()) << what << " failed with the power on: " << s.ToString();
  };

  // Commits what is staged; on failure (the power cut) records what the
  // store holds if the commit landed after all.
  auto commit = [&](const char* what) {
    Status s = store->Commit();
    if (!s.ok()) {
      fail(s, what);
      in_flight = true;
      in_flight_after = model.AfterCommit();
      return false;
    }
    model.live = model.AfterCommit();
    model.staged.clear();
    model.deleting.clear();
    return true;
  };

  auto c = Store::Create(path, g, opts);
  if (c.ok()) {
    store = std::move(c).value();
    created = true;
  } else {
    fail(c.status(), "create");
  }
  for (int step = 0; store != nullptr && step < 14; ++step) {
    const uint64_t r = rng() % 10;
    if (r <= 4) {  // append one or two documents and commit
      bool ok = true;
      for (uint64_t i = 0, n = 1 + rng() % 2; i < n && ok; ++i) {
        Doc d = new_doc();
        Status s = Append(*store, d);
        if (s.ok()) {
          model.staged.push_back(std::move(d));
        } else {
          fail(s, "append");
          ok = false;
        }
      }
      if (!ok || !commit("commit")) break;
      ++totals->commits_ok;
    } else if (r <= 6) {  // delete a live document and commit
      if (model.live.empty()) continue;
      auto listed = store->ListDocuments();
      ASSERT_TRUE(listed.ok()) << listed.status().ToString();
      const DocumentRecord& victim = (*listed)[rng() % listed->size()];
      Status s = store->DeleteDocument(victim.id);
      if (!s.ok()) {
        fail(s, "delete");
        break;
      }
      model.deleting.insert(victim.name);
      if (!commit("commit of a deletion")) break;
      ++totals->deletions_ok;
    } else if (r == 7) {  // compact: the content stays the same either way
      if (!model.staged.empty()) continue;  // Compact refuses while anything is staged
      Status s = store->Compact();
      if (!s.ok()) {
        fail(s, "compact");
        break;
      }
      ++totals->compactions_ok;
    } else if (r == 8) {  // close and reopen: staged documents are dropped
      store.reset();
      model.staged.clear();
      model.deleting.clear();
      auto o = Store::Open(path, opts);
      if (!o.ok()) {
        fail(o.status(), "reopen");
        break;
      }
      store = std::move(o).value();
    } else {  // append and leave staged: the power loss must drop it
      Doc d = new_doc();
      Status s = Append(*store, d);
      if (!s.ok()) {
        fail(s, "append");
        break;
      }
      model.staged.push_back(std::move(d));
    }
  }
  if (sim.power_cut()) ++totals->cuts_mid_call;
  sim.CutPower();
  store.reset();  // closes with the power off: nothing more reaches the disk
  io::PowerLossSimulator::Loss loss;
  const Status lost = sim.LoseUnsyncedData(seed, /*keep_some=*/(seed & 1) != 0, &loss);
  installed.reset();
  ASSERT_TRUE(lost.ok()) << lost.ToString();
  totals->files_cut += loss.files_cut;
  totals->files_deleted += loss.files_deleted;
  totals->bytes_lost += loss.bytes_lost;
  totals->bytes_kept += loss.bytes_kept;
  ++totals->iterations;

  // Power on.
  auto reopened = Store::Open(path, opts);
  if (!created) {
    // Create never returned OK: the store may or may not exist, and if it
    // does it is empty.
    if (!reopened.ok()) {
      ASSERT_EQ(reopened.status().code(), Status::Code::kNotFound) << reopened.status().ToString();
      reopened = Store::Create(path, g, opts);
      ASSERT_TRUE(reopened.ok()) << "create after a power loss during create: " << reopened.status().ToString();
    }
  }
  ASSERT_TRUE(reopened.ok()) << "open after the power loss: " << reopened.status().ToString();
  Store& s = **reopened;
  auto listed = s.ListDocuments();
  ASSERT_TRUE(listed.ok()) << listed.status().ToString();
  std::vector<Doc> expect = model.live;
  if (in_flight && !SameNames(*listed, model.live)) {
    expect = in_flight_after;  // the cut commit landed: all of it
    ++totals->in_flight_landed;
  } else if (in_flight) {
    ++totals->in_flight_lost;
  }
  ExpectHolds(s, expect, "after the power loss", /*dead_blocks unknown*/ -1);
  totals->documents_checked += expect.size();
  // The next ingest works and stays.
  const Doc after = MakeDoc(g, "after", 9, seed + 77);
  ASSERT_TRUE(Append(s, after).ok());
  ASSERT_TRUE(s.Commit().ok());
  expect.push_back(after);
  ExpectHolds(s, expect, "after a new ingest", -1);
}

TEST(PowerLoss, CommittedDataSurvivesLosingEverythingUnsynced) {
  const uint64_t iterations = EnvOr("MSA_POWER_LOSS_ITERATIONS", 200);
  const uint64_t seed = EnvOr("MSA_POWER_LOSS_SEED", 20261127);
  Totals t;
  for (uint64_t i = 0; i < iterations; ++i) {
    RunOnce(seed + i, &t);
    if (::testing::Test::HasFailure()) return;
  }
  EXPECT_GT(t.cuts_mid_call, iterations / 2) << "most cuts should land inside a call";
  EXPECT_GT(t.files_cut, 0u) << "no file ever lost unsynced data: the simulation did nothing";
  std::printf("power loss: %" PRIu64 " iterations, %" PRIu64 " cut inside a call; commits OK %" PRIu64
              ", deletions OK %" PRIu64 ", compactions OK %" PRIu64 "; cut commit landed %" PRIu64
              " / lost %" PRIu64 "; %" PRIu64 " documents verified after reopen; files cut %" PRIu64
              ", unsynced bytes lost %" PRIu64 " (kept by chance %" PRIu64 "), files deleted %" PRIu64
              "; nothing committed lost\n",
              t.iterations, t.cuts_mid_call, t.commits_ok, t.deletions_ok, t.compactions_ok, t.in_flight_landed,
              t.in_flight_lost, t.documents_checked, t.files_cut, t.bytes_lost, t.bytes_kept, t.files_deleted);
}

}  // namespace
}  // namespace msa
