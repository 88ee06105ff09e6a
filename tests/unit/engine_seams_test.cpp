// The engine's seams for speculative decoding: rolling a request back by n tokens (then going on
// gives, bit for bit, the run that never had them) and a draft model held beside the target
// (its own KV cache over the same blocks; its logits are those of the draft run alone).
#include <gtest/gtest.h>

#include <map>
#include <numeric>

#include "core/error.h"
#include "engine/engine.h"
#include "host_sampling_backend.h"
#include "loader/model_config.h"
#include "loader/safetensors.h"
#include "model/arch/arch.h"
#include "model/model_loader.h"
#include "test_util.h"
#include "tokenizer/tokenizer.h"

using namespace gale;

namespace {

std::string bundled(const std::string& name) { return std::string(GALE_SOURCE_DIR) + "/models/" + name; }

std::vector<RequestParams> requests(const Transformer& m, bool sampled) {
  std::vector<RequestParams> out;
  Rng rng(5);
  for (size_t i = 0; i < 3; ++i) {
    RequestParams p;
    for (size_t k = 0; k < 5 + 9 * i; ++k) p.prompt.push_back(int32_t(rng.next() % uint64_t(m.config().vocab_size)));
    p.max_tokens = 24;
    p.ignore_eos = true;
    if (sampled) {
      p.sampling.temperature = 0.8f;
      p.sampling.top_p = 0.95f;
      p.sampling.presence_penalty = 0.5f;
      p.sampling.seed = 7 + i;
    }
    out.push_back(p);
  }
  return out;
}

// Runs the requests together; at step `at` (after its outputs) request `who` is rolled back by
// n tokens (n = 0: never). Returns each request's ids as the caller keeps them (the rolled-back
// ones dropped).
std::vector<std::vector<int32_t>> run(Transformer& m, const std::vector<RequestParams>& reqs, EngineConfig ec,
                                      int at, size_t who, int64_t n) {
  Engine e(m, nullptr, ec);
  std::vector<uint64_t> ids;
  for (const RequestParams& p : reqs) ids.push_back(e.add_request(p));
  std::map<uint64_t, size_t> index;
  for (size_t i = 0; i < ids.size(); ++i) index[ids[i]] = i;
  std::vector<std::vector<int32_t>> got(reqs.size());
  for (int step = 0; e.has_unfinished(); ++step) {
    for (RequestOutput& o : e.step()) {
      auto& v = got[index.at(o.id)];
      v.insert(v.end(), o.new_ids.begin(), o.new_ids.end());
      EXPECT_EQ(o.completion_tokens, int64_t(v.size()));
    }
    if (step == at && n > 0) {
      EXPECT_GE(int64_t(got[who].size()), n) << "roll back no more than was returned";
      e.rollback(ids[who], n);
      got[who].resize(got[who].size() - size_t(n));
    }
    EXPECT_LT(step, 10000);
  }
  e.clear_prefix_cache();
  EXPECT_EQ(e.stats().kv_blocks_free, e.stats().kv_blocks_total) << "blocks leaked";
  return got;
}

// On the CPU backend sampled steps run synchronously; on the host stand-in for a GPU's
// sample_rows they are launched ahead too, so a rollback meets a step in flight that drew a
// uniform for the request (dropped with its token, the generator rewound).
TEST(EngineRollback, GoingOnAfterARollbackGivesTheUninterruptedRun) {
  const std::string path = test::fixtures_dir() + "/models/llama-f32";
  LoadedModel lm = load_model(path, ActDType::F32);
  ModelConfig cfg = load_model_config(path);
  auto st = std::make_shared<SafeTensors>(SafeTensors::open_dir(path));
  Transformer dev(cfg, bind_weights(st, cfg), ActDType::F32, std::make_unique<test::HostSamplingBackend>());
  for (auto [sampled, model] : {std::pair{false, lm.model.get()}, std::pair{true, lm.model.get()}, std::pair{true, &dev}}) {
    Transformer& m = *model;
    const std::vector<RequestParams> reqs = requests(m, sampled);
    for (bool overlap : {false, true}) {
      for (bool prefix : {false, true}) {
        EngineConfig ec;
        ec.block_size = 4;  // rollbacks cross block boundaries
        ec.max_num_batched_tokens = 16;
        ec.kv_cache_bytes = 8 << 20;
        ec.overlap = overlap;
        ec.prefix_cache = prefix;
        const auto want = run(m, reqs, ec, -1, 0, 0);
        for (auto [at, who, n] : {std::tuple{6, 0, 3}, std::tuple{10, 1, 7}, std::tuple{12, 2, 1}, std::tuple{14, 0, 11},
                                  std::tuple{9, 2, 5}}) {
          SCOPED_TRACE(std::string(sampled ? "seeded" : "greedy") + (model == &dev ? " sample_rows" : "") +
                       (overlap ? " overlap" : "") +
                       (prefix ? " prefix" : "") + " step " + std::to_string(at) + " request " +
                       std::to_string(who) + " n " + std::to_string(n));
          EXPECT_EQ(run(m, reqs, ec, at, size_t(who), n), want);
        }
      }
    }
  }
}

TEST(EngineRollback, RefusesWhatItCannotDo) {
  LoadedModel lm = load_model(test::fixtures_dir() + "/models/llama-f32", ActDType::F32);
  EngineConfig ec;
  ec.kv_cache_bytes = 8 << 20;
  Engine e(*lm.model, nullptr, ec);
  RequestParams p;
  p.prompt = {5};
  p.max_tokens = 10;
  p.ignore_eos = true;
  const uint64_t id = e.add_request(p);
  e.step();
  e.step();
  EXPECT_THROW(e.rollback(id + 100, 1), Error);
  EXPECT_THROW(e.rollback(id, -1), Error);
  EXPECT_THROW(e.rollback(id, 3), Error);  // two returned
  EXPECT_THROW(e.rollback(id, 2), Error);  // all of a one-token prompt's
  e.rollback(id, 1);
  EXPECT_THROW(e.rollback(id, 1), Error);  // one left
  e.rollback(id, 0);
  while (e.has_unfinished()) e.step();
  EXPECT_THROW(e.rollback(id, 0), Error);  // finished

  auto tok = Tokenizer::load(bundled("draft"));
  LoadedModel d = load_model(bundled("draft"), ActDType::F32);
  Engine with_text(*d.model, tok.get(), ec);
  p.prompt = tok->encode("def f(x):");
  const uint64_t t = with_text.add_request(p);
  with_text.step();
  EXPECT_THROW(with_text.rollback(t, 1), Error);  // its text was returned
}

// A draft beside the target: both caches exist with the same blocks; the draft's logits, taken
// where the target sampled, equal the draft's own forward over the same tokens in the same
// chunks; the target's outputs are those of an engine without a draft.
TEST(EngineDraft, HoldsADraftBesideTheTarget) {
  LoadedModel target = load_model(bundled("default"), ActDType::F32);
  LoadedModel draft = load_model(bundled("draft"), ActDType::F32);
  auto tok = Tokenizer::load(bundled("default"));
  EngineConfig ec;
  ec.kv_cache_bytes = 16 << 20;
  ec.overlap = false;
  RequestParams p;
  p.prompt = tok->encode("import os\n\ndef main():\n");
  p.max_tokens = 12;
  p.ignore_eos = true;

  Engine plain(*target.model, nullptr, ec);
  EXPECT_EQ(plain.draft(), nullptr);
  EXPECT_EQ(plain.draft_kv_cache(), nullptr);
  const uint64_t pid = plain.add_request(p);
  std::vector<int32_t> want;
  while (plain.has_unfinished())
    for (RequestOutput& o : plain.step()) {
      want.insert(want.end(), o.new_ids.begin(), o.new_ids.end());
      EXPECT_TRUE(plain.draft_logits(pid).empty());
    }

  Engine e(*target.model, nullptr, ec, draft.model.get());
  ASSERT_EQ(e.draft(), draft.model.get());
  ASSERT_NE(e.draft_kv_cache(), nullptr);
  const KVCache& tkv = e.kv_cache();
  const KVCache& dkv = *e.draft_kv_cache();
  EXPECT_EQ(tkv.num_blocks(), dkv.num_blocks());
  EXPECT_EQ(tkv.block_size(), dkv.block_size());
  const size_t tb = KVCache::bytes_per_token(target.model->config(), target.model->kv_dtype());
  const size_t db = KVCache::bytes_per_token(draft.model->config(), draft.model->kv_dtype());
  EXPECT_EQ(tkv.bytes(), size_t(tkv.num_blocks() * tkv.block_size()) * tb);
  EXPECT_EQ(dkv.bytes(), size_t(dkv.num_blocks() * dkv.block_size()) * db);
  // The budget pays for a block of each.
  EXPECT_EQ(tkv.num_blocks(), (16 << 20) / int64_t((tb + db) * size_t(ec.block_size)));

  // The draft alone: its own cache, the prompt in one chunk, then one token at a time.
  KVCache alone(draft.model->config(), 64, ec.block_size, draft.model->kv_format(), &draft.model->backend());
  std::vector<int32_t> table(64);
  std::iota(table.begin(), table.end(), 0);
  std::vector<int32_t> seq = p.prompt;
  std::vector<float> ref;
  const uint64_t id = e.add_request(p);
  std::vector<int32_t> got;
  int checked = 0;
  while (e.has_unfinished()) {
    for (RequestOutput& o : e.step()) {
      ASSERT_EQ(o.new_ids.size(), 1u);
      const int64_t start = got.empty() ? 0 : int64_t(seq.size()) - 1;
      SeqStep s{std::span<const int32_t>(seq).subspan(size_t(start)), start, table, SeqStep::Logits::Last};
      draft.model->forward(std::span<const SeqStep>(&s, 1), alone, ref);
      if (!o.finished) {
        std::span<const float> dl = e.draft_logits(id);
        ASSERT_EQ(dl.size(), ref.size());
        EXPECT_TRUE(std::equal(dl.begin(), dl.end(), ref.begin())) << "token " << got.size();
        ++checked;
      }
      got.push_back(o.new_ids[0]);
      seq.push_back(o.new_ids[0]);
    }
  }
  EXPECT_EQ(checked, int(p.max_tokens) - 1);
  EXPECT_EQ(got, want);
  e.clear_prefix_cache();
  EXPECT_EQ(e.stats().kv_blocks_free, e.stats().kv_blocks_total);

  EngineConfig other = ec;
  EXPECT_THROW(Engine(*target.model, nullptr, other, target.model.get()), Error);  // itself
  LoadedModel fixture = load_model(test::fixtures_dir() + "/models/llama-f32", ActDType::F32);
  EXPECT_THROW(Engine(*target.model, nullptr, other, fixture.model.get()), Error);  // another vocabulary
}

}  // namespace
