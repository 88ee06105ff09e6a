// `gale serve`: an OpenAI-compatible HTTP server over one engine.
//
// Event-driven (Boost.Asio/Beast, kept out of this header): io threads run every connection;
// one engine thread runs Engine::step(); EngineLoop is the thread-safe queue between them.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "serve/engine_loop.h"
#include "serve/openai_api.h"

namespace gale {
class Tokenizer;
class ChatTemplate;
}  // namespace gale

namespace gale::serve {

struct ServerConfig {
  std::string host = "127.0.0.1";
  int port = 8000;                      // 0 = any free port (see Server::port())
  std::string api_key;                  // non-empty: "Authorization: Bearer KEY" on all but /health
  int64_t max_body_bytes = 8 << 20;     // larger bodies get 413
  int64_t max_in_flight = 1024;         // sequences accepted and unfinished; beyond -> 429
  int64_t max_connections = 1024;       // open connections; one more is answered 503 and closed
  double request_timeout_s = 600;       // a request running longer is aborted (408 / error event)
  double read_timeout_s = 60;           // to receive a whole request (slow clients are closed)
  double drain_timeout_s = 30;          // SIGTERM: finish in-flight requests up to this, then exit
  int io_threads = 1;
  bool log_requests = false;
  // Called when /metrics is rendered, on an HTTP thread (so it must be thread-safe), over the
  // engine thread's last snapshot: figures that move between steps (the --kv-events publisher's
  // counters, which its own thread advances). Null: the snapshot as it is.
  std::function<void(EngineStats&)> live_stats;
};

class Server {
 public:
  // tok and tmpl may be null (ids only / no chat). The engine, tokenizer and template must
  // outlive the server.
  Server(StepEngine& engine, const Tokenizer* tok, const ChatTemplate* tmpl, ModelInfo info, ServerConfig cfg);
  ~Server();
  void start();          // binds and listens; throws gale::Error when it can't
  int port() const;      // the bound port
  // Blocks until the server has shut down (after a SIGTERM/SIGINT drain, or shutdown()).
  // handle_signals: install SIGTERM/SIGINT handlers (the CLI does; tests don't).
  void run(bool handle_signals);
  void shutdown();       // begins the drain from any thread
  // Serves an already-connected stream socket (TCP, or one end of an AF_UNIX socketpair) as an
  // accepted connection, outside --max-connections; takes ownership of fd. The seam through
  // which tests/fuzz/fuzz_http.cpp feeds raw bytes to the HTTP session. Needs start().
  void serve_connection(int fd);

  struct Impl;  // public so the connection code in http_server.cpp can name it

 private:
  std::unique_ptr<Impl> impl_;
};

}  // namespace gale::serve
