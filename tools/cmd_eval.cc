// `msa eval`: sparse attention on a store against exact dense attention, in
// one run on the same data (EVALUATION.md section 1 and the latency pair).
//
// Dense reference: float64 softmax over every token of the layer, from the
// K/V as stored (ReadStream). Per (query row, query head):
//   mass recall  = dense softmax weight falling in the selected blocks
//   output error = |o_sparse - o_dense| / |o_dense|
//   block recall = overlap of the selected blocks with the same number of
//                  blocks of largest dense mass
// Needle hit rate: needles whose block range is inside the selection.
// Latency: one query row per Attend call, sparse (top-k) against the store's
// exact mode (reads and attends every block) and an in-memory dense pass.
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <fstream>
#include <cstdlib>
#include <functional>
#include <set>

#include "store/store.h"
#include "tools/cli_common.h"
#include "tools/commands.h"
#include "tools/npy_file.h"

namespace msa::cli {

namespace {

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

// Dense attention of one query vector over [tokens, d] K/V in float64;
// weights receives the softmax. Returns out.
std::vector<double> Dense(const float* q, const std::vector<float>& k, const std::vector<float>& v,
                          size_t d, std::vector<double>* weights) {
  const size_t t = k.size() / d;
  const double scale = 1.0 / std::sqrt(static_cast<double>(d));
  weights->resize(t);
  double mx = -1e300;
  for (size_t j = 0; j < t; ++j) {
    double s = 0;
    for (size_t c = 0; c < d; ++c) s += static_cast<double>(q[c]) * k[j * d + c];
    (*weights)[j] = s * scale;
    mx = std::max(mx, (*weights)[j]);
  }
  double denom = 0;
  for (auto& w : *weights) denom += (w = std::exp(w - mx));
  std::vector<double> out(d, 0.0);
  for (size_t j = 0; j < t; ++j) {
    (*weights)[j] /= denom;
    for (size_t c = 0; c < d; ++c) out[c] += (*weights)[j] * v[j * d + c];
  }
  return out;
}

}  // namespace

void AddEvalOptions(CLI::App* app, EvalOptions& o) {
  app->add_option("STORE", o.store, "store directory")->required();
  app->add_option("--queries", o.queries, "queries .npy [n, q_heads, head_dim]")->required();
  app->add_option("--needles", o.needles, "needles.json from msa synth");
  app->add_option("--layer", o.layer, "layer the queries attend over")->capture_default_str();
  app->add_option("--top-k", o.top_k, "routed blocks per KV head")->capture_default_str();
  app->add_option("--repeats", o.repeats, "latency samples per query")->capture_default_str();
  app->add_option("--exact-samples", o.exact_samples, "query rows timed in the store's exact mode")
      ->capture_default_str();
  app->add_option("--combine", o.combine, "GQA combine of head scores: max or sum")->capture_default_str();
  app->add_option("--nprobe", o.nprobe,
                  "IVF lists probed, or a comma-separated list of settings to compare: numbers, "
                  "'default', 'scan' (exact scoring of every summary), 'chN' (approximate scan "
                  "over each head's N largest probe coefficients, rescored exactly), 'coarseN' "
                  "(coarse-to-fine: N groups of blocks first), 'flat' (never coarse-to-fine)")
      ->capture_default_str();
  app->add_option("--ivf-min-vectors", o.ivf_min_vectors,
                  "streams with this many index vectors get an IVF index at open (0: the store's default)")
      ->capture_default_str();
  app->add_option("--coarse-size", o.coarse_group_blocks,
                  "keep group summaries of this many blocks at open, for the 'coarseN' settings (0: none)")
      ->capture_default_str();
  app->add_option("--candidates", o.candidates, "IVF candidates per head (0: 4 x top-k)")->capture_default_str();
  app->add_flag("--document-sinks", o.document_sinks,
                "also attend over every document's first block (its attention sink), besides top-k");
  app->add_flag("--json", o.json, "JSON output");
}

int RunEval(const EvalOptions& o) {
  using Clock = std::chrono::steady_clock;
  StoreOptions so;
  so.read_only = true;
  if (o.ivf_min_vectors) so.router.ivf_min_vectors = o.ivf_min_vectors;
  so.router.coarse_group_blocks = o.coarse_group_blocks;
  const auto t_open = Clock::now();
  auto opened = Store::Open(o.store, so);
  if (!opened.ok()) return Fail(opened.status());
  const double open_ms = std::chrono::duration<double, std::milli>(Clock::now() - t_open).count();
  Store& store = **opened;
  const Geometry& g = store.geometry();
  auto qt = formats::ReadNpy(o.queries);
  if (!qt.ok()) return Fail(qt.status());
  auto qv = formats::ToFloat32(*qt);
  if (!qv.ok()) return Fail(qv.status());
  if (qt->shape.size() != 3 || qt->shape[2] != g.head_dim || qt->shape[1] % g.kv_heads != 0) {
    return Fail(Status::InvalidArgument("queries " + o.queries + ": shape " +
                                        formats::ShapeToString(qt->shape) + " does not fit the store"));
  }
  const uint32_t n = static_cast<uint32_t>(qt->shape[0]), qh = static_cast<uint32_t>(qt->shape[1]);
  const size_t d = g.head_dim, bt = g.block_tokens;
  const uint32_t group = qh / g.kv_heads;

  // Dense K/V per KV head of the layer.
  std::vector<std::vector<float>> keys(g.kv_heads), values(g.kv_heads);
  for (uint32_t kv = 0; kv < g.kv_heads; ++kv) {
    Status s = store.ReadStream(o.layer, kv, &keys[kv], &values[kv]);
    if (!s.ok()) return Fail(s);
  }
  // Token -> block map (blocks never straddle documents, so partial blocks exist).
  const StoreStats stats = store.Stats();
  std::vector<uint64_t> block_of;
  size_t documents = 0;
  {
    auto docs = store.ListDocuments();
    if (!docs.ok()) return Fail(docs.status());
    documents = docs->size();
    for (const auto& doc : *docs) {
      for (uint64_t t = 0; t < doc.tokens; ++t) block_of.push_back(doc.first_block + t / bt);
    }
  }
  nlohmann::json needles = nlohmann::json::array();
  if (!o.needles.empty()) {
    std::ifstream f(o.needles);
    needles = nlohmann::json::parse(f, nullptr, false);
    if (needles.is_discarded()) return Fail(Status::InvalidArgument("needles " + o.needles + ": not JSON"));
  }

  // Routing settings to compare on the same queries and the same dense
  // reference: --nprobe takes a list ("default", numbers, "scan").
  AttendOptions base;
  base.top_k = o.top_k;
  base.candidates = o.candidates;
  base.document_sinks = o.document_sinks;
  if (o.combine == "sum") {
    base.combine = GqaCombine::kSum;
  } else if (o.combine != "max") {
    return Fail(Status::InvalidArgument("--combine must be max or sum, not '" + o.combine + "'"));
  }
  struct Setting {
    std::string name;
    AttendOptions opts;
    std::vector<double> mass, err, brecall, oracle_mass, router_recall, routed_fraction, sparse_ms,
        cold_ms, route_ms, fetch_ms, decode_ms, attend_ms;
    uint64_t needle_hits = 0, blocks_selected = 0, warm_hits = 0, warm_blocks = 0;
  };
  std::vector<Setting> settings;
  {
    std::string list = o.nprobe.empty() ? "default" : o.nprobe;
    size_t at = 0;
    while (at <= list.size()) {
      const size_t comma = std::min(list.find(',', at), list.size());
      const std::string item = list.substr(at, comma - at);
      Setting st;
      st.opts = base;
      if (item == "scan") {
        st.opts.exact_routing = true;
        st.name = "exact scan";
      } else if (item == "default") {
        st.name = "default routing";
      } else if (item == "flat") {
        st.opts.coarse_groups = RouteOptions::kNoCoarse;
        st.name = "flat";
      } else if (item.rfind("coarse", 0) == 0) {
        char* end = nullptr;
        const unsigned long v = std::strtoul(item.c_str() + 6, &end, 10);
        if (*end != '\0' || v == 0 || v >= RouteOptions::kNoCoarse) {
          return Fail(Status::InvalidArgument("--nprobe: '" + item + "' is not coarseN with N > 0"));
        }
        if (o.coarse_group_blocks == 0) {
          return Fail(Status::InvalidArgument("--nprobe: '" + item + "' needs --coarse-size (group summaries)"));
        }
        st.opts.coarse_groups = static_cast<uint32_t>(v);
        st.name = "coarse " + item.substr(6);
      } else if (item.rfind("ch", 0) == 0) {
        char* end = nullptr;
        const unsigned long v = std::strtoul(item.c_str() + 2, &end, 10);
        if (*end != '\0' || v == 0) {
          return Fail(Status::InvalidArgument("--nprobe: '" + item + "' is not chN with N > 0"));
        }
        st.opts.channels = static_cast<uint32_t>(v);
        st.name = "channels " + item.substr(2);
      } else {
        char* end = nullptr;
        const unsigned long v = std::strtoul(item.c_str(), &end, 10);
        if (item.empty() || *end != '\0' || v == 0) {
          return Fail(Status::InvalidArgument("--nprobe: '" + item + "' is not default, scan or a positive number"));
        }
        st.opts.nprobe = static_cast<uint32_t>(v);
        st.name = "nprobe " + item;
      }
      settings.push_back(std::move(st));
      at = comma + 1;
    }
  }
  AttendOptions scan_opts = base;  // the router's truth: every summary scored
  scan_opts.exact_routing = true;
  scan_opts.use_cache = false;
  AttendOptions exact_opts;
  exact_opts.exact = true;
  std::vector<double> token_oracle_mass, exact_ms, memory_dense_ms;
  uint64_t needle_total = 0;
  std::vector<float> out(qh * d), lse(qh);
  // The token oracle gets the tokens of the blocks a query may read at most:
  // top-k, sink, recent and, with --document-sinks, every document's first.
  const size_t forced_blocks = 2 + (o.document_sinks ? documents : 0);
  const size_t token_budget =
      std::min<size_t>(block_of.size(), (static_cast<size_t>(o.top_k) + forced_blocks) * bt);
  for (uint32_t i = 0; i < n; ++i) {
    const float* q = qv->data() + static_cast<size_t>(i) * qh * d;
    // The dense reference per head: output, mass per block, token oracle.
    const auto t_dense = Clock::now();
    std::vector<std::vector<double>> dense(qh), block_mass(qh);
    for (uint32_t h = 0; h < qh; ++h) {
      const uint32_t kv = h / group;
      std::vector<double> w;
      dense[h] = Dense(q + h * d, keys[kv], values[kv], d, &w);
      block_mass[h].assign(stats.blocks_per_stream, 0.0);
      for (size_t t = 0; t < w.size(); ++t) block_mass[h][block_of[t]] += w[t];
      std::nth_element(w.begin(), w.begin() + static_cast<ptrdiff_t>(token_budget) - (token_budget > 0), w.end(),
                       std::greater<double>());
      double token_oracle = 0;
      for (size_t j = 0; j < token_budget; ++j) token_oracle += w[j];
      token_oracle_mass.push_back(token_oracle);
    }
    memory_dense_ms.push_back(std::chrono::duration<double, std::milli>(Clock::now() - t_dense).count());
    std::vector<std::vector<uint64_t>> scanned;
    {
      std::vector<float> scan_out(qh * d);
      Status s = store.Attend(o.layer, q, 1, qh, scan_opts, scan_out.data(), nullptr, nullptr, &scanned);
      if (!s.ok()) return Fail(s);
    }
    if (i < o.exact_samples) {  // reads every block: slow, so timed on a few rows only
      std::vector<float> exact_out(qh * d);
      AttendStats est;
      Status s = store.Attend(o.layer, q, 1, qh, exact_opts, exact_out.data(), nullptr, &est);
      if (!s.ok()) return Fail(s);
      exact_ms.push_back(est.total_ms);
    }
    for (Setting& set : settings) {
      std::vector<std::vector<uint64_t>> selected;
      AttendStats st;
      // Cold: every block from the disk (O_DIRECT: no page cache either).
      AttendOptions cold = set.opts;
      cold.use_cache = false;
      Status cs = store.Attend(o.layer, q, 1, qh, cold, out.data(), lse.data(), &st, &selected);
      if (!cs.ok()) return Fail(cs);
      set.cold_ms.push_back(st.total_ms);
      // Warm: through the block cache, after one call that fills it.
      for (uint32_t r = 0; r <= std::max(1u, o.repeats); ++r) {
        Status s = store.Attend(o.layer, q, 1, qh, set.opts, out.data(), lse.data(), &st, &selected);
        if (!s.ok()) return Fail(s);
        if (r == 0) continue;
        set.warm_hits += st.cache_hits;
        set.warm_blocks += st.cache_hits + st.blocks_read;
        set.sparse_ms.push_back(st.total_ms);
        set.route_ms.push_back(st.route_ms);
        set.fetch_ms.push_back(st.fetch_ms);
        set.decode_ms.push_back(st.decode_ms);
        set.attend_ms.push_back(st.attend_ms);
      }
      set.routed_fraction.push_back(st.routed_fraction);
      for (uint32_t kv = 0; kv < g.kv_heads; ++kv) {
        const std::set<uint64_t> truth(scanned[kv].begin(), scanned[kv].end());
        size_t hit = 0;
        for (uint64_t b : selected[kv]) hit += truth.count(b);
        set.router_recall.push_back(truth.empty() ? 1.0 : static_cast<double>(hit) / truth.size());
        set.blocks_selected += selected[kv].size();
      }
      for (uint32_t h = 0; h < qh; ++h) {
        const uint32_t kv = h / group;
        const std::set<uint64_t> sel(selected[kv].begin(), selected[kv].end());
        double m = 0;
        for (uint64_t b : sel) m += block_mass[h][b];
        set.mass.push_back(m);
        double num = 0, den = 0;
        for (size_t c = 0; c < d; ++c) {
          const double diff = out[h * d + c] - dense[h][c];
          num += diff * diff;
          den += dense[h][c] * dense[h][c];
        }
        set.err.push_back(std::sqrt(num / std::max(den, 1e-300)));
        // Block recall@k and the block oracle: the |sel| blocks of most mass.
        std::vector<uint64_t> order(block_mass[h].size());
        for (size_t b = 0; b < order.size(); ++b) order[b] = b;
        const size_t k = std::min(sel.size(), order.size());
        std::partial_sort(order.begin(), order.begin() + static_cast<ptrdiff_t>(k), order.end(),
                          [&](uint64_t a, uint64_t b) { return block_mass[h][a] > block_mass[h][b]; });
        size_t hit = 0;
        double oracle = 0;
        for (size_t j = 0; j < k; ++j) {
          hit += sel.count(order[j]);
          oracle += block_mass[h][order[j]];
        }
        set.brecall.push_back(k ? static_cast<double>(hit) / k : 1.0);
        set.oracle_mass.push_back(oracle);
      }
      for (const auto& nd : needles) {
        if (nd.value("query", -1) != static_cast<int>(i) || nd.value("layer", 0) != static_cast<int>(o.layer)) continue;
        const uint32_t kv = nd.value("kv_head", 0u);
        const uint64_t p0 = nd.value("position", uint64_t{0}), span = nd.value("span", uint64_t{1});
        if (kv >= g.kv_heads || p0 + span > block_of.size()) continue;
        const std::set<uint64_t> sel(selected[kv].begin(), selected[kv].end());
        bool all_in = true;
        for (uint64_t p = p0; p < p0 + span; ++p) all_in = all_in && sel.count(block_of[p]);
        if (&set == &settings.front()) needle_total++;
        set.needle_hits += all_in;
      }
    }
  }
  auto report = [&](const Setting& set) {
    const double avg_blocks = static_cast<double>(set.blocks_selected) / (n * g.kv_heads);
    return nlohmann::json{
        {"setting", set.name},
        {"avg_blocks_selected", avg_blocks},
        {"fraction_of_tokens", avg_blocks * bt / std::max<double>(1, stats.tokens)},
        {"mass_recall", {{"mean", Mean(set.mass)}, {"p5", Percentile(set.mass, 5)}, {"p1", Percentile(set.mass, 1)}}},
        {"output_error", {{"mean", Mean(set.err)}, {"p95", Percentile(set.err, 95)}, {"p99", Percentile(set.err, 99)}}},
        {"block_recall", Mean(set.brecall)},
        {"oracle_block_mass_recall",
         {{"mean", Mean(set.oracle_mass)}, {"p5", Percentile(set.oracle_mass, 5)}, {"p1", Percentile(set.oracle_mass, 1)}}},
        {"router_recall", Mean(set.router_recall)},
        {"routed_fraction", Mean(set.routed_fraction)},
        {"needles", needle_total},
        {"warm_cache_hit_rate", set.warm_blocks ? static_cast<double>(set.warm_hits) / set.warm_blocks : 0.0},
        {"needle_hit_rate", needle_total ? static_cast<double>(set.needle_hits) / needle_total : 0.0},
        {"latency_ms",
         {{"sparse_p50", Percentile(set.sparse_ms, 50)}, {"sparse_p99", Percentile(set.sparse_ms, 99)},
          {"sparse_cold_p50", Percentile(set.cold_ms, 50)}, {"sparse_cold_p99", Percentile(set.cold_ms, 99)},
          {"exact_store_p50", Percentile(exact_ms, 50)}, {"exact_store_p99", Percentile(exact_ms, 99)},
          {"dense_in_memory_f64_p50", Percentile(memory_dense_ms, 50)},
          {"sparse_route_p50", Percentile(set.route_ms, 50)}, {"sparse_route_p99", Percentile(set.route_ms, 99)},
          {"sparse_fetch_p50", Percentile(set.fetch_ms, 50)}, {"sparse_decode_p50", Percentile(set.decode_ms, 50)},
          {"sparse_attend_p50", Percentile(set.attend_ms, 50)}}}};
  };
  // The first setting's figures at the top level; all of them under "settings".
  nlohmann::json j = report(settings.front());
  j.update({{"store", o.store},
            {"tokens", stats.tokens},
            {"blocks_per_stream", stats.blocks_per_stream},
            {"queries", n},
            {"q_heads", qh},
            {"top_k", o.top_k},
            {"document_sinks", o.document_sinks},
            {"open_ms", open_ms},
            {"oracle_token_mass_recall",
             {{"mean", Mean(token_oracle_mass)}, {"p5", Percentile(token_oracle_mass, 5)}}},
            {"summary", SummaryName(g.summary)},
            {"combine", o.combine},
            {"ivf_streams", stats.ivf_streams},
            {"reader", stats.reader}});
  j["settings"] = nlohmann::json::array();
  for (const Setting& set : settings) j["settings"].push_back(report(set));
  if (o.json) {
    std::printf("%s\n", j.dump(2).c_str());
    return kExitOk;
  }
  const Setting& f = settings.front();
  const double avg_blocks = static_cast<double>(f.blocks_selected) / (n * g.kv_heads);
  std::printf("store %s: %llu tokens per stream, %llu blocks; %u queries x %u heads, top-k %u "
              "(+ sink + recent%s) = %.1f blocks per KV head (%.2f%% of tokens)\n",
              o.store.c_str(), (unsigned long long)stats.tokens, (unsigned long long)stats.blocks_per_stream,
              n, qh, o.top_k, o.document_sinks ? " + document sinks" : "", avg_blocks, 100.0 * avg_blocks * bt / std::max<double>(1, stats.tokens));
  std::printf("quality vs dense (float64, all tokens), %s:\n", f.name.c_str());
  std::printf("  mass recall     mean %.4f  p5 %.4f  p1 %.4f\n", Mean(f.mass), Percentile(f.mass, 5), Percentile(f.mass, 1));
  std::printf("  output error    mean %.4f  p95 %.4f  p99 %.4f\n", Mean(f.err), Percentile(f.err, 95), Percentile(f.err, 99));
  std::printf("  block recall@k  %.4f\n", Mean(f.brecall));
  std::printf("  needle hits     %llu / %llu\n", (unsigned long long)f.needle_hits, (unsigned long long)needle_total);
  std::printf("  oracle (best blocks, same budget) mass recall  mean %.4f  p5 %.4f  p1 %.4f\n",
              Mean(f.oracle_mass), Percentile(f.oracle_mass, 5), Percentile(f.oracle_mass, 1));
  std::printf("  oracle (best tokens, same budget) mass recall  mean %.4f  p5 %.4f\n",
              Mean(token_oracle_mass), Percentile(token_oracle_mass, 5));
  std::printf("router (summary %s, GQA %s, %u of %u streams on IVF): recall vs exact scan %.4f, "
              "%.2f%% of summaries scored\n",
              SummaryName(g.summary), o.combine.c_str(), stats.ivf_streams, g.streams(),
              Mean(f.router_recall), 100.0 * Mean(f.routed_fraction));
  std::printf("latency per query row, all %u heads (ms):       p50      p99\n", qh);
  std::printf("  msa sparse, cold (blocks from disk)     %8.3f %8.3f\n", Percentile(f.cold_ms, 50), Percentile(f.cold_ms, 99));
  std::printf("  msa sparse, warm (block cache, %3.0f%% hit) %6.3f %8.3f\n",
              f.warm_blocks ? 100.0 * f.warm_hits / f.warm_blocks : 0.0, Percentile(f.sparse_ms, 50),
              Percentile(f.sparse_ms, 99));
  std::printf("  msa exact (reads every block)           %8.3f %8.3f   -> sparse cold is %.1fx faster\n",
              Percentile(exact_ms, 50), Percentile(exact_ms, 99),
              Percentile(exact_ms, 50) / std::max(1e-9, Percentile(f.cold_ms, 50)));
  std::printf("  warm breakdown p50: route %.3f  fetch %.3f  decode %.3f  attend %.3f  (reader: %s)\n",
              Percentile(f.route_ms, 50), Percentile(f.fetch_ms, 50), Percentile(f.decode_ms, 50),
              Percentile(f.attend_ms, 50), stats.reader.c_str());
  std::printf("  store opened in %.1f ms\n", open_ms);
  if (settings.size() > 1) {
    std::printf("routing settings (same queries, same reference):\n");
    std::printf("  %-16s %8s %8s %8s %8s %9s %9s\n", "setting", "needles", "mass p5", "recall", "scored", "route p50", "route p99");
    for (const Setting& set : settings) {
      std::printf("  %-16s %8.3f %8.4f %8.4f %7.2f%% %9.3f %9.3f\n", set.name.c_str(),
                  needle_total ? static_cast<double>(set.needle_hits) / needle_total : 0.0,
                  Percentile(set.mass, 5), Mean(set.router_recall), 100.0 * Mean(set.routed_fraction),
                  Percentile(set.route_ms, 50), Percentile(set.route_ms, 99));
    }
  }
  return kExitOk;
}

}  // namespace msa::cli
