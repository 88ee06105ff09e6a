// safetensors checkpoints: memory-mapped, zero-copy, single file or index.json shards.
#pragma once
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "core/mapped_file.h"

namespace gale {

struct TensorInfo {
  std::string name;
  DType dtype = DType::F32;
  std::vector<int64_t> shape;
  const uint8_t* data = nullptr;  // points into the mapped file
  size_t nbytes = 0;
  std::string file;               // shard it lives in (for messages)
  int64_t numel() const;
};

// Parses the header of one safetensors blob (8-byte little-endian length, JSON, data).
// Validates every entry (dtype known, shape non-negative, offsets inside the data section,
// byte count == numel * dtype size) and throws gale::Error naming `what` and the problem.
std::vector<TensorInfo> parse_safetensors(const uint8_t* data, size_t size, const std::string& what);

class SafeTensors {
 public:
  // <dir>/model.safetensors.index.json if present, else <dir>/model.safetensors,
  // else the single *.safetensors file in dir.
  static SafeTensors open_dir(const std::string& dir);
  static SafeTensors open_files(const std::vector<std::string>& paths);
  // A safetensors blob already in memory (synthetic models); `owner` keeps it alive.
  static SafeTensors from_memory(std::shared_ptr<const void> owner, const uint8_t* data, size_t size,
                                 const std::string& what);

  const TensorInfo* find(const std::string& name) const;
  const TensorInfo& get(const std::string& name) const;  // throws naming the missing tensor
  const std::map<std::string, TensorInfo>& tensors() const { return tensors_; }
  size_t total_bytes() const;

 private:
  std::vector<std::shared_ptr<const void>> files_;  // mappings or buffers the tensors point into
  std::map<std::string, TensorInfo> tensors_;
};

}  // namespace gale
