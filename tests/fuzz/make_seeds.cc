// Writes the seed corpora of the fuzz targets (tests/fuzz/corpus/TARGET/),
// small valid inputs made with the real writers, so that mutation starts
// from files that get past the first checks. The corpora are checked in;
// rerun this after a format change:
//   msa_fuzz_make_seeds tests/fuzz/corpus
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <string>
#include <vector>

#include "store/codec.h"
#include "tools/npy_file.h"
#include "tools/safetensors_file.h"

namespace {

namespace fs = std::filesystem;
using msa::formats::Tensor;

bool Ok(const msa::Status& s) {
  if (!s.ok()) std::fprintf(stderr, "make_seeds: %s\n", s.ToString().c_str());
  return s.ok();
}

bool WriteBytes(const fs::path& path, const std::vector<uint8_t>& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
  return static_cast<bool>(out);
}

std::vector<float> Ramp(size_t n) {
  std::vector<float> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = static_cast<float>(i) * 0.25f - 1.0f;
  return v;
}

Tensor Half(std::vector<int64_t> shape, size_t n) {
  std::vector<uint16_t> bits(n);
  for (size_t i = 0; i < n; ++i) bits[i] = static_cast<uint16_t>(0x3c00 + 0x40 * i);  // 1.0, 1.0625, ...
  return msa::formats::MakeFloat16Tensor(std::move(shape), bits.data());
}

bool Npy(const fs::path& dir) {
  const std::vector<float> v = Ramp(6);
  return Ok(msa::formats::WriteNpyFloat32((dir / "f32_2x3.npy").string(), {2, 3}, v.data())) &&
         Ok(msa::formats::WriteNpy((dir / "f16_4.npy").string(), Half({4}, 4))) &&
         Ok(msa::formats::WriteNpyFloat32((dir / "scalar.npy").string(), {}, v.data())) &&
         Ok(msa::formats::WriteNpyFloat32((dir / "empty_0x3.npy").string(), {0, 3}, v.data()));
}

bool Safetensors(const fs::path& dir) {
  const std::vector<float> v = Ramp(8);
  std::map<std::string, Tensor> kv = {{"keys", Half({1, 1, 2, 2}, 4)},
                                      {"values", msa::formats::MakeFloat32Tensor({1, 1, 2, 2}, v.data())}};
  Tensor bf16 = Half({2}, 2);
  bf16.dtype = msa::formats::DType::kBFloat16;
  if (!Ok(msa::formats::WriteSafetensors((dir / "kv.safetensors").string(), kv,
                                         {{"producer", "msa"}})) ||
      !Ok(msa::formats::WriteSafetensors((dir / "bf16.safetensors").string(), {{"x", bf16}}))) {
    return false;
  }
  // A tensor of a dtype that is validated but not loaded, beside a loaded one.
  std::string header =
      R"({"ids":{"dtype":"I64","shape":[1],"data_offsets":[0,8]},)"
      R"("k":{"dtype":"F16","shape":[2],"data_offsets":[8,12]}})";
  header.append((8 - header.size() % 8) % 8, ' ');
  std::vector<uint8_t> bytes(8);
  for (int i = 0; i < 8; ++i) bytes[i] = static_cast<uint8_t>(header.size() >> (8 * i));
  bytes.insert(bytes.end(), header.begin(), header.end());
  bytes.insert(bytes.end(), {7, 0, 0, 0, 0, 0, 0, 0, 0x00, 0x3c, 0x00, 0xbc});
  return WriteBytes(dir / "skipped_i64.safetensors", bytes);
}

// fuzz_block_decoder's input: a 16-byte prefix of claims, then the record.
bool BlockDecoder(const fs::path& dir) {
  const uint32_t tokens = 3, head_dim = 4;
  const msa::BlockId id{1, 0, 2};
  std::vector<float> k(tokens * head_dim), v(tokens * head_dim);
  for (size_t i = 0; i < k.size(); ++i) {
    k[i] = 1.0f + 0.125f * static_cast<float>(i);
    v[i] = -1.0f - 0.375f * static_cast<float>(i);
  }
  msa::BlockEncoder encoder;
  for (msa::Codec codec : {msa::Codec::kF16ShuffleZstd, msa::Codec::kBF16ShuffleZstd,
                           msa::Codec::kInt8, msa::Codec::kInt4}) {
    msa::BlockRecordHeader h;
    auto record = encoder.Encode(codec, id, tokens, head_dim, k.data(), v.data(), &h);
    if (!Ok(record.status())) return false;
    for (uint8_t flags : {0, 3}) {
      std::vector<uint8_t> in(16, 0);
      in[0] = flags;
      in[1] = tokens;
      in[2] = head_dim - 1;
      in[3] = static_cast<uint8_t>(id.layer);
      in[4] = static_cast<uint8_t>(id.kv_head);
      in[5] = static_cast<uint8_t>(id.block);
      std::memcpy(in.data() + 8, &h.checksum, 8);
      in.insert(in.end(), record->begin(), record->end());
      const std::string name = "record_" + std::string(msa::CodecName(codec)) + "_flags" +
                               std::to_string(flags);
      if (!WriteBytes(dir / name, in)) return false;
    }
  }
  return true;
}

// fuzz_c_api's input: a program of op bytes and their arguments (see there).
bool CApi(const fs::path& dir) {
  std::vector<uint8_t> q(2 * 4 * 8);  // 2 rows, 4 query heads, head_dim 8
  for (size_t i = 0; i < q.size(); ++i) q[i] = static_cast<uint8_t>(i * 37);
  auto attend = [&](uint8_t exact, uint8_t combine) {
    std::vector<uint8_t> a = {0, 0, 1, 2, 4, 2, exact, combine, 0, 0, 0};
    a.insert(a.end(), q.begin(), q.end());
    return a;
  };
  const std::vector<uint8_t> append_f32 = {2, 0, 0, 1, 5, 0, 11, 22};
  const std::vector<uint8_t> append_f16 = {2, 0, 0, 2, 7, 1, 33, 44};
  const std::vector<uint8_t> commit = {3, 0}, stats = {4, 0};
  const std::vector<uint8_t> create = {5, 0, 1, 2, 8, 4, 1, 1, 0}, open_ro = {6, 2, 0};
  const std::vector<std::vector<std::vector<uint8_t>>> programs = {
      {append_f32, commit, attend(0, 0), stats, attend(1, 0)},
      {attend(0, 0), stats, create, open_ro},
      {append_f16, append_f16, append_f32, commit, attend(0, 1), open_ro, stats},
  };
  for (size_t i = 0; i < programs.size(); ++i) {
    std::vector<uint8_t> bytes;
    for (const auto& op : programs[i]) bytes.insert(bytes.end(), op.begin(), op.end());
    if (!WriteBytes(dir / ("program" + std::to_string(i)), bytes)) return false;
  }
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: msa_fuzz_make_seeds CORPUS_ROOT (tests/fuzz/corpus)\n");
    return 2;
  }
  const fs::path root = argv[1];
  const std::pair<const char*, bool (*)(const fs::path&)> targets[] = {
      {"npy", Npy}, {"safetensors", Safetensors}, {"block_decoder", BlockDecoder}, {"c_api", CApi}};
  for (const auto& [name, make] : targets) {
    fs::create_directories(root / name);
    if (!make(root / name)) return 1;
  }
  return 0;
}
