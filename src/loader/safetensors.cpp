#include "loader/safetensors.h"

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/json_depth.h"

namespace fs = std::filesystem;
using nlohmann::json;

namespace gale {

int64_t TensorInfo::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

std::vector<TensorInfo> parse_safetensors(const uint8_t* data, size_t size, const std::string& what) {
  if (size < 8) throw Error(what + ": not a safetensors file (shorter than its 8-byte header length)");
  uint64_t hlen = 0;
  for (int i = 7; i >= 0; --i) hlen = (hlen << 8) | data[i];
  if (hlen > size - 8)
    throw Error(what + ": truncated or corrupt safetensors header (header length " + std::to_string(hlen) +
                " exceeds file size " + std::to_string(size) + ")");
  if (hlen > (100u << 20)) throw Error(what + ": safetensors header larger than 100 MB");
  json header;
  check_json_depth(std::string_view(reinterpret_cast<const char*>(data + 8), size_t(hlen)),
                   what + ": the safetensors header");
  try {
    header = json::parse(data + 8, data + 8 + hlen);
  } catch (const json::exception& e) {
    throw Error(what + ": corrupt safetensors header (invalid JSON: " + e.what() + ")");
  }
  if (!header.is_object()) throw Error(what + ": corrupt safetensors header (not a JSON object)");
  const uint8_t* base = data + 8 + hlen;
  const uint64_t data_size = size - 8 - hlen;
  std::vector<TensorInfo> out;
  for (auto& item : header.items()) {
    // Plain references, not a structured binding: the lambda below captures the name.
    const std::string& name = item.key();
    const json& e = item.value();
    if (name == "__metadata__") continue;
    auto bad = [&](const std::string& why) { return Error(what + ": tensor '" + name + "': " + why); };
    if (!e.is_object()) throw bad("entry is not an object");
    auto dt = e.find("dtype");
    auto sh = e.find("shape");
    auto off = e.find("data_offsets");
    if (dt == e.end() || !dt->is_string()) throw bad("missing dtype");
    if (sh == e.end() || !sh->is_array()) throw bad("missing shape");
    if (off == e.end() || !off->is_array() || off->size() != 2) throw bad("missing data_offsets");
    TensorInfo t;
    t.name = name;
    t.file = what;
    if (!dtype_from_name(dt->get<std::string>(), &t.dtype))
      throw bad("unsupported dtype " + dt->get<std::string>());
    uint64_t numel = 1;
    for (auto& d : *sh) {
      if (!d.is_number_unsigned()) throw bad("shape entries must be non-negative integers");
      uint64_t v = d.get<uint64_t>();
      if (v != 0 && numel > (uint64_t(1) << 62) / v) throw bad("shape too large");
      numel *= v;
      t.shape.push_back(int64_t(v));
    }
    if (!(*off)[0].is_number_unsigned() || !(*off)[1].is_number_unsigned()) throw bad("bad data_offsets");
    uint64_t b = (*off)[0].get<uint64_t>(), en = (*off)[1].get<uint64_t>();
    if (b > en || en > data_size)
      throw bad("data offsets [" + std::to_string(b) + ", " + std::to_string(en) + ") past the end of the file (data section " +
                std::to_string(data_size) + " bytes)");
    if (en - b != numel * dtype_size(t.dtype))
      throw bad("byte size " + std::to_string(en - b) + " does not match shape and dtype (" +
                std::to_string(numel * dtype_size(t.dtype)) + " expected)");
    t.data = base + b;
    t.nbytes = size_t(en - b);
    out.push_back(std::move(t));
  }
  return out;
}

SafeTensors SafeTensors::open_files(const std::vector<std::string>& paths) {
  SafeTensors st;
  for (const auto& p : paths) {
    auto f = std::make_shared<MappedFile>(p);
    for (auto& t : parse_safetensors(f->data(), f->size(), p)) {
      std::string n = t.name;
      if (!st.tensors_.emplace(n, std::move(t)).second) throw Error(p + ": tensor '" + n + "' appears in two shards");
    }
    st.files_.push_back(std::move(f));
  }
  return st;
}

SafeTensors SafeTensors::from_memory(std::shared_ptr<const void> owner, const uint8_t* data, size_t size,
                                     const std::string& what) {
  SafeTensors st;
  for (auto& t : parse_safetensors(data, size, what)) {
    std::string n = t.name;
    st.tensors_.emplace(n, std::move(t));
  }
  st.files_.push_back(std::move(owner));
  return st;
}

SafeTensors SafeTensors::open_dir(const std::string& dir) {
  fs::path d(dir);
  fs::path index = d / "model.safetensors.index.json";
  if (fs::exists(index)) {
    std::ifstream in(index, std::ios::binary);
    const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    check_json_depth(text, index.string());
    json j;
    try {
      j = json::parse(text);
    } catch (const json::exception& e) {
      throw Error(index.string() + ": invalid JSON: " + e.what());
    }
    if (!j.is_object() || !j.contains("weight_map") || !j["weight_map"].is_object())
      throw Error(index.string() + ": missing 'weight_map' object");
    std::vector<std::string> shards;
    for (auto& [name, file] : j["weight_map"].items()) {
      if (!file.is_string()) throw Error(index.string() + ": weight_map entry for '" + name + "' is not a file name");
      std::string f = file.get<std::string>();
      if (f.find('/') != std::string::npos || f.find("..") != std::string::npos)
        throw Error(index.string() + ": shard name '" + f + "' must be a plain file name");
      std::string full = (d / f).string();
      if (std::find(shards.begin(), shards.end(), full) == shards.end()) shards.push_back(full);
    }
    SafeTensors st = open_files(shards);
    for (auto& [name, file] : j["weight_map"].items())
      if (!st.find(name)) throw Error(index.string() + ": tensor '" + name + "' is not in shard " + file.get<std::string>());
    return st;
  }
  fs::path single = d / "model.safetensors";
  if (fs::exists(single)) return open_files({single.string()});
  std::vector<std::string> found;
  if (fs::is_directory(d))
    for (auto& e : fs::directory_iterator(d))
      if (e.path().extension() == ".safetensors") found.push_back(e.path().string());
  std::sort(found.begin(), found.end());
  if (found.empty()) throw Error("no model.safetensors (or index.json shards) in " + dir);
  return open_files(found);
}

const TensorInfo* SafeTensors::find(const std::string& name) const {
  auto it = tensors_.find(name);
  return it == tensors_.end() ? nullptr : &it->second;
}

const TensorInfo& SafeTensors::get(const std::string& name) const {
  const TensorInfo* t = find(name);
  if (!t) throw Error("checkpoint is missing tensor '" + name + "'");
  return *t;
}

size_t SafeTensors::total_bytes() const {
  size_t n = 0;
  for (auto& [k, t] : tensors_) n += t.nbytes;
  return n;
}

}  // namespace gale
