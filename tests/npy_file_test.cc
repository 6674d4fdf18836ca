// Tests for tools/npy_file: round trips, every refusal (each names the file),
// header spellings other writers use, and interoperability with numpy itself
// when a Python with numpy is available (skipped loudly otherwise).
#include "tools/npy_file.h"

#include <gtest/gtest.h>
#include <stdlib.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "attention/half.h"
#include "tools/tensor.h"

namespace msa::formats {
namespace {

class NpyFileTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string tmpl = ::testing::TempDir() + "msa_npy_XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl.data()), nullptr);
    dir_ = tmpl;
  }
  void TearDown() override {
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
  }

  std::string Path(const std::string& name) const { return dir_ + "/" + name; }

  // Writes `bytes` verbatim and returns the path.
  std::string WriteRaw(const std::string& name, const std::string& bytes) const {
    const std::string path = Path(name);
    std::ofstream out(path, std::ios::binary);
    out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    return path;
  }

  std::string dir_;
};

// A version 1.0 .npy: magic, version, 2-byte length, the header text as given
// (no padding added), then `data`.
std::string NpyBytes(const std::string& header, const std::string& data, int major = 1) {
  std::string out("\x93NUMPY", 6);
  out.push_back(static_cast<char>(major));
  out.push_back(0);
  const int len_bytes = major == 1 ? 2 : 4;
  for (int i = 0; i < len_bytes; ++i) out.push_back(static_cast<char>((header.size() >> (8 * i)) & 0xff));
  return out + header + data;
}

std::string FloatBytes(const std::vector<float>& v) {
  return std::string(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(float));
}

std::vector<float> RandomFloats(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.f, 3.f);
  std::vector<float> v(n);
  for (float& x : v) x = dist(rng);
  return v;
}

int64_t Product(const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

// The failure is a one-line Status that names the file.
void ExpectErrorNamingFile(const Status& st, Status::Code code, const std::string& path,
                           const std::string& fragment) {
  EXPECT_FALSE(st.ok());
  EXPECT_EQ(st.code(), code) << st.ToString();
  EXPECT_NE(st.message().find(path), std::string::npos) << st.ToString();
  EXPECT_NE(st.message().find(fragment), std::string::npos)
      << "expected '" << fragment << "' in: " << st.ToString();
  EXPECT_EQ(st.message().find('\n'), std::string::npos) << st.ToString();
}

const std::vector<std::vector<int64_t>> kShapes = {{}, {0}, {1}, {7}, {3, 4}, {1, 1, 1}, {0, 5},
                                                   {2, 3, 5, 8}};

TEST_F(NpyFileTest, Float32RoundTrip) {
  for (const auto& shape : kShapes) {
    SCOPED_TRACE(ShapeToString(shape));
    const std::vector<float> values = RandomFloats(static_cast<size_t>(Product(shape)), 7);
    const std::string path = Path("f32.npy");
    ASSERT_TRUE(WriteNpy(path, MakeFloat32Tensor(shape, values.data())).ok());
    Result<Tensor> back = ReadNpy(path);
    ASSERT_TRUE(back.ok()) << back.status().ToString();
    EXPECT_EQ(back->dtype, DType::kFloat32);
    EXPECT_EQ(back->shape, shape);
    Result<std::vector<float>> floats = ToFloat32(*back);
    ASSERT_TRUE(floats.ok());
    EXPECT_EQ(*floats, values);
  }
}

TEST_F(NpyFileTest, Float16RoundTrip) {
  for (const auto& shape : kShapes) {
    SCOPED_TRACE(ShapeToString(shape));
    const std::vector<float> values = RandomFloats(static_cast<size_t>(Product(shape)), 11);
    std::vector<uint16_t> halves(values.size());
    for (size_t i = 0; i < values.size(); ++i) halves[i] = attention::FloatToHalf(values[i]);
    const std::string path = Path("f16.npy");
    ASSERT_TRUE(WriteNpy(path, MakeFloat16Tensor(shape, halves.data())).ok());
    Result<Tensor> back = ReadNpy(path);
    ASSERT_TRUE(back.ok()) << back.status().ToString();
    EXPECT_EQ(back->dtype, DType::kFloat16);
    EXPECT_EQ(back->shape, shape);
    Result<std::vector<uint16_t>> bits = ToFloat16(*back);
    ASSERT_TRUE(bits.ok());
    EXPECT_EQ(*bits, halves);
    Result<std::vector<float>> floats = ToFloat32(*back);
    ASSERT_TRUE(floats.ok());
    for (size_t i = 0; i < halves.size(); ++i) {
      EXPECT_EQ((*floats)[i], attention::HalfToFloat(halves[i]));
    }
  }
}

TEST_F(NpyFileTest, Float32ConvertsToFloat16ByRounding) {
  // 1 + 2^-11 is halfway between two halves: ties go to even (1.0).
  const std::vector<float> values = {1.0f, -2.5f, 1.0f + 1.0f / 2048, 65504.f, 1e6f, 0.f};
  const Tensor t = MakeFloat32Tensor({6}, values.data());
  Result<std::vector<uint16_t>> bits = ToFloat16(t);
  ASSERT_TRUE(bits.ok());
  EXPECT_EQ(*bits, (std::vector<uint16_t>{0x3c00, 0xc100, 0x3c00, 0x7bff, 0x7c00, 0x0000}));
}

TEST_F(NpyFileTest, ConversionRefusesInconsistentTensor) {
  Tensor t;
  t.dtype = DType::kFloat32;
  t.shape = {2, 3};
  t.data.resize(20);  // needs 24
  EXPECT_EQ(ToFloat32(t).status().code(), Status::Code::kInvalidArgument);
  EXPECT_EQ(ToFloat16(t).status().code(), Status::Code::kInvalidArgument);
}

TEST_F(NpyFileTest, WrittenHeaderIsAlignedVersion1) {
  const std::vector<float> values = RandomFloats(2 * 3 * 5 * 8, 3);
  const std::string path = Path("aligned.npy");
  ASSERT_TRUE(WriteNpyFloat32(path, {2, 3, 5, 8}, values.data()).ok());
  std::ifstream in(path, std::ios::binary);
  std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  ASSERT_GE(bytes.size(), 10u);
  EXPECT_EQ(bytes.substr(0, 6), std::string("\x93NUMPY", 6));
  EXPECT_EQ(bytes[6], 1);
  EXPECT_EQ(bytes[7], 0);
  const size_t header_len = static_cast<uint8_t>(bytes[8]) | (static_cast<uint8_t>(bytes[9]) << 8);
  const size_t data_offset = 10 + header_len;
  EXPECT_EQ(data_offset % 64, 0u);
  EXPECT_EQ(bytes[data_offset - 1], '\n');
  EXPECT_NE(bytes.find("'descr': '<f4'"), std::string::npos);
  EXPECT_NE(bytes.find("'shape': (2, 3, 5, 8)"), std::string::npos);
  EXPECT_EQ(bytes.size(), data_offset + values.size() * 4);
  EXPECT_EQ(std::memcmp(bytes.data() + data_offset, values.data(), values.size() * 4), 0);
}

TEST_F(NpyFileTest, ReadsVersions2And3) {
  const std::vector<float> values = {1, 2, 3, 4, 5, 6};
  for (int major : {2, 3}) {
    const std::string path = WriteRaw(
        "v" + std::to_string(major) + ".npy",
        NpyBytes("{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }\n", FloatBytes(values),
                 major));
    Result<Tensor> t = ReadNpy(path);
    ASSERT_TRUE(t.ok()) << t.status().ToString();
    EXPECT_EQ(t->shape, (std::vector<int64_t>{2, 3}));
    EXPECT_EQ(*ToFloat32(*t), values);
  }
}

TEST_F(NpyFileTest, AcceptsOtherHeaderSpellings) {
  const std::vector<float> three = {1, 2, 3};
  struct Case {
    std::string header;
    std::vector<int64_t> shape;
    std::string data;
  };
  const std::vector<Case> cases = {
      {"{'shape': (3,), 'fortran_order': False, 'descr': '<f4'}", {3}, FloatBytes(three)},
      {"{'descr':'<f4','fortran_order':False,'shape':(3,)}", {3}, FloatBytes(three)},
      {"{ \"descr\" : \"<f4\" ,\t'fortran_order' : False , 'shape' : ( 3 , ) , }   \n", {3},
       FloatBytes(three)},
      {"{'descr': '<f4', 'fortran_order': False, 'shape': (3L,), }", {3}, FloatBytes(three)},
      {"{'descr': '<f4', 'fortran_order': False, 'shape': (), }", {}, FloatBytes({42})},
      {"{'descr': '<f4', 'fortran_order': False, 'shape': (1, 3), 'extra': None, }", {1, 3},
       FloatBytes(three)},
      // A zero-size shape reads as an empty tensor.
      {"{'descr': '<f4', 'fortran_order': False, 'shape': (0, 4), }", {0, 4}, ""},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.header);
    const std::string path = WriteRaw("spell.npy", NpyBytes(c.header, c.data));
    Result<Tensor> t = ReadNpy(path);
    ASSERT_TRUE(t.ok()) << t.status().ToString();
    EXPECT_EQ(t->shape, c.shape);
    EXPECT_EQ(std::string(t->data.begin(), t->data.end()), c.data);
  }
}

TEST_F(NpyFileTest, MissingFile) {
  const std::string path = Path("nope.npy");
  ExpectErrorNamingFile(ReadNpy(path).status(), Status::Code::kNotFound, path, "no such file");
}

TEST_F(NpyFileTest, DirectoryIsNotAFile) {
  ExpectErrorNamingFile(ReadNpy(dir_).status(), Status::Code::kInvalidArgument, dir_,
                        "not a regular file");
}

TEST_F(NpyFileTest, EmptyFile) {
  const std::string path = WriteRaw("empty.npy", "");
  ExpectErrorNamingFile(ReadNpy(path).status(), Status::Code::kInvalidArgument, path,
                        "not an .npy file");
}

TEST_F(NpyFileTest, BadMagic) {
  const std::string path = WriteRaw("magic.npy", "PK\x03\x04 this is a zip file, not an npy file");
  ExpectErrorNamingFile(ReadNpy(path).status(), Status::Code::kInvalidArgument, path, "bad magic");
}

TEST_F(NpyFileTest, TruncatedPrefix) {
  const std::string path = WriteRaw("prefix.npy", std::string("\x93NUMPY\x01", 7));
  ExpectErrorNamingFile(ReadNpy(path).status(), Status::Code::kCorruption, path,
                        "truncated header");
}

TEST_F(NpyFileTest, TruncatedHeader) {
  const std::string full =
      NpyBytes("{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }\n", FloatBytes({1, 2, 3, 4, 5, 6}));
  const std::string path = WriteRaw("header.npy", full.substr(0, 30));
  ExpectErrorNamingFile(ReadNpy(path).status(), Status::Code::kCorruption, path,
                        "truncated header");
}

TEST_F(NpyFileTest, TruncatedData) {
  const std::vector<float> values(2 * 3 * 5 * 8, 1.f);
  const std::string path = Path("data.npy");
  ASSERT_TRUE(WriteNpyFloat32(path, {2, 3, 5, 8}, values.data()).ok());
  std::filesystem::resize_file(path, std::filesystem::file_size(path) - 860);
  ExpectErrorNamingFile(ReadNpy(path).status(), Status::Code::kCorruption, path,
                        "truncated data: expected 960 bytes of data, found 100");
}

TEST_F(NpyFileTest, ExtraData) {
  const std::string path = WriteRaw(
      "extra.npy", NpyBytes("{'descr': '<f4', 'fortran_order': False, 'shape': (2,), }\n",
                            FloatBytes({1, 2, 3})));
  ExpectErrorNamingFile(ReadNpy(path).status(), Status::Code::kCorruption, path,
                        "expected 8 bytes of data, found 12");
}

TEST_F(NpyFileTest, FortranOrder) {
  const std::string path = WriteRaw(
      "fortran.npy", NpyBytes("{'descr': '<f4', 'fortran_order': True, 'shape': (2, 3), }\n",
                              FloatBytes({1, 2, 3, 4, 5, 6})));
  ExpectErrorNamingFile(ReadNpy(path).status(), Status::Code::kNotSupported, path,
                        "C order required");
}

TEST_F(NpyFileTest, BigEndian) {
  const std::string path = WriteRaw(
      "big.npy", NpyBytes("{'descr': '>f4', 'fortran_order': False, 'shape': (2,), }\n",
                          FloatBytes({1, 2})));
  ExpectErrorNamingFile(ReadNpy(path).status(), Status::Code::kNotSupported, path,
                        "big-endian dtype '>f4'");
}

TEST_F(NpyFileTest, UnsupportedDtypes) {
  for (const std::string dtype : {"<i4", "<f8", "|u1", "<c8", "|b1"}) {
    const std::string path = WriteRaw(
        "dtype.npy", NpyBytes("{'descr': '" + dtype + "', 'fortran_order': False, 'shape': (2,), }\n",
                              FloatBytes({1, 2, 3, 4})));
    ExpectErrorNamingFile(ReadNpy(path).status(), Status::Code::kNotSupported, path,
                          "unsupported dtype '" + dtype + "'");
  }
  const std::string path = WriteRaw(
      "structured.npy",
      NpyBytes("{'descr': [('a', '<f4'), ('b', '<i4')], 'fortran_order': False, 'shape': (1,), }\n",
               FloatBytes({1, 2})));
  ExpectErrorNamingFile(ReadNpy(path).status(), Status::Code::kNotSupported, path, "structured");
}

TEST_F(NpyFileTest, UnsupportedVersion) {
  const std::string path = WriteRaw(
      "v4.npy", NpyBytes("{'descr': '<f4', 'fortran_order': False, 'shape': (1,), }\n",
                         FloatBytes({1}), 4));
  ExpectErrorNamingFile(ReadNpy(path).status(), Status::Code::kNotSupported, path,
                        "version 4.0");
}

TEST_F(NpyFileTest, GarbageHeaders) {
  const std::vector<std::string> headers = {
      "hello world",
      "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3}",
      "{'descr': '<f4' 'fortran_order': False, 'shape': (6,)}",
      "{'descr': '<f4', 'fortran_order': False, 'shape': (6,)} trailing",
      "{'descr': '<f4, 'fortran_order': False, 'shape': (6,)}",
      "{'descr': '<f4', 'fortran_order': Maybe, 'shape': (6,)}",
      "{'descr': '<f4', 'fortran_order': False, 'shape': (2.5, 3)}",
      "{'descr': '<f4', 'fortran_order': False, 'shape': (-1, 6)}",
      "{'descr': '<f4', 'fortran_order': False, 'shape': 6}",
      "{'descr': '<f4', 'fortran_order': 0, 'shape': (6,)}",
      "{'descr': '<f4', 'shape': (6,)}",
      "{'fortran_order': False, 'shape': (6,)}",
      "{'descr': '<f4', 'fortran_order': False}",
      "{'descr': '<f4', 'fortran_order': False, 'shape': (99999999999999999999,)}",
      "{'descr': '<f4', 'fortran_order': False, 'shape': (4294967296, 4294967296, 4294967296)}",
      "['descr', '<f4']",
      std::string(100, '(') + std::string(100, ')'),
      "",
  };
  for (const std::string& header : headers) {
    SCOPED_TRACE(header);
    const std::string path =
        WriteRaw("garbage.npy", NpyBytes(header, FloatBytes({1, 2, 3, 4, 5, 6})));
    const Status st = ReadNpy(path).status();
    ExpectErrorNamingFile(st, Status::Code::kCorruption, path, "");
  }
}

TEST_F(NpyFileTest, WriteRefusesBadTensors) {
  Tensor bf16;
  bf16.dtype = DType::kBFloat16;
  bf16.shape = {2};
  bf16.data.resize(4);
  const std::string path = Path("bad.npy");
  ExpectErrorNamingFile(WriteNpy(path, bf16), Status::Code::kInvalidArgument, path, "bfloat16");

  Tensor short_data;
  short_data.dtype = DType::kFloat32;
  short_data.shape = {2, 3};
  short_data.data.resize(20);
  ExpectErrorNamingFile(WriteNpy(path, short_data), Status::Code::kInvalidArgument, path,
                        "needs 24 bytes");
  EXPECT_FALSE(std::filesystem::exists(path));

  const float one = 1.f;
  ExpectErrorNamingFile(WriteNpyFloat32(path, {-1}, &one), Status::Code::kInvalidArgument, path,
                        "negative");
}

TEST_F(NpyFileTest, WriteIntoMissingDirectoryFails) {
  const std::string path = Path("no/such/dir/x.npy");
  const float one = 1.f;
  const Status st = WriteNpyFloat32(path, {1}, &one);
  ExpectErrorNamingFile(st, Status::Code::kIOError, path, "No such file");
}

// ---- interoperability with numpy ----------------------------------------

// A Python that can import numpy: $MSA_TEST_PYTHON if set, else Debian's
// /usr/bin/python3 (where python3-numpy installs). Empty when there is none.
std::string PythonWithNumpy() {
  std::vector<std::string> candidates;
  if (const char* env = std::getenv("MSA_TEST_PYTHON"); env != nullptr && *env != '\0') {
    candidates.push_back(env);
  }
  candidates.push_back("/usr/bin/python3");
  for (const std::string& py : candidates) {
    const std::string cmd = "'" + py + "' -c 'import numpy' >/dev/null 2>&1";
    if (std::system(cmd.c_str()) == 0) return py;
  }
  return "";
}

// Runs `script` (written to a file) with `py` and the given arguments;
// returns the exit status and leaves the output in the test log.
int RunPython(const std::string& py, const std::string& script_path, const std::string& script,
              const std::vector<std::string>& args) {
  {
    std::ofstream out(script_path);
    out << script;
  }
  std::string cmd = "'" + py + "' '" + script_path + "'";
  for (const std::string& a : args) cmd += " '" + a + "'";
  return std::system(cmd.c_str());
}

TEST_F(NpyFileTest, NumpyReadsWhatWeWrite) {
  const std::string py = PythonWithNumpy();
  if (py.empty()) {
    GTEST_SKIP() << "no Python with numpy (set MSA_TEST_PYTHON, or apt-get install python3-numpy)";
  }
  // Values numpy can recompute: f32 i*0.25-7 over [2,3,5,8]; f16 the same
  // over [7] (exact in f16); a f32 scalar 3.5; an empty [0,4] f32.
  std::vector<float> a(2 * 3 * 5 * 8), b(7);
  for (size_t i = 0; i < a.size(); ++i) a[i] = static_cast<float>(i) * 0.25f - 7.f;
  std::vector<uint16_t> bh(b.size());
  for (size_t i = 0; i < b.size(); ++i) bh[i] = attention::FloatToHalf(static_cast<float>(i) * 0.25f - 7.f);
  const float scalar = 3.5f;
  ASSERT_TRUE(WriteNpyFloat32(Path("a.npy"), {2, 3, 5, 8}, a.data()).ok());
  ASSERT_TRUE(WriteNpy(Path("b.npy"), MakeFloat16Tensor({7}, bh.data())).ok());
  ASSERT_TRUE(WriteNpyFloat32(Path("s.npy"), {}, &scalar).ok());
  ASSERT_TRUE(WriteNpyFloat32(Path("e.npy"), {0, 4}, nullptr).ok());

  const std::string script = R"(
import sys
import numpy as np
d = sys.argv[1]
a = np.load(d + '/a.npy')
assert a.dtype == np.float32 and a.shape == (2, 3, 5, 8), (a.dtype, a.shape)
assert np.array_equal(a, (np.arange(240, dtype=np.float32) * 0.25 - 7).reshape(2, 3, 5, 8))
b = np.load(d + '/b.npy')
assert b.dtype == np.float16 and b.shape == (7,), (b.dtype, b.shape)
assert np.array_equal(b, (np.arange(7) * 0.25 - 7).astype(np.float16))
s = np.load(d + '/s.npy')
assert s.dtype == np.float32 and s.shape == () and s == 3.5
e = np.load(d + '/e.npy')
assert e.dtype == np.float32 and e.shape == (0, 4)
# numpy's own reader checks the header layout too.
with open(d + '/a.npy', 'rb') as f:
    version = np.lib.format.read_magic(f)
    assert version == (1, 0), version
    np.lib.format.read_array_header_1_0(f)
    assert f.tell() % 64 == 0, f.tell()
)";
  EXPECT_EQ(RunPython(py, Path("check.py"), script, {dir_}), 0) << "numpy rejected our files";
}

TEST_F(NpyFileTest, WeReadWhatNumpyWrites) {
  const std::string py = PythonWithNumpy();
  if (py.empty()) {
    GTEST_SKIP() << "no Python with numpy (set MSA_TEST_PYTHON, or apt-get install python3-numpy)";
  }
  const std::string script = R"(
import sys
import numpy as np
d = sys.argv[1]
a = (np.arange(240, dtype=np.float32) * 0.25 - 7).reshape(2, 3, 5, 8)
np.save(d + '/a.npy', a)
np.save(d + '/b.npy', a.astype(np.float16)[1, 2])
np.save(d + '/s.npy', np.float32(3.5))
np.save(d + '/f.npy', np.asfortranarray(a[0]))
np.save(d + '/big.npy', a.astype('>f4'))
np.save(d + '/i.npy', np.arange(4, dtype=np.int32))
for v in [(2, 0), (3, 0)]:
    with open(d + '/v%d.npy' % v[0], 'wb') as f:
        np.lib.format.write_array(f, a, version=v)
)";
  ASSERT_EQ(RunPython(py, Path("make.py"), script, {dir_}), 0);

  std::vector<float> a(240);
  for (size_t i = 0; i < a.size(); ++i) a[i] = static_cast<float>(i) * 0.25f - 7.f;
  for (const std::string name : {"a.npy", "v2.npy", "v3.npy"}) {
    SCOPED_TRACE(name);
    Result<Tensor> t = ReadNpy(Path(name));
    ASSERT_TRUE(t.ok()) << t.status().ToString();
    EXPECT_EQ(t->dtype, DType::kFloat32);
    EXPECT_EQ(t->shape, (std::vector<int64_t>{2, 3, 5, 8}));
    EXPECT_EQ(*ToFloat32(*t), a);
  }
  Result<Tensor> b = ReadNpy(Path("b.npy"));  // a[1, 2] as f16: elements 200..239
  ASSERT_TRUE(b.ok()) << b.status().ToString();
  EXPECT_EQ(b->dtype, DType::kFloat16);
  EXPECT_EQ(b->shape, (std::vector<int64_t>{5, 8}));
  EXPECT_EQ(*ToFloat32(*b), std::vector<float>(a.begin() + 200, a.end()));
  Result<Tensor> s = ReadNpy(Path("s.npy"));
  ASSERT_TRUE(s.ok()) << s.status().ToString();
  EXPECT_TRUE(s->shape.empty());
  EXPECT_EQ(*ToFloat32(*s), std::vector<float>{3.5f});

  EXPECT_EQ(ReadNpy(Path("f.npy")).status().code(), Status::Code::kNotSupported);
  EXPECT_EQ(ReadNpy(Path("big.npy")).status().code(), Status::Code::kNotSupported);
  EXPECT_EQ(ReadNpy(Path("i.npy")).status().code(), Status::Code::kNotSupported);
}

}  // namespace
}  // namespace msa::formats
