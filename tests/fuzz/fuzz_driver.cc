// A plain driver for the libFuzzer-style targets in this folder, so any
// compiler (CI builds with g++) can run them for a bounded time.
//
//   msa_fuzz_<target> [options] CORPUS_DIR_OR_FILE...
//     --time-s S    mutate for S seconds after the corpus (default 10)
//     --runs N      stop after N mutated inputs (default: no limit)
//     --seed X      random seed (default: $MSA_FUZZ_SEED, else 1); the same
//                   seed gives the same sequence of mutated inputs
//     --max-len L   largest mutated input in bytes (default 4096)
//     --crash-dir D where a crashing input is written (default: current dir)
//
// Every file named (a directory: each regular file in it, sorted) is run
// once as given, then inputs mutated from them (bit flips, byte and integer
// overwrites with boundary values, insertions, deletions, splices of two
// inputs) until the time or run limit. The driver is blind (no coverage
// feedback: that is what the libFuzzer build, -DMSA_FUZZ=ON, is for); it is
// a smoke test that the corpus and its near neighbours stay clean.
//
// A crash (signal, sanitizer report, abort) first writes the input to
// CRASH_DIR/crash-<target>-<hash> and prints its path; rerun it with
// `msa_fuzz_<target> that-file`. A target returning nonzero is a failure
// too (the targets return 0 or abort on a broken invariant).
//
// The seed is printed first, so that a failed run can be replayed:
//   fuzz <target>: seed <seed> (replay: --seed <seed>, or MSA_FUZZ_SEED=<seed> ctest -R fuzz_<target>)
// tools/test.sh (CI) sets MSA_FUZZ_SEED to a new random value each run, so
// every CI run mutates differently; a plain ctest run uses seed 1.
//
// Output ends with one summary line:
//   fuzz <target>: <corpus> corpus inputs, <runs> mutated runs in <s> s (<rate>/s), seed <seed>
#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <random>
#include <string>
#include <vector>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size);
extern "C" int LLVMFuzzerInitialize(int* argc, char*** argv) __attribute__((weak));
// Sanitizer runtimes call this before they exit on a finding (weak: absent
// in a plain build).
extern "C" void __sanitizer_set_death_callback(void (*callback)(void)) __attribute__((weak));

#ifndef MSA_FUZZ_TARGET_NAME
#define MSA_FUZZ_TARGET_NAME "target"
#endif

namespace {

// The input being run, for the crash handler. Written before each run.
const uint8_t* g_current = nullptr;
size_t g_current_size = 0;
char g_crash_path[4096];
volatile sig_atomic_t g_dumped = 0;

// Async-signal-safe: open, write, close and a fixed buffer only.
void DumpCurrentInput() {
  if (g_dumped || g_current == nullptr) return;
  g_dumped = 1;
  const int fd = ::open(g_crash_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd >= 0) {
    size_t done = 0;
    while (done < g_current_size) {
      const ssize_t put = ::write(fd, g_current + done, g_current_size - done);
      if (put <= 0) break;
      done += static_cast<size_t>(put);
    }
    ::close(fd);
  }
  static const char kMsg[] = "\nfuzz: crashing input written to ";
  (void)!::write(2, kMsg, sizeof(kMsg) - 1);
  (void)!::write(2, g_crash_path, std::strlen(g_crash_path));
  (void)!::write(2, "\n", 1);
}

void OnSignal(int sig) {
  DumpCurrentInput();
  ::signal(sig, SIG_DFL);
  ::raise(sig);
}

// Names the crash file after a hash of the input (FNV-1a), before running it.
void PrepareCrashPath(const std::string& dir, const uint8_t* data, size_t size) {
  uint64_t h = 1469598103934665603ull;
  for (size_t i = 0; i < size; ++i) h = (h ^ data[i]) * 1099511628211ull;
  std::snprintf(g_crash_path, sizeof(g_crash_path), "%s/crash-%s-%016llx", dir.c_str(),
                MSA_FUZZ_TARGET_NAME, static_cast<unsigned long long>(h));
}

bool RunOne(const std::string& crash_dir, const std::vector<uint8_t>& input) {
  PrepareCrashPath(crash_dir, input.data(), input.size());
  g_current = input.data();
  g_current_size = input.size();
  const int rc = LLVMFuzzerTestOneInput(input.data(), input.size());
  g_current = nullptr;
  if (rc != 0) {
    g_current = input.data();
    DumpCurrentInput();
    std::fprintf(stderr, "fuzz: the target returned %d\n", rc);
    return false;
  }
  return true;
}

std::vector<uint8_t> ReadFile(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  return std::vector<uint8_t>(std::istreambuf_iterator<char>(in), {});
}

class Mutator {
 public:
  Mutator(uint64_t seed, size_t max_len) : rng_(seed), max_len_(max_len) {}

  std::vector<uint8_t> Mutate(const std::vector<std::vector<uint8_t>>& corpus) {
    std::vector<uint8_t> x = corpus.empty() ? std::vector<uint8_t>{} : corpus[Below(corpus.size())];
    const int edits = 1 + static_cast<int>(Below(8));
    for (int e = 0; e < edits; ++e) Edit(&x, corpus);
    if (x.size() > max_len_) x.resize(max_len_);
    return x;
  }

 private:
  size_t Below(size_t n) { return n == 0 ? 0 : static_cast<size_t>(rng_() % n); }

  void Edit(std::vector<uint8_t>* x, const std::vector<std::vector<uint8_t>>& corpus) {
    // Boundary values, as libFuzzer's "interesting" integers.
    static constexpr uint64_t kInteresting[] = {0, 1, 2, 3, 4, 7, 8, 15, 16, 31, 32, 63, 64,
                                                127, 128, 255, 256, 4095, 4096, 65535, 65536,
                                                0x7fffffff, 0x80000000, 0xffffffff,
                                                0x7fffffffffffffffull, 0xffffffffffffffffull};
    switch (Below(x->empty() ? 3 : 9)) {
      case 0: {  // insert random bytes
        const size_t at = Below(x->size() + 1), n = 1 + Below(8);
        std::vector<uint8_t> bytes(n);
        for (auto& b : bytes) b = static_cast<uint8_t>(rng_());
        x->insert(x->begin() + static_cast<ptrdiff_t>(at), bytes.begin(), bytes.end());
        break;
      }
      case 1: {  // insert a printable character (text formats: npy dict, JSON)
        static const char kChars[] = "{}[]():,'\" 0123456789-.eE\\\nabcdefFTNtrue";
        x->insert(x->begin() + static_cast<ptrdiff_t>(Below(x->size() + 1)),
                  static_cast<uint8_t>(kChars[Below(sizeof(kChars) - 1)]));
        break;
      }
      case 2: {  // splice: a piece of another input
        if (corpus.empty()) break;
        const auto& other = corpus[Below(corpus.size())];
        if (other.empty()) break;
        const size_t from = Below(other.size()), n = 1 + Below(other.size() - from);
        x->insert(x->begin() + static_cast<ptrdiff_t>(Below(x->size() + 1)),
                  other.begin() + static_cast<ptrdiff_t>(from),
                  other.begin() + static_cast<ptrdiff_t>(from + n));
        break;
      }
      case 3: (*x)[Below(x->size())] ^= static_cast<uint8_t>(1u << Below(8)); break;
      case 4: (*x)[Below(x->size())] = static_cast<uint8_t>(rng_()); break;
      case 5: {  // erase a range
        const size_t at = Below(x->size()), n = 1 + Below(std::min<size_t>(16, x->size() - at));
        x->erase(x->begin() + static_cast<ptrdiff_t>(at), x->begin() + static_cast<ptrdiff_t>(at + n));
        break;
      }
      case 6: x->resize(Below(x->size() + 1)); break;  // truncate
      case 7:
      case 8: {  // overwrite 1, 2, 4 or 8 bytes with a boundary value (either endianness)
        const size_t width = size_t{1} << Below(4);
        if (x->size() < width) break;
        uint64_t v = kInteresting[Below(std::size(kInteresting))];
        if (Below(2)) v = ~v + 1;  // also the negatives
        const size_t at = Below(x->size() - width + 1);
        const bool big = Below(4) == 0;
        for (size_t i = 0; i < width; ++i) {
          (*x)[at + (big ? width - 1 - i : i)] = static_cast<uint8_t>(v >> (8 * i));
        }
        break;
      }
    }
  }

  std::mt19937_64 rng_;
  size_t max_len_;
};

}  // namespace

int main(int argc, char** argv) {
  double time_s = 10;
  uint64_t max_runs = UINT64_MAX, seed = 1;
  size_t max_len = 4096;
  std::string crash_dir = ".";
  std::vector<std::string> paths;
  auto parse_seed = [](const char* text, const char* from) {
    char* end = nullptr;
    errno = 0;
    const unsigned long long v = std::strtoull(text, &end, 10);
    if (*text == '\0' || *end != '\0' || errno != 0 || *text == '-') {
      std::fprintf(stderr, "fuzz: %s '%s' is not a seed (a number)\n", from, text);
      std::exit(2);
    }
    return static_cast<uint64_t>(v);
  };
  if (const char* env = std::getenv("MSA_FUZZ_SEED"); env != nullptr && *env != '\0') {
    seed = parse_seed(env, "MSA_FUZZ_SEED");
  }
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&]() -> const char* {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "fuzz: %s needs a value\n", a.c_str());
        std::exit(2);
      }
      return argv[++i];
    };
    if (a == "--time-s") {
      time_s = std::atof(value());
    } else if (a == "--runs") {
      max_runs = std::strtoull(value(), nullptr, 10);
    } else if (a == "--seed") {
      seed = parse_seed(value(), "--seed");
    } else if (a == "--max-len") {
      max_len = std::strtoull(value(), nullptr, 10);
    } else if (a == "--crash-dir") {
      crash_dir = value();
    } else if (!a.empty() && a[0] == '-') {
      std::fprintf(stderr, "fuzz: unknown option %s (see tests/fuzz/fuzz_driver.cc)\n", a.c_str());
      return 2;
    } else {
      paths.push_back(a);
    }
  }
  std::printf("fuzz %s: seed %llu (replay: --seed %llu, or MSA_FUZZ_SEED=%llu ctest -R fuzz_%s)\n",
              MSA_FUZZ_TARGET_NAME, static_cast<unsigned long long>(seed),
              static_cast<unsigned long long>(seed), static_cast<unsigned long long>(seed),
              MSA_FUZZ_TARGET_NAME);
  std::fflush(stdout);  // before any crash
  if (LLVMFuzzerInitialize) LLVMFuzzerInitialize(&argc, &argv);
  for (int sig : {SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGABRT}) ::signal(sig, OnSignal);
  if (__sanitizer_set_death_callback) __sanitizer_set_death_callback(DumpCurrentInput);

  std::vector<std::vector<uint8_t>> corpus;
  for (const std::string& p : paths) {
    std::error_code ec;
    if (std::filesystem::is_directory(p, ec)) {
      std::vector<std::filesystem::path> files;
      for (const auto& e : std::filesystem::directory_iterator(p)) {
        // Dot files (.keep of an empty folder) are not inputs.
        if (e.is_regular_file() && e.path().filename().string()[0] != '.') files.push_back(e.path());
      }
      std::sort(files.begin(), files.end());
      for (const auto& f : files) corpus.push_back(ReadFile(f));
    } else if (std::filesystem::is_regular_file(p, ec)) {
      corpus.push_back(ReadFile(p));
    } else {
      std::fprintf(stderr, "fuzz: %s: no such file or directory\n", p.c_str());
      return 2;
    }
  }
  for (const auto& input : corpus) {
    if (!RunOne(crash_dir, input)) return 1;
  }

  const auto start = std::chrono::steady_clock::now();
  auto elapsed = [&] {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  };
  Mutator mutator(seed, max_len);
  uint64_t runs = 0;
  while (runs < max_runs && elapsed() < time_s) {
    const std::vector<uint8_t> input = mutator.Mutate(corpus);
    if (!RunOne(crash_dir, input)) return 1;
    ++runs;
  }
  const double s = elapsed();
  std::printf("fuzz %s: %zu corpus inputs, %llu mutated runs in %.1f s (%.0f/s), seed %llu\n",
              MSA_FUZZ_TARGET_NAME, corpus.size(), static_cast<unsigned long long>(runs), s,
              s > 0 ? static_cast<double>(runs) / s : 0.0, static_cast<unsigned long long>(seed));
  return 0;
}
