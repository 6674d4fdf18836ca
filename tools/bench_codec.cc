// msa_bench_codec: every block codec side by side on the same K/V, one core.
//
// Per codec: compression ratio against plain fp16 (payload + header, and
// padded to 4 KiB as the segments store it), encode and decode speed in GB/s
// of fp16-equivalent K/V per core, against memcpy and plain zstd (level 1,
// no shuffle) of the same fp16 bytes; and the attention output error the
// codec adds over f16 at the same selection:
//   eps = ||o_codec - o_f16|| / ||o_f16||
// per (query, stream), both over the same 64 blocks (the f16 block oracle's
// top blocks by attention mass, plus the first and last block).
//
// K/V come from a store (--store: each stream's committed tokens, as the
// store's codec decoded them) or are synthetic model-like data: Gaussian,
// every seventh key channel 20x larger (outlier channels), values with a
// per-token offset. Queries: half are a key of the stream scaled to a peaked
// softmax (a needle-like query), half Gaussian (diffuse attention); with
// --queries Q.npy ([n, q_heads, head_dim] from tools/realkv) the real ones.
//
//   msa_bench_codec [--store PATH --layers 0,5,... | --tokens N --head-dim D]
//                   [--queries Q.npy --layer L] [--json]
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>
#include <zstd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "attention/dequantize.h"
#include "attention/half.h"
#include "attention/sparse_attention_cpu.h"
#include "io/aligned_buffer.h"
#include "store/codec.h"
#include "store/codec_quantized.h"
#include "store/store.h"
#include "tools/npy_file.h"

namespace {

using Clock = std::chrono::steady_clock;
using msa::Codec;

// One stream's K/V, float32 [tokens, d].
struct Stream {
  std::string name;
  std::vector<float> keys, values;
  uint32_t tokens = 0;
  std::vector<std::vector<float>> queries;  // [d] each
};

double Seconds(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

double Percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[std::min(v.size() - 1, static_cast<size_t>(p * (v.size() - 1) + 0.5))];
}

// Attention of q over the given blocks of (k, v) in float64.
std::vector<double> Attend(const std::vector<float>& q, const float* k, const float* v,
                           const std::vector<uint32_t>& blocks, uint32_t bt, uint32_t tokens,
                           uint32_t d) {
  const double scale = 1.0 / std::sqrt(static_cast<double>(d));
  std::vector<double> s;
  std::vector<uint32_t> idx;
  double mx = -INFINITY;
  for (uint32_t b : blocks) {
    for (uint32_t t = b * bt; t < std::min(tokens, (b + 1) * bt); ++t) {
      double acc = 0;
      for (uint32_t c = 0; c < d; ++c) acc += static_cast<double>(q[c]) * k[size_t{t} * d + c];
      s.push_back(acc * scale);
      idx.push_back(t);
      mx = std::max(mx, acc * scale);
    }
  }
  double denom = 0;
  for (double& x : s) denom += (x = std::exp(x - mx));
  std::vector<double> out(d, 0.0);
  for (size_t i = 0; i < s.size(); ++i) {
    for (uint32_t c = 0; c < d; ++c) out[c] += s[i] / denom * v[size_t{idx[i]} * d + c];
  }
  return out;
}

// The f16 block oracle: the top blocks by attention mass under (k, v), plus
// the first and last.
std::vector<uint32_t> OracleBlocks(const std::vector<float>& q, const float* k, uint32_t bt,
                                   uint32_t tokens, uint32_t d, uint32_t top_k) {
  const uint32_t nb = (tokens + bt - 1) / bt;
  const double scale = 1.0 / std::sqrt(static_cast<double>(d));
  std::vector<double> logit(tokens);
  double mx = -INFINITY;
  for (uint32_t t = 0; t < tokens; ++t) {
    double acc = 0;
    for (uint32_t c = 0; c < d; ++c) acc += static_cast<double>(q[c]) * k[size_t{t} * d + c];
    logit[t] = acc * scale;
    mx = std::max(mx, logit[t]);
  }
  std::vector<std::pair<double, uint32_t>> mass(nb, {0.0, 0});
  for (uint32_t t = 0; t < tokens; ++t) {
    mass[t / bt].first += std::exp(logit[t] - mx);
    mass[t / bt].second = t / bt;
  }
  std::sort(mass.begin(), mass.end(), [](auto& a, auto& b) { return a.first > b.first; });
  std::vector<uint32_t> blocks = {0, nb - 1};
  for (uint32_t i = 0; i < std::min(top_k, nb); ++i) blocks.push_back(mass[i].second);
  std::sort(blocks.begin(), blocks.end());
  blocks.erase(std::unique(blocks.begin(), blocks.end()), blocks.end());
  return blocks;
}

void SyntheticStream(uint32_t tokens, uint32_t d, uint64_t seed, Stream* s) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal;
  s->tokens = tokens;
  s->keys.resize(size_t{tokens} * d);
  s->values.resize(size_t{tokens} * d);
  for (uint32_t t = 0; t < tokens; ++t) {
    for (uint32_t c = 0; c < d; ++c) {
      s->keys[size_t{t} * d + c] = normal(rng) * (c % 7 == 0 ? 20.0f : 1.0f);
      s->values[size_t{t} * d + c] = normal(rng) + 0.5f * static_cast<float>(t % 5);
    }
  }
}

// Needle-like queries (a key scaled so its own logit stands out) and
// diffuse Gaussian ones.
void DefaultQueries(uint32_t d, uint32_t n, uint64_t seed, Stream* s) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal;
  for (uint32_t i = 0; i < n; ++i) {
    std::vector<float> q(d);
    if (i % 2 == 0) {
      const uint32_t t = static_cast<uint32_t>(rng() % s->tokens);
      double norm = 0;
      for (uint32_t c = 0; c < d; ++c) norm += std::pow(s->keys[size_t{t} * d + c], 2);
      const float scale = static_cast<float>(12.0 * std::sqrt(static_cast<double>(d)) / norm);
      for (uint32_t c = 0; c < d; ++c) q[c] = scale * s->keys[size_t{t} * d + c];
    } else {
      for (float& x : q) x = 0.5f * normal(rng);
    }
    s->queries.push_back(std::move(q));
  }
}

struct CodecResult {
  std::string name;
  double ratio = 0, padded_ratio = 0, encode_gbs = 0, decode_gbs = 0;
  // One query's attention over 64 blocks (4 query heads on the KV head), us:
  // decoded into float slots then attended, and (quantised codecs) attended
  // over the codes, dequantised inside the loop. 0: not measured.
  double decode_attend_us = 0, codes_attend_us = 0;
  std::vector<double> eps;  // per (query, stream); empty for baselines
};

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"msa_bench_codec: block codecs side by side (ratio, speed per core, attention error)"};
  std::string store_path, queries_path, layers_arg = "0";
  uint32_t tokens = 65536, d = 128, bt = 64, n_queries = 16, top_k = 64, layer = 0, max_heads = 0;
  int repeats = 3;
  bool json = false;
  app.add_option("--store", store_path, "read K/V from this store's streams (else synthetic)");
  app.add_option("--layers", layers_arg, "with --store: layers to read, comma-separated");
  app.add_option("--max-heads", max_heads, "with --store: KV heads per layer (0: all)");
  app.add_option("--queries", queries_path, "real queries [n, q_heads, head_dim] .npy (with --layer)");
  app.add_option("--layer", layer, "the layer --queries belong to");
  app.add_option("--tokens", tokens, "synthetic: tokens per stream")->capture_default_str();
  app.add_option("--head-dim", d, "synthetic: head dim")->capture_default_str();
  app.add_option("--block-tokens", bt, "tokens per block")->capture_default_str();
  app.add_option("--n-queries", n_queries, "queries per stream when not --queries")->capture_default_str();
  app.add_option("--top-k", top_k, "blocks per selection (f16 oracle)")->capture_default_str();
  app.add_option("--repeats", repeats, "timing repeats (best kept)")->capture_default_str();
  app.add_flag("--json", json, "one JSON object on stdout");
  CLI11_PARSE(app, argc, argv);

  std::vector<Stream> streams;
  if (!store_path.empty()) {
    msa::StoreOptions options;
    options.read_only = true;
    auto store = msa::Store::Open(store_path, options);
    if (!store.ok()) {
      std::fprintf(stderr, "msa_bench_codec: %s\n", store.status().ToString().c_str());
      return 4;
    }
    const msa::Geometry& g = (*store)->geometry();
    d = g.head_dim;
    bt = g.block_tokens;
    std::vector<std::vector<float>> real_queries;  // [n * q_heads] of [d]
    uint32_t q_heads = 0;
    if (!queries_path.empty()) {
      auto t = msa::formats::ReadNpy(queries_path);
      if (!t.ok()) {
        std::fprintf(stderr, "msa_bench_codec: %s\n", t.status().ToString().c_str());
        return 3;
      }
      auto f = msa::formats::ToFloat32(*t);
      if (!f.ok() || t->shape.size() != 3 || t->shape[2] != d) {
        std::fprintf(stderr, "msa_bench_codec: %s is not [n, q_heads, %u]\n", queries_path.c_str(), d);
        return 3;
      }
      q_heads = static_cast<uint32_t>(t->shape[1]);
      for (size_t i = 0; i < f->size(); i += d) real_queries.emplace_back(f->begin() + i, f->begin() + i + d);
    }
    size_t pos = 0;
    while (pos <= layers_arg.size()) {
      const size_t comma = std::min(layers_arg.find(',', pos), layers_arg.size());
      const uint32_t l = static_cast<uint32_t>(std::stoul(layers_arg.substr(pos, comma - pos)));
      pos = comma + 1;
      const uint32_t heads = max_heads ? std::min(max_heads, g.kv_heads) : g.kv_heads;
      for (uint32_t h = 0; h < heads; ++h) {
        Stream s;
        s.name = "layer " + std::to_string(l) + " kv-head " + std::to_string(h);
        msa::Status st = (*store)->ReadStream(l, h, &s.keys, &s.values);
        if (!st.ok()) {
          std::fprintf(stderr, "msa_bench_codec: %s\n", st.ToString().c_str());
          return 5;
        }
        s.tokens = static_cast<uint32_t>(s.keys.size() / d);
        if (!real_queries.empty() && l == layer) {
          const uint32_t group = q_heads / g.kv_heads;
          for (size_t i = 0; i < real_queries.size(); ++i) {
            if ((i % q_heads) / group == h) s.queries.push_back(real_queries[i]);
          }
        } else {
          DefaultQueries(d, n_queries, 1000 + l * 31 + h, &s);
        }
        streams.push_back(std::move(s));
      }
    }
  } else {
    Stream s;
    s.name = "synthetic";
    SyntheticStream(tokens, d, 42, &s);
    DefaultQueries(d, n_queries, 7, &s);
    streams.push_back(std::move(s));
  }

  // Every block of every stream, as fp16 (the baselines' input) and float.
  uint64_t raw_bytes = 0, blocks = 0;
  for (const Stream& s : streams) {
    raw_bytes += 4ull * s.tokens * d;
    blocks += (s.tokens + bt - 1) / bt;
  }
  std::vector<uint16_t> fp16;
  for (const Stream& s : streams) {
    for (uint32_t b = 0; b * bt < s.tokens; ++b) {
      const size_t n = size_t{std::min(bt, s.tokens - b * bt)} * d;
      const size_t at = fp16.size();
      fp16.resize(at + 2 * n);
      msa::attention::FloatToHalfArray(s.keys.data() + size_t{b} * bt * d, fp16.data() + at, n);
      msa::attention::FloatToHalfArray(s.values.data() + size_t{b} * bt * d, fp16.data() + at + n, n);
    }
  }
  const double gb = static_cast<double>(raw_bytes) / 1e9;
  std::vector<CodecResult> results;

  {  // memcpy of the fp16 bytes: the speed ceiling
    std::vector<uint16_t> copy(fp16.size());
    double best = 1e30;
    for (int r = 0; r < repeats; ++r) {
      auto t0 = Clock::now();
      std::memcpy(copy.data(), fp16.data(), raw_bytes);
      best = std::min(best, Seconds(t0));
    }
    results.push_back({"memcpy (fp16)", 1.0, 1.0, gb / best, gb / best, {}});
  }
  {  // plain zstd level 1 of each block's fp16 bytes, no shuffle
    ZSTD_CCtx* cctx = ZSTD_createCCtx();
    ZSTD_DCtx* dctx = ZSTD_createDCtx();
    const size_t block_bytes = size_t{bt} * d * 4;
    std::vector<std::vector<uint8_t>> compressed;
    std::vector<uint8_t> out(block_bytes);
    double enc = 1e30, dec = 1e30;
    uint64_t stored = 0, padded = 0;
    for (int r = 0; r < repeats; ++r) {
      compressed.clear();
      stored = padded = 0;
      auto t0 = Clock::now();
      for (size_t at = 0; at < fp16.size() * 2; at += block_bytes) {  // blocks are full but the last
        const size_t n = std::min(block_bytes, fp16.size() * 2 - at);
        std::vector<uint8_t> c(ZSTD_compressBound(n));
        c.resize(ZSTD_compressCCtx(cctx, c.data(), c.size(),
                                   reinterpret_cast<const uint8_t*>(fp16.data()) + at, n, 1));
        stored += c.size() + msa::kBlockRecordHeaderSize;
        padded += msa::io::AlignUp(c.size() + msa::kBlockRecordHeaderSize);
        compressed.push_back(std::move(c));
      }
      enc = std::min(enc, Seconds(t0));
      t0 = Clock::now();
      for (const auto& c : compressed) {  // into one cache-resident buffer
        if (ZSTD_isError(ZSTD_decompressDCtx(dctx, out.data(), out.size(), c.data(), c.size()))) {
          std::fprintf(stderr, "msa_bench_codec: zstd baseline failed to decompress\n");
          return 1;
        }
      }
      dec = std::min(dec, Seconds(t0));
    }
    ZSTD_freeCCtx(cctx);
    ZSTD_freeDCtx(dctx);
    results.push_back({"zstd-1 (fp16, no shuffle)", static_cast<double>(raw_bytes) / stored,
                       static_cast<double>(raw_bytes) / padded, gb / enc, gb / dec, {}});
  }

  // The f16 reference decode of every stream, for the error metric.
  std::vector<std::vector<float>> f16_keys(streams.size()), f16_values(streams.size());
  for (Codec codec : {Codec::kF16ShuffleZstd, Codec::kBF16ShuffleZstd, Codec::kInt8, Codec::kInt4}) {
    msa::BlockEncoder encoder;
    msa::BlockDecoder decoder;
    CodecResult res;
    res.name = msa::CodecName(codec);
    uint64_t stored = 0, padded = 0;
    double enc = 1e30, dec = 1e30;
    std::vector<std::vector<uint8_t>> records;
    std::vector<msa::BlockRecordHeader> headers;
    for (int r = 0; r < repeats; ++r) {
      records.clear();
      headers.clear();
      stored = padded = 0;
      auto t0 = Clock::now();
      for (const Stream& s : streams) {
        for (uint32_t b = 0; b * bt < s.tokens; ++b) {
          const uint32_t n = std::min(bt, s.tokens - b * bt);
          msa::BlockRecordHeader h;
          auto rec = encoder.Encode(codec, {0, 0, b}, n, d, s.keys.data() + size_t{b} * bt * d,
                                    s.values.data() + size_t{b} * bt * d, &h);
          if (!rec.ok()) {
            std::fprintf(stderr, "msa_bench_codec: %s: %s\n", s.name.c_str(), rec.status().ToString().c_str());
            return 3;
          }
          stored += rec->size();
          padded += msa::io::AlignUp(rec->size());
          records.emplace_back(rec->begin(), rec->end());
          headers.push_back(h);
        }
      }
      enc = std::min(enc, Seconds(t0));
    }
    // Decode speed: every block into one of 64 gather slots, as one query's
    // fetch does (the slots stay in cache, like the attention path's).
    constexpr size_t kSlots = 64;
    std::vector<float> slot_keys(kSlots * bt * d), slot_values(kSlots * bt * d);
    for (int r = 0; r < repeats; ++r) {
      size_t j = 0;
      auto t0 = Clock::now();
      for (const Stream& s : streams) {
        for (uint32_t b = 0; b * bt < s.tokens; ++b, ++j) {
          const uint32_t n = std::min(bt, s.tokens - b * bt);
          const size_t at = (j % kSlots) * bt * d;
          msa::Status st = decoder.Decode(records[j], {0, 0, b}, headers[j].checksum, n, d,
                                          slot_keys.data() + at, slot_values.data() + at);
          if (!st.ok()) {
            std::fprintf(stderr, "msa_bench_codec: %s\n", st.ToString().c_str());
            return 5;
          }
        }
      }
      dec = std::min(dec, Seconds(t0));
    }
    // One query's attention over 64 blocks at a time, the way Store::Attend
    // runs it on the CPU: every record decoded into a float slot and then
    // attended (a quantised one as a cache hit is: without the checks), or
    // (quantised codecs) attended over its codes in place.
    {
      constexpr int kHeads = 4;
      std::vector<float> q(size_t{kHeads} * d);
      std::mt19937_64 rng(77);
      std::normal_distribution<float> normal;
      for (float& x : q) x = normal(rng);
      std::vector<float> out(size_t{kHeads} * d), lse(kHeads);
      std::vector<int32_t> index(kSlots), len(kSlots);
      for (size_t i = 0; i < kSlots; ++i) index[i] = static_cast<int32_t>(i);
      msa::attention::AttentionShape shape{1, kHeads, 1, static_cast<int>(d), static_cast<int>(bt),
                                           static_cast<float>(1.0 / std::sqrt(d))};
      const size_t queries = (records.size() + kSlots - 1) / kSlots;
      std::vector<msa::attention::QuantizedBlock> codes(kSlots);
      std::vector<float> dequant_scratch;
      double decoded = 1e30, in_place = 1e30;
      for (int r = 0; r < repeats; ++r) {
        auto t0 = Clock::now();
        for (size_t j0 = 0; j0 < records.size(); j0 += kSlots) {
          const int32_t m = static_cast<int32_t>(std::min(kSlots, records.size() - j0));
          for (int32_t i = 0; i < m; ++i) {
            const msa::BlockRecordHeader& h = headers[j0 + i];
            len[i] = static_cast<int32_t>(h.tokens);
            float* k = slot_keys.data() + i * bt * d;
            float* v = slot_values.data() + i * bt * d;
            if (msa::quantized::Handles(codec)) {  // as a cache hit is decoded: verified when it was read
              msa::quantized::Decode(codec, records[j0 + i].data() + msa::kBlockRecordHeaderSize, h.tokens, d, k, v,
                                     &dequant_scratch);
            } else if (!decoder.Decode(records[j0 + i], h.id, h.checksum, h.tokens, d, k, v).ok()) {
              return 5;
            }
          }
          msa::attention::SparseAttentionCpu(shape, {m, slot_keys.data(), slot_values.data(), len.data()},
                                             {static_cast<int>(kSlots), index.data(), &m}, q.data(), out.data(),
                                             lse.data());
        }
        decoded = std::min(decoded, Seconds(t0));
        if (!msa::quantized::Handles(codec)) continue;
        t0 = Clock::now();
        for (size_t j0 = 0; j0 < records.size(); j0 += kSlots) {
          const int32_t m = static_cast<int32_t>(std::min(kSlots, records.size() - j0));
          for (int32_t i = 0; i < m; ++i) {  // what a query does with the cache's verified records
            codes[i] = msa::quantized::View(codec, records[j0 + i].data() + msa::kBlockRecordHeaderSize,
                                            headers[j0 + i].tokens, d);
          }
          msa::attention::QuantizedBlockTable table = msa::quantized::TableShape(codec, bt, d);
          table.num_blocks = m;
          table.blocks = codes.data();
          msa::attention::SparseAttentionCpu(shape, table, {static_cast<int>(kSlots), index.data(), &m}, q.data(),
                                             out.data(), lse.data());
        }
        in_place = std::min(in_place, Seconds(t0));
      }
      res.decode_attend_us = decoded * 1e6 / queries;
      if (msa::quantized::Handles(codec)) res.codes_attend_us = in_place * 1e6 / queries;
    }
    // The decoded streams, for the error metric.
    std::vector<std::vector<float>> keys(streams.size()), values(streams.size());
    for (size_t i = 0, j = 0; i < streams.size(); ++i) {
      const Stream& s = streams[i];
      keys[i].resize(size_t{s.tokens} * d);
      values[i].resize(size_t{s.tokens} * d);
      for (uint32_t b = 0; b * bt < s.tokens; ++b, ++j) {
        const uint32_t n = std::min(bt, s.tokens - b * bt);
        msa::Status st = decoder.Decode(records[j], {0, 0, b}, headers[j].checksum, n, d,
                                        keys[i].data() + size_t{b} * bt * d,
                                        values[i].data() + size_t{b} * bt * d);
        if (!st.ok()) return 5;
      }
    }
    res.ratio = static_cast<double>(raw_bytes) / stored;
    res.padded_ratio = static_cast<double>(raw_bytes) / padded;
    res.encode_gbs = gb / enc;
    res.decode_gbs = gb / dec;
    if (codec == Codec::kF16ShuffleZstd) {
      f16_keys = keys;
      f16_values = values;
    }
    for (size_t i = 0; i < streams.size(); ++i) {
      const Stream& s = streams[i];
      for (const auto& q : s.queries) {
        const auto sel = OracleBlocks(q, f16_keys[i].data(), bt, s.tokens, d, top_k);
        const auto ref = Attend(q, f16_keys[i].data(), f16_values[i].data(), sel, bt, s.tokens, d);
        const auto got = Attend(q, keys[i].data(), values[i].data(), sel, bt, s.tokens, d);
        double err = 0, norm = 0;
        for (uint32_t c = 0; c < d; ++c) {
          err += (got[c] - ref[c]) * (got[c] - ref[c]);
          norm += ref[c] * ref[c];
        }
        res.eps.push_back(norm > 0 ? std::sqrt(err / norm) : 0.0);
      }
    }
    results.push_back(std::move(res));
  }

  nlohmann::json out = {{"streams", streams.size()},   {"tokens", raw_bytes / (4ull * d)},
                        {"head_dim", d},               {"block_tokens", bt},
                        {"blocks", blocks},            {"raw_fp16_bytes", raw_bytes},
                        {"dequantize_isa", msa::attention::DequantizeIsa()},
                        {"source", store_path.empty() ? "synthetic" : store_path},
                        {"queries", queries_path.empty() ? "synthetic" : queries_path},
                        {"codecs", nlohmann::json::array()}};
  for (const CodecResult& r : results) {
    nlohmann::json j = {{"codec", r.name},
                        {"ratio", r.ratio},
                        {"padded_ratio", r.padded_ratio},
                        {"encode_gbs", r.encode_gbs},
                        {"decode_gbs", r.decode_gbs}};
    if (r.decode_attend_us > 0) j["decode_attend_us"] = r.decode_attend_us;
    if (r.codes_attend_us > 0) j["codes_attend_us"] = r.codes_attend_us;
    if (!r.eps.empty()) {
      double mean = 0;
      for (double e : r.eps) mean += e;
      j["eps_mean"] = mean / r.eps.size();
      j["eps_p50"] = Percentile(r.eps, 0.5);
      j["eps_p99"] = Percentile(r.eps, 0.99);
      j["eps_max"] = Percentile(r.eps, 1.0);
      j["eps_samples"] = r.eps.size();
    }
    out["codecs"].push_back(j);
  }
  if (json) {
    std::printf("%s\n", out.dump(2).c_str());
    return 0;
  }
  std::printf("%s: %zu streams, %llu tokens, head_dim %u, blocks of %u (%llu blocks, %.1f MB as fp16); "
              "dequantisation %s\n",
              store_path.empty() ? "synthetic" : store_path.c_str(), streams.size(),
              (unsigned long long)(raw_bytes / (4ull * d)), d, bt, (unsigned long long)blocks, gb * 1e3,
              msa::attention::DequantizeIsa());
  std::printf("%-28s %7s %8s %10s %10s %12s %12s %10s %10s %10s\n", "codec", "ratio", "on disk", "enc GB/s",
              "dec GB/s", "dec+attn us", "codes us", "eps mean", "eps p99", "eps max");
  for (const auto& j : out["codecs"]) {
    std::printf("%-28s %6.2fx %7.2fx %10.2f %10.2f", j["codec"].get<std::string>().c_str(),
                j["ratio"].get<double>(), j["padded_ratio"].get<double>(), j["encode_gbs"].get<double>(),
                j["decode_gbs"].get<double>());
    if (j.contains("decode_attend_us")) {
      std::printf(" %12.1f", j["decode_attend_us"].get<double>());
      if (j.contains("codes_attend_us")) {
        std::printf(" %12.1f", j["codes_attend_us"].get<double>());
      } else {
        std::printf(" %12s", "");
      }
    } else {
      std::printf(" %12s %12s", "", "");
    }
    if (j.contains("eps_mean")) {
      std::printf(" %10.2e %10.2e %10.2e", j["eps_mean"].get<double>(), j["eps_p99"].get<double>(),
                  j["eps_max"].get<double>());
    }
    std::printf("\n");
  }
  std::printf("(dec+attn us: one query's attention over 64 blocks, 4 query heads, decoded into float slots "
              "first; codes us: the same over the codes, dequantised inside the loop)\n");
  std::printf("(GB/s of fp16-equivalent K/V per core; eps = ||o_codec - o_f16|| / ||o_f16|| over the "
              "f16 oracle's top-%u blocks + sink + recent, per query and stream)\n", top_k);
  return 0;
}
