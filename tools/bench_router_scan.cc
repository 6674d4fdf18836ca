// Router scan micro-benchmark (issue 3): Router::Search alone over random
// summaries: the exact scan, the default routing (approximate past
// RouterOptions::approximate_min_blocks) and the approximate channel scan
// at 8, 16 and 32 channels, plus the raw fp16 column kernel from L1 (what
// the exact scan would cost if memory were free).
//   msa_bench_router_scan [BLOCKS (163840)] [HEAD_DIM (64)] [GROUP (4)] [TOP_K (64)] [bound|hybrid]
//                         [CHANNELS ("all": every setting; 0: the default)] [CANDIDATES (0: the default)]
//                         [COARSE groups (0: the default; 4294967295: flat)] [GROUP blocks (16)]
//                         [SCAN threads, comma-separated ("auto": RouterOptions' default)]
// MSA_ITERS (environment): searches per setting when one setting is run
// (301 by default; more for a steadier p50 on a noisy machine).
// With several scan-thread counts, one router per count over the same
// summaries, in turn; every count's answers must equal the first's.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

#include "store/dot_kernel.h"
#include "store/router.h"

using Clock = std::chrono::steady_clock;

int main(int argc, char** argv) {
  const uint64_t blocks = argc > 1 ? std::strtoull(argv[1], nullptr, 10) : 163840;
  const uint32_t head_dim = argc > 2 ? std::atoi(argv[2]) : 64;
  const int group = argc > 3 ? std::atoi(argv[3]) : 4;
  const uint32_t top_k = argc > 4 ? std::atoi(argv[4]) : 64;
  msa::Geometry g;
  g.layers = 1;
  g.kv_heads = 1;
  g.head_dim = head_dim;
  const std::string kind = argc > 5 ? argv[5] : "bound";
  g.summary = kind == "hybrid" ? msa::SummaryKind::kHybrid : msa::SummaryKind::kBound;
  std::mt19937 rng(1);
  std::normal_distribution<float> normal;
  std::vector<float> summaries(blocks * g.summary_width());
  for (float& x : summaries) x = normal(rng);
  std::vector<uint32_t> scan_threads;
  {
    const std::string list = argc > 10 ? argv[10] : "auto";
    for (size_t at = 0; at <= list.size();) {
      const size_t comma = std::min(list.find(',', at), list.size());
      const std::string item = list.substr(at, comma - at);
      scan_threads.push_back(item == "auto" ? msa::RouterOptions::kAutoScanThreads
                                            : static_cast<uint32_t>(std::strtoul(item.c_str(), nullptr, 10)));
      at = comma + 1;
    }
  }
  const char* iters_env = std::getenv("MSA_ITERS");
  const int single_setting_iters = iters_env ? std::max(1, std::atoi(iters_env)) : 301;
  std::vector<float> q(group * head_dim);
  for (float& x : q) x = normal(rng);
  std::printf("# %llu %s summaries, head_dim %u, %d query heads, top-k %u, kernel isa %s\n",
              static_cast<unsigned long long>(blocks), kind.c_str(), head_dim, group, top_k, msa::F16KernelIsa());
  std::vector<std::vector<msa::ScoredBlock>> first_answers;
  for (size_t t = 0; t < scan_threads.size(); ++t) {
    // Group summaries kept (coarse-to-fine rows), used only where asked.
    msa::RouterOptions ro;
    ro.coarse_group_blocks = argc > 9 ? static_cast<uint32_t>(std::atoi(argv[9])) : 16;
    ro.coarse_min_blocks = UINT64_MAX;
    ro.scan_threads = scan_threads[t];
    msa::Router router(g, ro);
    router.Reserve(0, blocks);
    router.Add(0, summaries);
    if (scan_threads.size() > 1) {
      std::printf("## scan threads %s\n", scan_threads[t] == msa::RouterOptions::kAutoScanThreads
                                            ? "auto" : std::to_string(scan_threads[t]).c_str());
    }
    // UINT32_MAX: the exact scan; 0: the default routing; else that many
    // channels. Then, with the default channels, coarse-to-fine off (flat)
    // and over 64, 128 and 256 groups (COARSE, when given, alone).
    constexpr uint32_t kExact = UINT32_MAX;
    struct Setting {
      uint32_t channels;
      uint32_t coarse;
    };
    std::vector<Setting> settings = {{kExact, 0}, {0, 0}, {8, 0}, {16, 0}, {32, 0}, {0, msa::RouteOptions::kNoCoarse},
                                     {0, 64}, {0, 128}, {0, 256}};
    if (argc > 6 && std::string(argv[6]) != "all") settings = {{static_cast<uint32_t>(std::atoi(argv[6])), 0}};
    if (argc > 8) settings[0].coarse = static_cast<uint32_t>(std::strtoul(argv[8], nullptr, 10));
    for (size_t si = 0; si < settings.size(); ++si) {
      const auto [channels, coarse] = settings[si];
      msa::RouteOptions options;
      options.top_k = top_k;
      options.exact_scan = channels == kExact;
      options.channels = channels == kExact ? 0 : channels;
      options.candidates = argc > 7 ? static_cast<uint32_t>(std::atoi(argv[7])) : 0;
      options.coarse_groups = coarse;
      std::vector<double> ms;
      std::vector<msa::ScoredBlock> found;
      for (int i = 0; i < (settings.size() == 1 ? single_setting_iters : 31); ++i) {
        const auto t0 = Clock::now();
        found = router.Search(0, q.data(), group, options);
        ms.push_back(std::chrono::duration<double, std::milli>(Clock::now() - t0).count());
      }
      std::sort(ms.begin(), ms.end());
      std::string name = channels == kExact ? "exact scan" : channels == 0 ? "default" : "channels " + std::to_string(channels);
      if (coarse == msa::RouteOptions::kNoCoarse) name += " flat";
      if (coarse != 0 && coarse != msa::RouteOptions::kNoCoarse) name += " coarse " + std::to_string(coarse);
      std::printf("search %-12s p50 %.3f ms  min %.3f ms\n", name.c_str(), ms[ms.size() / 2], ms[0]);
      if (t == 0) {
        first_answers.push_back(found);
        continue;
      }
      const std::vector<msa::ScoredBlock>& want = first_answers[si];
      bool same = want.size() == found.size();
      for (size_t i = 0; same && i < want.size(); ++i) {
        same = want[i].block == found[i].block && want[i].score == found[i].score;
      }
      if (!same) {
        std::fprintf(stderr, "error: %s answers differ from the first scan-thread count's\n", name.c_str());
        return 1;
      }
    }
  }
  // The column kernel on one L1-resident tile: 64 columns x 128 blocks.
  std::vector<uint16_t> tile(128 * msa::kColumnTile, 0x3c00);
  std::vector<uint32_t> cols(64);
  for (uint32_t i = 0; i < 64; ++i) cols[i] = 2 * i;
  std::vector<float> coef(64, 0.5f), out(msa::kColumnTile);
  const int iters = 200000;
  float sink = 0;
  const auto t0 = Clock::now();
  for (int i = 0; i < iters; ++i) {
    msa::WeightedColumnSum(coef.data(), cols.data(), cols.size(), tile.data(), msa::kColumnTile, out.data());
    sink += out[i % msa::kColumnTile];
  }
  const double s = std::chrono::duration<double>(Clock::now() - t0).count();
  std::printf("kernel: 64 columns x 128 blocks from L1 in %.1f ns (%.1f G fp16 multiply-adds/s)%s\n",
              s / iters * 1e9, iters * 64.0 * msa::kColumnTile / s / 1e9, sink < 0 ? " " : "");
  return 0;
}
