// Tensor parallelism inside one process, without MPI: the ranks are threads over a test
// communicator, each with its shard (model/transforms.h shard_tensor_parallel + pack_rows) on a
// CpuTpBackend. What it pins down wherever the build has no MPI: the shard transform's views
// and config, replicated KV heads, biases added once, the vocabulary-parallel LM head, and
// logits within rounding of one rank's with the same argmax everywhere (tests/unit/
// tp_mpi_test.cpp runs the real processes where MPI exists).
#include <gtest/gtest.h>

#include <algorithm>
#include <barrier>
#include <cmath>
#include <cstring>
#include <memory>
#include <thread>

#include "comm/comm.h"
#include "core/thread_pool.h"
#include "loader/safetensors.h"
#include "model/arch/arch.h"
#include "model/cpu_tp_backend.h"
#include "model/transformer.h"
#include "model/transforms.h"
#include "model_test_util.h"
#include "test_util.h"

using namespace gale;

namespace {

// N threads as N ranks: every collective posts its pointer, waits for all, then reads the
// others' in rank order (so every rank computes the same sums, as MPI_Allreduce gives them).
struct ThreadGroup {
  explicit ThreadGroup(int n) : size(n), sync(n), slots(size_t(n)) {}
  int size;
  std::barrier<> sync;
  std::vector<const void*> slots;
};

class ThreadCommunicator final : public Communicator {
 public:
  ThreadCommunicator(ThreadGroup& g, int rank) : g_(g), rank_(rank) {}
  int rank() const override { return rank_; }
  int size() const override { return g_.size; }
  std::string name() const override { return "threads"; }
  void all_reduce_sum(float* data, size_t n) override {
    g_.slots[size_t(rank_)] = data;
    g_.sync.arrive_and_wait();
    std::vector<float> sum(n, 0.0f);
    for (int r = 0; r < g_.size; ++r) {
      const float* p = static_cast<const float*>(g_.slots[size_t(r)]);
      for (size_t i = 0; i < n; ++i) sum[i] += p[i];
    }
    g_.sync.arrive_and_wait();  // everyone has read every rank's data
    std::memcpy(data, sum.data(), n * sizeof(float));
  }
  void all_gather(const void* mine, std::span<const size_t> bytes, void* out) override {
    g_.slots[size_t(rank_)] = mine;
    g_.sync.arrive_and_wait();
    size_t at = 0;
    for (int r = 0; r < g_.size; ++r) {
      std::memcpy(static_cast<uint8_t*>(out) + at, g_.slots[size_t(r)], bytes[size_t(r)]);
      at += bytes[size_t(r)];
    }
    g_.sync.arrive_and_wait();
  }
  void broadcast(void* data, size_t bytes, int root) override {
    if (rank_ == root) g_.slots[size_t(root)] = data;
    g_.sync.arrive_and_wait();
    if (rank_ != root) std::memcpy(data, g_.slots[size_t(root)], bytes);
    g_.sync.arrive_and_wait();
  }
  void barrier() override { g_.sync.arrive_and_wait(); }
  [[noreturn]] void abort(int code) override { std::abort(); }

 private:
  ThreadGroup& g_;
  int rank_;
};

struct Shard {
  ModelConfig cfg;
  size_t bytes = 0;
  std::vector<float> logits;
};

// The fixture's logits at every prompt position on `ranks` ranks (one thread each).
std::vector<Shard> run_sharded(const std::string& name, int ranks) {
  const std::string dir = test::fixtures_dir() + "/models/" + name;
  const ModelConfig cfg = load_model_config(dir);
  auto st = std::make_shared<SafeTensors>(SafeTensors::open_dir(dir));
  const auto ids = test::read_json(dir + "/reference.json")["prompt_ids"].get<std::vector<int32_t>>();
  ThreadGroup group(ranks);
  std::vector<Shard> out(static_cast<size_t>(ranks));
  std::vector<std::string> errors(static_cast<size_t>(ranks));
  std::vector<std::thread> threads;
  for (int r = 0; r < ranks; ++r)
    threads.emplace_back([&, r] {
      try {
        ThreadCommunicator comm(group, r);
        ModelConfig c = cfg;
        ModelWeights w = bind_weights(st, c);
        const WeightTransform ts[] = {shard_tensor_parallel(r, ranks), pack_rows()};
        apply_transforms(ts, c, w);
        out[size_t(r)].cfg = c;
        out[size_t(r)].bytes = w.total_bytes;
        Transformer m(c, std::move(w), ActDType::F32, std::make_unique<CpuTpBackend>(false, comm));
        out[size_t(r)].logits = test::all_logits(m, ids);
      } catch (const std::exception& e) {
        errors[size_t(r)] = e.what();  // a failing rank would leave the others in a collective
      }
    });
  for (auto& t : threads) t.join();
  for (const std::string& e : errors) EXPECT_EQ(e, "");
  return out;
}

std::vector<float> one_rank(const std::string& name) {
  const std::string dir = test::fixtures_dir() + "/models/" + name;
  const ModelConfig cfg = load_model_config(dir);
  auto st = std::make_shared<SafeTensors>(SafeTensors::open_dir(dir));
  Transformer m(cfg, bind_weights(st, cfg));
  return test::all_logits(m, test::read_json(dir + "/reference.json")["prompt_ids"].get<std::vector<int32_t>>());
}

struct Case {
  std::string name;
  int ranks;
};

class TensorParallel : public ::testing::TestWithParam<Case> {
 protected:
  // The kernels' thread pool is one per process and not re-entrant: one thread per rank, each
  // running its kernels inline.
  void SetUp() override {
    threads_ = num_threads();
    set_num_threads(1);
  }
  void TearDown() override { set_num_threads(threads_); }
  int threads_ = 0;
};

TEST_P(TensorParallel, ShardedLogitsMatchOneRank) {
  const Case c = GetParam();
  const std::vector<float> want = one_rank(c.name);
  const std::vector<Shard> got = run_sharded(c.name, c.ranks);
  const ModelConfig full = load_model_config(test::fixtures_dir() + "/models/" + c.name);
  const int64_t V = full.vocab_size;
  for (int r = 0; r < c.ranks; ++r) {
    const Shard& s = got[size_t(r)];
    SCOPED_TRACE("rank " + std::to_string(r));
    EXPECT_EQ(s.cfg.num_heads * c.ranks, full.num_heads);
    EXPECT_EQ(s.cfg.num_kv_heads, std::max<int64_t>(1, full.num_kv_heads / c.ranks));
    EXPECT_EQ(s.cfg.intermediate_size * c.ranks, full.intermediate_size);
    EXPECT_EQ(s.cfg.vocab_size, V);  // the whole vocabulary: the logits are gathered
    ASSERT_EQ(s.logits.size(), want.size());
    // Every rank holds the same gathered logits, bit for bit.
    EXPECT_EQ(std::memcmp(s.logits.data(), got[0].logits.data(), want.size() * sizeof(float)), 0);
  }
  // Partial sums over each rank's heads and columns, then summed: only rounding differs.
  double worst = 0, scale = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    worst = std::max(worst, double(std::fabs(want[i] - got[0].logits[i])));
    scale = std::max(scale, double(std::fabs(want[i])));
  }
  EXPECT_LT(worst, 1e-4 * std::max(1.0, scale)) << "worst |logit difference| " << worst;
  for (size_t row = 0; row < want.size() / size_t(V); ++row) {
    const float* a = want.data() + row * size_t(V);
    const float* b = got[0].logits.data() + row * size_t(V);
    EXPECT_EQ(std::max_element(a, a + V) - a, std::max_element(b, b + V) - b) << "row " << row;
  }
}

INSTANTIATE_TEST_SUITE_P(Fixtures, TensorParallel,
                         ::testing::Values(Case{"llama-f32", 2}, Case{"llama-f32", 4},  // KV heads split, replicated
                                           Case{"qwen2-f32", 2},   // one KV head on both ranks; q/k/v biases
                                           Case{"qwen3-f32", 2},   // q/k norm
                                           Case{"mistral-f32", 2}, Case{"phi3-f32", 2}, Case{"llama-bf16", 2}),
                         [](const auto& info) {
                           std::string s = info.param.name + "_tp" + std::to_string(info.param.ranks);
                           for (char& ch : s)
                             if (!isalnum(static_cast<unsigned char>(ch))) ch = '_';
                           return s;
                         });

TEST(TensorParallelTransform, RefusesWhatItCannotSplit) {
  const std::string dir = test::fixtures_dir() + "/models/";
  auto refuse = [&](const std::string& name, int ranks, const std::string& what) {
    ModelConfig c = load_model_config(dir + name);
    auto st = std::make_shared<SafeTensors>(SafeTensors::open_dir(dir + name));
    ModelWeights w = bind_weights(st, c);
    const WeightTransform ts[] = {shard_tensor_parallel(0, ranks)};
    try {
      apply_transforms(ts, c, w);
      ADD_FAILURE() << name << " split over " << ranks;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(what), std::string::npos) << e.what();
    }
  };
  refuse("mixtral-f32", 2, "MoE models");
  refuse("llama-f32", 3, "4 attention heads do not split over --tp 3");
}

// The row-parallel products' biases are added once: rank 0 keeps them, the others drop them.
TEST(TensorParallelTransform, RowParallelBiasStaysWithRankZero) {
  const std::string dir = test::fixtures_dir() + "/models/llama-f32";
  for (int rank = 0; rank < 2; ++rank) {
    ModelConfig c = load_model_config(dir);
    auto st = std::make_shared<SafeTensors>(SafeTensors::open_dir(dir));
    ModelWeights w = bind_weights(st, c);
    w.layers[0].o.bias.assign(size_t(w.layers[0].o.out), 1.0f);
    w.layers[0].down.bias.assign(size_t(w.layers[0].down.out), 2.0f);
    w.layers[0].q.bias.assign(size_t(w.layers[0].q.out), 3.0f);
    const WeightTransform ts[] = {shard_tensor_parallel(rank, 2)};
    apply_transforms(ts, c, w);
    EXPECT_EQ(w.layers[0].o.bias.empty(), rank != 0);
    EXPECT_EQ(w.layers[0].down.bias.empty(), rank != 0);
    EXPECT_EQ(w.layers[0].q.bias.size(), size_t(w.layers[0].q.out));  // column-parallel: its own slice
    EXPECT_FALSE(w.layers[0].o.packed_rows());  // a column view until pack_rows
    EXPECT_EQ(w.lm_head.out, shard_range(c.vocab_size, rank, 2).count);
  }
}

}  // namespace
