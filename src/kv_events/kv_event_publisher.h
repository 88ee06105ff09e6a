// `--kv-events tcp://HOST:PORT`: the prefix cache's events on a ZeroMQ PUB socket, in vLLM's
// format (kv_event_encoder.h), for KV-aware routers (NVIDIA Dynamo's ZMQ relay, llm-d).
//
// Every message is three frames, as vLLM's publisher sends them: the topic, an 8-byte big-endian
// sequence number (0, 1, 2, ...: one per batch, so a subscriber sees a gap when it missed one),
// and the msgpack batch. The socket binds the endpoint; subscribers connect.
//
// The engine thread only queues (publish(): a short lock, no I/O); a thread of its own encodes
// and sends whatever is queued as one batch. The queue is bounded: events that find it full are
// dropped and counted (num_dropped(), in /metrics), as are those the socket refuses. A subscriber
// too slow for the socket's high-water mark loses messages inside ZeroMQ, uncounted here: the
// sequence numbers show it. vLLM's replay socket is not offered.
#pragma once
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "runtime/kv_cache_event.h"

namespace gale {

struct KvEventPublisherConfig {
  std::string endpoint;               // bound: tcp://HOST:PORT (PORT * = any free port), ipc://PATH, ...
  std::string topic;                  // first frame of every message ("" as vLLM's default)
  int64_t max_queued_events = 65536;  // the queue's bound
  int64_t max_batch_events = 1024;    // events per message at most
  int64_t data_parallel_rank = 0;
};

class KvEventPublisher {
 public:
  // Binds the socket; throws gale::Error naming the endpoint when it cannot (bad syntax, port taken).
  explicit KvEventPublisher(KvEventPublisherConfig cfg);
  // Sends what is queued (waiting at most a second for slow subscribers), then closes.
  ~KvEventPublisher();
  KvEventPublisher(const KvEventPublisher&) = delete;
  KvEventPublisher& operator=(const KvEventPublisher&) = delete;

  // Queues one event (any thread; never waits for the network).
  void publish(KvCacheEvent&& e);
  // publish() as an EngineConfig::kv_event_sink; the publisher must outlive the engine.
  KvCacheEventSink sink() {
    return [this](KvCacheEvent&& e) { publish(std::move(e)); };
  }
  // The endpoint as bound (with the port chosen for '*').
  const std::string& endpoint() const { return bound_; }
  int64_t num_sent() const { return sent_.load(); }        // events handed to the socket
  int64_t num_dropped() const { return dropped_.load(); }  // queue full or refused by the socket

 private:
  void run();
  void send_batch(const std::vector<KvCacheEvent>& events);

  KvEventPublisherConfig cfg_;
  std::string bound_;
  void* ctx_ = nullptr;
  void* sock_ = nullptr;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<KvCacheEvent> queue_;
  bool stop_ = false;
  uint64_t seq_ = 0;
  std::atomic<int64_t> sent_{0}, dropped_{0};
  std::thread thread_;
};

}  // namespace gale
