// Segment files and the block readers (io_uring and pread give the same bytes).
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <fcntl.h>
#include <unistd.h>

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

INSTANTIATE_TEST_SUITE_P(Readers, BlockReaderTest, ::testing::Values(true, false),
                         [](const auto& info) { return info.param ? "io_uring" : "pread"; });

}  // namespace
}  // namespace msa::io
