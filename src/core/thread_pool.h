// A persistent pool of worker threads for data-parallel CPU kernels.
#pragma once
#include <cstdint>
#include <functional>

namespace gale {

// Threads used by parallel_for (default: hardware concurrency; GALE_THREADS overrides).
int num_threads();
void set_num_threads(int n);

// Splits [0, n) into at most num_threads() contiguous chunks of at least min_chunk items
// and runs fn(begin, end, thread_index) on each, the calling thread taking one; returns
// when all are done. Not re-entrant: call it from one thread at a time, never from fn.
void parallel_for(int64_t n, const std::function<void(int64_t, int64_t, int)>& fn,
                  int64_t min_chunk = 1);

}  // namespace gale
