#include "loader/safetensors_writer.h"

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <nlohmann/json.hpp>
#include <set>
#include <unistd.h>

#include "core/error.h"

namespace gale {

size_t SafetensorsEntry::nbytes() const {
  size_t n = dtype_size(dtype);
  for (int64_t d : shape) {
    GALE_ASSERT(d >= 0);
    n *= size_t(d);
  }
  return n;
}

std::vector<SafetensorsEntry> safetensors_file_order(std::vector<SafetensorsEntry> entries) {
  std::stable_sort(entries.begin(), entries.end(), [](const SafetensorsEntry& a, const SafetensorsEntry& b) {
    const size_t sa = dtype_size(a.dtype), sb = dtype_size(b.dtype);
    return sa != sb ? sa > sb : a.name < b.name;
  });
  return entries;
}

std::vector<std::vector<SafetensorsEntry>> plan_safetensors_shards(const std::vector<SafetensorsEntry>& entries,
                                                                   uint64_t max_bytes) {
  std::vector<std::vector<SafetensorsEntry>> shards(1);
  uint64_t used = 0;
  for (const SafetensorsEntry& e : entries) {
    const uint64_t n = e.nbytes();
    if (!shards.back().empty() && used + n > max_bytes) {
      shards.emplace_back();
      used = 0;
    }
    shards.back().push_back(e);
    used += n;
  }
  return shards;
}

std::string safetensors_shard_name(size_t k, size_t n) {
  if (n == 1) return "model.safetensors";
  char buf[64];
  std::snprintf(buf, sizeof buf, "model-%05zu-of-%05zu.safetensors", k, n);
  return buf;
}

namespace {

[[noreturn]] void io_error(const std::string& path, const char* what) {
  throw Error(path + ": " + what + ": " + std::strerror(errno));
}

}  // namespace

SafetensorsWriter::SafetensorsWriter(std::string path, std::vector<SafetensorsEntry> entries,
                                     const std::map<std::string, std::string>& metadata)
    : path_(std::move(path)), entries_(safetensors_file_order(std::move(entries))) {
  nlohmann::json header = nlohmann::json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  std::set<std::string> seen;
  uint64_t off = 0;
  for (const SafetensorsEntry& e : entries_) {
    if (e.name.empty() || e.name == "__metadata__" || !seen.insert(e.name).second)
      throw Error(path_ + ": tensor name '" + e.name + "' is empty, reserved or repeated");
    const uint64_t n = e.nbytes();
    header[e.name] = {{"dtype", dtype_name(e.dtype)}, {"shape", e.shape}, {"data_offsets", {off, off + n}}};
    off += n;
  }
  std::string h = header.dump();
  h.append((8 - h.size() % 8) % 8, ' ');  // the data section starts 8-byte aligned
  uint8_t len[8];
  for (int i = 0; i < 8; ++i) len[i] = uint8_t(uint64_t(h.size()) >> (8 * i));
  f_ = std::fopen(path_.c_str(), "wb");
  if (!f_) io_error(path_, "cannot create");
  if (std::fwrite(len, 1, 8, f_) != 8 || std::fwrite(h.data(), 1, h.size(), f_) != h.size())
    io_error(path_, "write failed");
}

SafetensorsWriter::~SafetensorsWriter() {
  if (f_) std::fclose(f_);
}

const std::string& SafetensorsWriter::next_name() const {
  static const std::string none;
  return next_ < entries_.size() ? entries_[next_].name : none;
}

void SafetensorsWriter::write(std::span<const uint8_t> bytes) {
  GALE_ASSERT(f_ && next_ < entries_.size());
  const SafetensorsEntry& e = entries_[next_];
  GALE_ASSERT(bytes.size() == e.nbytes());
  if (!bytes.empty() && std::fwrite(bytes.data(), 1, bytes.size(), f_) != bytes.size())
    io_error(path_, ("write of '" + e.name + "' failed").c_str());
  ++next_;
}

void SafetensorsWriter::finish() {
  GALE_ASSERT(f_ && next_ == entries_.size());
  if (std::fflush(f_) != 0 || ::fsync(::fileno(f_)) != 0) io_error(path_, "flush failed");
  const int rc = std::fclose(f_);
  f_ = nullptr;
  if (rc != 0) io_error(path_, "close failed");
}

}  // namespace gale
