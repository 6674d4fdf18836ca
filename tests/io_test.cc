// Segment files and the block readers (io_uring and pread give the same bytes).
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <fcntl.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstring>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "io/aligned_buffer.h"
#include "io/block_reader.h"
#include "io/segment_file.h"
#include "test_util.h"

namespace msa::io {
namespace {

TEST(SegmentWriter, AppendsAlignedRecordsAndCutsUncommittedTail) {
  msa::testing::TempDir dir;
  const std::string path = dir.Sub("1.seg");
  uint64_t committed = 0;
  {
    auto w = SegmentWriter::Open(path, 0);
    ASSERT_TRUE(w.ok()) << w.status().ToString();
    auto a = (*w)->Append("hello", 5);
    ASSERT_TRUE(a.ok());
    EXPECT_EQ(*a, 0u);
    auto b = (*w)->Append(std::string(5000, 'x').data(), 5000);
    ASSERT_TRUE(b.ok());
    EXPECT_EQ(*b, 4096u);
    EXPECT_EQ((*w)->length(), 4096u + 8192u);
    ASSERT_TRUE((*w)->Sync().ok());
    committed = 4096;  // pretend only the first record committed
  }
  auto w = SegmentWriter::Open(path, committed);
  ASSERT_TRUE(w.ok());
  EXPECT_EQ((*w)->length(), committed);
  EXPECT_EQ(::access(path.c_str(), F_OK), 0);
  // A file shorter than its committed length is corruption, not silence.
  auto bad = SegmentWriter::Open(path, 1 << 20);
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().code(), Status::Code::kCorruption);
  EXPECT_NE(bad.status().message().find(path), std::string::npos);
}

// AppendPadded: pre-padded runs of records, written with O_DIRECT from an
// aligned buffer (on a file system that has it: the test directory is on
// the disk, not tmpfs), buffered from an unaligned one, interleaved with
// Append; what lands is what was given, at the offsets returned.
TEST(SegmentWriter, PaddedAppendsLandWhereTheySayDirectOrBuffered) {
  msa::testing::TempDir dir;
  const std::string path = dir.Sub("2.seg");
  auto w = SegmentWriter::Open(path, 0);
  ASSERT_TRUE(w.ok()) << w.status().ToString();
  std::string expected;
  auto pattern = [](size_t n, char seed) {
    std::string s(n, '\0');
    for (size_t i = 0; i < n; ++i) s[i] = static_cast<char>(seed + i * 7 % 251);
    return s;
  };
  io::AlignedBuffer aligned(3 * 4096 + (9u << 20));  // more than one 8 MiB direct piece
  for (int round = 0; round < 2; ++round) {
    const std::string a = pattern(aligned.size(), static_cast<char>(round));
    std::memcpy(aligned.data(), a.data(), a.size());
    auto at = (*w)->AppendPadded(aligned.data(), aligned.size());
    ASSERT_TRUE(at.ok()) << at.status().ToString();
    EXPECT_EQ(*at, expected.size());
    expected += a;
    auto r = (*w)->Append("tail", 4);  // a buffered record between direct runs
    ASSERT_TRUE(r.ok());
    EXPECT_EQ(*r, expected.size());
    expected += std::string("tail") + std::string(4092, '\0');
    std::string unaligned = "x" + pattern(8192, 'u');  // data at an odd address: buffered
    auto u = (*w)->AppendPadded(unaligned.data() + 1, 8192);
    ASSERT_TRUE(u.ok());
    EXPECT_EQ(*u, expected.size());
    expected += unaligned.substr(1);
  }
  EXPECT_FALSE((*w)->AppendPadded(aligned.data(), 100).ok());  // not a multiple of 4096
  EXPECT_EQ((*w)->length(), expected.size());
  (*w)->StartWriteback();
  ASSERT_TRUE((*w)->Sync().ok());
  std::ifstream f(path, std::ios::binary);
  const std::string got((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  ASSERT_EQ(got.size(), expected.size());
  EXPECT_TRUE(got == expected);
}

TEST(SegmentWriter, PreallocatesWithoutChangingTheSizeRecoveryTrusts) {
  msa::testing::TempDir dir;
  const std::string path = dir.Sub("1.seg");
  auto w = SegmentWriter::Open(path, 0, 8 << 20);
  ASSERT_TRUE(w.ok()) << w.status().ToString();
  ASSERT_TRUE((*w)->Append("x", 1).ok());
  struct stat st;
  ASSERT_EQ(::stat(path.c_str(), &st), 0);
  EXPECT_EQ(st.st_size, 4096);  // one padded record: the reserved space is not "data"
  if (static_cast<uint64_t>(st.st_blocks) * 512 < (8u << 20)) {
    GTEST_SKIP() << "this file system does not preallocate (fallocate KEEP_SIZE)";
  }
  w->reset();
  auto again = SegmentWriter::Open(path, 4096, 8 << 20);  // reopen at the committed length
  ASSERT_TRUE(again.ok());
  EXPECT_EQ((*again)->length(), 4096u);
}

Result<int> OpenRead(const std::string& path) {
  bool direct = false;
  return OpenSegmentForRead(path, &direct);
}

class BlockReaderTest : public ::testing::TestWithParam<bool> {};

TEST_P(BlockReaderTest, ReadsManyRecordsAndReportsEndOfFile) {
  msa::testing::TempDir dir;
  const std::string path = dir.Sub("1.seg");
  const int records = 300;  // more than one ring's worth at depth 256
  {
    auto w = SegmentWriter::Open(path, 0);
    ASSERT_TRUE(w.ok());
    for (int i = 0; i < records; ++i) {
      std::vector<uint8_t> rec(100 + i, static_cast<uint8_t>(i));
      ASSERT_TRUE((*w)->Append(rec.data(), rec.size()).ok());
    }
    ASSERT_TRUE((*w)->Sync().ok());
  }
  bool direct = false;
  auto fd = OpenSegmentForRead(path, &direct);
  ASSERT_TRUE(fd.ok());
  std::unique_ptr<BlockReader> reader;
  if (GetParam()) {
    auto r = MakeUringReader(256);
    if (!r.ok()) GTEST_SKIP() << "io_uring unavailable here: " << r.status().ToString();
    reader = std::move(r).value();
  } else {
    reader = MakePreadReader();
  }
  AlignedBuffer buf(static_cast<size_t>(records) * 4096);
  std::vector<ReadRequest> reqs;
  for (int i = records - 1; i >= 0; --i) {  // scattered order
    reqs.push_back({*fd, static_cast<uint64_t>(i) * 4096, 4096, buf.data() + i * 4096});
  }
  ASSERT_TRUE(reader->ReadAll(reqs).ok());
  for (int i = 0; i < records; ++i) {
    EXPECT_EQ(buf.data()[i * 4096], static_cast<uint8_t>(i));
    EXPECT_EQ(buf.data()[i * 4096 + 99 + i], static_cast<uint8_t>(i));
  }
  // A read past the end of the file fails with a message naming the read.
  ReadRequest past{*fd, static_cast<uint64_t>(records) * 4096, 4096, buf.data()};
  Status s = reader->ReadAll({&past, 1});
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.message().find("end of file"), std::string::npos) << s.ToString();
  // A failure inside a batch fails the batch, naming a failed read (the
  // pread pool names the lowest-numbered), and the reader stays usable.
  std::vector<ReadRequest> mixed;
  for (int i = 0; i < 10; ++i) {
    const bool bad = i == 3 || i == 7;
    mixed.push_back({*fd, static_cast<uint64_t>(bad ? records + i : i) * 4096, 4096, buf.data() + i * 4096});
  }
  s = reader->ReadAll(mixed);
  ASSERT_FALSE(s.ok());
  EXPECT_TRUE(s.message().find("read #3") != std::string::npos || (GetParam() && s.message().find("read #7") != std::string::npos))
      << s.ToString();
  ASSERT_TRUE(reader->ReadAll(reqs).ok());
  EXPECT_EQ(buf.data()[299 * 4096], static_cast<uint8_t>(299));
  ::close(*fd);
}

TEST_P(BlockReaderTest, ReportsEachCompletedReadOnce) {
  msa::testing::TempDir dir;
  const std::string path = dir.Sub("1.seg");
  const int records = 40;
  {
    auto w = SegmentWriter::Open(path, 0);
    ASSERT_TRUE(w.ok());
    for (int i = 0; i < records; ++i) {
      std::vector<uint8_t> rec(4096, static_cast<uint8_t>(i));
      ASSERT_TRUE((*w)->Append(rec.data(), rec.size()).ok());
    }
    ASSERT_TRUE((*w)->Sync().ok());
  }
  auto fd = OpenRead(path);
  ASSERT_TRUE(fd.ok());
  std::unique_ptr<BlockReader> reader;
  if (GetParam()) {
    auto r = MakeUringReader(8);  // fewer than the requests: several rounds
    if (!r.ok()) GTEST_SKIP() << "io_uring unavailable here: " << r.status().ToString();
    reader = std::move(r).value();
  } else {
    reader = MakePreadReader(4);
  }
  StagingBuffer buf = reader->Staging(static_cast<size_t>(records) * 4096);
  std::vector<ReadRequest> reqs;
  for (int i = 0; i < records; ++i) reqs.push_back({*fd, static_cast<uint64_t>(i) * 4096, 4096, buf.data() + i * 4096});
  std::vector<std::atomic<int>> seen(records);
  ASSERT_TRUE(reader->ReadAll(reqs, [&](size_t i) {
    // The bytes are in when the callback hears of them.
    EXPECT_EQ(reqs[i].dest[4095], static_cast<uint8_t>(i));
    seen[i].fetch_add(1);
  }).ok());
  for (int i = 0; i < records; ++i) EXPECT_EQ(seen[i].load(), 1) << "request " << i;
  // A failed request is not reported; the others may be.
  for (auto& n : seen) n.store(0);
  reqs[5].offset = static_cast<uint64_t>(records + 5) * 4096;  // past the end
  ASSERT_FALSE(reader->ReadAll(reqs, [&](size_t i) { seen[i].fetch_add(1); }).ok());
  EXPECT_EQ(seen[5].load(), 0);
  for (int i = 0; i < records; ++i) EXPECT_LE(seen[i].load(), 1) << "request " << i;
  ::close(*fd);
}

INSTANTIATE_TEST_SUITE_P(Readers, BlockReaderTest, ::testing::Values(true, false),
                         [](const auto& info) { return info.param ? "io_uring" : "pread"; });

// A file of `pages` 4096-byte pages, page i filled with (tag + i) & 0xff.
void WritePages(const std::string& path, int pages, int tag) {
  auto w = SegmentWriter::Open(path, 0);
  ASSERT_TRUE(w.ok());
  for (int i = 0; i < pages; ++i) {
    std::vector<uint8_t> page(4096, static_cast<uint8_t>(tag + i));
    ASSERT_TRUE((*w)->Append(page.data(), page.size()).ok());
  }
  ASSERT_TRUE((*w)->Sync().ok());
}

TEST(UringReader, RegisteredFilesAndBuffersReadTheRightBytes) {
  msa::testing::TempDir dir;
  WritePages(dir.Sub("a.seg"), 16, 0);
  WritePages(dir.Sub("b.seg"), 16, 100);
  WritePages(dir.Sub("c.seg"), 16, 200);
  BlockReaderOptions options;
  options.queue_depth = 8;
  options.registered_files = 2;
  options.registered_buffer_bytes = 8 << 20;  // two regions of 4 MiB
  auto made = MakeUringReader(options);
  if (!made.ok()) GTEST_SKIP() << "io_uring unavailable here: " << made.status().ToString();
  std::unique_ptr<BlockReader> reader = std::move(made).value();
  if (reader->detail().find("refused") != std::string::npos) {
    GTEST_SKIP() << "this kernel refuses part of the registration: " << reader->detail();
  }
  EXPECT_NE(reader->detail().find("2 registered file slots"), std::string::npos) << reader->detail();
  EXPECT_NE(reader->detail().find("registered buffers 0 of up to 8192 KiB"), std::string::npos)
      << "nothing pinned before it is needed: " << reader->detail();
  auto a = OpenRead(dir.Sub("a.seg"));
  auto b = OpenRead(dir.Sub("b.seg"));
  ASSERT_TRUE(a.ok() && b.ok());
  reader->RegisterFile(*a);
  reader->RegisterFile(*b);
  reader->RegisterFile(*b);  // twice is once

  // Chunks are lent in runs from registered regions, added as needed up to
  // the bound; beyond it, heap memory.
  StagingBuffer fixed = reader->Staging(16 * 4096);  // one chunk of a first 4 MiB region
  EXPECT_TRUE(fixed.registered());
  EXPECT_NE(reader->detail().find("registered buffers 4096 of up to 8192 KiB"), std::string::npos) << reader->detail();
  EXPECT_FALSE(reader->Staging(9 << 20).registered()) << "larger than the bound";
  StagingBuffer rest = reader->Staging((4 << 20) - (256 << 10));  // the first region's other 15 chunks
  EXPECT_TRUE(rest.registered());
  {
    StagingBuffer second = reader->Staging(4096);  // a second region
    EXPECT_TRUE(second.registered());
    EXPECT_NE(reader->detail().find("registered buffers 8192 of up to 8192 KiB"), std::string::npos)
        << reader->detail();
    StagingBuffer big = reader->Staging(4 << 20);  // the second region has 15 chunks free: no room
    EXPECT_FALSE(big.registered()) << "the bound is reached";
  }
  StagingBuffer again = reader->Staging(4 << 20);
  EXPECT_TRUE(again.registered()) << "a released run is lent again";  // the second region's
  rest = StagingBuffer();
  StagingBuffer heap = reader->Staging(16 << 20);
  EXPECT_FALSE(heap.registered());

  // Registered files into registered memory (READ_FIXED) and into heap
  // memory (plain read), interleaved, in one batch.
  std::vector<ReadRequest> reqs;
  for (int i = 0; i < 16; ++i) {
    const int fd = i % 2 ? *b : *a;
    // Registered region 0, region 1, and heap memory.
    uint8_t* dest = i % 4 < 2 ? fixed.data() + i * 4096 : i % 4 == 2 ? again.data() + i * 4096 : heap.data() + i * 4096;
    reqs.push_back({fd, static_cast<uint64_t>(15 - i) * 4096, 4096, dest});
  }
  const ReaderCounters before = reader->counters();
  ASSERT_TRUE(reader->ReadAll(reqs).ok());
  EXPECT_EQ(reader->counters().registered_buffer_reads - before.registered_buffer_reads, 12u);
  EXPECT_EQ(reader->counters().registered_file_reads - before.registered_file_reads, 16u);
  for (int i = 0; i < 16; ++i) {
    const uint8_t want = static_cast<uint8_t>((i % 2 ? 100 : 0) + 15 - i);
    EXPECT_EQ(reqs[i].dest[0], want) << "request " << i;
    EXPECT_EQ(reqs[i].dest[4095], want) << "request " << i;
  }

  // A forgotten descriptor is closed and its number reused for another
  // file: reads of that number see the new file, not the old one.
  const int old_a = *a;
  reader->ForgetFile(old_a);
  ::close(old_a);
  auto c = OpenRead(dir.Sub("c.seg"));
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(*c, old_a) << "the test wants the number reused (lowest free descriptor)";
  ReadRequest rc{*c, 3 * 4096, 4096, fixed.data()};
  ASSERT_TRUE(reader->ReadAll({&rc, 1}).ok());
  EXPECT_EQ(fixed.data()[0], static_cast<uint8_t>(203));
  // Registered in the freed slot, it reads c too.
  reader->RegisterFile(*c);
  rc.offset = 4 * 4096;
  ASSERT_TRUE(reader->ReadAll({&rc, 1}).ok());
  EXPECT_EQ(fixed.data()[0], static_cast<uint8_t>(204));

  // A full table leaves plain reads of the descriptor.
  auto extra = OpenRead(dir.Sub("a.seg"));
  ASSERT_TRUE(extra.ok());
  reader->RegisterFile(*extra);  // both slots taken (b, c)
  ReadRequest rx{*extra, 7 * 4096, 4096, fixed.data()};
  ASSERT_TRUE(reader->ReadAll({&rx, 1}).ok());
  EXPECT_EQ(fixed.data()[0], static_cast<uint8_t>(7));
  // Errors on registered files and buffers still name the file.
  ReadRequest past{*b, 64 * 4096, 4096, fixed.data()};
  Status s = reader->ReadAll({&past, 1});
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.message().find("b.seg"), std::string::npos) << s.ToString();
  EXPECT_NE(s.message().find("end of file"), std::string::npos) << s.ToString();
  for (int fd : {*b, *c, *extra}) {
    reader->ForgetFile(fd);
    ::close(fd);
  }
}

TEST(BlockReader, FallbackSaysWhy) {
  auto reader = MakePreadReader(2, "io_uring unavailable: test");
  EXPECT_EQ(std::string(reader->name()), "pread");
  EXPECT_NE(reader->detail().find("fallback: io_uring unavailable: test"), std::string::npos) << reader->detail();
  EXPECT_FALSE(reader->Staging(4096).registered());
  BlockReaderOptions options;
  options.allow_io_uring = false;
  EXPECT_NE(MakeBlockReader(options)->detail().find("fallback"), std::string::npos);
}

// A system that lets a ring be made but refuses io_uring_enter (a seccomp
// filter on that call alone) falls back to pread when the reader is made,
// not at the first query. In a child process: the filter cannot be undone.
TEST(BlockReader, RefusedSubmissionAtStartUpFallsBack) {
#ifndef __NR_io_uring_enter
  GTEST_SKIP() << "no io_uring_enter syscall number on this platform";
#else
  {
    BlockReaderOptions options;
    if (std::string(MakeBlockReader(options)->name()) != "io_uring") {
      GTEST_SKIP() << "io_uring is not available here at all";
    }
  }
  int pipefd[2];
  ASSERT_EQ(::pipe(pipefd), 0);
  const pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    ::close(pipefd[0]);
    sock_filter filter[] = {
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(seccomp_data, nr)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_io_uring_enter, 0, 1),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | (EPERM & SECCOMP_RET_DATA)),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
    };
    sock_fprog prog{static_cast<unsigned short>(sizeof(filter) / sizeof(filter[0])), filter};
    std::string answer;
    if (::prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 || ::prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog) != 0) {
      answer = "skip: seccomp refused";
    } else {
      BlockReaderOptions options;
      auto reader = MakeBlockReader(options);
      answer = std::string(reader->name()) + "|" + reader->detail();
    }
    const ssize_t w = ::write(pipefd[1], answer.data(), answer.size());
    ::_exit(w == static_cast<ssize_t>(answer.size()) ? 0 : 1);
  }
  ::close(pipefd[1]);
  std::string answer;
  char buf[512];
  for (ssize_t n; (n = ::read(pipefd[0], buf, sizeof(buf))) > 0;) answer.append(buf, static_cast<size_t>(n));
  ::close(pipefd[0]);
  int status = 0;
  ASSERT_EQ(::waitpid(child, &status, 0), child);
  ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << answer;
  if (answer.rfind("skip:", 0) == 0) GTEST_SKIP() << answer;
  EXPECT_EQ(answer.substr(0, answer.find('|')), "pread") << answer;
  EXPECT_NE(answer.find("io_uring_enter"), std::string::npos) << answer;
#endif
}

}  // namespace
}  // namespace msa::io
