// The portable fallback: one pread per request, in the calling thread.
#include <unistd.h>

#include <cerrno>

#include "io/block_reader.h"

namespace msa::io {

namespace {
class PreadReader final : public BlockReader {
 public:
  Status ReadAll(std::span<const ReadRequest> requests) override {
    for (size_t i = 0; i < requests.size(); ++i) {
      const ReadRequest& r = requests[i];
      uint32_t done = 0;
      while (done < r.length) {
        const ssize_t n = ::pread(r.fd, r.dest + done, r.length - done,
                                  static_cast<off_t>(r.offset + done));
        if (n < 0) {
          if (errno == EINTR || errno == EAGAIN) continue;
          return Status::FromErrno(DescribeRequest(i, r), errno);
        }
        if (n == 0) {
          return Status::IOError(DescribeRequest(i, r) + ": end of file after " +
                                 std::to_string(done) + " bytes");
        }
        done += static_cast<uint32_t>(n);
      }
    }
    return Status::OK();
  }
  const char* name() const override { return "pread"; }
};
}  // namespace

std::unique_ptr<BlockReader> MakePreadReader() { return std::make_unique<PreadReader>(); }

}  // namespace msa::io
