// The KV events' msgpack encoding against bytes written by hand from the MessagePack spec
// (github.com/msgpack/msgpack/blob/master/spec.md: format bytes, big-endian payloads) and vLLM's
// array-like event layout (kv_events/kv_event_encoder.h).
#include <gtest/gtest.h>

#include <climits>
#include <string>

#include "kv_events/kv_event_encoder.h"
#include "kv_events/msgpack_writer.h"

using namespace gale;

namespace {

std::string bytes(std::initializer_list<int> b) {
  std::string s;
  for (int x : b) s.push_back(char(uint8_t(x)));
  return s;
}

template <class F>
std::string written(F f) {
  MsgpackWriter w;
  f(w);
  return w.bytes();
}

TEST(Msgpack, IntegersTakeTheirSmallestForm) {
  EXPECT_EQ(written([](auto& w) { w.uint(0); }), bytes({0x00}));
  EXPECT_EQ(written([](auto& w) { w.uint(127); }), bytes({0x7f}));                 // positive fixint
  EXPECT_EQ(written([](auto& w) { w.uint(128); }), bytes({0xcc, 0x80}));           // uint 8
  EXPECT_EQ(written([](auto& w) { w.uint(256); }), bytes({0xcd, 0x01, 0x00}));     // uint 16
  EXPECT_EQ(written([](auto& w) { w.uint(65536); }), bytes({0xce, 0x00, 0x01, 0x00, 0x00}));  // uint 32
  EXPECT_EQ(written([](auto& w) { w.uint(1ull << 32); }),
            bytes({0xcf, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00}));        // uint 64
  EXPECT_EQ(written([](auto& w) { w.sint(5); }), bytes({0x05}));
  EXPECT_EQ(written([](auto& w) { w.sint(-1); }), bytes({0xff}));                  // negative fixint
  EXPECT_EQ(written([](auto& w) { w.sint(-32); }), bytes({0xe0}));
  EXPECT_EQ(written([](auto& w) { w.sint(-33); }), bytes({0xd0, 0xdf}));           // int 8
  EXPECT_EQ(written([](auto& w) { w.sint(-129); }), bytes({0xd1, 0xff, 0x7f}));    // int 16
  EXPECT_EQ(written([](auto& w) { w.sint(-32769); }), bytes({0xd2, 0xff, 0xff, 0x7f, 0xff}));  // int 32
  EXPECT_EQ(written([](auto& w) { w.sint(INT64_MIN); }),
            bytes({0xd3, 0x80, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00}));        // int 64
}

TEST(Msgpack, NilFloatStringsArrays) {
  EXPECT_EQ(written([](auto& w) { w.nil(); }), bytes({0xc0}));
  EXPECT_EQ(written([](auto& w) { w.boolean(true); }), bytes({0xc3}));
  EXPECT_EQ(written([](auto& w) { w.f64(1.5); }), bytes({0xcb, 0x3f, 0xf8, 0, 0, 0, 0, 0, 0}));  // IEEE 754 binary64
  EXPECT_EQ(written([](auto& w) { w.str("abc"); }), bytes({0xa3, 'a', 'b', 'c'}));  // fixstr
  EXPECT_EQ(written([](auto& w) { w.str(std::string(32, 'x')); }), bytes({0xd9, 0x20}) + std::string(32, 'x'));  // str 8
  EXPECT_EQ(written([](auto& w) { w.str(std::string(256, 'y')); }), bytes({0xda, 0x01, 0x00}) + std::string(256, 'y'));
  EXPECT_EQ(written([](auto& w) { w.array(3); }), bytes({0x93}));                  // fixarray
  EXPECT_EQ(written([](auto& w) { w.array(16); }), bytes({0xdc, 0x00, 0x10}));     // array 16
  EXPECT_EQ(written([](auto& w) { w.array(65536); }), bytes({0xdd, 0x00, 0x01, 0x00, 0x00}));  // array 32
}

TEST(KvEventEncoder, BatchIsVllmsArrayLikeLayout) {
  KvCacheEvent stored;
  stored.kind = KvCacheEvent::Kind::Stored;
  stored.block_hashes = {1, 0xffffffffffffffffull};  // the second goes out as int64 -1
  stored.token_ids = {1, 2};
  stored.block_size = 1;
  KvCacheEvent stored_host = stored;
  stored_host.block_hashes = {2};
  stored_host.parent_hash = 1;
  stored_host.token_ids = {3};
  stored_host.medium = KvCacheMedium::Host;
  KvCacheEvent removed;
  removed.kind = KvCacheEvent::Kind::Removed;
  removed.block_hashes = {5};
  KvCacheEvent cleared;
  cleared.kind = KvCacheEvent::Kind::Cleared;
  std::vector<KvCacheEvent> events = {stored, stored_host, removed, cleared};

  const std::string expected =
      bytes({0x93, 0xcb, 0x3f, 0xf8, 0, 0, 0, 0, 0, 0, 0x94}) +  // [1.5, [4 events], ...
      // ["BlockStored", [1, -1], nil, [1, 2], 1, nil, "GPU"]
      bytes({0x97, 0xab}) + "BlockStored" + bytes({0x92, 0x01, 0xff, 0xc0, 0x92, 0x01, 0x02, 0x01, 0xc0, 0xa3}) + "GPU" +
      // ["BlockStored", [2], 1, [3], 1, nil, "CPU"]
      bytes({0x97, 0xab}) + "BlockStored" + bytes({0x91, 0x02, 0x01, 0x91, 0x03, 0x01, 0xc0, 0xa3}) + "CPU" +
      // ["BlockRemoved", [5], "GPU"]
      bytes({0x93, 0xac}) + "BlockRemoved" + bytes({0x91, 0x05, 0xa3}) + "GPU" +
      // ["AllBlocksCleared"]
      bytes({0x91, 0xb0}) + "AllBlocksCleared" +
      bytes({0x02});  // data_parallel_rank 2]
  EXPECT_EQ(encode_kv_event_batch(1.5, events, 2), expected);
}

}  // namespace
