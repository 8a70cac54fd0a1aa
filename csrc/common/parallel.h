// CPU parallelism for kernels that run on the CPU queue's worker thread.
// parallel_for splits [0, n) into contiguous chunks over a fixed pool (one thread per core).
#pragma once
#include <cstdint>
#include <functional>

namespace mb {
int cpu_threads();
// Calls fn(begin, end) on disjoint chunks covering [0, n); returns when all chunks are done.
// grain: smallest chunk worth a thread. Exceptions from fn are rethrown on the caller.
void parallel_for(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& fn);
}  // namespace mb
