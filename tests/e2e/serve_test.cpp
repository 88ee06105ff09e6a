// The HTTP layer of `gale serve` over a fake engine: schemas, SSE framing, validation errors,
// auth, body limit, 429, client disconnects, timeouts and the drain. The real engine and real
// clients are exercised by tests/e2e/run_e2e.sh.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <mutex>
#include <nlohmann/json.hpp>
#include <thread>

#include "core/error.h"
#include "fake_engine.h"
#include "serve/server.h"
#include "tokenizer/chat_template.h"
#include "tokenizer/tokenizer.h"

using namespace gale;
using namespace gale::serve;
using json = nlohmann::json;

namespace {

using test::FakeEngine;

struct Response {
  int status = 0;
  std::string head, body;  // body de-chunked
  bool chunked = false;
  json j() const { return json::parse(body); }
};

int connect_to(int port) {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(uint16_t(port));
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::connect(fd, (sockaddr*)&a, sizeof a) != 0) {
    ::close(fd);
    return -1;
  }
  return fd;
}

void send_all(int fd, const std::string& s) {
  size_t off = 0;
  while (off < s.size()) {
    ssize_t n = ::send(fd, s.data() + off, s.size() - off, MSG_NOSIGNAL);
    if (n <= 0) return;
    off += size_t(n);
  }
}

std::string request_text(const std::string& method, const std::string& path, const std::string& body,
                         const std::string& extra_headers = "") {
  return method + " " + path + " HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n" + extra_headers +
         (body.empty() && method == "GET" ? "" : "Content-Type: application/json\r\nContent-Length: " + std::to_string(body.size()) + "\r\n") +
         "\r\n" + body;
}

Response parse_response(const std::string& raw) {
  Response r;
  size_t he = raw.find("\r\n\r\n");
  if (he == std::string::npos) return r;
  r.head = raw.substr(0, he);
  r.status = std::atoi(raw.c_str() + 9);
  std::string rest = raw.substr(he + 4);
  r.chunked = r.head.find("Transfer-Encoding: chunked") != std::string::npos;
  if (!r.chunked) {
    r.body = rest;
    return r;
  }
  size_t p = 0;
  while (p < rest.size()) {
    size_t le = rest.find("\r\n", p);
    if (le == std::string::npos) break;
    size_t n = std::stoul(rest.substr(p, le - p), nullptr, 16);
    if (n == 0) break;
    r.body += rest.substr(le + 2, n);
    p = le + 2 + n + 2;
  }
  return r;
}

// Everything the server sends until it closes the connection.
std::string read_to_close(int fd) {
  std::string raw;
  char buf[65536];
  ssize_t n;
  while ((n = ::recv(fd, buf, sizeof buf, 0)) > 0) raw.append(buf, size_t(n));
  return raw;
}

Response http(int port, const std::string& method, const std::string& path, const std::string& body = "",
              const std::string& headers = "") {
  int fd = connect_to(port);
  if (fd < 0) return {};
  send_all(fd, request_text(method, path, body, headers));
  std::string raw = read_to_close(fd);
  ::close(fd);
  return parse_response(raw);
}

// SSE events of a streamed body: each must be "data: ...\n\n".
std::vector<std::string> sse_events(const std::string& body) {
  std::vector<std::string> ev;
  size_t p = 0;
  while (p < body.size()) {
    size_t e = body.find("\n\n", p);
    EXPECT_NE(e, std::string::npos) << "unterminated event";
    if (e == std::string::npos) break;
    std::string line = body.substr(p, e - p);
    EXPECT_EQ(line.rfind("data: ", 0), 0u) << line;
    ev.push_back(line.substr(6));
    p = e + 2;
  }
  return ev;
}

class ServeTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() { tok_ = Tokenizer::load(std::string(GALE_SOURCE_DIR) + "/models/default").release(); }
  // tools: the server runs the real Qwen3 template (hermes tool calls, <think> reasoning) as
  // detected from it, and the fake engine writes canned text chosen by a keyword in the prompt.
  void start(ServerConfig cfg = {}, bool tools = false) {
    cfg.port = 0;
    engine_ = std::make_unique<FakeEngine>(tok_);
    tmpl_ = std::make_unique<ChatTemplate>(
        tools ? ChatTemplate::load(std::string(GALE_SOURCE_DIR) + "/tests/fixtures/chat_templates/qwen3")
              : ChatTemplate::from_string(
                    "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}\n{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"));
    ModelInfo info;
    info.name = "fake";
    info.max_model_len = tools ? 1 << 16 : 64;
    if (tools) {
      info.tool_format = detect_tool_call_format(tmpl_->source());
      info.reasoning_format = detect_reasoning_format(tmpl_->source());
      engine_->script = [this](const std::vector<int32_t>& prompt) {
        std::string p = tok_->decode(prompt);
        for (auto& [k, v] : canned_)
          if (p.find(k) != std::string::npos) return v;
        return std::string("plain answer");
      };
    }
    info.vocab_size = int64_t(tok_->vocab_size());
    info.defaults.temperature = 1.0f;
    server_ = std::make_unique<Server>(*engine_, tok_, tmpl_.get(), info, cfg);
    server_->start();
    port_ = server_->port();
    thread_ = std::thread([this] { server_->run(false); });
  }
  void TearDown() override {
    if (server_) {
      server_->shutdown();
      thread_.join();
    }
  }
  int64_t metric(const std::string& name) {
    std::string m = http(port_, "GET", "/metrics").body;
    size_t p = m.find("\n" + name + " ");
    return p == std::string::npos ? -1 : std::atoll(m.c_str() + p + name.size() + 2);
  }
  void expect_error(const Response& r, int status, const std::string& param = "") {
    EXPECT_EQ(r.status, status) << r.body;
    json j = json::parse(r.body, nullptr, false);
    ASSERT_TRUE(j.is_object() && j.contains("error")) << r.body;
    for (const char* k : {"message", "type", "param", "code"}) EXPECT_TRUE(j["error"].contains(k)) << r.body;
    EXPECT_TRUE(j["error"]["message"].is_string());
    if (!param.empty()) {
      EXPECT_EQ(j["error"]["param"], param) << r.body;
    }
  }
  static Tokenizer* tok_;
  std::vector<std::pair<std::string, std::string>> canned_;  // prompt keyword -> scripted output
  std::unique_ptr<FakeEngine> engine_;
  std::unique_ptr<ChatTemplate> tmpl_;
  std::unique_ptr<Server> server_;
  std::thread thread_;
  int port_ = 0;
};
Tokenizer* ServeTest::tok_ = nullptr;

TEST_F(ServeTest, HealthModelsAndUnknownRoutes) {
  start();
  EXPECT_EQ(http(port_, "GET", "/health").status, 200);
  Response m = http(port_, "GET", "/v1/models");
  ASSERT_EQ(m.status, 200);
  EXPECT_EQ(m.j()["object"], "list");
  EXPECT_EQ(m.j()["data"][0]["id"], "fake");
  expect_error(http(port_, "GET", "/v2/nothing"), 404);
  expect_error(http(port_, "GET", "/v1/completions"), 405);
}

TEST_F(ServeTest, CompletionSchema) {
  start();
  Response r = http(port_, "POST", "/v1/completions", R"({"model":"fake","prompt":"def f(","max_tokens":3})");
  ASSERT_EQ(r.status, 200) << r.body;
  json j = r.j();
  EXPECT_EQ(j["object"], "text_completion");
  EXPECT_EQ(j["id"].get<std::string>().rfind("cmpl-", 0), 0u);
  EXPECT_TRUE(j["created"].is_number_integer());
  EXPECT_EQ(j["model"], "fake");
  ASSERT_EQ(j["choices"].size(), 1u);
  int32_t ids[3] = {300, 301, 302};
  EXPECT_EQ(j["choices"][0]["text"], tok_->decode(ids));
  EXPECT_EQ(j["choices"][0]["finish_reason"], "length");
  EXPECT_EQ(j["choices"][0]["index"], 0);
  EXPECT_TRUE(j["choices"][0]["logprobs"].is_null());
  auto prompt_len = int64_t(tok_->encode("def f(").size());
  EXPECT_EQ(j["usage"]["prompt_tokens"], prompt_len);
  EXPECT_EQ(j["usage"]["completion_tokens"], 3);
  EXPECT_EQ(j["usage"]["total_tokens"], prompt_len + 3);
}

TEST_F(ServeTest, ListPromptsTimesNAndLogprobs) {
  start();
  Response r = http(port_, "POST", "/v1/completions", R"({"prompt":[[5,6],[7]],"n":2,"max_tokens":2,"logprobs":2,"echo":false})");
  ASSERT_EQ(r.status, 200) << r.body;
  json j = r.j();
  ASSERT_EQ(j["choices"].size(), 4u);
  for (int i = 0; i < 4; ++i) {
    EXPECT_EQ(j["choices"][i]["index"], i);
    auto& lp = j["choices"][i]["logprobs"];
    EXPECT_EQ(lp["tokens"].size(), 2u);
    EXPECT_EQ(lp["token_logprobs"][0], -0.5);
    EXPECT_EQ(lp["top_logprobs"][0].size(), 2u);
    EXPECT_EQ(lp["text_offset"][0], 0);
  }
  EXPECT_EQ(j["usage"]["prompt_tokens"], 3);  // each prompt once, whatever n
  EXPECT_EQ(j["usage"]["completion_tokens"], 8);
}

TEST_F(ServeTest, StreamFraming) {
  start();
  Response r = http(port_, "POST", "/v1/completions",
                    R"({"prompt":"x","max_tokens":3,"stream":true,"stream_options":{"include_usage":true}})");
  ASSERT_EQ(r.status, 200);
  EXPECT_TRUE(r.chunked);
  EXPECT_NE(r.head.find("Content-Type: text/event-stream"), std::string::npos);
  auto ev = sse_events(r.body);
  ASSERT_GE(ev.size(), 5u);
  EXPECT_EQ(ev.back(), "[DONE]");
  std::string text;
  for (size_t i = 0; i + 2 < ev.size(); ++i) {
    json c = json::parse(ev[i]);
    EXPECT_EQ(c["object"], "text_completion");
    EXPECT_TRUE(c.contains("usage") && c["usage"].is_null());
    text += c["choices"][0]["text"].get<std::string>();
    if (i + 3 == ev.size()) EXPECT_EQ(c["choices"][0]["finish_reason"], "length");
    else EXPECT_TRUE(c["choices"][0]["finish_reason"].is_null());
  }
  int32_t ids[3] = {300, 301, 302};
  EXPECT_EQ(text, tok_->decode(ids));
  json u = json::parse(ev[ev.size() - 2]);
  EXPECT_TRUE(u["choices"].empty());
  EXPECT_EQ(u["usage"]["completion_tokens"], 3);
}

TEST_F(ServeTest, ChatStreamAndFull) {
  start();
  Response r = http(port_, "POST", "/v1/chat/completions",
                    R"({"model":"fake","messages":[{"role":"user","content":"hi"}],"max_completion_tokens":2,"stream":true})");
  ASSERT_EQ(r.status, 200);
  auto ev = sse_events(r.body);
  ASSERT_EQ(ev.size(), 5u);  // role, 2 tokens, finish, [DONE]
  json first = json::parse(ev[0]);
  EXPECT_EQ(first["object"], "chat.completion.chunk");
  EXPECT_EQ(first["choices"][0]["delta"]["role"], "assistant");
  EXPECT_EQ(json::parse(ev[3])["choices"][0]["finish_reason"], "length");
  EXPECT_TRUE(json::parse(ev[3])["choices"][0]["delta"].empty());
  EXPECT_EQ(ev[4], "[DONE]");

  Response f = http(port_, "POST", "/v1/chat/completions",
                    R"({"messages":[{"role":"user","content":[{"type":"text","text":"hi"}]}],"max_tokens":2,"logprobs":true,"top_logprobs":1})");
  ASSERT_EQ(f.status, 200) << f.body;
  json j = f.j();
  EXPECT_EQ(j["object"], "chat.completion");
  EXPECT_EQ(j["choices"][0]["message"]["role"], "assistant");
  EXPECT_EQ(j["choices"][0]["logprobs"]["content"].size(), 2u);
  EXPECT_EQ(j["choices"][0]["logprobs"]["content"][0]["top_logprobs"].size(), 1u);
  EXPECT_EQ(j["usage"]["prompt_tokens"], int64_t(tok_->encode("<|user|>hi\n<|assistant|>", false).size()));
}

TEST_F(ServeTest, ValidationErrors) {
  start();
  auto post = [&](const std::string& path, const std::string& body) { return http(port_, "POST", path, body); };
  expect_error(post("/v1/completions", "{not json"), 400);
  expect_error(post("/v1/completions", "[1,2]"), 400);
  expect_error(post("/v1/completions", R"({"max_tokens":3})"), 400, "prompt");
  expect_error(post("/v1/completions", R"({"prompt":"x","temperature":"hot"})"), 400, "temperature");
  expect_error(post("/v1/completions", R"({"prompt":"x","temperature":3})"), 400, "temperature");
  expect_error(post("/v1/completions", R"({"prompt":"x","top_p":0})"), 400, "top_p");
  expect_error(post("/v1/completions", R"({"prompt":"x","n":0})"), 400, "n");
  expect_error(post("/v1/completions", R"({"prompt":"x","n":-3})"), 400, "n");
  expect_error(post("/v1/completions", R"({"prompt":"x","max_tokens":0})"), 400, "max_tokens");
  expect_error(post("/v1/completions", R"({"prompt":"x","max_tokens":1.5})"), 400, "max_tokens");
  expect_error(post("/v1/completions", R"({"prompt":"x","max_tokens":64})"), 400, "max_tokens");  // context is 64
  expect_error(post("/v1/completions", R"({"prompt":"x","model":"gpt-9"})"), 404, "model");
  expect_error(post("/v1/completions", R"({"prompt":[1,2,99999999]})"), 400, "prompt");
  expect_error(post("/v1/completions", R"({"prompt":[-1]})"), 400, "prompt");
  expect_error(post("/v1/completions", R"({"prompt":[]})"), 400, "prompt");
  expect_error(post("/v1/completions", R"({"prompt":"x","stop":[1]})"), 400, "stop");
  expect_error(post("/v1/completions", R"({"prompt":"x","stop":""})"), 400, "stop");
  expect_error(post("/v1/completions", R"({"prompt":"x","stream":"yes"})"), 400, "stream");
  expect_error(post("/v1/completions", R"({"prompt":"x","stream_options":{"include_usage":true}})"), 400, "stream_options");
  expect_error(post("/v1/completions", R"({"prompt":"x","logprobs":21})"), 400, "logprobs");
  expect_error(post("/v1/completions", R"({"prompt":"x","seed":"1"})"), 400, "seed");
  expect_error(post("/v1/completions", R"({"prompt":")" + std::string(300, 'a') + " " + std::string(200, 'b') + R"("})"), 400);
  expect_error(post("/v1/completions", std::string(100, '[') + std::string(100, ']')), 400);
  expect_error(post("/v1/completions", R"({"prompt":"x","user":)" + std::string(65, '[') + std::string(65, ']') + "}"), 400);
  expect_error(post("/v1/completions", R"({"prompt":"x","top_k":1e20})"), 400, "top_k");
  expect_error(post("/v1/completions", R"({"prompt":"x","max_tokens":1e400})"), 400);  // was a 500
  expect_error(post("/v1/completions", R"({"prompt":"x","max_tokens":9223372036854775808})"), 400, "max_tokens");
  expect_error(post("/v1/completions", R"({"prompt":[788,4294967301]})"), 400, "prompt");
  expect_error(post("/v1/completions", R"({"prompt":"x","stop":["1","2","3","4","5","6","7","8","9","10","11","12","13","14","15","16","17"]})"), 400, "stop");
  expect_error(post("/v1/completions", R"({"prompt":"x","stop":")" + std::string(1025, 'a') + R"("})"), 400, "stop");
  expect_error(post("/v1/completions", R"({"prompt":"x","response_format":{"type":1}})"), 400, "response_format");
  expect_error(post("/v1/chat/completions", R"({"messages":[{"role":"user","content":[{"type":7,"text":"x"}]}]})"), 400, "messages");
  expect_error(post("/v1/chat/completions", R"({"messages":[]})"), 400, "messages");
  expect_error(post("/v1/chat/completions", R"({"messages":[{"content":"x"}]})"), 400, "messages");
  expect_error(post("/v1/chat/completions", R"({"messages":[{"role":"user","content":"x"}],"top_logprobs":2})"), 400, "top_logprobs");
  expect_error(post("/v1/completions", R"({"prompt":[1]})"), 400);  // the (fake) engine's own validation
  Response big = post("/v1/completions", R"({"prompt":")" + std::string(9 << 20, 'a') + "\"}");
  EXPECT_TRUE(big.status == 413 || big.status == 0) << big.status;  // the server may close before reading it all
  EXPECT_EQ(http(port_, "GET", "/health").status, 200);
  EXPECT_EQ(metric("gale_num_requests_in_flight"), 0);
}

TEST_F(ServeTest, ApiKey) {
  ServerConfig cfg;
  cfg.api_key = "sekrit";
  start(cfg);
  EXPECT_EQ(http(port_, "GET", "/health").status, 200);
  expect_error(http(port_, "GET", "/v1/models"), 401);
  expect_error(http(port_, "GET", "/v1/models", "", "Authorization: Bearer wrong\r\n"), 401);
  expect_error(http(port_, "GET", "/v1/models", "", "Authorization: Bearer sekri\r\n"), 401);
  expect_error(http(port_, "POST", "/v1/completions", R"({"prompt":"x"})"), 401);
  EXPECT_EQ(http(port_, "GET", "/v1/models", "", "Authorization: Bearer sekrit\r\n").status, 200);
  EXPECT_TRUE(bearer_matches("Bearer k", "k"));
  EXPECT_FALSE(bearer_matches("Bearer ", ""));
  EXPECT_FALSE(bearer_matches("Basic k", "k"));
}

TEST_F(ServeTest, QueueFullAnswers429) {
  ServerConfig cfg;
  cfg.max_in_flight = 2;
  start(cfg);
  engine_->step_ms = 20;
  std::vector<std::thread> ts;
  std::vector<int> codes(4);
  for (int i = 0; i < 4; ++i)
    ts.emplace_back([&, i] { codes[size_t(i)] = http(port_, "POST", "/v1/completions", R"({"prompt":"x","max_tokens":10})").status; });
  for (auto& t : ts) t.join();
  EXPECT_EQ(std::count(codes.begin(), codes.end(), 200), 2);
  EXPECT_EQ(std::count(codes.begin(), codes.end(), 429), 2);
  expect_error(http(port_, "POST", "/v1/completions", R"({"prompt":"x","n":3})"), 429);
}

TEST_F(ServeTest, DisconnectAbortsRequest) {
  start();
  engine_->step_ms = 20;
  int fd = connect_to(port_);
  send_all(fd, request_text("POST", "/v1/completions", R"({"prompt":"x","max_tokens":50,"stream":true})"));
  char buf[4096];
  ASSERT_GT(::recv(fd, buf, sizeof buf, 0), 0);  // headers (and maybe a chunk)
  ::close(fd);
  for (int i = 0; i < 100 && (engine_->aborts == 0 || metric("gale_num_requests_in_flight") != 0); ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  EXPECT_EQ(engine_->aborts, 1);
  EXPECT_EQ(metric("gale_num_requests_in_flight"), 0);
  EXPECT_EQ(metric("gale_num_requests_running"), 0);
  // A non-streaming request whose client goes away is aborted too.
  fd = connect_to(port_);
  send_all(fd, request_text("POST", "/v1/completions", R"({"prompt":"x","max_tokens":50})"));
  std::this_thread::sleep_for(std::chrono::milliseconds(60));
  ::close(fd);
  for (int i = 0; i < 100 && engine_->aborts < 2; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(20));
  EXPECT_EQ(engine_->aborts, 2);
}

TEST_F(ServeTest, RequestTimeout) {
  ServerConfig cfg;
  cfg.request_timeout_s = 0.2;
  start(cfg);
  engine_->step_ms = 20;
  expect_error(http(port_, "POST", "/v1/completions", R"({"prompt":"x","max_tokens":60})"), 408);
  Response s = http(port_, "POST", "/v1/completions", R"({"prompt":"x","max_tokens":60,"stream":true})");
  EXPECT_EQ(s.status, 200);
  auto ev = sse_events(s.body);
  ASSERT_GE(ev.size(), 2u);
  EXPECT_EQ(ev.back(), "[DONE]");
  EXPECT_TRUE(json::parse(ev[ev.size() - 2]).contains("error"));
  for (int i = 0; i < 50 && metric("gale_num_requests_in_flight") != 0; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(20));
  EXPECT_EQ(metric("gale_num_requests_in_flight"), 0);
}

// Regression: the engine keeps pushing outputs until it sees the timeout's cancel, and a wake-up
// posted then used to reach a session whose mailbox the answered request had already dropped (a
// null dereference under UBSan). Fast steps and short timeouts make that window wide.
TEST_F(ServeTest, WakeupsAfterATimeoutAreDropped) {
  ServerConfig cfg;
  cfg.request_timeout_s = 0.02;
  start(cfg);
  engine_->step_ms = 1;
  for (int i = 0; i < 25; ++i)
    expect_error(http(port_, "POST", "/v1/completions", R"({"prompt":"x","max_tokens":60})"), 408);
  engine_->step_ms = 0;
  Response ok = http(port_, "POST", "/v1/completions", R"({"prompt":"x","max_tokens":3})");
  EXPECT_EQ(ok.status, 200);
}

TEST_F(ServeTest, DrainFinishesInFlightRequests) {
  start();
  engine_->step_ms = 10;
  Response r;
  std::thread t([&] { r = http(port_, "POST", "/v1/completions", R"({"prompt":"x","max_tokens":20})"); });
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  server_->shutdown();
  t.join();
  EXPECT_EQ(r.status, 200);
  thread_.join();
  server_.reset();
  EXPECT_EQ(connect_to(port_), -1);  // no longer listening
}

TEST_F(ServeTest, ManyConcurrentStreams) {
  start();
  engine_->step_ms = 2;
  const int n = 300;
  std::vector<int> fds;
  for (int i = 0; i < n; ++i) {
    int fd = connect_to(port_);
    ASSERT_GE(fd, 0);
    send_all(fd, request_text("POST", "/v1/completions", R"({"prompt":"x","max_tokens":8,"stream":true})"));
    fds.push_back(fd);
  }
  int ok = 0;
  for (int fd : fds) {
    std::string raw;
    char buf[8192];
    ssize_t k;
    while ((k = ::recv(fd, buf, sizeof buf, 0)) > 0) raw.append(buf, size_t(k));
    ::close(fd);
    Response r = parse_response(raw);
    ok += r.status == 200 && r.body.size() > 14 && r.body.substr(r.body.size() - 14) == "data: [DONE]\n\n";
  }
  EXPECT_EQ(ok, n);
}

TEST_F(ServeTest, TokenizeDetokenizeMetrics) {
  start();
  Response t = http(port_, "POST", "/tokenize", R"({"prompt":"def f():"})");
  ASSERT_EQ(t.status, 200);
  auto ids = t.j()["tokens"].get<std::vector<int32_t>>();
  EXPECT_EQ(ids, tok_->encode("def f():"));
  Response d = http(port_, "POST", "/detokenize", json{{"tokens", ids}}.dump());
  ASSERT_EQ(d.status, 200);
  EXPECT_EQ(d.j()["prompt"], tok_->decode(ids));
  http(port_, "POST", "/v1/completions", R"({"prompt":"x","max_tokens":2})");
  std::string m = http(port_, "GET", "/metrics").body;
  for (const char* k : {"gale_requests_total{outcome=\"length\"} 1", "gale_time_to_first_token_seconds_count 1",
                        "gale_e2e_request_latency_seconds_bucket{le=\"+Inf\"} 1", "gale_kv_cache_usage_perc 0",
                        "gale_kv_cache_capacity_tokens 1600", "gale_kv_cache_info{dtype=\"fp8\"} 1",
                        "# TYPE gale_time_per_output_token_seconds histogram"})
    EXPECT_NE(m.find(k), std::string::npos) << k << "\n" << m;
}

// One failing request among many: it alone gets an error (500 with an OpenAI error body, or an
// SSE error event then [DONE] in a stream); every other request finishes normally.
TEST_F(ServeTest, OneFailingRequestGetsItsErrorTheOthersFinish) {
  start();
  engine_->step_ms = 2;
  const int n = 30;
  struct Call {
    bool stream, fails;
    Response r;
  };
  std::vector<Call> calls(n);
  for (int i = 0; i < n; ++i) calls[size_t(i)] = {i % 2 == 1, i == 11 || i == 20};  // 11 streams, 20 does not
  std::vector<std::thread> ts;
  for (int i = 0; i < n; ++i)
    ts.emplace_back([&, i] {
      Call& c = calls[size_t(i)];
      json body = {{"prompt", c.fails ? std::vector<int32_t>{5, 2, 6} : std::vector<int32_t>{5, 6, 7}},
                   {"max_tokens", 6}, {"stream", c.stream}};
      c.r = http(port_, "POST", "/v1/completions", body.dump());
    });
  for (auto& t : ts) t.join();
  for (int i = 0; i < n; ++i) {
    SCOPED_TRACE("request " + std::to_string(i));
    const Call& c = calls[size_t(i)];
    if (c.fails && !c.stream) {
      expect_error(c.r, 500);
      EXPECT_NE(c.r.body.find("injected request failure"), std::string::npos) << c.r.body;
      continue;
    }
    ASSERT_EQ(c.r.status, 200) << c.r.body;
    if (!c.stream) {
      EXPECT_EQ(c.r.j()["choices"][0]["finish_reason"], "length") << c.r.body;
      continue;
    }
    auto ev = sse_events(c.r.body);
    ASSERT_GE(ev.size(), 2u);
    EXPECT_EQ(ev.back(), "[DONE]");
    json last = json::parse(ev[ev.size() - 2]);
    if (c.fails) {
      ASSERT_TRUE(last.contains("error")) << c.r.body;
      EXPECT_NE(last["error"]["message"].get<std::string>().find("injected request failure"), std::string::npos);
      EXPECT_EQ(last["error"]["type"], "server_error");
    } else {
      EXPECT_EQ(last["choices"][0]["finish_reason"], "length") << c.r.body;
    }
  }
  EXPECT_EQ(engine_->aborts, 0);  // nobody else was aborted
  std::string m = http(port_, "GET", "/metrics").body;
  EXPECT_NE(m.find("gale_requests_total{outcome=\"error\"} 2"), std::string::npos) << m;
  EXPECT_NE(m.find("gale_requests_total{outcome=\"length\"} 28"), std::string::npos) << m;
  EXPECT_NE(m.find("gale_requests_total{outcome=\"abort\"} 0"), std::string::npos) << m;
  EXPECT_EQ(metric("gale_num_requests_in_flight"), 0);
}

// A request with n > 1 whose one sequence fails: the whole request answers the error and its
// other sequences are aborted (freeing their blocks), not left running.
TEST_F(ServeTest, FailedSequenceAbortsTheRestOfItsRequest) {
  start();
  engine_->step_ms = 5;
  Response r = http(port_, "POST", "/v1/completions", R"({"prompt":[[5,6],[5,2]],"max_tokens":20})");
  expect_error(r, 500);
  for (int i = 0; i < 100 && metric("gale_num_requests_in_flight") != 0; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  EXPECT_EQ(metric("gale_num_requests_in_flight"), 0);
  EXPECT_EQ(engine_->aborts, 1);
}

// If step() itself throws (an engine bug: failures are outputs), every client in flight hears
// the error instead of a silent finish_reason "abort"; the server keeps serving.
TEST_F(ServeTest, StepThatThrowsAnswersErrorsNotAborts) {
  start();
  engine_->step_ms = 20;
  Response r;
  std::thread t([&] { r = http(port_, "POST", "/v1/completions", R"({"prompt":"x","max_tokens":20})"); });
  std::this_thread::sleep_for(std::chrono::milliseconds(60));
  engine_->throw_next_step = true;
  t.join();
  expect_error(r, 500);
  EXPECT_NE(r.body.find("injected step failure"), std::string::npos) << r.body;
  Response ok = http(port_, "POST", "/v1/completions", R"({"prompt":"x","max_tokens":2})");
  EXPECT_EQ(ok.status, 200) << ok.body;
}

// HTTP/1.0 has no chunked encoding: a stream to a 1.0 client is close-delimited (no
// Transfer-Encoding, Connection: close, the SSE events as they are, then the close), even when
// the client asked for keep-alive.
TEST_F(ServeTest, Http10StreamIsCloseDelimited) {
  start();
  for (const char* extra : {"", "Connection: keep-alive\r\n"}) {
    SCOPED_TRACE(extra);
    const std::string body = R"({"prompt":"x","max_tokens":3,"stream":true})";
    int fd = connect_to(port_);
    ASSERT_GE(fd, 0);
    send_all(fd, std::string("POST /v1/completions HTTP/1.0\r\n") + extra +
                     "Content-Type: application/json\r\nContent-Length: " + std::to_string(body.size()) + "\r\n\r\n" + body);
    std::string raw = read_to_close(fd);  // returns only because the server closes
    ::close(fd);
    size_t he = raw.find("\r\n\r\n");
    ASSERT_NE(he, std::string::npos) << raw;
    std::string head = raw.substr(0, he), rest = raw.substr(he + 4);
    EXPECT_EQ(std::atoi(head.c_str() + 9), 200) << head;
    EXPECT_EQ(head.find("Transfer-Encoding"), std::string::npos) << head;
    EXPECT_NE(head.find("Connection: close"), std::string::npos) << head;
    EXPECT_NE(head.find("Content-Type: text/event-stream"), std::string::npos) << head;
    auto ev = sse_events(rest);  // every byte after the head is an event: no chunk sizes
    ASSERT_EQ(ev.size(), 5u) << rest;  // 3 tokens, finish, [DONE]
    std::string text;
    for (size_t i = 0; i < 4; ++i) text += json::parse(ev[i])["choices"][0]["text"].get<std::string>();
    int32_t ids[3] = {300, 301, 302};
    EXPECT_EQ(text, tok_->decode(ids));
    EXPECT_EQ(ev.back(), "[DONE]");
  }
  // HTTP/1.1 still streams chunked.
  Response r = http(port_, "POST", "/v1/completions", R"({"prompt":"x","max_tokens":2,"stream":true})");
  EXPECT_TRUE(r.chunked);
}

// Reads one keep-alive response to GET /health ("{}") on an open connection.
bool health_on(int fd) {
  send_all(fd, "GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n");
  std::string raw;
  char buf[4096];
  while (raw.find("\r\n\r\n{}") == std::string::npos) {
    ssize_t n = ::recv(fd, buf, sizeof buf, 0);
    if (n <= 0) return false;
    raw.append(buf, size_t(n));
  }
  return raw.rfind("HTTP/1.1 200", 0) == 0;
}

// --max-connections N: connection N+1 is answered 503 with an OpenAI error body and closed;
// once one closes, a new one is served again.
TEST_F(ServeTest, ConnectionsPastTheCapGet503) {
  ServerConfig cfg;
  cfg.max_connections = 2;
  start(cfg);
  int a = connect_to(port_), b = connect_to(port_);
  ASSERT_TRUE(health_on(a));  // both are sessions now, idle and open
  ASSERT_TRUE(health_on(b));
  for (int i = 0; i < 2; ++i) {
    Response r = http(port_, "POST", "/v1/completions", R"({"prompt":"x","max_tokens":2})");
    expect_error(r, 503);
    EXPECT_NE(r.head.find("Connection: close"), std::string::npos) << r.head;
  }
  ::close(a);
  int status = 0;
  for (int i = 0; i < 100 && status != 200; ++i) {  // until the server has seen the close
    status = http(port_, "GET", "/health").status;
    if (status != 200) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_EQ(status, 200);
  EXPECT_TRUE(health_on(b));
  ::close(b);
}

// ---- tool calls and reasoning over HTTP (serve/chat_tools.h)

const char* kWeatherTools =
    R"("tools":[{"type":"function","function":{"name":"get_weather","description":"Weather in a city",)"
    R"("parameters":{"type":"object","properties":{"city":{"type":"string"}},"required":["city"]}}}])";

// The chunks of a chat stream, [DONE] checked and dropped.
std::vector<json> chat_chunks(const Response& r) {
  auto ev = sse_events(r.body);
  EXPECT_FALSE(ev.empty());
  if (ev.empty()) return {};
  EXPECT_EQ(ev.back(), "[DONE]");
  std::vector<json> out;
  for (size_t i = 0; i + 1 < ev.size(); ++i) out.push_back(json::parse(ev[i]));
  return out;
}

TEST_F(ServeTest, ToolCallsFullAndStreamed) {
  canned_ = {{"KW_TWO", "Checking both.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Oslo\"}}\n</tool_call>\n"
                        "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Rome\"}}\n</tool_call>"}};
  start({}, /*tools=*/true);
  const std::string body = std::string(R"({"messages":[{"role":"user","content":"KW_TWO weather?"}],)") + kWeatherTools;
  Response f = http(port_, "POST", "/v1/chat/completions", body + "}");
  ASSERT_EQ(f.status, 200) << f.body;
  json c = f.j()["choices"][0];
  EXPECT_EQ(c["finish_reason"], "tool_calls");
  EXPECT_EQ(c["message"]["content"], "Checking both.");
  ASSERT_EQ(c["message"]["tool_calls"].size(), 2u);
  for (int i = 0; i < 2; ++i) {
    json tc = c["message"]["tool_calls"][i];
    EXPECT_EQ(tc["type"], "function");
    EXPECT_EQ(tc["id"].get<std::string>().rfind("call_", 0), 0u);
    EXPECT_EQ(tc["function"]["name"], "get_weather");
    EXPECT_EQ(json::parse(tc["function"]["arguments"].get<std::string>())["city"], i == 0 ? "Oslo" : "Rome");
  }
  EXPECT_NE(c["message"]["tool_calls"][0]["id"], c["message"]["tool_calls"][1]["id"]);

  // Streamed, 3 bytes a step: the deltas rebuild the same message.
  Response s = http(port_, "POST", "/v1/chat/completions", body + R"(,"stream":true})");
  ASSERT_EQ(s.status, 200) << s.body;
  std::string content;
  std::vector<json> calls;
  std::string finish;
  int arg_pieces = 0;
  for (auto& ch : chat_chunks(s)) {
    json d = ch["choices"][0]["delta"];
    if (d.contains("content")) content += d["content"].get<std::string>();
    EXPECT_FALSE(d.contains("reasoning_content"));
    if (d.contains("tool_calls"))
      for (auto& tc : d["tool_calls"]) {
        size_t idx = tc["index"];
        if (idx == calls.size()) {  // a call's first delta: id, type, name
          EXPECT_TRUE(tc.contains("id") && tc["type"] == "function" && tc["function"].contains("name")) << tc.dump();
          calls.push_back(tc);
        } else {
          ASSERT_EQ(idx + 1, calls.size());
          EXPECT_FALSE(tc.contains("id"));
          calls[idx]["function"]["arguments"] = calls[idx]["function"]["arguments"].get<std::string>() +
                                                tc["function"]["arguments"].get<std::string>();
          ++arg_pieces;
        }
      }
    if (!ch["choices"][0]["finish_reason"].is_null()) finish = ch["choices"][0]["finish_reason"];
  }
  EXPECT_EQ(finish, "tool_calls");
  EXPECT_EQ(content, "Checking both.");
  ASSERT_EQ(calls.size(), 2u);
  EXPECT_GT(arg_pieces, 2);  // arguments come in pieces, not at the end
  for (int i = 0; i < 2; ++i)
    EXPECT_EQ(calls[i]["function"]["arguments"], c["message"]["tool_calls"][i]["function"]["arguments"]);
  // The held-back marker never leaks into content.
  EXPECT_EQ(content.find('<'), std::string::npos);
}

TEST_F(ServeTest, ReasoningFullAndStreamed) {
  canned_ = {{"KW_THINK", "<think>\nThe user wants 2+2.\n</think>\n\n2 + 2 = 4."}};
  start({}, /*tools=*/true);
  const std::string body = R"({"messages":[{"role":"user","content":"KW_THINK 2+2?"}])";
  json m = http(port_, "POST", "/v1/chat/completions", body + "}").j()["choices"][0];
  EXPECT_EQ(m["finish_reason"], "stop");
  EXPECT_EQ(m["message"]["reasoning_content"], "\nThe user wants 2+2.\n");
  EXPECT_EQ(m["message"]["content"], "2 + 2 = 4.");
  std::string reasoning, content;
  for (auto& ch : chat_chunks(http(port_, "POST", "/v1/chat/completions", body + R"(,"stream":true})"))) {
    json d = ch["choices"][0]["delta"];
    if (d.contains("reasoning_content")) reasoning += d["reasoning_content"].get<std::string>();
    if (d.contains("content")) content += d["content"].get<std::string>();
  }
  EXPECT_EQ(reasoning, "\nThe user wants 2+2.\n");
  EXPECT_EQ(content, "2 + 2 = 4.");
  // enable_thinking false: no reasoning parser for the request, the text is the content.
  json off = http(port_, "POST", "/v1/chat/completions",
                  body + R"(,"chat_template_kwargs":{"enable_thinking":false}})").j()["choices"][0]["message"];
  EXPECT_EQ(off["content"], "<think>\nThe user wants 2+2.\n</think>\n\n2 + 2 = 4.");
  EXPECT_FALSE(off.contains("reasoning_content"));
}

TEST_F(ServeTest, ToolChoiceNoneAndErrors) {
  canned_ = {{"KW_CALL", "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {}}\n</tool_call>"}};
  start({}, /*tools=*/true);
  const std::string m = R"({"messages":[{"role":"user","content":"KW_CALL"}],)";
  json none = http(port_, "POST", "/v1/chat/completions", m + kWeatherTools + R"(,"tool_choice":"none"})").j()["choices"][0];
  EXPECT_EQ(none["message"]["content"], canned_[0].second);  // not parsed
  EXPECT_EQ(none["finish_reason"], "stop");
  EXPECT_FALSE(none["message"].contains("tool_calls"));
  json named = http(port_, "POST", "/v1/chat/completions",
                    m + kWeatherTools + R"(,"tool_choice":{"type":"function","function":{"name":"get_weather"}}})").j();
  EXPECT_EQ(named["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"], "{}");
  expect_error(http(port_, "POST", "/v1/chat/completions", m + R"("tool_choice":"required"})"), 400, "tool_choice");
  expect_error(http(port_, "POST", "/v1/chat/completions", m + R"("tools":[{"type":"function","function":{"name":"a b"}}]})"), 400, "tools");
  expect_error(http(port_, "POST", "/v1/chat/completions",
                    m + kWeatherTools + R"(,"tool_choice":{"type":"function","function":{"name":"nope"}}})"), 400, "tool_choice");
  // A multi-turn conversation with the OpenAI client's shapes (string arguments, tool results).
  Response turn = http(port_, "POST", "/v1/chat/completions", std::string(R"({"messages":[{"role":"user","content":"weather?"},)") +
      R"({"role":"assistant","content":null,"tool_calls":[{"id":"call_1","type":"function","function":{"name":"get_weather","arguments":"{\"city\": \"Oslo\"}"}}]},)" +
      R"({"role":"tool","tool_call_id":"call_1","content":"cold"}],)" + kWeatherTools + "}");
  EXPECT_EQ(turn.status, 200) << turn.body;
  EXPECT_EQ(turn.j()["choices"][0]["message"]["content"], "plain answer");
}

}  // namespace
