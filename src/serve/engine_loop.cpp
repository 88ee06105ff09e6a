#include "serve/engine_loop.h"

#include <cstdio>
#include <utility>

#include "core/error.h"
#include "serve/metrics.h"

namespace gale::serve {

using clock = std::chrono::steady_clock;

void Mailbox::push(Event e) {
  bool wake = false;
  {
    std::lock_guard lk(mu_);
    events_.push_back(std::move(e));
    if (!notified_) notified_ = wake = true;
  }
  if (wake && notify_) notify_();
}

std::vector<Mailbox::Event> Mailbox::take() {
  std::lock_guard lk(mu_);
  notified_ = false;
  return std::exchange(events_, {});
}

EngineLoop::EngineLoop(StepEngine& engine, Metrics& metrics, int64_t capacity)
    : engine_(engine), metrics_(metrics), capacity_(capacity) {}

EngineLoop::~EngineLoop() { stop(); }

void EngineLoop::start() {
  stats_ = engine_.stats();
  thread_ = std::thread([this] { run(); });
}

void EngineLoop::stop() {
  {
    std::lock_guard lk(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

bool EngineLoop::submit(std::shared_ptr<Mailbox> box, std::vector<RequestParams> reqs, clock::time_point arrival) {
  const int64_t n = int64_t(reqs.size());
  int64_t cur = in_flight_.load();
  do {
    if (cur + n > capacity_) return false;
  } while (!in_flight_.compare_exchange_weak(cur, cur + n));
  {
    std::lock_guard lk(mu_);
    queue_.push_back({Command::Submit, std::move(box), std::move(reqs), arrival, n, {}});
  }
  cv_.notify_one();
  return true;
}

void EngineLoop::cancel(const std::shared_ptr<Mailbox>& box, const std::string& reason) {
  {
    std::lock_guard lk(mu_);
    queue_.push_back({Command::Cancel, box, {}, {}, 0, reason});
  }
  cv_.notify_one();
}

EngineStats EngineLoop::stats() const {
  std::lock_guard lk(mu_);
  return stats_;
}

void EngineLoop::handle(Command& c) {
  if (c.kind == Command::Cancel) {
    auto it = groups_.find(c.box.get());
    if (it == groups_.end()) return;
    it->second->cancel_reason = c.reason;
    for (uint64_t id : it->second->ids)
      if (requests_.count(id)) engine_.abort(id);
    return;
  }
  auto g = std::make_shared<Group>();
  g->box = c.box;
  g->arrival = c.arrival;
  try {
    for (auto& r : c.reqs) g->ids.push_back(engine_.add_request(std::move(r)));
  } catch (const std::exception& e) {
    // The engine rejected one of them: take back the ones already queued (their abort outputs
    // are dropped: the group is not registered) and report the message.
    for (uint64_t id : g->ids) engine_.abort(id);
    in_flight_ -= c.n - int64_t(g->ids.size());
    for (uint64_t id : g->ids) orphan_ids_.insert(id);
    metrics_.count_request("error");
    c.box->push({Mailbox::Event::Failed, {}, {}, e.what()});
    return;
  }
  g->unfinished = int64_t(g->ids.size());
  for (uint64_t id : g->ids) requests_[id] = PerRequest{g, {}, false};
  groups_[c.box.get()] = g;
  c.box->push({Mailbox::Event::Added, {}, g->ids, {}});
}

void EngineLoop::deliver(std::vector<RequestOutput>& outs) {
  const auto now = clock::now();
  for (auto& o : outs) {
    if (orphan_ids_.count(o.id)) {  // aborted after a failed group submit
      if (o.finished) {
        orphan_ids_.erase(o.id);
        --in_flight_;
      }
      continue;
    }
    auto it = requests_.find(o.id);
    if (it == requests_.end()) continue;
    PerRequest& r = it->second;
    auto g = r.group;
    if (!o.new_ids.empty() && !r.got_first) {
      r.got_first = true;
      r.first_token = now;
      metrics_.ttft.observe(std::chrono::duration<double>(now - g->arrival).count());
    }
    const bool finished = o.finished;
    if (finished && o.finish_reason == "abort" && !g->error.empty()) {  // aborted after a failed step()
      o.finish_reason = "error";
      o.error = g->error;
    }
    if (finished) {
      std::string outcome = o.finish_reason;
      if (outcome == "abort" && !g->cancel_reason.empty()) outcome = g->cancel_reason;
      metrics_.count_request(outcome);
      if (outcome == "stop" || outcome == "length") {
        metrics_.e2e.observe(std::chrono::duration<double>(now - g->arrival).count());
        if (r.got_first && o.completion_tokens > 1)
          metrics_.tpot.observe(std::chrono::duration<double>(now - r.first_token).count() / double(o.completion_tokens - 1));
      }
      requests_.erase(it);
      --in_flight_;
      if (--g->unfinished == 0) groups_.erase(g->box.get());
    }
    g->box->push({Mailbox::Event::Output, std::move(o), {}, {}});
  }
}

void EngineLoop::run() {
  std::deque<Command> cmds;
  while (true) {
    {
      std::unique_lock lk(mu_);
      if (!engine_.has_unfinished()) cv_.wait(lk, [&] { return stop_ || !queue_.empty(); });
      if (stop_) break;
      cmds.swap(queue_);
    }
    for (auto& c : cmds) handle(c);
    cmds.clear();
    if (engine_.has_unfinished()) {
      std::vector<RequestOutput> outs;
      try {
        outs = engine_.step();
      } catch (const std::exception& e) {
        // The engine isolates failures (a failed request or forward pass comes back as outputs
        // with finish_reason "error", delivered like any other), so this is an engine bug:
        // nothing can be pinned on one request. End every group with the error, so each client
        // hears why, rather than take the server down.
        std::fprintf(stderr, "gale serve: engine step failed: %s\n", e.what());
        for (auto& [box, g] : groups_) {
          g->cancel_reason = "error";
          g->error = std::string("the engine failed: ") + e.what();
          for (uint64_t id : g->ids)
            if (requests_.count(id)) engine_.abort(id);
        }
      }
      deliver(outs);
    }
    EngineStats s = engine_.stats();
    std::lock_guard lk(mu_);
    stats_ = s;
  }
  // Shutdown: abort what is left so the engine frees its blocks.
  for (auto& [id, r] : requests_) engine_.abort(id);
  while (engine_.has_unfinished()) {
    auto outs = engine_.step();
    if (outs.empty()) break;
  }
}

}  // namespace gale::serve
