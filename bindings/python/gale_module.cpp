// The Python module `gale` over the in-process facade (api/llm.h), in vLLM's names where they
// fit so that code can switch:
//
//   import gale
//   llm = gale.LLM(model="models/default", max_num_seqs=8)
//   outs = llm.generate(["def f(x):", "import"], gale.SamplingParams(max_tokens=32, temperature=0))
//   outs[0].outputs[0].text
//
// The GIL is released while the engine runs (loading, generate, each streamed step). Errors:
// ValueError for the caller's bad arguments (gale::InvalidArgument), RuntimeError otherwise.
#include <pybind11/functional.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "api/llm.h"

namespace py = pybind11;
using nlohmann::ordered_json;

namespace {

// vLLM's StructuredOutputsParams (GuidedDecodingParams before vLLM 0.10): at most one of json
// (a schema: a dict or its JSON text), json_object, regex, choice (a list of strings), grammar
// (GBNF).
struct StructuredOutputsParams {
  std::optional<std::string> json, regex, grammar;  // json: the schema's JSON text
  std::optional<std::vector<std::string>> choice;
  bool json_object = false;

  gale::ConstraintSpec spec() const {
    using K = gale::ConstraintSpec::Kind;
    gale::ConstraintSpec c;
    int given = 0;
    if (json) c = {K::JsonSchema, *json}, ++given;
    if (json_object) c = {K::JsonObject, ""}, ++given;
    if (regex) c = {K::Regex, *regex}, ++given;
    if (choice) c = {K::Choice, nlohmann::json(*choice).dump()}, ++given;
    if (grammar) c = {K::Grammar, *grammar}, ++given;
    if (given > 1)
      throw gale::InvalidArgument("StructuredOutputsParams: give one of json, json_object, regex, choice, grammar");
    if (choice && choice->empty()) throw gale::InvalidArgument("StructuredOutputsParams: choice is empty");
    return c;
  }
};

// vLLM's SamplingParams defaults (temperature 1, max_tokens 16), every field explicit.
struct SamplingParams {
  int n = 1;
  int64_t max_tokens = 16;
  float temperature = 1.0f, top_p = 1.0f, min_p = 0.0f;
  int top_k = 0;
  float presence_penalty = 0, frequency_penalty = 0, repetition_penalty = 1.0f;
  std::optional<uint64_t> seed;
  std::vector<std::string> stop;
  bool ignore_eos = false;
  std::optional<int> logprobs;
  std::optional<StructuredOutputsParams> structured_outputs;

  gale::GenerationParams to_params() const {
    if (n < 1 || n > 128) throw gale::InvalidArgument("SamplingParams: n must be between 1 and 128 (got " + std::to_string(n) + ")");
    gale::GenerationParams g;
    g.logprobs = logprobs.value_or(-1);
    if (logprobs && *logprobs < 0) throw gale::InvalidArgument("SamplingParams: logprobs must be >= 0 or None");
    if (structured_outputs) g.constraint = structured_outputs->spec();
    g.max_tokens = max_tokens;
    g.temperature = temperature;
    g.top_p = top_p;
    g.top_k = top_k;
    g.min_p = min_p;
    g.presence_penalty = presence_penalty;
    g.frequency_penalty = frequency_penalty;
    g.repetition_penalty = repetition_penalty;
    g.seed = seed;
    g.stop = stop;
    g.ignore_eos = ignore_eos;
    return g;
  }
};

// vLLM's Logprob: one token's log-probability, its rank in the distribution (1 = the most
// likely; None where it is not among the top ones asked for) and its text.
struct Logprob {
  float logprob = 0;
  std::optional<int> rank;
  std::optional<std::string> decoded_token;
};

struct CompletionOutput {
  int index = 0;
  std::string text;
  std::vector<int32_t> token_ids;
  // With SamplingParams.logprobs = k: per token, {id: Logprob} for the chosen token and the k
  // most likely (vLLM's layout); cumulative_logprob sums the chosen ones.
  std::optional<std::vector<std::map<int32_t, Logprob>>> logprobs;
  std::optional<double> cumulative_logprob;
  std::optional<std::string> finish_reason;
};

struct RequestOutput {
  std::string request_id;
  std::optional<std::string> prompt;
  std::vector<int32_t> prompt_token_ids;
  std::vector<CompletionOutput> outputs;
  bool finished = true;
  int64_t num_cached_tokens = 0;
};

// One piece of a stream: the text and ids produced since the previous one.
struct StreamOutput {
  std::string request_id;
  std::string text;
  std::vector<int32_t> token_ids;
  bool finished = false;
  std::optional<std::string> finish_reason;
};

std::string py_str(py::handle h) { return py::str(h).cast<std::string>(); }

// Python values (dict, list, str, numbers, bool, None) as JSON, for messages and tools.
ordered_json to_json(py::handle h, int depth = 0) {
  if (depth > 64) throw gale::InvalidArgument("messages nest too deeply");
  if (h.is_none()) return nullptr;
  if (py::isinstance<py::bool_>(h)) return h.cast<bool>();
  if (py::isinstance<py::int_>(h)) return h.cast<int64_t>();
  if (py::isinstance<py::float_>(h)) return h.cast<double>();
  if (py::isinstance<py::str>(h)) return h.cast<std::string>();
  if (py::isinstance<py::dict>(h)) {
    ordered_json o = ordered_json::object();
    for (auto [k, v] : h.cast<py::dict>()) o[py_str(k)] = to_json(v, depth + 1);
    return o;
  }
  if (py::isinstance<py::list>(h) || py::isinstance<py::tuple>(h)) {
    ordered_json a = ordered_json::array();
    for (py::handle v : h) a.push_back(to_json(v, depth + 1));
    return a;
  }
  throw gale::InvalidArgument("cannot pass a " + py_str(py::type::of(h).attr("__name__")) + " to the chat template");
}

std::string arg_text(py::handle v) {
  if (py::isinstance<py::bool_>(v)) return v.cast<bool>() ? "true" : "false";
  if (py::isinstance<py::list>(v) || py::isinstance<py::tuple>(v)) {
    std::string s;
    for (py::handle x : v) s += (s.empty() ? "" : ",") + py_str(x);
    return s;
  }
  return py_str(v);
}

class PyLLM;

class StreamIterator {
 public:
  StreamIterator(std::shared_ptr<gale::LLM> llm, uint64_t id) : llm_(std::move(llm)), id_(id) {}
  StreamIterator(const StreamIterator&) = delete;
  StreamIterator& operator=(const StreamIterator&) = delete;
  ~StreamIterator() {  // an abandoned stream stops its request
    if (done_) return;
    try {
      llm_->cancel(id_);
    } catch (...) {
    }
  }
  StreamOutput next() {
    if (done_) throw py::stop_iteration();
    gale::Delta d;
    {
      py::gil_scoped_release nogil;
      d = llm_->next(id_);
    }
    if (d.finished) done_ = true;
    if (d.finished && d.finish_reason == "error") throw gale::Error(d.error.empty() ? "the request failed" : d.error);
    StreamOutput s;
    s.request_id = std::to_string(id_);
    s.text = std::move(d.text);
    s.token_ids = std::move(d.ids);
    s.finished = d.finished;
    if (d.finished) s.finish_reason = d.finish_reason;
    return s;
  }
  void close() {
    if (!done_) llm_->cancel(id_);
    done_ = true;
  }

 private:
  std::shared_ptr<gale::LLM> llm_;
  uint64_t id_;
  bool done_ = false;
};

class Tokenizer {
 public:
  explicit Tokenizer(std::shared_ptr<gale::LLM> llm) : llm_(std::move(llm)) {}
  std::vector<int32_t> encode(const std::string& text, bool add_special_tokens) const {
    return llm_->encode(text, add_special_tokens);
  }
  std::string decode(const std::vector<int32_t>& ids, bool skip_special_tokens) const {
    return llm_->decode(ids, skip_special_tokens);
  }
  std::string apply_chat_template(py::object messages, bool add_generation_prompt, py::object tools) const {
    return llm_->apply_chat_template(to_json(messages), add_generation_prompt, to_json(tools));
  }
  int64_t vocab_size() const { return llm_->vocab_size(); }

 private:
  std::shared_ptr<gale::LLM> llm_;
};

class PyLLM {
 public:
  PyLLM(std::optional<std::string> model, py::kwargs kwargs) {
    gale::LLMOptions o;
    if (model) {
      if (model->empty()) throw gale::InvalidArgument("model: the folder name is empty");
      o.model.model = *model;
    }
    for (auto [k, v] : kwargs) {
      if (v.is_none()) continue;
      o.set(py_str(k), arg_text(v));
    }
    py::gil_scoped_release nogil;
    llm_ = std::make_shared<gale::LLM>(o);
  }

  // prompts: a str, a {"prompt_token_ids": [...]} dict, or a list of those.
  std::vector<RequestOutput> generate(py::object prompts, py::object sampling_params, bool use_tqdm) {
    (void)use_tqdm;
    std::vector<std::optional<std::string>> texts;
    std::vector<std::vector<int32_t>> ids;
    auto add = [&](py::handle p) {
      if (py::isinstance<py::str>(p)) {
        texts.push_back(p.cast<std::string>());
        ids.push_back(llm_->encode(*texts.back(), true));
      } else if (py::isinstance<py::dict>(p) && p.cast<py::dict>().contains("prompt_token_ids")) {
        texts.push_back(std::nullopt);
        ids.push_back(to_ids(p.cast<py::dict>()["prompt_token_ids"]));
      } else if (py::isinstance<py::dict>(p) && p.cast<py::dict>().contains("prompt")) {
        texts.push_back(py_str(p.cast<py::dict>()["prompt"]));
        ids.push_back(llm_->encode(*texts.back(), true));
      } else {
        throw gale::InvalidArgument("a prompt is a str or a dict with 'prompt' or 'prompt_token_ids'");
      }
    };
    if (py::isinstance<py::list>(prompts) || py::isinstance<py::tuple>(prompts)) {
      for (py::handle p : prompts) add(p);
    } else {
      add(prompts);
    }
    return run(texts, ids, params_list(sampling_params, ids.size()));
  }

  // messages: one conversation (a list of {role, content} dicts) or a list of conversations.
  std::vector<RequestOutput> chat(py::object messages, py::object sampling_params, bool add_generation_prompt,
                                  py::object chat_template_kwargs, py::object tools, bool use_tqdm) {
    (void)use_tqdm;
    ordered_json m = to_json(messages);
    if (!m.is_array() || m.empty()) throw gale::InvalidArgument("messages must be a non-empty list");
    std::vector<ordered_json> convs;
    if (m[0].is_array()) {
      for (auto& c : m) convs.push_back(c);
    } else {
      convs.push_back(m);
    }
    const ordered_json extra = chat_template_kwargs.is_none() ? ordered_json::object() : to_json(chat_template_kwargs);
    const ordered_json tl = to_json(tools);
    std::vector<std::optional<std::string>> texts;
    std::vector<std::vector<int32_t>> ids;
    for (const auto& c : convs) {
      std::string text = llm_->apply_chat_template(c, add_generation_prompt, tl, extra);
      ids.push_back(llm_->encode(text, /*add_special_tokens=*/false));  // the template writes them
      texts.push_back(std::move(text));
    }
    return run(texts, ids, params_list(sampling_params, ids.size()));
  }

  std::unique_ptr<StreamIterator> generate_stream(py::object prompt, py::object sampling_params) {
    std::vector<int32_t> ids;
    if (py::isinstance<py::str>(prompt)) ids = llm_->encode(prompt.cast<std::string>(), true);
    else if (py::isinstance<py::dict>(prompt) && prompt.cast<py::dict>().contains("prompt_token_ids"))
      ids = to_ids(prompt.cast<py::dict>()["prompt_token_ids"]);
    else
      throw gale::InvalidArgument("a prompt is a str or a dict with 'prompt_token_ids'");
    const PromptParams pp = params_list(sampling_params, 1)[0];
    if (pp.n != 1) throw gale::InvalidArgument("generate_stream: n must be 1 (one stream per request)");
    gale::GenerationParams g = pp.g;
    uint64_t id;
    {
      py::gil_scoped_release nogil;
      id = llm_->submit(std::move(ids), g);
    }
    return std::make_unique<StreamIterator>(llm_, id);
  }

  Tokenizer get_tokenizer() const { return Tokenizer(llm_); }

 private:
  static std::vector<int32_t> to_ids(py::handle h) {
    std::vector<int32_t> v;
    for (py::handle x : h) {
      if (!py::isinstance<py::int_>(x)) throw gale::InvalidArgument("prompt_token_ids must be a list of ints");
      const int64_t t = x.cast<int64_t>();
      if (t < 0 || t > INT32_MAX) throw gale::InvalidArgument("token id " + std::to_string(t) + " out of range");
      v.push_back(int32_t(t));
    }
    return v;
  }

  struct PromptParams {
    gale::GenerationParams g;
    int n = 1;  // completions of the prompt (SamplingParams.n)
  };
  // None: the model's generation_config defaults; a SamplingParams for all; or a list, one each.
  // The result has one entry per prompt.
  static std::vector<PromptParams> params_list(py::object sp, size_t n) {
    auto one = [](py::handle h) {
      const SamplingParams& s = h.cast<const SamplingParams&>();
      return PromptParams{s.to_params(), s.n};
    };
    if (sp.is_none()) return std::vector<PromptParams>(n);
    if (py::isinstance<SamplingParams>(sp)) return std::vector<PromptParams>(n, one(sp));
    if (py::isinstance<py::list>(sp)) {
      std::vector<PromptParams> v;
      for (py::handle h : sp) {
        if (!py::isinstance<SamplingParams>(h)) throw gale::InvalidArgument("sampling_params must be SamplingParams");
        v.push_back(one(h));
      }
      if (v.size() != n)
        throw gale::InvalidArgument("sampling_params: " + std::to_string(v.size()) + " for " + std::to_string(n) + " prompts");
      return v;
    }
    throw gale::InvalidArgument("sampling_params must be a SamplingParams or a list of them");
  }

  // vLLM's per-token logprobs: {id: Logprob} for the chosen token and the top ones.
  std::vector<std::map<int32_t, Logprob>> logprob_maps(const std::vector<gale::TokenLogprob>& lps, double& cumulative) const {
    std::vector<std::map<int32_t, Logprob>> out;
    cumulative = 0;
    auto text = [&](int32_t id) -> std::optional<std::string> {
      if (!llm_->has_tokenizer()) return std::nullopt;
      return llm_->decode(std::vector<int32_t>{id});
    };
    for (const gale::TokenLogprob& t : lps) {
      std::map<int32_t, Logprob> m;
      std::optional<int> chosen_rank;
      for (size_t k = 0; k < t.top.size(); ++k) {
        m[t.top[k].first] = Logprob{t.top[k].second, int(k + 1), text(t.top[k].first)};
        if (t.top[k].first == t.id) chosen_rank = int(k + 1);
      }
      m[t.id] = Logprob{t.logprob, chosen_rank, text(t.id)};
      cumulative += double(t.logprob);
      out.push_back(std::move(m));
    }
    return out;
  }

  // Each prompt i runs params[i].n times (seeds seed, seed + 1, ... when a seed is given, as the
  // server's n does); its completions come back together in one RequestOutput, index 0..n-1.
  std::vector<RequestOutput> run(const std::vector<std::optional<std::string>>& texts,
                                 const std::vector<std::vector<int32_t>>& ids, const std::vector<PromptParams>& params) {
    std::vector<std::vector<int32_t>> all_ids;
    std::vector<gale::GenerationParams> all_params;
    for (size_t i = 0; i < ids.size(); ++i)
      for (int j = 0; j < params[i].n; ++j) {
        all_ids.push_back(ids[i]);
        gale::GenerationParams g = params[i].g;
        if (g.seed) g.seed = *g.seed + uint64_t(j);
        all_params.push_back(std::move(g));
      }
    std::vector<gale::Completion> done;
    {
      py::gil_scoped_release nogil;
      done = llm_->generate(all_ids, all_params);
    }
    std::vector<RequestOutput> out(ids.size());
    size_t k = 0;
    for (size_t i = 0; i < ids.size(); ++i) {
      RequestOutput& r = out[i];
      r.request_id = std::to_string(done[k].id);
      r.prompt = texts[i];
      r.prompt_token_ids = done[k].prompt_ids;
      r.num_cached_tokens = done[k].cached_prompt_tokens;
      for (int j = 0; j < params[i].n; ++j, ++k) {
        CompletionOutput c;
        c.index = j;
        c.text = std::move(done[k].text);
        c.token_ids = std::move(done[k].ids);
        c.finish_reason = done[k].finish_reason;
        if (params[i].g.logprobs >= 0) {
          double cum = 0;
          c.logprobs = logprob_maps(done[k].logprobs, cum);
          c.cumulative_logprob = cum;
        }
        r.outputs.push_back(std::move(c));
      }
    }
    return out;
  }

  std::shared_ptr<gale::LLM> llm_;
};

std::string py_quote(const std::optional<std::string>& s) {
  return s ? py::repr(py::str(*s)).cast<std::string>() : "None";
}

}  // namespace

PYBIND11_MODULE(gale, m) {
  m.doc() = "Gale: in-process LLM inference (vLLM-style LLM / SamplingParams)";
  m.attr("__version__") = "0.1.0";
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const gale::InvalidArgument& e) {
      PyErr_SetString(PyExc_ValueError, e.what());
    } catch (const gale::Error& e) {
      PyErr_SetString(PyExc_RuntimeError, e.what());
    }
  });

  py::class_<StructuredOutputsParams>(m, "StructuredOutputsParams")
      .def(py::init([](py::object json_, std::optional<std::string> regex, std::optional<std::vector<std::string>> choice,
                       std::optional<std::string> grammar, bool json_object) {
             StructuredOutputsParams p;
             if (py::isinstance<py::str>(json_)) p.json = json_.cast<std::string>();
             else if (!json_.is_none()) p.json = to_json(json_).dump();
             p.regex = std::move(regex);
             p.choice = std::move(choice);
             p.grammar = std::move(grammar);
             p.json_object = json_object;
             p.spec();  // one of them at most, checked now
             return p;
           }),
           py::kw_only(), py::arg("json") = py::none(), py::arg("regex") = py::none(), py::arg("choice") = py::none(),
           py::arg("grammar") = py::none(), py::arg("json_object") = false,
           "Structured output (vLLM's StructuredOutputsParams): one of json (a schema, dict or text), regex, "
           "choice, grammar (GBNF) or json_object=True")
      .def_readonly("json", &StructuredOutputsParams::json)
      .def_readonly("regex", &StructuredOutputsParams::regex)
      .def_readonly("choice", &StructuredOutputsParams::choice)
      .def_readonly("grammar", &StructuredOutputsParams::grammar)
      .def_readonly("json_object", &StructuredOutputsParams::json_object);
  m.attr("GuidedDecodingParams") = m.attr("StructuredOutputsParams");  // vLLM's name before 0.10

  py::class_<Logprob>(m, "Logprob")
      .def_readonly("logprob", &Logprob::logprob)
      .def_readonly("rank", &Logprob::rank)
      .def_readonly("decoded_token", &Logprob::decoded_token)
      .def("__repr__", [](const Logprob& l) {
        return "Logprob(logprob=" + py::repr(py::float_(l.logprob)).cast<std::string>() +
               ", rank=" + (l.rank ? std::to_string(*l.rank) : "None") + ", decoded_token=" + py_quote(l.decoded_token) + ")";
      });

  py::class_<SamplingParams>(m, "SamplingParams")
      .def(py::init([](int n, int64_t max_tokens, float temperature, float top_p, int top_k, float min_p,
                       std::optional<uint64_t> seed, py::object stop, float presence_penalty, float frequency_penalty,
                       float repetition_penalty, bool ignore_eos, std::optional<int> logprobs,
                       std::optional<StructuredOutputsParams> structured_outputs,
                       std::optional<StructuredOutputsParams> guided_decoding) {
             if (structured_outputs && guided_decoding)
               throw gale::InvalidArgument("SamplingParams: give structured_outputs or guided_decoding, not both");
             SamplingParams s;
             s.logprobs = logprobs;
             s.structured_outputs = structured_outputs ? structured_outputs : guided_decoding;
             s.n = n;
             s.max_tokens = max_tokens;
             s.temperature = temperature;
             s.top_p = top_p;
             s.top_k = top_k;
             s.min_p = min_p;
             s.seed = seed;
             if (py::isinstance<py::str>(stop)) s.stop = {stop.cast<std::string>()};
             else if (!stop.is_none()) s.stop = stop.cast<std::vector<std::string>>();
             s.presence_penalty = presence_penalty;
             s.frequency_penalty = frequency_penalty;
             s.repetition_penalty = repetition_penalty;
             s.ignore_eos = ignore_eos;
             return s;
           }),
           py::kw_only(), py::arg("n") = 1, py::arg("max_tokens") = 16, py::arg("temperature") = 1.0f,
           py::arg("top_p") = 1.0f, py::arg("top_k") = 0, py::arg("min_p") = 0.0f, py::arg("seed") = py::none(),
           py::arg("stop") = py::none(), py::arg("presence_penalty") = 0.0f, py::arg("frequency_penalty") = 0.0f,
           py::arg("repetition_penalty") = 1.0f, py::arg("ignore_eos") = false, py::arg("logprobs") = py::none(),
           py::arg("structured_outputs") = py::none(), py::arg("guided_decoding") = py::none())
      .def_readwrite("n", &SamplingParams::n)
      .def_readwrite("max_tokens", &SamplingParams::max_tokens)
      .def_readwrite("temperature", &SamplingParams::temperature)
      .def_readwrite("top_p", &SamplingParams::top_p)
      .def_readwrite("top_k", &SamplingParams::top_k)
      .def_readwrite("min_p", &SamplingParams::min_p)
      .def_readwrite("seed", &SamplingParams::seed)
      .def_readwrite("stop", &SamplingParams::stop)
      .def_readwrite("presence_penalty", &SamplingParams::presence_penalty)
      .def_readwrite("frequency_penalty", &SamplingParams::frequency_penalty)
      .def_readwrite("repetition_penalty", &SamplingParams::repetition_penalty)
      .def_readwrite("ignore_eos", &SamplingParams::ignore_eos)
      .def_readwrite("logprobs", &SamplingParams::logprobs)
      .def_readwrite("structured_outputs", &SamplingParams::structured_outputs)
      .def("__repr__", [](const SamplingParams& s) {
        return "SamplingParams(max_tokens=" + std::to_string(s.max_tokens) + ", temperature=" +
               py::repr(py::float_(s.temperature)).cast<std::string>() + ", top_p=" +
               py::repr(py::float_(s.top_p)).cast<std::string>() + ", top_k=" + std::to_string(s.top_k) + ", seed=" +
               (s.seed ? std::to_string(*s.seed) : "None") + ")";
      });

  py::class_<CompletionOutput>(m, "CompletionOutput")
      .def_readonly("index", &CompletionOutput::index)
      .def_readonly("text", &CompletionOutput::text)
      .def_readonly("token_ids", &CompletionOutput::token_ids)
      .def_readonly("finish_reason", &CompletionOutput::finish_reason)
      .def_readonly("logprobs", &CompletionOutput::logprobs)
      .def_readonly("cumulative_logprob", &CompletionOutput::cumulative_logprob)
      .def("__repr__", [](const CompletionOutput& c) {
        return "CompletionOutput(index=" + std::to_string(c.index) + ", text=" + py_quote(c.text) +
               ", finish_reason=" + py_quote(c.finish_reason) + ")";
      });

  py::class_<RequestOutput>(m, "RequestOutput")
      .def_readonly("request_id", &RequestOutput::request_id)
      .def_readonly("prompt", &RequestOutput::prompt)
      .def_readonly("prompt_token_ids", &RequestOutput::prompt_token_ids)
      .def_readonly("outputs", &RequestOutput::outputs)
      .def_readonly("finished", &RequestOutput::finished)
      .def_readonly("num_cached_tokens", &RequestOutput::num_cached_tokens)
      .def("__repr__", [](const RequestOutput& r) {
        return "RequestOutput(request_id=" + r.request_id + ", prompt=" + py_quote(r.prompt) + ", outputs=[" +
               (r.outputs.empty() ? "" : "CompletionOutput(text=" + py_quote(r.outputs[0].text) + ")") + "])";
      });

  py::class_<StreamOutput>(m, "StreamOutput")
      .def_readonly("request_id", &StreamOutput::request_id)
      .def_readonly("text", &StreamOutput::text)
      .def_readonly("token_ids", &StreamOutput::token_ids)
      .def_readonly("finished", &StreamOutput::finished)
      .def_readonly("finish_reason", &StreamOutput::finish_reason);

  py::class_<StreamIterator>(m, "StreamIterator")
      .def("__iter__", [](StreamIterator& s) -> StreamIterator& { return s; })
      .def("__next__", &StreamIterator::next)
      .def("close", &StreamIterator::close, "Stop the request (the iterator then ends)");

  py::class_<Tokenizer>(m, "Tokenizer")
      .def("encode", &Tokenizer::encode, py::arg("text"), py::arg("add_special_tokens") = true)
      .def("decode", &Tokenizer::decode, py::arg("token_ids"), py::arg("skip_special_tokens") = false)
      .def("apply_chat_template", &Tokenizer::apply_chat_template, py::arg("messages"),
           py::arg("add_generation_prompt") = true, py::arg("tools") = py::none())
      .def_property_readonly("vocab_size", &Tokenizer::vocab_size);

  py::class_<PyLLM>(m, "LLM")
      .def(py::init<std::optional<std::string>, py::kwargs>(), py::arg("model") = py::none(),
           "Load a model folder (None: the bundled default model) with engine arguments: " 
           "device, dtype, threads, max_num_seqs, kv_cache_memory, quantization, speculative, ...")
      .def("generate", &PyLLM::generate, py::arg("prompts"), py::arg("sampling_params") = py::none(),
           py::arg("use_tqdm") = false)
      .def("chat", &PyLLM::chat, py::arg("messages"), py::arg("sampling_params") = py::none(),
           py::arg("add_generation_prompt") = true, py::arg("chat_template_kwargs") = py::none(),
           py::arg("tools") = py::none(), py::arg("use_tqdm") = false)
      .def("generate_stream", &PyLLM::generate_stream, py::arg("prompt"), py::arg("sampling_params") = py::none(),
           "An iterator of StreamOutput pieces (text and token ids since the previous piece)")
      .def("get_tokenizer", &PyLLM::get_tokenizer);
}
