// Helpers of the tests that run fixture models directly (no engine).
#pragma once
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/dtype.h"

#include "model/kv_cache.h"
#include "model/transformer.h"

namespace gale::test {

// The logits of every position of `ids` as one prompt through `m`: [ids.size(), vocab].
inline std::vector<float> all_logits(Transformer& m, const std::vector<int32_t>& ids) {
  const int64_t bs = 16, n = int64_t(ids.size());
  KVCache kv(m.config(), (n + bs - 1) / bs, bs, m.kv_format());
  std::vector<int32_t> table(size_t((n + bs - 1) / bs));
  for (size_t i = 0; i < table.size(); ++i) table[i] = int32_t(i);
  SeqStep s{ids, 0, table, SeqStep::Logits::All};
  std::vector<float> logits;
  m.forward({&s, 1}, kv, logits);
  return logits;
}

// A safetensors blob in memory from (name, dtype, shape, bytes) entries.
struct Blob {
  struct Entry {
    std::string name;
    DType dtype;
    std::vector<int64_t> shape;
    std::vector<uint8_t> bytes;
  };
  std::vector<Entry> entries;
  std::shared_ptr<std::vector<uint8_t>> build() const {
    nlohmann::json header = nlohmann::json::object();
    uint64_t off = 0;
    for (const Entry& e : entries) {
      header[e.name] = {{"dtype", dtype_name(e.dtype)}, {"shape", e.shape}, {"data_offsets", {off, off + e.bytes.size()}}};
      off += e.bytes.size();
    }
    std::string h = header.dump();
    h.append((8 - h.size() % 8) % 8, ' ');
    auto buf = std::make_shared<std::vector<uint8_t>>(8 + h.size() + off);
    const uint64_t hl = h.size();
    std::memcpy(buf->data(), &hl, 8);
    std::memcpy(buf->data() + 8, h.data(), h.size());
    size_t p = 8 + h.size();
    for (const Entry& e : entries) {
      std::memcpy(buf->data() + p, e.bytes.data(), e.bytes.size());
      p += e.bytes.size();
    }
    return buf;
  }
};

}  // namespace gale::test
