// msa_bench_scale: one store, measured the way issue 7 asks, with memory
// bounded whatever its size (tools/bench_scale.sh runs it per size).
//
//   msa_bench_scale STORE --queries Q.npy [--needles needles.json] [--top-k 64]
//       [--repeats 5] [--dense-rows 16] [--dense-samples 1] [--chunk-tokens 1048576]
//       [--routing default,exact,ch16,coarse128,flat] [--json]
//
// What it measures, in one process that opens the store read-only:
//   open      Store::Open (catalog, router summaries, saved IVF) in ms, and
//             the process's resident set right after.
//   sparse    per query row, one Attend with top-k routing: cold (use_cache
//             off: every block from disk with O_DIRECT), then the call that
//             fills the block cache ("cold, cached": the same reads, each
//             block also copied into the cache, as a query after a restart
//             does), then warm (through the cache; --repeats samples),
//             p50/p99 of the whole call and its stages.
//   needles   a needle is hit when every block holding its span is selected.
//   dense     the baseline: exact attention over every token of the stream,
//             through the store's exact mode (reads, decodes and attends
//             every block). msa eval does the same in one call, which holds
//             the whole layer in float32 (10 GB at 1e7 tokens of head dim
//             128): here the stream is taken a group of documents (about
//             --chunk-tokens tokens) at a time and the parts are merged
//             through their log-sum-exp, which is exact. --dense-samples
//             single-row passes are timed (each reads the whole store once);
//             their compute share (attend_ms) is what a dense pass over K/V
//             already resident in RAM as float32 would cost.
//   quality   on the first --dense-rows rows (at least the timed ones: each
//             timed pass is also the reference of its row), against that dense reference
//             (float32, over the K/V as stored): output error
//             |o_sparse - o_dense| / |o_dense| per (row, head), and the
//             attention mass inside the selected blocks, which is exactly
//             exp(lse_sparse - lse_dense).
// Peak RSS (VmHWM) is reported after open, after the sparse queries and at
// the end (the dense passes hold one chunk of float32 K/V).
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cctype>
#include <cstring>
#include <iterator>
#include <fstream>
#include <set>
#include <string>
#include <vector>

#include "store/store.h"
#include "tools/npy_file.h"

namespace {

using Clock = std::chrono::steady_clock;
using msa::AttendOptions;
using msa::AttendStats;
using msa::Status;

double Percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const size_t i = static_cast<size_t>(std::min<double>(v.size() - 1, p / 100.0 * (v.size() - 1) + 0.5));
  return v[i];
}
double Mean(const std::vector<double>& v) {
  double s = 0;
  for (double x : v) s += x;
  return v.empty() ? 0 : s / v.size();
}

uint64_t ProcStatusBytes(const char* key) {
  std::ifstream f("/proc/self/status");
  std::string line;
  const size_t n = std::strlen(key);
  while (std::getline(f, line)) {
    if (line.compare(0, n, key) == 0) return std::stoull(line.substr(n + 1)) * 1024;
  }
  return 0;
}

int Die(const Status& s) {
  std::fprintf(stderr, "msa_bench_scale: %s\n", s.ToString().c_str());
  return 1;
}

struct Options {
  std::string store, queries, needles;
  uint32_t top_k = 64, repeats = 5, dense_rows = 16, dense_samples = 1;
  uint64_t chunk_tokens = 1 << 20;
  uint64_t cache_mb = 256;
  uint32_t coarse_group_blocks = 0;
  std::string routing = "default";
  bool json = false;
};

nlohmann::json Dist(const std::vector<double>& v) {
  return {{"p50", Percentile(v, 50)}, {"p99", Percentile(v, 99)}, {"mean", Mean(v)}, {"n", v.size()}};
}

// One Attend call's stage times, collected over calls.
struct Stages {
  std::vector<double> total, route, fetch, decode, attend;
  void Add(const AttendStats& st) {
    total.push_back(st.total_ms);
    route.push_back(st.route_ms);
    fetch.push_back(st.fetch_ms);
    decode.push_back(st.decode_ms);
    attend.push_back(st.attend_ms);
  }
  nlohmann::json StagesP50() const {
    return {{"route", Percentile(route, 50)}, {"fetch", Percentile(fetch, 50)},
            {"decode", Percentile(decode, 50)}, {"attend", Percentile(attend, 50)}};
  }
};

}  // namespace

int main(int argc, char** argv) {
  spdlog::set_level(spdlog::level::warn);
  if (const char* level = std::getenv("MSA_LOG_LEVEL")) spdlog::set_level(spdlog::level::from_str(level));
  Options o;
  CLI::App app{"msa_bench_scale: open time, RSS, sparse vs dense latency and quality of one store"};
  app.add_option("STORE", o.store)->required();
  app.add_option("--queries", o.queries, "queries .npy [n, q_heads, head_dim]")->required();
  app.add_option("--needles", o.needles, "needles.json from msa synth");
  app.add_option("--top-k", o.top_k)->capture_default_str();
  app.add_option("--repeats", o.repeats, "warm samples per query row")->capture_default_str();
  app.add_option("--dense-rows", o.dense_rows, "rows with a dense reference (quality)")->capture_default_str();
  app.add_option("--dense-samples", o.dense_samples, "single-row dense passes timed")->capture_default_str();
  app.add_option("--chunk-tokens", o.chunk_tokens, "tokens per dense pass part")->capture_default_str();
  app.add_option("--cache-mb", o.cache_mb, "block cache")->capture_default_str();
  app.add_option("--coarse-size", o.coarse_group_blocks,
                 "keep group summaries of this many blocks, for the coarseN settings (0: none)")
      ->capture_default_str();
  app.add_option("--routing", o.routing,
                 "comma-separated routing settings to compare on the same queries: default, exact "
                 "(score every summary), chN (approximate over N channels), chN:C (and C candidates), "
                 "coarseN (coarse-to-fine over N groups), flat (never coarse-to-fine)")
      ->capture_default_str();
  app.add_flag("--json", o.json);
  CLI11_PARSE(app, argc, argv);

  msa::StoreOptions so;
  so.read_only = true;
  so.cache_bytes = o.cache_mb << 20;
  so.router.coarse_group_blocks = o.coarse_group_blocks;
  const auto t_open = Clock::now();
  auto opened = msa::Store::Open(o.store, so);
  if (!opened.ok()) return Die(opened.status());
  const double open_ms = std::chrono::duration<double, std::milli>(Clock::now() - t_open).count();
  const uint64_t rss_open = ProcStatusBytes("VmRSS:"), hwm_open = ProcStatusBytes("VmHWM:");
  msa::Store& store = **opened;
  const msa::Geometry& g = store.geometry();
  if (g.layers != 1 && g.kv_heads != 1) {
    std::fprintf(stderr, "msa_bench_scale: note: measuring layer 0 of %s\n", g.ToString().c_str());
  }
  auto qt = msa::formats::ReadNpy(o.queries);
  if (!qt.ok()) return Die(qt.status());
  auto qv = msa::formats::ToFloat32(*qt);
  if (!qv.ok()) return Die(qv.status());
  if (qt->shape.size() != 3 || qt->shape[2] != g.head_dim || qt->shape[1] % g.kv_heads != 0) {
    return Die(Status::InvalidArgument("queries " + o.queries + ": shape " +
                                       msa::formats::ShapeToString(qt->shape) + " does not fit the store"));
  }
  const uint32_t n = static_cast<uint32_t>(qt->shape[0]), qh = static_cast<uint32_t>(qt->shape[1]);
  const size_t d = g.head_dim, bt = g.block_tokens;
  const uint32_t group = qh / g.kv_heads;
  const msa::StoreStats stats = store.Stats();
  auto listed = store.ListDocuments();
  if (!listed.ok()) return Die(listed.status());
  std::vector<msa::DocumentRecord> docs = std::move(*listed);
  std::sort(docs.begin(), docs.end(), [](const auto& a, const auto& b) { return a.first_block < b.first_block; });
  std::vector<uint64_t> doc_start(docs.size() + 1, 0);
  for (size_t i = 0; i < docs.size(); ++i) doc_start[i + 1] = doc_start[i] + docs[i].tokens;
  auto block_of = [&](uint64_t p) -> int64_t {  // global token position -> block
    const auto it = std::upper_bound(doc_start.begin(), doc_start.end(), p);
    if (it == doc_start.begin() || it == doc_start.end()) return -1;
    const size_t i = static_cast<size_t>(it - doc_start.begin()) - 1;
    return static_cast<int64_t>(docs[i].first_block + (p - doc_start[i]) / bt);
  };
  nlohmann::json needles = nlohmann::json::array();
  if (!o.needles.empty()) {
    std::ifstream f(o.needles);
    needles = nlohmann::json::parse(f, nullptr, false);
    if (needles.is_discarded()) return Die(Status::InvalidArgument("needles " + o.needles + ": not JSON"));
  }

  // ---- sparse: cold, then warm, per row, for each routing setting -----------
  struct SparseRun {
    std::string name;
    AttendOptions options;
    Stages cold, filling, warm;
    uint64_t blocks_selected = 0, cold_bytes = 0, warm_hits = 0, warm_blocks = 0, needle_hits = 0,
             needle_total = 0;
    std::vector<float> out, lse;                       // rows with a dense reference
    std::vector<std::vector<uint64_t>> selections;     // [row * kv_heads + kv], sorted
    std::vector<double> mass, err, router_recall;
  };
  std::vector<SparseRun> runs;
  for (size_t at = 0; at <= o.routing.size();) {
    const size_t comma = std::min(o.routing.find(',', at), o.routing.size());
    const std::string item = o.routing.substr(at, comma - at);
    at = comma + 1;
    SparseRun run;
    run.name = item;
    run.options.top_k = o.top_k;
    if (item == "exact") {
      run.options.exact_routing = true;
    } else if (item.rfind("ch", 0) == 0 && item.size() > 2 && std::isdigit(static_cast<unsigned char>(item[2]))) {
      run.options.channels = static_cast<uint32_t>(std::stoul(item.substr(2)));
      const size_t colon = item.find(':');  // chN:C, C candidates rescored per ranking
      if (colon != std::string::npos) run.options.candidates = static_cast<uint32_t>(std::stoul(item.substr(colon + 1)));
    } else if (item == "flat") {
      run.options.coarse_groups = msa::RouteOptions::kNoCoarse;
    } else if (item.rfind("coarse", 0) == 0) {
      char* end = nullptr;
      const unsigned long v = std::strtoul(item.c_str() + 6, &end, 10);
      if (item.size() == 6 || *end != '\0' || v == 0 || v >= msa::RouteOptions::kNoCoarse || o.coarse_group_blocks == 0) {
        return Die(Status::InvalidArgument("--routing: '" + item + "' is not coarseN with N > 0 and --coarse-size set"));
      }
      run.options.coarse_groups = static_cast<uint32_t>(v);
    } else if (item != "default") {
      return Die(Status::InvalidArgument("--routing: '" + item + "' is not default, exact, flat, coarseN or chN"));
    }
    runs.push_back(std::move(run));
  }
  const uint32_t qrows = std::min(n, std::max(o.dense_rows, o.dense_samples));  // rows with a dense reference
  std::vector<float> out(qh * d), lse(qh);
  for (SparseRun& run : runs) {
    run.out.resize(static_cast<size_t>(qrows) * qh * d);
    run.lse.resize(static_cast<size_t>(qrows) * qh);
    for (uint32_t i = 0; i < n; ++i) {
      const float* q = qv->data() + static_cast<size_t>(i) * qh * d;
      std::vector<std::vector<uint64_t>> selected;
      AttendStats st;
      AttendOptions cold = run.options;
      cold.use_cache = false;
      Status s = store.Attend(0, q, 1, qh, cold, out.data(), lse.data(), &st, &selected);
      if (!s.ok()) return Die(s);
      run.cold.Add(st);
      run.cold_bytes += st.bytes_read;
      if (i < qrows) {
        std::copy(out.begin(), out.end(), run.out.begin() + static_cast<size_t>(i) * qh * d);
        std::copy(lse.begin(), lse.end(), run.lse.begin() + static_cast<size_t>(i) * qh);
      }
      for (auto& sel : selected) {
        run.blocks_selected += sel.size();
        std::sort(sel.begin(), sel.end());
        run.selections.push_back(sel);
      }
      for (uint32_t r = 0; r <= std::max(1u, o.repeats); ++r) {
        s = store.Attend(0, q, 1, qh, run.options, out.data(), lse.data(), &st);
        if (!s.ok()) return Die(s);
        if (r == 0) {  // fills the cache
          run.filling.Add(st);
          continue;
        }
        run.warm.Add(st);
        run.warm_hits += st.cache_hits;
        run.warm_blocks += st.cache_hits + st.blocks_read;
      }
      for (const auto& nd : needles) {
        if (nd.value("query", -1) != static_cast<int>(i) || nd.value("layer", 0) != 0) continue;
        const uint32_t kv = nd.value("kv_head", 0u);
        const uint64_t p0 = nd.value("position", uint64_t{0}), span = nd.value("span", uint64_t{1});
        if (kv >= g.kv_heads) continue;
        run.needle_total++;
        const std::set<uint64_t> sel(selected[kv].begin(), selected[kv].end());
        bool all_in = true;
        for (uint64_t p = p0; p < p0 + span && all_in; ++p) {
          const int64_t b = block_of(p);
          all_in = b >= 0 && sel.count(static_cast<uint64_t>(b));
        }
        run.needle_hits += all_in;
      }
    }
  }
  // Router recall: overlap of each setting's selection with the exact
  // scan's (when the exact setting ran).
  const auto exact_run = std::find_if(runs.begin(), runs.end(), [](const SparseRun& r) { return r.name == "exact"; });
  if (exact_run != runs.end()) {
    for (SparseRun& run : runs) {
      for (size_t i = 0; i < run.selections.size() && i < exact_run->selections.size(); ++i) {
        const auto& a = run.selections[i];
        const auto& b = exact_run->selections[i];
        std::vector<uint64_t> both;
        std::set_intersection(a.begin(), a.end(), b.begin(), b.end(), std::back_inserter(both));
        run.router_recall.push_back(b.empty() ? 1.0 : static_cast<double>(both.size()) / b.size());
      }
    }
  }
  const uint64_t hwm_sparse = ProcStatusBytes("VmHWM:");

  // ---- dense: the stream a few documents at a time, merged by LSE -----------
  std::vector<std::vector<uint64_t>> chunks;
  for (size_t i = 0; i < docs.size();) {
    std::vector<uint64_t> ids;
    uint64_t tokens = 0;
    while (i < docs.size() && (ids.empty() || tokens + docs[i].tokens <= o.chunk_tokens)) {
      ids.push_back(docs[i].id);
      tokens += docs[i++].tokens;
    }
    chunks.push_back(std::move(ids));
  }
  // One pass over every chunk for `rows` query rows from `first`: merged
  // out [rows, qh, d] and lse [rows, qh]; stage times summed.
  struct DensePass {
    double total_ms = 0, fetch_ms = 0, decode_ms = 0, attend_ms = 0, wall_ms = 0;
    uint64_t bytes_read = 0;
    std::vector<double> out, lse;
  };
  auto dense_pass = [&](uint32_t first, uint32_t rows, DensePass* p) -> Status {
    const auto t0 = Clock::now();
    const size_t heads = static_cast<size_t>(rows) * qh;
    p->out.assign(heads * d, 0.0);
    p->lse.assign(heads, -INFINITY);
    std::vector<float> co(heads * d), cl(heads);
    for (const auto& ids : chunks) {
      AttendOptions exact;
      exact.exact = true;
      exact.documents = ids;
      AttendStats st;
      MSA_RETURN_IF_ERROR(store.Attend(0, qv->data() + static_cast<size_t>(first) * qh * d, rows, qh, exact,
                                       co.data(), cl.data(), &st));
      p->total_ms += st.total_ms;
      p->fetch_ms += st.fetch_ms;
      p->decode_ms += st.decode_ms;
      p->attend_ms += st.attend_ms;
      p->bytes_read += st.bytes_read;
      for (size_t h = 0; h < heads; ++h) {  // o = sum_c exp(lse_c - L) o_c, L = logsumexp
        const double l = cl[h];
        if (!std::isfinite(l)) continue;
        const double m = std::max(p->lse[h], l);
        const double wa = std::isfinite(p->lse[h]) ? std::exp(p->lse[h] - m) : 0.0, wb = std::exp(l - m);
        for (size_t c = 0; c < d; ++c) p->out[h * d + c] = (p->out[h * d + c] * wa + co[h * d + c] * wb) / (wa + wb);
        p->lse[h] = m + std::log(wa + wb);
      }
    }
    p->wall_ms = std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
    return Status::OK();
  };
  // Timed single-row passes (rows 0 .. samples-1), then one pass for the
  // remaining reference rows; every pass's merged output is a reference.
  std::vector<double> dense_ms, dense_fetch, dense_decode, dense_attend, dense_wall;
  std::vector<double> ref_out(static_cast<size_t>(qrows) * qh * d), ref_lse(static_cast<size_t>(qrows) * qh);
  auto keep_reference = [&](uint32_t first, const DensePass& p) {
    for (size_t i = 0; i < p.lse.size() && first * qh + i < ref_lse.size(); ++i) {
      ref_lse[first * qh + i] = p.lse[i];
      std::copy(p.out.begin() + i * d, p.out.begin() + (i + 1) * d, ref_out.begin() + (first * qh + i) * d);
    }
  };
  uint64_t dense_bytes = 0;
  const uint32_t samples = std::min(o.dense_samples, n);
  for (uint32_t sample = 0; sample < samples; ++sample) {
    DensePass p;
    Status s = dense_pass(sample, 1, &p);
    if (!s.ok()) return Die(s);
    dense_ms.push_back(p.total_ms);
    dense_fetch.push_back(p.fetch_ms);
    dense_decode.push_back(p.decode_ms);
    dense_attend.push_back(p.attend_ms);
    dense_wall.push_back(p.wall_ms);
    dense_bytes = p.bytes_read;
    if (sample < qrows) keep_reference(sample, p);
  }
  double reference_ms = 0;
  if (qrows > samples) {
    DensePass ref;
    Status s = dense_pass(samples, qrows - samples, &ref);
    if (!s.ok()) return Die(s);
    reference_ms = ref.wall_ms;
    keep_reference(samples, ref);
  }
  for (SparseRun& run : runs) {
    for (size_t h = 0; h < static_cast<size_t>(qrows) * qh; ++h) {
      run.mass.push_back(std::min(1.0, std::exp(static_cast<double>(run.lse[h]) - ref_lse[h])));
      double num = 0, den = 0;
      for (size_t c = 0; c < d; ++c) {
        const double diff = run.out[h * d + c] - ref_out[h * d + c];
        num += diff * diff;
        den += ref_out[h * d + c] * ref_out[h * d + c];
      }
      run.err.push_back(std::sqrt(num / std::max(den, 1e-300)));
    }
  }
  auto run_json = [&](const SparseRun& run) {
    const double avg = static_cast<double>(run.blocks_selected) / std::max<uint64_t>(1, uint64_t{n} * g.kv_heads);
    return nlohmann::json{
        {"routing", run.name},
        {"avg_blocks_per_kv_head", avg},
        {"sparse_cold_ms", Dist(run.cold.total)},
        {"sparse_cold_stages_p50", run.cold.StagesP50()},
        {"sparse_cold_bytes_per_query", n ? run.cold_bytes / n : 0},
        {"sparse_cold_cached_ms", Dist(run.filling.total)},
        {"sparse_cold_cached_stages_p50", run.filling.StagesP50()},
        {"sparse_warm_ms", Dist(run.warm.total)},
        {"sparse_warm_stages_p50", run.warm.StagesP50()},
        {"warm_route_ms", Dist(run.warm.route)},
        {"warm_cache_hit_rate", run.warm_blocks ? static_cast<double>(run.warm_hits) / run.warm_blocks : 0.0},
        {"needle_hits", run.needle_hits},
        {"needles", run.needle_total},
        {"needle_hit_rate", run.needle_total ? static_cast<double>(run.needle_hits) / run.needle_total : 0.0},
        {"mass_recall", {{"mean", Mean(run.mass)}, {"p5", Percentile(run.mass, 5)}, {"p1", Percentile(run.mass, 1)}}},
        {"output_error", {{"mean", Mean(run.err)}, {"p95", Percentile(run.err, 95)}, {"p99", Percentile(run.err, 99)}}},
        {"router_recall", run.router_recall.empty() ? nlohmann::json(nullptr) : nlohmann::json(Mean(run.router_recall))},
    };
  };
  const SparseRun& first = runs.front();
  const std::vector<double>& cold_ms = first.cold.total;
  nlohmann::json j = {
      {"store", o.store},
      {"geometry", g.ToString()},
      {"codec", msa::CodecName(g.codec)},
      {"summary", msa::SummaryName(g.summary)},
      {"tokens", stats.tokens},
      {"documents", stats.documents},
      {"blocks_per_stream", stats.blocks_per_stream},
      {"stored_bytes", stats.stored_bytes},
      {"segment_bytes", stats.segment_bytes},
      {"raw_fp16_bytes", stats.raw_bytes},
      {"ivf_streams", stats.ivf_streams},
      {"reader", stats.reader},
      {"open_ms", open_ms},
      {"rss_after_open_bytes", rss_open},
      {"peak_rss_after_open_bytes", hwm_open},
      {"peak_rss_after_sparse_bytes", hwm_sparse},
      {"peak_rss_bytes", ProcStatusBytes("VmHWM:")},
      {"queries", n},
      {"q_heads", qh},
      {"group", group},
      {"top_k", o.top_k},
      {"dense_chunks", chunks.size()},
      {"dense_ms", Dist(dense_ms)},
      {"dense_wall_ms", Dist(dense_wall)},
      {"dense_stages_mean", {{"fetch", Mean(dense_fetch)}, {"decode", Mean(dense_decode)}, {"attend", Mean(dense_attend)}}},
      {"dense_attend_only_ms", Dist(dense_attend)},
      {"dense_bytes_read", dense_bytes},
      {"dense_reference_rows", qrows},
      {"dense_reference_ms", reference_ms},
  };
  // The first routing setting's figures at the top level (what
  // tools/plot_scale.py reads), every setting's under "routings".
  j.update(run_json(first));
  j["routings"] = nlohmann::json::array();
  for (const SparseRun& run : runs) j["routings"].push_back(run_json(run));
  if (o.json) {
    std::printf("%s\n", j.dump(2).c_str());
    return 0;
  }
  std::printf("%s: %llu tokens, %llu blocks, codec %s, %.1f MB of segments; opened in %.1f ms (RSS %.0f MB)\n",
              o.store.c_str(), (unsigned long long)stats.tokens, (unsigned long long)stats.blocks_per_stream,
              msa::CodecName(g.codec), stats.segment_bytes / 1e6, open_ms, rss_open / 1e6);
  for (const SparseRun& run : runs) {
    const double avg = static_cast<double>(run.blocks_selected) / std::max<uint64_t>(1, uint64_t{n} * g.kv_heads);
    std::printf("sparse, routing %s, top-k %u (%.1f blocks per KV head), %u rows x %u heads:\n", run.name.c_str(),
                o.top_k, avg, n, qh);
    std::printf("  cold p50 %.3f ms  p99 %.3f ms  (route %.3f fetch %.3f decode %.3f attend %.3f)\n",
                Percentile(run.cold.total, 50), Percentile(run.cold.total, 99), Percentile(run.cold.route, 50),
                Percentile(run.cold.fetch, 50), Percentile(run.cold.decode, 50), Percentile(run.cold.attend, 50));
    std::printf("  cold, cached p50 %.3f ms  p99 %.3f ms  (route %.3f fetch %.3f decode %.3f attend %.3f)\n",
                Percentile(run.filling.total, 50), Percentile(run.filling.total, 99),
                Percentile(run.filling.route, 50), Percentile(run.filling.fetch, 50),
                Percentile(run.filling.decode, 50), Percentile(run.filling.attend, 50));
    std::printf("  warm p50 %.3f ms  p99 %.3f ms  (route %.3f fetch %.3f decode %.3f attend %.3f)\n",
                Percentile(run.warm.total, 50), Percentile(run.warm.total, 99), Percentile(run.warm.route, 50),
                Percentile(run.warm.fetch, 50), Percentile(run.warm.decode, 50), Percentile(run.warm.attend, 50));
    std::printf("  needles %llu / %llu; on %u rows: mass recall mean %.4f p5 %.4f; output error mean %.4f p95 %.4f",
                (unsigned long long)run.needle_hits, (unsigned long long)run.needle_total, qrows, Mean(run.mass),
                Percentile(run.mass, 5), Mean(run.err), Percentile(run.err, 95));
    if (!run.router_recall.empty()) std::printf("; router recall %.3f", Mean(run.router_recall));
    std::printf("\n");
  }
  std::printf("dense (store exact mode, %zu parts): p50 %.1f ms over %zu samples (fetch %.1f decode %.1f attend %.1f)"
              " -> sparse cold is %.0fx faster\n",
              chunks.size(), Percentile(dense_ms, 50), dense_ms.size(), Mean(dense_fetch), Mean(dense_decode),
              Mean(dense_attend), Percentile(dense_ms, 50) / std::max(1e-9, Percentile(cold_ms, 50)));
  std::printf("peak RSS %.0f MB (after open %.0f, after sparse %.0f)\n", ProcStatusBytes("VmHWM:") / 1e6,
              hwm_open / 1e6, hwm_sparse / 1e6);
  return 0;
}
