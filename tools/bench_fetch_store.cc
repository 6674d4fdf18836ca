// The fetch path through the store (issue 4), each comparison side by side
// in one process on the same store and the same queries:
//
//   msa_bench_fetch_store STORE --queries Q.npy [--top-k 64] [--rows 64]
//                         [--variants io_uring,io_uring_plain,io_uring_dec1,pread]
//                         [--cache-mb 256] [--json] [--json-out FILE]
//     latency: one handle per variant, all open at once; per query row, in
//     turn for each variant (order rotated per row): drop the block cache,
//     Attend (cold: every block from disk), Attend again (warm: every block
//     from the cache). Then per variant the rows in sequence without
//     dropping the cache (the hit rate that sinks, recent blocks and
//     overlapping selections give). Variants: io_uring (registered files
//     and buffers, the defaults), io_uring_plain (neither), io_uring_decN
//     (N decode threads overlapping the reads), pread (the fallback).
//
//   msa_bench_fetch_store STORE --queries Q.npy --overlap [--passes 20]
//     prefetch overlap over every layer of the store, cold cache: per pass
//     (one query row, the same for every layer) "sequential" attends layer
//     0..L-1 one after another; "prefetch" issues Prefetch(l + 1) before
//     Attend(l) (waiting for Prefetch(l) first). The two alternate, each
//     pass starting from an empty cache.
//
// Times are milliseconds of Store::Attend's own clock (AttendStats) or of
// the pass; p50/p99 over rows (or passes).
#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include "store/store.h"
#include "tools/npy_file.h"

namespace {

using Clock = std::chrono::steady_clock;
using msa::AttendOptions;
using msa::AttendStats;
using msa::Status;

int Die(const Status& s) {
  std::fprintf(stderr, "msa_bench_fetch_store: %s\n", s.ToString().c_str());
  return 1;
}

double Percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const size_t i = std::min(v.size() - 1, static_cast<size_t>(p / 100.0 * static_cast<double>(v.size())));
  return v[i];
}

nlohmann::json Dist(const std::vector<double>& v) {
  return {{"p50", Percentile(v, 50)}, {"p99", Percentile(v, 99)}, {"n", v.size()}};
}

std::vector<std::string> Split(const std::string& s) {
  std::vector<std::string> out;
  size_t at = 0;
  while (at <= s.size()) {
    const size_t comma = std::min(s.find(',', at), s.size());
    if (comma > at) out.push_back(s.substr(at, comma - at));
    at = comma + 1;
  }
  return out;
}

// StoreOptions of a variant name; false when the name is unknown.
bool VariantOptions(const std::string& name, uint64_t cache_bytes, msa::StoreOptions* so) {
  *so = msa::StoreOptions{};
  so->read_only = true;
  so->cache_bytes = cache_bytes;
  so->decode_threads = 0;  // unless the variant says
  if (name == "io_uring") return true;
  if (name == "io_uring_plain") {
    so->registered_files = 0;
    so->registered_buffer_bytes = 0;
    return true;
  }
  if (name.rfind("io_uring_dec", 0) == 0) {
    so->decode_threads = static_cast<unsigned>(std::stoul(name.substr(12)));
    return so->decode_threads > 0;
  }
  if (name == "pread") {
    so->allow_io_uring = false;
    return true;
  }
  return false;
}

struct Samples {
  std::vector<double> cold_total, cold_fetch, cold_decode, cold_io, warm_total, warm_io, seq_total;
  uint64_t cold_blocks = 0, cold_bytes = 0, cold_hits = 0, warm_hits = 0, warm_blocks = 0;
  uint64_t seq_hits = 0, seq_blocks = 0;
};

// User + system CPU seconds of this process (all threads).
double CpuSeconds() {
  rusage u{};
  ::getrusage(RUSAGE_SELF, &u);
  return static_cast<double>(u.ru_utime.tv_sec + u.ru_stime.tv_sec) +
         static_cast<double>(u.ru_utime.tv_usec + u.ru_stime.tv_usec) * 1e-6;
}

std::string LoadAverage() {
  std::ifstream f("/proc/loadavg");
  std::string a, b, c;
  f >> a >> b >> c;
  return a + " " + b + " " + c;
}

bool WriteJson(const std::string& path, const nlohmann::json& j) {
  if (path.empty()) return true;
  std::ofstream f(path);
  f << j.dump(2) << "\n";
  return static_cast<bool>(f);
}

}  // namespace

int main(int argc, char** argv) {
  spdlog::set_level(spdlog::level::warn);
  if (const char* level = std::getenv("MSA_LOG_LEVEL")) spdlog::set_level(spdlog::level::from_str(level));
  std::string store_path, queries_path, json_out, variants = "io_uring,io_uring_plain,io_uring_dec1,pread";
  uint32_t top_k = 64, rows = 64, passes = 20, repeats = 1;
  uint64_t cache_mb = 256;
  bool overlap = false, json = false;
  CLI::App app{"msa_bench_fetch_store: cold/warm fetch latency by reader, decode threads, prefetch overlap"};
  app.add_option("STORE", store_path)->required();
  app.add_option("--queries", queries_path, "queries .npy [n, q_heads, head_dim]")->required();
  app.add_option("--top-k", top_k)->capture_default_str();
  app.add_option("--rows", rows, "query rows (at most the file's)")->capture_default_str();
  app.add_option("--variants", variants)->capture_default_str();
  app.add_option("--repeats", repeats, "passes over the rows (cold and warm each time)")->capture_default_str();
  app.add_option("--cache-mb", cache_mb)->capture_default_str();
  app.add_flag("--overlap", overlap, "measure prefetch overlap over the store's layers instead");
  app.add_option("--passes", passes, "passes per mode (--overlap)")->capture_default_str();
  app.add_flag("--json", json, "print JSON instead of the table");
  app.add_option("--json-out", json_out, "also write the JSON to this file");
  CLI11_PARSE(app, argc, argv);

  auto qt = msa::formats::ReadNpy(queries_path);
  if (!qt.ok()) return Die(qt.status());
  auto qv = msa::formats::ToFloat32(*qt);
  if (!qv.ok()) return Die(qv.status());
  const std::vector<float>& q = *qv;
  AttendOptions options;
  options.top_k = top_k;

  if (overlap) {
    msa::StoreOptions so;
    VariantOptions("io_uring", cache_mb << 20, &so);  // decode threads 0: the prefetch thread decodes
    auto opened = msa::Store::Open(store_path, so);
    if (!opened.ok()) return Die(opened.status());
    msa::Store& store = **opened;
    const msa::Geometry& g = store.geometry();
    if (qt->shape.size() != 3 || qt->shape[2] != g.head_dim || qt->shape[1] % g.kv_heads != 0) {
      return Die(Status::InvalidArgument(queries_path + " does not fit " + g.ToString()));
    }
    const uint32_t qh = static_cast<uint32_t>(qt->shape[1]);
    const uint32_t n = static_cast<uint32_t>(qt->shape[0]);
    const size_t row_elems = static_cast<size_t>(qh) * g.head_dim;
    std::vector<float> out(row_elems), lse(qh);
    std::vector<double> seq_ms, pre_ms, seq_fetch, pre_fetch, seq_attend, seq_cpu, pre_cpu, pre_wait;
    uint64_t pre_hits = 0, pre_blocks = 0;
    for (uint32_t pass = 0; pass < 2 * passes; ++pass) {
      const float* row = q.data() + static_cast<size_t>(pass / 2 % n) * row_elems;
      const bool prefetching = (pass % 2 == 0) == (pass / 2 % 2 == 0);  // alternate which goes first
      store.DropCache();
      double fetch = 0, compute = 0;
      const double cpu0 = CpuSeconds();
      const auto t0 = Clock::now();
      if (!prefetching) {
        for (uint32_t l = 0; l < g.layers; ++l) {
          AttendStats st;
          Status s = store.Attend(l, row, 1, qh, options, out.data(), lse.data(), &st);
          if (!s.ok()) return Die(s);
          fetch += st.fetch_ms + st.decode_ms;
          compute += st.route_ms + st.attend_ms;
        }
      } else {
        auto next = store.Prefetch(0, row, 1, qh, options);
        for (uint32_t l = 0; l < g.layers; ++l) {
          const auto w0 = Clock::now();
          if (Status s = next.get(); !s.ok()) return Die(s);
          compute += std::chrono::duration<double, std::milli>(Clock::now() - w0).count();
          if (l + 1 < g.layers) next = store.Prefetch(l + 1, row, 1, qh, options);
          AttendStats st;
          Status s = store.Attend(l, row, 1, qh, options, out.data(), lse.data(), &st);
          if (!s.ok()) return Die(s);
          fetch += st.fetch_ms + st.decode_ms;
          pre_hits += st.cache_hits;
          pre_blocks += st.cache_hits + st.blocks_read;
        }
      }
      const double ms = std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
      (prefetching ? pre_ms : seq_ms).push_back(ms);
      (prefetching ? pre_cpu : seq_cpu).push_back((CpuSeconds() - cpu0) * 1e3);
      (prefetching ? pre_fetch : seq_fetch).push_back(fetch);
      (prefetching ? pre_wait : seq_attend).push_back(compute);
    }
    const double s50 = Percentile(seq_ms, 50), p50 = Percentile(pre_ms, 50);
    nlohmann::json j = {{"store", store_path},
                        {"geometry", g.ToString()},
                        {"reader", store.Stats().reader_detail},
                        {"layers", g.layers},
                        {"top_k", top_k},
                        {"q_heads", qh},
                        {"passes", passes},
                        {"sequential_ms", Dist(seq_ms)},
                        {"sequential_fetch_decode_ms", Dist(seq_fetch)},
                        {"sequential_route_attend_ms", Dist(seq_attend)},
                        {"prefetch_ms", Dist(pre_ms)},
                        {"prefetch_attend_fetch_decode_ms", Dist(pre_fetch)},
                        {"prefetch_wait_ms", Dist(pre_wait)},
                        {"sequential_cpu_ms", Dist(seq_cpu)},
                        {"prefetch_cpu_ms", Dist(pre_cpu)},
                        {"load_average", LoadAverage()},
                        {"prefetch_hit_rate", pre_blocks ? static_cast<double>(pre_hits) / pre_blocks : 0.0},
                        {"speedup_p50", p50 > 0 ? s50 / p50 : 0.0}};
    if (!WriteJson(json_out, j)) return Die(Status::IOError("cannot write " + json_out));
    if (json) {
      std::printf("%s\n", j.dump(2).c_str());
    } else {
      std::printf("%u layers, %s, top-%u, cold cache, %u passes each (%s)\n", g.layers, g.ToString().c_str(),
                  top_k, passes, store.Stats().reader_detail.c_str());
      std::printf("  sequential  p50 %8.3f ms  p99 %8.3f ms  (fetch+decode p50 %.3f, route+attend p50 %.3f)\n", s50,
                  Percentile(seq_ms, 99), Percentile(seq_fetch, 50), Percentile(seq_attend, 50));
      std::printf("  prefetch    p50 %8.3f ms  p99 %8.3f ms  (waiting for prefetches p50 %.3f; left in attend: "
                  "fetch+decode p50 %.3f, hit rate %.3f)\n",
                  p50, Percentile(pre_ms, 99), Percentile(pre_wait, 50), Percentile(pre_fetch, 50),
                  pre_blocks ? static_cast<double>(pre_hits) / pre_blocks : 0.0);
      std::printf("  CPU time    sequential p50 %.3f ms, prefetch p50 %.3f ms (user + system, all threads)\n",
                  Percentile(seq_cpu, 50), Percentile(pre_cpu, 50));
      std::printf("  speedup     %.2fx at p50 (load average %s)\n", p50 > 0 ? s50 / p50 : 0.0, LoadAverage().c_str());
    }
    return 0;
  }

  // ---- latency: variants side by side ---------------------------------------
  const std::vector<std::string> names = Split(variants);
  std::vector<std::unique_ptr<msa::Store>> stores;
  for (const std::string& name : names) {
    msa::StoreOptions so;
    if (!VariantOptions(name, cache_mb << 20, &so)) {
      return Die(Status::InvalidArgument("unknown variant " + name));
    }
    auto opened = msa::Store::Open(store_path, so);
    if (!opened.ok()) return Die(opened.status());
    stores.push_back(std::move(opened).value());
  }
  const msa::Geometry& g = stores[0]->geometry();
  if (qt->shape.size() != 3 || qt->shape[2] != g.head_dim || qt->shape[1] % g.kv_heads != 0) {
    return Die(Status::InvalidArgument(queries_path + " does not fit " + g.ToString()));
  }
  const uint32_t qh = static_cast<uint32_t>(qt->shape[1]);
  rows = std::min<uint32_t>(rows, static_cast<uint32_t>(qt->shape[0]));
  const size_t row_elems = static_cast<size_t>(qh) * g.head_dim;
  std::vector<float> out(row_elems), lse(qh);
  std::vector<Samples> samples(names.size());
  const std::string load_before = LoadAverage();
  for (uint32_t it = 0; it < rows * repeats; ++it) {
    const uint32_t i = it % rows;
    const float* row = q.data() + static_cast<size_t>(i) * row_elems;
    for (size_t k = 0; k < names.size(); ++k) {
      const size_t v = (k + it) % names.size();
      msa::Store& store = *stores[v];
      Samples& sm = samples[v];
      store.DropCache();
      AttendStats st;
      Status s = store.Attend(0, row, 1, qh, options, out.data(), lse.data(), &st);
      if (!s.ok()) return Die(s);
      sm.cold_total.push_back(st.total_ms);
      sm.cold_fetch.push_back(st.fetch_ms);
      sm.cold_decode.push_back(st.decode_ms);
      sm.cold_io.push_back(st.fetch_ms + st.decode_ms);
      sm.cold_blocks += st.blocks_read;
      sm.cold_bytes += st.bytes_read;
      sm.cold_hits += st.cache_hits;
      s = store.Attend(0, row, 1, qh, options, out.data(), lse.data(), &st);
      if (!s.ok()) return Die(s);
      sm.warm_total.push_back(st.total_ms);
      sm.warm_io.push_back(st.fetch_ms + st.decode_ms);
      sm.warm_hits += st.cache_hits;
      sm.warm_blocks += st.cache_hits + st.blocks_read;
    }
  }
  for (size_t v = 0; v < names.size(); ++v) {
    msa::Store& store = *stores[v];
    store.DropCache();
    for (uint32_t i = 0; i < rows; ++i) {
      AttendStats st;
      Status s = store.Attend(0, q.data() + static_cast<size_t>(i) * row_elems, 1, qh, options, out.data(),
                              lse.data(), &st);
      if (!s.ok()) return Die(s);
      samples[v].seq_total.push_back(st.total_ms);
      samples[v].seq_hits += st.cache_hits;
      samples[v].seq_blocks += st.cache_hits + st.blocks_read;
    }
  }
  nlohmann::json j = {{"store", store_path}, {"geometry", g.ToString()}, {"tokens", stores[0]->Stats().tokens},
                      {"top_k", top_k},      {"rows", rows},             {"q_heads", qh},
                      {"repeats", repeats},  {"load_average_before", load_before},
                      {"load_average_after", LoadAverage()},
                      {"variants", nlohmann::json::array()}};
  if (!json) {
    std::printf("%s, %llu tokens per stream, top-%u, %u rows x %u q-heads x %u passes, layer 0, load average %s -> %s\n",
                g.ToString().c_str(), (unsigned long long)stores[0]->Stats().tokens, top_k, rows, qh, repeats,
                load_before.c_str(), LoadAverage().c_str());
    std::printf("| variant | cold total p50 / p99 | cold fetch+decode p50 / p99 (fetch, decode p50) | "
                "blocks per cold query | warm total p50 / p99 | warm fetch+decode p50 | warm hit rate | "
                "in-sequence hit rate, total p50 |\n|---|---|---|---|---|---|---|---|\n");
  }
  for (size_t v = 0; v < names.size(); ++v) {
    const Samples& sm = samples[v];
    const msa::StoreStats st = stores[v]->Stats();
    const double warm_rate = sm.warm_blocks ? static_cast<double>(sm.warm_hits) / sm.warm_blocks : 0;
    const double seq_rate = sm.seq_blocks ? static_cast<double>(sm.seq_hits) / sm.seq_blocks : 0;
    j["variants"].push_back({{"name", names[v]},
                             {"reader", st.reader_detail},
                             {"cold_total_ms", Dist(sm.cold_total)},
                             {"cold_fetch_decode_ms", Dist(sm.cold_io)},
                             {"cold_fetch_ms", Dist(sm.cold_fetch)},
                             {"cold_decode_ms", Dist(sm.cold_decode)},
                             {"cold_blocks_per_query", static_cast<double>(sm.cold_blocks) / sm.cold_total.size()},
                             {"cold_bytes_per_query", static_cast<double>(sm.cold_bytes) / sm.cold_total.size()},
                             {"warm_total_ms", Dist(sm.warm_total)},
                             {"warm_fetch_decode_ms", Dist(sm.warm_io)},
                             {"warm_hit_rate", warm_rate},
                             {"sequence_hit_rate", seq_rate},
                             {"sequence_total_ms", Dist(sm.seq_total)},
                             {"reads", st.reader_counters.reads},
                             {"registered_file_reads", st.reader_counters.registered_file_reads},
                             {"registered_buffer_reads", st.reader_counters.registered_buffer_reads},
                             {"cache",
                              {{"hits", st.cache.hits},
                               {"misses", st.cache.misses},
                               {"hit_bytes", st.cache.hit_bytes},
                               {"evictions", st.cache.evictions},
                               {"resident_bytes", st.cache.used_bytes},
                               {"disk_blocks_read", st.disk_blocks_read},
                               {"disk_bytes_read", st.disk_bytes_read}}}});
    if (!json) {
      std::printf("| %s | %.3f / %.3f | %.3f / %.3f (%.3f, %.3f) | %.1f | %.3f / %.3f | %.3f | %.3f | %.3f, %.3f |\n",
                  names[v].c_str(), Percentile(sm.cold_total, 50), Percentile(sm.cold_total, 99),
                  Percentile(sm.cold_io, 50), Percentile(sm.cold_io, 99), Percentile(sm.cold_fetch, 50),
                  Percentile(sm.cold_decode, 50), static_cast<double>(sm.cold_blocks) / sm.cold_total.size(),
                  Percentile(sm.warm_total, 50), Percentile(sm.warm_total, 99), Percentile(sm.warm_io, 50),
                  warm_rate, seq_rate, Percentile(sm.seq_total, 50));
    }
  }
  if (!WriteJson(json_out, j)) return Die(Status::IOError("cannot write " + json_out));
  if (json) {
    std::printf("%s\n", j.dump(2).c_str());
  } else {
    for (size_t v = 0; v < names.size(); ++v) {
      const msa::StoreStats st = stores[v]->Stats();
      std::printf("# %s: %s; %llu reads, %llu through registered files, %llu into the registered buffer\n",
                  names[v].c_str(), st.reader_detail.c_str(), (unsigned long long)st.reader_counters.reads,
                  (unsigned long long)st.reader_counters.registered_file_reads,
                  (unsigned long long)st.reader_counters.registered_buffer_reads);
    }
  }
  return 0;
}
