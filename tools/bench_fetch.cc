// Fetch engine benchmark (issue 4): random 4 KiB-aligned block reads from one
// file through msa's BlockReader implementations, at fixed queue depths, to
// compare with fio on the same file (tools/bench_fetch.sh runs both).
//
//   msa_bench_fetch FILE [--gib N] [--bs BYTES] [--qd 1,8,32,128,256]
//                        [--seconds S] [--readers io_uring,io_uring_reg,pread]
// Readers, run in the order given: io_uring (plain reads into heap memory, descriptors named per
// read), io_uring_reg (the file registered and the batch's buffer a
// registered buffer: IOSQE_FIXED_FILE + IORING_OP_READ_FIXED), pread (the
// thread-pool fallback). Prints CSV: reader,qd,blocks_per_s,mb_per_s,
// cpu_us_per_block (user + system time of the whole process per block) and,
// per reader, the latency of one query-sized batch of 64 blocks (p50/p99
// over 300 batches).
#include <fcntl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "io/aligned_buffer.h"
#include "io/block_reader.h"
#include "io/segment_file.h"

namespace {

using Clock = std::chrono::steady_clock;

std::vector<unsigned> ParseList(const std::string& s) {
  std::vector<unsigned> out;
  size_t at = 0;
  while (at < s.size()) {
    const size_t comma = std::min(s.find(',', at), s.size());
    out.push_back(static_cast<unsigned>(std::stoul(s.substr(at, comma - at))));
    at = comma + 1;
  }
  return out;
}

double CpuSeconds() {
  rusage u{};
  ::getrusage(RUSAGE_SELF, &u);
  return static_cast<double>(u.ru_utime.tv_sec + u.ru_stime.tv_sec) +
         static_cast<double>(u.ru_utime.tv_usec + u.ru_stime.tv_usec) * 1e-6;
}

// The reader of a variant, with room for `batch` requests of bs bytes; the
// registered variant registers the file and a buffer that holds the batch.
msa::Result<std::unique_ptr<msa::io::BlockReader>> MakeReader(const std::string& variant, unsigned qd,
                                                              size_t batch_bytes, int fd) {
  if (variant == "pread") return msa::io::MakePreadReader(qd);
  msa::io::BlockReaderOptions options;
  options.queue_depth = qd;
  const bool reg = variant == "io_uring_reg";
  options.registered_files = reg ? 16 : 0;
  options.registered_buffer_bytes = reg ? batch_bytes : 0;
  auto reader = msa::io::MakeUringReader(options);
  if (reader.ok() && reg) (*reader)->RegisterFile(fd);
  return reader;
}

int Die(const std::string& what) {
  std::fprintf(stderr, "msa_bench_fetch: %s\n", what.c_str());
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) return Die("usage: msa_bench_fetch FILE [--gib N] [--bs BYTES] [--qd LIST] [--seconds S] [--readers LIST]");
  const std::string file = argv[1];
  uint64_t gib = 4, bs = 16384;
  double seconds = 3;
  std::string qd_list = "1,8,32,128,256", readers = "io_uring,io_uring_reg,pread";
  for (int i = 2; i + 1 < argc; i += 2) {
    const std::string flag = argv[i], value = argv[i + 1];
    if (flag == "--gib") gib = std::stoull(value);
    else if (flag == "--bs") bs = std::stoull(value);
    else if (flag == "--qd") qd_list = value;
    else if (flag == "--seconds") seconds = std::stod(value);
    else if (flag == "--readers") readers = value;
    else return Die("unknown flag " + flag);
  }
  if (bs == 0 || bs % 4096 != 0) return Die("--bs must be a positive multiple of 4096");
  const uint64_t size = gib << 30;
  // The file: random bytes, written once and reused (same file as fio's).
  {
    const int fd = ::open(file.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0) return Die("open " + file + ": " + std::strerror(errno));
    struct stat st;
    if (::fstat(fd, &st) != 0) return Die("stat " + file);
    if (static_cast<uint64_t>(st.st_size) < size) {
      std::fprintf(stderr, "# writing %llu GiB to %s\n", static_cast<unsigned long long>(gib), file.c_str());
      std::vector<uint8_t> chunk(1 << 20);
      std::mt19937_64 rng(1);
      for (uint64_t off = 0; off < size; off += chunk.size()) {
        for (size_t i = 0; i < chunk.size(); i += 8) {
          const uint64_t x = rng();
          std::memcpy(&chunk[i], &x, 8);
        }
        if (::pwrite(fd, chunk.data(), chunk.size(), static_cast<off_t>(off)) != static_cast<ssize_t>(chunk.size())) {
          return Die("write " + file);
        }
      }
      ::fsync(fd);
    }
    ::close(fd);
  }
  bool direct = false;
  auto opened = msa::io::OpenSegmentForRead(file, &direct);
  if (!opened.ok()) return Die(opened.status().ToString());
  const int fd = *opened;
  std::printf("# file %s, %llu GiB, block %llu bytes, O_DIRECT %s\n", file.c_str(),
              static_cast<unsigned long long>(gib), static_cast<unsigned long long>(bs), direct ? "yes" : "no");
  const uint64_t slots = size / bs;
  std::mt19937_64 rng(42);
  std::uniform_int_distribution<uint64_t> slot(0, slots - 1);
  std::printf("reader,qd,blocks_per_s,mb_per_s,cpu_us_per_block\n");
  std::vector<std::string> variants;  // in the order given
  for (size_t at = 0; at <= readers.size();) {
    const size_t comma = std::min(readers.find(',', at), readers.size());
    if (comma > at) variants.push_back(readers.substr(at, comma - at));
    at = comma + 1;
  }
  for (const std::string& variant : variants) {
    if (variant != "io_uring" && variant != "io_uring_reg" && variant != "pread") {
      return Die("unknown reader " + variant);
    }
    for (unsigned qd : ParseList(qd_list)) {
      // Batches of 64 * qd requests (at most 8192): the reader keeps qd in
      // flight throughout, and the drain at the end of a batch (a query's
      // tail) weighs ~1/64 of the time, as in fio's steady state.
      const size_t batch = std::min<size_t>(8192, std::max<size_t>(64, 64 * qd));
      auto made = MakeReader(variant, qd, batch * bs, fd);
      if (!made.ok()) return Die(made.status().ToString());
      std::unique_ptr<msa::io::BlockReader> reader = std::move(made).value();
      msa::io::StagingBuffer buffer = reader->Staging(batch * bs);
      if ((variant == "io_uring_reg") != buffer.registered()) {
        return Die(variant + ": staging buffer registered " + std::to_string(buffer.registered()) +
                   " (" + reader->detail() + ")");
      }
      std::vector<msa::io::ReadRequest> requests(batch);
      uint64_t blocks = 0;
      const double cpu0 = CpuSeconds();
      const auto t0 = Clock::now();
      double elapsed = 0;
      while (elapsed < seconds) {
        for (size_t i = 0; i < batch; ++i) {
          requests[i] = {fd, slot(rng) * bs, static_cast<uint32_t>(bs), buffer.data() + i * bs};
        }
        msa::Status s = reader->ReadAll(requests);
        if (!s.ok()) return Die(s.ToString());
        blocks += batch;
        elapsed = std::chrono::duration<double>(Clock::now() - t0).count();
      }
      const double cpu = CpuSeconds() - cpu0;
      std::printf("%s,%u,%.0f,%.1f,%.2f\n", variant.c_str(), qd, blocks / elapsed, blocks * bs / elapsed / 1e6,
                  cpu / static_cast<double>(blocks) * 1e6);
      std::fflush(stdout);
    }
    // One query's fetch: 64 random blocks in one ReadAll, cold (O_DIRECT).
    auto made = MakeReader(variant, 64, 64 * bs, fd);
    if (!made.ok()) return Die(made.status().ToString());
    std::unique_ptr<msa::io::BlockReader> reader = std::move(made).value();
    msa::io::StagingBuffer buffer = reader->Staging(64 * bs);
    std::vector<msa::io::ReadRequest> requests(64);
    std::vector<double> ms;
    for (int it = 0; it < 300; ++it) {
      for (size_t i = 0; i < 64; ++i) requests[i] = {fd, slot(rng) * bs, static_cast<uint32_t>(bs), buffer.data() + i * bs};
      const auto t = Clock::now();
      msa::Status s = reader->ReadAll(requests);
      if (!s.ok()) return Die(s.ToString());
      ms.push_back(std::chrono::duration<double, std::milli>(Clock::now() - t).count());
    }
    std::sort(ms.begin(), ms.end());
    std::printf("# %s: fetch of 64 random blocks, p50 %.3f ms, p99 %.3f ms\n", variant.c_str(),
                ms[ms.size() / 2], ms[ms.size() * 99 / 100]);
    reader->ForgetFile(fd);
  }
  ::close(fd);
  return 0;
}
