// The bridge between HTTP sessions (many threads, event-driven) and the engine (one thread).
//
// Sessions submit a group of engine requests (one per prompt x n) with a Mailbox; the engine
// thread adds them, runs step() while anything is unfinished, and pushes each RequestOutput into
// the group's mailbox, which wakes its session. cancel() aborts a group (client gone, timeout):
// Engine::abort frees its KV blocks at once. A request the engine failed arrives as an output
// with finish_reason "error" (and its message) in its own group only; the others run on.
#pragma once
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "engine/engine.h"

namespace gale::serve {

// What the loop needs from an engine; the real Engine is adapted in cmd_serve.cpp, tests use a fake.
class StepEngine {
 public:
  virtual ~StepEngine() = default;
  virtual uint64_t add_request(RequestParams p) = 0;  // throws gale::Error on invalid input
  virtual void abort(uint64_t id) = 0;
  virtual std::vector<RequestOutput> step() = 0;
  virtual bool has_unfinished() const = 0;
  virtual EngineStats stats() const = 0;
};

class Metrics;

// One group's inbox. The engine thread pushes; the session drains on its own executor.
class Mailbox {
 public:
  struct Event {
    enum Kind { Added, Output, Failed } kind;
    RequestOutput out;         // Output
    std::vector<uint64_t> ids; // Added: engine ids, in submission order
    std::string error;         // Failed: the engine's validation message
  };
  Mailbox() = default;
  explicit Mailbox(std::function<void()> notify) : notify_(std::move(notify)) {}
  // Only before the box is handed to the engine loop (the wake-up is read without the lock's order
  // otherwise); lets the callback hold a weak pointer to the box itself.
  void set_notify(std::function<void()> notify) { notify_ = std::move(notify); }
  void push(Event e);
  std::vector<Event> take();

 private:
  std::mutex mu_;
  std::vector<Event> events_;
  bool notified_ = false;        // a wake-up is pending; don't post another
  std::function<void()> notify_;
};

class EngineLoop {
 public:
  // capacity: sequences allowed in flight (running + waiting) before submit() refuses.
  EngineLoop(StepEngine& engine, Metrics& metrics, int64_t capacity);
  ~EngineLoop();
  void start();
  void stop();  // aborts everything left and joins the thread

  // False (and nothing queued) when the group would exceed the capacity: answer 429.
  bool submit(std::shared_ptr<Mailbox> box, std::vector<RequestParams> reqs,
              std::chrono::steady_clock::time_point arrival);
  // reason: the outcome counted in metrics ("abort" for a client gone, "timeout").
  void cancel(const std::shared_ptr<Mailbox>& box, const std::string& reason);
  int64_t in_flight() const { return in_flight_.load(); }
  EngineStats stats() const;  // last snapshot taken by the engine thread

 private:
  struct Group {
    std::shared_ptr<Mailbox> box;
    std::vector<uint64_t> ids;
    std::chrono::steady_clock::time_point arrival;
    int64_t unfinished = 0;
    std::string cancel_reason;
    std::string error;  // step() itself threw: its abort outputs become this error
  };
  struct PerRequest {
    std::shared_ptr<Group> group;
    std::chrono::steady_clock::time_point first_token;
    bool got_first = false;
  };
  struct Command {
    enum Kind { Submit, Cancel } kind;
    std::shared_ptr<Mailbox> box;
    std::vector<RequestParams> reqs;
    std::chrono::steady_clock::time_point arrival;
    int64_t n = 0;
    std::string reason;
  };
  void run();
  void handle(Command& c);
  void deliver(std::vector<RequestOutput>& outs);

  StepEngine& engine_;
  Metrics& metrics_;
  const int64_t capacity_;
  std::atomic<int64_t> in_flight_{0};
  std::thread thread_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Command> queue_;
  bool stop_ = false;
  EngineStats stats_;
  // Engine thread only.
  std::unordered_map<Mailbox*, std::shared_ptr<Group>> groups_;
  std::unordered_map<uint64_t, PerRequest> requests_;
  std::unordered_set<uint64_t> orphan_ids_;  // aborted because their group's submit failed
};

}  // namespace gale::serve
