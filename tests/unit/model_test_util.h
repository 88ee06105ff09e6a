// Helpers of the tests that run fixture models directly (no engine).
#pragma once
#include <cstdint>
#include <vector>

#include "model/kv_cache.h"
#include "model/transformer.h"

namespace gale::test {

// The logits of every position of `ids` as one prompt through `m`: [ids.size(), vocab].
inline std::vector<float> all_logits(Transformer& m, const std::vector<int32_t>& ids) {
  const int64_t bs = 16, n = int64_t(ids.size());
  KVCache kv(m.config(), (n + bs - 1) / bs, bs, m.kv_dtype());
  std::vector<int32_t> table(size_t((n + bs - 1) / bs));
  for (size_t i = 0; i < table.size(); ++i) table[i] = int32_t(i);
  SeqStep s{ids, 0, table, SeqStep::Logits::All};
  std::vector<float> logits;
  m.forward({&s, 1}, kv, logits);
  return logits;
}

}  // namespace gale::test
