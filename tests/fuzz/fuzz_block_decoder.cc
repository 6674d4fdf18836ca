// Fuzz target: the segment block record decoder (store/codec.h) on arbitrary
// bytes, against arbitrary claimed identities, lengths and checksums.
//
// Input layout (the rest is the record as read from disk):
//   byte 0       flags: bit 0 patches the record header's identity and shape
//                to the claimed ones, bit 1 patches the header's checksum
//                and the claimed checksum to the payload's real XXH3 (so
//                the fuzzer gets past the checks into zstd and the unshuffle)
//   byte 1       claimed tokens (0..255)
//   byte 2       claimed head_dim - 1 (1..256)
//   bytes 3..5   claimed layer, kv_head, block
//   bytes 8..15  claimed checksum, little-endian
//   bytes 16..   the record
// The claims are what the catalog would say (store.cc trusts them to size
// the output); the record is what the disk returned.
//
// Properties: Decode never crashes or reads outside the record; a refusal is
// Corruption naming the claimed block ("layer L kv-head H block B"); a
// success means the record matched every claim.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "store/codec.h"

namespace {

void Check(bool ok, const char* what) {
  if (!ok) {
    std::fprintf(stderr, "fuzz_block_decoder: broken invariant: %s\n", what);
    std::abort();
  }
}

template <typename T>
void Put(uint8_t* p, T v) {
  std::memcpy(p, &v, sizeof(T));
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  constexpr size_t kPrefix = 16;
  if (size < kPrefix) return 0;
  const uint8_t flags = data[0];
  const uint32_t tokens = data[1];
  const uint32_t head_dim = 1u + data[2];
  const msa::BlockId id{data[3], data[4], data[5]};
  uint64_t checksum;
  std::memcpy(&checksum, data + 8, 8);
  std::vector<uint8_t> record(data + kPrefix, data + size);

  if ((flags & 1) && record.size() >= msa::kBlockRecordHeaderSize) {
    Put<uint32_t>(record.data() + 8, id.layer);
    Put<uint32_t>(record.data() + 12, id.kv_head);
    Put<uint64_t>(record.data() + 16, id.block);
    Put<uint32_t>(record.data() + 24, tokens);
    Put<uint32_t>(record.data() + 28, head_dim);
  }
  if ((flags & 2) && record.size() >= msa::kBlockRecordHeaderSize) {
    uint32_t payload;
    std::memcpy(&payload, record.data() + 32, 4);
    const size_t avail = record.size() - msa::kBlockRecordHeaderSize;
    if (payload > avail) payload = static_cast<uint32_t>(avail);
    Put<uint32_t>(record.data() + 32, payload);
    checksum = msa::Checksum(record.data() + msa::kBlockRecordHeaderSize, payload);
    Put<uint64_t>(record.data() + 40, checksum);
  }

  // Exactly the claimed size, so ASan catches a write past it.
  const size_t n = static_cast<size_t>(tokens) * head_dim;
  std::vector<float> keys(n), values(n);
  static msa::BlockDecoder decoder;  // reused across inputs: its scratch must not leak state
  msa::Status s = decoder.Decode(record, id, checksum, tokens, head_dim, keys.data(), values.data());
  if (!s.ok()) {
    Check(s.code() == msa::Status::Code::kCorruption, "a refusal is not Corruption");
    Check(s.message().rfind(msa::DescribeBlock(id), 0) == 0,
          "a refusal does not start by naming the block");
    return 0;
  }
  msa::BlockRecordHeader h;
  Check(msa::ParseBlockRecordHeader(record, &h).ok(), "a decoded record's header does not parse");
  Check(h.id.layer == id.layer && h.id.kv_head == id.kv_head && h.id.block == id.block &&
            h.tokens == tokens && h.head_dim == head_dim && h.checksum == checksum,
        "a record that contradicts the claims was decoded");
  return 0;
}
