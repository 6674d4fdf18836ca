// Fuzz target: the C API's argument checks (include/msa.h).
//
// Each input is a little program run against a fresh, small store (created
// per input so that a crashing input reproduces on its own): a sequence of
// msa_* calls whose arguments (NULL pointers, layers, row and head counts,
// dtypes, names, tokens, attend params, geometries, paths) come from the
// input bytes. Arrays are always as large as the arguments say (the API
// cannot check a caller's buffer sizes; everything else it must check).
//
// Properties: no call crashes, throws or aborts; every status is one of
// msa_status_t, and a failure has a non-empty msa_last_error(); a successful
// attend over a non-empty store with finite inputs gives finite outputs and
// over an empty store out = 0, lse = -inf; stats count exactly the tokens of
// the documents whose commit succeeded.
//
// The store lives under $MSA_FUZZ_TMPDIR, else /dev/shm, else /tmp.
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include "msa.h"

// tests/fuzz/c_api_calls.c: msa_append_document called from C with any int dtype.
extern "C" msa_status_t fuzz_append_document(msa_store_t* store, const char* name, const void* keys,
                                             const void* values, uint64_t tokens, int dtype,
                                             uint64_t* doc_id);

namespace {

void Check(bool ok, const char* what) {
  if (!ok) {
    std::fprintf(stderr, "fuzz_c_api: broken invariant: %s\n", what);
    std::abort();
  }
}

// Reads the input front to back; past its end every value is 0.
class Bytes {
 public:
  Bytes(const uint8_t* data, size_t size) : p_(data), end_(data + size) {}
  bool empty() const { return p_ == end_; }
  uint8_t U8() { return p_ < end_ ? *p_++ : 0; }
  uint32_t U32() {
    uint32_t v = 0;
    for (int i = 0; i < 4; ++i) v |= static_cast<uint32_t>(U8()) << (8 * i);
    return v;
  }
  // Mostly small, sometimes any 32-bit value.
  uint32_t Count(uint32_t small) {
    const uint8_t b = U8();
    return b == 0xff ? U32() : b % small;
  }

 private:
  const uint8_t* p_;
  const uint8_t* end_;
};

// One status returned by the API: a known code, and a message on failure.
msa_status_t Expect(msa_status_t s) {
  Check(s >= MSA_OK && s <= MSA_INTERNAL, "a status outside msa_status_t");
  Check(s != MSA_INTERNAL, "MSA_INTERNAL (an exception or a bug) on fuzzed arguments");
  if (s != MSA_OK) Check(msa_last_error()[0] != '\0', "a failure without a message");
  return s;
}

std::string TempRoot() {
  const char* const candidates[] = {std::getenv("MSA_FUZZ_TMPDIR"), "/dev/shm", std::getenv("TMPDIR"), "/tmp"};
  for (const char* dir : candidates) {
    if (dir != nullptr && *dir != '\0' && ::access(dir, W_OK) == 0) return dir;
  }
  return ".";
}

// The per-process scratch directory, removed at exit. The string is never
// destroyed, so the exit handler may still read it.
const std::string& ScratchDir() {
  static const std::string* const dir = [] {
    std::string tmpl = TempRoot() + "/msa_fuzz_c_api_XXXXXX";
    Check(::mkdtemp(tmpl.data()) != nullptr, "mkdtemp failed");
    return new std::string(tmpl);
  }();
  static const bool cleanup = [] { return std::atexit([] { std::filesystem::remove_all(*dir); }) == 0; }();
  (void)cleanup;
  return *dir;
}

// Stores any int in an enum field, as a C caller may (in C++ a cast to an
// enum outside its values is undefined; a byte copy is not).
template <typename Enum>
void SetEnum(Enum* field, int value) {
  static_assert(sizeof(Enum) == sizeof(int));
  std::memcpy(field, &value, sizeof value);
}

constexpr msa_geometry_t kGeometry = {2, 2, 8, 4, MSA_CODEC_F16, MSA_SUMMARY_MEAN, 0};

struct Program {
  msa_store_t* store = nullptr;
  std::string path;
  uint64_t committed_tokens = 0;
  uint64_t staged_tokens = 0;
  bool commit_broken = false;  // a commit failed: the store refuses writes until reopened
};

// Keys/values of `tokens` tokens of kGeometry, finite, from the input.
std::vector<uint8_t> DocumentArray(Bytes& in, uint64_t tokens, bool half) {
  const size_t n = kGeometry.layers * kGeometry.kv_heads * tokens * kGeometry.head_dim;
  std::vector<uint8_t> out(n * 4);
  const uint8_t seed = in.U8();
  for (size_t i = 0; i < n; ++i) {
    const uint8_t b = static_cast<uint8_t>(seed * 31 + i * 7);
    if (half) {
      const uint16_t bits = static_cast<uint16_t>(((b & 0x80) << 8) | ((b & 0x7f) << 6));  // |x| < 2
      std::memcpy(out.data() + 2 * i, &bits, 2);
    } else {
      const float f = static_cast<int8_t>(b) / 16.0f;
      std::memcpy(out.data() + 4 * i, &f, 4);
    }
  }
  return out;
}

void Attend(Program& p, Bytes& in) {
  const uint8_t flags = in.U8();
  const uint32_t layer = in.Count(4);  // the store has 2 layers
  uint32_t n = in.U8() % 6;
  uint32_t q_heads = in.U8() % 9;
  if (flags & 1) {  // huge counts with no rows: checked without touching memory
    q_heads = in.U32();
    n = 0;
  }
  msa_attend_params_t params = msa_attend_default_params();
  params.top_k = in.Count(8);
  params.exact = in.U8() & 1;
  SetEnum(&params.gqa_combine, in.U8() % 4);
  params.nprobe = in.Count(4);
  params.candidates = in.Count(8);
  params.exact_routing = in.U8() & 1;
  const size_t q_len = static_cast<size_t>(n) * q_heads * kGeometry.head_dim;
  std::vector<float> q(q_len), out(q_len, 7.0f), lse(static_cast<size_t>(n) * q_heads, 7.0f);
  for (size_t i = 0; i < q.size(); ++i) q[i] = static_cast<int8_t>(in.U8()) / 8.0f;
  const msa_status_t s = Expect(msa_attend(
      (flags & 2) ? nullptr : p.store, layer, (flags & 4) ? nullptr : q.data(), n, q_heads,
      (flags & 8) ? nullptr : &params, (flags & 16) ? nullptr : out.data(),
      (flags & 32) ? nullptr : lse.data()));
  if (s != MSA_OK || n == 0) return;
  Check(!(flags & 6) && !(flags & 16), "attend accepted a NULL store, q or out");
  Check(layer < kGeometry.layers && q_heads % kGeometry.kv_heads == 0, "attend accepted bad shapes");
  for (size_t i = 0; i < out.size(); ++i) {
    Check(p.committed_tokens > 0 ? std::isfinite(out[i]) : out[i] == 0.0f,
          "attend output is not finite (or not 0 over an empty store)");
  }
  if (!(flags & 32)) {
    for (float x : lse) {
      Check(p.committed_tokens > 0 ? std::isfinite(x) : (std::isinf(x) && x < 0),
            "attend lse is not finite (or not -inf over an empty store)");
    }
  }
}

void Append(Program& p, Bytes& in) {
  const uint8_t flags = in.U8();
  std::string name;
  switch (in.U8() % 4) {
    case 0: name = "doc" + std::to_string(in.U8() % 4); break;  // duplicates likely
    case 1: name = ""; break;
    default: {
      const size_t len = in.U8() % 12;
      for (size_t i = 0; i < len; ++i) name.push_back(static_cast<char>(in.U8() | 1));  // no NUL
    }
  }
  const uint64_t tokens = in.U8() % 20;
  const uint8_t dtype_byte = in.U8();
  const int dtype_raw = dtype_byte % 5 == 4 ? 7 : dtype_byte % 2;
  const bool half = dtype_raw == MSA_FLOAT16;
  std::vector<uint8_t> keys = DocumentArray(in, tokens, half), values = DocumentArray(in, tokens, half);
  uint64_t id = UINT64_MAX;
  const msa_status_t s = Expect(fuzz_append_document(
      (flags & 1) ? nullptr : p.store, (flags & 2) ? nullptr : name.c_str(),
      (flags & 4) ? nullptr : keys.data(), (flags & 8) ? nullptr : values.data(), tokens, dtype_raw,
      (flags & 16) ? nullptr : &id));
  if (s != MSA_OK) return;
  Check(!(flags & 15) && tokens > 0 && !name.empty() && (dtype_raw == MSA_FLOAT32 || half),
        "append accepted a NULL pointer, no tokens, no name or an unknown dtype");
  Check((flags & 16) || id != UINT64_MAX, "append did not report the document id");
  p.staged_tokens += tokens;
}

void Commit(Program& p, Bytes& in) {
  const bool null_store = in.U8() & 1;
  const msa_status_t s = Expect(msa_commit(null_store ? nullptr : p.store));
  if (null_store) {
    Check(s == MSA_INVALID_ARGUMENT, "commit of NULL is not MSA_INVALID_ARGUMENT");
  } else if (s == MSA_OK) {
    p.committed_tokens += p.staged_tokens;
    p.staged_tokens = 0;
  } else {
    p.commit_broken = true;
  }
}

void Stats(Program& p, Bytes& in) {
  const uint8_t flags = in.U8();
  msa_stats_t st{};
  const msa_status_t s =
      Expect(msa_store_stats((flags & 1) ? nullptr : p.store, (flags & 2) ? nullptr : &st));
  Check((s == MSA_OK) == !(flags & 3), "stats: wrong status for its NULL arguments");
  if (s == MSA_OK && !p.commit_broken) {
    Check(st.tokens == p.committed_tokens, "stats count other tokens than were committed");
  }
  msa_geometry_t g{};
  const msa_status_t sg =
      Expect(msa_store_geometry((flags & 4) ? nullptr : p.store, (flags & 8) ? nullptr : &g));
  Check((sg == MSA_OK) == !(flags & 12), "geometry: wrong status for its NULL arguments");
  if (sg == MSA_OK) Check(g.head_dim == kGeometry.head_dim, "geometry: wrong head_dim");
}

// A store of fuzzed geometry in a fresh directory, then closed.
void Create(Program& p, Bytes& in) {
  const uint8_t flags = in.U8();
  msa_geometry_t g;
  g.layers = in.Count(4);
  g.kv_heads = in.Count(4);
  g.head_dim = in.Count(20);
  g.block_tokens = in.Count(10);
  SetEnum(&g.codec, in.Count(3));
  SetEnum(&g.summary, in.Count(5));
  g.summary_centroids = in.Count(70);
  static int serial = 0;
  const std::string path = p.path + "_created" + std::to_string(serial++);
  msa_store_t* out = reinterpret_cast<msa_store_t*>(&serial);  // must be overwritten
  const msa_status_t s = Expect(msa_store_create((flags & 1) ? nullptr : path.c_str(),
                                                 (flags & 2) ? nullptr : &g,
                                                 (flags & 4) ? nullptr : &out));
  if (!(flags & 4)) Check(s == MSA_OK ? out != nullptr : out == nullptr, "create: *out not set");
  if (s == MSA_OK) {
    msa_geometry_t back{};
    Check(Expect(msa_store_geometry(out, &back)) == MSA_OK && back.layers == g.layers &&
              back.kv_heads == g.kv_heads && back.head_dim == g.head_dim,
          "create: geometry not kept");
    msa_store_close(out);
  }
  std::filesystem::remove_all(path);
}

// Open: the open store again (locked), read-only, a missing path, a file.
void Open(Program& p, Bytes& in) {
  const uint8_t flags = in.U8();
  std::string path;
  switch (in.U8() % 4) {
    case 0: path = p.path; break;
    case 1: path = p.path + "/no/such/store"; break;
    case 2: path = p.path + "/catalog/CURRENT"; break;  // a file, not a store
    default: path = p.path + "/segments"; break;        // a directory, not a store
  }
  msa_store_t* out = nullptr;
  const msa_status_t s = Expect(msa_store_open((flags & 1) ? nullptr : path.c_str(),
                                               (flags & 2) ? 1 : 0, (flags & 4) ? nullptr : &out));
  if (s != MSA_OK) {
    Check(out == nullptr, "open failed but returned a handle");
    return;
  }
  Check(path == p.path && (flags & 2), "opened something other than the store read-only");
  msa_stats_t st{};
  Check(Expect(msa_store_stats(out, &st)) == MSA_OK, "stats on a read-only handle failed");
  if (!p.commit_broken) Check(st.tokens == p.committed_tokens, "the read-only handle sees other tokens");
  const uint64_t keys = 0;
  Check(Expect(msa_append_document(out, "ro", &keys, &keys, 0, MSA_FLOAT32, nullptr)) != MSA_OK,
        "a read-only handle accepted an append");
  msa_store_close(out);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const bool quiet = [] {
    spdlog::set_level(spdlog::level::err);  // tmpfs refuses O_DIRECT: a warning per open
    return true;
  }();
  (void)quiet;
  static int serial = 0;
  Program p;
  p.path = ScratchDir() + "/store" + std::to_string(serial++);
  if (msa_store_create(p.path.c_str(), &kGeometry, &p.store) != MSA_OK) {
    std::fprintf(stderr, "fuzz_c_api: cannot create %s: %s\n", p.path.c_str(), msa_last_error());
    std::abort();
  }

  Bytes in(data, size);
  for (int op = 0; op < 32 && !in.empty(); ++op) {
    switch (in.U8() % 9) {
      case 0: case 1: Attend(p, in); break;
      case 2: Append(p, in); break;
      case 3: Commit(p, in); break;
      case 4: Stats(p, in); break;
      case 5: Create(p, in); break;
      case 6: Open(p, in); break;
      case 7: msa_store_close(nullptr); break;
      case 8:
        Check(msa_version() >> 16 == MSA_VERSION_MAJOR, "msa_version disagrees with msa.h");
        Check(msa_last_error() != nullptr, "msa_last_error returned NULL");
        break;
    }
  }
  msa_store_close(p.store);
  std::filesystem::remove_all(p.path);
  return 0;
}
