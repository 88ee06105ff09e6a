// The HTTP side of `gale serve`: Beast parses requests; responses (including the SSE streams:
// chunked for HTTP/1.1, close-delimited for HTTP/1.0, which has no chunked encoding) are
// written as raw bytes through one write queue per connection. Past --max-connections a new
// connection is answered 503 and closed without a session.
#include <utility>  // Boost 1.74's awaitable.hpp uses std::exchange without including it

#include <boost/asio.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <deque>
#include <thread>
#include <unordered_map>

#include "core/error.h"
#include "serve/metrics.h"
#include "serve/server.h"

namespace gale::serve {

namespace beast = boost::beast;
namespace http = beast::http;
namespace net = boost::asio;
using tcp = net::ip::tcp;
using clock = std::chrono::steady_clock;
using ojson = nlohmann::ordered_json;

struct Server::Impl {
  Impl(StepEngine& e, const Tokenizer* t, const ChatTemplate* ct, ModelInfo i, ServerConfig c)
      : tok(t), tmpl(ct), info(std::move(i)), cfg(std::move(c)), loop(e, metrics, cfg.max_in_flight),
        acceptor(ioc), signals(ioc), drain_timer(ioc), retry_timer(ioc) {}

  void do_accept();
  void begin_drain();
  void poll_drain();

  const Tokenizer* tok;
  const ChatTemplate* tmpl;
  ModelInfo info;
  ServerConfig cfg;
  Metrics metrics;
  EngineLoop loop;
  // Declared before ioc: the sessions its destructor drops still touch them.
  std::atomic<bool> draining{false};
  std::atomic<int64_t> connections{0};
  net::io_context ioc;
  tcp::acceptor acceptor;
  net::signal_set signals;
  net::steady_timer drain_timer, retry_timer;
  clock::time_point drain_deadline;
  int bound_port = 0;
};

namespace {

class Session : public std::enable_shared_from_this<Session> {
 public:
  Session(tcp::socket s, Server::Impl& srv) : srv_(srv), stream_(std::move(s)), timeout_(stream_.get_executor()) {
    ++srv_.connections;
    beast::error_code ec;
    stream_.socket().set_option(tcp::no_delay(true), ec);
  }
  ~Session() { --srv_.connections; }

  void start() {
    net::dispatch(stream_.get_executor(), [self = shared_from_this()] { self->do_read(); });
  }

 private:
  // ---- reading requests

  void do_read() {
    parser_.emplace();
    parser_->body_limit(uint64_t(srv_.cfg.max_body_bytes));
    parser_->header_limit(64 * 1024);
    stream_.expires_after(std::chrono::milliseconds(int64_t(srv_.cfg.read_timeout_s * 1000)));
    http::async_read(stream_, buf_, *parser_, [self = shared_from_this()](beast::error_code ec, size_t) { self->on_read(ec); });
  }

  void on_read(beast::error_code ec) {
    if (ec == http::error::end_of_stream || ec == net::error::operation_aborted || ec == beast::error::timeout ||
        ec == net::error::connection_reset || ec == net::error::eof) {
      return close();
    }
    stream_.expires_never();
    if (ec == http::error::body_limit) {
      keep_alive_ = false;
      return send_error(ApiError(413, "the request body exceeds the limit of " + std::to_string(srv_.cfg.max_body_bytes) + " bytes"));
    }
    if (ec == http::error::header_limit) {
      keep_alive_ = false;
      return send_error(ApiError(431, "the request headers are too large"));
    }
    if (ec) {
      keep_alive_ = false;
      return send_error(ApiError(400, std::string("malformed HTTP request: ") + ec.message()));
    }
    req_ = parser_->release();
    keep_alive_ = req_.keep_alive();
    http10_ = req_.version() < 11;
    started_ = clock::now();
    try {
      route();
    } catch (const ApiError& e) {
      send_error(e);
    } catch (const Error& e) {
      send_error(ApiError(400, e.what()));
    } catch (const std::exception& e) {
      send_error(ApiError(500, std::string("internal error: ") + e.what()));
    }
  }

  // ---- routing

  void route() {
    std::string_view target(req_.target().data(), req_.target().size());
    std::string path(target.substr(0, target.find('?')));
    const auto method = req_.method();
    auto need = [&](http::verb v) {
      if (method != v)
        throw ApiError(405, "method " + std::string(req_.method_string()) + " is not allowed on " + path, "", "method_not_allowed");
    };
    if (path == "/health") {
      need(http::verb::get);
      if (srv_.draining) return send(503, "application/json", error_body(ApiError(503, "the server is shutting down")));
      return send(200, "application/json", "{}");
    }
    static const char* known[] = {"/metrics", "/v1/models", "/v1/completions", "/v1/chat/completions", "/tokenize",
                                  "/detokenize"};
    bool is_known = false;
    for (auto* k : known) is_known |= path == k;
    if (!is_known) throw ApiError(404, "no route for " + path, "", "not_found");
    if (!srv_.cfg.api_key.empty()) {
      auto it = req_.find(http::field::authorization);
      std::string_view h = it == req_.end() ? std::string_view{} : std::string_view(it->value().data(), it->value().size());
      if (!bearer_matches(h, srv_.cfg.api_key))
        throw ApiError(401, "Incorrect or missing API key: pass 'Authorization: Bearer KEY'", "", "invalid_api_key");
    }
    if (path == "/metrics") {
      need(http::verb::get);
      EngineStats st = srv_.loop.stats();
      if (srv_.cfg.live_stats) srv_.cfg.live_stats(st);
      return send(200, "text/plain; version=0.0.4; charset=utf-8",
                  srv_.metrics.render(st, srv_.loop.in_flight(), srv_.connections.load()));
    }
    if (path == "/v1/models") {
      need(http::verb::get);
      return send(200, "application/json", json_text(models_list(srv_.info)));
    }
    need(http::verb::post);
    ojson body = parse_json_body(req_.body());
    if (path == "/tokenize") return send(200, "application/json", json_text(tokenize(body, srv_.info, srv_.tok, srv_.tmpl)));
    if (path == "/detokenize") return send(200, "application/json", json_text(detokenize(body, srv_.info, srv_.tok)));
    if (srv_.draining) throw ApiError(503, "the server is shutting down");
    api_ = std::make_unique<ApiRequest>(path == "/v1/completions"
                                            ? parse_completion_request(body, srv_.info, srv_.tok)
                                            : parse_chat_request(body, srv_.info, srv_.tok, srv_.tmpl));
    begin_generation();
  }

  // ---- generation

  void begin_generation() {
    std::weak_ptr<Session> weak = shared_from_this();
    auto ex = stream_.get_executor();
    // The wake-up may arrive after this request ended (a timeout or an error answered it and
    // box_ was reset or replaced by the next request's): it then belongs to no one and is dropped.
    auto box = std::make_shared<Mailbox>();
    std::weak_ptr<Mailbox> weak_box = box;
    box->set_notify([weak, ex, weak_box] {
      net::post(ex, [weak, weak_box] {
        auto s = weak.lock();
        auto b = weak_box.lock();
        if (s && b && s->box_ == b) s->on_events();
      });
    });
    box_ = std::move(box);
    auto reqs = api_->engine_requests();
    choices_.assign(reqs.size(), ChoiceState{});
    offsets_.assign(reqs.size(), 0);
    unfinished_ = int64_t(reqs.size());
    rb_ = std::make_unique<ResponseBuilder>(*api_, srv_.info, srv_.tok);
    if (!srv_.loop.submit(box_, std::move(reqs), started_)) {
      box_.reset();
      srv_.metrics.count_request("rejected");
      throw ApiError(429, "the server is at capacity (" + std::to_string(srv_.cfg.max_in_flight) +
                              " sequences in flight); retry later", "", "server_busy");
    }
    in_generation_ = true;
    ++generation_;
    timeout_.expires_after(std::chrono::milliseconds(int64_t(srv_.cfg.request_timeout_s * 1000)));
    timeout_.async_wait([self = shared_from_this(), g = generation_](beast::error_code ec) {
      if (!ec && self->in_generation_ && self->generation_ == g) self->on_timeout();
    });
    watch_disconnect();
  }

  // A client that goes away while we generate: wait for readability, then peek. EOF or an error
  // means it is gone (abort, free its KV blocks); bytes mean a pipelined request (stop watching).
  void watch_disconnect() {
    stream_.socket().async_wait(tcp::socket::wait_read, [self = shared_from_this(), g = generation_](beast::error_code ec) {
      if (!self->in_generation_ || self->generation_ != g || ec == net::error::operation_aborted) return;
      if (ec) return self->client_gone();
      char c;
      ssize_t r = ::recv(self->stream_.socket().native_handle(), &c, 1, MSG_PEEK | MSG_DONTWAIT);
      if (r == 0 || (r < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)) return self->client_gone();
      if (r < 0) self->watch_disconnect();
    });
  }

  void client_gone() {
    if (in_generation_) {
      in_generation_ = false;
      srv_.loop.cancel(box_, "abort");
      timeout_.cancel();
    }
    close();
  }

  void on_timeout() {
    in_generation_ = false;
    srv_.loop.cancel(box_, "timeout");
    char secs[32];
    std::snprintf(secs, sizeof secs, "%g", srv_.cfg.request_timeout_s);
    end_with_error(ApiError(408, std::string("the request did not finish within ") + secs + " s", "", "timeout"));
  }

  // One of the request's sequences failed in the engine (the others of the server run on):
  // the rest of this request is aborted, and the client gets the error.
  void on_failed_output(const RequestOutput& o) {
    in_generation_ = false;
    timeout_.cancel();
    srv_.loop.cancel(box_, "error");
    end_with_error(ApiError(500, "the request failed: " + o.error, "", "generation_failed"));
  }

  // Before the stream started: an error response of its own. After: the status line already
  // said 200, so an SSE error event (OpenAI clients raise it) and [DONE] end the stream.
  void end_with_error(const ApiError& e) {
    if (!stream_started_) return send_error(e);
    srv_.metrics.count_http(e.status);
    queue_chunk("data: " + error_body(e) + "\n\n");
    queue_chunk("data: [DONE]\n\n");
    end_stream();
  }

  void on_events() {
    for (auto& ev : box_->take()) {
      if (!in_generation_) return;
      switch (ev.kind) {
        case Mailbox::Event::Failed:
          in_generation_ = false;
          timeout_.cancel();
          return send_error(ApiError(400, ev.error));
        case Mailbox::Event::Added:
          for (size_t i = 0; i < ev.ids.size(); ++i) index_of_[ev.ids[i]] = int(i);
          if (api_->stream) start_stream();
          break;
        case Mailbox::Event::Output:
          on_output(ev.out);
          break;
      }
    }
  }

  void start_stream() {
    stream_started_ = true;
    srv_.metrics.count_http(200);
    // HTTP/1.0 has no chunked encoding: the stream ends when the connection closes.
    chunked_ = !http10_;
    if (!chunked_) keep_alive_ = false;
    queue_raw(std::string("HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n") +
              (chunked_ ? "Transfer-Encoding: chunked\r\n" : "") + "Connection: " +
              (want_keep_alive() ? "keep-alive" : "close") + "\r\n\r\n");
    for (size_t i = 0; i < choices_.size(); ++i) {
      if (api_->endpoint == Endpoint::Chat) {
        queue_chunk(sse_event(rb_->chat_role_chunk(int(i))));
      } else if (api_->echo) {
        const std::string& p = api_->prompt_texts[i / size_t(api_->n)];
        queue_chunk(sse_event(rb_->chunk(int(i), p, {}, {}, "", 0)));
        offsets_[i] = int64_t(p.size());
      }
    }
  }

  void on_output(RequestOutput& o) {
    auto it = index_of_.find(o.id);
    if (it == index_of_.end()) return;
    const int idx = it->second;
    ChoiceState& c = choices_[size_t(idx)];
    c.prompt_tokens = o.prompt_tokens;
    c.completion_tokens = o.completion_tokens;
    c.cached_tokens = o.cached_prompt_tokens;
    if (api_->stream && (!o.new_text.empty() || !o.logprobs.empty())) {
      if (rb_->parses_output())  // tools / reasoning: the parsers decide what goes out now
        for (auto& j : rb_->parsed_chunks(idx, o.new_text, o.logprobs, "")) queue_chunk(sse_event(j));
      else
        queue_chunk(sse_event(rb_->chunk(idx, o.new_text, o.logprobs, o.new_ids, "", offsets_[size_t(idx)])));
      offsets_[size_t(idx)] += int64_t(o.new_text.size());
    }
    c.text += o.new_text;
    c.ids.insert(c.ids.end(), o.new_ids.begin(), o.new_ids.end());
    for (auto& l : o.logprobs) c.logprobs.push_back(std::move(l));
    if (!o.finished) return;
    if (o.finish_reason == "error") return on_failed_output(o);
    c.finished = true;
    c.finish_reason = o.finish_reason;
    if (api_->stream && rb_->parses_output())
      for (auto& j : rb_->parsed_chunks(idx, "", {}, o.finish_reason)) queue_chunk(sse_event(j));
    else if (api_->stream)
      queue_chunk(sse_event(rb_->chunk(idx, "", {}, {}, o.finish_reason, 0)));
    if (--unfinished_ > 0) return;
    in_generation_ = false;
    timeout_.cancel();
    if (api_->stream) {
      if (api_->include_usage) queue_chunk(sse_event(rb_->usage_chunk(choices_)));
      queue_chunk("data: [DONE]\n\n");
      end_stream();
    } else {
      send(200, "application/json", json_text(rb_->full_response(choices_)));
    }
  }

  // ---- writing: one queue of raw bytes per connection; pending pieces go out in one write

  bool want_keep_alive() const { return keep_alive_ && !srv_.draining; }

  void send_error(const ApiError& e) {
    send(e.status, "application/json", error_body(e));
  }

  void send(int status, const char* content_type, const std::string& body) {
    srv_.metrics.count_http(status);
    if (srv_.cfg.log_requests) log(status);
    const bool ka = want_keep_alive();
    std::string head = "HTTP/1.1 " + std::to_string(status) + " " +
                       std::string(http::obsolete_reason(http::status(unsigned(status)))) + "\r\nContent-Type: " +
                       content_type + "\r\nContent-Length: " + std::to_string(body.size()) + "\r\nConnection: " +
                       (ka ? "keep-alive" : "close") + "\r\n";
    if (status == 401) head += "WWW-Authenticate: Bearer\r\n";
    queue_raw(head + "\r\n" + body);
    finish_response(ka);
  }

  void log(int status) {
    double ms = std::chrono::duration<double, std::milli>(clock::now() - started_).count();
    std::fprintf(stderr, "gale serve: %s %s %d %.1f ms\n", std::string(req_.method_string()).c_str(),
                 std::string(req_.target()).c_str(), status, ms);
  }

  // One piece of the stream: a chunk, or the bytes themselves in a close-delimited stream.
  void queue_chunk(const std::string& data) {
    if (!chunked_) return queue_raw(data);
    char hex[32];
    std::snprintf(hex, sizeof hex, "%zx\r\n", data.size());
    queue_raw(hex + data + "\r\n");
  }

  void end_stream() {
    if (srv_.cfg.log_requests) log(200);
    if (chunked_) queue_raw("0\r\n\r\n");
    finish_response(chunked_ && want_keep_alive());
  }

  // After the queued bytes are written: read the next request, or close.
  void finish_response(bool keep_alive) {
    response_done_ = true;
    next_keep_alive_ = keep_alive;
    if (!writing_) after_response();
  }

  void after_response() {
    response_done_ = false;
    stream_started_ = false;
    api_.reset();
    rb_.reset();
    box_.reset();
    index_of_.clear();
    if (next_keep_alive_) do_read();
    else close();
  }

  void queue_raw(std::string bytes) {
    if (closed_) return;
    pending_ += bytes;
    if (!writing_) write_pending();
  }

  void write_pending() {
    writing_ = true;
    inflight_.swap(pending_);
    pending_.clear();
    net::async_write(stream_, net::buffer(inflight_), [self = shared_from_this()](beast::error_code ec, size_t) {
      self->inflight_.clear();
      if (ec) {
        self->writing_ = false;
        return self->client_gone();
      }
      if (!self->pending_.empty()) return self->write_pending();
      self->writing_ = false;
      if (self->response_done_) self->after_response();
    });
  }

  void close() {
    if (closed_) return;
    closed_ = true;
    beast::error_code ec;
    stream_.socket().shutdown(tcp::socket::shutdown_both, ec);
    stream_.socket().close(ec);
    timeout_.cancel();
  }

  Server::Impl& srv_;
  beast::tcp_stream stream_;
  beast::flat_buffer buf_;
  std::optional<http::request_parser<http::string_body>> parser_;
  http::request<http::string_body> req_;
  bool keep_alive_ = true, next_keep_alive_ = true;
  bool http10_ = false;                // the request said HTTP/1.0
  bool chunked_ = true;                // the stream being written is chunked (HTTP/1.1)
  clock::time_point started_;
  // The request being generated.
  std::unique_ptr<ApiRequest> api_;
  std::unique_ptr<ResponseBuilder> rb_;
  std::shared_ptr<Mailbox> box_;
  std::vector<ChoiceState> choices_;
  std::vector<int64_t> offsets_;       // text offset of each streamed choice (logprobs text_offset)
  std::unordered_map<uint64_t, int> index_of_;
  int64_t unfinished_ = 0;
  bool in_generation_ = false, stream_started_ = false;
  uint64_t generation_ = 0;            // tells stale timer/watch callbacks apart
  net::steady_timer timeout_;
  // Writing.
  std::string pending_, inflight_;
  bool writing_ = false, response_done_ = false, closed_ = false;
};

// A connection past --max-connections: answered 503 at once and closed, without a Session (no
// parser, no buffers). Its request is read and dropped after the answer, for up to a second, so
// that closing with unread bytes does not reset the connection before the client read the 503.
class Refusal : public std::enable_shared_from_this<Refusal> {
 public:
  Refusal(tcp::socket s, std::string response) : sock_(std::move(s)), timer_(sock_.get_executor()), out_(std::move(response)) {}

  void start() {
    timer_.expires_after(std::chrono::seconds(1));
    timer_.async_wait([self = shared_from_this()](beast::error_code ec) {
      if (!ec) self->close();
    });
    net::async_write(sock_, net::buffer(out_), [self = shared_from_this()](beast::error_code ec, size_t) {
      if (ec) return self->close();
      beast::error_code ignored;
      self->sock_.shutdown(tcp::socket::shutdown_send, ignored);
      self->drain();
    });
  }

 private:
  void drain() {
    sock_.async_read_some(net::buffer(buf_), [self = shared_from_this()](beast::error_code ec, size_t) {
      if (ec) return self->close();  // EOF: the client has the answer and closed
      self->drain();
    });
  }
  void close() {
    beast::error_code ignored;
    timer_.cancel();
    sock_.close(ignored);
  }

  tcp::socket sock_;
  net::steady_timer timer_;
  std::string out_;
  char buf_[4096];
};

std::string refusal_response(int64_t max_connections) {
  const std::string body = error_body(ApiError(503, "the server has too many open connections (" +
                                                        std::to_string(max_connections) + "); retry later",
                                               "", "too_many_connections"));
  return "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nContent-Length: " +
         std::to_string(body.size()) + "\r\nConnection: close\r\nRetry-After: 1\r\n\r\n" + body;
}

}  // namespace

void Server::Impl::do_accept() {
  acceptor.async_accept(net::make_strand(ioc), [this](beast::error_code ec, tcp::socket s) {
    if (ec == net::error::operation_aborted || !acceptor.is_open()) return;
    if (ec) {  // out of descriptors, ...: back off a little rather than spin
      retry_timer.expires_after(std::chrono::milliseconds(50));
      retry_timer.async_wait([this](beast::error_code e) {
        if (!e && acceptor.is_open()) do_accept();
      });
      return;
    }
    if (connections.load() >= cfg.max_connections) {
      metrics.count_http(503);
      std::make_shared<Refusal>(std::move(s), refusal_response(cfg.max_connections))->start();
    } else {
      std::make_shared<Session>(std::move(s), *this)->start();
    }
    do_accept();
  });
}

void Server::Impl::begin_drain() {
  if (draining.exchange(true)) return;
  std::fprintf(stderr, "gale serve: draining (%lld sequences in flight, up to %.0f s)\n", (long long)loop.in_flight(),
               cfg.drain_timeout_s);
  beast::error_code ec;
  acceptor.close(ec);
  retry_timer.cancel();
  drain_deadline = clock::now() + std::chrono::milliseconds(int64_t(cfg.drain_timeout_s * 1000));
  poll_drain();
}

void Server::Impl::poll_drain() {
  // Done when nothing is in flight and the last responses had a moment to flush.
  if (loop.in_flight() == 0 || clock::now() >= drain_deadline) {
    drain_timer.expires_after(std::chrono::milliseconds(100));
    drain_timer.async_wait([this](beast::error_code) { ioc.stop(); });
    return;
  }
  drain_timer.expires_after(std::chrono::milliseconds(50));
  drain_timer.async_wait([this](beast::error_code ec) {
    if (!ec) poll_drain();
  });
}

Server::Server(StepEngine& engine, const Tokenizer* tok, const ChatTemplate* tmpl, ModelInfo info, ServerConfig cfg)
    : impl_(std::make_unique<Impl>(engine, tok, tmpl, std::move(info), std::move(cfg))) {}

Server::~Server() {
  impl_->ioc.stop();
  impl_->loop.stop();
}

void Server::start() {
  Impl& s = *impl_;
  // Many concurrent streams need many descriptors: raise the soft limit to the hard one.
  rlimit rl{};
  if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
  }
  beast::error_code ec;
  auto addr = net::ip::make_address(s.cfg.host, ec);
  if (ec) throw Error("--host: not an IP address: " + s.cfg.host);
  tcp::endpoint ep(addr, uint16_t(s.cfg.port));
  s.acceptor.open(ep.protocol(), ec);
  if (!ec) s.acceptor.set_option(net::socket_base::reuse_address(true), ec);
  if (!ec) s.acceptor.bind(ep, ec);
  if (!ec) s.acceptor.listen(net::socket_base::max_listen_connections, ec);
  if (ec) throw Error("cannot listen on " + s.cfg.host + ":" + std::to_string(s.cfg.port) + ": " + ec.message());
  s.bound_port = s.acceptor.local_endpoint().port();
  s.loop.start();
  s.do_accept();
}

int Server::port() const { return impl_->bound_port; }

void Server::run(bool handle_signals) {
  Impl& s = *impl_;
  if (handle_signals) {
    s.signals.add(SIGTERM);
    s.signals.add(SIGINT);
    s.signals.async_wait([&s](beast::error_code ec, int) {
      if (!ec) s.begin_drain();
    });
  }
  std::vector<std::thread> extra;
  for (int i = 1; i < s.cfg.io_threads; ++i) extra.emplace_back([&s] { s.ioc.run(); });
  s.ioc.run();
  for (auto& t : extra) t.join();
  s.loop.stop();
}

void Server::serve_connection(int fd) {
  Impl& s = *impl_;
  net::post(s.ioc, [&s, fd] {
    tcp::socket sock(net::make_strand(s.ioc));
    beast::error_code ec;
    // The protocol only tells asio the address family; a socketpair end works the same for
    // everything a session does (no_delay simply fails on it, as the session ignores).
    sock.assign(tcp::v4(), fd, ec);
    if (ec) {
      ::close(fd);
      return;
    }
    std::make_shared<Session>(std::move(sock), s)->start();
  });
}

void Server::shutdown() {
  net::post(impl_->ioc, [this] { impl_->begin_drain(); });
}

}  // namespace gale::serve
