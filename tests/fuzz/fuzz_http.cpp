// libFuzzer: raw bytes as one client connection to `gale serve`'s HTTP session (Beast's parser,
// routing, the OpenAI body parser and validator, generation over a fake engine, SSE framing).
// The bytes go in through one end of a socketpair handed to Server::serve_connection; the
// write side is then closed, and the harness reads until the server closes its end. Error
// responses are fine; crashes, sanitizer reports, hangs (libFuzzer's -timeout) and leaks are not.
#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <thread>

#include "fake_engine.h"
#include "serve/server.h"
#include "tokenizer/chat_template.h"
#include "tokenizer/tokenizer.h"

namespace {

using namespace gale;

// One server for the whole run (starting one per input would dominate the time).
struct Harness {
  std::unique_ptr<Tokenizer> tok = Tokenizer::load(std::string(GALE_SOURCE_DIR) + "/models/default");
  test::FakeEngine engine{tok.get()};
  ChatTemplate tmpl = ChatTemplate::from_string(
      "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}\n{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}");
  std::unique_ptr<serve::Server> server;
  std::thread io;

  Harness() {
    serve::ModelInfo info;
    info.name = "fake";
    info.max_model_len = 64;
    info.vocab_size = int64_t(tok->vocab_size());
    serve::ServerConfig cfg;
    cfg.port = 0;
    cfg.max_body_bytes = 1 << 20;
    cfg.read_timeout_s = 5;
    cfg.request_timeout_s = 5;
    server = std::make_unique<serve::Server>(engine, tok.get(), &tmpl, info, cfg);
    server->start();
    io = std::thread([this] { server->run(false); });
  }
};

// Writes the input and reads the answer at the same time (a large answer must not block the
// server while the input is still being written), until the server closes.
void exchange(int fd, const uint8_t* data, size_t size) {
  fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
  size_t off = 0;
  bool write_open = true;
  char buf[65536];
  while (true) {
    if (write_open && off == size) {
      ::shutdown(fd, SHUT_WR);  // the request ends here: EOF for the server
      write_open = false;
    }
    pollfd p{fd, short(POLLIN | (write_open ? POLLOUT : 0)), 0};
    if (::poll(&p, 1, -1) < 0) continue;
    if (p.revents & POLLOUT) {
      ssize_t n = ::send(fd, data + off, size - off, MSG_NOSIGNAL);
      if (n > 0) off += size_t(n);
      else if (n < 0 && errno != EAGAIN) write_open = false;  // the server closed early
    }
    if (p.revents & (POLLIN | POLLHUP | POLLERR)) {
      ssize_t n = ::recv(fd, buf, sizeof buf, 0);
      if (n == 0 || (n < 0 && errno != EAGAIN)) return;
    }
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static Harness* h = new Harness;  // never destroyed: its threads run until the process exits
  int sv[2];
  if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) return 0;
  h->server->serve_connection(sv[0]);
  exchange(sv[1], data, size);
  ::close(sv[1]);
  return 0;
}
