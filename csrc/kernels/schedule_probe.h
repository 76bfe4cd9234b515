// A recurrent schedule (recurrent_schedule.h) run on synthetic chains whose blocks only take
// time, recording who ran which blocks when: what tests check the schedule's order and balance
// with, without a recurrent layer's arithmetic hiding them.
#pragma once

#include <cstdint>
#include <vector>

namespace chrion::recurrent {

struct ProbeClaim {
  int chain;
  int64_t stage;
  int64_t first_block, end_block;
  bool by_caller;       ///< run by the thread that called probe_schedule (rank 0)
  int64_t start, end;   ///< positions in one sequence of every claim's start and end
};

/// Runs `directions` independent chains (one per home direction) of `stages` stages of `blocks`
/// blocks each on `threads` threads, each block spinning `caller_us` on the calling thread and
/// `helper_us` on a helper; returns every claim.
std::vector<ProbeClaim> probe_schedule(int64_t stages, int64_t blocks, int threads,
                                       int directions, bool balanced, double caller_us,
                                       double helper_us);

}  // namespace chrion::recurrent
