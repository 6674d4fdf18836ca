// Tests for tools/safetensors_file: round trips, lookups, every refusal (each
// names the file), and interoperability with the reference `safetensors`
// Python package when it is available (skipped loudly otherwise).
#include "tools/safetensors_file.h"

#include <gtest/gtest.h>
#include <stdlib.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <vector>

#include "attention/half.h"
#include "tools/tensor.h"

namespace msa::formats {
namespace {

class SafetensorsFileTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string tmpl = ::testing::TempDir() + "msa_safetensors_XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl.data()), nullptr);
    dir_ = tmpl;
  }
  void TearDown() override {
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
  }

  std::string Path(const std::string& name) const { return dir_ + "/" + name; }

  std::string WriteRaw(const std::string& name, const std::string& bytes) const {
    const std::string path = Path(name);
    std::ofstream out(path, std::ios::binary);
    out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    return path;
  }

  std::string dir_;
};

// 8-byte little-endian length, the JSON text, then `data`.
std::string SafetensorsBytes(const std::string& json, const std::string& data) {
  std::string out;
  for (int i = 0; i < 8; ++i) out.push_back(static_cast<char>((json.size() >> (8 * i)) & 0xff));
  return out + json + data;
}

std::string ReadAll(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

void ExpectErrorNamingFile(const Status& st, Status::Code code, const std::string& path,
                           const std::string& fragment) {
  EXPECT_FALSE(st.ok());
  EXPECT_EQ(st.code(), code) << st.ToString();
  EXPECT_NE(st.message().find(path), std::string::npos) << st.ToString();
  EXPECT_NE(st.message().find(fragment), std::string::npos)
      << "expected '" << fragment << "' in: " << st.ToString();
  EXPECT_EQ(st.message().find('\n'), std::string::npos) << st.ToString();
}

std::vector<float> RandomFloats(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.f, 3.f);
  std::vector<float> v(n);
  for (float& x : v) x = dist(rng);
  return v;
}

Tensor RandomHalfTensor(std::vector<int64_t> shape, uint32_t seed) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  const std::vector<float> v = RandomFloats(static_cast<size_t>(n), seed);
  std::vector<uint16_t> h(v.size());
  for (size_t i = 0; i < v.size(); ++i) h[i] = attention::FloatToHalf(v[i]);
  return MakeFloat16Tensor(std::move(shape), h.data());
}

Tensor RandomFloatTensor(std::vector<int64_t> shape, uint32_t seed) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  const std::vector<float> v = RandomFloats(static_cast<size_t>(n), seed);
  return MakeFloat32Tensor(std::move(shape), v.data());
}

// bfloat16 of values that are exact in bfloat16 (8 significant bits).
Tensor BFloat16Tensor(std::vector<int64_t> shape, const std::vector<float>& values) {
  Tensor t;
  t.dtype = DType::kBFloat16;
  t.shape = std::move(shape);
  for (float f : values) {
    uint32_t bits;
    std::memcpy(&bits, &f, 4);
    t.data.push_back(static_cast<uint8_t>((bits >> 16) & 0xff));
    t.data.push_back(static_cast<uint8_t>(bits >> 24));
  }
  return t;
}

void ExpectSameTensor(const Tensor& a, const Tensor& b) {
  EXPECT_EQ(a.dtype, b.dtype);
  EXPECT_EQ(a.shape, b.shape);
  EXPECT_EQ(a.data, b.data);
}

std::map<std::string, Tensor> SampleTensors() {
  std::map<std::string, Tensor> m;
  m["layer0.k"] = RandomHalfTensor({2, 3, 5, 8}, 1);
  m["layer0.v"] = RandomHalfTensor({2, 3, 5, 8}, 2);
  m["f32.vector"] = RandomFloatTensor({7}, 3);
  m["f32.matrix"] = RandomFloatTensor({3, 4}, 4);
  m["f16.odd"] = RandomHalfTensor({3}, 5);  // 6 bytes: misaligns what follows unless sorted
  m["scalar"] = RandomFloatTensor({}, 6);
  m["empty"] = RandomHalfTensor({0, 3}, 7);
  m["bf16"] = BFloat16Tensor({3, 2}, {1.f, -2.f, 0.15625f, 3.5f, -0.f, 256.f});
  return m;
}

TEST_F(SafetensorsFileTest, RoundTrip) {
  const std::map<std::string, Tensor> tensors = SampleTensors();
  const std::string path = Path("rt.safetensors");
  ASSERT_TRUE(WriteSafetensors(path, tensors, {{"format", "pt"}, {"producer", "msa test"}}).ok());
  Result<SafetensorsFile> file = ReadSafetensors(path);
  ASSERT_TRUE(file.ok()) << file.status().ToString();
  EXPECT_EQ(file->path, path);
  ASSERT_EQ(file->tensors.size(), tensors.size());
  for (const auto& [name, t] : tensors) {
    SCOPED_TRACE(name);
    Result<Tensor> got = file->Get(name);
    ASSERT_TRUE(got.ok()) << got.status().ToString();
    ExpectSameTensor(*got, t);
  }
  EXPECT_EQ(file->metadata, (std::map<std::string, std::string>{{"format", "pt"},
                                                                 {"producer", "msa test"}}));
  EXPECT_TRUE(file->skipped.empty());
  std::vector<std::string> names;
  for (const auto& entry : tensors) names.push_back(entry.first);
  EXPECT_EQ(file->names(), names);
}

TEST_F(SafetensorsFileTest, TakeMovesTheTensorOut) {
  const std::string path = Path("take.safetensors");
  ASSERT_TRUE(WriteSafetensors(path, SampleTensors()).ok());
  Result<SafetensorsFile> file = ReadSafetensors(path);
  ASSERT_TRUE(file.ok()) << file.status().ToString();
  Result<Tensor> k = file->Take("layer0.k");
  ASSERT_TRUE(k.ok());
  ExpectSameTensor(*k, SampleTensors()["layer0.k"]);
  EXPECT_EQ(file->tensors.count("layer0.k"), 0u);
  EXPECT_EQ(file->Take("layer0.k").status().code(), Status::Code::kNotFound);
}

TEST_F(SafetensorsFileTest, WrittenLayoutIsAlignedAndPadded) {
  const std::string path = Path("layout.safetensors");
  const std::map<std::string, Tensor> tensors = SampleTensors();
  ASSERT_TRUE(WriteSafetensors(path, tensors).ok());
  const std::string bytes = ReadAll(path);
  uint64_t n = 0;
  for (int i = 0; i < 8; ++i) n |= static_cast<uint64_t>(static_cast<uint8_t>(bytes[i])) << (8 * i);
  EXPECT_EQ(n % 8, 0u);
  const nlohmann::json header = nlohmann::json::parse(bytes.substr(8, n));
  for (const auto& [name, entry] : header.items()) {
    const uint64_t begin = entry["data_offsets"][0];
    EXPECT_EQ(begin % DTypeSize(tensors.at(name).dtype), 0u) << name;
  }
}

TEST_F(SafetensorsFileTest, BFloat16AndConversions) {
  const std::string path = Path("bf16.safetensors");
  ASSERT_TRUE(WriteSafetensors(path, SampleTensors()).ok());
  Result<SafetensorsFile> file = ReadSafetensors(path);
  ASSERT_TRUE(file.ok());
  Result<Tensor> bf16 = file->Get("bf16");
  ASSERT_TRUE(bf16.ok());
  EXPECT_EQ(bf16->dtype, DType::kBFloat16);
  Result<std::vector<float>> floats = ToFloat32(*bf16);
  ASSERT_TRUE(floats.ok());
  EXPECT_EQ(*floats, (std::vector<float>{1.f, -2.f, 0.15625f, 3.5f, -0.f, 256.f}));
  EXPECT_TRUE(std::signbit((*floats)[4]));
  Result<std::vector<uint16_t>> halves = ToFloat16(*bf16);
  ASSERT_TRUE(halves.ok());
  EXPECT_EQ(*halves, (std::vector<uint16_t>{0x3c00, 0xc000, 0x3100, 0x4300, 0x8000, 0x5c00}));
}

TEST_F(SafetensorsFileTest, MissingTensorNameListsAvailable) {
  const std::string path = Path("names.safetensors");
  ASSERT_TRUE(WriteSafetensors(path, SampleTensors()).ok());
  Result<SafetensorsFile> file = ReadSafetensors(path);
  ASSERT_TRUE(file.ok());
  const Status st = file->Get("layer1.k").status();
  ExpectErrorNamingFile(st, Status::Code::kNotFound, path, "'layer1.k'");
  EXPECT_NE(st.message().find("'layer0.k'"), std::string::npos) << st.ToString();
  EXPECT_NE(st.message().find("'f32.matrix'"), std::string::npos) << st.ToString();
}

TEST_F(SafetensorsFileTest, OtherDtypesAreSkippedAndRefusedByName) {
  // An I64 tensor beside an F16 one: the file reads, the I64 is not loaded.
  std::string data(16, '\0');  // I64 [2]
  data += std::string("\x00\x3c\x00\x40", 4);  // F16 [2]: 1, 2
  const std::string path = WriteRaw(
      "mixed.safetensors",
      SafetensorsBytes(R"({"pos":{"dtype":"I64","shape":[2],"data_offsets":[0,16]},)"
                       R"("k":{"dtype":"F16","shape":[2],"data_offsets":[16,20]}})",
                       data));
  Result<SafetensorsFile> file = ReadSafetensors(path);
  ASSERT_TRUE(file.ok()) << file.status().ToString();
  EXPECT_EQ(*ToFloat32(*file->Get("k")), (std::vector<float>{1.f, 2.f}));
  EXPECT_EQ(file->skipped, (std::map<std::string, std::string>{{"pos", "I64"}}));
  ExpectErrorNamingFile(file->Get("pos").status(), Status::Code::kNotSupported, path,
                        "dtype I64");
}

TEST_F(SafetensorsFileTest, MissingFile) {
  const std::string path = Path("nope.safetensors");
  ExpectErrorNamingFile(ReadSafetensors(path).status(), Status::Code::kNotFound, path,
                        "no such file");
}

TEST_F(SafetensorsFileTest, TooShortForTheLength) {
  const std::string path = WriteRaw("short.safetensors", "abc");
  ExpectErrorNamingFile(ReadSafetensors(path).status(), Status::Code::kCorruption, path,
                        "too short");
}

TEST_F(SafetensorsFileTest, HeaderLengthLargerThanFile) {
  std::string bytes = SafetensorsBytes(R"({"k":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})",
                                       std::string(4, '\0'));
  bytes[1] = 0x10;  // length += 4096
  const std::string path = WriteRaw("len.safetensors", bytes);
  ExpectErrorNamingFile(ReadSafetensors(path).status(), Status::Code::kCorruption, path,
                        "is larger than the file");

  std::string huge(8, '\xff');  // 2^64 - 1
  const std::string path2 = WriteRaw("huge.safetensors", huge + "{}");
  ExpectErrorNamingFile(ReadSafetensors(path2).status(), Status::Code::kCorruption, path2,
                        "is larger than the file");
}

TEST_F(SafetensorsFileTest, BadJson) {
  for (const std::string& json : {std::string(R"({"k": {"dtype": "F32", "shape": [1], )"),
                                 std::string(R"({"k" "x"})"), std::string("{\xff\xfe}"),
                                 std::string(R"({"k":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}} )")}) {
    SCOPED_TRACE(json);
    const std::string path = WriteRaw("json.safetensors", SafetensorsBytes(json, std::string(4, '\0')));
    ExpectErrorNamingFile(ReadSafetensors(path).status(), Status::Code::kCorruption, path,
                          "not valid JSON");
  }
  for (const std::string& json : {std::string("[1, 2]"), std::string("hello"), std::string("")}) {
    SCOPED_TRACE(json);
    const std::string path = WriteRaw("json.safetensors", SafetensorsBytes(json, ""));
    ExpectErrorNamingFile(ReadSafetensors(path).status(), Status::Code::kCorruption, path,
                          "not a JSON object");
  }
}

TEST_F(SafetensorsFileTest, MalformedEntries) {
  struct Case {
    std::string json;
    std::string data;
    std::string fragment;
  };
  const std::string four(4, '\0');
  const std::vector<Case> cases = {
      {R"({"k":{"dtype":"F32","shape":[1],"data_offsets":[0,8]}})", four, "out of range"},
      {R"({"k":{"dtype":"F32","shape":[1],"data_offsets":[4,0]}})", four, "out of range"},
      {R"({"k":{"dtype":"F32","shape":[1],"data_offsets":[0,18446744073709551615]}})", four,
       "out of range"},
      {R"({"k":{"dtype":"F32","shape":[2],"data_offsets":[0,4]}})", four, "needs 8 bytes"},
      {R"({"k":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"v":{"dtype":"F16","shape":[2],"data_offsets":[0,4]}})",
       four, "overlap"},
      {R"({"k":{"dtype":"F16","shape":[1],"data_offsets":[2,4]}})", four, "belong to no tensor"},
      {R"({"k":{"dtype":"F16","shape":[1],"data_offsets":[0,2]}})", four, "extra bytes"},
      {R"({"k":{"shape":[1],"data_offsets":[0,4]}})", four, "dtype"},
      {R"({"k":{"dtype":7,"shape":[1],"data_offsets":[0,4]}})", four, "dtype"},
      {R"({"k":{"dtype":"F32","data_offsets":[0,4]}})", four, "shape"},
      {R"({"k":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}})", four, "shape"},
      {R"({"k":{"dtype":"F32","shape":[1.5],"data_offsets":[0,4]}})", four, "shape"},
      {R"({"k":{"dtype":"F32","shape":[4294967296,4294967296,4294967296],"data_offsets":[0,4]}})",
       four, "too large"},
      {R"({"k":{"dtype":"F32","shape":[1]}})", four, "data_offsets"},
      {R"({"k":{"dtype":"F32","shape":[1],"data_offsets":[0]}})", four, "data_offsets"},
      {R"({"k":{"dtype":"F32","shape":[1],"data_offsets":[0,-4]}})", four, "data_offsets"},
      {R"({"k":[1,2,3]})", four, "not an object"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.json);
    const std::string path = WriteRaw("entry.safetensors", SafetensorsBytes(c.json, c.data));
    const Status st = ReadSafetensors(path).status();
    ExpectErrorNamingFile(st, Status::Code::kCorruption, path, c.fragment);
    EXPECT_NE(st.message().find("'k'"), std::string::npos) << st.ToString();
  }
}

TEST_F(SafetensorsFileTest, MetadataIsSkipped) {
  const std::string path = WriteRaw(
      "meta.safetensors",
      SafetensorsBytes(R"({"__metadata__":{"format":"pt","n":3},)"
                       R"("k":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}  )",
                       std::string("\x00\x00\x80\x3f", 4)));
  Result<SafetensorsFile> file = ReadSafetensors(path);
  ASSERT_TRUE(file.ok()) << file.status().ToString();
  EXPECT_EQ(file->names(), std::vector<std::string>{"k"});
  EXPECT_EQ(file->metadata, (std::map<std::string, std::string>{{"format", "pt"}}));
  EXPECT_EQ(*ToFloat32(*file->Get("k")), std::vector<float>{1.f});
}

TEST_F(SafetensorsFileTest, EmptyFileOfTensors) {
  const std::string path = Path("none.safetensors");
  ASSERT_TRUE(WriteSafetensors(path, {}).ok());
  Result<SafetensorsFile> file = ReadSafetensors(path);
  ASSERT_TRUE(file.ok()) << file.status().ToString();
  EXPECT_TRUE(file->tensors.empty());
  ExpectErrorNamingFile(file->Get("k").status(), Status::Code::kNotFound, path, "tensors: none");
}

TEST_F(SafetensorsFileTest, WriteRefusesBadInput) {
  const std::string path = Path("bad.safetensors");
  std::map<std::string, Tensor> reserved;
  reserved["__metadata__"] = RandomFloatTensor({1}, 1);
  ExpectErrorNamingFile(WriteSafetensors(path, reserved), Status::Code::kInvalidArgument, path,
                        "reserved");

  std::map<std::string, Tensor> inconsistent;
  inconsistent["k"] = RandomFloatTensor({2, 3}, 1);
  inconsistent["k"].data.pop_back();
  ExpectErrorNamingFile(WriteSafetensors(path, inconsistent), Status::Code::kInvalidArgument, path,
                        "tensor 'k'");

  std::map<std::string, Tensor> bad_utf8;
  bad_utf8["\xff\xfe"] = RandomFloatTensor({1}, 1);
  ExpectErrorNamingFile(WriteSafetensors(path, bad_utf8), Status::Code::kInvalidArgument, path,
                        "UTF-8");
  EXPECT_FALSE(std::filesystem::exists(path));
}

// ---- interoperability with the reference implementation -----------------

// A Python that can import numpy and safetensors: $MSA_TEST_PYTHON if set,
// else /usr/bin/python3. Empty when there is none.
std::string PythonWithSafetensors() {
  std::vector<std::string> candidates;
  if (const char* env = std::getenv("MSA_TEST_PYTHON"); env != nullptr && *env != '\0') {
    candidates.push_back(env);
  }
  candidates.push_back("/usr/bin/python3");
  for (const std::string& py : candidates) {
    const std::string cmd = "'" + py + "' -c 'import numpy, safetensors.numpy' >/dev/null 2>&1";
    if (std::system(cmd.c_str()) == 0) return py;
  }
  return "";
}

int RunPython(const std::string& py, const std::string& script_path, const std::string& script,
              const std::string& arg) {
  {
    std::ofstream out(script_path);
    out << script;
  }
  const std::string cmd = "'" + py + "' '" + script_path + "' '" + arg + "'";
  return std::system(cmd.c_str());
}

TEST_F(SafetensorsFileTest, ReferenceLibraryReadsWhatWeWrite) {
  const std::string py = PythonWithSafetensors();
  if (py.empty()) {
    GTEST_SKIP() << "no Python with numpy and safetensors (set MSA_TEST_PYTHON to one)";
  }
  std::vector<float> a(240);
  for (size_t i = 0; i < a.size(); ++i) a[i] = static_cast<float>(i) * 0.25f - 7.f;
  std::vector<uint16_t> h(a.size());
  for (size_t i = 0; i < a.size(); ++i) h[i] = attention::FloatToHalf(a[i]);
  std::map<std::string, Tensor> tensors;
  tensors["k"] = MakeFloat16Tensor({2, 3, 5, 8}, h.data());
  tensors["v"] = MakeFloat32Tensor({2, 3, 5, 8}, a.data());
  tensors["odd"] = MakeFloat16Tensor({3}, h.data());
  ASSERT_TRUE(WriteSafetensors(Path("ours.safetensors"), tensors, {{"producer", "msa"}}).ok());
  const std::string script = R"(
import sys
import numpy as np
from safetensors.numpy import load_file
from safetensors import safe_open
t = load_file(sys.argv[1] + '/ours.safetensors')
a = (np.arange(240, dtype=np.float32) * 0.25 - 7).reshape(2, 3, 5, 8)
assert sorted(t) == ['k', 'odd', 'v'], sorted(t)
assert t['k'].dtype == np.float16 and np.array_equal(t['k'], a.astype(np.float16))
assert t['v'].dtype == np.float32 and np.array_equal(t['v'], a)
assert np.array_equal(t['odd'], a.reshape(-1)[:3].astype(np.float16))
with safe_open(sys.argv[1] + '/ours.safetensors', 'np') as f:
    assert f.metadata() == {'producer': 'msa'}, f.metadata()
)";
  EXPECT_EQ(RunPython(py, Path("check.py"), script, dir_), 0) << "safetensors rejected our file";
}

TEST_F(SafetensorsFileTest, WeReadWhatReferenceLibraryWrites) {
  const std::string py = PythonWithSafetensors();
  if (py.empty()) {
    GTEST_SKIP() << "no Python with numpy and safetensors (set MSA_TEST_PYTHON to one)";
  }
  const std::string script = R"(
import sys
import numpy as np
from safetensors.numpy import save_file
a = (np.arange(240, dtype=np.float32) * 0.25 - 7).reshape(2, 3, 5, 8)
save_file({'k': a.astype(np.float16), 'v': a, 's': np.array(3.5, dtype=np.float32),
           'pos': np.arange(5, dtype=np.int64), 'odd': a.reshape(-1)[:3].astype(np.float16)},
          sys.argv[1] + '/theirs.safetensors', metadata={'format': 'np'})
)";
  ASSERT_EQ(RunPython(py, Path("make.py"), script, dir_), 0);
  Result<SafetensorsFile> file = ReadSafetensors(Path("theirs.safetensors"));
  ASSERT_TRUE(file.ok()) << file.status().ToString();
  std::vector<float> a(240);
  for (size_t i = 0; i < a.size(); ++i) a[i] = static_cast<float>(i) * 0.25f - 7.f;
  Result<Tensor> k = file->Get("k");
  ASSERT_TRUE(k.ok());
  EXPECT_EQ(k->dtype, DType::kFloat16);
  EXPECT_EQ(k->shape, (std::vector<int64_t>{2, 3, 5, 8}));
  EXPECT_EQ(*ToFloat32(*k), a);
  Result<Tensor> v = file->Get("v");
  ASSERT_TRUE(v.ok());
  EXPECT_EQ(v->dtype, DType::kFloat32);
  EXPECT_EQ(*ToFloat32(*v), a);
  Result<Tensor> s = file->Get("s");
  ASSERT_TRUE(s.ok());
  EXPECT_TRUE(s->shape.empty());
  EXPECT_EQ(*ToFloat32(*s), std::vector<float>{3.5f});
  EXPECT_EQ(*ToFloat32(*file->Get("odd")), std::vector<float>(a.begin(), a.begin() + 3));
  EXPECT_EQ(file->Get("pos").status().code(), Status::Code::kNotSupported);
  EXPECT_EQ(file->metadata.at("format"), "np");
}

}  // namespace
}  // namespace msa::formats
