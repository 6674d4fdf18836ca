// Helpers shared by the test suites: temporary directories, random K/V and
// the exact float64 dense reference.
#pragma once

#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <random>
#include <string>
#include <vector>

namespace msa::testing {

// A fresh directory removed at scope exit.
class TempDir {
 public:
  TempDir() {
    std::string tmpl = ::testing::TempDir() + "msa_test_XXXXXX";
    path_ = ::mkdtemp(tmpl.data());
  }
  ~TempDir() { std::filesystem::remove_all(path_); }
  const std::string& path() const { return path_; }
  std::string Sub(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

inline std::vector<float> RandomVector(size_t n, uint64_t seed, float scale = 1.0f) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal(0.0f, scale);
  std::vector<float> v(n);
  for (auto& x : v) x = normal(rng);
  return v;
}

// Exact attention of q [d] over K/V [tokens, d] in float64.
inline void DenseReference(const float* q, const float* k, const float* v, size_t tokens, size_t d,
                           double* out, double* lse) {
  const double scale = 1.0 / std::sqrt(static_cast<double>(d));
  std::vector<double> s(tokens);
  double mx = -INFINITY;
  for (size_t t = 0; t < tokens; ++t) {
    double acc = 0;
    for (size_t c = 0; c < d; ++c) acc += static_cast<double>(q[c]) * k[t * d + c];
    s[t] = acc * scale;
    mx = std::max(mx, s[t]);
  }
  double denom = 0;
  for (auto& x : s) denom += (x = std::exp(x - mx));
  for (size_t c = 0; c < d; ++c) out[c] = 0;
  for (size_t t = 0; t < tokens; ++t) {
    for (size_t c = 0; c < d; ++c) out[c] += s[t] / denom * v[t * d + c];
  }
  *lse = mx + std::log(denom);
}

}  // namespace msa::testing
