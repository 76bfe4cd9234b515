// Work split over the calling thread's OpenMP team, as the recurrent kernels run a call's threads
// (Note [Recurrent threads are the caller's team] in recurrent_schedule.cpp).
#pragma once

#include <ATen/Parallel.h>
#include <omp.h>

#include <algorithm>
#include <cstdint>

namespace chrion {

// Calls part(begin, end) for `threads` parts of [0, work), one per thread of the caller's team
// (the caller's own share first); one part on the calling thread alone where threads <= 1. Not
// at::parallel_for, whose first call on a thread in this library resets that thread's count to
// the process default (its lazy initialisation keeps a flag per library): a lane of one thread
// ran its dense products on two, beside the other lane. A team smaller than asked (a nested
// region) splits the same work.
template <class Part>
void split_over_callers_team(int64_t work, int threads, const Part& part) {
  if (threads <= 1) {
    part(int64_t{0}, work);
    return;
  }
#pragma omp parallel num_threads(threads)
  {
    const int64_t team = omp_get_num_threads();
    const int64_t rank = omp_get_thread_num();
    part(work * rank / team, work * (rank + 1) / team);
  }
}

// A thread's share of a split op reads at least this many bytes, so that a small op is not cut
// into parts that cost less than waking a thread.
constexpr int64_t kBytesPerThread = int64_t{256} << 10;

// Threads for an op of `parts` parts reading `bytes` in all: the caller's intra-op threads, at
// most one per part and one per kBytesPerThread.
inline int threads_for_bytes(int64_t parts, int64_t bytes) {
  return static_cast<int>(std::min<int64_t>(
      {at::get_num_threads(), parts, std::max<int64_t>(1, bytes / kBytesPerThread)}));
}

}  // namespace chrion
