// The few MessagePack types the KV events need, written by hand (the spec:
// github.com/msgpack/msgpack/blob/master/spec.md): nil, bool, integers in their smallest form,
// float 64, str and array headers. Appends to one byte string.
#pragma once
#include <cstdint>
#include <string>
#include <string_view>

namespace gale {

class MsgpackWriter {
 public:
  void nil();
  void boolean(bool v);
  // Smallest form that holds the value: positive fixint, uint 8/16/32/64; negative fixint, int 8/16/32/64.
  void uint(uint64_t v);
  void sint(int64_t v);  // non-negative values take the uint forms (as msgpack-python writes them)
  void f64(double v);
  void str(std::string_view s);  // fixstr, str 8/16/32
  void array(uint32_t n);        // header of an array of n items: fixarray, array 16/32
  const std::string& bytes() const { return out_; }
  std::string take() { return std::move(out_); }

 private:
  void be(uint64_t v, int nbytes);  // big-endian
  std::string out_;
};

}  // namespace gale
