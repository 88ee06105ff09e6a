#include "comm/comm.h"

#include <cstdlib>
#include <cstring>

#include "core/error.h"

namespace gale {

void Communicator::broadcast_bytes(std::vector<uint8_t>& data, int root) {
  uint64_t n = data.size();
  broadcast(&n, sizeof(n), root);
  data.resize(size_t(n));
  if (n > 0) broadcast(data.data(), size_t(n), root);
}

void Communicator::send(const void*, size_t, int) { throw Error(name() + " communicator: no point-to-point send"); }
void Communicator::recv(void*, size_t, int) { throw Error(name() + " communicator: no point-to-point recv"); }

ShardRange shard_range(int64_t n, int rank, int size) {
  GALE_ASSERT(size > 0 && rank >= 0 && rank < size && n >= 0);
  const int64_t base = n / size, extra = n % size;
  return {rank * base + std::min<int64_t>(rank, extra), base + (rank < extra ? 1 : 0)};
}

namespace {

class SingleCommunicator final : public Communicator {
 public:
  int rank() const override { return 0; }
  int size() const override { return 1; }
  std::string name() const override { return "single"; }
  void all_reduce_sum(float*, size_t) override {}
  void all_gather(const void* mine, std::span<const size_t> bytes, void* out) override {
    GALE_ASSERT(bytes.size() == 1);
    if (out != mine && bytes[0] > 0) std::memmove(out, mine, bytes[0]);
  }
  void broadcast(void*, size_t, int root) override { GALE_ASSERT(root == 0); }
  void barrier() override {}
  [[noreturn]] void abort(int code) override { std::exit(code); }
};

}  // namespace

std::unique_ptr<Communicator> make_single_communicator() { return std::make_unique<SingleCommunicator>(); }

}  // namespace gale
