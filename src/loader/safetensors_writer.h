// Writing safetensors checkpoints, the format loader/safetensors.h reads: an 8-byte
// little-endian header length, a JSON header ({name: {dtype, shape, data_offsets}} and
// "__metadata__"), padded with spaces so the data starts 8-byte aligned, then every tensor's
// bytes back to back, no holes (the format forbids them). Entries are laid out larger elements
// first, then by name (the Rust reference implementation's order), so each tensor's offset is a
// multiple of its element size. Streaming: the header is written first from the entries'
// dtypes and shapes, then each tensor's bytes as the caller makes them, one at a time.
#pragma once
#include <cstdint>
#include <cstdio>
#include <map>
#include <span>
#include <string>
#include <vector>

#include "core/dtype.h"

namespace gale {

struct SafetensorsEntry {
  std::string name;
  DType dtype = DType::F32;
  std::vector<int64_t> shape;  // [] is a scalar (one element)
  size_t nbytes() const;
};

// The entries in the order a file holds them: element size descending, then name.
std::vector<SafetensorsEntry> safetensors_file_order(std::vector<SafetensorsEntry> entries);

// Splits entries (in the given order) into shards of at most max_bytes of tensor data each; a
// tensor larger than max_bytes gets a shard of its own. At least one shard (possibly empty).
std::vector<std::vector<SafetensorsEntry>> plan_safetensors_shards(const std::vector<SafetensorsEntry>& entries,
                                                                   uint64_t max_bytes);

// "model.safetensors" for one shard, else "model-0000k-of-0000n.safetensors" (k from 1), the
// names transformers' save_pretrained gives.
std::string safetensors_shard_name(size_t k, size_t n);

class SafetensorsWriter {
 public:
  // Creates (truncates) `path` and writes the header; throws gale::Error naming the path when
  // the file cannot be written or an entry is malformed (duplicate name, unknown size).
  SafetensorsWriter(std::string path, std::vector<SafetensorsEntry> entries,
                    const std::map<std::string, std::string>& metadata = {{"format", "pt"}});
  ~SafetensorsWriter();
  SafetensorsWriter(const SafetensorsWriter&) = delete;
  SafetensorsWriter& operator=(const SafetensorsWriter&) = delete;

  // In file order: the order write() takes the tensors' bytes in.
  const std::vector<SafetensorsEntry>& entries() const { return entries_; }
  // The next entry's name, or "" once all were written.
  const std::string& next_name() const;
  // The next entry's bytes, exactly its nbytes().
  void write(std::span<const uint8_t> bytes);
  // Checks that every entry was written, flushes to disk and closes.
  void finish();

 private:
  std::string path_;
  std::vector<SafetensorsEntry> entries_;
  size_t next_ = 0;
  std::FILE* f_ = nullptr;
};

}  // namespace gale
