// One failing request never touches the others. A request whose own work throws (here: its
// detokenization, through a tokenizer that refuses one id) finishes alone with finish_reason
// "error"; a forward pass that throws (a backend that fails one step) fails only the sequences
// scheduled in that step. Everything else finishes exactly as in a run without the failure,
// with overlap on and off, and no KV block leaks. The reference for "exactly" is a run of the
// same engine without the failing request: the property under test is isolation.
#include <gtest/gtest.h>

#include <map>
#include <memory>
#include <set>

#include "core/error.h"
#include "engine/engine.h"
#include "loader/model_config.h"
#include "model/arch/arch.h"
#include "loader/safetensors.h"
#include "model/cpu_backend.h"
#include "model/model_loader.h"
#include "host_sampling_backend.h"
#include "tokenizer/tokenizer.h"

using namespace gale;

namespace {

std::string bundled(const std::string& name) { return std::string(GALE_SOURCE_DIR) + "/models/" + name; }

// A real tokenizer that cannot decode one id (as a tokenizer shorter than the model's
// vocabulary cannot): any decode that includes it throws.
class PoisonedTokenizer : public Tokenizer {
 public:
  PoisonedTokenizer(const Tokenizer& inner, int32_t poison) : inner_(inner), poison_(poison) {}
  std::vector<int32_t> encode(std::string_view text, bool add_special_tokens) const override {
    return inner_.encode(text, add_special_tokens);
  }
  std::string decode(std::span<const int32_t> ids, bool skip_special_tokens) const override {
    for (int32_t id : ids)
      if (id == poison_) throw Error("cannot decode poisoned id " + std::to_string(id));
    return inner_.decode(ids, skip_special_tokens);
  }
  size_t vocab_size() const override { return inner_.vocab_size(); }
  std::optional<int32_t> token_to_id(std::string_view t) const override { return inner_.token_to_id(t); }
  bool is_special(int32_t id) const override { return inner_.is_special(id); }
  bool stream_holds(int32_t id) const override { return inner_.stream_holds(id); }

 private:
  const Tokenizer& inner_;
  int32_t poison_;
};

// The CPU backend, failing the forward pass of chosen steps (as a device error would).
class FailingBackend : public CpuBackend {
 public:
  FailingBackend() : CpuBackend(false) {}
  void begin_step(const StepPlan& plan) override {
    if (begin_calls++ == fail_begin_at) throw Error("injected forward failure");
    CpuBackend::begin_step(plan);
  }
  void wait_ids(int32_t* out) override {
    if (wait_calls++ == fail_wait_at) throw Error("injected wait failure");
    CpuBackend::wait_ids(out);
  }
  int fail_begin_at = -1, fail_wait_at = -1;  // 0-based call index; -1: never
  int begin_calls = 0, wait_calls = 0;
};

std::unique_ptr<Transformer> load_with(const std::string& path, std::unique_ptr<Backend> be) {
  ModelConfig cfg = load_model_config(path);
  auto st = std::make_shared<SafeTensors>(SafeTensors::open_dir(path));
  return std::make_unique<Transformer>(cfg, bind_weights(st, cfg), ActDType::F32, std::move(be));
}

// What a caller sees of one request over the whole run (engine ids left out: they depend on
// how many requests were added before it).
struct Seen {
  std::vector<int32_t> ids;
  std::string text;
  std::string finish_reason, error;
  int64_t completion_tokens = 0;
  int outputs_after_finish = 0;
};

// Runs the requests in one engine; results by index. Checks that every block comes back.
std::vector<Seen> run(Transformer& m, const Tokenizer* tok, const std::vector<RequestParams>& reqs, bool overlap,
                      int64_t max_num_seqs = 16, EngineStats* stats = nullptr) {
  EngineConfig ec;
  ec.overlap = overlap;
  ec.kv_cache_bytes = 16 << 20;
  ec.max_num_seqs = max_num_seqs;
  Engine e(m, tok, ec);
  std::map<uint64_t, size_t> index;
  for (size_t i = 0; i < reqs.size(); ++i) index[e.add_request(reqs[i])] = i;
  std::vector<Seen> seen(reqs.size());
  for (int calls = 0; e.has_unfinished(); ++calls) {
    for (const RequestOutput& o : e.step()) {
      Seen& s = seen[index.at(o.id)];
      if (!s.finish_reason.empty()) ++s.outputs_after_finish;
      s.ids.insert(s.ids.end(), o.new_ids.begin(), o.new_ids.end());
      s.text += o.new_text;
      s.completion_tokens = o.completion_tokens;
      if (o.finished) {
        s.finish_reason = o.finish_reason;
        s.error = o.error;
      } else {
        EXPECT_TRUE(o.error.empty());
      }
    }
    if (calls > 10000) {
      ADD_FAILURE() << "no end";
      break;
    }
  }
  EngineStats st = e.stats();
  if (stats) *stats = st;
  EXPECT_EQ(st.running + st.waiting, 0);
  e.clear_prefix_cache();
  EXPECT_EQ(e.stats().kv_blocks_free, e.stats().kv_blocks_total) << "blocks leaked";
  return seen;
}

std::vector<RequestParams> workload(const Tokenizer& tok) {
  const char* texts[] = {"def fibonacci(n):", "import os\nimport sys\n\n", "class Stack:\n    def __init__(self):\n",
                         "x = 1", "for i in range(10):\n", "# Sort a list of numbers\n"};
  std::vector<RequestParams> out;
  for (size_t i = 0; i < std::size(texts); ++i) {
    RequestParams p;
    p.prompt = tok.encode(texts[i]);
    p.max_tokens = 14 + int64_t(i % 3) * 4;
    p.ignore_eos = true;
    if (i == 2) {  // seeded sampling: its own generator, unaffected by the others
      p.sampling.temperature = 0.9f;
      p.sampling.top_k = 30;
      p.sampling.seed = 5;
    }
    if (i == 4) p.stop = {"never-there"};  // text handled before the next launch
    out.push_back(p);
  }
  return out;
}

// Sampling on the host (the CPU backend: steps with a sampled request run synchronously) and
// in sample_rows (as on a GPU: every step is launched ahead, so the failing request is already
// in the next step when its deferred text fails).
class EngineFailureRequest : public ::testing::TestWithParam<bool> {};

TEST_P(EngineFailureRequest, OneRequestsOwnFailureLeavesTheOthersUnchanged) {
  const std::string path = bundled("draft");
  auto tok = Tokenizer::load(path);
  std::unique_ptr<Transformer> m =
      GetParam() ? load_with(path, std::make_unique<test::HostSamplingBackend>()) : load_with(path, std::make_unique<CpuBackend>(false));
  const std::vector<RequestParams> others = workload(*tok);
  const std::vector<Seen> reference = run(*m, tok.get(), others, false);
  std::set<int32_t> others_ids;
  for (const Seen& s : reference) {
    EXPECT_EQ(s.finish_reason, "length");
    others_ids.insert(s.ids.begin(), s.ids.end());
  }

  // The failing request: its greedy continuation, and the first of its ids no other request
  // produces, which the tokenizer will refuse.
  RequestParams bad;
  bad.prompt = tok->encode("while True:\n    pass\n");
  bad.max_tokens = 24;
  bad.ignore_eos = true;
  bad.sampling.temperature = 1.5f;  // hot sampling reaches ids the greedy others never produce
  bad.sampling.seed = 42;
  const std::vector<int32_t> bad_ids = run(*m, nullptr, {bad}, false)[0].ids;
  size_t at = 0;
  while (at < bad_ids.size() && others_ids.count(bad_ids[at])) ++at;
  ASSERT_LT(at, bad_ids.size()) << "every id of the failing request also occurs in the others";
  PoisonedTokenizer poisoned(*tok, bad_ids[at]);

  for (bool overlap : {false, true})
    for (bool stop_strings : {false, true}) {  // its text handled after / before the next launch
      SCOPED_TRACE(std::string(overlap ? "overlap" : "no overlap") + (stop_strings ? ", stop strings" : ""));
      std::vector<RequestParams> reqs = others;
      RequestParams b = bad;
      if (stop_strings) b.stop = {"never-there"};
      reqs.insert(reqs.begin() + 3, b);  // in the middle of the batch
      EngineStats st;
      std::vector<Seen> got = run(*m, &poisoned, reqs, overlap, 16, &st);
      if (overlap && GetParam()) {
        EXPECT_GT(st.steps_launched_ahead, 3);
      }
      const Seen& f = got[3];
      EXPECT_EQ(f.finish_reason, "error");
      EXPECT_NE(f.error.find("poisoned id"), std::string::npos) << f.error;
      EXPECT_EQ(f.outputs_after_finish, 0);
      // It got as far as the poisoned id, and its text before it is the real text.
      ASSERT_LE(f.ids.size(), at + 1);
      EXPECT_EQ(f.ids, std::vector<int32_t>(bad_ids.begin(), bad_ids.begin() + ptrdiff_t(f.ids.size())));
      EXPECT_EQ(f.text, tok->decode(std::span<const int32_t>(bad_ids.data(), at)).substr(0, f.text.size()));
      got.erase(got.begin() + 3);
      ASSERT_EQ(got.size(), reference.size());
      for (size_t i = 0; i < got.size(); ++i) {
        SCOPED_TRACE("request " + std::to_string(i));
        EXPECT_EQ(got[i].ids, reference[i].ids);
        EXPECT_EQ(got[i].text, reference[i].text);
        EXPECT_EQ(got[i].finish_reason, reference[i].finish_reason);
        EXPECT_EQ(got[i].completion_tokens, reference[i].completion_tokens);
        EXPECT_TRUE(got[i].error.empty());
        EXPECT_EQ(got[i].outputs_after_finish, 0);
      }
    }
}

INSTANTIATE_TEST_SUITE_P(Sampling, EngineFailureRequest, ::testing::Values(false, true),
                         [](const auto& info) { return info.param ? "sample_rows" : "host"; });

// A forward pass that throws fails the sequences of that step only; the waiting ones run on
// and finish as they would have; the engine keeps stepping.
TEST(EngineFailure, FailedForwardFailsOnlyTheSequencesOfItsStep) {
  const std::string path = bundled("draft");
  auto tok = Tokenizer::load(path);
  auto owned = std::make_unique<FailingBackend>();
  FailingBackend* be = owned.get();
  std::unique_ptr<Transformer> m = load_with(path, std::move(owned));
  std::vector<RequestParams> reqs = workload(*tok);
  reqs.resize(4);
  for (RequestParams& p : reqs) p.max_tokens = 8;
  // Alone, each request's tokens (the reference for the ones that must not be touched).
  std::vector<std::vector<int32_t>> alone;
  for (const RequestParams& p : reqs) alone.push_back(run(*m, tok.get(), {p}, false)[0].ids);

  // Two sequences at a time: requests 0 and 1 run first (prefill = step 0, decodes after),
  // 2 and 3 wait until they finish.
  for (bool overlap : {false, true})
    for (bool in_wait : {false, true}) {
      SCOPED_TRACE(std::string(overlap ? "overlap" : "no overlap") + (in_wait ? ", wait fails" : ", launch fails"));
      be->begin_calls = be->wait_calls = 0;
      // The third step (0 and 1 decoding their third token) fails.
      be->fail_begin_at = in_wait ? -1 : 2;
      be->fail_wait_at = in_wait ? 2 : -1;
      std::vector<Seen> got = run(*m, tok.get(), reqs, overlap, /*max_num_seqs=*/2);
      for (size_t i : {0, 1}) {
        SCOPED_TRACE("request " + std::to_string(i));
        EXPECT_EQ(got[i].finish_reason, "error");
        EXPECT_NE(got[i].error.find("injected"), std::string::npos) << got[i].error;
        EXPECT_EQ(got[i].ids, std::vector<int32_t>(alone[i].begin(), alone[i].begin() + 2));
        EXPECT_EQ(got[i].outputs_after_finish, 0);
      }
      for (size_t i : {2, 3}) {
        SCOPED_TRACE("request " + std::to_string(i));
        EXPECT_EQ(got[i].finish_reason, "length");
        EXPECT_TRUE(got[i].error.empty());
        EXPECT_EQ(got[i].ids, alone[i]);
        EXPECT_EQ(got[i].text, tok->decode(alone[i]));
      }
    }
  be->fail_begin_at = be->fail_wait_at = -1;
}

}  // namespace
