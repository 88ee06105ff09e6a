// loader/safetensors_writer.h: what it writes, read back by loader/safetensors.h and checked byte
// by byte against the format (header length, JSON entries, __metadata__, padding, offsets
// without holes, each tensor aligned to its element size), shard planning and names, errors.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <map>
#include <tuple>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <nlohmann/json.hpp>
#include <unistd.h>

#include "core/error.h"
#include "loader/safetensors.h"
#include "loader/safetensors_writer.h"

using namespace gale;
namespace fs = std::filesystem;

namespace {

fs::path temp_dir(const std::string& tag) {
  fs::path d = fs::temp_directory_path() / ("gale-stw-" + tag + "-" + std::to_string(::getpid()));
  fs::remove_all(d);
  fs::create_directories(d);
  return d;
}

std::vector<uint8_t> pattern_bytes(size_t n, uint8_t seed) {
  std::vector<uint8_t> b(n);
  for (size_t i = 0; i < n; ++i) b[i] = uint8_t(seed + i * 7);
  return b;
}

std::vector<uint8_t> read_file(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return std::vector<uint8_t>((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

TEST(SafetensorsWriter, WritesWhatTheLoaderReadsAligned) {
  const fs::path dir = temp_dir("rt");
  // Odd sizes in every dtype, a scalar and an empty tensor; given in an order the file does not keep.
  const std::vector<SafetensorsEntry> entries = {
      {"b.fp8", DType::F8_E4M3, {13}}, {"a.bf16", DType::BF16, {7}},    {"z.f32", DType::F32, {3, 5}},
      {"scalar", DType::F32, {}},      {"empty", DType::F16, {0, 4}},   {"ids", DType::I64, {3}},
      {"c.fp8", DType::F8_E4M3, {2, 3}},
  };
  std::map<std::string, std::vector<uint8_t>> data;
  const fs::path path = dir / "model.safetensors";
  {
    SafetensorsWriter w(path.string(), entries);
    ASSERT_EQ(w.entries().size(), entries.size());
    uint8_t seed = 1;
    for (const SafetensorsEntry& e : w.entries()) {
      EXPECT_EQ(w.next_name(), e.name);
      data[e.name] = pattern_bytes(e.nbytes(), seed++);
      w.write(data[e.name]);
    }
    EXPECT_EQ(w.next_name(), "");
    w.finish();
  }
  const std::vector<uint8_t> file = read_file(path);
  ASSERT_GE(file.size(), 8u);
  uint64_t hlen = 0;
  for (int i = 7; i >= 0; --i) hlen = (hlen << 8) | file[size_t(i)];
  EXPECT_EQ(hlen % 8, 0u) << "the data section must start 8-byte aligned";
  const std::string header(reinterpret_cast<const char*>(file.data() + 8), size_t(hlen));
  EXPECT_EQ(header.find_last_not_of(' ') + 1, nlohmann::json::parse(header).dump().size()) << "padding is spaces";
  const nlohmann::json h = nlohmann::json::parse(header);
  EXPECT_EQ(h["__metadata__"], (nlohmann::json{{"format", "pt"}}));
  // Offsets: back to back from 0 to the end of the file, larger elements first, each aligned.
  std::vector<std::tuple<uint64_t, uint64_t, std::string>> spans;  // begin, end (empty tensors first), name
  for (auto& [name, e] : h.items())
    if (name != "__metadata__")
      spans.push_back({e["data_offsets"][0].get<uint64_t>(), e["data_offsets"][1].get<uint64_t>(), name});
  std::sort(spans.begin(), spans.end());
  uint64_t at = 0;
  size_t last_size = 8;
  for (auto& [begin, end, name] : spans) {
    const nlohmann::json& e = h[name];
    EXPECT_EQ(begin, at) << name << ": a hole or overlap";
    DType dt;
    ASSERT_TRUE(dtype_from_name(e["dtype"].get<std::string>(), &dt));
    EXPECT_EQ(begin % dtype_size(dt), 0u) << name << " is not aligned to its element size";
    EXPECT_LE(dtype_size(dt), last_size) << "larger elements first";
    last_size = dtype_size(dt);
    at = e["data_offsets"][1].get<uint64_t>();
  }
  EXPECT_EQ(8 + hlen + at, file.size());
  // The loader reads every tensor back, dtype, shape and bytes.
  const SafeTensors st = SafeTensors::open_files({path.string()});
  ASSERT_EQ(st.tensors().size(), entries.size());
  for (const SafetensorsEntry& e : entries) {
    const TensorInfo& t = st.get(e.name);
    EXPECT_EQ(t.dtype, e.dtype) << e.name;
    EXPECT_EQ(t.shape, e.shape) << e.name;
    ASSERT_EQ(t.nbytes, data[e.name].size()) << e.name;
    if (t.nbytes) {
      EXPECT_EQ(std::memcmp(t.data, data[e.name].data(), t.nbytes), 0) << e.name;
    }
  }
  fs::remove_all(dir);
}

TEST(SafetensorsWriter, ShardPlanAndNames) {
  const std::vector<SafetensorsEntry> e = {
      {"a", DType::F32, {10}}, {"b", DType::F32, {10}}, {"c", DType::F32, {30}}, {"d", DType::F8_E4M3, {5}}};
  auto shards = plan_safetensors_shards(e, 80);  // 40 + 40 | 120 (alone, over the limit) | 5
  ASSERT_EQ(shards.size(), 3u);
  EXPECT_EQ(shards[0].size(), 2u);
  EXPECT_EQ(shards[1][0].name, "c");
  EXPECT_EQ(shards[2][0].name, "d");
  EXPECT_EQ(plan_safetensors_shards(e, 1000).size(), 1u);
  EXPECT_EQ(plan_safetensors_shards({}, 1000).size(), 1u);
  EXPECT_EQ(safetensors_shard_name(1, 1), "model.safetensors");
  EXPECT_EQ(safetensors_shard_name(2, 3), "model-00002-of-00003.safetensors");
}

TEST(SafetensorsWriter, ErrorsNameTheFile) {
  const fs::path dir = temp_dir("err");
  try {
    SafetensorsWriter w((dir / "x.safetensors").string(), {{"a", DType::F32, {1}}, {"a", DType::BF16, {2}}});
    ADD_FAILURE() << "a repeated name was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("'a'"), std::string::npos) << e.what();
  }
  try {
    SafetensorsWriter w((dir / "missing" / "x.safetensors").string(), {{"a", DType::F32, {1}}});
    ADD_FAILURE() << "a file in a missing folder was created";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("missing/x.safetensors"), std::string::npos) << e.what();
  }
  fs::remove_all(dir);
}

}  // namespace
