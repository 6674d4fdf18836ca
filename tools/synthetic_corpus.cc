// `msa synth`: a synthetic K/V corpus with planted needles.
//
// Keys and values are Gaussian N(0, 1). Each query row i gets, per KV head g,
// a random unit direction u; the group's query heads are u * |q| plus noise,
// and a span of needle_span consecutive keys somewhere in the corpus (a
// uniformly random depth) is set to u * a + noise, with a chosen so that the
// needle's scaled score exceeds the background's by needle_strength. The
// needles are planted in layer 0 only; needles.json records where. Options
// add the distortions of real keys: outlier channels (scaled in every key,
// needles included, as real outlier channels are) and a common key offset
// that queries do not share (the query/key shift).
//
// Output (DIR): doc_<i>_keys.npy / doc_<i>_values.npy
// [layers, kv_heads, tokens_i, head_dim] float16, queries.npy
// [queries, q_heads, head_dim] float32, needles.json, geometry.json.
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>
#include <sys/stat.h>

#include <cmath>
#include <fstream>
#include <random>

#include "attention/half.h"
#include "tools/cli_common.h"
#include "tools/commands.h"
#include "tools/npy_file.h"

namespace msa::cli {

void AddSynthOptions(CLI::App* app, SynthOptions& o) {
  app->add_option("DIR", o.dir, "output directory")->required();
  app->add_option("--layers", o.layers)->capture_default_str();
  app->add_option("--kv-heads", o.kv_heads)->capture_default_str();
  app->add_option("--q-heads", o.q_heads)->capture_default_str();
  app->add_option("--head-dim", o.head_dim)->capture_default_str();
  app->add_option("--tokens", o.tokens, "tokens in all documents together")->capture_default_str();
  app->add_option("--docs", o.docs)->capture_default_str();
  app->add_option("--queries", o.queries, "query rows (one needle per row and KV head)")->capture_default_str();
  app->add_option("--needle-span", o.needle_span, "tokens per needle")->capture_default_str();
  app->add_option("--needle-strength", o.needle_strength, "needle's scaled score")->capture_default_str();
  app->add_option("--outlier-channels", o.outlier_channels, "key channels with large magnitude")
      ->capture_default_str();
  app->add_option("--outlier-scale", o.outlier_scale, "their scale")->capture_default_str();
  app->add_option("--key-shift", o.key_shift,
                  "norm of a common offset added to every key (the query/key shift)")
      ->capture_default_str();
  app->add_flag("--needle-per-head", o.needle_per_head,
               "one needle per query head (each head of a GQA group looks for its own)");
  app->add_option("--seed", o.seed)->capture_default_str();
}

int RunSynth(const SynthOptions& o) {
  if (o.docs == 0 || o.tokens < o.docs || o.kv_heads == 0 || o.q_heads % o.kv_heads != 0 ||
      o.needle_span == 0 || o.head_dim == 0 || o.layers == 0) {
    return Fail(Status::InvalidArgument("synth: inconsistent sizes (need docs >= 1, tokens >= docs, "
                                        "q_heads a multiple of kv_heads, needle span >= 1)"));
  }
  ::mkdir(o.dir.c_str(), 0755);
  std::mt19937_64 rng(o.seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  const uint32_t d = o.head_dim, group = o.q_heads / o.kv_heads;
  const float q_norm = std::sqrt(static_cast<float>(d));  // background scaled score ~ N(0, 1)
  // A needle key k = a u gives scaled score q.k / sqrt(d) = a |q| / sqrt(d) = a.
  const float a = o.needle_strength;

  // Queries and needle placements: one needle per (row, KV head) that all
  // the group's query heads look for or, with --needle-per-head, one per
  // (row, query head), each head looking for its own (heads of one GQA
  // group with different jobs: what separates max from sum).
  std::vector<float> queries(static_cast<size_t>(o.queries) * o.q_heads * d);
  struct Needle {
    std::vector<float> u;  // unit direction
    uint32_t kv = 0;
    uint64_t position = 0;
  };
  std::vector<Needle> planted;
  std::uniform_int_distribution<uint64_t> depth(0, o.tokens - o.needle_span);
  nlohmann::json needles = nlohmann::json::array();
  auto random_unit = [&]() {
    std::vector<float> u(d);
    float norm = 0;
    for (auto& x : u) {
      x = normal(rng);
      norm += x * x;
    }
    for (auto& x : u) x /= std::sqrt(norm);
    return u;
  };
  for (uint32_t i = 0; i < o.queries; ++i) {
    for (uint32_t g = 0; g < o.kv_heads; ++g) {
      const uint32_t per_group = o.needle_per_head ? group : 1;
      for (uint32_t j = 0; j < per_group; ++j) {
        Needle nd{random_unit(), g, depth(rng)};
        const uint32_t h0 = o.needle_per_head ? g * group + j : g * group;
        const uint32_t h1 = o.needle_per_head ? h0 + 1 : (g + 1) * group;
        for (uint32_t h = h0; h < h1; ++h) {
          float* q = &queries[(static_cast<size_t>(i) * o.q_heads + h) * d];
          for (uint32_t c = 0; c < d; ++c) q[c] = q_norm * nd.u[c] + 0.3f * normal(rng);
        }
        nlohmann::json rec = {{"query", i}, {"kv_head", g}, {"layer", 0},
                              {"position", nd.position}, {"span", o.needle_span}};
        if (o.needle_per_head) rec["q_head"] = h0;
        needles.push_back(rec);
        planted.push_back(std::move(nd));
      }
    }
  }
  // The key distribution's distortions: a shift w common to all keys (which
  // queries do not share) and outlier channels.
  std::vector<float> shift(d, 0.0f);
  if (o.key_shift != 0) {
    float norm = 0;
    for (auto& x : shift) {
      x = normal(rng);
      norm += x * x;
    }
    for (auto& x : shift) x *= o.key_shift / std::sqrt(norm);
  }
  std::vector<float> channel_scale(d, 1.0f);
  for (uint32_t c = 0; c < std::min(o.outlier_channels, d); ++c) channel_scale[(c * 7919u) % d] = o.outlier_scale;
  // Documents, generated one at a time.
  uint64_t start = 0;
  for (uint32_t doc = 0; doc < o.docs; ++doc) {
    const uint64_t t = o.tokens / o.docs + (doc < o.tokens % o.docs ? 1 : 0);
    const size_t n = static_cast<size_t>(o.layers) * o.kv_heads * t * d;
    std::vector<float> k(n), v(n);
    for (auto& x : k) x = normal(rng);
    for (auto& x : v) x = normal(rng);
    for (const Needle& nd : planted) {
      for (uint64_t p = nd.position; p < nd.position + o.needle_span; ++p) {
        if (p < start || p >= start + t) continue;
        float* key = &k[((static_cast<size_t>(nd.kv)) * t + (p - start)) * d];  // layer 0
        for (uint32_t c = 0; c < d; ++c) key[c] = a * nd.u[c] + 0.1f * normal(rng);
      }
    }
    if (o.key_shift != 0 || o.outlier_channels != 0) {
      for (size_t row = 0; row < n / d; ++row) {
        for (uint32_t c = 0; c < d; ++c) k[row * d + c] = k[row * d + c] * channel_scale[c] + shift[c];
      }
    }
    std::vector<uint16_t> k16(n), v16(n);
    attention::FloatToHalfArray(k.data(), k16.data(), n);
    attention::FloatToHalfArray(v.data(), v16.data(), n);
    const std::vector<int64_t> shape{o.layers, o.kv_heads, static_cast<int64_t>(t), d};
    const std::string base = o.dir + "/doc_" + std::to_string(doc);
    Status s = formats::WriteNpy(base + "_keys.npy", formats::MakeFloat16Tensor(shape, k16.data()));
    if (s.ok()) s = formats::WriteNpy(base + "_values.npy", formats::MakeFloat16Tensor(shape, v16.data()));
    if (!s.ok()) return Fail(s);
    start += t;
  }
  Status s = formats::WriteNpyFloat32(o.dir + "/queries.npy", {o.queries, o.q_heads, d}, queries.data());
  if (!s.ok()) return Fail(s);
  std::ofstream(o.dir + "/needles.json") << needles.dump(1) << "\n";
  nlohmann::json geometry = {{"layers", o.layers}, {"kv_heads", o.kv_heads}, {"q_heads", o.q_heads},
                             {"head_dim", d}, {"docs", o.docs}, {"tokens", o.tokens}};
  std::ofstream(o.dir + "/geometry.json") << geometry.dump(1) << "\n";
  std::printf("wrote %u documents, %llu tokens, %u queries with %zu needles to %s\n", o.docs,
              static_cast<unsigned long long>(o.tokens), o.queries, planted.size(), o.dir.c_str());
  return kExitOk;
}

}  // namespace msa::cli
