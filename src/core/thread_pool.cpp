// Persistent worker pool behind parallel_for.
//
// Dispatch is per worker: the caller hands chunk i to worker i through that worker's own
// slot (a job pointer and a sequence number), so workers that get no chunk are never
// touched and can never read a job that is being replaced. A worker spins on its slot for
// a short while after each job (a decode step issues ~100 parallel_for calls per token,
// so the next one usually arrives within microseconds) and only then blocks on its
// condition variable; the caller pays for a notify only when the worker is really asleep.
#include "core/thread_pool.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <exception>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define GALE_CPU_RELAX() _mm_pause()
#elif defined(__aarch64__)
#define GALE_CPU_RELAX() asm volatile("yield")
#else
#define GALE_CPU_RELAX() ((void)0)
#endif

namespace gale {
namespace {

// How long an idle worker polls before it sleeps: long enough to bridge the serial gaps
// between kernels of one decode step, short enough not to burn a core for long once the
// engine goes idle. The first part is a tight pause loop; after that the worker yields
// between polls so that, when there are more threads than free cores, it does not starve
// the threads that still have work.
constexpr auto kPauseSpin = std::chrono::microseconds(20);
constexpr auto kYieldSpin = std::chrono::microseconds(200);

// One parallel_for call, living on the caller's stack until every chunk has finished.
struct Job {
  const std::function<void(int64_t, int64_t, int)>* fn;
  int64_t n;
  int chunks;
  std::atomic<int> pending;  // chunks run by workers that have not finished yet
  std::mutex error_mutex;
  std::exception_ptr error;  // first exception thrown by a worker's chunk

  void run_chunk(int i) {
    int64_t begin = n * i / chunks, end = n * (i + 1) / chunks;
    (*fn)(begin, end, i);
  }
};

struct alignas(64) Worker {  // own cache line: the caller writes seq, the worker polls it
  std::atomic<uint64_t> seq{0};  // bumped by the caller for each job handed over
  std::atomic<bool> sleeping{false};
  Job* job = nullptr;            // written before seq is bumped, read after seq is seen
  int index = 0;                 // chunk index this worker runs (1..)
  std::mutex mutex;
  std::condition_variable cv;
  std::thread thread;
};

int threads_from_env() {
  if (const char* s = std::getenv("GALE_THREADS")) {
    int n = std::atoi(s);
    if (n > 0) return n;
  }
  unsigned hc = std::thread::hardware_concurrency();
  return hc ? int(hc) : 1;
}

class Pool {
 public:
  ~Pool() {
    stop_.store(true);
    for (auto& w : workers_) {
      { std::lock_guard<std::mutex> lock(w->mutex); }
      w->cv.notify_one();
    }
    for (auto& w : workers_) w->thread.join();
  }

  int size() {
    if (size_ == 0) size_ = threads_from_env();
    return size_;
  }
  void resize(int n) { size_ = std::max(1, n); }

  void run(int64_t n, const std::function<void(int64_t, int64_t, int)>& fn, int64_t min_chunk) {
    if (n <= 0) return;
    int64_t max_chunks = std::max<int64_t>(1, n / std::max<int64_t>(1, min_chunk));
    int chunks = int(std::min<int64_t>(size(), max_chunks));
    if (chunks == 1) {
      fn(0, n, 0);
      return;
    }
    spawn_up_to(chunks - 1);

    Job job;
    job.fn = &fn;
    job.n = n;
    job.chunks = chunks;
    job.pending.store(chunks - 1, std::memory_order_relaxed);
    for (int i = 1; i < chunks; ++i) {
      Worker& w = *workers_[i - 1];
      w.job = &job;
      // seq_cst store and load pair with the worker's sleeping/seq pair (Dekker): either
      // the worker sees the new seq before it sleeps, or we see it asleep and wake it.
      w.seq.fetch_add(1);
      if (w.sleeping.load()) {
        { std::lock_guard<std::mutex> lock(w.mutex); }
        w.cv.notify_one();
      }
    }

    std::exception_ptr mine;
    try {
      job.run_chunk(0);
    } catch (...) {
      mine = std::current_exception();
    }
    // The workers are most likely running chunks as long as ours, so spin first.
    for (int spins = 0; job.pending.load(std::memory_order_acquire) != 0; ++spins) {
      if (spins < 1024) GALE_CPU_RELAX();
      else std::this_thread::yield();  // let a preempted worker finish on this core
    }
    if (mine) std::rethrow_exception(mine);
    if (job.error) std::rethrow_exception(job.error);
  }

 private:
  void spawn_up_to(int count) {
    while (int(workers_.size()) < count) {
      auto w = std::make_unique<Worker>();
      w->index = int(workers_.size()) + 1;
      Worker* raw = w.get();
      w->thread = std::thread([this, raw] { worker_loop(*raw); });
      workers_.push_back(std::move(w));
    }
  }

  void worker_loop(Worker& w) {
    uint64_t seen = 0;
    for (;;) {
      if (!wait_for_job(w, seen)) return;
      seen = w.seq.load(std::memory_order_acquire);
      Job* job = w.job;
      try {
        job->run_chunk(w.index);
      } catch (...) {
        std::lock_guard<std::mutex> lock(job->error_mutex);
        if (!job->error) job->error = std::current_exception();
      }
      // After this decrement the job (on the caller's stack) may be gone.
      job->pending.fetch_sub(1, std::memory_order_acq_rel);
    }
  }

  // Returns true when seq has moved past `seen`, false when the pool is shutting down.
  bool wait_for_job(Worker& w, uint64_t seen) {
    const auto start = std::chrono::steady_clock::now();
    bool yielding = false;
    for (int i = 0;; ++i) {
      if (w.seq.load(std::memory_order_acquire) != seen) return true;
      if (stop_.load(std::memory_order_relaxed)) return false;
      if (yielding) {
        std::this_thread::yield();
        if (std::chrono::steady_clock::now() - start > kYieldSpin) break;
      } else {
        GALE_CPU_RELAX();
        if ((i & 63) == 63) yielding = std::chrono::steady_clock::now() - start > kPauseSpin;
      }
    }
    std::unique_lock<std::mutex> lock(w.mutex);
    w.sleeping.store(true);
    while (w.seq.load() == seen && !stop_.load()) w.cv.wait(lock);
    w.sleeping.store(false, std::memory_order_relaxed);
    return w.seq.load(std::memory_order_acquire) != seen;
  }

  int size_ = 0;
  std::atomic<bool> stop_{false};
  std::vector<std::unique_ptr<Worker>> workers_;
};

Pool& pool() {
  // Destroyed at exit, which joins the workers: nothing is left running past main.
  static Pool p;
  return p;
}

}  // namespace

int num_threads() { return pool().size(); }

void set_num_threads(int n) { pool().resize(n); }

void parallel_for(int64_t n, const std::function<void(int64_t, int64_t, int)>& fn,
                  int64_t min_chunk) {
  pool().run(n, fn, min_chunk);
}

}  // namespace gale
