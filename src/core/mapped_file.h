// A read-only mmap of a whole file, unmapped on destruction: safetensors checkpoints (pages
// faulted in as tensors are read) and tokenizer.json (prefaulted: read whole at once).
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace gale {

class MappedFile {
 public:
  // populate: fault every page in at once (MAP_POPULATE), for files read front to back right
  // away. Throws gale::Error naming the file. Empty files are not mapped (data() is nullptr).
  explicit MappedFile(const std::string& path, bool populate = false);
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;
  const uint8_t* data() const { return data_; }
  size_t size() const { return size_; }
  std::string_view text() const { return {reinterpret_cast<const char*>(data_), size_}; }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  uint8_t* data_ = nullptr;
  size_t size_ = 0;
};

}  // namespace gale
