#include "kv_events/kv_event_publisher.h"

#ifdef GALE_HAVE_ZMQ
#include <zmq.h>
#endif

#include <algorithm>
#include <chrono>
#include <vector>

#include "core/error.h"
#include "kv_events/kv_event_encoder.h"

namespace gale {

#ifdef GALE_HAVE_ZMQ

KvEventPublisher::KvEventPublisher(KvEventPublisherConfig cfg) : cfg_(std::move(cfg)) {
  if (cfg_.max_queued_events <= 0 || cfg_.max_batch_events <= 0) throw Error("KV events: queue bounds must be > 0");
  ctx_ = zmq_ctx_new();
  if (!ctx_) throw Error(std::string("KV events: cannot start ZeroMQ: ") + zmq_strerror(zmq_errno()));
  sock_ = zmq_socket(ctx_, ZMQ_PUB);
  // Closing waits at most this long for queued messages to reach slow subscribers.
  int linger_ms = 1000;
  if (!sock_ || zmq_setsockopt(sock_, ZMQ_LINGER, &linger_ms, sizeof linger_ms) != 0 ||
      zmq_bind(sock_, cfg_.endpoint.c_str()) != 0) {
    std::string why = zmq_strerror(zmq_errno());
    if (sock_) zmq_close(sock_);
    zmq_ctx_term(ctx_);
    throw Error("--kv-events: cannot bind '" + cfg_.endpoint + "': " + why +
                " (expected tcp://HOST:PORT, e.g. tcp://127.0.0.1:5557)");
  }
  char last[256] = {};
  size_t len = sizeof last;
  bound_ = zmq_getsockopt(sock_, ZMQ_LAST_ENDPOINT, last, &len) == 0 ? std::string(last) : cfg_.endpoint;
  thread_ = std::thread([this] { run(); });
}

KvEventPublisher::~KvEventPublisher() {
  {
    std::lock_guard lk(mu_);
    stop_ = true;
  }
  cv_.notify_one();
  thread_.join();
  zmq_close(sock_);
  zmq_ctx_term(ctx_);
}

void KvEventPublisher::publish(KvCacheEvent&& e) {
  {
    std::lock_guard lk(mu_);
    if (int64_t(queue_.size()) >= cfg_.max_queued_events) {
      dropped_.fetch_add(1);
      return;
    }
    queue_.push_back(std::move(e));
  }
  cv_.notify_one();
}

void KvEventPublisher::run() {
  std::vector<KvCacheEvent> batch;
  for (;;) {
    {
      std::unique_lock lk(mu_);
      cv_.wait(lk, [&] { return stop_ || !queue_.empty(); });
      if (queue_.empty()) return;  // stop_, and everything sent
      const size_t n = std::min(queue_.size(), size_t(cfg_.max_batch_events));
      for (size_t i = 0; i < n; ++i) batch.push_back(std::move(queue_[i]));
      queue_.erase(queue_.begin(), queue_.begin() + std::ptrdiff_t(n));
    }
    send_batch(batch);
    batch.clear();
  }
}

void KvEventPublisher::send_batch(const std::vector<KvCacheEvent>& events) {
  const double ts = std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
  const std::string payload = encode_kv_event_batch(ts, events, cfg_.data_parallel_rank);
  unsigned char seq[8];
  for (int i = 0; i < 8; ++i) seq[i] = uint8_t(seq_ >> (8 * (7 - i)));
  // Counted before the send, so that a subscriber that has the batch never reads a count
  // without it in /metrics; taken back if the socket refuses it.
  const int64_t n = int64_t(events.size());
  sent_.fetch_add(n);
  // A PUB socket never blocks (it drops for subscribers past their high-water mark); DONTWAIT
  // makes sure of it.
  const bool ok = zmq_send(sock_, cfg_.topic.data(), cfg_.topic.size(), ZMQ_SNDMORE | ZMQ_DONTWAIT) >= 0 &&
                  zmq_send(sock_, seq, sizeof seq, ZMQ_SNDMORE | ZMQ_DONTWAIT) >= 0 &&
                  zmq_send(sock_, payload.data(), payload.size(), ZMQ_DONTWAIT) >= 0;
  ++seq_;  // a refused batch leaves a gap: the subscriber can tell
  if (!ok) sent_.fetch_sub(n), dropped_.fetch_add(n);
}

#else  // built without libzmq

KvEventPublisher::KvEventPublisher(KvEventPublisherConfig cfg) : cfg_(std::move(cfg)) {
  throw Error("--kv-events: this gale was built without ZeroMQ (install libzmq3-dev and rebuild)");
}
KvEventPublisher::~KvEventPublisher() = default;
void KvEventPublisher::publish(KvCacheEvent&&) {}
void KvEventPublisher::run() {}
void KvEventPublisher::send_batch(const std::vector<KvCacheEvent>&) {}

#endif

}  // namespace gale
