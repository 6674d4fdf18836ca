#include "tools/synth_generator.h"

#include <sys/stat.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cmath>
#include <fstream>

#include "attention/half.h"
#include "tools/npy_file.h"

namespace msa::cli {

namespace {

// Acklam's rational approximation of the inverse normal CDF (relative error
// below 1.2e-9), for the quantile table of the fast noise.
double InverseNormalCdf(double p) {
  static const double a[] = {-3.969683028665376e+01, 2.209460984245205e+02, -2.759285104469687e+02,
                             1.383577518672690e+02,  -3.066479806614716e+01, 2.506628277459239e+00};
  static const double b[] = {-5.447609879822406e+01, 1.615858368580409e+02, -1.556989798598866e+02,
                             6.680131188771972e+01,  -1.328068155288572e+01};
  static const double c[] = {-7.784894002430293e-03, -3.223964580411365e-01, -2.400758277161838e+00,
                             -2.549732539343734e+00, 4.374664141464968e+00,  2.938163982698783e+00};
  static const double d[] = {7.784695709041462e-03, 3.224671290700398e-01, 2.445134137142996e+00,
                             3.754408661907416e+00};
  const double lo = 0.02425, hi = 1 - lo;
  if (p < lo) {
    const double q = std::sqrt(-2 * std::log(p));
    return (((((c[0] * q + c[1]) * q + c[2]) * q + c[3]) * q + c[4]) * q + c[5]) /
           ((((d[0] * q + d[1]) * q + d[2]) * q + d[3]) * q + 1);
  }
  if (p > hi) {
    const double q = std::sqrt(-2 * std::log(1 - p));
    return -(((((c[0] * q + c[1]) * q + c[2]) * q + c[3]) * q + c[4]) * q + c[5]) /
           ((((d[0] * q + d[1]) * q + d[2]) * q + d[3]) * q + 1);
  }
  const double q = p - 0.5, r = q * q;
  return (((((a[0] * r + a[1]) * r + a[2]) * r + a[3]) * r + a[4]) * r + a[5]) * q /
         (((((b[0] * r + b[1]) * r + b[2]) * r + b[3]) * r + b[4]) * r + 1);
}

// The 65,536 Gaussian quantiles Phi^-1((i + 0.5) / 65536), as float and as
// fp16 bits: a 16-bit uniform index picks one, a discretised N(0, 1).
struct NormalTable {
  std::array<float, 65536> f;
  std::array<uint16_t, 65536> h;
  NormalTable() {
    for (size_t i = 0; i < f.size(); ++i) f[i] = static_cast<float>(InverseNormalCdf((i + 0.5) / 65536.0));
    attention::FloatToHalfArray(f.data(), h.data(), f.size());
  }
};
const NormalTable& Table() {
  static const NormalTable table;
  return table;
}

uint64_t SplitMix64(uint64_t& x) {
  uint64_t z = (x += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

// xoshiro256** (Blackman and Vigna), seeded through SplitMix64.
class Xoshiro {
 public:
  explicit Xoshiro(uint64_t seed) {
    for (auto& w : s_) w = SplitMix64(seed);
  }
  uint64_t Next() {
    const uint64_t result = Rotl(s_[1] * 5, 7) * 9;
    const uint64_t t = s_[1] << 17;
    s_[2] ^= s_[0];
    s_[3] ^= s_[1];
    s_[1] ^= s_[2];
    s_[0] ^= s_[3];
    s_[2] ^= t;
    s_[3] = Rotl(s_[3], 45);
    return result;
  }

 private:
  static uint64_t Rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }
  uint64_t s_[4];
};

// n discretised normals: fp16 bits (half) or floats (f).
void FillHalf(Xoshiro& rng, uint16_t* out, size_t n) {
  const auto& h = Table().h;
  size_t i = 0;
  for (; i + 4 <= n; i += 4) {
    const uint64_t r = rng.Next();
    out[i] = h[r & 0xffff];
    out[i + 1] = h[(r >> 16) & 0xffff];
    out[i + 2] = h[(r >> 32) & 0xffff];
    out[i + 3] = h[r >> 48];
  }
  for (uint64_t r = rng.Next(); i < n; ++i, r >>= 16) out[i] = h[r & 0xffff];
}
void FillFloat(Xoshiro& rng, float* out, size_t n) {
  const auto& f = Table().f;
  size_t i = 0;
  for (; i + 4 <= n; i += 4) {
    const uint64_t r = rng.Next();
    out[i] = f[r & 0xffff];
    out[i + 1] = f[(r >> 16) & 0xffff];
    out[i + 2] = f[(r >> 32) & 0xffff];
    out[i + 3] = f[r >> 48];
  }
  for (uint64_t r = rng.Next(); i < n; ++i, r >>= 16) out[i] = f[r & 0xffff];
}

}  // namespace

Result<std::unique_ptr<SynthCorpus>> SynthCorpus::Make(const SynthOptions& o) {
  if (o.kv_heads == 0 || o.q_heads == 0 || o.q_heads % o.kv_heads != 0 || o.needle_span == 0 ||
      o.head_dim == 0 || o.layers == 0 || o.tokens < o.needle_span ||
      (o.doc_tokens == 0 && (o.docs == 0 || o.tokens < o.docs))) {
    return Status::InvalidArgument("synth: inconsistent sizes (need docs >= 1, tokens >= docs, "
                                   "tokens >= needle span >= 1, q_heads a multiple of kv_heads)");
  }
  if (o.rng != "mt19937" && o.rng != "fast") {
    return Status::InvalidArgument("synth: --rng must be mt19937 or fast, not '" + o.rng + "'");
  }
  std::unique_ptr<SynthCorpus> c(new SynthCorpus(o));
  c->fast_ = o.rng == "fast";
  if (o.doc_tokens > 0) {
    const uint64_t docs = (o.tokens + o.doc_tokens - 1) / o.doc_tokens;
    if (docs > UINT32_MAX) return Status::InvalidArgument("synth: too many documents");
    c->docs_ = static_cast<uint32_t>(docs);
    c->per_doc_ = o.doc_tokens;
  } else {
    c->docs_ = o.docs;
  }
  c->rng_.seed(o.seed);
  auto& rng = c->rng_;
  auto& normal = c->normal_;
  const uint32_t d = o.head_dim, group = o.q_heads / o.kv_heads;
  const float q_norm = std::sqrt(static_cast<float>(d));  // background scaled score ~ N(0, 1)

  // Queries and needle placements: one needle per (row, KV head) that all
  // the group's query heads look for or, with --needle-per-head, one per
  // (row, query head), each head looking for its own (heads of one GQA
  // group with different jobs: what separates max from sum).
  c->queries_.resize(static_cast<size_t>(o.queries) * o.q_heads * d);
  std::uniform_int_distribution<uint64_t> depth(0, o.tokens - o.needle_span);
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
          float* q = &c->queries_[(static_cast<size_t>(i) * o.q_heads + h) * d];
          for (uint32_t ch = 0; ch < d; ++ch) q[ch] = q_norm * nd.u[ch] + 0.3f * normal(rng);
        }
        nlohmann::json rec = {{"query", i}, {"kv_head", g}, {"layer", 0},
                              {"position", nd.position}, {"span", o.needle_span}};
        if (o.needle_per_head) rec["q_head"] = h0;
        c->needles_.push_back(rec);
        c->planted_.push_back(std::move(nd));
      }
    }
  }
  // The key distribution's distortions: a shift w common to all keys (which
  // queries do not share) and outlier channels.
  c->shift_.assign(d, 0.0f);
  if (o.key_shift != 0) {
    float norm = 0;
    for (auto& x : c->shift_) {
      x = normal(rng);
      norm += x * x;
    }
    for (auto& x : c->shift_) x *= o.key_shift / std::sqrt(norm);
  }
  c->channel_scale_.assign(d, 1.0f);
  for (uint32_t ch = 0; ch < std::min(o.outlier_channels, d); ++ch) {
    c->channel_scale_[(ch * 7919u) % d] = o.outlier_scale;
  }
  c->distorted_ = o.key_shift != 0 || o.outlier_channels != 0;
  return c;
}

uint64_t SynthCorpus::doc_tokens(uint32_t doc) const {
  if (per_doc_ > 0) return std::min(per_doc_, o_.tokens - static_cast<uint64_t>(doc) * per_doc_);
  return o_.tokens / docs_ + (doc < o_.tokens % docs_ ? 1 : 0);
}

uint64_t SynthCorpus::doc_start(uint32_t doc) const {
  if (per_doc_ > 0) return static_cast<uint64_t>(doc) * per_doc_;
  const uint64_t base = o_.tokens / docs_, extra = o_.tokens % docs_;
  return static_cast<uint64_t>(doc) * base + std::min<uint64_t>(doc, extra);
}

nlohmann::json SynthCorpus::geometry_json() const {
  nlohmann::json j = {{"layers", o_.layers}, {"kv_heads", o_.kv_heads}, {"q_heads", o_.q_heads},
                      {"head_dim", o_.head_dim}, {"docs", docs_}, {"tokens", o_.tokens}};
  if (fast_) j.update({{"rng", o_.rng}, {"seed", o_.seed}});  // mt19937: as msa synth always wrote it
  return j;
}

Status SynthCorpus::Document(uint32_t doc, std::vector<uint16_t>* keys, std::vector<uint16_t>* values) {
  if (doc >= docs_) return Status::InvalidArgument("synth: no document " + std::to_string(doc));
  return fast_ ? DocumentFast(doc, keys, values) : DocumentMt(doc, keys, values);
}

Status SynthCorpus::DocumentMt(uint32_t doc, std::vector<uint16_t>* keys, std::vector<uint16_t>* values) {
  if (doc != next_doc_) {
    return Status::InvalidArgument("synth: mt19937 documents come in order; asked for " +
                                   std::to_string(doc) + ", next is " + std::to_string(next_doc_));
  }
  const uint32_t d = o_.head_dim;
  const uint64_t t = doc_tokens(doc), start = doc_start(doc);
  const size_t n = static_cast<size_t>(o_.layers) * o_.kv_heads * t * d;
  std::vector<float> k(n), v(n);
  for (auto& x : k) x = normal_(rng_);
  for (auto& x : v) x = normal_(rng_);
  const float a = o_.needle_strength;
  for (const Needle& nd : planted_) {
    for (uint64_t p = nd.position; p < nd.position + o_.needle_span; ++p) {
      if (p < start || p >= start + t) continue;
      float* key = &k[((static_cast<size_t>(nd.kv)) * t + (p - start)) * d];  // layer 0
      for (uint32_t c = 0; c < d; ++c) key[c] = a * nd.u[c] + 0.1f * normal_(rng_);
    }
  }
  if (distorted_) {
    for (size_t row = 0; row < n / d; ++row) {
      for (uint32_t c = 0; c < d; ++c) k[row * d + c] = k[row * d + c] * channel_scale_[c] + shift_[c];
    }
  }
  keys->resize(n);
  values->resize(n);
  attention::FloatToHalfArray(k.data(), keys->data(), n);
  attention::FloatToHalfArray(v.data(), values->data(), n);
  next_doc_++;
  return Status::OK();
}

Status SynthCorpus::DocumentFast(uint32_t doc, std::vector<uint16_t>* keys,
                                 std::vector<uint16_t>* values) const {
  const uint32_t d = o_.head_dim;
  const uint64_t t = doc_tokens(doc), start = doc_start(doc);
  const size_t n = static_cast<size_t>(o_.layers) * o_.kv_heads * t * d;
  keys->resize(n);
  values->resize(n);
  uint64_t seed = o_.seed ^ 0x5eed5eed5eed5eedull;
  seed = SplitMix64(seed) ^ (static_cast<uint64_t>(doc) * 0x9e3779b97f4a7c15ull);
  Xoshiro rng(seed);
  FillHalf(rng, values->data(), n);
  const float a = o_.needle_strength;
  auto needle_key = [&](const Needle& nd, float* key) {
    FillFloat(rng, key, d);
    for (uint32_t c = 0; c < d; ++c) key[c] = a * nd.u[c] + 0.1f * key[c];
  };
  if (!distorted_) {
    FillHalf(rng, keys->data(), n);
    std::vector<float> key(d);
    for (const Needle& nd : planted_) {
      for (uint64_t p = std::max(nd.position, start); p < std::min(nd.position + o_.needle_span, start + t); ++p) {
        needle_key(nd, key.data());
        attention::FloatToHalfArray(key.data(), keys->data() + (static_cast<size_t>(nd.kv) * t + (p - start)) * d, d);
      }
    }
    return Status::OK();
  }
  // Distorted keys go through float a chunk of rows at a time (needles are
  // distorted too, as in mt19937 mode).
  constexpr size_t kRows = 4096;
  std::vector<float> buf(kRows * d);
  const size_t rows = n / d;
  for (size_t r0 = 0; r0 < rows; r0 += kRows) {
    const size_t nr = std::min(kRows, rows - r0);
    FillFloat(rng, buf.data(), nr * d);
    // Rows r0..r0+nr of [layers, kv_heads, t]: row = (stream * t + token).
    for (const Needle& nd : planted_) {
      for (uint64_t p = std::max(nd.position, start); p < std::min(nd.position + o_.needle_span, start + t); ++p) {
        const size_t row = static_cast<size_t>(nd.kv) * t + (p - start);  // layer 0
        if (row >= r0 && row < r0 + nr) needle_key(nd, &buf[(row - r0) * d]);
      }
    }
    for (size_t row = 0; row < nr; ++row) {
      for (uint32_t c = 0; c < d; ++c) buf[row * d + c] = buf[row * d + c] * channel_scale_[c] + shift_[c];
    }
    attention::FloatToHalfArray(buf.data(), keys->data() + r0 * d, nr * d);
  }
  return Status::OK();
}

Status SynthCorpus::WriteSidecars(const std::string& dir) const {
  if (::mkdir(dir.c_str(), 0755) != 0 && errno != EEXIST) {
    return Status::FromErrno("create directory " + dir, errno);
  }
  MSA_RETURN_IF_ERROR(formats::WriteNpyFloat32(dir + "/queries.npy", {o_.queries, o_.q_heads, o_.head_dim},
                                               queries_.data()));
  auto write_json = [&](const std::string& name, const nlohmann::json& j) {
    const std::string path = dir + "/" + name;
    std::ofstream f(path);
    f << j.dump(1) << "\n";
    f.close();
    return f ? Status::OK() : Status::IOError(path + ": write failed");
  };
  MSA_RETURN_IF_ERROR(write_json("needles.json", needles_));
  MSA_RETURN_IF_ERROR(write_json("geometry.json", geometry_json()));
  return Status::OK();
}

}  // namespace msa::cli
